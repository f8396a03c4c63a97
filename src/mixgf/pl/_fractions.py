"""Plots of :func:`mixgf.tl.deconvolve` results: stacked fractions per sample or spot, and fractions vs truth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._keys import FRACTIONS_KEY
from .._utils._docs import doc_params
from ._utils import finish

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _fractions(adata: AnnData, key: str) -> pd.DataFrame:
    if key not in adata.obsm:
        msg = f"adata.obsm[{key!r}] not found; run `mgf.tl.deconvolve(adata, prototypes, key_added={key!r})` first."
        raise KeyError(msg)
    frac = adata.obsm[key]
    if not isinstance(frac, pd.DataFrame):
        types = adata.uns.get(key, {}).get("types") or [str(i) for i in range(np.shape(frac)[1])]
        frac = pd.DataFrame(np.asarray(frac), index=adata.obs_names, columns=types)
    return frac


def fractions(
    adata: AnnData,
    *,
    key: str = FRACTIONS_KEY,
    kind: Literal["auto", "bar", "spatial"] = "auto",
    types: Sequence[str] | None = None,
    sort_by: str | None = None,
    basis: str = "spatial",
    spot_size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | list[Axes] | Figure | None:
    """Cell-type fractions: stacked bars per sample, or one panel per type on the tissue for spots.

    Parameters
    ----------
    adata
        With fractions from :func:`mixgf.tl.deconvolve`.
    key
        ``key_added`` of :func:`mixgf.tl.deconvolve`.
    kind
        ``"bar"``: a stacked bar per sample; ``"spatial"``: each type's fraction per spot at ``obsm[basis]``;
        ``"auto"``: spatial when ``obsm[basis]`` exists.
    types
        Types to show (default: all; in the bars, the others are drawn as one grey "other" segment).
    sort_by
        Order the bars by this type's fraction (descending); default: the data's order.
    basis
        ``obsm`` key of the spot coordinates.
    spot_size
        Marker size of the spots (default: from the number of spots).
    ax
        Axes to draw into (bars, or one spatial panel with a single type).
    show
        Show the plot; `None` follows scanpy's ``settings.autoshow``.
    return_fig
        Return the Figure.

    Returns
    -------
    matplotlib.axes.Axes, list of matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The Axes (a list for several spatial panels) when not shown, the Figure with ``return_fig=True``, else `None`.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> ref = mgf.datasets.pbmc3k()
    >>> ref = ref[ref.obs["cell_type"].notna()].copy()
    >>> mgf.tl.prototypes(ref, groupby="cell_type", min_cells=10)
    >>> rng = np.random.default_rng(0)
    >>> bulk = ad.AnnData(np.vstack([ref.X[rng.choice(ref.n_obs, 300)].sum(axis=0) for _ in range(6)]), var=ref.var)
    >>> mgf.tl.deconvolve(bulk, ref)
    >>> ax = mgf.pl.fractions(bulk, sort_by="CD4 T cells", show=False)
    >>> ax.get_ylabel()
    'fraction of cells'

    Spots with coordinates get one panel per type:

    >>> bulk.obsm["spatial"] = rng.uniform(0, 10, (6, 2))
    >>> axes = mgf.pl.fractions(bulk, types=["B cells", "NK cells"], show=False)
    >>> [a.get_title() for a in axes]
    ['B cells', 'NK cells']
    """
    import matplotlib.pyplot as plt

    frac = _fractions(adata, key)
    show_types = list(frac.columns) if types is None else list(types)
    missing = [t for t in show_types if t not in frac.columns]
    if missing:
        msg = f"types {missing} are not among the fitted types {list(frac.columns)}."
        raise KeyError(msg)
    if kind == "auto":
        kind = "spatial" if basis in adata.obsm else "bar"
    if kind == "spatial":
        if basis not in adata.obsm:
            msg = f"adata.obsm[{basis!r}] not found; spots need coordinates for kind='spatial' (or use kind='bar')."
            raise KeyError(msg)
        xy = np.asarray(adata.obsm[basis])[:, :2]
        if ax is not None and len(show_types) != 1:
            msg = "ax= takes one panel: pass types=[one type] with it."
            raise ValueError(msg)
        n = len(show_types)
        if ax is None:
            ncol = min(n, 4)
            fig, axs = plt.subplots((n + ncol - 1) // ncol, ncol, figsize=(3.2 * ncol, 3 * ((n + ncol - 1) // ncol)),
                                    squeeze=False)  # fmt: skip
            axes = list(axs.ravel())
            for a in axes[n:]:
                a.set_visible(False)
        else:
            fig, axes = ax.figure, [ax]
        size = spot_size if spot_size is not None else max(2.0, 12_000 / max(len(xy), 1) ** 1.2)
        for a, t in zip(axes, show_types):
            sc = a.scatter(xy[:, 0], xy[:, 1], c=frac[t].to_numpy(), s=size, cmap="viridis", vmin=0, linewidths=0)
            a.set_title(t)
            a.set_aspect("equal")
            a.invert_yaxis()  # image coordinates: y grows downwards
            a.set_xticks([])
            a.set_yticks([])
            fig.colorbar(sc, ax=a, shrink=0.7, label="fraction")
        return finish(fig, axes[:n] if n > 1 else axes[0], show=show, return_fig=return_fig)
    order = frac.index
    if sort_by is not None:
        if sort_by not in frac.columns:
            msg = f"sort_by={sort_by!r} is not a fitted type ({list(frac.columns)})."
            raise KeyError(msg)
        order = frac[sort_by].sort_values(ascending=False).index
    data = frac.loc[order, show_types]
    other = 1.0 - data.sum(axis=1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(0.25 * len(data) + 3, 14), 3.5))
    else:
        fig = ax.figure
    x = np.arange(len(data))
    bottom = np.zeros(len(data))
    colors = plt.get_cmap("tab20")(np.arange(len(show_types)) % 20)
    for t, c in zip(show_types, colors):
        ax.bar(x, data[t].to_numpy(), bottom=bottom, color=c, width=0.9, label=t)
        bottom += data[t].to_numpy()
    if (other > 1e-6).any():
        ax.bar(x, other.clip(lower=0).to_numpy(), bottom=bottom, color="lightgrey", width=0.9, label="other")
    ax.set_xticks(x, [str(i) for i in order] if len(order) <= 60 else [""] * len(order), rotation=90)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, len(data) - 0.5)
    ax.set_ylabel("fraction of cells")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return finish(fig, ax, show=show, return_fig=return_fig)


@doc_params("doc_show", "doc_plot_returns")
def fractions_vs_truth(
    adata: AnnData,
    truth: str | pd.DataFrame,
    *,
    key: str = FRACTIONS_KEY,
    groups: Mapping[str, str | Sequence[str]] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Estimated against true (or reference) fractions, one colour per type, with each type's r and RMSE.

    Parameters
    ----------
    adata
        With fractions from :func:`mixgf.tl.deconvolve`.
    truth
        ``obsm`` key of the true fractions (a DataFrame with type columns), or such a DataFrame (index = obs names).
    key
        ``key_added`` of :func:`mixgf.tl.deconvolve`.
    groups
        Which fitted types make each truth column, e.g. ``{"T": ["CD4 T cells", "CD8 T cells"]}``; their fractions
        are summed. Default: truth columns that are fitted types, compared one to one.
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> import mixgf as mgf
    >>> ref = mgf.datasets.pbmc3k()
    >>> ref = ref[ref.obs["cell_type"].notna()].copy()
    >>> mgf.tl.prototypes(ref, groupby="cell_type", min_cells=10)
    >>> rng = np.random.default_rng(0)
    >>> picks = [rng.choice(ref.n_obs, 300) for _ in range(8)]
    >>> bulk = ad.AnnData(np.vstack([ref.X[p].sum(axis=0) for p in picks]), var=ref.var)
    >>> labels = ref.obs["cell_type"].astype(str).to_numpy()
    >>> is_t = np.isin(labels, ["CD4 T cells", "CD8 T cells"])
    >>> truth = {"T": [is_t[p].mean() for p in picks], "B": [(labels[p] == "B cells").mean() for p in picks]}
    >>> bulk.obsm["truth"] = pd.DataFrame(truth, index=bulk.obs_names)
    >>> mgf.tl.deconvolve(bulk, ref)
    >>> ax = mgf.pl.fractions_vs_truth(
    ...     bulk, "truth", groups={"T": ["CD4 T cells", "CD8 T cells"], "B": "B cells"}, show=False
    ... )
    >>> ax.get_xlabel(), [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()]
    ('true fraction', ['T', 'B'])
    """
    import matplotlib.pyplot as plt

    from .._utils._agreement import fraction_agreement

    frac = _fractions(adata, key)
    if isinstance(truth, str):
        if truth not in adata.obsm:
            msg = f"adata.obsm[{truth!r}] not found; pass the true fractions as an obsm key or a DataFrame."
            raise KeyError(msg)
        truth_df = adata.obsm[truth]
    else:
        truth_df = truth
    truth_df = pd.DataFrame(truth_df).reindex(frac.index)
    if truth_df.isna().all(axis=1).any():
        msg = "the true fractions miss some samples (their index must hold adata.obs_names)."
        raise ValueError(msg)
    if groups is None:
        groups = {c: c for c in truth_df.columns if c in frac.columns}
        if not groups:
            msg = f"no truth column is a fitted type ({list(frac.columns)}); pass groups={{truth column: types}}."
            raise ValueError(msg)
    pred = {}
    for col, members in groups.items():
        members = [members] if isinstance(members, str) else list(members)
        bad = [m for m in members if m not in frac.columns]
        if col not in truth_df.columns or bad:
            msg = f"groups: {col!r} must be a truth column and {bad or members} fitted types."
            raise KeyError(msg)
        pred[col] = frac[members].sum(axis=1).to_numpy()
    cols = list(groups)
    P = np.column_stack([pred[c] for c in cols])
    T = truth_df[cols].to_numpy(dtype=float)
    m = fraction_agreement(P, T)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8, 4))
    else:
        fig = ax.figure
    colors = plt.get_cmap("tab10")(np.arange(len(cols)) % 10)
    for j, (c, col) in enumerate(zip(cols, colors)):
        ax.scatter(T[:, j], P[:, j], color=col, s=18, label=f"{c}: r={m['r'][j]:.2f}, RMSE={m['rmse'][j]:.3f}")
    hi = float(max(P.max(), T.max(), 0.05)) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("true fraction")
    ax.set_ylabel(f"estimated fraction ({key})")
    ax.set_title(f"all: r={m['r_all']:.2f}, RMSE={m['rmse_all']:.3f}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return finish(fig, ax, show=show, return_fig=return_fig)

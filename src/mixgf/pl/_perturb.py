"""Plots of :func:`mixgf.tl.perturb` results: volcano plot and per-cell shift distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import PERTURB_KEY
from .._utils._docs import doc_params
from ._utils import finish, place_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_N_DEFAULT_GENES = 10


def _check(adata: AnnData, key: str, *, shifts: bool = False) -> None:
    entry = adata.uns.get(key)
    missing = not isinstance(entry, dict) or "results" not in entry
    if shifts and f"{key}_shift" not in adata.obsm:
        missing = True
    if missing:
        what = f"adata.uns[{key!r}]['results']" + (f" / adata.obsm[{key + '_shift'!r}]" if shifts else "")
        msg = f"{what} not found; run `mgf.tl.perturb(adata, genes=..., key_added={key!r})` first."
        raise KeyError(msg)


def _has_goal(params: dict[str, Any]) -> bool:
    goal_key = params.get("goal_key")
    return goal_key is not None and str(goal_key) not in ("", "None", "nan")


def _shift_label(params: dict[str, Any]) -> str:
    """What the stored shift is: signed movement toward the goal, or the 1 - cos magnitude."""
    if _has_goal(params):
        target = params.get("goal_target")
        return f"shift toward goal ({target})" if target not in (None, "") else "shift toward goal"
    return "cosine shift (1 - cos)"


def _column(df: pd.DataFrame, name: str, role: str) -> np.ndarray:
    if name not in df.columns:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        msg = f"{role}={name!r} is not a column of the perturbation results (numeric columns: {numeric})."
        raise KeyError(msg)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)


@doc_params("doc_show", "doc_plot_returns")
def perturb_volcano(
    adata: AnnData,
    *,
    key: str = PERTURB_KEY,
    x: str = "shift_mean",
    p: str = "p_adj",
    alpha: float = 0.05,
    n_labels: int = 10,
    genes: Sequence[str] | str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **scatter_kw: Any,
) -> Axes | Figure | None:
    """Volcano plot of :func:`mixgf.tl.perturb` results: a shift statistic against ``-log10`` of its p-value.

    One point per gene (or gene set) perturbed in at least one cell and with a finite p-value; genes with
    ``p <= alpha`` are coloured, the others grey, and a dashed line marks ``-log10(alpha)``. p-values of 0 are
    clipped to the smallest positive float so that every point is drawn. Rows without a p-value (too few matched
    controls) are left out and counted in the title.

    Parameters
    ----------
    adata
        With results from :func:`mixgf.tl.perturb`.
    key
        ``key_added`` of :func:`mixgf.tl.perturb`.
    x
        Column of the results on the x axis: ``"shift_mean"``, ``"shift_median"``, ``"shift_vs_expected"`` (mean
        shift minus the one expected from the matched controls), …
    p
        Column of p-values: ``"p_adj"`` (Benjamini–Hochberg) or ``"p_value"``.
    alpha
        Significance level: colours the points and places the dashed line.
    n_labels
        Label this many genes, significant or not: half of them the smallest p-values, the rest the largest
        absolute shifts (``x``), as pertpy and decoupler do; the labels are placed so that they overlap neither
        each other nor the points. Ignored when ``genes`` is given.
    genes
        Label these genes instead (they must be rows of the results).
    {doc_show}
    **scatter_kw
        Passed to :meth:`matplotlib.axes.Axes.scatter` (``s``, ``alpha``, …); ``color`` sets the colour of the
        significant genes.

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    A small run (each cell's top 256 genes, 20 cells, 5 matched controls per gene):

    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> mgf.tl.perturb(adata, genes=["CD74", "LYZ", "NKG7", "S100A9"], max_cells=20, n_controls=5)
    >>> ax = mgf.pl.perturb_volcano(adata, x="shift_vs_expected", p="p_value", show=False)
    >>> ax.get_xlabel()
    'cosine shift (1 - cos) minus expected'
    """
    import matplotlib.pyplot as plt

    _check(adata, key)
    df: pd.DataFrame = adata.uns[key]["results"]
    params = dict(adata.uns[key].get("params", {}))
    xv = _column(df, x, "x")
    pv = _column(df, p, "p")
    n_cells = _column(df, "n_cells", "n_cells") if "n_cells" in df.columns else np.ones(len(df))
    names = df.index.astype(str).to_numpy()
    perturbed = n_cells > 0
    has_p = perturbed & np.isfinite(pv)
    test = params.get("test", df["test"].iloc[0] if "test" in df.columns and len(df) else "?")
    if not has_p.any():
        msg = (
            f"No finite {p!r} in adata.uns[{key!r}]['results'] (test={test!r}; p-values are NaN with test='none' "
            "or with too few matched controls). Run `mgf.tl.perturb(..., test='matched')` or `test='geneformer'` "
            "to get p-values."
        )
        raise ValueError(msg)
    shown = has_p & np.isfinite(xv)
    notes = []
    if (n_never := int((~perturbed).sum())) > 0:
        notes.append(f"{n_never} never perturbed")
    if (n_nan := int((perturbed & ~np.isfinite(pv)).sum())) > 0:
        notes.append(f"{n_nan} without {p}")
    if (n_nan_x := int((has_p & ~np.isfinite(xv)).sum())) > 0:
        notes.append(f"{n_nan_x} without {x}")

    p_plot = np.clip(pv[shown], np.finfo(np.float64).tiny, None)
    y = -np.log10(p_plot)
    xs, gs = xv[shown], names[shown]
    sig = pv[shown] <= alpha

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.8, 4), layout="constrained")  # room for the legend beside the axes
    else:
        fig = ax.figure
    kw = {"s": 14, "linewidths": 0, **scatter_kw}
    sig_color = kw.pop("color", kw.pop("c", "tab:red"))
    if (~sig).any():
        ax.scatter(xs[~sig], y[~sig], color="0.7", label=f"{p} > {alpha:g} ({int((~sig).sum())})", **kw)
    if sig.any():
        ax.scatter(xs[sig], y[sig], color=sig_color, label=f"{p} ≤ {alpha:g} ({int(sig.sum())})", **kw)
    ax.axhline(-np.log10(alpha), color="0.4", linestyle="--", linewidth=0.8, label=f"{p} = {alpha:g}")
    if _has_goal(params) or x == "shift_vs_expected":
        ax.axvline(0, color="0.8", linewidth=0.8, zorder=0)

    # labels
    if genes is not None:
        wanted = [genes] if isinstance(genes, str) else list(genes)
        unknown = [g for g in wanted if g not in set(names)]
        if unknown:
            msg = f"Genes {unknown} are not in the perturbation results (genes: {names[:30].tolist()})."
            raise KeyError(msg)
        not_shown = [g for g in wanted if g not in set(gs)]
        if not_shown:
            logg.warn(f"Genes {not_shown} are not plotted (never perturbed, or no {p} / {x}); they get no label.")
        idx = [i for i, g in enumerate(gs) if g in set(wanted)]
    else:
        n = max(int(n_labels), 0)
        by_p = np.lexsort((-np.abs(xs), pv[shown]))[: (n + 1) // 2].tolist()
        by_x = [i for i in np.argsort(-np.abs(xs), kind="stable") if i not in set(by_p)]
        idx = by_p + by_x[: n - len(by_p)]

    shift = _shift_label(params)
    xlabel = {
        "shift_mean": f"mean {shift}",
        "shift_median": f"median {shift}",
        "shift_sd": f"SD of {shift}",
        "expected_shift": f"expected {shift} (matched controls)",
        "shift_vs_expected": f"{shift} minus expected",
    }.get(x, f"{x} ({shift})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"-log10({p})")
    title = f"{params.get('mode', '')} ({test} test)".strip()
    if notes:
        title += "\nnot shown: " + ", ".join(notes)
    ax.set_title(title, fontsize=10)
    if len(xs):  # beside the axes, where its markers cannot be read as data points
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    if idx:
        place_labels(ax, xs[idx], y[idx], [str(gs[i]) for i in idx], avoid=np.column_stack([xs, y]))
    return finish(fig, ax, show=show, return_fig=return_fig)


@doc_params("doc_show", "doc_plot_returns")
def perturb_shift(
    adata: AnnData,
    genes: Sequence[str] | str | None = None,
    *,
    key: str = PERTURB_KEY,
    groupby: str | None = None,
    kind: Literal["violin", "box", "strip"] = "violin",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Per-cell shift distributions of perturbed genes, from ``adata.obsm[key + "_shift"]``.

    Only cells in which a gene was perturbed are drawn: the NaN of cells not perturbed (not selected, or not
    expressing a deleted gene) are dropped, never drawn as 0.

    Parameters
    ----------
    adata
        With results from :func:`mixgf.tl.perturb`.
    genes
        Genes (columns of ``obsm[key + "_shift"]``) to show; `None`: the 10 first perturbed genes of the results
        ordered by p-value (then by ``|shift_mean|``).
    key
        ``key_added`` of :func:`mixgf.tl.perturb`.
    groupby
        ``obs`` column: one distribution per gene and group, side by side and coloured by group (cells with a
        missing group are left out).
    kind
        ``"violin"``, ``"box"`` or ``"strip"`` (one jittered point per cell). A violin with fewer than two distinct
        values is drawn as its points.
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    A small run (each cell's top 256 genes, 20 cells, 5 matched controls per gene):

    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> mgf.tl.perturb(adata, genes=["CD74", "LYZ", "NKG7", "S100A9"], max_cells=20, n_controls=5)
    >>> ax = mgf.pl.perturb_shift(adata, groupby="cell_type", kind="box", show=False)
    >>> ax.get_ylabel()
    'cosine shift (1 - cos)'
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if kind not in ("violin", "box", "strip"):
        msg = f"Unknown kind {kind!r}; use 'violin', 'box' or 'strip'."
        raise ValueError(msg)
    _check(adata, key, shifts=True)
    shift_key = f"{key}_shift"
    shifts = adata.obsm[shift_key]
    if not isinstance(shifts, pd.DataFrame):
        msg = f"adata.obsm[{shift_key!r}] is not a DataFrame with gene columns; rerun `mgf.tl.perturb`."
        raise TypeError(msg)
    available = [str(c) for c in shifts.columns]
    params = dict(adata.uns[key].get("params", {}))

    if genes is None:
        df: pd.DataFrame = adata.uns[key]["results"]
        n_cells = pd.to_numeric(df.get("n_cells", pd.Series(1, index=df.index)), errors="coerce").fillna(0)
        rows = df.loc[(n_cells > 0).to_numpy()]
        rows = rows[rows.index.astype(str).isin(available)]
        pval = pd.to_numeric(rows.get("p_value", pd.Series(np.nan, index=rows.index)), errors="coerce")
        size = pd.to_numeric(rows.get("shift_mean", pd.Series(np.nan, index=rows.index)), errors="coerce").abs()
        order = np.lexsort((-size.fillna(-np.inf).to_numpy(), pval.fillna(np.inf).to_numpy()))
        genes = rows.index.astype(str)[order][:_N_DEFAULT_GENES].tolist()
        if not genes:
            msg = f"No gene of adata.uns[{key!r}]['results'] was perturbed in any cell; nothing to plot."
            raise ValueError(msg)
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        unknown = [g for g in genes if g not in available]
        if unknown:
            msg = f"Genes {unknown} are not in adata.obsm[{shift_key!r}] (available: {available[:30]})."
            raise KeyError(msg)
        if not genes:
            msg = "genes is empty."
            raise ValueError(msg)

    values = shifts.loc[:, genes].to_numpy(dtype=float)
    if groupby is None:
        group_of = np.zeros(adata.n_obs, dtype=np.int64)
        group_names: list[str] = []
        colors = ["tab:blue"]
    else:
        if groupby not in adata.obs:
            msg = f"groupby={groupby!r} is not a column of adata.obs."
            raise KeyError(msg)
        col = adata.obs[groupby]
        labels = col.astype("string").fillna("<NA>").to_numpy(dtype=object)
        has_any = np.isfinite(values).any(axis=1) & col.notna().to_numpy()
        present = set(labels[has_any])
        cats = [str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype) else None
        group_names = [g for g in (cats or sorted(present)) if g in present]
        lookup = {g: i for i, g in enumerate(group_names)}
        group_of = np.array([lookup.get(g, -1) for g in labels], dtype=np.int64)
        cmap = plt.get_cmap("tab10" if len(group_names) <= 10 else "tab20")
        colors = [cmap(i % cmap.N) for i in range(max(len(group_names), 1))]
    n_groups = max(len(group_names), 1)
    width = 0.8 / n_groups

    if ax is None:
        width_in = max(3.0, 0.3 * len(genes) * n_groups + 0.6 * len(genes) + 1.5) + (1.5 if groupby else 0)
        fig, ax = plt.subplots(figsize=(width_in, 3.8), layout="constrained")
    else:
        fig = ax.figure
    empty = []
    for j, gene in enumerate(genes):
        v_all = values[:, j]
        if not np.isfinite(v_all).any():
            empty.append(gene)
        for h in range(n_groups):
            v = v_all[(group_of == h) & np.isfinite(v_all)]
            if v.size == 0:
                continue
            pos = j + (h - (n_groups - 1) / 2) * width
            color = colors[h]
            if kind == "strip" or (kind == "violin" and np.unique(v).size < 2):
                jitter = np.random.default_rng(j * 1000 + h).uniform(-0.3, 0.3, v.size) * width
                ax.scatter(pos + jitter, v, s=6, color=color, alpha=0.7, linewidths=0)
            elif kind == "violin":
                parts = ax.violinplot([v], positions=[pos], widths=0.9 * width, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_edgecolor("0.2")
                    body.set_alpha(0.7)
                for name in ("cmins", "cmaxes", "cbars", "cmedians"):
                    if name in parts:
                        parts[name].set_color("0.2")
                        parts[name].set_linewidth(0.8)
            else:
                bp = ax.boxplot(
                    [v],
                    positions=[pos],
                    widths=0.8 * width,
                    patch_artist=True,
                    showfliers=True,
                    flierprops={"markersize": 2},
                    medianprops={"color": "0.1"},
                )
                for box in bp["boxes"]:
                    box.set_facecolor(color)
                    box.set_alpha(0.8)
    if empty:
        logg.warn(f"Genes {empty} were not perturbed in any cell; their slots are empty.")
    ax.set_xticks(range(len(genes)), genes, rotation=90)
    ax.set_xlim(-0.5, len(genes) - 0.5)
    ax.set_ylabel(_shift_label(params))
    ax.set_xlabel("perturbed gene")
    if _has_goal(params):
        ax.axhline(0, color="0.7", linewidth=0.8, zorder=0)
    if groupby is not None and group_names:
        handles = [Patch(facecolor=colors[h], label=g) for h, g in enumerate(group_names)]
        ax.legend(
            handles=handles,
            title=groupby,
            fontsize=7,
            title_fontsize=8,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
        )
    return finish(fig, ax, show=show, return_fig=return_fig)

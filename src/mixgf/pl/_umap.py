"""`mixgf.pl.umap`: the mixgf UMAP, coloured by obs columns or species."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._keys import TOKENS_KEY, UMAP_KEY
from ._utils import finish

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def umap(
    adata: AnnData,
    *,
    color: str | Sequence[str] | None = None,
    basis: str = UMAP_KEY,
    tokens_key: str = TOKENS_KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Axes | list[Axes] | Figure | None:
    """Scatter plot of the UMAP computed by :func:`mixgf.tl.umap` (a thin layer over :func:`scanpy.pl.embedding`).

    Parameters
    ----------
    adata
        With ``obsm[basis]``.
    color
        ``obs`` column(s) or gene name(s) to colour by. ``"species"`` works even without an ``obs["species"]``
        column: the species recorded by :func:`mixgf.pp.rank_tokenize` is used (after
        ``anndata.concat({"human": h, "mouse": m}, label="species")`` the column exists already).
    basis
        ``obsm`` key of the coordinates.
    tokens_key
        Key of the tokenization whose species is used for ``color="species"``.
    ax
        Axes to draw into (one colour only).
    show
        Show the plot; `None` follows scanpy's ``settings.autoshow``.
    return_fig
        Return the `Figure` instead of the Axes.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``palette``, ``size``, ``legend_loc``, …).

    Returns
    -------
    matplotlib.axes.Axes, list of matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The Axes (a list for several colours) when not shown, the Figure with ``return_fig=True``, else `None`.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.tl.embed(adata)
    >>> mgf.tl.umap(adata)
    >>> ax = mgf.pl.umap(adata, color="cell_type", show=False)
    >>> ax.get_title()
    'cell_type'
    """
    import scanpy as sc

    if basis not in adata.obsm:
        msg = f"adata.obsm[{basis!r}] not found; run `mgf.tl.umap(adata)` first."
        raise KeyError(msg)
    colors = [color] if isinstance(color, str) else (list(color) if color is not None else [])
    plot_data = adata
    if "species" in colors and "species" not in adata.obs:
        species = adata.uns.get(tokens_key, {}).get("params", {}).get("species")
        if species is None:
            msg = (
                "color='species' needs adata.obs['species'] or a tokenization in adata.uns[tokens_key]; "
                "run `mgf.pp.rank_tokenize` first or add the column."
            )
            raise KeyError(msg)
        plot_data = adata.copy()
        plot_data.obs["species"] = pd.Categorical(np.repeat(species, adata.n_obs))
    if ax is not None and len(colors) > 1:
        msg = "pass one colour when giving ax=…"
        raise ValueError(msg)
    if len(colors) > 1 and kwargs.get("legend_loc", "right margin") == "right margin" and "wspace" not in kwargs:
        kwargs["wspace"] = _legend_wspace(plot_data, colors)
    out = sc.pl.embedding(
        plot_data, basis=basis, color=colors or None, ax=ax, show=False, return_fig=return_fig, **kwargs
    )
    if plot_data is not adata:  # scanpy stored the palettes in the copy: keep them, as scanpy would
        for c in colors:
            if f"{c}_colors" in plot_data.uns and f"{c}_colors" not in adata.uns and c in adata.obs:
                adata.uns[f"{c}_colors"] = plot_data.uns[f"{c}_colors"]
    if return_fig:
        return out
    return finish(None, out, show=show, return_fig=False)


def _legend_wspace(adata: AnnData, colors: list[str]) -> float:
    """Space between panels (a fraction of a panel's width, scanpy's ``wspace``) that fits the widest legend.

    scanpy's default leaves ~0.75 inch for a right-margin legend, so longer category names run under the next
    panel and its y label. This measures the longest category label (in points of the legend font, with the
    marker and the gaps) and adds room for the next panel's y label; long legends get a second column as scanpy
    does (more than 14 categories).
    """
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    fontsize = rcParams["legend.fontsize"]
    size = FontProperties(size=fontsize).get_size_in_points() if isinstance(fontsize, str) else float(fontsize)
    widest = 0.0
    for c in colors:
        col = adata.obs.get(c)
        if col is None or (pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype)):
            continue  # genes and continuous columns get a colour bar, not a legend
        cats = adata.obs[c].astype("category").cat.categories.astype(str)
        if not len(cats):
            continue
        longest = max(TextPath((0, 0), s, size=size).get_extents().width for s in cats)
        ncol = 1 if len(cats) <= 14 else 2 if len(cats) <= 30 else 3
        widest = max(widest, ncol * (longest + 3.5 * size))  # marker + gaps, per legend column
    panel = rcParams["figure.figsize"][0]
    return (widest / 72 + 0.6) / panel + 0.02  # legend + the next panel's y label and tick labels

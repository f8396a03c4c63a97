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
    out = sc.pl.embedding(
        plot_data, basis=basis, color=colors or None, ax=ax, show=False, return_fig=return_fig, **kwargs
    )
    if return_fig:
        return out
    return finish(None, out, show=show, return_fig=False)

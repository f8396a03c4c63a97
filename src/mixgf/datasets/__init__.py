"""Small real datasets that ship with mixgf (no download).

- :func:`pbmc3k`: 2,700 human PBMCs, raw UMI counts, 8 cell types (10x Genomics; MIT).
- :func:`baron_mouse_pancreas`: 822 mouse pancreas cells, raw UMI counts, 13 cell types (Baron et al. 2016; MIT).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

_DIR = Path(__file__).parent / "data"

__all__ = ["baron_mouse_pancreas", "pbmc3k"]


def _read(name: str) -> AnnData:
    import anndata as ad

    return ad.read_h5ad(_DIR / name)


def pbmc3k() -> AnnData:
    """Human peripheral blood mononuclear cells: 10x Genomics "3k PBMCs from a healthy donor".

    2,700 cells × 16,634 detected genes, raw UMI counts (int32 CSR). ``var`` holds ``gene_id`` (Ensembl) and
    ``gene_symbol`` (var names are symbols, made unique); ``obs["cell_type"]`` holds the scanpy tutorial's
    8 Louvain-based types for the 2,638 cells passing its QC (NaN for the other 62).
    Counts: PyPI ``desc==2.1.1`` (MIT); labels: the cellxgene test fixture (MIT).

    Returns
    -------
    anndata.AnnData
        A new AnnData.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> adata.n_obs
    2700
    """
    return _read("pbmc3k.h5ad")


def baron_mouse_pancreas() -> AnnData:
    """Mouse pancreas cells of Baron et al. 2016 (Cell Systems, GEO GSE84133, mouse 1, inDrop).

    822 cells, raw UMI counts (int32 CSR), var names are mouse symbols; ``obs["cell_type"]`` holds 13 types
    (beta 343, ductal 236, delta 85, endothelial 72, …). Source: GitHub ``lodimk2/chai`` (MIT).

    Returns
    -------
    anndata.AnnData
        A new AnnData.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.baron_mouse_pancreas()
    >>> adata.n_obs
    822
    """
    return _read("baron2016_mouse_pancreas.h5ad")

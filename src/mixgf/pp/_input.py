"""Picking the count matrix of an AnnData and reading it in row chunks (dense, sparse, backed or dask)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None) -> Any:
    """The matrix to read: ``adata.X`` or ``adata.layers[layer]`` (fetched once; views are sliced once)."""
    if layer is None:
        X = adata.X
        if X is None:
            msg = "adata.X is empty; pass layer='…' naming the layer that holds raw counts."
            raise ValueError(msg)
        return X
    if layer not in adata.layers:
        msg = f"layer {layer!r} not found; available layers: {list(adata.layers.keys()) or 'none'}."
        raise KeyError(msg)
    return adata.layers[layer]


def iter_csr_chunks(X: Any, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, block)`` with ``block`` = rows ``start:end`` of ``X`` as a CSR matrix.

    Works for numpy arrays, scipy sparse matrices/arrays, backed h5ad matrices (``backed="r"``) and dask arrays;
    at most one chunk of ``X`` is held densely at a time.
    """
    if sp.issparse(X) and X.format not in ("csr", "csc"):
        X = X.tocsr()
    n = X.shape[0]
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        block = X[start:end]
        if hasattr(block, "compute"):  # dask
            block = block.compute()
        block = sp.csr_matrix(block) if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        block.sum_duplicates()
        yield start, end, block

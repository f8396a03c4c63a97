"""Picking the count matrix of an AnnData and reading it in row chunks (dense, sparse, backed or dask)."""

from __future__ import annotations

import sys
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


def _is_dask(X: Any) -> bool:
    if "dask" not in sys.modules:
        return False
    import dask.array as da

    return isinstance(X, da.Array)


def _to_csr(block: Any) -> sp.csr_matrix:
    block = sp.csr_matrix(block) if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    block.sum_duplicates()
    return block


def iter_csr_chunks(X: Any, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, block)`` with ``block`` = rows ``start:end`` of ``X`` as a CSR matrix.

    Works for numpy arrays, scipy sparse matrices/arrays, backed h5ad matrices (``backed="r"``) and dask arrays
    (also those of :func:`anndata.experimental.read_lazy`); at most one chunk of ``X`` is held at a time. A dask
    array is read along its own row chunks: consecutive dask chunks are computed together up to ``chunk_size``
    rows (a dask chunk larger than that is computed once and cut), never the whole array at once.
    """
    if _is_dask(X):
        yield from _iter_dask_chunks(X, chunk_size)
        return
    if sp.issparse(X) and X.format not in ("csr", "csc"):
        X = X.tocsr()
    n = X.shape[0]
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        yield start, end, _to_csr(X[start:end])


def _iter_dask_chunks(X: Any, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    edges = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(np.int64)
    n_blocks = len(X.chunks[0])
    i = 0
    while i < n_blocks:
        j = i + 1
        while j < n_blocks and edges[j + 1] - edges[i] <= chunk_size:
            j += 1
        a, b = int(edges[i]), int(edges[j])
        # one block at a time in this thread: the kernel that follows is single-threaded, and dask's thread pool
        # only adds scheduling overhead to reading one block
        block = _to_csr(X[a:b].compute(scheduler="synchronous"))
        for start in range(a, b, chunk_size):
            end = min(start + chunk_size, b)
            yield start, end, block if (start, end) == (a, b) else _to_csr(block[start - a : end - a])
        del block
        i = j

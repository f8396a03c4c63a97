"""Picking the count matrix of an AnnData and reading it in row chunks (dense, sparse, backed or dask)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pandas as pd
    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None, use_raw: bool = False) -> Any:
    """The matrix to read: ``adata.X``, ``adata.layers[layer]`` or ``adata.raw.X`` (fetched once)."""
    if layer is not None and use_raw:
        msg = f"pass either layer={layer!r} or use_raw=True, not both: they name two different count matrices."
        raise ValueError(msg)
    if use_raw:
        if getattr(adata, "raw", None) is None:
            msg = "use_raw=True, but adata.raw is not set; pass layer='…' naming the layer with raw counts instead."
            raise ValueError(msg)
        return adata.raw.X
    if layer is None:
        X = adata.X
        if X is None:
            msg = (
                "adata.X is empty; pass layer='…' naming the layer that holds raw counts"
                + (f" (layers: {list(adata.layers.keys())})" if len(adata.layers) else "")
                + " or use_raw=True."
            )
            raise ValueError(msg)
        return X
    if layer not in adata.layers:
        msg = f"layer {layer!r} not found; available layers: {list(adata.layers.keys()) or 'none'}."
        raise KeyError(msg)
    return adata.layers[layer]


def describe_source(layer: str | None, use_raw: bool) -> str:
    """How the count matrix is named in messages: ``adata.X``, ``adata.layers['counts']`` or ``adata.raw.X``."""
    if use_raw:
        return "adata.raw.X"
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


_PROBE_ROWS = 500


def _looks_like_counts(X: Any) -> bool:
    """Whether the first rows of ``X`` are finite, non-negative integers with at least one non-zero."""
    from ..engine._tokenize import check_values

    try:
        _, _, block = next(iter_csr_chunks(X, _PROBE_ROWS))
    except StopIteration:
        return False
    if block.nnz == 0:
        return False
    nonfinite, negative, nonint, _ = check_values(block.data, check_integer=True)
    return nonfinite < 0 and negative < 0 and nonint < 0


def counts_candidates(adata: AnnData) -> list[tuple[str, str]]:
    """Other places of ``adata`` that hold integer counts: ``(how it is named, the argument to pass)``.

    Probes the first rows of every layer and of ``adata.raw.X``; nothing is guessed or used, only reported.
    """
    out = []
    for name in list(getattr(adata, "layers", {})):
        if _looks_like_counts(adata.layers[name]):
            out.append((f"layers[{name!r}]", f"layer={name!r}"))
    raw = getattr(adata, "raw", None)
    if raw is not None and _looks_like_counts(raw.X):
        out.append(("adata.raw", "use_raw=True"))
    return out


def counts_advice(adata: AnnData, layer: str | None, use_raw: bool) -> str:
    """The fix to suggest when the chosen matrix is not counts: the one obvious source, the candidates, or how."""
    if layer is None and not use_raw:
        found = counts_candidates(adata)
        if len(found) == 1:
            where, arg = found[0]
            return f"{where} holds integer counts: pass {arg}."
        if found:
            names = " and ".join(w for w, _ in found)
            args = " or ".join(a for _, a in found)
            return f"{names} hold integer counts: pass {args}, whichever holds the raw counts."
    return "Pass layer='…' naming the layer with raw counts (or use_raw=True when adata.raw holds them)."


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


def check_counts_block(
    block: sp.csr_matrix,
    start: int,
    obs_names: pd.Index,
    var_names: pd.Index,
    *,
    counts: str,
    what: str,
    advice: Callable[[], str],
    normalized_hint: str = "Or pass counts='normalized' to rank these values anyway.",
) -> int:
    """Refuse NaN/inf, negative and (``counts="raw"``) non-integer values of one CSR block of cells.

    ``advice()`` says where the counts are (see :func:`counts_advice`); ``normalized_hint`` follows it for
    non-integer data. Returns the number of non-integer entries (allowed with ``counts="normalized"``).
    """
    from ..engine._tokenize import check_values

    nonfinite, negative, nonint, n_nonint = check_values(block.data, check_integer=True)

    def where(k: int) -> str:
        row = int(np.searchsorted(block.indptr, k, side="right") - 1)
        return f"cell {obs_names[start + row]!r}, gene {var_names[block.indices[k]]!r}"

    if nonfinite >= 0:
        msg = (
            f"{what} holds NaN or infinite values (first at {where(nonfinite)}: {block.data[nonfinite]}). "
            "Counts must be finite: fix or remove those entries first."
        )
        raise ValueError(msg)
    if negative >= 0:
        msg = (
            f"{what} holds negative values (first at {where(negative)}: {block.data[negative]}), so it is not "
            f"counts (scaled or centred data?). {advice()}"
        )
        raise ValueError(msg)
    if nonint >= 0 and counts == "raw":
        msg = (
            f"{what} holds non-integer values (first at {where(nonint)}: {block.data[nonint]}), so it is not raw "
            f"counts (normalized or log-transformed?). {advice()} {normalized_hint}"
        )
        raise ValueError(msg)
    return n_nonint

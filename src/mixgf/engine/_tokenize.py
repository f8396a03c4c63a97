"""Compiled kernels of rank-value tokenization (numpy + numba; no AnnData, no torch).

Sorting scheme: each expressed in-vocabulary gene of a cell becomes one uint64 key,
``(0xFFFFFFFF - float32_bits(x)) << 32 | token``, so an ascending sort of a cell's keys orders its genes by
descending ``x`` and, within equal float32 values, by ascending token id. NumPy's vectorised sort does this per
cell. Because float32 rounding is monotonic, only genes whose float32 values are equal can be out of float64
order; those (rare) runs are re-ordered exactly by their float64 value, then by token id. The result equals a
float64 sort by ``(-x, token)``.
"""

from __future__ import annotations

import numba
import numpy as np

NORM_CODES = {"total_counts": 0, "vocab_counts": 1, "none": 2}

_F32_MAX_BITS = np.uint64(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _check_values(data: np.ndarray, check_integer: bool) -> tuple[int, int, int, int]:
    """Return (first non-finite, first negative, first non-integer, count of non-integers); -1 where absent."""
    nonfinite = -1
    negative = -1
    nonint = -1
    n_nonint = 0
    for i in range(data.shape[0]):
        v = data[i]
        if not np.isfinite(v):
            if nonfinite < 0:
                nonfinite = i
        elif v < 0:
            if negative < 0:
                negative = i
        elif check_integer and v != np.floor(v):
            n_nonint += 1
            if nonint < 0:
                nonint = i
    return nonfinite, negative, nonint, n_nonint


@numba.njit(cache=True, nogil=True)
def _build_keys(indptr, indices, data, col2tok, medians, norm, target_sum, keys, key_ptr, n_genes, collapse, acc):
    """Fill ``keys`` with the packed sort keys of every row; ``key_ptr`` gets row offsets.

    With ``collapse``, columns that share a token are summed first (in column order, in ``acc``, which must be all
    zeros and is left so).
    """
    n_rows = indptr.shape[0] - 1
    pos = 0
    for r in range(n_rows):
        key_ptr[r] = pos
        start, end = indptr[r], indptr[r + 1]
        total = 0.0
        if norm == 0:
            for j in range(start, end):
                total += data[j]
        elif norm == 1:
            for j in range(start, end):
                if col2tok[indices[j]] >= 0:
                    total += data[j]
        if collapse:
            for j in range(start, end):
                t = col2tok[indices[j]]
                if t >= 0:
                    acc[t] += data[j]
        for j in range(start, end):
            t = col2tok[indices[j]]
            if t < 0:
                continue
            v = data[j]
            if collapse:
                v = acc[t]
                acc[t] = 0.0  # emitted (or zero): later columns of the same token are skipped
            if v <= 0:
                continue
            x = v / total * target_sum / medians[t] if norm != 2 else v / medians[t]
            bits = np.uint64(np.float32(x).view(np.uint32))
            keys[pos] = ((_F32_MAX_BITS - bits) << np.uint64(32)) | np.uint64(t)
            pos += 1
        n_genes[r] = pos - key_ptr[r]
    key_ptr[n_rows] = pos


@numba.njit(cache=True, nogil=True)
def _finish_rows(
    indptr, indices, data, col2tok, medians, norm, target_sum, keys, key_ptr, out, start_col, max_genes, scratch,
    collapse, done,
):  # fmt: skip
    """Fix float32 ties with float64 values and write the first ``max_genes`` tokens of each row into ``out``."""
    n_rows = indptr.shape[0] - 1
    low = np.uint64(0xFFFFFFFF)
    for r in range(n_rows):
        a, b = key_ptr[r], key_ptr[r + 1]
        n = b - a
        if n == 0:
            continue
        # does this row have equal float32 values among the genes that are kept (or straddle the cut)?
        limit = min(n, max_genes + 1)
        has_tie = False
        for k in range(a + 1, a + limit):
            if (keys[k] >> np.uint64(32)) == (keys[k - 1] >> np.uint64(32)):
                has_tie = True
                break
        if has_tie:
            total = 0.0
            if norm == 0:
                for j in range(indptr[r], indptr[r + 1]):
                    total += data[j]
            elif norm == 1:
                for j in range(indptr[r], indptr[r + 1]):
                    if col2tok[indices[j]] >= 0:
                        total += data[j]
            # per token: the sum of its columns (one column unless collapsing), then x exactly as in _build_keys
            for j in range(indptr[r], indptr[r + 1]):
                t = col2tok[indices[j]]
                if t >= 0:
                    scratch[t] = 0.0
            for j in range(indptr[r], indptr[r + 1]):
                t = col2tok[indices[j]]
                if t >= 0:
                    scratch[t] += data[j]
            for j in range(indptr[r], indptr[r + 1]):
                t = col2tok[indices[j]]
                if t >= 0 and scratch[t] > 0 and (not collapse or done[t] == 0):
                    v = scratch[t]
                    scratch[t] = v / total * target_sum / medians[t] if norm != 2 else v / medians[t]
                    if collapse:
                        done[t] = 1
            if collapse:
                for j in range(indptr[r], indptr[r + 1]):
                    t = col2tok[indices[j]]
                    if t >= 0:
                        done[t] = 0
            k = a
            while k < b and k - a <= max_genes:
                e = k + 1
                while e < b and (keys[e] >> np.uint64(32)) == (keys[k] >> np.uint64(32)):
                    e += 1
                if e - k > 1:
                    # insertion sort of the run by (-x64, token)
                    for i in range(k + 1, e):
                        kk = keys[i]
                        xi = scratch[np.int64(kk & low)]
                        ti = kk & low
                        m = i - 1
                        while m >= k:
                            xm = scratch[np.int64(keys[m] & low)]
                            if xm < xi or (xm == xi and (keys[m] & low) > ti):
                                keys[m + 1] = keys[m]
                                m -= 1
                            else:
                                break
                        keys[m + 1] = kk
                k = e
        for k in range(min(n, max_genes)):
            out[r, start_col + k] = keys[a + k] & low


def tokenize_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col2tok: np.ndarray,
    medians: np.ndarray,
    *,
    normalization: str,
    target_sum: float,
    max_genes: int,
    out: np.ndarray,
    start_col: int = 0,
    collapse: bool = False,
) -> np.ndarray:
    """Rank-value tokens of the rows of a CSR matrix.

    Parameters
    ----------
    indptr, indices, data
        The CSR arrays of a block of cells (columns = the data's genes). ``data`` must be non-negative and finite.
    col2tok
        Token id of every column, ``-1`` for columns outside the vocabulary. Each token appears at most once
        unless ``collapse``.
    medians
        Gene median per token id (float64).
    normalization
        ``"total_counts"``, ``"vocab_counts"`` or ``"none"`` (see :class:`mixgf.genes.TokenizerRules`).
    target_sum
        Scale after division by the total.
    max_genes
        Number of gene tokens to keep per cell.
    out
        Output array (rows = cells) that receives the tokens from column ``start_col`` on; must be pre-filled
        with the padding id.
    start_col
        First column of ``out`` to write (1 when a ``<cls>`` token comes first).
    collapse
        Sum, per cell, the values of columns that share a token (in column order, float64) before normalising, as
        if those columns had been added up in the input.

    Returns
    -------
    Number of gene tokens written per cell (int64).
    """
    n_rows = indptr.shape[0] - 1
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    norm = NORM_CODES[normalization]
    keys = np.empty(indptr[-1] - indptr[0] if n_rows else 0, dtype=np.uint64)
    key_ptr = np.empty(n_rows + 1, dtype=np.int64)
    n_genes = np.empty(n_rows, dtype=np.int64)
    if n_rows and indptr[0] != 0:
        msg = "tokenize_csr expects a CSR block whose indptr starts at 0 (slice rows with scipy first)."
        raise ValueError(msg)
    acc = np.zeros(medians.shape[0] if collapse else 1, dtype=np.float64)
    _build_keys(
        indptr, indices, data, col2tok, medians, norm, float(target_sum), keys, key_ptr, n_genes, bool(collapse), acc
    )
    for r in np.flatnonzero(n_genes > 1):
        keys[key_ptr[r] : key_ptr[r + 1]].sort()
    scratch = np.zeros(medians.shape[0], dtype=np.float64)
    done = np.zeros(medians.shape[0] if collapse else 1, dtype=np.uint8)
    _finish_rows(
        indptr, indices, data, col2tok, medians, norm, float(target_sum), keys, key_ptr, out, start_col, max_genes,
        scratch, bool(collapse), done,
    )  # fmt: skip
    return np.minimum(n_genes, max_genes)


def check_values(data: np.ndarray, *, check_integer: bool) -> tuple[int, int, int, int]:
    """Locate the first NaN/inf, negative and non-integer entries of ``data`` (``-1`` where there is none)."""
    return _check_values(np.ascontiguousarray(data), check_integer)

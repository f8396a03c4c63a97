"""Baselines of the deconvolution benchmark: NNLS on normalised expression (numpy / scipy; no AnnData)."""

from __future__ import annotations

import numpy as np

__all__ = ["nnls"]


def nnls(Y: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cell-type fractions by non-negative least squares on normalised expression (the classic deconvolution).

    Each mixture is scaled to sum 1 over the genes and regressed, without intercept and with non-negative
    coefficients, on the prototypes (expected counts per cell of each type, scaled by their mean total); the
    coefficients, normalised to sum 1, are the cell fractions.

    Parameters
    ----------
    Y
        Mixtures, samples x genes (counts or any linear-scale expression, e.g. TPM).
    prototypes
        Expected counts per cell, genes x types.

    Returns
    -------
    numpy.ndarray
        Fractions, samples x types; a sample NNLS cannot explain at all gets equal fractions.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.deconvolution import nnls
    >>> M = np.array([[10.0, 0.0], [0.0, 5.0], [5.0, 5.0]])  # 3 genes x 2 types
    >>> nnls(np.array([[0.25, 0.75]]) @ M.T, M).round(3)
    array([[0.25, 0.75]])
    """
    from scipy.optimize import nnls as _scipy_nnls

    Y = np.asarray(Y, dtype=np.float64)
    A = np.asarray(prototypes, dtype=np.float64)
    A = A / A.sum(axis=0).mean()
    out = np.empty((Y.shape[0], A.shape[1]))
    for s, y in enumerate(Y):
        tot = y.sum()
        x, _ = _scipy_nnls(A, y / tot if tot > 0 else y, maxiter=50 * A.shape[1])
        out[s] = x / x.sum() if x.sum() > 0 else 1.0 / A.shape[1]
    return out

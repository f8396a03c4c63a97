"""Agreement of estimated and true cell-type fractions (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["fraction_agreement"]


def fraction_agreement(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-type Pearson r and RMSE between estimated and true fractions (samples x types each).

    Parameters
    ----------
    pred
        Estimated fractions.
    truth
        True (or reference) fractions, same shape and column order.

    Returns
    -------
    dict
        ``"r"`` and ``"rmse"`` per type (r is NaN where either column is constant), ``"r_all"`` and ``"rmse_all"``
        over all entries.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.deconvolution import fraction_agreement
    >>> truth = np.array([[0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    >>> m = fraction_agreement(truth + [[0.1, -0.1], [0.0, 0.0], [-0.1, 0.1]], truth)
    >>> m["r"].round(3).tolist(), m["rmse"].round(3).tolist()
    ([0.997, 0.997], [0.082, 0.082])
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        msg = f"pred has shape {pred.shape} but truth {truth.shape}."
        raise ValueError(msg)
    pc = pred - pred.mean(axis=0)
    tc = truth - truth.mean(axis=0)
    den = np.sqrt((pc**2).sum(axis=0) * (tc**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, (pc * tc).sum(axis=0) / den, np.nan)
    rmse = np.sqrt(((pred - truth) ** 2).mean(axis=0))
    r_all = float(np.corrcoef(pred.ravel(), truth.ravel())[0, 1]) if pred.size > 1 else float("nan")
    return {
        "r": r,
        "rmse": rmse,
        "r_all": np.float64(r_all),
        "rmse_all": np.float64(np.sqrt(((pred - truth) ** 2).mean())),
    }

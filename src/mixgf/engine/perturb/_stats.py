"""Statistics of an in silico perturbation screen: per-set summaries and the p-values of its tests.

Pure numpy/scipy (statsmodels for the adjustment): the matched-control test (:func:`matched_test`), Geneformer's
rank-sum test (:func:`geneformer_test`) and Benjamini–Hochberg (:func:`benjamini_hochberg`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "STAT_COLUMNS",
    "benjamini_hochberg",
    "geneformer_test",
    "matched_test",
    "set_ranks",
    "shift_summary",
]

#: Columns of :attr:`ScreenResult.stats`, one row per tested gene set.
STAT_COLUMNS = [
    "n_cells",
    "shift_mean",
    "shift_median",
    "shift_sd",
    "expected_shift",
    "shift_vs_expected",
    "n_controls",
    "n_control_cells",
    "p_value",
    "p_adj",
]


def shift_summary(
    shifts: np.ndarray, applicable: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per set (column): its shifts where it applies and was scored, their number, mean, median and sd (ddof 1)."""
    values = [shifts[applicable[:, s] & ~np.isnan(shifts[:, s]), s] for s in range(applicable.shape[1])]
    n_cells = np.array([v.shape[0] for v in values])
    with np.errstate(all="ignore"):
        mean = np.array([v.mean() if v.size else np.nan for v in values])
        median = np.array([np.median(v) if v.size else np.nan for v in values])
        sd = np.array([v.std(ddof=1) if v.size > 1 else np.nan for v in values])
    return values, n_cells, mean, median, sd


def _interp_rows(x: np.ndarray, xs: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weights with which :func:`numpy.interp` predicts at ``x`` (flat beyond the ends), for many rows at once.

    ``xs`` holds one ascending row per query, its first ``m`` entries valid (the rest ``inf``). Returns the two
    positions and the weight of the second: the prediction is ``(1 - a) * v[lo] + a * v[hi]``.
    """
    rows = np.arange(xs.shape[0])
    first, last = xs[:, 0], xs[rows, m - 1]
    flat_lo = x <= first
    flat_hi = ~flat_lo & (x >= last)
    j = np.clip((xs <= x[:, None]).sum(axis=1), 1, np.maximum(m - 1, 1))
    left, right = xs[rows, j - 1], xs[rows, j]
    gap = right - left
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(gap > 0, (x - left) / np.where(gap > 0, gap, 1.0), 0.5)
    lo = np.where(flat_lo, 0, np.where(flat_hi, m - 1, j - 1))
    hi = np.where(flat_lo, 0, np.where(flat_hi, m - 1, j))
    a = np.where(flat_lo | flat_hi, 0.0, a)
    return lo, hi, a


def matched_test(
    shifts: np.ndarray,
    applicable: np.ndarray,
    tested: int,
    control_cols: list[list[int]],
    sets: list[np.ndarray],
    ranks: sp.csr_matrix,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tested set: expected shift, number of controls, t statistic, two-sided p-value, residual and cells used.

    The test uses the cells where the tested set and at least three of its controls were perturbed: the expected
    shift and the residual (shift minus expected) are means over those cells, whose number is returned last.

    In every cell where the tested set is perturbed, its expected shift is interpolated between the controls nearest
    to it in rank in that cell (flat beyond the outermost control), and its residual is its shift minus that; each
    control's residual is interpolated in the same way from the other controls present in the cell. Residuals are
    averaged per gene over its cells: ``d = A u`` where ``A`` (from the interpolation weights) maps the genes' own
    effects ``u`` to their mean residuals. Under the null the tested set and its controls are exchangeable genes
    (``u`` independent with a common variance), so the variance of ``d_0 - mean(d_controls)`` relative to the
    expected sample variance of ``d_controls`` is known from ``A``:
    ``t = (d_0 - mean(d_c)) / sqrt(var(d_c) * kappa)`` with ``kappa = c'AA'c / (tr(H A_c A_c' H) / (K - 1))`` and
    Satterthwaite degrees of freedom from the eigenvalues of ``H A_c A_c' H`` (``H`` centres the K controls).
    Were the mean residuals independent with equal variances (``AA' = I``) this would be the prediction-interval
    t-test (``kappa = 1 + 1/K``, ``K - 1`` degrees of freedom); they are not: interpolation correlates neighbouring
    controls, and a gene seen in several cells, whose controls change order between cells or lie on one side of it,
    has a mean residual of another variance than its controls'. Accounting for that keeps the test's size.
    """
    from scipy import stats

    has = ~np.isnan(shifts)
    expected = np.full(tested, np.nan)
    n_ctrl = np.zeros(tested, dtype=np.int64)
    t_stat = np.full(tested, np.nan)
    p = np.full(tested, np.nan)
    residual = np.full(tested, np.nan)
    n_cells = np.zeros(tested, dtype=np.int64)

    for s in range(tested):
        rows = np.flatnonzero(applicable[:, s] & has[:, s])
        if rows.shape[0] == 0 or not control_cols[s]:
            continue
        cols = np.asarray(control_cols[s])
        y = shifts[np.ix_(rows, cols)]  # cells x controls
        ok = ~np.isnan(y)
        keep = ok.any(axis=0)
        n_ctrl[s] = int(keep.sum())
        if n_ctrl[s] < 3:
            continue
        y, ok, cols = y[:, keep], ok[:, keep], cols[keep]
        k = cols.shape[0]
        sub_ranks = ranks[rows]
        r = set_ranks(sub_ranks, [sets[c] for c in cols])
        r0 = set_ranks(sub_ranks, [sets[s]])[:, 0]
        # genes: 0 = the tested set, 1..k = its controls; A accumulates each cell's residual operator
        a_sum = np.zeros((k + 1, k + 1))
        resid_sum = np.zeros(k + 1)
        n_obs = np.zeros(k + 1)
        # per cell, the controls present sorted by rank (absent ones last, at +inf)
        m = ok.sum(axis=1)
        use = m >= 3
        if not use.any():
            continue
        r_use, y_use, ok_use, m = r[use], y[use], ok[use], m[use]
        keyed = np.where(ok_use, r_use, np.inf)
        order, sr, sy = _sorted_by_rank(keyed, np.where(ok_use, y_use, 0.0))
        cells = np.arange(sr.shape[0])
        # the tested set, interpolated from all of the cell's controls
        lo, hi, w = _interp_rows(r0[use], sr, m)
        pred = (1 - w) * sy[cells, lo] + w * sy[cells, hi]
        a_sum[0, 0] += cells.shape[0]
        np.add.at(a_sum[0], 1 + order[cells, lo], -(1 - w))
        np.add.at(a_sum[0], 1 + order[cells, hi], -w)
        resid_sum[0] += float((shifts[rows[use], s] - pred).sum())
        n_obs[0] += cells.shape[0]
        # every control, interpolated from the cell's other controls (leave one out)
        cell_q, q, lo_pos, hi_pos, w, pred_c = _leave_one_out(sr, sy, m)
        g = 1 + order[cell_q, q]
        flat = a_sum.reshape(-1)
        np.add.at(flat, g * (k + 1) + g, 1.0)
        np.add.at(flat, g * (k + 1) + 1 + order[cell_q, lo_pos], -(1 - w))
        np.add.at(flat, g * (k + 1) + 1 + order[cell_q, hi_pos], -w)
        np.add.at(resid_sum, g, sy[cell_q, q] - pred_c)
        np.add.at(n_obs, g, 1.0)
        expected[s] = float(pred.mean())
        residual[s] = resid_sum[0] / n_obs[0]
        n_cells[s] = cells.shape[0]
        seen = n_obs > 0  # the tested set always is; a control may be present in too few cells to be scored
        if seen[1:].sum() < 3:
            continue
        amat = a_sum[seen] / n_obs[seen][:, None]
        d = resid_sum[seen] / n_obs[seen]
        kk = d.shape[0] - 1
        cov = amat @ amat.T  # covariance of the mean residuals, in units of the genes' common variance
        centre = np.eye(kk) - 1.0 / kk
        spread = centre @ cov[1:, 1:] @ centre
        ev = np.clip(np.linalg.eigvalsh(spread), 0.0, None)
        ctrl_var = float(d[1:].var(ddof=1))
        if not (ctrl_var > 0 and ev.sum() > 0):
            continue
        contrast = np.concatenate([[1.0], np.full(kk, -1.0 / kk)])
        kappa = float(contrast @ cov @ contrast) / (ev.sum() / (kk - 1))
        if not kappa > 0:
            continue
        df = ev.sum() ** 2 / (ev**2).sum()
        t_stat[s] = float(contrast @ d) / np.sqrt(ctrl_var * kappa)
        p[s] = 2 * stats.t.sf(abs(t_stat[s]), df)
    return expected, n_ctrl, t_stat, p, residual, n_cells


def set_ranks(ranks: sp.csr_matrix, member_sets: list[np.ndarray]) -> np.ndarray:
    """Cells x sets: relative rank of each gene set (mean over its members) in each cell of ``ranks``."""
    flat = np.concatenate(member_sets)
    r = ranks[:, flat].toarray()
    r[r == 0] = 1.0  # a gene the cell lacks (overexpression) counts as ranked last
    bounds = np.cumsum([0, *[m.shape[0] for m in member_sets]])
    return np.add.reduceat(r, bounds[:-1], axis=1) / np.diff(bounds)[None, :]


def _sorted_by_rank(keyed: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the order of the columns by rank (absent ones, keyed ``inf``, last), sorted ranks and values."""
    order = np.argsort(keyed, axis=1, kind="stable")
    return order, np.take_along_axis(keyed, order, axis=1), np.take_along_axis(values, order, axis=1)


def _leave_one_out(
    sr: np.ndarray, sy: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every control of every row interpolated from the row's other controls (rows sorted by rank, ``m`` present).

    Returns the (row, position) of each control, the positions of its two neighbours, the weight of the second and
    the prediction.
    """
    kc = sr.shape[1]
    pos = np.arange(kc - 1)
    drop = pos[None, :] + (pos[None, :] >= np.arange(kc)[:, None])  # [q, kc - 1]: the positions other than q
    cell_q, q = np.nonzero(np.arange(kc)[None, :] < m[:, None])
    others = drop[q]  # [pairs, kc - 1] positions in the sorted row
    o_r = sr[cell_q[:, None], others]
    lo, hi, w = _interp_rows(sr[cell_q, q], o_r, m[cell_q] - 1)
    lo_pos, hi_pos = others[np.arange(q.shape[0]), lo], others[np.arange(q.shape[0]), hi]
    pred = (1 - w) * sy[cell_q, lo_pos] + w * sy[cell_q, hi_pos]
    return cell_q, q, lo_pos, hi_pos, w, pred


def geneformer_test(values: list[np.ndarray], seed: int, pool_max: int = 100_000) -> np.ndarray:
    """Geneformer's statistic: Wilcoxon rank-sum of a gene's shifts against the pooled shifts of all genes."""
    from scipy import stats

    pool = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) else np.empty(0)
    if pool.shape[0] > pool_max:
        pool = np.random.default_rng(seed).choice(pool, pool_max, replace=False)
    out = np.full(len(values), np.nan)
    if len(values) < 2:
        return out
    for i, v in enumerate(values):
        if v.size and pool.size:
            out[i] = stats.ranksums(pool, v).pvalue
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (statsmodels' ``fdr_bh``); NaN stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    out = np.full_like(p, np.nan, dtype=np.float64)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out

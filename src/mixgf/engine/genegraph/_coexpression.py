"""Gene selection, node features and gene-gene co-expression graphs (numpy / scipy; cells x genes arrays).

CS-CORE (Su, Xu, Wang et al. 2023, Nat Commun 14:4591) models the counts of gene ``j`` in cell ``i`` as
``E[x_ij] = s_i mu_j``, ``Var[x_ij] = s_i mu_j + s_i^2 sigma_jj`` and ``Cov[x_ij, x_ik] = s_i^2 sigma_jk`` with
``s_i`` the cell's sequencing depth: a Poisson measurement of an underlying expression level whose covariance
across cells is the co-expression. The moments are fitted by iteratively re-weighted least squares (IRLS) and
the covariance is tested against zero with an asymptotically normal statistic. Pearson correlation of
log-normalised expression with a t test is the fast alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

__all__ = [
    "CoexpressionResult",
    "adjacency_from_pvalues",
    "cscore",
    "moran_i",
    "pearson_coexpression",
    "pearson_residuals",
    "select_genes",
]

#: Residual clipping and overdispersion of the analytic Pearson residuals (Lause et al. 2021), as in scanpy.
_THETA = 100.0


@dataclass
class CoexpressionResult:
    """Co-expression of every gene pair.

    Attributes
    ----------
    correlation
        Co-expression estimate (genes x genes, symmetric, diagonal 1; NaN where a gene's variance is not positive).
    statistic
        Test statistic (z for CS-CORE, t for Pearson; 0 on the diagonal).
    pvalues
        Two-sided p-values of no co-expression (1 on the diagonal).
    mean, variance
        Per-gene mean and variance of the underlying expression (CS-CORE) or of the input values (Pearson).
    n_iter
        IRLS iterations (0 for Pearson).
    """

    correlation: np.ndarray
    statistic: np.ndarray
    pvalues: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    n_iter: int = 0


def _dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    return np.asarray(X.todense() if sp.issparse(X) else X, dtype=np.float64)


def _as_csr(X: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    return sp.csr_matrix(X, dtype=np.float64)


def pearson_residuals(
    counts: np.ndarray | sp.spmatrix, columns: np.ndarray | None = None, theta: float = _THETA
) -> np.ndarray:
    """Analytic Pearson residuals of a negative-binomial null with the cell's depth (Lause, Berens & Kobak 2021).

    ``r_ij = (x_ij - mu_ij) / sqrt(mu_ij + mu_ij^2 / theta)`` with ``mu_ij = s_i p_j``, ``s_i`` the cell's total
    counts and ``p_j`` the gene's share of all counts, clipped at ``+-sqrt(n_cells)``.

    Parameters
    ----------
    counts
        Raw counts (cells x genes).
    columns
        Genes to return (depth and shares still come from all genes); `None`: all.
    theta
        NB inverse overdispersion.

    Returns
    -------
    numpy.ndarray
        Residuals (cells x genes, float32); 0 for a gene never detected.
    """
    X = _as_csr(counts)
    s = np.asarray(X.sum(axis=1)).ravel()
    p = np.asarray(X.sum(axis=0)).ravel() / max(float(s.sum()), 1.0)
    if columns is not None:
        X, p = X[:, columns], p[columns]
    mu = s[:, None] * p[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (X.toarray() - mu) / np.sqrt(mu + mu**2 / theta)
    r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    clip = np.sqrt(X.shape[0])
    return np.clip(r, -clip, clip).astype(np.float32)


def moran_i(values: np.ndarray, coords: np.ndarray, n_neighbors: int = 6) -> np.ndarray:
    """Moran's I of every column over a k-nearest-neighbour graph of spatial coordinates.

    Parameters
    ----------
    values
        Spots x genes.
    coords
        Spots x 2 (or 3) coordinates.
    n_neighbors
        Neighbours per spot (row-normalised binary weights).

    Returns
    -------
    numpy.ndarray
        Moran's I per gene (0 for a constant gene).
    """
    from scipy.spatial import cKDTree

    n = values.shape[0]
    k = min(n_neighbors, n - 1)
    _, idx = cKDTree(coords).query(coords, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((np.full(n * k, 1.0 / k), (rows, idx[:, 1:].ravel())), shape=(n, n))
    z = values - values.mean(axis=0, keepdims=True)
    num = np.einsum("ij,ij->j", z, W @ z)
    den = np.einsum("ij,ij->j", z, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, 0.0)  # n / W.sum() == 1 with row-normalised weights


def select_genes(
    counts: np.ndarray | sp.spmatrix,
    n_top: int,
    *,
    min_cells: int = 3,
    coords: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_top`` most variable (or, with ``coords``, most spatially autocorrelated) expressed genes.

    Highly variable genes are ranked by the variance of their Pearson residuals (scanpy's ``pearson_residuals``
    flavour); spatially variable genes by Moran's I of their residuals over the spots' 6 nearest neighbours.

    Parameters
    ----------
    counts
        Raw counts (cells x genes).
    n_top
        Genes to keep.
    min_cells
        A gene must be detected in at least this many cells.
    coords
        Spatial coordinates of the cells (spots); `None` ranks by residual variance.

    Returns
    -------
    tuple of numpy.ndarray
        Column indices of the selected genes (ascending), and the score of every gene (NaN if not expressed).
    """
    X = _as_csr(counts)
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    expressed = np.flatnonzero(detected >= min_cells)
    if len(expressed) < n_top:
        msg = (
            f"only {len(expressed):,} genes are detected in at least {min_cells} cells, fewer than "
            f"n_top_genes={n_top}; lower n_top_genes or use a dataset with more expressed genes."
        )
        raise ValueError(msg)
    score = np.full(X.shape[1], np.nan)
    # depth from all genes; residuals of the expressed ones, in blocks to bound memory
    s = np.asarray(X.sum(axis=1)).ravel()
    total = X.sum()
    p_all = np.asarray(X.sum(axis=0)).ravel() / total
    clip = np.sqrt(X.shape[0])
    Xe = X[:, expressed].tocsc()
    for start in range(0, len(expressed), 2048):
        cols = np.arange(start, min(start + 2048, len(expressed)))
        block = np.asarray(Xe[:, cols].todense())
        mu = s[:, None] * p_all[expressed[cols]][None, :]
        r = np.clip((block - mu) / np.sqrt(mu + mu**2 / _THETA), -clip, clip)
        if coords is None:
            score[expressed[cols]] = r.var(axis=0)
        else:
            score[expressed[cols]] = moran_i(r, np.asarray(coords, dtype=np.float64))
    order = expressed[np.argsort(-score[expressed], kind="stable")]
    return np.sort(order[:n_top]), score


def cscore(
    counts: np.ndarray | sp.spmatrix,
    seq_depth: np.ndarray,
    *,
    max_iter: int = 10,
    tol: float = 0.05,
) -> CoexpressionResult:
    """CS-CORE: co-expression of genes from raw counts and sequencing depth by an IRLS moment estimator.

    Means ``mu_j`` and variances ``sigma_jj`` are fitted by weighted least squares of ``x_ij`` on ``s_i`` and of
    ``(x_ij - s_i mu_j)^2 - s_i mu_j`` on ``s_i^2``, the weights being the inverse (squared) model variances,
    re-estimated until the ratio ``mu^2 / sigma`` moves by less than ``tol`` (log scale) or ``max_iter``
    iterations. Covariances are the weighted regression of ``(x_ij - s_i mu_j)(x_ik - s_i mu_k)`` on ``s_i^2`` with
    weights ``1 / (w_ij w_ik)``; the test of ``sigma_jk = 0`` divides the weighted sum by its standard deviation
    under independence, which is asymptotically standard normal.

    Parameters
    ----------
    counts
        Raw counts of the genes to correlate (cells x genes).
    seq_depth
        Sequencing depth of each cell (its total counts over all genes).
    max_iter
        Most IRLS iterations.
    tol
        Convergence threshold on ``max |log(theta_new / theta_old)|``.

    Returns
    -------
    CoexpressionResult
        Correlations clipped to ``[-1, 1]`` (NaN for genes with a non-positive variance estimate), z statistics
        and two-sided normal p-values; ``mean`` and ``variance`` are ``mu`` and ``sigma_jj``.
    """
    X = _dense(counts)
    s = np.asarray(seq_depth, dtype=np.float64).ravel()
    if X.shape[0] != s.shape[0]:
        msg = f"counts has {X.shape[0]} cells but seq_depth {s.shape[0]} values."
        raise ValueError(msg)
    if (s <= 0).any():
        msg = f"{int((s <= 0).sum())} cells have a sequencing depth <= 0; remove empty cells first."
        raise ValueError(msg)
    s2, s4 = s**2, s**4
    mu = X.sum(axis=0) / s.sum()
    M = np.outer(s, mu)
    Xc = X - M
    sigma2 = ((Xc**2 - M) * s2[:, None]).sum(axis=0) / s4.sum()
    theta = mu**2 / sigma2
    n_iter = 0
    w = None
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        previous = theta.copy()
        w = _weights(M, s2, mu, theta)
        mu = (X * s[:, None] / w).sum(axis=0) / (s2[:, None] / w).sum(axis=0)
        M = np.outer(s, mu)
        Xc = X - M
        h = (M + np.outer(s2, sigma2)) ** 2
        h[~np.isfinite(h) | (h <= 0)] = 1.0
        sigma2 = ((Xc**2 - M) * s2[:, None] / h).sum(axis=0) / (s4[:, None] / h).sum(axis=0)
        theta = mu**2 / sigma2
        ok = (theta > 0) & (previous > 0) & np.isfinite(theta) & np.isfinite(previous)
        delta = np.max(np.abs(np.log(theta[ok] / previous[ok]))) if ok.any() else 0.0
        if delta < tol:
            break
    w = _weights(M, s2, mu, theta)
    Xw = Xc / w
    num = (Xw * s2[:, None]).T @ Xw  # sum_i s_i^2 xc_ij xc_ik / (w_ij w_ik)
    Sw = s2[:, None] / w
    den = Sw.T @ Sw  # sum_i s_i^4 / (w_ij w_ik)
    cov = num / den
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.where(sigma2 > 0, sigma2, np.nan))
        corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
        # variance of the weighted sum under independence: sum_i s_i^4 V_ij V_ik / (w_ij w_ik)^2
        V = M + np.outer(s2, np.maximum(sigma2, 0.0))
        A = s2[:, None] * V / w**2
        z = num / np.sqrt(A.T @ A)
    np.fill_diagonal(corr, np.where(np.isfinite(np.diag(corr)), 1.0, np.nan))
    np.fill_diagonal(z, 0.0)
    z = np.where(np.isfinite(z), z, 0.0)
    p = 2.0 * stats.norm.sf(np.abs(z))
    return CoexpressionResult(corr, z, p, mu, sigma2, n_iter)


def _weights(M: np.ndarray, s2: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """IRLS weights ``s_i mu_j + s_i^2 mu_j^2 / theta_j`` (a missing theta takes the median; a negative one: Poisson)."""
    theta = theta.copy()
    bad = ~np.isfinite(theta)
    if bad.any():
        theta[bad] = np.nanmedian(np.where(np.isfinite(theta), theta, np.nan)) if (~bad).any() else np.inf
    theta[theta < 0] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        w = M + np.outer(s2, mu**2 / theta)
    w[~np.isfinite(w) | (w <= 0)] = 1.0
    return w


def pearson_coexpression(values: np.ndarray | sp.spmatrix) -> CoexpressionResult:
    """Pearson correlation of every gene pair over cells, with the t test of no correlation.

    Parameters
    ----------
    values
        Normalised expression (cells x genes), e.g. log1p of depth-normalised counts.

    Returns
    -------
    CoexpressionResult
        Correlations (NaN for constant genes), t statistics and two-sided p-values.
    """
    X = _dense(values)
    n = X.shape[0]
    if n < 3:
        msg = f"Pearson co-expression needs at least 3 cells, got {n}."
        raise ValueError(msg)
    Xc = X - X.mean(axis=0)
    sd = np.sqrt((Xc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        Z = Xc / np.where(sd > 0, sd, np.nan)
        corr = np.clip(Z.T @ Z, -1.0, 1.0)
        np.fill_diagonal(corr, np.where(sd > 0, 1.0, np.nan))
        t = corr * np.sqrt((n - 2) / np.maximum(1.0 - corr**2, 1e-300))
    t = np.where(np.isfinite(t), t, 0.0)
    np.fill_diagonal(t, 0.0)
    p = 2.0 * stats.t.sf(np.abs(t), df=n - 2)
    return CoexpressionResult(corr, t, p, X.mean(axis=0), X.var(axis=0), 0)


def adjacency_from_pvalues(result: CoexpressionResult, alpha: float, *, positive_only: bool = False) -> sp.csr_matrix:
    """Binary symmetric adjacency: gene pairs with ``p < alpha`` (no self-loops).

    Parameters
    ----------
    result
        A co-expression result.
    alpha
        P-value threshold (MuSe-GNN: 0.005).
    positive_only
        Keep only positively co-expressed pairs.

    Returns
    -------
    scipy.sparse.csr_matrix
        genes x genes, float32 ones on the edges.
    """
    keep = result.pvalues < alpha
    if positive_only:
        keep &= np.nan_to_num(result.correlation) > 0
    np.fill_diagonal(keep, False)
    keep &= keep.T
    return sp.csr_matrix(keep.astype(np.float32))

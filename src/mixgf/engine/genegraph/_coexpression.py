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
        Co-expression estimate (genes x genes, symmetric, diagonal 1).
    statistic
        Test statistic (z for CS-CORE, t for Pearson; 0 on the diagonal).
    pvalues
        Two-sided p-values of no co-expression (1 on the diagonal).
    mean, variance
        Per-gene mean and variance of the underlying expression (CS-CORE) or of the input values (Pearson).
    n_iter
        IRLS iterations (0 for Pearson).
    theta
        CS-CORE: the median ``mu^2 / sigma`` used in the final weights (NaN for Pearson).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.genegraph import pearson_coexpression
    >>> res = pearson_coexpression(np.array([[1.0, 2.0], [2.0, 4.1], [3.0, 5.9], [4.0, 8.2]]))
    >>> res.correlation.shape, bool(res.pvalues[0, 1] < 0.01)
    ((2, 2), True)
    """

    correlation: np.ndarray
    statistic: np.ndarray
    pvalues: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    n_iter: int = 0
    theta: float = float("nan")


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

    Examples
    --------
    >>> import mixgf as mgf
    >>> from mixgf.engine.genegraph import select_genes
    >>> adata = mgf.datasets.pbmc3k()
    >>> idx, score = select_genes(adata.X, 50)
    >>> len(idx), "LYZ" in adata.var_names[idx]
    (50, True)
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

    Means ``mu_j`` are fitted by least squares of ``x_ij`` on ``s_i`` and variances ``sigma_jj`` by least squares
    of ``(x_ij - s_i mu_j)^2 - s_i mu_j`` on ``s_i^2``; then, until ``theta_j = mu_j^2 / sigma_jj`` moves by less
    than ``tol`` (largest absolute change of ``log theta``) or after ``max_iter`` rounds, both fits are repeated
    with weights ``1 / w_ij`` and ``1 / w_ij^2``, ``w_ij = s_i mu_j + s_i^2 mu_j^2 / theta`` the model variance
    with the genes' median ``theta`` (as in the authors' release). Covariances are the weighted regression of
    ``(x_ij - s_i mu_j)(x_ik - s_i mu_k)`` on ``s_i^2`` with weights ``1 / (w_ij w_ik)``. The test of
    ``sigma_jk = 0`` weights by the fitted variances ``V_ij = s_i mu_j + s_i^2 sigma_jj`` instead, which makes the
    weighted sum's variance under independence equal to its denominator: ``z = sum_i s_i^2 r_ij r_ik / (V_ij V_ik)
    / sqrt(sum_i s_i^4 / (V_ij V_ik))``, asymptotically standard normal.

    Parameters
    ----------
    counts
        Raw counts of the genes to correlate (cells x genes).
    seq_depth
        Sequencing depth of each cell (its total counts over all genes).
    max_iter
        Most IRLS rounds.
    tol
        Convergence threshold on ``max |log(theta_new / theta_old)|``.

    Returns
    -------
    CoexpressionResult
        Correlations clipped to ``[-1, 1]`` (0 for a gene with a negative variance estimate: no detectable
        biological variation), z statistics and two-sided normal p-values; ``mean`` and ``variance`` are ``mu`` and
        ``sigma_jj``; ``theta`` the median ``theta`` of the final weights.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.engine.genegraph import cscore
    >>> adata = mgf.datasets.pbmc3k()
    >>> genes = ["CD79A", "CD79B", "LYZ", "S100A9", "CD3D"]
    >>> counts = adata[:, genes].X
    >>> depth = np.asarray(adata.X.sum(axis=1)).ravel()
    >>> res = cscore(counts, depth)
    >>> res.correlation.round(2)[0, 1], bool(res.pvalues[0, 1] < 1e-50)
    (np.float64(0.55), True)
    >>> bool(res.correlation[2, 4] < 0)  # monocyte LYZ vs T-cell CD3D
    True
    """
    X = _dense(counts)
    s = np.asarray(seq_depth, dtype=np.float64).ravel()
    if X.shape[0] != s.shape[0]:
        msg = f"counts has {X.shape[0]} cells but seq_depth {s.shape[0]} values."
        raise ValueError(msg)
    if (s <= 0).any():
        msg = f"{int((s <= 0).sum())} cells have a sequencing depth <= 0; remove empty cells first."
        raise ValueError(msg)
    s2 = s**2
    mu = s @ X / s2.sum()
    M = np.outer(s, mu)
    sigma2 = s2 @ ((X - M) ** 2 - M) / (s2**2).sum()
    theta = mu**2 / sigma2
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        previous = theta
        w = _weights(M, s2, mu, theta)
        mu = s @ (X / w) / (s2 @ (1.0 / w))
        M = np.outer(s, mu)
        h = _weights(M, s2, mu, theta) ** 2
        sigma2 = s2 @ (((X - M) ** 2 - M) / h) / ((s2**2) @ (1.0 / h))
        theta = mu**2 / sigma2
        ok = (theta > 0) & (previous > 0)
        if not ok.any() or np.max(np.abs(np.log(theta[ok] / previous[ok]))) < tol:
            break
    R = X - M
    w = _weights(M, s2, mu, theta)
    cov = _weighted_products(R, s2, w) / _depth_products(s2, w)
    V = M + np.outer(s2, np.maximum(sigma2, 0.0))
    V[V <= 0] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = _weighted_products(R, s2, V) / np.sqrt(_depth_products(s2, V))
        negative = ~(sigma2 > 0)
        sd = np.sqrt(np.where(negative, 1.0, sigma2))
        corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
    corr[negative, :] = 0.0
    corr[:, negative] = 0.0
    np.fill_diagonal(corr, 1.0)
    z = np.where(np.isfinite(z), z, 0.0)
    np.fill_diagonal(z, 0.0)
    p = 2.0 * stats.norm.sf(np.abs(z))
    return CoexpressionResult(corr, z, p, mu, sigma2, n_iter, float(_median_theta(theta)))


def _median_theta(theta: np.ndarray) -> float:
    pos = theta[np.isfinite(theta) & (theta > 0)]
    return float(np.median(pos)) if len(pos) else np.inf


def _weights(M: np.ndarray, s2: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """IRLS variances ``s_i mu_j + s_i^2 mu_j^2 / theta`` with the median positive ``theta`` (``<= 0`` set to 1)."""
    w = M + np.outer(s2, mu**2 / _median_theta(theta))
    w[~np.isfinite(w) | (w <= 0)] = 1.0
    return w


def _weighted_products(R: np.ndarray, s2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_i s_i^2 R_ij R_ik / (w_ij w_ik)`` for all gene pairs."""
    Rw = R / w
    return (Rw * s2[:, None]).T @ Rw


def _depth_products(s2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_i s_i^4 / (w_ij w_ik)`` for all gene pairs."""
    Sw = s2[:, None] / w
    return Sw.T @ Sw


def pearson_coexpression(values: np.ndarray | sp.spmatrix) -> CoexpressionResult:
    """Pearson correlation of every gene pair over cells, with the t test of no correlation.

    Parameters
    ----------
    values
        Normalised expression (cells x genes), e.g. log1p of depth-normalised counts.

    Returns
    -------
    CoexpressionResult
        Correlations (0 for a constant gene), t statistics and two-sided p-values.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.engine.genegraph import pearson_coexpression
    >>> adata = mgf.datasets.pbmc3k()
    >>> x = adata[:, ["CD79A", "CD79B"]].X.toarray()
    >>> logn = np.log1p(x * 1e4 / np.asarray(adata.X.sum(axis=1)))
    >>> res = pearson_coexpression(logn)
    >>> bool(np.isclose(res.correlation[0, 1], np.corrcoef(logn.T)[0, 1]))
    True
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
        corr = np.nan_to_num(np.clip(Z.T @ Z, -1.0, 1.0))  # a constant gene correlates with nothing
        np.fill_diagonal(corr, 1.0)
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

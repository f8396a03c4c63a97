"""The gene-graph engine: CS-CORE and Pearson co-expression on real counts, gene selection, graph splits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from mixgf.datasets import pbmc3k
from mixgf.engine.genegraph import (
    GeneGraph,
    adjacency_from_pvalues,
    cscore,
    jaccard_weights,
    moran_i,
    pearson_coexpression,
    pearson_residuals,
    select_genes,
    split_edges,
)


@pytest.fixture(scope="module")
def pbmc():
    a = pbmc3k()
    X = sp.csr_matrix(a.X, dtype=np.float64)
    idx, _ = select_genes(X, 150)
    idx = np.union1d(idx, a.var_names.get_indexer(["CD3D", "CD3E", "IL7R"]))  # T-cell genes for the sign checks
    return a.var_names[idx].tolist(), X[:, idx], np.asarray(X.sum(axis=1)).ravel(), X


def _pair(names, M, g, h):
    return M[names.index(g), names.index(h)]


def test_select_genes_ranks_residual_variance_and_refuses_too_few(pbmc):
    names, _, _, X = pbmc
    # the classic PBMC markers are among the most variable genes
    assert {"LYZ", "S100A9", "CD79A", "NKG7", "GNLY"} <= set(names)
    idx, score = select_genes(X, 200)
    expressed = np.isfinite(score)
    assert np.nanmin(score[idx]) >= np.nanmax(np.delete(score, idx)[np.isfinite(np.delete(score, idx))])
    with pytest.raises(ValueError, match="fewer than n_top_genes"):
        select_genes(X, int(expressed.sum()) + 1)


def test_cscore_known_pbmc_coexpression(pbmc):
    names, sub, depth, _ = pbmc
    res = cscore(sub, depth)
    assert 1 <= res.n_iter <= 10
    # B-cell receptor chains, monocyte alarmins, NK granules: strongly co-expressed; T vs monocyte: anti
    for g, h in [("CD79A", "CD79B"), ("LYZ", "S100A9"), ("NKG7", "GNLY")]:
        assert _pair(names, res.correlation, g, h) > 0.4
        assert _pair(names, res.pvalues, g, h) < 1e-20
    assert _pair(names, res.correlation, "CD3D", "LYZ") < -0.2
    ok = np.isfinite(res.correlation)
    assert np.allclose(res.correlation[ok], res.correlation.T[ok])
    assert (np.abs(res.correlation[ok]) <= 1).all()
    assert ((res.pvalues >= 0) & (res.pvalues <= 1)).all()


_CHECK_GENES = ("CD79A", "CD79B", "LYZ", "S100A9", "NKG7", "GNLY", "CD3D", "CST3", "IL7R")


def test_cscore_matches_per_pair_weighted_regression(pbmc):
    """The matrix algebra against a generic least-squares solver, gene pair by gene pair, on real counts."""
    names, sub, depth, _ = pbmc
    res = cscore(sub, depth)
    X, s = sub.toarray(), depth
    mu, var = res.mean, res.variance
    genes = [names.index(g) for g in _CHECK_GENES]
    for a in genes:
        for b in genes:
            if a >= b:
                continue
            ra, rb = X[:, a] - s * mu[a], X[:, b] - s * mu[b]
            wa, wb = s * mu[a] + s**2 * mu[a] ** 2 / res.theta, s * mu[b] + s**2 * mu[b] ** 2 / res.theta
            # weighted regression of r_a * r_b on s^2 without intercept: scale rows by sqrt(weight)
            sw = 1.0 / np.sqrt(wa * wb)
            cov = np.linalg.lstsq((s**2 * sw)[:, None], ra * rb * sw, rcond=None)[0][0]
            assert res.correlation[a, b] == pytest.approx(np.clip(cov / np.sqrt(var[a] * var[b]), -1, 1), rel=1e-8)
            va, vb = s * mu[a] + s**2 * var[a], s * mu[b] + s**2 * var[b]
            z = np.sum(s**2 * ra * rb / (va * vb)) / np.sqrt(np.sum(s**4 / (va * vb)))
            assert res.statistic[a, b] == pytest.approx(z, rel=1e-8)
            assert res.pvalues[a, b] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-6, abs=1e-300)


def test_cscore_agrees_in_sign_with_plain_moments(pbmc):
    """The unweighted first step of the same moment equations: strong co-expression keeps its sign under IRLS."""
    _, sub, depth, _ = pbmc
    res = cscore(sub, depth)
    X, s = sub.toarray(), depth
    mu = s @ X / np.sum(s**2)
    R = X - s[:, None] * mu
    var = (s**2) @ (R**2 - s[:, None] * mu) / np.sum(s**4)
    cov = (R * s[:, None] ** 2).T @ R / np.sum(s**4)
    ok = var > 0
    plain = np.clip(cov[np.ix_(ok, ok)] / np.sqrt(np.outer(var[ok], var[ok])), -1, 1)
    irls = res.correlation[np.ix_(ok, ok)]
    iu = np.triu_indices(int(ok.sum()), 1)
    # measured: 98.5 % of 582 pairs with |r| > 0.5 agree in sign, Spearman 0.62 over all pairs; the rest are genes
    # whose unweighted variance is near 0, which inflates their unweighted correlations
    strong = np.abs(plain[iu]) > 0.5
    assert strong.sum() > 300
    assert (np.sign(plain[iu][strong]) == np.sign(irls[iu][strong])).mean() > 0.95
    assert stats.spearmanr(plain[iu], irls[iu]).statistic > 0.5


def test_cscore_bad_depth(pbmc):
    _, sub, depth, _ = pbmc
    with pytest.raises(ValueError, match="sequencing depth <= 0"):
        cscore(sub, np.where(np.arange(len(depth)) == 0, 0.0, depth))
    with pytest.raises(ValueError, match="seq_depth"):
        cscore(sub, depth[:-1])


def test_pearson_matches_scipy(pbmc):
    names, sub, depth, _ = pbmc
    L = np.log1p(sub.multiply(1e4 / depth[:, None]).toarray())
    res = pearson_coexpression(L)
    a, b = names.index("CD79A"), names.index("CD79B")
    r, p = stats.pearsonr(L[:, a], L[:, b])
    assert res.correlation[a, b] == pytest.approx(r, abs=1e-10)
    assert res.pvalues[a, b] == pytest.approx(p, rel=1e-6, abs=1e-300)
    with pytest.raises(ValueError, match="at least 3 cells"):
        pearson_coexpression(L[:2])


def test_adjacency_and_split(pbmc):
    _, sub, depth, _ = pbmc
    res = cscore(sub, depth)
    both = adjacency_from_pvalues(res, 0.005)
    pos = adjacency_from_pvalues(res, 0.005, positive_only=True)
    assert (both != both.T).nnz == 0 and both.diagonal().sum() == 0
    assert pos.nnz < both.nnz and (pos - pos.multiply(both)).nnz == 0
    rng = np.random.default_rng(0)
    train, held, non = split_edges(pos, 0.1, rng)
    n_edges = pos.nnz // 2
    assert len(held) == round(0.1 * n_edges) == len(non)
    assert train.nnz // 2 == n_edges - len(held)
    assert (pos[held[:, 0], held[:, 1]] == 1).all() and (pos[non[:, 0], non[:, 1]] == 0).all()
    assert (train[held[:, 0], held[:, 1]] == 0).all() and (train != train.T).nnz == 0


def test_jaccard_weights_by_key():
    a = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32))
    ga = GeneGraph(np.zeros((3, 4)), a, ["x", "y", "z"])
    gb = GeneGraph(np.zeros((3, 5)), b, ["y", "x", "w"])
    ia, ib, w = jaccard_weights(ga, gb, a, b)
    assert ia.tolist() == [0, 1] and ib.tolist() == [1, 0]
    # x: {y, z} vs {y, w} -> 1/3; y: {x} vs {x} -> 1
    assert w.tolist() == pytest.approx([1 / 3, 1.0])
    with pytest.raises(ValueError, match="unique"):
        GeneGraph(np.zeros((2, 3)), sp.csr_matrix((2, 2)), ["x", "x"])


def test_residuals_and_moran():
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(50, 6)).astype(float))
    r = pearson_residuals(counts, np.array([1, 3]))
    full = pearson_residuals(counts)
    assert np.allclose(r, full[:, [1, 3]])
    coords = np.column_stack([np.repeat(np.arange(10), 5), np.tile(np.arange(5), 10)]).astype(float)
    smooth = coords[:, :1] + 0.01 * rng.normal(size=(50, 1))
    noise = rng.normal(size=(50, 1))
    mi = moran_i(np.hstack([smooth, noise]), coords)
    assert mi[0] > 0.8 and abs(mi[1]) < 0.3

"""The perturbation screen's engine on plain arrays: rank matrices, matched controls, statistics, run_screen."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from mixgf.engine.perturb._controls import (
    applicable_pairs,
    choose_controls,
    control_columns,
    expressed_genes,
    rank_matrix,
)
from mixgf.engine.perturb._screen import STAT_COLUMNS, run_screen
from mixgf.engine.perturb._stats import benjamini_hochberg, geneformer_test, matched_test, shift_summary
from mixgf.model import BertEncoderModel, EncoderConfig, embed_tokens, perturbation_shifts


# -- Benjamini–Hochberg, Geneformer's test, summaries -----------------------------------------------------------------
def test_benjamini_hochberg_by_hand_and_against_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # m = 4 p-values: p * m / rank = 0.04, 0.06, 0.0533, 0.5, then the running minimum from the largest down
    want = np.array([0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), want, rtol=1e-14, equal_nan=True)
    rng = np.random.default_rng(0)
    q = rng.random(200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(q), multipletests(q, method="fdr_bh")[1], rtol=1e-14)
    assert np.isnan(benjamini_hochberg(np.full(3, np.nan))).all()


def test_geneformer_test_is_rank_sum_against_the_pool():
    rng = np.random.default_rng(1)
    values = [rng.normal(size=20), rng.normal(0.5, size=7), np.empty(0), rng.normal(size=11)]
    p = geneformer_test(values, seed=0)
    pool = np.concatenate(values)
    for i in (0, 1, 3):
        assert p[i] == pytest.approx(stats.ranksums(pool, values[i]).pvalue, rel=1e-12)
    assert np.isnan(p[2])  # never perturbed: no p-value
    assert np.isnan(geneformer_test(values[:1], seed=0)).all()  # one gene cannot be compared with the pool
    # a pool above pool_max is down-sampled, seeded
    small = geneformer_test(values, seed=3, pool_max=10)
    np.testing.assert_array_equal(small, geneformer_test(values, seed=3, pool_max=10))


def test_shift_summary_uses_applicable_scored_cells_only():
    shifts = np.array([[0.1, np.nan], [0.3, 0.2], [0.5, 0.4], [9.0, 0.6]])
    applicable = np.array([[True, True], [True, True], [True, True], [False, True]])
    values, n, mean, median, sd = shift_summary(shifts, applicable)
    np.testing.assert_array_equal(values[0], [0.1, 0.3, 0.5])
    np.testing.assert_array_equal(n, [3, 3])
    np.testing.assert_allclose(mean, [0.3, 0.4])
    np.testing.assert_allclose(median, [0.3, 0.4])
    np.testing.assert_allclose(sd, [0.2, 0.2])
    _, n, mean, _, sd = shift_summary(np.full((2, 1), np.nan), np.ones((2, 1), dtype=bool))
    assert n[0] == 0 and np.isnan(mean[0]) and np.isnan(sd[0])


# -- ranks and controls ------------------------------------------------------------------------------------------------
def test_rank_matrix_expressed_genes_and_applicable_pairs():
    # <cls>=1 genes... <eos>=2, padding 0
    tokens = np.array([[1, 10, 11, 12, 13, 2], [1, 12, 10, 2, 0, 0], [1, 2, 0, 0, 0, 0]])
    lengths = np.array([6, 4, 2])
    ranks = rank_matrix(tokens, lengths, 1, 1, 20)
    assert ranks.shape == (3, 20)
    np.testing.assert_allclose(ranks[0, [10, 11, 12, 13]].toarray().ravel(), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(ranks[1, [12, 10]].toarray().ravel(), [0.25, 0.75])
    assert ranks[2].nnz == 0 and ranks[:, [0, 1, 2]].nnz == 0
    np.testing.assert_array_equal(expressed_genes(tokens, lengths, np.array([0, 1, 2])), [10, 11, 12, 13])
    sets = [np.array([10]), np.array([11, 12]), np.array([10, 12])]
    np.testing.assert_array_equal(
        applicable_pairs(ranks, sets, "delete"), [[True, True, True], [True, False, True], [False, False, False]]
    )
    assert applicable_pairs(ranks, sets, "overexpress").all()


def test_control_columns_add_each_control_set_once():
    sets = [np.array([10]), np.array([11])]
    chosen = [[(11,), (12,), (13,)], [(10,), (12,), (14,)]]
    applicable = np.array([[True, False], [False, True], [True, True]])
    all_sets, cols, want = control_columns(sets, chosen, applicable)
    assert [s.tolist() for s in all_sets] == [[10], [11], [12], [13], [14]]
    assert cols == [[1, 2, 3], [0, 2, 4]]
    # tested sets where they apply; an added control in the cells of every set it controls
    np.testing.assert_array_equal(want[:, :2], applicable)
    np.testing.assert_array_equal(want[:, 2], [True, True, True])
    np.testing.assert_array_equal(want[:, 3], [True, False, True])
    np.testing.assert_array_equal(want[:, 4], [False, True, True])


def _simulated_screen(seed: int, n_cells: int = 60, n_genes: int = 400):
    """A null screen: every gene has its own effect, shifts fall with rank, genes are detected in some cells only.

    Weakly expressed genes then sit below every gene that shares all their cells, and their controls change order
    from cell to cell: the situation in which assuming the controls' variance for the tested gene is wrong.
    """
    rng = np.random.default_rng(seed)
    level = rng.normal(size=n_genes)
    expr = level[None, :] + rng.normal(scale=0.7, size=(n_cells, n_genes))
    detected = rng.random((n_cells, n_genes)) < 1 / (1 + np.exp(-2 * level - 1))[None, :]
    rel = np.zeros_like(expr)
    for i in range(n_cells):
        idx = np.flatnonzero(detected[i])
        order = idx[np.argsort(-expr[i, idx])]
        rel[i, order] = (np.arange(order.shape[0]) + 0.5) / order.shape[0]
    shifts = 3.0 * np.exp(-3 * rel) + rng.normal(size=n_genes)[None, :]
    shifts[~detected] = np.nan
    return shifts, detected, sp.csr_matrix(rel), [np.array([g]) for g in range(n_genes)]


def test_controls_are_expressed_where_the_gene_is_and_never_the_gene_itself():
    _, detected, ranks, sets = _simulated_screen(0)
    chosen = choose_controls(ranks, detected, sets, np.arange(len(sets)), 20, "delete", seed=0)
    for g in (3, 150, 399):
        ctrl = np.array([c[0] for c in chosen[g]])
        assert g not in ctrl and len(set(ctrl.tolist())) == ctrl.shape[0] <= 20
        cells = detected[:, g]
        if cells.sum() and detected[cells].all(axis=0).sum() > 20:
            assert detected[np.ix_(cells, ctrl)].all()  # expressed in every cell where the gene is perturbed
    assert chosen == choose_controls(ranks, detected, sets, np.arange(len(sets)), 20, "delete", seed=0)


def test_matched_test_is_calibrated_on_a_simulated_null_screen():
    pvalues = []
    for seed in range(5):
        shifts, detected, ranks, sets = _simulated_screen(seed)
        chosen = choose_controls(ranks, detected, sets, np.arange(len(sets)), 20, "delete", seed=seed)
        controls = [[c[0] for c in cc] for cc in chosen]
        expected, _, _, p, _, _ = matched_test(shifts, detected, len(sets), controls, sets, ranks)
        pvalues.append(p[np.isfinite(p)])
        # the expected shift is the mean over cells of np.interp between the cell's controls (flat beyond them)
        for g in (3, 150, 399):
            rows = np.flatnonzero(detected[:, g])
            cols = np.asarray(controls[g])
            want = []
            for i in rows:
                have = cols[detected[i, cols]]
                if have.shape[0] >= 3:
                    r = ranks[i, have].toarray().ravel()
                    o = np.argsort(r, kind="stable")
                    want.append(np.interp(ranks[i, g], r[o], shifts[i, have][o]))
            if want:
                assert expected[g] == pytest.approx(np.mean(want), rel=1e-12, abs=1e-12)
    p = np.concatenate(pvalues)
    assert p.shape[0] > 1_500
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs((p < 0.05).mean() - 0.05) < 0.015


# -- the screen --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_act="silu")  # fmt: skip
    model = BertEncoderModel(cfg).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 40, size=10)
    tokens = np.zeros((10, 40), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.choice(np.arange(4, 50), n, replace=False)  # a small gene pool: genes shared by cells
    return model, tokens, lengths


def test_run_screen_matched_controls_shifts_and_statistics(tiny):
    model, tokens, lengths = tiny
    sets = [np.array([5]), np.array([6, 7]), np.array([80])]  # 80 is in no cell
    pool = np.zeros(100, dtype=bool)
    pool[4:50] = True
    res = run_screen(model, tokens, lengths, sets, test="matched", n_controls=5, control_pool=pool, seed=0)
    assert list(res.stats.columns) == STAT_COLUMNS and res.world_size == 1 and res.n_goal_cells == 0
    direct = perturbation_shifts(model, tokens, lengths, sets)
    np.testing.assert_allclose(res.shifts, direct.shifts, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(res.original, direct.original, atol=1e-6)
    for s, ctrl in enumerate(res.controls[:2]):
        flat = {g for c in ctrl for g in c}
        assert flat and not flat & set(sets[s].tolist()) and all(pool[list(flat)])
        assert all(len(c) == sets[s].shape[0] for c in ctrl)
    # every tested pair plus each control in its tested set's cells is one perturbed copy
    assert res.n_copies > int((~np.isnan(res.shifts)).sum())
    st = res.stats
    assert st.loc[2, "n_cells"] == 0 and np.isnan(st.loc[2, "p_value"]) and st.loc[2, "n_controls"] == 0
    assert st.loc[0, "n_cells"] == (tokens == 5).any(axis=1).sum() and 0 <= st.loc[0, "p_value"] <= 1
    np.testing.assert_allclose(st["shift_vs_expected"], st["shift_mean"] - st["expected_shift"])
    np.testing.assert_allclose(st["p_adj"], benjamini_hochberg(st["p_value"].to_numpy()), equal_nan=True)
    assert res.n_cells_perturbed == int((~np.isnan(res.shifts)).any(axis=1).sum())


def test_run_screen_every_gene_geneformer_and_goal(tiny):
    model, tokens, lengths = tiny
    sets = [np.array([t]) for t in expressed_genes(tokens, lengths, np.array([0]))[:8]]
    # control_pool=None: the tested genes are each other's controls, no extra copies
    res = run_screen(model, tokens, lengths, sets, test="matched", n_controls=3, seed=0)
    assert res.n_copies == int((~np.isnan(res.shifts)).sum())
    assert all({c[0] for c in ctrl} <= {int(s[0]) for s in sets} for ctrl in res.controls)
    gf = run_screen(model, tokens, lengths, sets, test="geneformer", seed=0, return_embeddings=True)
    values = [gf.shifts[~np.isnan(gf.shifts[:, s]), s] for s in range(len(sets))]
    np.testing.assert_allclose(gf.stats["p_value"], geneformer_test(values, 0))
    assert gf.perturbed.shape == (10, len(sets), 32) and gf.controls == [[]] * len(sets)
    goal = run_screen(model, tokens, lengths, sets[:2], test="none", goal_tokens=tokens[:4], goal_lengths=lengths[:4])
    assert goal.n_goal_cells == 4 and goal.stats["p_value"].isna().all()
    centroid = embed_tokens(model, tokens[:4], lengths[:4], layer=-1).mean(axis=0)
    direct = perturbation_shifts(model, tokens, lengths, sets[:2], goal=centroid)
    np.testing.assert_allclose(goal.shifts, direct.shifts, atol=1e-6, equal_nan=True)  # toward the goal, signed


def test_controls_in_a_shared_random_subset_of_the_cells(tiny):
    model, tokens, lengths = tiny
    rng = np.random.default_rng(1)
    applicable = rng.random((40, 3)) < 0.7
    chosen = [[(10,), (11,), (12,)], [(11,), (12,), (13,)], [(0,)]]  # the first two share two controls; 0 is tested
    sets = [np.array([0]), np.array([1]), np.array([2])]
    _, cols, every = control_columns(sets, chosen, applicable)
    all_sets, cols_c, capped = control_columns(sets, chosen, applicable, control_cells=5, seed=3)
    assert cols == cols_c and len(all_sets) == 3 + 4  # each control set once, the tested set 0 not again
    np.testing.assert_array_equal(capped[:, :3], applicable)  # tested sets in all of their cells
    np.testing.assert_array_equal(every[:, :3], applicable)
    for s, own_control in ((0, cols_c[0][0]), (1, cols_c[1][-1])):  # controls of one set only
        assert capped[:, own_control].sum() == 5 and not (capped[:, own_control] & ~applicable[:, s]).any()
    shared = cols_c[0][1]  # a control of both sets: perturbed once per cell, in the union of their cells
    assert capped[:, shared].sum() <= 10
    # one shared order: where sets 0 and 1 apply alike, their control cells are the same cells
    both = applicable[:, 0] & applicable[:, 1]
    first0 = capped[:, cols_c[0][0]] & both
    first1 = capped[:, cols_c[1][-1]] & both
    assert (first0 == first1).sum() >= 35
    assert capped[:, 3:].sum() < every[:, 3:].sum()
    # the screen: the tested shifts are the same, the test runs in the capped cells
    sets = [np.array([5]), np.array([6])]
    pool = np.zeros(100, dtype=bool)
    pool[4:50] = True
    full = run_screen(model, tokens, lengths, sets, n_controls=5, control_pool=pool, control_cells=None)
    cut = run_screen(model, tokens, lengths, sets, n_controls=5, control_pool=pool, control_cells=4)
    np.testing.assert_allclose(cut.shifts, full.shifts, atol=1e-6, equal_nan=True)
    assert cut.n_copies < full.n_copies
    assert (cut.stats["n_control_cells"] <= 4).all()
    assert (full.stats["n_control_cells"] >= cut.stats["n_control_cells"]).all()
    assert cut.stats["p_value"].between(0, 1).all()


def test_matched_test_keeps_its_size_with_controls_in_a_capped_subset_of_cells():
    """A simulated null screen in many cells: genes 0-199 tested as a list against controls among genes 200-399,
    each gene's controls perturbed in at most 25 of its cells (the layout of run_screen with control_cells=25).

    A control shared by several tested genes is perturbed in the union of their capped cells, so a gene is compared
    with its controls in more than 25 cells, but in fewer than all of its cells.
    """
    pvalues, used, cells = [], [], []
    for seed in range(6):
        shifts, detected, ranks, genes = _simulated_screen(seed, n_cells=300)
        tested = genes[:200]
        chosen = choose_controls(ranks, detected[:, :200], tested, np.arange(200, 400), 20, "delete", seed=seed)
        all_sets, cols, want = control_columns(tested, chosen, detected[:, :200], 25, seed=seed)
        wide = np.full((shifts.shape[0], len(all_sets)), np.nan)
        for j, members in enumerate(all_sets):
            rows = want[:, j] & detected[:, members[0]]
            wide[rows, j] = shifts[rows, members[0]]
        _, _, _, p, _, n_cells = matched_test(wide, detected[:, :200], 200, cols, all_sets, ranks)
        pvalues.append(p[np.isfinite(p)])
        used.append(n_cells[np.isfinite(p)])
        cells.append(detected[:, :200].sum(axis=0)[np.isfinite(p)])
    p, used, cells = np.concatenate(pvalues), np.concatenate(used), np.concatenate(cells)
    assert p.shape[0] > 1_000 and (used < cells).mean() > 0.9  # the cap bites for most genes
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs((p < 0.05).mean() - 0.05) < 0.02

"""Perturbed copies of token lists and their bulk embedding (mixgf.model, pure torch/numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mixgf.engine.perturb._copies import _single_gene_copies
from mixgf.model import BertEncoderModel, EncoderConfig, embed_tokens, perturb_cell, perturbation_shifts


def _reference(genes: list[int], gene: int, mode: str, frac: float = 0.25) -> list[int]:
    """Plain-list version of the four perturbations of one gene the cell expresses."""
    out = list(genes)
    p = out.index(gene)
    if mode == "delete":
        del out[p]
        return out
    d = max(1, math.ceil(frac * len(genes)))
    q = {"overexpress": 0, "activate": max(p - d, 0), "inhibit": min(p + d, len(genes) - 1)}[mode]
    del out[p]
    out.insert(q, gene)
    return out


@pytest.mark.parametrize("mode", ["delete", "overexpress", "inhibit", "activate"])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_single_gene_copies_match_reference(mode, n):
    if mode == "delete" and n == 1:
        pytest.skip("nothing left to embed")
    rng = np.random.default_rng(n)
    genes = rng.choice(np.arange(4, 1000), n, replace=False)
    copies = _single_gene_copies(genes, np.arange(n), mode, 0.25)
    for p in range(n):
        assert copies[p].tolist() == _reference(genes.tolist(), int(genes[p]), mode)
        assert perturb_cell(genes, [genes[p]], mode).tolist() == _reference(genes.tolist(), int(genes[p]), mode)


def test_special_tokens_stay_in_place_and_sets():
    cell = np.array([2, 10, 11, 12, 13, 14, 15, 16, 17, 3])  # <cls> genes <eos>
    assert perturb_cell(cell, [14], "overexpress", n_front=1, n_back=1).tolist() == [
        2,
        14,
        10,
        11,
        12,
        13,
        15,
        16,
        17,
        3,
    ]
    assert perturb_cell(cell, [11, 16], "delete", n_front=1, n_back=1).tolist() == [2, 10, 12, 13, 14, 15, 17, 3]
    # a gene the cell lacks: inserted at the front, the list cut back to max_len
    assert perturb_cell(cell, [99], "overexpress", max_len=10, n_front=1, n_back=1).tolist() == [
        2, 99, 10, 11, 12, 13, 14, 15, 16, 3,
    ]  # fmt: skip
    # delete / inhibit / activate need every gene of the set
    assert perturb_cell(cell, [11, 99], "delete", n_front=1, n_back=1) is None
    # two genes moved down by the same distance (2 of 8 positions), in their new order
    assert perturb_cell(cell[1:-1], [11, 12], "inhibit").tolist() == [10, 13, 14, 11, 12, 15, 16, 17]
    assert perturb_cell(cell[1:-1], [13], "inhibit", rank_shift=3).tolist() == [10, 11, 12, 14, 15, 16, 13, 17]
    with pytest.raises(ValueError, match="rank_shift"):
        perturb_cell(cell, [13], "inhibit", rank_shift=1.5)
    with pytest.raises(ValueError, match="mode"):
        perturbation_shifts(BertEncoderModel(EncoderConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=8)), cell[None], [10], [[11]], mode="knockout")  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_act="silu")  # fmt: skip
    model = BertEncoderModel(cfg).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 40, size=12)
    tokens = np.zeros((12, 40), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.choice(np.arange(4, 60), n, replace=False)  # a small gene pool: genes shared by cells
    return model, tokens, lengths


def _cos(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("mode", ["delete", "overexpress", "inhibit"])
def test_bulk_shifts_equal_one_copy_at_a_time(tiny, mode):
    model, tokens, lengths = tiny
    sets = [[5], [6], [7, 8], [70]]  # 70 is in no cell
    res = perturbation_shifts(model, tokens, lengths, sets, mode=mode, layer=-1)
    orig = embed_tokens(model, tokens, lengths, layer=-1)
    np.testing.assert_allclose(res.original, orig, atol=1e-6)
    for i in range(tokens.shape[0]):
        cell = tokens[i, : lengths[i]]
        for j, s in enumerate(sets):
            copy = perturb_cell(cell, s, mode, max_len=64)
            if copy is None:
                assert np.isnan(res.shifts[i, j])
                continue
            alone = embed_tokens(model, copy[None], [len(copy)], layer=-1)[0]
            assert res.shifts[i, j] == pytest.approx(1 - _cos(orig[i], alone), abs=1e-5)
    present = np.array([[all(g in tokens[i, : lengths[i]] for g in s) for s in sets] for i in range(12)])
    if mode != "overexpress":
        np.testing.assert_array_equal(~np.isnan(res.shifts), present)
    else:
        assert not np.isnan(res.shifts).any()
    assert res.n_copies == int((~np.isnan(res.shifts)).sum())


def test_goal_shift_and_chunking(tiny):
    model, tokens, lengths = tiny
    goal = np.random.default_rng(1).normal(size=32)
    sets = [[t] for t in range(4, 30)]
    big = perturbation_shifts(model, tokens, lengths, sets, goal=goal, return_embeddings=True)
    small = perturbation_shifts(model, tokens, lengths, sets, goal=goal, chunk_tokens=50)
    np.testing.assert_allclose(big.shifts, small.shifts, atol=1e-6, equal_nan=True)
    i, j = np.argwhere(~np.isnan(big.shifts))[0]
    want = _cos(big.perturbed[i, j], goal) - _cos(big.original[i], goal)
    assert big.shifts[i, j] == pytest.approx(want, abs=1e-9)
    # applicable=False pairs are not computed
    mask = np.zeros_like(big.shifts, dtype=bool)
    mask[:, 0] = True
    part = perturbation_shifts(model, tokens, lengths, sets, goal=goal, applicable=mask)
    assert np.isnan(part.shifts[:, 1:]).all()
    np.testing.assert_allclose(part.shifts[:, 0], big.shifts[:, 0], atol=1e-6, equal_nan=True)


def test_deleting_the_only_gene_is_not_scored(tiny):
    model = tiny[0]
    res = perturbation_shifts(model, np.array([[9, 0], [9, 10]]), [1, 2], [[9]], mode="delete")
    assert np.isnan(res.shifts[0, 0]) and np.isfinite(res.shifts[1, 0])


def test_the_work_is_announced_before_it_starts_and_the_bar_counts_copies(tiny, capsys):
    model, tokens, lengths = tiny
    sets = [[5], [9], [12, 20]]
    calls = []
    res = perturbation_shifts(
        model, tokens, lengths, sets, announce=lambda *a: calls.append(a), progress=True, chunk_tokens=1
    )
    assert len(calls) == 1
    planned, cells, seconds = calls[0]
    assert cells == tokens.shape[0] and seconds >= 0
    assert planned >= res.n_copies > 0  # every copy made was planned (a cell's only gene cannot be deleted)
    err = capsys.readouterr().err
    assert f"{res.n_copies}/{res.n_copies}" in err and "copy" in err  # the bar counts embedded copies

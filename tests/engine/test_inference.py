"""Token-budget batching, batch invariance, order restoration and out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixgf.model import (
    BertEncoderModel,
    EncoderConfig,
    embed_tokens,
    make_batches,
    resolve_device,
    resolve_dtype,
)


@pytest.fixture(scope="module")
def model() -> BertEncoderModel:
    torch.manual_seed(1)
    cfg = EncoderConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertEncoderModel(cfg).eval()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("budget", [1, 50, 333, 10_000])
def test_make_batches_cover_every_cell_once_within_budget(packed, budget):
    lengths = np.random.default_rng(0).integers(1, 120, size=257)
    batches = make_batches(lengths, budget, packed=packed)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(lengths.shape[0]))
    previous_min = np.inf
    for b in batches:
        lens = lengths[b]
        used = lens.sum() if packed else len(b) * lens.max()
        assert used <= budget or len(b) == 1
        assert np.all(np.diff(lens) <= 0)  # descending within a batch
        assert lens.max() <= previous_min  # and across batches
        previous_min = lens.min()


def test_make_batches_padded_budget_is_tight():
    lengths = np.array([10, 10, 10, 10, 5, 5])
    batches = make_batches(lengths, 20)
    assert [len(b) for b in batches] == [2, 2, 2]
    assert [len(b) for b in make_batches(lengths, 30, packed=True)] == [3, 3]
    assert make_batches(np.array([], dtype=int), 10) == []
    with pytest.raises(ValueError, match="positive"):
        make_batches(lengths, 0)


def test_embed_tokens_restores_order_and_embeds_every_cell(model, tokens_factory, monkeypatch):
    rng = np.random.default_rng(7)
    tokens, lengths = tokens_factory(rng.integers(1, 60, size=30), seed=7, l_max=64)
    seen: list[int] = []
    original = model.forward

    def spy(input_ids, attention_mask=None, output_layer=None):
        seen.extend(attention_mask.sum(1).tolist())
        return original(input_ids, attention_mask, output_layer)

    monkeypatch.setattr(model, "forward", spy)
    out = embed_tokens(model, tokens, lengths, token_budget=150)
    monkeypatch.undo()
    assert sorted(seen) == sorted(lengths.tolist())  # each cell exactly once
    assert out.shape == (30, 32)
    assert out.dtype == np.float32
    for i in (0, 5, 29):
        alone = embed_tokens(model, tokens[i : i + 1], lengths[i : i + 1])
        np.testing.assert_allclose(out[i], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_cell_embedding_does_not_depend_on_batch(model, tokens_factory, packed):
    tokens, lengths = tokens_factory([90, 3, 45, 17, 90, 60], seed=11, l_max=100)
    together = embed_tokens(model, tokens, lengths, token_budget=10_000, packed=packed)
    for i in range(len(lengths)):
        alone = embed_tokens(model, tokens[i : i + 1], lengths[i : i + 1], packed=packed)
        assert np.abs(together[i] - alone[0]).max() <= 1e-5
    # other budgets (hence other batch compositions) give the same result
    other = embed_tokens(model, tokens, lengths, token_budget=100, packed=packed)
    assert np.abs(together - other).max() <= 1e-5


def test_garbage_after_length_is_ignored(model, tokens_factory):
    tokens, lengths = tokens_factory([20, 8], seed=2, l_max=30)
    dirty = tokens.copy()
    dirty[1, 8:] = 77
    np.testing.assert_array_equal(embed_tokens(model, tokens, lengths), embed_tokens(model, dirty, lengths))


@pytest.mark.parametrize("error", ["oom", "runtime"])
def test_oom_halves_budget_and_retries(model, tokens_factory, monkeypatch, mixgf_log, error):
    rng = np.random.default_rng(5)
    tokens, lengths = tokens_factory(rng.integers(5, 40, size=50), seed=5, l_max=40)
    reference = embed_tokens(model, tokens, lengths, token_budget=400)

    batch_tokens: list[int] = []
    failures: list[int] = []
    original = model.forward

    def flaky(input_ids, attention_mask=None, output_layer=None):
        n_tokens = input_ids.numel()
        if n_tokens > 200 and not failures:
            failures.append(n_tokens)
            if error == "oom":
                msg = "CUDA out of memory. Tried to allocate 2.00 GiB"
                raise torch.OutOfMemoryError(msg)
            msg = "CUDA error: out of memory"
            raise RuntimeError(msg)
        batch_tokens.append(n_tokens)
        return original(input_ids, attention_mask, output_layer)

    monkeypatch.setattr(model, "forward", flaky)
    out = embed_tokens(model, tokens, lengths, token_budget=400)
    monkeypatch.undo()

    assert len(failures) == 1
    assert failures[0] <= 400
    assert all(n <= 200 for n in batch_tokens)  # budget halved from 400 to at most 200 after the failure
    assert "Out of memory" in mixgf_log.text
    assert "token budget 200" in mixgf_log.text
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)


def test_oom_on_single_cell_is_raised(model, tokens_factory, monkeypatch):
    tokens, lengths = tokens_factory([30], seed=1)

    def always_oom(*args, **kwargs):
        msg = "CUDA out of memory"
        raise torch.OutOfMemoryError(msg)

    monkeypatch.setattr(model, "forward", always_oom)
    with pytest.raises(torch.OutOfMemoryError):
        embed_tokens(model, tokens, lengths)


def test_other_runtime_errors_are_not_swallowed(model, tokens_factory, monkeypatch):
    tokens, lengths = tokens_factory([30, 20], seed=1)

    def broken(*args, **kwargs):
        msg = "shape mismatch"
        raise RuntimeError(msg)

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        embed_tokens(model, tokens, lengths)


def test_embed_tokens_validation(model, tokens_factory):
    tokens, lengths = tokens_factory([10, 5], seed=0)
    with pytest.raises(ValueError, match="lengths must lie"):
        embed_tokens(model, tokens, np.array([10, 0]))
    with pytest.raises(ValueError, match="lengths must lie"):
        embed_tokens(model, tokens, np.array([11, 5]))
    with pytest.raises(ValueError, match="shape"):
        embed_tokens(model, tokens, np.array([10]))
    bad = tokens.copy()
    bad[0, 0] = 300
    with pytest.raises(ValueError, match="Token ids"):
        embed_tokens(model, bad, lengths)
    with pytest.raises(ValueError, match="2-D integer"):
        embed_tokens(model, tokens.astype(np.float32), lengths)
    with pytest.raises(ValueError, match="out of range"):
        embed_tokens(model, tokens, lengths, layer=3)
    with pytest.raises(ValueError, match="pooling"):
        embed_tokens(model, tokens, lengths, pooling="max")  # type: ignore[arg-type]
    long_tokens, long_lengths = tokens_factory([129], seed=0)
    with pytest.raises(ValueError, match="at most 128"):
        embed_tokens(model, long_tokens, long_lengths)
    assert embed_tokens(model, tokens[:0], lengths[:0]).shape == (0, 32)


def test_embed_tokens_restores_training_flag_and_progress(model, tokens_factory):
    tokens, lengths = tokens_factory([10, 5, 7], seed=0)
    model.train()
    try:
        a = embed_tokens(model, tokens, lengths, progress=True)
        assert model.training
    finally:
        model.eval()
    b = embed_tokens(model, tokens.astype(np.int32), lengths.astype(np.int32))
    np.testing.assert_array_equal(a, b)  # dropout was off during embedding


def test_resolve_device_and_dtype(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))

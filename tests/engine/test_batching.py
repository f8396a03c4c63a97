"""The one batcher (cell cap, given order), the shared forward path (differentiable pooling) and the CPU fast path
setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixgf as mgf
from mixgf.engine._forward import encode_pooled, rows_batch, token_batch
from mixgf.model import BertEncoderModel, EncoderConfig, embed_tokens, make_batches, predict_logits
from mixgf.module._heads import ClassifierHead


@pytest.fixture(scope="module")
def model() -> BertEncoderModel:
    torch.manual_seed(3)
    cfg = EncoderConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    return BertEncoderModel(cfg).eval()


@pytest.mark.parametrize("packed", [False, True])
def test_cell_cap_and_given_order(packed):
    lengths = np.random.default_rng(0).integers(1, 40, size=200)
    for sort in (True, False):
        batches = make_batches(lengths, 300, packed=packed, max_cells=7, sort=sort)
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(200))
        for b in batches:
            assert len(b) <= 7
            cost = lengths[b].sum() if packed else len(b) * lengths[b].max()
            assert cost <= 300 or len(b) == 1
        if not sort:  # consecutive runs of the given order
            np.testing.assert_array_equal(np.concatenate(batches), np.arange(200))
    with pytest.raises(ValueError, match="max_cells"):
        make_batches(lengths, 300, max_cells=0)


def test_packed_and_padded_batches_pool_alike_with_gradients(model, tokens_factory):
    tokens, lengths = tokens_factory([9, 30, 4, 17], seed=4, l_max=40)
    idx = np.arange(4)
    pooled, grads = [], []
    for packed in (False, True):
        model.zero_grad()
        batch = token_batch(tokens, lengths, idx, packed=packed, device=torch.device("cpu"))
        z = encode_pooled(model, batch, special_ids=[1, 2, 3])
        assert z.dtype == torch.float32 and z.shape == (4, 16)
        z.square().sum().backward()
        pooled.append(z.detach())
        grads.append(model.layers[0].qkv.weight.grad.clone())
    torch.testing.assert_close(pooled[0], pooled[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    rows = [tokens[i, : lengths[i]] for i in idx]
    with torch.no_grad():
        z_rows = encode_pooled(model, rows_batch(rows, device=torch.device("cpu")), special_ids=[1, 2, 3])
    torch.testing.assert_close(z_rows, pooled[1], rtol=0, atol=1e-6)


def test_predict_logits_restores_training_flags(model, tokens_factory):
    tokens, lengths = tokens_factory([9, 30, 4], seed=5, l_max=40)
    head = ClassifierHead(16, 3).train()
    model.train()
    try:
        out = predict_logits(model, head, tokens, lengths, special_ids=np.array([0, 1]), progress=True)
        assert model.training and head.training
    finally:
        model.eval()
    assert out.shape == (3, 3)


def test_cpu_fast_path_setting(model, tokens_factory):
    tokens, lengths = tokens_factory([50, 12, 33], seed=6, l_max=60)
    fast = embed_tokens(model, tokens, lengths)
    with mgf.settings.override(cpu_fast_path=False):
        assert mgf.settings.cpu_fast_path is False
        generic = embed_tokens(model, tokens, lengths)
    np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cpu_fast_path must be True or False"):
        mgf.settings.cpu_fast_path = "no"

"""The packed (unpadded) path, via its CPU per-sequence SDPA fallback, equals the padded path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixgf.model import (
    BertEncoderModel,
    EncoderConfig,
    embed_tokens,
    packed_position_ids,
    pool_packed,
    pool_padded,
    varlen_available,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> BertEncoderModel:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        max_position_embeddings=128,
    )
    return BertEncoderModel(cfg).eval()


def _pack(ids: torch.Tensor, mask: torch.Tensor):
    lengths = mask.sum(1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return ids[mask], cu, int(lengths.max())


def test_packed_position_ids():
    cu = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)
    assert packed_position_ids(cu).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_forward_packed_equals_padded_at_every_layer(model, tokens_factory):
    tokens, lengths = tokens_factory([31, 7, 19, 1, 31, 2], seed=1)
    ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.arange(tokens.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    flat, cu, max_len = _pack(ids, mask)
    with torch.no_grad():
        for layer in range(-4, 4):
            padded = model(ids, mask, output_layer=layer)
            packed = model.forward_packed(flat, cu, max_len, output_layer=layer)
            assert packed.shape == (int(lengths.sum()), 64)
            torch.testing.assert_close(packed, padded[mask], rtol=0, atol=TOL)
            # explicit positions give the same result as the derived ones
            packed2 = model.forward_packed(flat, cu, max_len, packed_position_ids(cu), layer, backend="sdpa")
            torch.testing.assert_close(packed2, packed, rtol=0, atol=0)


def test_pool_packed_equals_pool_padded(model, tokens_factory):
    tokens, lengths = tokens_factory([12, 5, 9, 3], seed=2, cls_id=1)
    tokens[1, 4] = 2  # an <eos>
    ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.arange(tokens.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    flat, cu, _ = _pack(ids, mask)
    hidden = torch.randn(*ids.shape, 8, dtype=torch.float64)
    for method, kw in (("mean", {"special_ids": (1, 2)}), ("mean", {}), ("cls", {"cls_id": 1})):
        a = pool_padded(hidden, ids, mask, method, **kw)
        b = pool_packed(hidden[mask], flat, cu, method, **kw)
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    want = hidden[0, 1:12].mean(0).float()
    torch.testing.assert_close(pool_padded(hidden, ids, mask, special_ids=(1, 2))[0], want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="<cls>"):
        pool_padded(hidden, ids, mask, "cls", cls_id=5)


def test_cell_without_gene_tokens_pools_to_zero():
    ids = torch.tensor([[1, 2, 0]])
    mask = torch.tensor([[True, True, False]])
    hidden = torch.ones(1, 3, 4)
    assert pool_padded(hidden, ids, mask, special_ids=(1, 2)).abs().max() == 0


def test_embed_tokens_packed_equals_padded(model, tokens_factory):
    rng = np.random.default_rng(3)
    tokens, lengths = tokens_factory(rng.integers(1, 100, size=40), seed=3, l_max=110)
    padded = embed_tokens(model, tokens, lengths, packed=False, token_budget=600)
    packed = embed_tokens(model, tokens, lengths, packed=True, token_budget=600)
    assert np.abs(padded - packed).max() <= TOL
    packed_cls = embed_tokens(model, tokens, lengths, packed=True, pooling="cls", layer=1)
    padded_cls = embed_tokens(model, tokens, lengths, packed=False, pooling="cls", layer=1)
    assert np.abs(padded_cls - packed_cls).max() <= TOL


def test_packed_backend_selection_on_cpu(model):
    assert not varlen_available("cpu")
    assert model.select_packed_backend("cpu") == "sdpa"
    with pytest.raises(RuntimeError, match="CUDA"):
        model.select_packed_backend("cpu", "varlen")
    with pytest.raises(ValueError, match="Unknown packed backend"):
        model.select_packed_backend("cpu", "flash")  # type: ignore[arg-type]


def test_forward_packed_validates_inputs(model):
    ids = torch.tensor([5, 6, 7, 8])
    with pytest.raises(ValueError, match="end at T"):
        model.forward_packed(ids, torch.tensor([0, 2, 3], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="max_seqlen"):
        model.forward_packed(ids, torch.tensor([0, 1, 4], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="flat"):
        model.forward_packed(ids[None], torch.tensor([0, 4], dtype=torch.int32), 4)
    long_ids = torch.full((200,), 5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward_packed(long_ids, torch.tensor([0, 200], dtype=torch.int32), 200)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_varlen_cuda_matches_padded(model, tokens_factory):  # pragma: no cover - CPU-only CI
    if not varlen_available("cuda"):
        pytest.skip("varlen_attn needs compute capability >= 8.0")
    tokens, lengths = tokens_factory(np.random.default_rng(4).integers(1, 120, size=64), seed=4, l_max=128)
    ref = embed_tokens(model, tokens, lengths, device="cpu")
    got = embed_tokens(model, tokens, lengths, device="cuda", packed=True, dtype="bf16")
    model.to("cpu")
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.999
    alone = embed_tokens(model, tokens[:1], lengths[:1], device="cuda", packed=True, dtype="bf16")
    model.to("cpu")
    np.testing.assert_allclose(alone[0], got[0], rtol=0, atol=1e-2)


def test_varlen_calling_convention_with_fake_kernel(model, tokens_factory, monkeypatch):
    """Exercise the CUDA-only glue on CPU with a stand-in for varlen_attn that checks its inputs."""
    import itertools

    import torch.nn.attention.varlen as varlen_module

    import mixgf.module._encoder as encoder_module

    calls: list[dict] = []

    def fake_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        assert q.ndim == k.ndim == v.ndim == 3
        assert q.shape[1:] == (4, 16)
        assert q.dtype == k.dtype == v.dtype == torch.bfloat16
        assert all(z.is_contiguous() for z in (q, k, v))
        assert cu_q.dtype == torch.int32
        assert cu_k is cu_q
        assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        calls.append(kwargs)
        pieces = []
        for s, e in itertools.pairwise(cu_q.tolist()):
            qi, ki, vi = (z[s:e].float().transpose(0, 1) for z in (q, k, v))
            pieces.append(torch.nn.functional.scaled_dot_product_attention(qi, ki, vi).transpose(0, 1))
        return torch.cat(pieces).to(q.dtype)

    monkeypatch.setattr(varlen_module, "varlen_attn", fake_varlen_attn)
    monkeypatch.setattr(encoder_module, "varlen_available", lambda device: True)
    tokens, lengths = tokens_factory([17, 4, 30], seed=8)
    ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.arange(tokens.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    flat, cu, max_len = _pack(ids, mask)
    assert model.select_packed_backend("cpu") == "varlen"
    with torch.no_grad():
        got = model.forward_packed(flat, cu, max_len, backend="varlen")
        want = model(ids, mask)[mask]
    assert got.dtype == torch.float32
    assert len(calls) == model.num_layers
    assert all(c.get("num_splits", 1) == 1 for c in calls)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-2)

"""Numerical parity with transformers' BertForMaskedLM / BertModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixgf.model import BertEncoderModel, embed_tokens, import_hf_bert

TOL = 1e-4
CLS, EOS = 1, 2


def _padded_batch(lengths: list[int], seed: int = 0, l_max: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    l_max = max(lengths) if l_max is None else l_max
    ids = torch.randint(3, 300, (len(lengths), l_max), generator=gen)
    lens = torch.tensor(lengths)
    mask = torch.arange(l_max)[None, :] < lens[:, None]
    ids[:, 0] = CLS
    ids[torch.arange(len(lengths)), lens - 1] = EOS
    ids[~mask] = 0
    return ids, mask


def _hf_hidden_states(hf_model, ids, mask):
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    return out


def _masked_mean(hidden, ids, mask, special=(CLS, EOS)):
    keep = mask & ~torch.isin(ids, torch.tensor(special)) & (ids != 0)
    w = keep.to(hidden.dtype)
    return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize(("act", "n_layers"), [("relu", 2), ("silu", 3), ("gelu", 2)])
def test_hidden_states_pooling_and_logits_match_transformers(hf_checkpoint, act, n_layers, fmt):
    path, hf_model = hf_checkpoint(act, n_layers, fmt)
    model, config = import_hf_bert(path)
    assert isinstance(model, BertEncoderModel)
    assert config.hidden_act == act
    assert config.num_hidden_layers == n_layers
    assert model.mlm_head is not None
    assert not model.training

    lengths = [37, 5, 20, 37, 1 + 2, 12]
    ids, mask = _padded_batch(lengths, seed=n_layers)
    ref = _hf_hidden_states(hf_model, ids, mask)
    with torch.no_grad():
        ours = model.hidden_states(ids, mask)
    assert len(ours) == len(ref.hidden_states) == n_layers + 1
    for layer, (a, b) in enumerate(zip(ref.hidden_states, ours, strict=True)):
        err = (a - b)[mask].abs().max().item()
        assert err <= TOL, f"hidden state {layer}: max abs error {err}"
    # the comparison is not vacuous: consecutive layers differ a lot
    assert (ours[-1] - ours[-2])[mask].abs().max() > 0.1

    # MLM logits at a subset of positions only
    select = mask.clone()
    select[:, ::2] = False
    with torch.no_grad():
        logits = model.mlm_logits(ours[-1], select)
    assert logits.shape == (int(select.sum()), 300)
    err = (logits - ref.logits[select]).abs().max().item()
    assert err <= TOL, f"MLM logits: max abs error {err}"
    # integer-index selection agrees with the boolean one
    flat_idx = select.reshape(-1).nonzero().squeeze(1)
    with torch.no_grad():
        logits_idx = model.mlm_logits(ours[-1], flat_idx)
    torch.testing.assert_close(logits_idx, logits, rtol=0, atol=0)

    # mean-pooled embeddings through embed_tokens, at every layer
    tokens = ids.numpy().astype(np.uint16)
    lens = mask.sum(1).numpy()
    for layer in range(-n_layers - 1, n_layers + 1):
        emb = embed_tokens(model, tokens, lens, layer=layer, special_ids=(CLS, EOS), token_budget=64)
        want = _masked_mean(ref.hidden_states[layer], ids, mask).numpy()
        assert emb.dtype == np.float32
        assert np.abs(emb - want).max() <= TOL, f"layer {layer}"
    emb_cls = embed_tokens(model, tokens, lens, layer=-1, pooling="cls", cls_id=CLS)
    assert np.abs(emb_cls - ref.hidden_states[-1][:, 0].numpy()).max() <= TOL


def test_layer_semantics_match_hidden_states_indexing(hf_checkpoint):
    path, hf_model = hf_checkpoint("relu", 3)
    model, _ = import_hf_bert(path)
    ids, mask = _padded_batch([30, 17, 8], seed=5)
    ref = _hf_hidden_states(hf_model, ids, mask).hidden_states
    with torch.no_grad():
        for layer in (-1, -2, -4, 0, 1, 3, None):
            got = model(ids, mask, output_layer=layer)
            want = ref[-1 if layer is None else layer]
            assert (got - want)[mask].abs().max() <= TOL, layer
        assert (model(ids, mask, output_layer=-1) - ref[3])[mask].abs().max() <= TOL
        assert (model(ids, mask, output_layer=-2) - ref[2])[mask].abs().max() <= TOL
    for bad in (4, -5):
        with pytest.raises(ValueError, match="out of range"):
            model(ids, mask, output_layer=bad)


def test_later_blocks_are_not_run(hf_checkpoint, monkeypatch):
    path, _ = hf_checkpoint("relu", 3)
    model, _ = import_hf_bert(path)

    def boom(*args, **kwargs):
        msg = "the last block must not run for output_layer=-2"
        raise AssertionError(msg)

    monkeypatch.setattr(model.layers[2], "forward", boom)
    monkeypatch.setattr(model.layers[2], "forward_packed", boom)
    tokens = np.full((2, 10), 7, dtype=np.uint16)
    embed_tokens(model, tokens, np.array([10, 4]), layer=-2)
    embed_tokens(model, tokens, np.array([10, 4]), layer=-2, packed=True)
    with pytest.raises(AssertionError, match="must not run"):
        embed_tokens(model, tokens, np.array([10, 4]), layer=-1)


def test_bert_model_without_prefix_and_pooler_is_imported(hf_checkpoint, mixgf_log):
    path, hf_model = hf_checkpoint("relu", 2, "safetensors", "base")
    model, config = import_hf_bert(path)
    assert config.has_mlm_head is False
    assert model.mlm_head is None
    assert "pooler" in mixgf_log.text
    ids, mask = _padded_batch([25, 9], seed=3)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        ours = model.hidden_states(ids, mask)
    for a, b in zip(ref, ours, strict=True):
        assert (a - b)[mask].abs().max() <= TOL
    with pytest.raises(RuntimeError, match="no MLM head"):
        model.mlm_logits(ours[-1])


def test_padding_does_not_change_hidden_states(hf_checkpoint):
    path, _ = hf_checkpoint("relu", 2)
    model, _ = import_hf_bert(path)
    ids, mask = _padded_batch([20], seed=9, l_max=20)
    ids_padded = torch.cat([ids, torch.zeros(1, 15, dtype=ids.dtype)], dim=1)
    mask_padded = torch.cat([mask, torch.zeros(1, 15, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        a = model(ids, mask)
        b = model(ids_padded, mask_padded)
        c = model(ids)  # no mask at all
    torch.testing.assert_close(a, b[:, :20], rtol=0, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_untied_decoder_and_sharded_safetensors(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(7)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="relu",
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    hf_model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        hf_model.cls.predictions.decoder.weight.normal_()
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, config = import_hf_bert(tmp_path)
    assert config.tie_word_embeddings is False
    ids, mask = _padded_batch([30, 11], seed=1)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask.long()).logits
        got = model.mlm_logits(model(ids, mask), mask)
    assert (got - ref[mask]).abs().max() <= TOL

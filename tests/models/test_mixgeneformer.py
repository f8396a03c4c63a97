from __future__ import annotations

import numpy as np
import pytest
import torch

import mixgf as mgf
from mixgf._models import _mixgeneformer
from mixgf.genes import Vocabulary


def test_default_model_is_labelled(caplog):
    m = mgf.MixGeneformer.load()
    assert m.vocab.name == "mixgf" and m.config.vocab_size == len(m.vocab)
    assert m.trained is m.metadata["trained"]
    if not m.trained:
        assert "UNTRAINED" in repr(m) and "UNTRAINED" in m.metadata["description"]
    assert mgf.load_model() is m  # cached


def test_save_load_round_trip_and_corruption(tmp_path, pbmc_full):
    m = mgf.MixGeneformer.load()
    out = m.save(tmp_path / "copy")
    m2 = mgf.MixGeneformer.load(out)
    assert m2.vocab.sha256 == m.vocab.sha256 and m2.weights_sha256 == m.weights_sha256
    a = pbmc_full[:8].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=128)
    e1 = mgf.tl.embed(a, model=m, copy=True).obsm["X_mixgf"]
    e2 = mgf.tl.embed(a, model=out, copy=True).obsm["X_mixgf"]
    np.testing.assert_array_equal(e1, e2)
    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    _mixgeneformer._CACHE.clear()
    with pytest.raises(ValueError, match="corrupt"):
        mgf.MixGeneformer.load(out)
    with pytest.raises(FileNotFoundError, match="not a mixgf model directory"):
        mgf.MixGeneformer.load(tmp_path)


def test_geneformer_checkpoint_embeds_like_transformers(tmp_path, pbmc_full):
    transformers = pytest.importorskip("transformers")
    vocab = Vocabulary.load("geneformer-v1")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        hidden_act="relu", max_position_embeddings=2048, pad_token_id=0,
    )  # fmt: skip
    hf = transformers.BertForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path / "gf")
    model = mgf.MixGeneformer.from_huggingface(tmp_path / "gf", vocab="geneformer-v1")
    a = pbmc_full[:12].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", vocab="geneformer-v1", max_len=300)
    mgf.tl.embed(a, model=model)
    tok = a.obsm["mixgf_tokens"].astype(np.int64)
    n = a.obs["mixgf_tokens_n_tokens"].to_numpy()
    with torch.no_grad():
        ids = torch.from_numpy(tok)
        mask = torch.from_numpy(np.arange(tok.shape[1])[None, :] < n[:, None]).long()
        hs = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        ref = (hs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    np.testing.assert_allclose(a.obsm["X_mixgf"], ref.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="do not belong together"):
        mgf.MixGeneformer.from_huggingface(tmp_path / "gf", vocab="mixgf")


def test_saving_a_loaded_model_does_not_change_what_load_returns(tmp_path):
    model = mgf.MixGeneformer.load()
    model.save(tmp_path / "copy")
    assert model.path == tmp_path / "copy"
    again = mgf.MixGeneformer.load()
    assert again is not model and again.path != tmp_path / "copy"
    unverified = mgf.MixGeneformer.load(verify=False)
    assert mgf.MixGeneformer.load() is again and unverified is not again


def test_load_sees_a_folder_rewritten_in_the_same_process(tmp_path):
    import copy
    import os

    folder = copy.deepcopy(mgf.MixGeneformer.load()).save(tmp_path / "m")
    first = mgf.MixGeneformer.load(folder)
    assert mgf.MixGeneformer.load(folder) is first  # unchanged folder: the cached object
    changed = copy.deepcopy(first)
    with torch.no_grad():
        next(changed.encoder.parameters()).add_(1.0)
    changed.save(folder, overwrite=True)
    again = mgf.MixGeneformer.load(folder)
    assert again is not first
    torch.testing.assert_close(next(again.encoder.parameters()), next(changed.encoder.parameters()))
    # a file damaged on disk after a load is noticed by the next load
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(ValueError, match="corrupt"):
        mgf.MixGeneformer.load(folder)


def test_command_line_reports_its_version(capsys):
    from mixgf.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"mixgf {mgf.__version__}"

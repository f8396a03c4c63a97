from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixgf.engine.train._pretrain import ConcatRows, PaddedRows
from mixgf.model import (
    BertEncoderModel,
    EncoderConfig,
    PretrainConfig,
    TokenCorpus,
    info_nce,
    latest_checkpoint,
    mask_tokens,
    pretrain_encoder,
)


def _corpus(n=48, vocab=80, max_len=24, seed=0, with_orthologs=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, max_len, size=n)
    tokens = np.zeros((n, max_len), dtype=np.uint16)
    for i, k in enumerate(lengths):
        tokens[i, :k] = rng.choice(np.arange(4, vocab), size=k, replace=False)
    omap = None
    if with_orthologs:  # tokens 4..41 <-> 42..79 are "orthologs"
        omap = np.full(vocab, -1)
        omap[4:42] = np.arange(42, 80)
        omap[42:80] = np.arange(4, 42)
    return TokenCorpus(tokens, lengths, np.zeros(n, dtype=np.int8), 0, 1, np.array([0, 1, 2, 3]),
                       np.arange(4, vocab), omap)  # fmt: skip


def _model(vocab=80, seed=0):
    torch.manual_seed(seed)
    return BertEncoderModel(EncoderConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                          hidden_act="silu", hidden_dropout_prob=0.1,
                                          attention_probs_dropout_prob=0.1))  # fmt: skip


def test_masking_proportions_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 512))
    ids[:, 0] = 2  # <cls>
    maskable = ids != 2
    inputs, target = mask_tokens(ids, maskable, mask_id=1, random_ids=torch.arange(4, 1000), generator=g)
    frac = target.float().mean().item()
    assert 0.14 < frac < 0.16
    assert not target[:, 0].any() and (inputs[:, 0] == 2).all()
    masked = (inputs[target] == 1).float().mean().item()
    kept = (inputs[target] == ids[target]).float().mean().item()
    assert 0.78 < masked < 0.82 and 0.08 < kept < 0.13
    assert (inputs[~target] == ids[~target]).all()


def test_info_nce():
    a = torch.randn(16, 8)
    low = info_nce(a, a + 0.01 * torch.randn(16, 8), 0.05)
    high = info_nce(a, torch.randn(16, 8), 0.05)
    assert low < 0.1 < high


def test_training_reduces_the_losses(tmp_path):
    model = _model()
    cfg = PretrainConfig(steps=60, token_budget=400, max_cells=16, warmup_steps=5, lr=3e-3, log_every=100,
                         xspec_weight=0.5)  # fmt: skip
    _, hist = pretrain_encoder(model, _corpus(with_orthologs=True), cfg, out_dir=tmp_path, device="cpu")
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert last < first
    assert {"mlm", "simcse", "xspec", "lr"} <= set(hist[0])
    assert latest_checkpoint(tmp_path).name == "step-00000060"


def test_resume_gives_the_same_run(tmp_path):
    cfg = PretrainConfig(steps=8, token_budget=300, max_cells=8, warmup_steps=2, log_every=100, checkpoint_every=4,
                         keep_checkpoints=5)  # fmt: skip
    full, h_full = pretrain_encoder(_model(), _corpus(), cfg, out_dir=tmp_path / "a", device="cpu")
    # a second run whose job is killed after step N/2: only its step-4 checkpoint survives
    pretrain_encoder(_model(), _corpus(), cfg, out_dir=tmp_path / "b", device="cpu", resume=False)
    for p in (tmp_path / "b").glob("step-*"):
        if p.name != "step-00000004":
            shutil.rmtree(p)
    resumed, h_res = pretrain_encoder(_model(seed=123), _corpus(), cfg, out_dir=tmp_path / "b", device="cpu")
    assert [h["loss"] for h in h_res] == [h["loss"] for h in h_full]
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_stable_phase_can_be_extended(tmp_path):
    from mixgf.engine.train._pretrain import _lr

    short = PretrainConfig(steps=12, decay_steps=4, warmup_steps=2, token_budget=300, max_cells=8, log_every=100)
    rates = [_lr(s, short) for s in range(12)]
    assert rates[:2] == [5e-4, 1e-3] and set(rates[2:8]) == {1e-3} and rates[8] == 1e-3 > rates[9] > rates[11] > 0
    with pytest.raises(ValueError, match="decay_steps"):
        PretrainConfig(steps=12, decay_steps=11, warmup_steps=2)
    # a long run stopped in its stable phase and resumed as a shorter one == the shorter run from the start
    long = PretrainConfig(steps=40, decay_steps=4, warmup_steps=2, token_budget=300, max_cells=8, log_every=100,
                          checkpoint_every=6, keep_checkpoints=10)  # fmt: skip
    pretrain_encoder(_model(), _corpus(), long, out_dir=tmp_path / "a", device="cpu", resume=False)
    for p in (tmp_path / "a").glob("step-*"):
        if p.name != "step-00000006":
            shutil.rmtree(p)
    resumed, h_res = pretrain_encoder(_model(seed=5), _corpus(), short, out_dir=tmp_path / "a", device="cpu")
    full, h_full = pretrain_encoder(_model(), _corpus(), short, out_dir=tmp_path / "b", device="cpu")
    assert [h["loss"] for h in h_res] == [h["loss"] for h in h_full]
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize(("native", "want"), [(False, "float32"), (True, "bfloat16")])
def test_auto_dtype_on_cpu_is_bf16_only_with_native_bf16(tmp_path, monkeypatch, mixgf_log, native, want):
    from mixgf.engine import _device

    monkeypatch.setattr(_device, "cpu_supports_bf16", lambda: native)
    cfg = PretrainConfig(steps=2, token_budget=200, max_cells=8, warmup_steps=1, log_every=1)
    _, hist = pretrain_encoder(_model(), _corpus(), cfg, out_dir=tmp_path, device="cpu")
    assert f"pre-training on cpu in {want}" in mixgf_log.text
    assert all(np.isfinite(h["loss"]) for h in hist)
    manifest = json.loads((latest_checkpoint(tmp_path) / "manifest.json").read_text())
    assert manifest["metadata"]["compute_dtype"] == want
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        pretrain_encoder(_model(), _corpus(), PretrainConfig(steps=1, dtype="float16"), out_dir=tmp_path / "h")


def test_refuses_without_orthologs_or_head(tmp_path):
    with pytest.raises(ValueError, match="ortholog_map"):
        pretrain_encoder(_model(), _corpus(), PretrainConfig(steps=1, xspec_weight=1.0), out_dir=tmp_path)
    cfg = EncoderConfig(vocab_size=80, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, has_mlm_head=False)  # fmt: skip
    with pytest.raises(ValueError, match="MLM head"):
        pretrain_encoder(BertEncoderModel(cfg), _corpus(), PretrainConfig(steps=1), out_dir=tmp_path)


def test_two_process_gloo_ranks_disjoint_and_identical(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(worker), str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen-{r}.json").read_text()) for r in (0, 1)]
    for s0, s1 in zip(*seen):
        assert not set(s0) & set(s1), "the ranks trained on the same cells in a step"
    w0, w1 = (np.load(tmp_path / f"weights-{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(w0, w1)
    assert latest_checkpoint(tmp_path / "ckpt") is not None


class _DiskLikeRows:
    """A row source that is not in memory: ragged rows, read by position (as a token store is)."""

    def __init__(self, tokens, lengths):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._rows = [tokens[i, :n].copy() for i, n in enumerate(self.lengths)]

    def rows(self, idx):
        return [self._rows[i] for i in idx]


@pytest.mark.parametrize("workers", [0, 1])
def test_row_source_gives_the_same_run_as_memory(tmp_path, workers):
    mem = _corpus(with_orthologs=True)
    cfg = PretrainConfig(steps=5, token_budget=300, max_cells=8, warmup_steps=2, log_every=100, xspec_weight=0.5,
                         train_max_len=20, num_workers=workers, prefetch_batches=2)  # fmt: skip
    a, h_a = pretrain_encoder(_model(), mem, cfg, out_dir=tmp_path / "a", device="cpu")
    source = ConcatRows(
        [_DiskLikeRows(mem.tokens[:20], mem.lengths[:20]), PaddedRows(mem.tokens[20:], mem.lengths[20:])]
    )
    assert not source.in_memory
    streamed = TokenCorpus(source, mem.lengths, mem.species, 0, 1, mem.special_ids, mem.gene_ids, mem.ortholog_map)
    b, h_b = pretrain_encoder(_model(), streamed, cfg, out_dir=tmp_path / "b", device="cpu")
    assert [h["loss"] for h in h_a] == [h["loss"] for h in h_b] and "xspec" in h_b[0]
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_token_corpus_checks_its_tokens():
    mem = _corpus()
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        TokenCorpus(mem.tokens[:5], mem.lengths, mem.species, 0, 1, mem.special_ids, mem.gene_ids)
    with pytest.raises(TypeError, match="row source"):
        TokenCorpus([1, 2], mem.lengths, mem.species, 0, 1, mem.special_ids, mem.gene_ids)
    with pytest.raises(ValueError, match="lengths differ"):
        TokenCorpus(PaddedRows(mem.tokens, mem.lengths), mem.lengths + 1, mem.species, 0, 1, mem.special_ids,
                    mem.gene_ids)  # fmt: skip
    rows = ConcatRows([PaddedRows(mem.tokens[:10], mem.lengths[:10]), PaddedRows(mem.tokens[10:], mem.lengths[10:])])
    got = rows.rows(np.array([30, 2, 11, 2]))
    for i, r in zip([30, 2, 11, 2], got):
        np.testing.assert_array_equal(r, mem.tokens[i, : mem.lengths[i]])

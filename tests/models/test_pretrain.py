from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch

import mixgf as mgf
from mixgf._models._pretrain import StoreRows
from mixgf.cli import main
from mixgf.engine.train._pretrain import ConcatRows
from mixgf.model import BertEncoderModel, EncoderConfig, PretrainConfig, TokenCorpus, pretrain_encoder
from mixgf.pp._store import TokenStoreWriter

ARCH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TRAIN = {"steps": 4, "token_budget": 2048, "max_cells": 8, "train_max_len": 64, "warmup_steps": 1,
         "xspec_weight": 0.5, "log_every": 100}  # fmt: skip


def test_pretrain_api_two_species(tmp_path, pbmc, baron):
    model = mgf.pretrain(
        [{"adata": pbmc[:60].copy(), "gene_id_key": "gene_id", "name": "pbmc"}, baron[:40].copy()],
        out_dir=tmp_path, architecture=ARCH, train=TRAIN, holdout_fraction=0.25, name="tiny",
    )  # fmt: skip
    assert model.trained and model.vocab.species == ("human", "mouse")
    meta = model.metadata
    assert meta["cells_per_species"] == {"human": 45, "mouse": 30}
    assert meta["steps"] == 4 and set(meta["final_losses"]) >= {"loss", "mlm", "simcse"}
    held = json.loads((tmp_path / "model" / "heldout.json").read_text())
    assert sum(len(v) for v in held.values()) == 25 and set(held) == {"pbmc", "dataset_1"}
    assert not set(held["pbmc"]) & set(pbmc[:60].obs_names[~np.isin(pbmc[:60].obs_names, held["pbmc"])])
    # the vocabulary's mouse medians say where they come from; human ones are Geneformer's
    src = set(model.vocab.median_source)
    assert "geneformer_gc95M" in src and any(s.startswith(("corpus", "ortholog")) for s in src)
    # the tokens the 75 training cells had (or their orthologs had) are the trained ones; the rest are recorded
    v = model.vocab
    trained_genes = v.trained & v.is_gene
    assert 0 < trained_genes.sum() < v.is_gene.sum() and v.untrained.size == (v.is_gene & ~v.trained).sum()
    loaded = mgf.MixGeneformer.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.vocab.untrained, v.untrained)
    # untrained tokens act as an average gene: the mean input embedding of the trained ones
    w = loaded.encoder.embeddings.word.weight.detach().numpy()
    np.testing.assert_allclose(
        w[v.untrained],
        np.broadcast_to(w[np.flatnonzero(trained_genes)].mean(0), (v.untrained.size, w.shape[1])),
        rtol=1e-5,
        atol=1e-6,
    )
    a = pbmc[60:70].copy()
    mgf.tl.embed(a, model=loaded)
    assert np.isfinite(a.obsm["X_mixgf"]).all()
    assert (tmp_path / "history.csv").exists()


def test_pretrain_cli(tmp_path, pbmc):
    data = tmp_path / "cells.h5ad"
    pbmc[:40].copy().write_h5ad(data)
    cfg = {"name": "cli", "out_dir": "run", "data": [{"path": "cells.h5ad", "gene_id_key": "gene_id"}],
           "architecture": ARCH, "train": {**TRAIN, "xspec_weight": 0.0}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["pretrain", str(tmp_path / "cfg.json")]) == 0
    m = mgf.MixGeneformer.load(tmp_path / "run" / "model")
    assert m.name == "cli" and m.metadata["cells_per_species"]["human"] == 40


def test_pretrain_cli_from_a_token_store(tmp_path, pbmc):
    mgf.pp.rank_tokenize(pbmc[:40].copy(), gene_id_key="gene_id", store=tmp_path / "cells.tokens.zarr")
    cfg = {"name": "cli", "out_dir": "run", "data": [{"store": "cells.tokens.zarr", "name": "pbmc"}],
           "architecture": ARCH, "train": {**TRAIN, "xspec_weight": 0.0, "steps": 2}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["pretrain", str(tmp_path / "cfg.json")]) == 0
    m = mgf.MixGeneformer.load(tmp_path / "run" / "model")
    assert m.metadata["corpus"] == [{"name": "pbmc", "species": "human", "cells": 40}]
    assert m.vocab.name == "mixgf"  # the store's vocabulary


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def test_pretrain_from_token_stores_equals_in_memory(tmp_path, pbmc, baron):
    human, mouse = pbmc[:60].copy(), baron[:40].copy()
    train = {**TRAIN, "steps": 3}
    in_memory = mgf.pretrain(
        [{"adata": human, "gene_id_key": "gene_id", "name": "pbmc"}, {"adata": mouse, "name": "baron"}],
        out_dir=tmp_path / "mem", vocab="mixgf", architecture=ARCH, train=train, holdout_fraction=0.25,
    )  # fmt: skip
    # the same cells as a collection of token stores (one human, one mouse), streamed by a data-loader worker
    mgf.pp.rank_tokenize(human, gene_id_key="gene_id", duplicates="sum", store=tmp_path / "pbmc.tokens.zarr")
    mgf.pp.rank_tokenize(mouse, duplicates="sum", store=tmp_path / "baron.tokens.zarr")
    assert "mixgf_tokens" not in human.obsm
    streamed = mgf.pretrain(
        [{"store": tmp_path / "pbmc.tokens.zarr", "name": "pbmc"}, str(tmp_path / "baron.tokens.zarr")],
        out_dir=tmp_path / "stores", architecture=ARCH, train={**train, "num_workers": 1}, holdout_fraction=0.25,
    )  # fmt: skip
    assert streamed.vocab.sha256 == in_memory.vocab.sha256  # the stores' vocabulary
    assert streamed.metadata["corpus"] == in_memory.metadata["corpus"]
    assert streamed.metadata["cells_per_species"] == {"human": 45, "mouse": 30}
    a, b = _weights(in_memory), _weights(streamed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = (tmp_path / "mem" / "history.csv").read_text()
    assert hist_a == (tmp_path / "stores" / "history.csv").read_text() and "xspec" in hist_a
    held = [json.loads((tmp_path / d / "model" / "heldout.json").read_text()) for d in ("mem", "stores")]
    assert held[0] == held[1]


def test_pretrain_refuses_a_store_of_another_vocabulary(tmp_path, pbmc):
    mgf.pp.rank_tokenize(pbmc[:20].copy(), gene_id_key="gene_id", store=tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="tokenized with vocabulary 'mixgf'"):
        mgf.pretrain([tmp_path / "s.zarr"], out_dir=tmp_path / "o", vocab="geneformer-v2", architecture=ARCH,
                     train=TRAIN)  # fmt: skip
    (tmp_path / "s.zarr" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="interrupted write"):
        mgf.pretrain([{"store": tmp_path / "s.zarr"}], out_dir=tmp_path / "o", architecture=ARCH, train=TRAIN)


def test_store_backed_corpus_never_materialises_the_matrix(tmp_path):
    """Training from a store holds per-cell lengths and one batch of rows, never the [N, L] token matrix."""
    n, longest, vocab_size = 20_000, 1024, 1000
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, longest + 1, size=n)
    lengths[0] = longest
    with TokenStoreWriter(tmp_path / "big.zarr", np.uint16, chunk_tokens=2**16) as w:
        for s in range(0, n, 2000):
            part = lengths[s : s + 2000]
            w.append(rng.integers(4, vocab_size, size=int(part.sum())).astype(np.uint16), part)
        store = w.finish([f"c{i}" for i in range(n)], {"pad_id": 0, "species": "human"})
    del w
    source = ConcatRows([StoreRows(store, np.arange(n))])
    corpus = TokenCorpus(source, source.lengths, np.zeros(n, dtype=np.int8), 0, 1, np.array([0, 1, 2, 3]),
                         np.arange(4, vocab_size))  # fmt: skip
    arch = EncoderConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=longest)  # fmt: skip
    cfg = PretrainConfig(steps=3, token_budget=4096, max_cells=8, warmup_steps=1, log_every=100, num_workers=0)
    # one-time costs (lazy imports, first use of torch ops) are not part of the measure: one step in memory first
    small = TokenCorpus(store.padded(0, 50)[0], store.lengths[:50], np.zeros(50, dtype=np.int8), 0, 1,
                        np.array([0, 1, 2, 3]), np.arange(4, vocab_size))  # fmt: skip
    pretrain_encoder(BertEncoderModel(arch), small, replace(cfg, steps=1), out_dir=tmp_path / "warm", device="cpu")
    torch.manual_seed(0)
    model = BertEncoderModel(arch)
    matrix_bytes = n * longest * 2  # what the [N, L] uint16 matrix would take
    tracemalloc.start()
    try:
        pretrain_encoder(model, corpus, cfg, out_dir=tmp_path / "ckpt", device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not isinstance(corpus.tokens, np.ndarray)
    assert not any(isinstance(v, np.ndarray) and v.ndim > 1 for v in vars(store).values())
    # per-cell vectors (lengths, offsets, names, the schedule's permutations and batches: 200 bytes a cell is
    # twice what they take) + zarr's buffers for a few chunks of the store (2**16 uint16 tokens each)
    bound = 200 * n + 16 * 2**16 * 2
    assert peak < bound < matrix_bytes / 4, f"peak {peak / 2**20:.1f} MiB, matrix {matrix_bytes / 2**20:.0f} MiB"

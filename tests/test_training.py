from __future__ import annotations

import json

import numpy as np

import mixgf as mgf
from mixgf._cli import main

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
    loaded = mgf.MixGeneformer.load(tmp_path / "model")
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

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.model import embed_tokens


def test_embed_writes_embedding_and_params(small_pbmc, default_model):
    mgf.tl.embed(small_pbmc)
    emb = small_pbmc.obsm["X_mixgf"]
    assert emb.dtype == np.float32 and emb.shape == (60, default_model.config.hidden_size)
    assert np.isfinite(emb).all()
    p = small_pbmc.uns["mixgf"]["params"]
    assert p["model"] == default_model.name and p["hidden_layer"] == -2 and p["pooling"] == "mean"
    assert p["weights_sha256"] == default_model.weights_sha256 and len(p["weights_sha256"]) == 64
    assert p["vocab_sha256"] == default_model.vocab.sha256 and p["device"] == "cpu" and p["dtype"] == "float32"
    assert p["model_trained"] is default_model.trained


def test_embedding_matches_model_core_and_is_batch_independent(small_pbmc, default_model):
    mgf.tl.embed(small_pbmc, token_budget=4096)
    tok = small_pbmc.obsm["mixgf_tokens"]
    n = small_pbmc.obs["mixgf_tokens_n_tokens"].to_numpy()
    for i in (0, 17, 59):
        alone = embed_tokens(default_model.encoder, tok[i : i + 1], n[i : i + 1], layer=-2,
                             special_ids=default_model.vocab.special_ids.tolist())  # fmt: skip
        np.testing.assert_allclose(small_pbmc.obsm["X_mixgf"][i], alone[0], atol=1e-5)
    other = small_pbmc[::-1].copy()
    mgf.tl.embed(other, token_budget=1024)
    np.testing.assert_allclose(other.obsm["X_mixgf"][::-1], small_pbmc.obsm["X_mixgf"], atol=1e-5)


def test_tokenizes_on_the_fly(pbmc_full, default_model):
    a = pbmc_full[:20].copy()
    mgf.tl.embed(a)
    assert "mixgf_tokens" in a.obsm and a.uns["mixgf_tokens"]["params"]["vocab_sha256"] == default_model.vocab.sha256


def test_layers_pooling_and_keys(small_pbmc):
    mgf.tl.embed(small_pbmc, hidden_layer=-1, key_added="X_last")
    mgf.tl.embed(small_pbmc, hidden_layer=0, key_added="X_emb0")
    mgf.tl.embed(small_pbmc)
    assert "last" in small_pbmc.uns and "emb0" in small_pbmc.uns
    assert not np.allclose(small_pbmc.obsm["X_last"], small_pbmc.obsm["X_mixgf"])
    with pytest.raises(ValueError, match="cls"):
        mgf.tl.embed(small_pbmc, pooling="cls")
    with pytest.raises(ValueError):
        mgf.tl.embed(small_pbmc, hidden_layer=12)


def test_copy_and_views(small_pbmc):
    out = mgf.tl.embed(small_pbmc, copy=True)
    assert "X_mixgf" in out.obsm and "X_mixgf" not in small_pbmc.obsm
    view = small_pbmc[:10]
    with pytest.warns(UserWarning, match="view"):
        mgf.tl.embed(view)
    np.testing.assert_allclose(view.obsm["X_mixgf"], out.obsm["X_mixgf"][:10], atol=1e-5)


def test_vocabulary_mismatch_is_refused(pbmc_full):
    a = pbmc_full[:10].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", vocab="geneformer-v1")
    with pytest.raises(ValueError, match="different genes"):
        mgf.tl.embed(a)
    assert "X_mixgf" not in a.obsm


def test_empty_cells_get_nan_rows(pbmc_full):
    a = pbmc_full[:12].copy()
    X = a.X.toarray()
    X[4] = 0
    a.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="express no gene"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=128)
    with pytest.warns(UserWarning, match="no gene token"):
        mgf.tl.embed(a)
    emb = a.obsm["X_mixgf"]
    assert np.isnan(emb[4]).all() and np.isfinite(np.delete(emb, 4, axis=0)).all()


def test_mouse_cells(baron_full, default_model):
    b = baron_full[:30].copy()
    mgf.pp.rank_tokenize(b, max_len=256)
    mgf.tl.embed(b)
    assert np.isfinite(b.obsm["X_mixgf"]).all()


def test_embed_genes_static_and_contextual(small_pbmc, default_model):
    mgf.tl.embed_genes(small_pbmc, mode="static", key_added="g_static")
    g = small_pbmc.varm["g_static"]
    tok = default_model.vocab.token_ids(small_pbmc.var["gene_id"].to_numpy())
    table = default_model.encoder.embeddings.word.weight.detach().numpy()
    ok = tok >= 0
    np.testing.assert_array_equal(g[ok], table[tok[ok]])
    assert np.isnan(g[~ok]).all()

    mgf.tl.embed_genes(small_pbmc)
    c = small_pbmc.varm["mixgf_genes"]
    n = small_pbmc.var["mixgf_genes_n_cells"].to_numpy()
    assert (np.isfinite(c).all(axis=1) == (n > 0)).all()
    # a gene in exactly one cell: its contextual embedding is that cell's hidden state at the gene's position
    tokens = small_pbmc.obsm["mixgf_tokens"]
    j = int(np.flatnonzero(n == 1)[0])
    cell, pos = map(int, np.argwhere(tokens == tok[j])[0])
    import torch

    L = int(small_pbmc.obs["mixgf_tokens_n_tokens"].iloc[cell])
    with torch.inference_mode():
        ids = torch.from_numpy(tokens[cell : cell + 1, :L].astype(np.int64))
        h = default_model.encoder(ids, torch.ones_like(ids, dtype=torch.bool), -2)[0, pos].numpy()
    np.testing.assert_allclose(c[j], h, atol=1e-5)


def test_embed_and_perturb_read_a_token_store(pbmc_full, default_model, tmp_path, monkeypatch):
    from mixgf.tl import _utils

    a = pbmc_full[:40].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=256)
    mgf.tl.embed(a)
    s = pbmc_full[:40].copy()
    mgf.pp.rank_tokenize(s, gene_id_key="gene_id", max_len=256, store=tmp_path / "pbmc.tokens.zarr")
    assert "mixgf_tokens" not in s.obsm and "store" in s.uns["mixgf_tokens"]
    tokens, lengths = _utils.get_tokens(s, default_model, "mixgf_tokens")
    np.testing.assert_array_equal(tokens, a.obsm["mixgf_tokens"])
    np.testing.assert_array_equal(lengths, a.obs["mixgf_tokens_n_tokens"])
    monkeypatch.setattr(_utils, "STORE_CHUNK_TOKENS", 256 * 7)  # streamed in blocks of 7 cells
    mgf.tl.embed(s)
    np.testing.assert_allclose(s.obsm["X_mixgf"], a.obsm["X_mixgf"], atol=1e-5)
    assert "mixgf_tokens" not in s.obsm  # nothing was tokenized again
    # a subset of the stored cells, reordered, reads its own rows of the store
    sub = s[[30, 2, 17]].copy()
    mgf.tl.embed(sub)
    np.testing.assert_allclose(sub.obsm["X_mixgf"], a.obsm["X_mixgf"][[30, 2, 17]], atol=1e-5)
    # perturbation reads the selected cells' rows; same result as from obsm
    kw = {"genes": ["B2M", "CD74"], "cells": np.arange(12), "test": "none", "inplace": False}
    pd.testing.assert_frame_equal(mgf.tl.perturb(s, **kw), mgf.tl.perturb(a, **kw), atol=1e-6)
    # cells that are not in the store are refused, naming the fix
    other = pbmc_full[40:45].copy()
    other.uns["mixgf_tokens"] = dict(s.uns["mixgf_tokens"])
    with pytest.raises(ValueError, match="not in the store"):
        mgf.tl.embed(other)


def test_hidden_layer_and_the_old_integer_layer_spelling(small_pbmc):
    mgf.tl.embed(small_pbmc, hidden_layer=-1, key_added="X_last")
    with pytest.warns(FutureWarning, match="hidden_layer=-1") as rec:
        mgf.tl.embed(small_pbmc, layer=-1, key_added="X_old")
    assert rec[0].filename == __file__  # the warning points at the user's line
    np.testing.assert_array_equal(small_pbmc.obsm["X_old"], small_pbmc.obsm["X_last"])
    assert small_pbmc.uns["X_old"[2:]]["params"]["hidden_layer"] == -1
    with pytest.raises(ValueError, match="disagree"):
        mgf.tl.embed(small_pbmc, layer=-1, hidden_layer=0)


def test_counts_layer_and_raw_for_on_the_fly_tokens(pbmc_full):
    """After scanpy's normalize_total + log1p, layer='counts' (or use_raw) finds the counts, as the error says."""
    import scanpy as sc

    ref = pbmc_full[:20].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id", max_len=128)
    mgf.tl.embed(ref)
    a = pbmc_full[:20].copy()
    a.layers["counts"] = a.X.copy()
    a.raw = a
    del a.raw.var["gene_id"]  # .raw has var names (symbols) only
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    with pytest.raises(ValueError, match=r"pass layer='counts' or use_raw=True"):
        mgf.tl.embed(a)
    assert "X_mixgf" not in a.obsm and "mixgf_tokens" not in a.obsm
    mgf.tl.embed(a, layer="counts")
    assert a.uns["mixgf_tokens"]["params"]["layer"] == "counts"
    assert np.isfinite(a.obsm["X_mixgf"]).all() and a.obsm["X_mixgf"].shape == ref.obsm["X_mixgf"].shape


def test_zero_cells_are_refused_by_every_tool_before_anything_is_written(pbmc_full, default_model):
    empty = pbmc_full[:0].copy()
    uns_before = set(empty.uns)
    for tool in (mgf.tl.embed, mgf.tl.perturb, mgf.tl.embed_genes):
        with pytest.raises(ValueError, match="0 cells"):
            tool(empty, model=default_model)
    with pytest.raises(ValueError, match="0 cells"):
        mgf.tl.train_classifier(empty, "cell_type", model=default_model)
    assert not len(empty.obsm) and set(empty.uns) == uns_before

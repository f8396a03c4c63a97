"""mgf.tl.gene_graph / train_gene_embedding / gene_embedding / evaluate_gene_embedding on real data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.engine.genegraph import GeneEmbeddingModel

DATA = Path(__file__).resolve().parents[1] / "data"
N = 150


@pytest.fixture(scope="module")
def trio() -> dict[str, ad.AnnData]:
    """Human PBMCs (two studies) and mouse pancreas, each with its 150-gene CS-CORE graph."""
    out = {
        "pbmc3k": mgf.datasets.pbmc3k(),
        "kang": ad.read_h5ad(DATA / "kang2018_ctrl_300cells.h5ad"),
        "pancreas": mgf.datasets.baron_mouse_pancreas(),
    }
    for a in out.values():
        mgf.tl.gene_graph(a, n_top_genes=N)
    return out


@pytest.fixture(scope="module")
def model(trio) -> GeneEmbeddingModel:
    return mgf.tl.train_gene_embedding(trio, group_by=["blood", "blood", "pancreas"], epochs=10, progress=False)


def test_gene_graph_writes_documented_keys(trio):
    a = trio["pbmc3k"]
    g = a.varp["mixgf_gene_graph"]
    assert g.shape == (a.n_vars, a.n_vars) and sp.issparse(g)
    assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0
    used = a.var["mixgf_gene_graph"].to_numpy()
    assert used.sum() == N and g[~used].nnz == 0
    info = a.uns["mixgf_gene_graph"]
    assert info["species"] == "human" and len(info["genes"]) == N
    assert info["n_edges"] == g.nnz // 2 and info["params"]["method"] == "cs-core"
    # co-expressed pairs are edges, keys are Ensembl IDs
    i, j = a.var_names.get_loc("LYZ"), a.var_names.get_loc("S100A9")
    assert g[i, j] == 1 and a.varp["mixgf_gene_graph_correlation"][i, j] > 0.5
    assert a.var.loc["LYZ", "mixgf_gene_graph_key"] == "ENSG00000090382"
    # mouse genes are keyed by their human ortholog
    m = trio["pancreas"]
    assert m.uns["mixgf_gene_graph"]["species"] == "mouse"
    keys = m.var.loc[m.var["mixgf_gene_graph"], "mixgf_gene_graph_key"]
    assert keys.str.startswith("ENSG").mean() > 0.6


def test_gene_graph_pearson_and_copy(trio):
    a = trio["kang"]
    b = mgf.tl.gene_graph(a, n_top_genes=N, method="pearson", edges="both", copy=True)
    assert "mixgf_gene_graph" not in a.uns or a.uns["mixgf_gene_graph"]["params"]["method"] == "cs-core"
    assert b.uns["mixgf_gene_graph"]["params"]["method"] == "pearson"
    corr = b.varp["mixgf_gene_graph_correlation"]
    pos = b.var_names.get_indexer(b.uns["mixgf_gene_graph"]["genes"])
    C = corr[pos][:, pos].toarray()
    logn = np.log1p(sp.csr_matrix(b.X).multiply(1e4 / np.asarray(b.X.sum(axis=1))).toarray()[:, pos])
    assert np.allclose(C, np.corrcoef(logn.T), atol=1e-5)
    # both signs: anti-correlated pairs become edges as well
    G = b.varp["mixgf_gene_graph"][pos][:, pos].toarray()
    assert (C[G > 0] < 0).any() and (C[G > 0] > 0).any()


def test_gene_graph_spatial_selection():
    mob = ad.read_h5ad(DATA / "mob_st_262spots_1500genes.h5ad")
    hvg = mgf.tl.gene_graph(mob, n_top_genes=100, copy=True)
    svg = mgf.tl.gene_graph(mob, n_top_genes=100, selection="spatial", copy=True)
    assert svg.uns["mixgf_gene_graph"]["params"]["selection"] == "spatial"
    assert set(svg.uns["mixgf_gene_graph"]["genes"]) != set(hvg.uns["mixgf_gene_graph"]["genes"])
    with pytest.raises(KeyError, match="obsm"):
        mgf.tl.gene_graph(mob, n_top_genes=100, selection="spatial", spatial_key="xy")


def test_gene_graph_bad_input(trio):
    tpm = ad.read_h5ad(DATA / "oligodendroglioma_tpm_40cells.h5ad")
    with pytest.raises(ValueError, match="CS-CORE models raw counts"):
        mgf.tl.gene_graph(tpm, n_top_genes=50)
    with pytest.raises(ValueError, match="fewer than n_top_genes=2000"):
        mgf.tl.gene_graph(trio["kang"], n_top_genes=2000, copy=True)
    human, mouse = trio["pbmc3k"][:, :400], trio["pancreas"][:400, :400]
    mixed = ad.AnnData(
        sp.hstack([human.X[:400], mouse.X]).tocsr(), var=pd.DataFrame(index=[*human.var_names, *mouse.var_names])
    )
    with pytest.raises(ValueError, match="mix"):
        mgf.tl.gene_graph(mixed, n_top_genes=50)
    empty = trio["kang"][:20].copy()
    X = sp.csr_matrix(empty.X).toarray()
    X[0] = 0
    empty.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match="no counts"):
        mgf.tl.gene_graph(empty, n_top_genes=50)
    with pytest.raises(ValueError, match="method"):
        mgf.tl.gene_graph(trio["kang"], method="spearman")


def test_train_and_write_embeddings(trio, model, tmp_path):
    assert model.datasets == ["pbmc3k", "kang", "pancreas"] and model.groups == ["blood", "blood", "pancreas"]
    assert model.species == ["human", "human", "mouse"]
    assert len(model.params["history"]["loss"]) == 10
    a = trio["kang"].copy()
    mgf.tl.gene_embedding(a, model)
    emb = a.varm["X_mixgf_gene"]
    used = a.var["mixgf_gene_graph"].to_numpy()
    assert emb.shape == (a.n_vars, 32) and np.isfinite(emb[used]).all() and np.isnan(emb[~used]).all()
    assert a.uns["X_mixgf_gene"]["params"]["dataset"] == "kang"
    # from a saved directory, by name
    path = model.save(tmp_path / "genes")
    b = mgf.tl.gene_embedding(trio["kang"], str(path), dataset="kang", copy=True)
    assert np.array_equal(b.varm["X_mixgf_gene"][used], emb[used])
    with pytest.raises(ValueError, match="pass dataset="):
        mgf.tl.gene_embedding(trio["kang"][:100].copy(), model)


def test_train_is_reproducible(trio, model):
    with mgf.settings.override(progress_bar=False):  # progress=None follows the settings
        again = mgf.tl.train_gene_embedding(trio, group_by=["blood", "blood", "pancreas"], epochs=10)
    assert all(np.array_equal(x, y) for x, y in zip(model.embeddings, again.embeddings, strict=True))


def test_train_bad_input(trio):
    a = trio["pbmc3k"]
    first = a[:, a.var_names[:8000]].copy()
    second = a[:, a.var_names[8000:]].copy()
    for x in (first, second):
        mgf.tl.gene_graph(x, n_top_genes=100)
    with pytest.raises(ValueError, match="share no gene"):
        mgf.tl.train_gene_embedding([first, second], epochs=1, progress=False)
    with pytest.raises(KeyError, match=r"run mgf\.tl\.gene_graph"):
        mgf.tl.train_gene_embedding([first, mgf.datasets.pbmc3k()], epochs=1, progress=False)
    with pytest.raises(ValueError, match="one group per dataset"):
        mgf.tl.train_gene_embedding([first, second], group_by=["a"], epochs=1, progress=False)


def test_evaluate_against_baselines(trio, model):
    for a in trio.values():
        mgf.tl.embed_genes(a, mode="static")
    table = mgf.tl.evaluate_gene_embedding(
        trio, model, embeddings={"mixgf static": "mixgf_genes"}, groupby="cell_type", n_markers=10
    )
    assert set(table["method"]) == {"muse-gnn", "pca", "coexpression", "mixgf static"}
    metrics = set(table["metric"])
    assert metrics == {"heldout_edge_auc", "marker_pair_auc", "consistency_top1", "ortholog_recall@1",
                       "ortholog_recall@10"}  # fmt: skip
    v = table.set_index(["method", "metric", "dataset", "other"])["value"].sort_index()
    # MuSe-GNN's held-out edges: well above chance after 10 epochs
    assert (v.loc["muse-gnn", "heldout_edge_auc"] > 0.7).all()
    # a static embedding is the same vector for a gene in every dataset: perfect consistency, by construction
    assert v.loc["mixgf static", "consistency_top1", "pbmc3k", "kang"] == 1.0
    # orthologs human -> mouse, for every method with a pair
    rec = table[table["metric"] == "ortholog_recall@10"]
    assert set(rec["dataset"]) <= {"pbmc3k", "kang"} and set(rec["other"]) == {"pancreas"}
    assert ((rec["value"] >= 0) & (rec["value"] <= 1)).all() and (rec["n"] > 5).all()
    # only the held-out AUC needs the model
    base = mgf.tl.evaluate_gene_embedding(trio, baselines=["pca"])
    assert set(base["method"]) == {"pca"} and "heldout_edge_auc" not in set(base["metric"])
    with pytest.raises(ValueError, match="unknown baselines"):
        mgf.tl.evaluate_gene_embedding(trio, baselines=["gene2vec"])

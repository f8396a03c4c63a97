"""mgf.get.gene_similarity / gene_embeddings and mgf.pl.gene_similarity / gene_umap, rendered on real data."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pytest

import mixgf as mgf

mpl.use("Agg")


@pytest.fixture(scope="module")
def trained():
    human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    with mgf.settings.override(verbosity="error"):
        for a in (human, mouse):
            mgf.tl.gene_graph(a, n_top_genes=150)
        model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
        for a in (human, mouse):
            mgf.tl.gene_embedding(a, model)
    return model, {"pbmc": human, "pancreas": mouse}


def test_get_gene_similarity_model_and_adatas(trained):
    model, adatas = trained
    t = mgf.get.gene_similarity(model, ["CD74", "LYZ"], top=5)
    assert set(t["query"]) == {"CD74", "LYZ"} and set(t["dataset"]) == {"pbmc", "pancreas"}
    assert (t.groupby(["query", "query_dataset", "dataset"]).size() == 5).all()
    # similarities sorted within each block, a gene is its own best hit in its own dataset
    own = t[(t["dataset"] == t["query_dataset"]) & (t["rank"] == 1)]
    assert own["same_gene"].all() and np.allclose(own["similarity"], 1.0, atol=1e-5)
    # the same table from the AnnDatas (after tl.gene_embedding)
    t2 = mgf.get.gene_similarity(adatas, ["CD74", "LYZ"], top=5)
    assert t2[["query", "dataset", "gene"]].equals(t[["query", "dataset", "gene"]])
    mouse_only = mgf.get.gene_similarity(model, "CD74", species="mouse", top=3)
    assert set(mouse_only["species"]) == {"mouse"}
    with pytest.raises(KeyError, match="none of the genes"):
        mgf.get.gene_similarity(model, ["NOT_A_GENE"])
    with pytest.raises(KeyError, match=r"run mgf\.tl\.gene_embedding"):
        mgf.get.gene_similarity({"x": mgf.datasets.pbmc3k()}, ["CD74"])
    df = mgf.get.gene_embeddings(adatas)
    assert df.shape == (300, 5 + 32) and set(df["species"]) == {"human", "mouse"}


def test_pl_gene_similarity_heatmap_and_network(trained):
    model, _ = trained
    ax = mgf.pl.gene_similarity(model, ["CD74", "LYZ", "HLA-DRA"], show=False)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("CD74 · ") and any(lab.startswith("LYZ · ") for lab in labels)
    img = ax.get_images()[0].get_array()
    assert np.allclose(np.diag(np.asarray(img)), 1.0, atol=1e-5)
    fig = mgf.pl.gene_similarity(model, ["CD74"], kind="network", top=3, show=False, return_fig=True)
    assert len(fig.axes[0].collections) > 3
    with pytest.raises(ValueError, match="kind"):
        mgf.pl.gene_similarity(model, ["CD74"], kind="tree", show=False)


def test_pl_gene_umap(trained):
    model, adatas = trained
    ax = mgf.pl.gene_umap(model, show=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pancreas", "pbmc"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 300
    ax = mgf.pl.gene_umap(adatas, color=["CD74", "LYZ", "HLA-DRA"], show=False)
    assert "gene set" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(KeyError, match="none of the genes"):
        mgf.pl.gene_umap(model, color=["NOT_A_GENE"], show=False)

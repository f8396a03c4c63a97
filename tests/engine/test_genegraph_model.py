"""The gene-graph network, its training on real graphs and the GeneEmbeddingModel directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mixgf.datasets import baron_mouse_pancreas, pbmc3k
from mixgf.engine.genegraph import (
    GeneEmbeddingModel,
    GeneGraph,
    adjacency_from_pvalues,
    cscore,
    heldout_edge_auc,
    pearson_residuals,
    select_genes,
    train_gene_graphs,
)
from mixgf.engine.genegraph._model import DenseTransformerConv, GraphNorm


@pytest.fixture(scope="module")
def graphs():
    out = []
    for a in (pbmc3k(), baron_mouse_pancreas()):
        X = sp.csr_matrix(a.X, dtype=np.float64)
        idx, _ = select_genes(X, 80)
        res = cscore(X[:, idx], np.asarray(X.sum(axis=1)).ravel())
        adj = adjacency_from_pvalues(res, 0.005, positive_only=True)
        keys = [str(g).upper() for g in a.var_names[idx]]  # symbols as keys: enough for a shared-gene test
        out.append(GeneGraph(pearson_residuals(X, idx).T, adj, keys))
    return out


def test_dense_transformer_conv_matches_per_node_loop():
    torch.manual_seed(0)
    conv = DenseTransformerConv(5, 3, heads=2)
    x = torch.randn(6, 5)
    mask = torch.rand(6, 6) > 0.5
    mask[2] = False  # node 2 has no neighbours
    out = conv(x, mask)
    qkv = conv.qkv(x).view(6, 3, 2, 3)
    for i in range(6):
        heads = []
        for h in range(2):
            q, k, v = qkv[i, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            nb = torch.nonzero(mask[i]).ravel()
            if len(nb) == 0:
                heads.append(torch.zeros(3))
                continue
            a = torch.softmax(torch.stack([q @ k[j] / math.sqrt(3) for j in nb]), dim=0)
            heads.append(sum(a[t] * v[j] for t, j in enumerate(nb)))
        expected = torch.cat(heads) + conv.skip(x[i])
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_graph_norm_normalises_over_nodes():
    x = torch.randn(50, 4) * 3 + 7
    y = GraphNorm(4)(x)
    assert torch.allclose(y.mean(dim=0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(dim=0, unbiased=False), torch.ones(4), atol=1e-3)


def test_training_is_seeded_and_learns(graphs):
    kw = {"n_groups": 1, "epochs": 8, "holdout": 0.1, "seed": 3}
    torch.set_num_threads(1)
    a = train_gene_graphs(graphs, **kw)
    b = train_gene_graphs(graphs, **kw)
    for za, zb in zip(a.embeddings, b.embeddings, strict=True):
        assert za.shape[1] == 32 and np.array_equal(za, zb)
    assert a.history["loss"][-1] < a.history["loss"][0]
    assert a.history["device"] == "cpu" and a.history["seconds"] > 0
    for g, (held, non) in zip(graphs, a.heldout, strict=True):
        assert len(held) == round(0.1 * g.adjacency.nnz / 2) == len(non)
        assert (g.adjacency[held[:, 0], held[:, 1]] == 1).all()
    c = train_gene_graphs(graphs, **{**kw, "seed": 4})
    assert not np.array_equal(a.embeddings[0], c.embeddings[0])
    # the reconstruction generalises to hidden edges already after a few epochs
    assert heldout_edge_auc(a.embeddings[0], *a.heldout[0]) > 0.6


def _model(graphs):
    res = train_gene_graphs(graphs, n_groups=1, epochs=2, seed=0)
    return GeneEmbeddingModel(
        datasets=["pbmc", "pancreas"],
        groups=["blood", "pancreas"],
        species=["human", "mouse"],
        genes=[g.keys for g in graphs],
        keys=[g.keys for g in graphs],
        embeddings=res.embeddings,
        n_cells=[g.features.shape[1] for g in graphs],
        heldout=res.heldout,
        weights={k: v.numpy() for k, v in res.state_dict.items()},
        params={"epochs": 2, "history": res.history},
    )


def test_model_directory_roundtrip_and_corruption(graphs, tmp_path):
    model = _model(graphs)
    d = model.save(tmp_path / "genes")
    back = GeneEmbeddingModel.load(d)
    assert back.datasets == model.datasets and back.species == ["human", "mouse"]
    assert back.genes == model.genes and back.keys == model.keys
    assert all(np.array_equal(x, y) for x, y in zip(back.embeddings, model.embeddings, strict=True))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(back.heldout, model.heldout, strict=True))
    assert set(back.weights) == set(model.weights)
    assert back.params["history"]["loss"] == model.params["history"]["loss"]
    df = back.to_df()
    assert df.shape == (sum(len(g) for g in model.genes), 5 + 32)
    assert repr(back) == "GeneEmbeddingModel(2 datasets (human, mouse), 32-d gene embeddings)"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(d)
    model.save(d, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a mixgf gene-embedding directory"):
        model.save(tmp_path / "other", overwrite=True)
    with pytest.raises(KeyError, match="datasets are"):
        model.index("lung")
    # a flipped byte in the weights, a broken manifest, a missing manifest
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        GeneEmbeddingModel.load(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GeneEmbeddingModel.load(d)
    manifest = json.dumps({"format": "something-else", "format_version": 1, "files": {}})
    (d / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError, match="mixgf-gene-embedding"):
        GeneEmbeddingModel.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        GeneEmbeddingModel.load(d)


def test_model_checks_its_lists(graphs):
    with pytest.raises(ValueError, match="2 datasets"):
        GeneEmbeddingModel(
            datasets=["a", "b"], groups=["g"], species=["human", "human"], genes=[[], []], keys=[[], []],
            embeddings=[np.zeros((0, 2)), np.zeros((0, 2))], n_cells=[1, 1],
        )  # fmt: skip

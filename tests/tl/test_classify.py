from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import mixgf as mgf
from mixgf.tl._classify import expected_calibration_error


@pytest.fixture(scope="module")
def labelled(pbmc_full):
    a = pbmc_full[:500].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=128)
    return a


@pytest.fixture(scope="module")
def frozen_clf(labelled):
    with pytest.warns(UserWarning, match="12 cells have no 'cell_type' label"):
        return mgf.tl.train_classifier(labelled[:400].copy(), "cell_type", finetune="frozen", epochs=3, seed=0)


def test_frozen_classifier_learns_and_calibrates(frozen_clf):
    m = frozen_clf.metadata
    assert frozen_clf.classes == sorted(frozen_clf.classes) and len(frozen_clf.classes) == 8
    assert m["n_train"] + m["n_val"] == 388  # 12 of the first 400 cells have no label
    # 8 classes, chance is ~0.125 (balanced); even the random-weight default model's embedding separates types
    assert m["val_accuracy"] > 0.25
    assert frozen_clf.temperature > 0 and m["val_nll_after"] <= m["val_nll_before"] + 1e-9
    assert 0 <= m["val_ece_after"] <= 1 and 0 <= m["val_ece_before"] <= 1


def test_classify_writes_results(frozen_clf, labelled):
    b = labelled[400:].copy()
    mgf.tl.classify(b, model=frozen_clf)
    assert isinstance(b.obs["mixgf_label"].dtype, pd.CategoricalDtype)
    assert list(b.obs["mixgf_label"].cat.categories) == frozen_clf.classes
    p = b.obsm["mixgf_label_proba"]
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(b.obs["mixgf_label_score"], p.max(1), atol=1e-6)
    assert (np.asarray(frozen_clf.classes)[p.argmax(1)] == b.obs["mixgf_label"].astype(str)).all()
    params = b.uns["mixgf_label"]["params"]
    assert params["classes"] == frozen_clf.classes and params["cross_species"] is False


def test_save_load_gives_same_predictions(frozen_clf, labelled, tmp_path):
    b = labelled[400:450].copy()
    mgf.tl.classify(b, model=frozen_clf)
    frozen_clf.save(tmp_path / "clf")
    c = b.copy()
    mgf.tl.classify(c, model=tmp_path / "clf")
    np.testing.assert_allclose(c.obsm["mixgf_label_proba"], b.obsm["mixgf_label_proba"], atol=1e-6)
    with pytest.raises(ValueError, match="not a cell classifier"):
        mgf.CellClassifier.load(mgf.MixGeneformer.load().save(tmp_path / "enc"))


def test_every_tool_records_the_same_provenance(frozen_clf, labelled, tmp_path):
    """classify records the weights and vocabulary it used, also for a classifier read back from disk."""
    frozen_clf.save(tmp_path / "clf")
    loaded = mgf.CellClassifier.load(tmp_path / "clf")
    manifest = json.loads((tmp_path / "clf" / "manifest.json").read_text())
    assert loaded.model.weights_sha256 == manifest["files"]["model.safetensors"]["sha256"]
    b = labelled[400:420].copy()
    mgf.tl.classify(b, model=loaded)
    mgf.tl.embed(b)
    clf_params, emb_params = b.uns["mixgf_label"]["params"], b.uns["mixgf"]["params"]
    common = {"model", "model_trained", "weights_sha256", "vocab", "vocab_sha256", "device", "dtype", "mixgf_version"}
    assert common <= set(clf_params) and common <= set(emb_params)
    assert clf_params["weights_sha256"] == loaded.model.weights_sha256
    assert clf_params["vocab_sha256"] == emb_params["vocab_sha256"] == loaded.model.vocab.sha256
    assert clf_params["hidden_layer"] == loaded.layer and clf_params["pooling"] == "mean"


def test_finetune_all_layers_runs(labelled):
    clf = mgf.tl.train_classifier(labelled[:120].copy(), "cell_type", finetune="all", epochs=1, max_len=48)
    # epoch 0 is the linear probe the fine-tuning starts from, then one fine-tuning epoch
    assert [h["epoch"] for h in clf.metadata["history"]] == [0, 1]
    assert clf.metadata["finetune"] == "all"
    # the classifier predicts on what it was trained on: each cell's top max_len tokens
    assert clf.metadata["config"]["max_len"] == 48


def test_cross_species_projection(frozen_clf, baron_full):
    m = baron_full[:40].copy()
    mgf.tl.classify(m, model=frozen_clf)
    params = m.uns["mixgf_label"]["params"]
    assert params["cross_species"] is True and params["data_species"] == "mouse"
    assert 0.5 < params["mean_fraction_of_tokens_kept"] <= 1
    assert m.obs["mixgf_label"].notna().all()


def test_bad_labels(labelled):
    a = labelled[:100].copy()
    with pytest.raises(KeyError, match="labels_key"):
        mgf.tl.train_classifier(a, "nope")
    a.obs["one"] = "x"
    with pytest.raises(ValueError, match="only one class"):
        mgf.tl.train_classifier(a, "one")
    a.obs["rare"] = ["a"] * 50 + ["b"] * 49 + ["c"]
    with pytest.raises(ValueError, match=r"fewer than 2 .*\['c'\]"):
        mgf.tl.train_classifier(a, "rare")
    a.obs["holes"] = ["a"] * 50 + [None] * 10 + ["b"] * 40
    with pytest.warns(UserWarning, match="10 cells have no 'holes' label"):
        clf = mgf.tl.train_classifier(a, "holes", finetune="frozen", epochs=1)
    assert clf.metadata["n_train"] + clf.metadata["n_val"] == 90


def test_vocabulary_without_the_species(tmp_path, baron_full):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=25_426, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=2048)  # fmt: skip
    transformers.BertForMaskedLM(cfg).save_pretrained(tmp_path / "gf")
    gf = mgf.MixGeneformer.from_huggingface(tmp_path / "gf", vocab="geneformer-v1")
    with pytest.raises(ValueError, match="holds only human"):
        mgf.tl.train_classifier(baron_full[:50].copy(), "cell_type", model=gf)


def test_expected_calibration_error():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(p, np.array([0, 0, 0, 1])) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)

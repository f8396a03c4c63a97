"""mgf.tl.image_features / train_histology_model / predict_expression on real her2st spots (tests/data)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mixgf as mgf
from mixgf.engine.histology import HistologyModel

DATA = Path(__file__).resolve().parents[1] / "data"


def _section(name: str) -> ad.AnnData:
    a = ad.read_h5ad(DATA / f"her2st_{name}_36spots.h5ad")
    info = a.uns["fixture_image"]
    with mgf.settings.override(verbosity="error"):
        mgf.tl.image_features(a, image=DATA / info["file"], scale_factor=info["scale"],
                              spot_diameter=info["spot_diameter"], patch_px=32)  # fmt: skip
    return a


@pytest.fixture(scope="module")
def a1() -> ad.AnnData:
    return _section("A1")


@pytest.fixture(scope="module")
def c3() -> ad.AnnData:
    return _section("C3")


def test_image_features_keys_and_params(a1):
    F = a1.obsm["X_image"]
    names = a1.uns["X_image"]["feature_names"]
    assert F.shape == (36, len(names)) and F.dtype == np.float32 and np.isfinite(F).all()
    p = a1.uns["X_image"]["params"]
    assert p["method"] == "summary" and p["context"] == 1.5 and p["patch_px"] == 32
    assert p["image"].endswith("her2st_A1_crop.jpg") and p["spot_diameter"] == a1.uns["fixture_image"]["spot_diameter"]
    assert F[:, names.index("patch_H_mean")].std() > 0  # spots differ


def test_image_features_from_the_scanpy_image_slot(c3):
    """uns['spatial'] (scanpy / squidpy convention) gives the same features as the file and its scale factor."""
    info = c3.uns["fixture_image"]
    b = c3.copy()
    b.uns["spatial"] = {"C3": {"images": {"hires": np.asarray(Image.open(DATA / info["file"]).convert("RGB"))},
                               "scalefactors": {"tissue_hires_scalef": info["scale"],
                                                "spot_diameter_fullres": info["spot_diameter"]}}}  # fmt: skip
    out = mgf.tl.image_features(b, patch_px=32, key_added="X_uns", copy=True)
    np.testing.assert_allclose(out.obsm["X_uns"], c3.obsm["X_image"], rtol=1e-5, atol=1e-5)
    assert "X_uns" not in b.obsm and out.uns["X_uns"]["params"]["image"] == "uns:C3:hires"


def test_image_features_from_a_torch_module_and_local_weights(c3, tmp_path):
    import torch
    from safetensors.torch import save_file

    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))

    torch.manual_seed(1)
    trained = make()  # stands in for a torchvision / timm model with weights the user has locally
    save_file(trained.state_dict(), str(tmp_path / "enc.safetensors"))
    torch.manual_seed(2)
    fresh = make()
    info = c3.uns["fixture_image"]
    kw = {"image": DATA / info["file"], "scale_factor": info["scale"], "spot_diameter": info["spot_diameter"],
          "patch_px": 32, "copy": True}  # fmt: skip
    a = mgf.tl.image_features(c3, method=trained, **kw)
    b = mgf.tl.image_features(c3, method=fresh, weights=tmp_path / "enc.safetensors", **kw)
    assert a.obsm["X_image"].shape == (36, 6)
    np.testing.assert_allclose(a.obsm["X_image"], b.obsm["X_image"], rtol=1e-5)
    assert a.uns["X_image"]["params"]["method"] == "Sequential"
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="do not fit the module"):
        mgf.tl.image_features(c3, method=make(), weights=tmp_path / "bad.safetensors", **kw)
    # a plain callable on uint8 patches
    c = mgf.tl.image_features(c3, method=lambda p: p.reshape(len(p), -1, 3).mean(axis=1), **kw)
    assert c.obsm["X_image"].shape == (36, 3)
    with pytest.raises(ValueError, match="spots x features"):
        mgf.tl.image_features(c3, method=lambda p: p.mean(), **kw)


def test_image_features_errors(c3):
    b = c3.copy()
    with pytest.raises(ValueError, match="no image"):
        mgf.tl.image_features(b, spot_diameter=100)
    with pytest.raises(KeyError, match="obsm has no 'xy'"):
        mgf.tl.image_features(b, image=np.zeros((10, 10, 3), np.uint8), spot_diameter=1, spatial_key="xy")
    with pytest.raises(ValueError, match="spot_diameter is needed"):
        mgf.tl.image_features(b, image=DATA / b.uns["fixture_image"]["file"], scale_factor=0.25)
    with pytest.raises(ValueError, match=r"outside the .* image.*scale factor"):
        mgf.tl.image_features(b, image=DATA / b.uns["fixture_image"]["file"], scale_factor=1.0, spot_diameter=145)
    with pytest.raises(ValueError, match="method must be"):
        mgf.tl.image_features(b, image=DATA / b.uns["fixture_image"]["file"], scale_factor=0.25, spot_diameter=145,
                              method="densenet")  # fmt: skip


def test_retrieval_train_save_load_predict(a1, c3, tmp_path):
    with mgf.settings.override(verbosity="error"):
        model = mgf.tl.train_histology_model(a1, method="retrieval", epochs=3, batch_size=36, seed=0)
    heg, hvg = model.params["highly_expressed"], model.params["highly_variable"]
    assert model.uses_patches and model.uses_features and model.genes == list(dict.fromkeys(hvg + heg))
    assert model.weights["ref_expression"].shape == (36, len(model.genes))
    assert len(model.params["highly_expressed"]) == 50 and len(model.params["highly_variable"]) == 250
    path = model.save(tmp_path / "retrieval")
    with mgf.settings.override(verbosity="error"):
        mgf.tl.predict_expression(c3, path, k=10)
    pred = c3.obsm["mixgf_predicted"]
    assert isinstance(pred, pd.DataFrame) and list(pred.columns) == model.genes
    assert (pred.index == c3.obs_names).all()
    ref = model.weights["ref_expression"]
    assert (pred.to_numpy() >= ref.min(0) - 1e-5).all() and (pred.to_numpy() <= ref.max(0) + 1e-5).all()
    assert c3.uns["mixgf_predicted"]["params"]["k"] == 10
    # the loaded model predicts what the trained one does
    out = mgf.tl.predict_expression(c3, model, k=10, key_added="again", copy=True)
    np.testing.assert_allclose(out.obsm["again"].to_numpy(), pred.to_numpy(), rtol=1e-5)
    # its CNN gives features too
    cnn = mgf.tl.image_features(c3, image=DATA / c3.uns["fixture_image"]["file"],
                                scale_factor=c3.uns["fixture_image"]["scale"],
                                spot_diameter=c3.uns["fixture_image"]["spot_diameter"], patch_px=32, method="cnn",
                                model=model, copy=True)  # fmt: skip
    assert cnn.obsm["X_image"].shape == (36, model.config["cnn_width"] * 8)


def test_prototypes_train_predict(a1, c3):
    with mgf.settings.override(verbosity="error"):
        model = mgf.tl.train_histology_model([a1], method="prototypes", n_prototypes=3, epochs=20, seed=0)
        mgf.tl.predict_expression(c3, model)
    comp = c3.obsm["mixgf_predicted_composition"]
    # 3 k-means clusters asked; clusters under 5 spots are dissolved into the nearest one
    assert list(comp.columns) == model.config["types"]
    assert 2 <= len(model.config["types"]) <= 3 and model.config["types"][0] == "cluster_0"
    np.testing.assert_allclose(comp.sum(axis=1), 1, rtol=1e-5)
    pred = c3.obsm["mixgf_predicted"].to_numpy()
    assert np.isfinite(pred).all() and (pred >= 0).all()
    assert 0 < model.config["count_fraction"] < 1
    # labels instead of clusters
    a = a1.copy()
    a.obs["region"] = np.where(a.obs["array_x"] < a.obs["array_x"].median(), "left", "right")
    with mgf.settings.override(verbosity="error"):
        m2 = mgf.tl.train_histology_model(a, method="prototypes", groupby="region", epochs=2)
    assert m2.config["types"] == ["left", "right"]


def test_train_predict_errors(a1, c3):
    b = a1.copy()
    del b.obsm["X_image"]
    with pytest.raises(KeyError, match=r"run mgf\.tl\.image_features"):
        mgf.tl.train_histology_model(b, use_patches=False)
    with pytest.raises(ValueError, match="method must be"):
        mgf.tl.train_histology_model(a1, method="regression")
    with pytest.raises(ValueError, match="nothing to learn from"):
        mgf.tl.train_histology_model(a1, use_rep=None, use_patches=False)
    with pytest.raises(ValueError, match="not in every training input"):
        mgf.tl.train_histology_model(a1, genes=["NOT_A_GENE"], use_patches=False)
    with mgf.settings.override(verbosity="error"):
        model = mgf.tl.train_histology_model(a1, use_patches=False, epochs=1)
    d = c3.copy()
    del d.obsm["X_image"]
    with pytest.raises(KeyError, match="needs obsm"):
        mgf.tl.predict_expression(d, model)
    assert isinstance(model, HistologyModel) and not model.uses_patches


def test_retrieval_with_mixgf_spot_embeddings(a1, c3):
    """mixgf's transformer as the spot encoder's first stage: its embeddings of the training spots join their
    expression (or replace it); queries still need only their image."""
    import warnings

    a = a1.copy()
    with mgf.settings.override(verbosity="error"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genes whose tokens the default model never saw
        mgf.pp.rank_tokenize(a)
        mgf.tl.embed(a)
        both = mgf.tl.train_histology_model(a, spot_rep="X_mixgf", use_patches=False, epochs=2, seed=0)
        alone = mgf.tl.train_histology_model(a, spot_rep="X_mixgf", spot_expression=False, use_patches=False,
                                             epochs=2, seed=0)  # fmt: skip
        plain = mgf.tl.train_histology_model(a, use_patches=False, epochs=2, seed=0)
    dim = a.obsm["X_mixgf"].shape[1]
    assert both.config["n_genes"] == len(both.genes) + dim and alone.config["n_genes"] == dim
    assert plain.config["n_genes"] == len(plain.genes)
    assert both.params["spot_rep"] == "X_mixgf" and alone.params["spot_expression"] is False
    # the keys differ with the input; the averaged expression is the measured one in every case
    assert not np.allclose(both.weights["ref_keys"], plain.weights["ref_keys"])
    np.testing.assert_array_equal(both.weights["ref_expression"], plain.weights["ref_expression"])
    assert "X_mixgf" not in c3.obsm
    out = mgf.tl.predict_expression(c3, both, k=10, copy=True)
    assert out.obsm["mixgf_predicted"].shape == (36, len(both.genes))
    with pytest.raises(KeyError, match=r"tokenize and embed its spots"):
        mgf.tl.train_histology_model(a1, spot_rep="X_mixgf", use_patches=False)
    bad = a.copy()
    bad.obsm["X_mixgf"][0, 0] = np.nan
    with pytest.raises(ValueError, match="must be a finite spots x dimensions matrix"):
        mgf.tl.train_histology_model(bad, spot_rep="X_mixgf", use_patches=False)
    with pytest.raises(ValueError, match="prototypes method has none"):
        mgf.tl.train_histology_model(a, method="prototypes", spot_rep="X_mixgf")
    with pytest.raises(ValueError, match="no input"):
        mgf.tl.train_histology_model(a, spot_expression=False, use_patches=False)

"""Retrieval and composition models of mixgf.engine.histology, and the HistologyModel directory."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from mixgf.engine.deconvolution import fit_deconvolution, fit_prototypes, mixture_mean
from mixgf.engine.histology import (
    HistologyModel,
    SpotImage,
    composition_predict,
    retrieval_predict,
    spot_clusters,
    spot_keys,
    summary_features,
    train_composition,
    train_retrieval,
)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def spots() -> dict:
    """Both fixture sections: patches, standardised features, log-normalised expression, counts, positions."""
    parts = [ad.read_h5ad(DATA / f"her2st_{s}_36spots.h5ad") for s in ("A1", "C3")]
    P, E, C, pos = [], [], [], []
    for a in parts:
        info = a.uns["fixture_image"]
        img = SpotImage(DATA / info["file"], scale=info["scale"])
        P.append(img.patches(a.obsm["spatial"], side=1.5 * info["spot_diameter"], patch_px=32))
        X = sp.csr_matrix(a.X, dtype=np.float64).toarray()
        C.append(X)
        E.append(np.log1p(1e4 * X / X.sum(axis=1, keepdims=True)).astype(np.float32))
        pos.append(a.obs[["array_x", "array_y"]].to_numpy())
    F = summary_features(np.concatenate(P))
    F = ((F - F.mean(0)) / np.where(F.std(0) > 0, F.std(0), 1)).astype(np.float32)
    return {"patches": np.concatenate(P), "features": F, "expr": np.vstack(E), "counts": np.vstack(C),
            "positions": np.vstack(pos)}  # fmt: skip


def test_retrieval_prediction_is_the_inverse_squared_l1_weighted_mean():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    ref = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    q = np.array([[0.8, 0.6]], dtype=np.float32)
    d = np.abs(keys - q).sum(axis=1)
    top2 = np.argsort(-(keys @ q[0]))[:2]  # cosine top-2: keys 2 and 0
    w = 1 / d[top2] ** 2
    np.testing.assert_allclose(retrieval_predict(q, keys, ref, k=2)[0], (w / w.sum()) @ ref[top2], rtol=1e-6)
    # k beyond the references uses all of them; every prediction lies within the references' range
    pred = retrieval_predict(q, keys, ref, k=50)
    assert (pred >= ref.min(0)).all() and (pred <= ref.max(0)).all()


def test_clip_training_aligns_patches_with_their_spots(spots):
    """After training, a patch's own spot is among its nearest keys far more often than by chance."""
    cfg, w, hist = train_retrieval(spots["expr"], spots["positions"], patches=spots["patches"],
                                   features=spots["features"], epochs=25, batch_size=36, d_model=32, d_out=16,
                                   n_heads=2, cnn_width=8, seed=0)  # fmt: skip
    assert hist["loss"][-1] < hist["loss"][0]
    keys = spot_keys(cfg, w, spots["expr"], spots["positions"])
    from mixgf.engine.histology._retrieval import image_queries

    q = image_queries(cfg, w, patches=spots["patches"], features=spots["features"])
    rank = (np.argsort(-(q @ keys.T), axis=1) == np.arange(len(q))[:, None]).argmax(axis=1)
    assert np.mean(rank < 5) > 3 * 5 / len(q)  # top-5 hit rate over 3x chance
    # seeded: the same run gives the same weights
    _, w2, _ = train_retrieval(spots["expr"], spots["positions"], patches=spots["patches"],
                                  features=spots["features"], epochs=1, batch_size=36, d_model=32, d_out=16,
                                  n_heads=2, cnn_width=8, seed=0)  # fmt: skip
    _, w3, _ = train_retrieval(spots["expr"], spots["positions"], patches=spots["patches"],
                                  features=spots["features"], epochs=1, batch_size=36, d_model=32, d_out=16,
                                  n_heads=2, cnn_width=8, seed=0)  # fmt: skip
    np.testing.assert_array_equal(w2["spot.inp.weight"], w3["spot.inp.weight"])
    with pytest.raises(ValueError, match="patches, features or both"):
        train_retrieval(spots["expr"], spots["positions"])
    with pytest.raises(ValueError, match="non-negative"):
        train_retrieval(spots["expr"], spots["positions"] - 100, features=spots["features"])


def test_composition_uses_the_deconvolution_observation_model(spots):
    import torch

    Y = spots["counts"][:, :120]
    codes = spot_clusters(spots["expr"][:, :120], 3, min_size=2, seed=0)
    assert codes.max() == 2
    protos = fit_prototypes(sp.csr_matrix(Y), codes, 3)
    dec = fit_deconvolution(Y, protos.means)
    cfg, w, hist = train_composition(spots["features"], Y, protos.means, dec.fractions, alpha=dec.alpha,
                                     beta=dec.beta, theta=dec.theta, epochs=40, batch_size=36, seed=0)  # fmt: skip
    assert hist["loss"][-1] < hist["loss"][0]
    p, q = composition_predict(cfg, w, spots["features"])
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    # the profile is the deconvolution engine's mixture mean with the learned gene parameters, at L = 1
    t = {k: torch.as_tensor(w[k]) for k in ("log_T", "log_alpha", "log_beta")}
    expect = mixture_mean(torch.as_tensor(p, dtype=torch.float32), torch.exp(t["log_T"]), t["log_alpha"],
                          t["log_beta"], torch.ones(len(p), 1)).numpy()  # fmt: skip
    np.testing.assert_allclose(q, expect, rtol=1e-4)
    # the compositions learnt from the image follow the deconvolved ones better than a constant does
    mse_model = ((p - dec.fractions) ** 2).mean()
    mse_const = ((dec.fractions.mean(0) - dec.fractions) ** 2).mean()
    assert mse_model < mse_const


def _composition_model(spots) -> HistologyModel:
    Y = spots["counts"][:, :50]
    M = np.abs(np.random.default_rng(0).normal(5, 2, (50, 2)))
    P = np.full((len(Y), 2), 0.5)
    cfg, w, hist = train_composition(spots["features"], Y, M, P, epochs=2, seed=0)
    cfg |= {"feature_source": "X_image", "feature_mean": [0.0] * spots["features"].shape[1],
            "feature_std": [1.0] * spots["features"].shape[1], "count_fraction": 0.5, "types": ["a", "b"],
            "target_sum": 1e4}  # fmt: skip
    return HistologyModel("prototypes", [f"g{i}" for i in range(50)], cfg, w, params={"seed": 0}, history=hist)


def test_model_directory_round_trip_and_corruption(spots, tmp_path):
    model = _composition_model(spots)
    path = model.save(tmp_path / "model")
    back = HistologyModel.load(path)
    assert back.genes == model.genes and back.method == "prototypes" and back.params == {"seed": 0}
    np.testing.assert_array_equal(back.predict(features=spots["features"]), model.predict(features=spots["features"]))
    assert sorted(p.name for p in path.iterdir()) == ["histology.json", "histology.safetensors", "manifest.json"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
    model.save(path, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a mixgf histology model directory"):
        model.save(tmp_path / "other", overwrite=True)
    # corrupt weights
    raw = bytearray((path / "histology.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (path / "histology.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"sha256.*corrupt"):
        HistologyModel.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HistologyModel.load(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something-else", "files": {}}))
    with pytest.raises(ValueError, match="mixgf-histology"):
        HistologyModel.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        HistologyModel.load(path)


def test_model_input_errors(spots):
    model = _composition_model(spots)
    with pytest.raises(ValueError, match="77 patch features"):
        model.predict(features=spots["features"][:, :10])
    with pytest.raises(ValueError, match="needs the patch features"):
        model.predict()
    with pytest.raises(ValueError, match="method must be one of"):
        HistologyModel("regression", ["a"], {}, {})

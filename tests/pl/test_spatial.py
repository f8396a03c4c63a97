from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib as mpl
import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

import mixgf as mgf

mpl.use("Agg")
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def c3() -> ad.AnnData:
    """The C3 fixture with its image the scanpy way and predictions from a model trained on A1."""
    parts = {}
    with mgf.settings.override(verbosity="error"):
        for s in ("A1", "C3"):
            a = ad.read_h5ad(DATA / f"her2st_{s}_36spots.h5ad")
            info = a.uns["fixture_image"]
            img = np.asarray(Image.open(DATA / info["file"]).convert("RGB"))
            a.uns["spatial"] = {s: {"images": {"hires": img}, "scalefactors": {
                "tissue_hires_scalef": info["scale"], "spot_diameter_fullres": info["spot_diameter"]}}}  # fmt: skip
            mgf.tl.image_features(a, patch_px=32)
            parts[s] = a
        model = mgf.tl.train_histology_model(parts["A1"], use_patches=False, epochs=2, seed=0)
        mgf.tl.predict_expression(parts["C3"], model, k=20)
    return parts["C3"]


def test_spatial_prediction_panels(c3):
    genes = list(c3.obsm["mixgf_predicted"].columns[:2])
    axs = mgf.pl.spatial_prediction(c3, genes, show=False)
    assert len(axs) == 4
    X = sp.csr_matrix(c3.X, dtype=np.float64)
    meas = np.log1p(1e4 * X[:, c3.var_names.get_loc(genes[0])].toarray().ravel() / X.sum(axis=1).A1)
    r = np.corrcoef(meas, c3.obsm["mixgf_predicted"][genes[0]])[0, 1]
    assert axs[0].get_title() == f"{genes[0]} measured"
    assert axs[1].get_title() == f"{genes[0]} predicted (r = {r:.2f})"
    assert len(axs[0].images) == 1  # the H&E under the spots
    coll = axs[0].collections[0]
    np.testing.assert_allclose(np.asarray(coll.get_array()), meas)
    assert len(coll.get_paths()) == c3.n_obs
    # measured and predicted share a colour scale
    assert axs[0].collections[0].get_clim() == axs[1].collections[0].get_clim()
    fig = mgf.pl.spatial_prediction(c3, genes[0], show=False, return_fig=True)
    assert len(fig.axes) == 3  # two panels and a colour bar


def test_spatial_prediction_errors(c3):
    with pytest.raises(KeyError, match="were not predicted"):
        mgf.pl.spatial_prediction(c3, ["NOT_A_GENE"], show=False)
    with pytest.raises(KeyError, match=r"run mgf\.tl\.predict_expression"):
        mgf.pl.spatial_prediction(c3, ["ERBB2"], key="missing", show=False)

"""Patch reading and image features of mixgf.engine.histology on real her2st crops (tests/data)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from mixgf.engine.histology import SpotImage, check_spots, encoder_features, summary_feature_names, summary_features

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def c3() -> ad.AnnData:
    return ad.read_h5ad(DATA / "her2st_C3_36spots.h5ad")


def _image(a: ad.AnnData) -> SpotImage:
    info = a.uns["fixture_image"]
    return SpotImage(DATA / info["file"], scale=info["scale"])


def test_patches_match_a_direct_crop(c3):
    """A patch equals the crop of the decoded image around the spot, resized (same pixels, no shift)."""
    img = _image(c3)
    side = 1.5 * c3.uns["fixture_image"]["spot_diameter"]
    side_px = side * img.scale
    P = img.patches(c3.obsm["spatial"][:3], side=side, patch_px=round(side_px))
    arr = np.asarray(Image.open(DATA / c3.uns["fixture_image"]["file"]).convert("RGB"))
    x, y = c3.obsm["spatial"][0] * img.scale
    s = round(side_px)
    x0, y0 = round(x - s / 2), round(y - s / 2)
    np.testing.assert_array_equal(P[0], arr[y0 : y0 + s, x0 : x0 + s])
    assert P.dtype == np.uint8 and P.shape == (3, s, s, 3)
    # tissue, not background: H&E patches are far from white on average
    assert P.mean() < 220


def test_jpeg_is_decoded_at_reduced_scale(c3, tmp_path):
    """A JPEG is read through the decoder's draft mode at the scale the patches need, not at full resolution."""
    img = _image(c3)
    big = tmp_path / "big.jpg"
    Image.open(DATA / c3.uns["fixture_image"]["file"]).resize((2104, 2084)).save(big, quality=90)
    img_big = SpotImage(big, scale=img.scale * 4)
    P = img_big.patches(c3.obsm["spatial"][:2], side=300, patch_px=32)
    cached_factor, arr = img_big._cache
    # 300 units x scale 1.0 = 300 px per patch side at full res; 32 px asked -> factor 32/300, one reduced copy
    assert cached_factor == pytest.approx(32 / (300 * img_big.scale))
    assert arr.shape[1] == round(2104 * cached_factor)
    assert P.shape == (2, 32, 32, 3)


def test_memmap_array_is_read_by_region(c3, tmp_path):
    """An array source at full scale is sliced per patch (a memmap is never read whole) and gives the same patches."""
    img = _image(c3)
    arr = np.asarray(Image.open(DATA / c3.uns["fixture_image"]["file"]).convert("RGB"))
    mm = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.uint8, shape=arr.shape)
    mm[:] = arr
    mm.flush()
    ro = np.load(tmp_path / "img.npy", mmap_mode="r")
    side = 60 / img.scale  # 60 image px
    a = SpotImage(ro, scale=img.scale).patches(c3.obsm["spatial"], side=side, patch_px=60)
    b = img.patches(c3.obsm["spatial"], side=side, patch_px=60)
    np.testing.assert_array_equal(a, b)


def test_spot_outside_the_image_is_named(c3):
    img = _image(c3)
    coords = np.asarray(c3.obsm["spatial"]).copy()
    coords[5] = [1e6, 10]
    with pytest.raises(ValueError, match=rf"outside the .* image, e.g. spot '{c3.obs_names[5]}'.*scale factor"):
        img.patches(coords, side=200, names=c3.obs_names)
    with pytest.raises(ValueError, match="non-finite"):
        check_spots(np.array([[np.nan, 1.0]]), (10, 10), 1.0)
    with pytest.raises(ValueError, match="spots x 2"):
        check_spots(np.zeros((3, 3)), (10, 10), 1.0)
    with pytest.raises(ValueError, match="positive number"):
        SpotImage(DATA / c3.uns["fixture_image"]["file"], scale=0)
    with pytest.raises(FileNotFoundError):
        SpotImage(DATA / "no_such.jpg")


def test_patches_near_the_edge_are_padded(c3):
    img = _image(c3)
    P = img.patches(np.array([[1.0, 1.0]]), side=400, patch_px=40, fill=255)
    assert (P[0, :10, :10] == 255).all()  # the part outside the image is the fill value


def test_summary_features_separate_tissue_from_glass(c3):
    img = _image(c3)
    P = img.patches(c3.obsm["spatial"], side=1.5 * c3.uns["fixture_image"]["spot_diameter"], patch_px=48)
    F = summary_features(P)
    names = summary_feature_names()
    assert F.shape == (c3.n_obs, len(names)) and np.isfinite(F).all()
    glass = summary_features(np.full((1, 48, 48, 3), 245, dtype=np.uint8))
    bg = names.index("patch_background")
    h = names.index("patch_H_mean")
    assert glass[0, bg] == 1.0 and F[:, bg].mean() < 0.5
    assert F[:, h].mean() > glass[0, h]  # haematoxylin on tissue
    with pytest.raises(ValueError, match="uint8"):
        summary_features(P.astype(np.float32))


def test_encoder_features_with_a_random_module(c3):
    import torch

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    enc.train()
    P = _image(c3).patches(c3.obsm["spatial"][:10], side=200, patch_px=32)
    F = encoder_features(P, enc, batch_size=4)
    assert F.shape == (10, 8) and np.isfinite(F).all()
    assert enc.training  # the module's mode is restored
    np.testing.assert_allclose(F, encoder_features(P, enc, batch_size=10), rtol=1e-5, atol=1e-6)

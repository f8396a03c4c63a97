"""Build the her2st histology test fixtures in tests/data from the shared data folder.

    python scripts/build_histology_fixtures.py [--shared ../shared]

Two blocks of real spots from two patients: 36 spots of A1 (patient A; the 2,000-px app PNG, coordinates x 0.2876)
and 36 spots of C3 (patient C; the full-resolution JPEG read at 1/8 scale). For each block the image is cropped to
the block's bounding box plus one spot spacing and saved as a JPEG; ``obsm["spatial"]`` keeps full-resolution
pixel units, shifted to the crop's origin, and ``uns["fixture_image"]`` records the file, the scale (image pixels per
coordinate unit) and the spot diameter. Genes: the 300 with the most counts over the 72 spots; counts unchanged.
her2st has no licence: these files are test fixtures only and never ship in the wheel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data"
BLOCKS = {"A1": (6, 6), "C3": (6, 6)}  # section: (columns, rows) of the array block
DRAFT = {"A1": 1.0, "C3": 0.125}  # extra reduction of the stored image


def _block(a: ad.AnnData, ncol: int, nrow: int) -> ad.AnnData:
    """The spots of the densest ``ncol x nrow`` window of array positions (most spots; ties: lowest x, y)."""
    x, y = a.obs["array_x"].to_numpy(), a.obs["array_y"].to_numpy()
    best, where = -1, (0, 0)
    for x0 in range(x.min(), x.max() - ncol + 2):
        for y0 in range(y.min(), y.max() - nrow + 2):
            n = int(((x >= x0) & (x < x0 + ncol) & (y >= y0) & (y < y0 + nrow)).sum())
            if n > best:
                best, where = n, (x0, y0)
    x0, y0 = where
    return a[(x >= x0) & (x < x0 + ncol) & (y >= y0) & (y < y0 + nrow)].copy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    d = args.shared / "data" / "her2st"
    full = ad.read_h5ad(d / "her2st_36sections_counts.h5ad")
    images = pd.read_csv(d / "images" / "IMAGES.tsv", sep="\t").set_index("section")
    meta = pd.read_csv(d / "her2st_sections.tsv", sep="\t").set_index("section")
    parts = []
    for s, (ncol, nrow) in BLOCKS.items():
        a = _block(full[full.obs["section"] == s], ncol, nrow)
        scale = float(images.loc[s, "scale_spatial_to_image"])
        spacing = float(meta.loc[s, "px_per_array_unit_x"])
        xy = np.asarray(a.obsm["spatial"], dtype=np.float64)
        lo = np.floor(xy.min(axis=0) - spacing)
        hi = np.ceil(xy.max(axis=0) + spacing)
        with Image.open(d / images.loc[s, "file"]) as im:
            reduce = DRAFT[s]
            if im.format == "JPEG":
                im.draft("RGB", (round(im.width * reduce), round(im.height * reduce)))
            im = im.convert("RGB")
            f = im.width / float(images.loc[s, "width_px"]) * scale  # pixels of the decoded image per unit
            box = tuple(int(v) for v in (lo[0] * f, lo[1] * f, hi[0] * f, hi[1] * f))
            crop = im.crop(box)
        name = f"her2st_{s}_crop.jpg"
        crop.save(OUT / name, quality=90)
        a.obsm["spatial"] = xy - np.array([box[0], box[1]]) / f
        a.uns["fixture_image"] = {
            "file": name,
            "scale": f,
            "spot_diameter": float(meta.loc[s, "spot_diameter_fullres_px"]),
        }
        parts.append(a)
        print(s, a.n_obs, "spots", crop.size, "px, scale", round(f, 5))
    X = sp.vstack([sp.csr_matrix(p.X) for p in parts])
    top = np.argsort(-np.asarray(X.sum(axis=0)).ravel(), kind="stable")[:300]
    keep = np.sort(top)
    for p in parts:
        s = p.obs["section"].iloc[0]
        out = ad.AnnData(
            sp.csr_matrix(p.X[:, keep], dtype=np.int32), obs=p.obs[["section", "patient", "array_x", "array_y"]].copy(),
            var=pd.DataFrame(index=p.var_names[keep].copy()), obsm={"spatial": p.obsm["spatial"]},
            uns={"fixture_image": p.uns["fixture_image"]},
        )  # fmt: skip
        out.obs["patient"] = out.obs["patient"].astype(str)
        out.obs["section"] = out.obs["section"].astype(str)
        out.write_h5ad(OUT / f"her2st_{s}_36spots.h5ad", compression="gzip")


if __name__ == "__main__":
    main()

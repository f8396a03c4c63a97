"""Cut the small real gene-graph test fixture in tests/data from ../shared/data (see tests/data/PROVENANCE.md).

- Mouse olfactory bulb Spatial Transcriptomics (Stahl et al. 2016, via STdeconvolve): all 262 spots, the 1,500
  genes detected in the most spots, raw counts unchanged, spot coordinates in ``obsm["spatial"]``, the layer
  annotation in ``obs["layer"]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    data = p.parse_args().shared / "data"
    a = ad.read_h5ad(data / "mouse_olfactory_bulb_st/mob_stdeconvolve_262spots_raw.h5ad")
    X = sp.csr_matrix(a.X)
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-detected, kind="stable")[:1500])
    out = ad.AnnData(
        X=sp.csr_matrix(X[:, keep], dtype=np.int32),
        obs=a.obs[["layer"]].astype(str).replace("nan", ""),
        var=a.var.iloc[keep][["gene_id"]].astype(str),
    )
    out.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=np.float64)
    out.write_h5ad(ROOT / "tests" / "data" / "mob_st_262spots_1500genes.h5ad", compression="gzip")


if __name__ == "__main__":
    main()

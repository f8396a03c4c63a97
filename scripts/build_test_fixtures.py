"""Cut the small real test fixtures in tests/data from ../shared/data (see tests/data/PROVENANCE.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]


def _detected(a: ad.AnnData) -> np.ndarray:
    return np.asarray((a.X > 0).sum(axis=0)).ravel() > 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    data = p.parse_args().shared / "data"
    out = ROOT / "tests" / "data"
    o = ad.read_h5ad(data / "oligodendroglioma_tirosh2016/oligodendroglioma.h5ad")
    idx = np.sort(np.random.default_rng(0).choice(o.n_obs, 40, replace=False))
    o = o[idx].copy()
    keep = _detected(o)
    o = ad.AnnData(X=sp.csr_matrix(o.X[:, keep]), obs=o.obs[["cell_type"]].copy(), var=o.var.loc[keep, []].copy())
    o.write_h5ad(out / "oligodendroglioma_tpm_40cells.h5ad", compression="gzip")
    c = ad.read_h5ad(data / "celltypist_sample/celltypist_sample_559cells_raw.h5ad")[:60].copy()
    keep = _detected(c)
    c = ad.AnnData(X=sp.csr_matrix(c.X[:, keep]), var=c.var.loc[keep, []].copy(), obs=c.obs[[]].copy())
    c.write_h5ad(out / "celltypist_sample_60cells.h5ad", compression="gzip")


if __name__ == "__main__":
    main()

"""Cut the small real deconvolution test fixtures in tests/data from ../shared/data (see tests/data/PROVENANCE.md).

- Kang 2018 (muscat subset): 150 cells of each of two donors' control samples, all 1,267 genes, raw counts.
- Hoek 2015 PBMC bulk (TPM) and Petitprez 2020 mouse bulk (TPM): every sample, the 3,000 genes with the highest
  mean TPM, values unchanged, with the FACS fractions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]


def _top_genes(a: ad.AnnData, n: int) -> ad.AnnData:
    keep = np.sort(np.argsort(-np.asarray(a.X).mean(axis=0), kind="stable")[:n])
    out = ad.AnnData(
        X=np.asarray(a.X[:, keep], dtype=np.float32),
        obs=a.obs.astype(str),
        var=a.var.iloc[keep][["gene_symbol", "gene_id"]].astype(str),
    )
    out.obsm["fractions"] = pd.DataFrame(a.obsm["fractions"]).astype(np.float64)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    data = p.parse_args().shared / "data"
    out = ROOT / "tests" / "data"
    k = ad.read_h5ad(data / "kang2018_pbmc_ifnb/kang2018_muscat_example_sce.h5ad")
    rng = np.random.default_rng(0)
    idx = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(k.obs["sample_id"] == s), 150, replace=False) for s in ("ctrl101", "ctrl107")]
        )
    )
    k = k[idx].copy()
    k = ad.AnnData(
        X=sp.csr_matrix(k.X, dtype=np.int32),
        obs=k.obs[["cell_type", "sample_id"]].astype(str).astype("category"),
        var=k.var[["gene_id", "gene_symbol"]].astype(str),
    )
    k.write_h5ad(out / "kang2018_ctrl_300cells.h5ad", compression="gzip")
    for name, src in (
        ("hoek2015_pbmc_bulk_tpm_3000genes.h5ad", "deconvolution_bulk/hoek2015_pbmc_bulk_tpm.h5ad"),
        ("petitprez2020_mouse_bulk_tpm_3000genes.h5ad", "deconvolution_bulk/petitprez2020_mouse_bulk_tpm.h5ad"),
    ):
        _top_genes(ad.read_h5ad(data / src), 3000).write_h5ad(out / name, compression="gzip")


if __name__ == "__main__":
    main()

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import mixgf as mgf

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_settings():
    with mgf.settings.override(progress_bar=False, verbosity="warning"):
        yield


@pytest.fixture(scope="session")
def pbmc_full() -> ad.AnnData:
    return mgf.datasets.pbmc3k()


@pytest.fixture
def pbmc(pbmc_full) -> ad.AnnData:
    """300 real human PBMCs (raw counts, symbols as var names, Ensembl IDs in var['gene_id'])."""
    return pbmc_full[:300].copy()


@pytest.fixture(scope="session")
def baron_full() -> ad.AnnData:
    return mgf.datasets.baron_mouse_pancreas()


@pytest.fixture
def baron(baron_full) -> ad.AnnData:
    """200 real mouse pancreas cells (raw counts, mouse symbols as var names)."""
    return baron_full[:200].copy()


@pytest.fixture
def oligo() -> ad.AnnData:
    """40 real human tumour cells holding TPM-like, non-count values."""
    return ad.read_h5ad(DATA / "oligodendroglioma_tpm_40cells.h5ad")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

from __future__ import annotations

import pytest

import mixgf as mgf


@pytest.fixture(scope="session")
def default_model():
    return mgf.MixGeneformer.load()


@pytest.fixture
def small_pbmc(pbmc_full):
    """60 real PBMCs tokenized with the default vocabulary, capped at 256 tokens (fast)."""
    a = pbmc_full[:60].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=256)
    return a

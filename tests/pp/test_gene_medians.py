from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import mixgf as mgf


def _plain_medians(adata):
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    norm = sp.diags(1e4 / np.asarray(X.sum(axis=1)).ravel()) @ X
    norm = sp.csc_matrix(norm)
    out = {}
    for j in range(X.shape[1]):
        v = norm.data[norm.indptr[j] : norm.indptr[j + 1]]
        v = v[v > 0]
        if len(v):
            out[adata.var_names[j]] = np.median(v)
    return out


def test_exact_medians_match_plain_computation(baron):
    med = mgf.pp.gene_medians(baron)
    m = mgf.genes.map_to_ensembl(baron.var_names)
    ref = _plain_medians(baron)
    sym_to_id = dict(zip(baron.var_names, m.ensembl_ids))
    checked = 0
    for sym, value in ref.items():
        gid = sym_to_id[sym]
        if gid is None or list(sym_to_id.values()).count(gid) > 1:
            continue
        assert med.loc[gid, "median"] == pytest.approx(value, rel=1e-12)
        checked += 1
        if checked > 300:
            break
    assert checked > 300
    assert (med["species"] == "mouse").all() and (med["n_cells"] > 0).all()


def test_corpus_pools_datasets_and_histogram_is_close(baron):
    a, b = baron[:120].copy(), baron[120:].copy()
    whole = mgf.pp.gene_medians(baron)
    pooled = mgf.pp.gene_medians([a, b], chunk_size=50)
    assert whole.index.equals(pooled.index)
    np.testing.assert_allclose(pooled["median"], whole["median"], rtol=1e-12)
    np.testing.assert_array_equal(pooled["n_cells"], whole["n_cells"])
    hist = mgf.pp.gene_medians(baron, method="histogram")
    odd = whole["n_cells"] % 2 == 1  # odd counts: the median is one observed value, which a bin brackets
    np.testing.assert_allclose(hist.loc[odd, "median"], whole.loc[odd, "median"], rtol=1.2e-3)


def test_two_species_corpus(pbmc, baron):
    med = mgf.pp.gene_medians([pbmc[:100].copy(), baron[:100].copy()], gene_id_key=None)
    assert set(med["species"]) == {"human", "mouse"}


def test_rejects_negative_values(baron):
    X = baron.X.toarray().astype(np.float32)
    X[0, 0] = -1
    baron.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match="non-negative"):
        mgf.pp.gene_medians(baron)

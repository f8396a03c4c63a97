from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

import mixgf as mgf


def test_umap_keeps_users_keys(small_pbmc):
    a = small_pbmc
    mgf.tl.embed(a)
    sc.pp.pca(a, n_comps=10)
    sc.pp.neighbors(a, n_neighbors=5)
    sc.tl.umap(a)
    user_umap = a.obsm["X_umap"].copy()
    user_conn = a.obsp["connectivities"].copy()
    mgf.tl.umap(a, n_neighbors=5)
    assert a.obsm["X_mixgf_umap"].shape == (a.n_obs, 2)
    assert "mixgf_neighbors" in a.uns and "mixgf_neighbors_connectivities" in a.obsp
    np.testing.assert_array_equal(a.obsm["X_umap"], user_umap)
    assert (a.obsp["connectivities"] != user_conn).nnz == 0


def test_umap_needs_embedding(small_pbmc):
    with pytest.raises(KeyError, match=r"mgf\.tl\.embed"):
        mgf.tl.umap(small_pbmc)

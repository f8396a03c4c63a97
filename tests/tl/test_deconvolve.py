from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.engine.deconvolution import Prototypes, fit_deconvolution, fit_prototypes, fraction_agreement, nnls

DATA = Path(__file__).resolve().parents[1] / "data"
TYPES_T = ["CD4 T cells", "CD8 T cells"]


@pytest.fixture(scope="module")
def labelled() -> ad.AnnData:
    a = mgf.datasets.pbmc3k()
    return a[a.obs["cell_type"].notna()].copy()


@pytest.fixture(scope="module")
def ref(labelled) -> ad.AnnData:
    """Prototypes from the even-numbered labelled PBMCs."""
    r = labelled[::2].copy()
    with mgf.settings.override(verbosity="error"):
        mgf.tl.prototypes(r, groupby="cell_type", min_cells=5)
    return r


def _pseudo_bulk(cells: ad.AnnData, n: int, size: int, seed: int) -> tuple[ad.AnnData, pd.DataFrame]:
    """Mixtures of real cells with Dirichlet fractions over the types present; truth = realised cell fractions."""
    rng = np.random.default_rng(seed)
    labels = cells.obs["cell_type"].astype(str).to_numpy()
    types = np.unique(labels)
    X = sp.csr_matrix(cells.X)
    rows, truth = [], []
    for f in rng.dirichlet(np.ones(len(types)), n):
        k = rng.multinomial(size, f)
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == t), c) for t, c in zip(types, k)])
        rows.append(np.asarray(X[idx].sum(axis=0)).ravel())
        truth.append(k / size)
    names = [f"mix{i}" for i in range(n)]
    return ad.AnnData(np.vstack(rows), obs=pd.DataFrame(index=names), var=cells.var.copy()), pd.DataFrame(
        truth, index=names, columns=types
    )


# ---- prototypes --------------------------------------------------------------------------------------------


def test_prototypes_are_mean_counts_per_cell(ref):
    means = ref.varm["mixgf_prototypes"]
    types = ref.uns["mixgf_prototypes"]["types"]
    assert means.shape == (ref.n_vars, len(types))
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    X = sp.csr_matrix(ref.X)
    for gene in ("LYZ", "MS4A1", "NKG7"):
        j = ref.var_names.get_loc(gene)
        for k, t in enumerate(types):
            if (labels == t).sum() < 50:  # the prior of one cell towards the pooled profile moves tiny types
                continue
            direct = X[labels == t, j].mean()
            assert means[j, k] == pytest.approx(direct, rel=0.05, abs=0.02)
    assert np.isclose(ref.uns["mixgf_prototypes"]["n_cells"], [int((labels == t).sum()) for t in types]).all()
    disp = ref.var["mixgf_prototypes_dispersion"].to_numpy()
    assert (disp > 0).all() and np.isfinite(disp[ref.var_names.get_loc("LYZ")])


def test_prototypes_with_batches_remove_a_batch_shift():
    kang = ad.read_h5ad(DATA / "kang2018_ctrl_300cells.h5ad")
    shifted = kang.copy()
    X = shifted.X.toarray()
    j = shifted.var_names.get_loc("ISG15")
    X[(shifted.obs["sample_id"] == "ctrl107").to_numpy(), j] *= 4  # a real gene, 4x in one donor
    shifted.X = sp.csr_matrix(X)
    mgf.tl.prototypes(kang, groupby="cell_type", batch_key="sample_id")
    mgf.tl.prototypes(shifted, groupby="cell_type", batch_key="sample_id")
    be = shifted.uns["mixgf_prototypes"]["batch_effects"]
    assert shifted.uns["mixgf_prototypes"]["batches"] == ["ctrl101", "ctrl107"]
    base = kang.uns["mixgf_prototypes"]["batch_effects"]
    assert (be[1, j] - be[0, j]) - (base[1, j] - base[0, j]) == pytest.approx(np.log(4), abs=0.05)
    # the other genes' prototypes are untouched by the shift
    other = np.arange(kang.n_vars) != j
    a, b = kang.varm["mixgf_prototypes"][other], shifted.varm["mixgf_prototypes"][other]
    assert np.corrcoef(np.log1p(a.ravel()), np.log1p(b.ravel()))[0, 1] > 0.999


def test_prototypes_small_types_warn_and_floor(labelled):
    a = labelled[:600].copy()
    with pytest.warns(UserWarning, match="fewer than min_cells=50"):
        mgf.tl.prototypes(a, groupby="cell_type", min_cells=50)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[:2, a.obs.columns.get_loc("cell_type")] = "tiny"
    with pytest.raises(ValueError, match="fewer than 3 cells"):
        mgf.tl.prototypes(a, groupby="cell_type")


def test_prototypes_reject_normalised_and_negative(labelled):
    a = labelled[:300].copy()
    a.X = a.X.astype(np.float32)
    a.X.data[0] = 0.5
    with pytest.raises(ValueError, match="non-integer values"):
        mgf.tl.prototypes(a, groupby="cell_type", min_cells=1)
    a.X.data[0] = -1
    with pytest.raises(ValueError, match="negative values"):
        mgf.tl.prototypes(a, groupby="cell_type", min_cells=1)
    with pytest.raises(KeyError, match="not a column"):
        mgf.tl.prototypes(a, groupby="louvain")


def test_prototypes_save_load_roundtrip_and_corruption(ref, tmp_path):
    p = mgf.get.prototypes(ref)
    path = p.save(tmp_path / "protos")
    assert sorted(f.name for f in path.iterdir()) == [
        "genes.tsv", "manifest.json", "prototypes.json", "prototypes.safetensors", "types.tsv",
    ]  # fmt: skip
    back = Prototypes.load(path)
    assert np.array_equal(back.means, p.means) and back.genes == p.genes and back.gene_ids == p.gene_ids
    assert back.types == p.types and back.species == "human" and back.params["groupby"] == "cell_type"
    with pytest.raises(FileExistsError):
        p.save(path)
    (path / "types.tsv").write_text("type\nA\n")
    with pytest.raises(ValueError, match="sha256"):
        Prototypes.load(path)


# ---- deconvolution -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_deconvolve_held_out_pseudo_bulk(ref, labelled):
    held_out = labelled[1::2]
    bulk, truth = _pseudo_bulk(held_out, 30, 300, seed=1)
    mgf.tl.deconvolve(bulk, ref)
    frac = bulk.obsm["mixgf_fractions"]
    assert isinstance(frac, pd.DataFrame) and list(frac.columns) == ref.uns["mixgf_prototypes"]["types"]
    assert np.allclose(frac.sum(axis=1), 1)
    m = fraction_agreement(frac[truth.columns].to_numpy(), truth.to_numpy())
    big = [t for t in truth.columns if t not in ("Megakaryocytes", "Dendritic cells")]
    r = dict(zip(truth.columns, m["r"]))
    assert all(r[t] > 0.75 for t in big), r
    assert m["rmse_all"] < 0.1  # measured 0.091: the half of pbmc3k the prototypes never saw
    # NNLS on the same genes, for the record: on this same-platform split it is better (RMSE 0.045 vs 0.091; see
    # docs/deconvolution.md), on every cross-platform / cross-sample fold of the benchmark it is worse
    protos = mgf.get.prototypes(ref)
    pos = [protos.genes.index(g) for g in bulk.var_names]
    base = fraction_agreement(nnls(bulk.X, protos.means[pos]), truth[protos.types].to_numpy())["rmse_all"]
    assert base < 0.1
    assert (bulk.obs["mixgf_fractions_r"] > 0.85).all()  # measured: lowest of 30 samples 0.886
    assert (bulk.obs["mixgf_fractions_deviance"] > 0).all()
    params = bulk.uns["mixgf_fractions"]["params"]
    assert params["counts"] == "raw" and params["genes"] == "all"
    assert bulk.uns["mixgf_fractions"]["coverage"]["n_genes_matched"] == bulk.n_vars


def test_deconvolve_writes_h5ad_and_copy(ref, labelled, tmp_path):
    bulk, _ = _pseudo_bulk(labelled[1::2], 4, 200, seed=2)
    out = mgf.tl.deconvolve(bulk, ref, genes="markers", n_markers=50, gene_sensitivity=True, ambient=True, copy=True)
    assert "mixgf_fractions" not in bulk.obsm and out is not None
    used = out.var["mixgf_fractions_alpha"].notna()
    assert 50 <= used.sum() <= 50 * 8
    assert np.isfinite(out.var.loc[used, "mixgf_fractions_beta"]).all()
    out.write_h5ad(tmp_path / "bulk.h5ad")
    back = ad.read_h5ad(tmp_path / "bulk.h5ad")
    assert np.allclose(back.obsm["mixgf_fractions"].to_numpy(), out.obsm["mixgf_fractions"].to_numpy())


def test_deconvolve_genes_list_and_bad_genes(ref, labelled):
    bulk, _ = _pseudo_bulk(labelled[1::2], 3, 200, seed=3)
    genes = ["LYZ", "MS4A1", "NKG7", "CD3E", "CD8A", "FCGR3A", "PPBP", "FCER1A", "GNLY", "CST3", "CD79A", "IL7R"]
    mgf.tl.deconvolve(bulk, ref, genes=genes)
    assert bulk.uns["mixgf_fractions"]["coverage"]["n_genes_used"] == len(genes)
    with pytest.raises(ValueError, match="none of the 1 requested genes"):
        mgf.tl.deconvolve(bulk, ref, genes=["not-a-gene"])
    other = ad.AnnData(np.ones((2, 3)), var=pd.DataFrame(index=["geneA", "geneB", "geneC"]))
    with pytest.raises(ValueError, match="no genes in common"):
        mgf.tl.deconvolve(other, ref, species="human")


def test_deconvolve_tpm_needs_counts_normalized(ref):
    hoek = ad.read_h5ad(DATA / "hoek2015_pbmc_bulk_tpm_3000genes.h5ad")
    with pytest.raises(ValueError, match="counts='normalized'"):
        mgf.tl.deconvolve(hoek, ref)
    mgf.tl.deconvolve(hoek, ref, counts="normalized")
    frac = hoek.obsm["mixgf_fractions"]
    facs = hoek.obsm["fractions"]
    est = pd.DataFrame({"T": frac[TYPES_T].sum(axis=1), "B": frac["B cells"],
                        "Mono": frac[["CD14+ Monocytes", "FCGR3A+ Monocytes"]].sum(axis=1), "NK": frac["NK cells"]})  # fmt: skip
    m = fraction_agreement(est.to_numpy(), facs[est.columns].to_numpy())
    # the 3,000 highest-TPM genes of the fixture follow every type across the 8 samples (absolute levels need
    # more genes: the benchmark uses all of them)
    r = dict(zip(est.columns, m["r"]))
    assert r["T"] > 0.9 and r["NK"] > 0.9 and r["Mono"] > 0.8 and r["B"] > 0.8, r


def test_deconvolve_rejects_negative_and_nan(ref, labelled):
    bulk, _ = _pseudo_bulk(labelled[1::2], 2, 100, seed=4)
    bulk.X = bulk.X.astype(np.float64)
    bulk.X[0, 5] = -3
    with pytest.raises(ValueError, match="negative values"):
        mgf.tl.deconvolve(bulk, ref)
    bulk.X[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mgf.tl.deconvolve(bulk, ref, counts="normalized")
    with pytest.raises(ValueError, match="counts must be"):
        mgf.tl.deconvolve(bulk, ref, counts="log")


def test_mouse_bulk_through_human_orthologs(ref):
    mouse = ad.read_h5ad(DATA / "petitprez2020_mouse_bulk_tpm_3000genes.h5ad")
    mgf.tl.deconvolve(mouse, ref, counts="normalized", gene_id_key="gene_id")
    cov = mouse.uns["mixgf_fractions"]["coverage"]
    assert cov["via_orthologs"] and cov["mixture_species"] == "mouse" and cov["prototype_species"] == "human"
    assert cov["n_genes_matched"] > 1000
    frac = mouse.obsm["mixgf_fractions"]
    facs = mouse.obsm["fractions"]
    # B cells dominate these samples by FACS (26-72 %) and the orthologs follow them (the absolute level and the
    # other types are poor: see docs/deconvolution.md)
    r = np.corrcoef(frac["B cells"], facs["B cell"])[0, 1]
    assert r > 0.8


def test_other_species_without_orthologs_is_an_error(ref, baron_full):
    table = mgf.genes.orthologs()
    genes = mgf.genes.map_to_ensembl(baron_full.var_names, "mouse").ensembl_ids
    no_ortho = np.array([g is not None and g not in set(table["mouse_id"]) for g in genes])
    mouse = baron_full[:50, no_ortho].copy()
    with pytest.raises(ValueError, match="one-to-one orthologs"):
        mgf.tl.deconvolve(mouse, ref)


def test_deconvolve_from_saved_directory(ref, labelled, tmp_path):
    bulk, _ = _pseudo_bulk(labelled[1::2], 3, 200, seed=5)
    path = mgf.get.prototypes(ref).save(tmp_path / "p")
    a = mgf.tl.deconvolve(bulk, path, genes="markers", n_markers=30, copy=True)
    b = mgf.tl.deconvolve(bulk, ref, genes="markers", n_markers=30, copy=True)
    assert np.allclose(a.obsm["mixgf_fractions"], b.obsm["mixgf_fractions"])


# ---- engine ------------------------------------------------------------------------------------------------


def test_engine_recovers_gene_sensitivity(ref):
    """NB samples drawn with real prototypes and a gene sensitivity: fitting alpha recovers it and helps."""
    rng = np.random.default_rng(0)
    protos = mgf.get.prototypes(ref)
    keep = protos.means.max(axis=1) > 2
    M = protos.means[keep]
    S, (G, K) = 40, M.shape
    P = rng.dirichlet(np.ones(K), S)
    alpha = rng.normal(0, 0.5, G)
    r = np.exp(alpha) * (P @ M.T)
    mu = 2e5 * r / r.sum(axis=1, keepdims=True)
    theta = 20.0
    Y = rng.poisson(rng.gamma(theta, mu / theta))
    plain = fit_deconvolution(Y, M, gene_sensitivity=False, ambient=False, max_iter=200)
    full = fit_deconvolution(Y, M, gene_sensitivity=True, ambient=False, max_iter=300)
    e_plain = fraction_agreement(plain.fractions, P)["rmse_all"]
    e_full = fraction_agreement(full.fractions, P)["rmse_all"]
    assert e_full < 0.05
    assert e_full < 0.7 * e_plain
    assert np.corrcoef(full.alpha, alpha)[0, 1] > 0.8
    assert np.allclose(full.fractions.sum(axis=1), 1)


def test_engine_prototypes_without_batches_match_group_means():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(rng.gamma(2.0, 1.0, (200, 30))).astype(float))
    types = np.repeat([0, 1], 100)
    fit = fit_prototypes(X, types, 2, prior_cells=0)
    dense = X.toarray()
    for k in range(2):
        assert np.allclose(fit.means[:, k], dense[types == k].mean(axis=0))
    assert fit.batch_effects is None and (fit.dispersion > 0).all()

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.genes import Vocabulary

from ._reference import column_tokens, geneformer_upstream_tokens, reference_tokens, unpad

KEY = "mixgf_tokens"


def _ids_adata(adata: ad.AnnData) -> ad.AnnData:
    """PBMCs with unique Ensembl IDs as var names (for references that map genes by ID only)."""
    out = adata[:, ~adata.var["gene_id"].duplicated(keep=False).to_numpy()].copy()
    out.var_names = out.var["gene_id"].astype(str).to_numpy()
    return out


def _tokens(adata, key=KEY):
    return unpad(adata.obsm[key], adata.obs[f"{key}_n_tokens"].to_numpy())


# -- exactness -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["mixgf", "geneformer-v1"])  # V2's ID mapping: test_geneformer_v2.py
def test_parity_with_float64_reference(pbmc, preset):
    adata = _ids_adata(pbmc)
    vocab = Vocabulary.load(preset)
    mgf.pp.rank_tokenize(adata, vocab=preset)
    r = vocab.rules
    ref = reference_tokens(
        adata.X, column_tokens(adata, vocab), vocab.medians, normalization=r.normalization, max_genes=r.max_genes
    )
    lengths = adata.obs[f"{KEY}_n_tokens"].to_numpy()
    got = unpad(adata.obsm[KEY], lengths, start=int(r.add_cls), end_trim=int(r.add_eos))
    assert len(got) == len(ref) == adata.n_obs
    for g, e in zip(got, ref):
        np.testing.assert_array_equal(g, e)
    if r.add_cls:
        assert (adata.obsm[KEY][:, 0] == vocab.id_of("cls")).all()
        assert (adata.obsm[KEY][np.arange(adata.n_obs), lengths - 1] == vocab.id_of("eos")).all()


def test_parity_on_mouse_cells(baron):
    vocab = Vocabulary.load("mixgf")
    mgf.pp.rank_tokenize(baron)
    m = mgf.genes.map_to_ensembl(baron.var_names, prefer=np.asarray(vocab.tokens)[vocab.is_gene])
    index = {t: i for i, t in enumerate(vocab.tokens)}
    col_tok = np.array([index.get(g, -1) if g else -1 for g in m.ensembl_ids])
    r = vocab.rules
    ref = reference_tokens(baron.X, col_tok, vocab.medians, normalization=r.normalization, max_genes=r.max_genes)
    for g, e in zip(_tokens(baron), ref):
        np.testing.assert_array_equal(g, e)
    used = baron.obsm[KEY][baron.obsm[KEY] > 0]
    assert (vocab.gene_species[used] == "mouse").all(), "mouse cells use mouse tokens only"


def test_matches_geneformer_upstream_rule(pbmc):
    """Geneformer V1: ranks of X / n_counts * 1e4 / median (n_counts over all genes), first 2,048."""
    adata = _ids_adata(pbmc)
    vocab = Vocabulary.load("geneformer-v1")
    mgf.pp.rank_tokenize(adata, vocab=vocab)
    up = geneformer_upstream_tokens(adata.X, column_tokens(adata, vocab), vocab.medians, max_genes=2048)
    ties = 0
    for g, e in zip(_tokens(adata), up):
        assert set(g.tolist()) == set(e.tolist())
        if not np.array_equal(g, e):
            ties += 1  # upstream's unstable argsort orders exact ties arbitrarily
    assert ties <= adata.n_obs * 0.02


def test_ties_broken_by_token_id():
    vocab = Vocabulary.load("geneformer-v1")
    genes = np.asarray(vocab.tokens)[[2, 3, 4, 5, 6]]
    med = vocab.medians[[2, 3, 4, 5, 6]]
    # counts proportional to the medians: every gene has the same value x
    X = np.array([med / med.min() * 3, med / med.min() * 3][:1])
    X = np.round(X)
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=genes))
    mgf.pp.rank_tokenize(adata, vocab=vocab, counts="normalized")
    tok = _tokens(adata)[0]
    x = X[0] / med
    expected = np.array([2, 3, 4, 5, 6])[np.lexsort((np.arange(5), -x))]
    np.testing.assert_array_equal(tok, expected)


# -- input forms ---------------------------------------------------------------------------------------------------
def test_identical_across_matrix_types_and_chunks(pbmc, tmp_path):
    base = pbmc.copy()
    mgf.pp.rank_tokenize(base, gene_id_key="gene_id")
    expected = base.obsm[KEY]

    variants = {
        "dense": lambda a: a.X.toarray(),
        "csc": lambda a: sp.csc_matrix(a.X),
        "csr_array": lambda a: sp.csr_array(a.X),
        "float64": lambda a: a.X.astype(np.float64),
    }
    for name, make in variants.items():
        a = pbmc.copy()
        a.X = make(a)
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", chunk_size=37)
        np.testing.assert_array_equal(a.obsm[KEY], expected, err_msg=name)

    layered = pbmc.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = sp.csr_matrix(np.log1p(layered.X.toarray()))
    mgf.pp.rank_tokenize(layered, layer="counts", gene_id_key="gene_id", chunk_size=1)
    np.testing.assert_array_equal(layered.obsm[KEY], expected)

    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    mgf.pp.rank_tokenize(backed, gene_id_key="gene_id", chunk_size=64)
    np.testing.assert_array_equal(backed.obsm[KEY], expected)


def test_dask_input(pbmc):
    da = pytest.importorskip("dask.array")
    base = pbmc.copy()
    mgf.pp.rank_tokenize(base, gene_id_key="gene_id")
    a = pbmc.copy()
    a.X = da.from_array(pbmc.X.toarray(), chunks=(50, -1))
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", chunk_size=64)
    np.testing.assert_array_equal(a.obsm[KEY], base.obsm[KEY])


def test_view_is_materialised_with_warning(pbmc):
    view = pbmc[:50]
    with pytest.warns(UserWarning, match="view"):
        mgf.pp.rank_tokenize(view, gene_id_key="gene_id")
    assert not view.is_view
    assert view.obsm[KEY].shape[0] == 50


def test_versioned_ids_and_symbols_agree(pbmc):
    a = _ids_adata(pbmc)
    mgf.pp.rank_tokenize(a)
    b = a.copy()
    b.var_names = [f"{g}.7" for g in b.var_names]
    mgf.pp.rank_tokenize(b)
    np.testing.assert_array_equal(a.obsm[KEY], b.obsm[KEY])


# -- what is written -----------------------------------------------------------------------------------------------
def test_outputs_params_and_coverage(pbmc):
    x_before = pbmc.X.copy()
    obs_names, var_names = pbmc.obs_names.copy(), pbmc.var_names.copy()
    mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    tok = pbmc.obsm[KEY]
    assert tok.dtype == np.uint16 and tok.shape[0] == pbmc.n_obs
    n = pbmc.obs[f"{KEY}_n_tokens"].to_numpy()
    assert tok.shape[1] == n.max() <= Vocabulary.load("mixgf").rules.max_len
    assert ((tok != 0).sum(axis=1) == n).all(), "padding only after the tokens"
    p = pbmc.uns[KEY]["params"]
    assert p["vocab"] == "mixgf" and p["vocab_sha256"] == Vocabulary.load("mixgf").sha256
    assert (
        p["species"] == "human"
        and p["max_len"] == Vocabulary.load("mixgf").rules.max_len
        and p["normalization"] == "vocab_counts"
    )
    assert p["n_genes_total"] == pbmc.n_vars and 0 < p["n_genes_in_vocab"] <= p["n_genes_mapped"]
    assert p["mixgf_version"] == mgf.__version__
    cov = pbmc.uns[KEY]["coverage"]
    assert 0.9 < cov["frac_counts_in_vocab"] <= 1
    assert "MALAT1" in cov["top_unmapped_genes"]
    assert "counts on vocabulary genes" in mgf.pp.coverage_report(pbmc)
    # X, obs and var untouched
    assert (x_before != pbmc.X).nnz == 0
    assert pbmc.obs_names.equals(obs_names) and pbmc.var_names.equals(var_names)


def test_results_survive_h5ad_round_trip(pbmc, tmp_path):
    mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    pbmc.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    np.testing.assert_array_equal(back.obsm[KEY], pbmc.obsm[KEY])
    assert back.uns[KEY]["params"]["vocab_sha256"] == pbmc.uns[KEY]["params"]["vocab_sha256"]
    assert mgf.pp.coverage_report(back) == mgf.pp.coverage_report(pbmc)


def test_copy_leaves_input_alone(pbmc):
    out = mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id", copy=True)
    assert KEY in out.obsm and KEY not in pbmc.obsm and KEY not in pbmc.uns


def test_max_len_and_key_added(pbmc):
    mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id", max_len=100, key_added="short")
    mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    assert pbmc.obsm["short"].shape[1] == 100
    np.testing.assert_array_equal(pbmc.obsm["short"], pbmc.obsm[KEY][:, :100])
    with pytest.raises(ValueError, match="no room"):
        mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id", vocab="geneformer-v2", max_len=2)


def test_empty_cells_are_kept_and_flagged(pbmc):
    X = pbmc.X.toarray()
    X[[3, 10]] = 0
    pbmc.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="2 of 300 cells"):
        mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    assert pbmc.n_obs == 300
    empty = pbmc.obs[f"{KEY}_empty"].to_numpy()
    assert empty.sum() == 2 and empty[[3, 10]].all()
    assert (pbmc.obsm[KEY][[3, 10]] == 0).all()
    assert pbmc.uns[KEY]["params"]["n_cells_empty"] == 2


def test_v2_empty_cell_has_cls_eos(pbmc):
    X = pbmc.X.toarray()
    X[0] = 0
    pbmc.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="express no gene"):
        mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id", vocab="geneformer-v2")
    assert pbmc.obsm[KEY][0, :3].tolist() == [2, 3, 0]


def test_duplicates_sum(pbmc):
    a = _ids_adata(pbmc)[:, :3000].copy()
    dup = a[:, :20].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about non-unique names
        both = ad.concat([a, dup], axis=1)
        both.var_names_make_unique()
    both.var["gene_id"] = list(a.var_names) + list(dup.var_names)
    with pytest.raises(ValueError, match="duplicates='sum'"):
        mgf.pp.rank_tokenize(both, gene_id_key="gene_id")
    mgf.pp.rank_tokenize(both, gene_id_key="gene_id", duplicates="sum")
    summed = a.copy()
    X = summed.X.toarray()
    X[:, :20] *= 2
    summed.X = sp.csr_matrix(X)
    mgf.pp.rank_tokenize(summed)
    np.testing.assert_array_equal(both.obsm[KEY], summed.obsm[KEY])


# -- bad input: clear errors, nothing written ----------------------------------------------------------------------
def _assert_untouched(adata):
    assert KEY not in adata.obsm and KEY not in adata.uns and f"{KEY}_n_tokens" not in adata.obs


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative"), (0.5, "non-integer")],
)
def test_bad_values(pbmc, value, match):
    X = pbmc.X.toarray().astype(np.float32)
    X[5, 7] = value
    pbmc.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match=match) as e:
        mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    assert pbmc.obs_names[5] in str(e.value) and pbmc.var_names[7] in str(e.value)
    _assert_untouched(pbmc)


def test_not_counts_real_tpm(oligo):
    with pytest.raises(ValueError, match="counts='normalized'"):
        mgf.pp.rank_tokenize(oligo)
    _assert_untouched(oligo)
    with pytest.warns(UserWarning, match="non-integer"):
        mgf.pp.rank_tokenize(oligo, counts="normalized")
    assert oligo.obsm[KEY].shape[0] == 40 and not oligo.obs[f"{KEY}_empty"].any()


def test_duplicated_var_names(pbmc):
    names = pbmc.var_names.to_numpy().copy()
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about non-unique names
        pbmc.var_names = names
    with pytest.raises(ValueError, match="var_names_make_unique"):
        mgf.pp.rank_tokenize(pbmc)
    _assert_untouched(pbmc)


def test_no_gene_in_vocabulary(pbmc):
    a = pbmc[:, :50].copy()
    a.var_names = [f"ENSG{i:011d}" for i in range(90_000_000_000, 90_000_000_050)]
    with pytest.raises(ValueError, match="None of the 50 genes"):
        mgf.pp.rank_tokenize(a)
    _assert_untouched(a)


def test_wrong_species_for_vocabulary(baron):
    with pytest.raises(ValueError, match="mouse genes, but vocabulary 'geneformer-v1' holds only human"):
        mgf.pp.rank_tokenize(baron, vocab="geneformer-v1")
    _assert_untouched(baron)


def test_mixed_species(pbmc):
    a = _ids_adata(pbmc)[:, :200].copy()
    names = a.var_names.to_numpy().copy()
    names[:3] = ["ENSMUSG00000030963", "ENSMUSG00000057666", "ENSMUSG00000029580"]
    a.var_names = names
    with pytest.raises(ValueError, match="ENSMUSG00000030963"):
        mgf.pp.rank_tokenize(a)
    _assert_untouched(a)


def test_bad_arguments(pbmc):
    with pytest.raises(KeyError, match="gene_id_key"):
        mgf.pp.rank_tokenize(pbmc, gene_id_key="nope")
    with pytest.raises(KeyError, match="layer"):
        mgf.pp.rank_tokenize(pbmc, layer="counts")
    with pytest.raises(ValueError, match="counts must be"):
        mgf.pp.rank_tokenize(pbmc, counts="maybe")
    with pytest.raises(FileNotFoundError):
        mgf.pp.rank_tokenize(pbmc, vocab="no-such-vocab")
    _assert_untouched(pbmc)


def test_no_warnings_on_clean_input(pbmc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")


# -- where the counts are (scanpy's layers["counts"] and .raw) -----------------------------------------------------
def _scanpy_normalised(pbmc):
    """The usual scanpy pipeline: counts kept aside, X normalised and log-transformed."""
    import scanpy as sc

    sc.pp.normalize_total(pbmc)
    sc.pp.log1p(pbmc)
    return pbmc


def test_counts_in_a_layer_are_named_in_the_error_and_read_with_layer(pbmc):
    ref = pbmc[:100].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id")
    a = pbmc[:100].copy()
    a.layers["counts"] = a.X.copy()
    _scanpy_normalised(a)
    with pytest.raises(
        ValueError, match=r"log-normalised.*layers\['counts'\] holds integer counts: pass layer='counts'"
    ):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id")
    assert KEY not in a.obsm  # nothing written, nothing guessed
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", layer="counts")
    np.testing.assert_array_equal(a.obsm[KEY], ref.obsm[KEY])
    assert a.uns[KEY]["params"]["layer"] == "counts" and a.uns[KEY]["params"]["use_raw"] is False


def test_counts_in_raw_are_named_in_the_error_and_read_with_use_raw(pbmc):
    ref = pbmc[:100].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id")
    a = pbmc[:100].copy()
    a.raw = a
    _scanpy_normalised(a)
    a = a[:, : a.n_vars // 2].copy()  # .raw keeps every gene, as after highly-variable-gene selection
    with pytest.raises(ValueError, match=r"adata.raw holds integer counts: pass use_raw=True"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id")
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", use_raw=True)
    np.testing.assert_array_equal(a.obsm[KEY], ref.obsm[KEY])  # all genes of .raw, not the half in X
    assert a.uns[KEY]["params"]["n_genes_total"] == ref.n_vars
    with pytest.raises(ValueError, match="not both"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", use_raw=True, layer="x")
    b = pbmc[:10].copy()
    with pytest.raises(ValueError, match=r"adata\.raw is not set"):
        mgf.pp.rank_tokenize(b, gene_id_key="gene_id", use_raw=True)


def test_two_counts_sources_are_both_named(pbmc):
    a = pbmc[:50].copy()
    a.layers["counts"] = a.X.copy()
    a.raw = a
    _scanpy_normalised(a)
    with pytest.raises(ValueError, match=r"layers\['counts'\] and adata.raw hold integer counts"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id")


def test_zero_cells_are_refused_before_anything_is_written(pbmc, tmp_path):
    empty = pbmc[:0].copy()
    with pytest.raises(ValueError, match="0 cells"):
        mgf.pp.rank_tokenize(empty, gene_id_key="gene_id", store=tmp_path / "e.tokens.zarr")
    assert KEY not in empty.uns and not (tmp_path / "e.tokens.zarr").exists()

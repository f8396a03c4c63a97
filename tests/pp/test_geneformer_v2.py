"""Geneformer V2's tokenization rule, re-stated here from Geneformer's documented behaviour, against rank_tokenize.

The rule (upstream ``TranscriptomeTokenizer(model_version="V2")``, ``collapse_gene_ids=True``):

1. every input name, upper-cased, is looked up in ``ensembl_mapping_dict`` (filtered to values in the token
   dictionary); names it lacks are dropped;
2. the counts of all input genes that map to one ID are summed;
3. ``x = count / n_counts * 10_000 / median`` in float64, ``n_counts`` = the cell's total over all input genes;
4. genes ordered by descending ``x`` (a stable sort over genes in token order, so that exact ties go by token id),
   the first 4,094 kept and wrapped as ``<cls>`` ... ``<eos>``.

The dictionaries are read from Geneformer's own TSV copies in ../shared when present, else from mixgf's packaged
table; nothing of mixgf's mapping code is used.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.genes import Vocabulary

KEY = "mixgf_tokens"
DICTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "geneformer_dicts"
PBMC_FULL = DICTS.parent / "pbmc3k_raw_labeled" / "pbmc3k_raw_labeled.h5ad"
PACKAGED = Path(mgf.genes.__file__).parent / "data" / "geneformer_gc95M_id_map.tsv.gz"


def _read_tsv(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


def _upstream_mapping(vocab: Vocabulary) -> dict[str, str]:
    """ensembl_mapping_dict_gc95M restricted to values in the token dictionary (as upstream filters it)."""
    genes = set(np.asarray(vocab.tokens)[vocab.is_gene])
    if (DICTS / "ensembl_mapping_dict_gc95M.tsv.gz").exists():
        m = _read_tsv(DICTS / "ensembl_mapping_dict_gc95M.tsv.gz")
        pairs = zip(m["key"], m["ensembl_id"])
    else:  # the packaged copy: one row per target with its keys, identities left out
        t = _read_tsv(PACKAGED)
        pairs = [(k, g) for g, keys in zip(t["ensembl_id"], t["keys"]) for k in keys.split("|")]
        pairs += [(g, g) for g in genes]
    return {k: v for k, v in pairs if v in genes}


def v2_rule(X, names, vocab: Vocabulary, mapping: dict[str, str]) -> list[np.ndarray]:
    """Token ids per cell under Geneformer V2's rule (see the module docstring)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    token_of = {t: i for i, t in enumerate(vocab.tokens)}
    target = [mapping.get(str(n).upper()) for n in names]
    cols = [i for i, t in enumerate(target) if t is not None]
    ids = sorted({target[i] for i in cols}, key=token_of.get)
    pos = {g: j for j, g in enumerate(ids)}
    # summing matrix: input column -> collapsed ID
    S = sp.csr_matrix((np.ones(len(cols)), (cols, [pos[target[i]] for i in cols])), shape=(X.shape[1], len(ids)))
    C = (X @ S).tocsr()
    tok = np.array([token_of[g] for g in ids], dtype=np.int64)
    med = vocab.medians[tok]
    cls_id, eos_id = token_of["<cls>"], token_of["<eos>"]
    out = []
    for c in range(C.shape[0]):
        lo, hi = C.indptr[c], C.indptr[c + 1]
        j, v = C.indices[lo:hi], C.data[lo:hi]
        keep = v > 0
        j, v = j[keep], v[keep]
        order_tok = np.argsort(j, kind="stable")  # columns are in token order already; make it explicit
        j, v = j[order_tok], v[order_tok]
        x = v / n_counts[c] * 10_000 / med[j]
        ranked = tok[j][np.argsort(-x, kind="stable")][:4094]
        out.append(np.concatenate([[cls_id], ranked, [eos_id]]))
    return out


def _assert_rule(adata: ad.AnnData, names, vocab: Vocabulary, mapping: dict[str, str]) -> None:
    expected = v2_rule(adata.X, names, vocab, mapping)
    lengths = adata.obs[f"{KEY}_n_tokens"].to_numpy()
    bad = [i for i, e in enumerate(expected) if not np.array_equal(adata.obsm[KEY][i, : lengths[i]], e)]
    assert not bad, f"{len(bad)} of {adata.n_obs} cells differ from the V2 rule, e.g. {adata.obs_names[bad[:5]]}"


@pytest.fixture(scope="module")
def v2() -> Vocabulary:
    return Vocabulary.load("geneformer-v2")


@pytest.fixture(scope="module")
def mapping(v2) -> dict[str, str]:
    return _upstream_mapping(v2)


def test_bundled_pbmc_ids_and_symbols(pbmc_full, v2, mapping):
    """All 2,700 bundled PBMCs (the genes ever detected), by hg19 Ensembl ID and by 10x symbol."""
    adata = pbmc_full.copy()
    mgf.pp.rank_tokenize(adata, vocab="geneformer-v2", gene_id_key="gene_id")
    _assert_rule(adata, adata.var["gene_id"], v2, mapping)
    params = adata.uns[KEY]["params"]
    assert params["id_mapping"] == "geneformer" and params["collapse"]
    assert params["n_genes_remapped"] > 100 and params["n_genes_merged"] > 100
    cov = adata.uns[KEY]["coverage"]
    txnip = cov["remapped_genes"].index("ENSG00000117289")  # TXNIP's hg19 ID
    assert cov["remapped_to"][txnip] == "ENSG00000265972"

    sym = ad.AnnData(pbmc_full.X, obs=pd.DataFrame(index=pbmc_full.obs_names))
    sym.var_names = pbmc_full.var["gene_symbol"].astype(str).to_numpy()
    mgf.pp.rank_tokenize(sym, vocab="geneformer-v2")
    _assert_rule(sym, sym.var_names, v2, mapping)
    cov = sym.uns[KEY]["coverage"]
    for old in ("GNB2L1", "H3F3B", "ATP5E", "TMEM66"):  # previous symbols, listed in the report
        assert old in cov["remapped_genes"]


@pytest.mark.skipif(not PBMC_FULL.exists(), reason="needs ../shared/data (pbmc3k_raw_labeled)")
def test_all_pbmc3k_genes_ids_and_symbols(v2, mapping):
    """The 10x file as users have it: 32,738 genes, hg19 IDs in var['gene_id'], symbols as var names."""
    full = ad.read_h5ad(PBMC_FULL)
    assert (DICTS / "ensembl_mapping_dict_gc95M.tsv.gz").exists()
    ids = full.copy()
    mgf.pp.rank_tokenize(ids, vocab="geneformer-v2", gene_id_key="gene_id")
    _assert_rule(ids, full.var["gene_id"], v2, mapping)
    assert ids.uns[KEY]["params"]["n_genes_remapped"] == 327
    sym = full.copy()
    mgf.pp.rank_tokenize(sym, vocab="geneformer-v2")
    _assert_rule(sym, full.var_names, v2, mapping)
    # V1 stays upstream's identity rule on the same IDs: every token is the input ID itself
    v1 = full.copy()
    mgf.pp.rank_tokenize(v1, vocab="geneformer-v1", gene_id_key="gene_id")
    used = np.unique(v1.obsm[KEY][v1.obsm[KEY] > 0])
    vocab1 = Vocabulary.load("geneformer-v1")
    assert set(np.asarray(vocab1.tokens)[used]) <= set(full.var["gene_id"])


def test_two_old_ids_and_a_symbol_collapse_into_one_token(v2):
    """Two retired IDs and a symbol of the same gene become one token whose count is their sum."""
    m = v2.input_id_map
    target = "ENSG00000073969"  # NSF
    olds = ["ENSG00000276262", "ENSG00000278174"]  # two retired (alternate-locus) IDs of NSF
    assert [m[o] for o in olds] == [target, target] and m["NSF"] == target
    names = [*olds, "NSF", "ENSG00000111640", "ENSG00000075624"]  # + GAPDH, ACTB
    counts = np.array([[1, 2, 4, 3, 10], [5, 0, 0, 6, 2], [0, 0, 0, 1, 0]], dtype=np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=names))
    mgf.pp.rank_tokenize(adata, vocab="geneformer-v2")
    merged = adata.obsm[KEY]
    # the same cells with the three columns summed by hand
    summed = ad.AnnData(
        sp.csr_matrix(np.c_[counts[:, :3].sum(1), counts[:, 3:]]), var=pd.DataFrame(index=[target, *names[3:]])
    )
    mgf.pp.rank_tokenize(summed, vocab="geneformer-v2")
    np.testing.assert_array_equal(merged, summed.obsm[KEY])
    nsf = v2.token_ids([target])[0]
    assert (merged == nsf).sum(axis=1).tolist() == [1, 1, 0]
    cov = adata.uns[KEY]["coverage"]
    assert cov["n_genes_merged"] == 3 and cov["n_tokens_merged"] == 1
    assert cov["merged_groups"] == [f"{olds[0]} + {olds[1]} + NSF -> {target}"]
    assert sorted(cov["remapped_genes"]) == olds
    # the same name twice is an input error, not a merge
    twice = ad.AnnData(sp.csr_matrix(counts[:, :2]), var=pd.DataFrame({"gene_id": ["NSF", "NSF"]}, index=["a", "b"]))
    with pytest.raises(ValueError, match="duplicates='sum'"):
        mgf.pp.rank_tokenize(twice, vocab="geneformer-v2", gene_id_key="gene_id")
    with pytest.warns(UserWarning, match="1 of 3 cells express no gene"):
        mgf.pp.rank_tokenize(twice, vocab="geneformer-v2", gene_id_key="gene_id", duplicates="sum")
    assert twice.obsm[KEY][2].tolist() == [v2.id_of("cls"), v2.id_of("eos"), 0]  # an empty V2 cell: <cls>, <eos>
    assert twice.obs[f"{KEY}_empty"].tolist() == [False, False, True]


def test_previous_symbols_for_identity_vocabularies(pbmc):
    """hg19 symbols resolve through unambiguous previous / alias symbols for V1 and mixgf too."""
    sym = pbmc.copy()
    mgf.pp.rank_tokenize(sym, vocab="geneformer-v1")
    cov = sym.uns[KEY]["coverage"]
    got = dict(zip(cov["remapped_genes"], cov["remapped_to"]))
    assert got["GNB2L1"] == "ENSG00000204628"  # RACK1
    assert all(k == "previous/alias symbol" for k in cov["remapped_kinds"])
    assert sym.uns[KEY]["params"]["n_genes_remapped"] == len(got)
    assert "remapped genes" in mgf.pp.coverage_report(sym)
    # an alias never takes a gene that another var names by its current symbol
    both = ad.AnnData(sp.csr_matrix(np.ones((2, 2), dtype=np.float32)), var=pd.DataFrame(index=["GNB2L1", "RACK1"]))
    m = mgf.genes.map_to_ensembl(both.var_names)
    assert m.ensembl_ids.tolist() == [None, "ENSG00000204628"]
    assert m.kind.tolist() == ["alias of another var's gene", "symbol"]

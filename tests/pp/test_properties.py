"""Property tests of rank-value encoding (hypothesis), on real gene IDs and medians."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mixgf as mgf
from mixgf.genes import Vocabulary

KEY = "mixgf_tokens"
V1 = Vocabulary.load("geneformer-v1")
V2 = Vocabulary.load("geneformer-v2")
# 60 real genes of both vocabularies plus 5 genes outside them
GENES = [t for t in V2.tokens[4:] if t in V1][::300][:60]
OUTSIDE = [f"ENSG{i:011d}" for i in range(99_000_000_000, 99_000_000_005)]
ALL = GENES + OUTSIDE

counts = arrays(
    np.int64,
    st.tuples(st.integers(1, 8), st.just(len(ALL))),
    elements=st.integers(0, 50) | st.just(0),
)


def _tokenize(X, genes=ALL, vocab=V1, **kw):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(X, dtype=np.float64)), var=pd.DataFrame(index=genes))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgf.pp.rank_tokenize(a, vocab=vocab, **kw)
    n = a.obs[f"{KEY}_n_tokens"].to_numpy()
    return [a.obsm[KEY][i, : n[i]].tolist() for i in range(a.n_obs)]


@settings(max_examples=40, deadline=None)
@given(counts, st.randoms(use_true_random=False))
def test_gene_order_does_not_matter(X, rnd):
    perm = list(range(len(ALL)))
    rnd.shuffle(perm)
    assert _tokenize(X) == _tokenize(X[:, perm], genes=[ALL[i] for i in perm])


@settings(max_examples=40, deadline=None)
@given(counts, st.integers(2, 9))
def test_scaling_a_cell_does_not_matter(X, k):
    assert _tokenize(X) == _tokenize(X * k)
    assert _tokenize(X, counts="normalized") == _tokenize(X * (k / 7.0), counts="normalized")


@settings(max_examples=40, deadline=None)
@given(counts, st.integers(1, 70))
def test_length_is_min_of_expressed_vocabulary_genes_and_max_len(X, max_len):
    toks = _tokenize(X, max_len=max_len)
    expressed = (X[:, : len(GENES)] > 0).sum(axis=1)
    assert [len(t) for t in toks] == np.minimum(expressed, max_len).tolist()
    special = set(V1.special_ids.tolist())
    assert all(not special.intersection(t) for t in toks)
    assert all(len(set(t)) == len(t) for t in toks)


@settings(max_examples=25, deadline=None)
@given(counts)
def test_v2_specials_only_at_the_ends(X):
    toks = _tokenize(X, vocab=V2)
    cls, eos = V2.id_of("cls"), V2.id_of("eos")
    for t in toks:
        assert t[0] == cls and t[-1] == eos
        assert cls not in t[1:-1] and eos not in t[1:-1]


@settings(max_examples=25, deadline=None)
@given(counts)
def test_deterministic_and_chunking_invariant(X):
    a = _tokenize(X)
    assert a == _tokenize(X)
    assert a == _tokenize(X, chunk_size=1)

"""Plain reference implementations of rank-value encoding, written for the tests (no shared code with mixgf)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def column_tokens(adata, vocab, gene_id_key=None) -> np.ndarray:
    """Token of each var (Ensembl IDs in var_names or var[gene_id_key]), -1 outside the vocabulary."""
    ids = adata.var_names if gene_id_key is None else adata.var[gene_id_key]
    ids = np.asarray([str(x).split(".")[0] for x in ids], dtype=object)
    index = {t: i for i, t in enumerate(vocab.tokens)}
    return np.array([index.get(g, -1) for g in ids], dtype=np.int64)


def reference_tokens(X, col_tok, medians, *, normalization, max_genes, target_sum=10_000.0) -> list[np.ndarray]:
    """Per cell: float64 values, order by (-x, token) with a plain lexsort, keep max_genes tokens."""
    X = sp.csr_matrix(X, dtype=np.float64)
    out = []
    for i in range(X.shape[0]):
        row = X.getrow(i)
        tok = col_tok[row.indices]
        keep = (tok >= 0) & (row.data > 0)
        if normalization == "total_counts":
            total = row.data.sum()
        elif normalization == "vocab_counts":
            total = row.data[tok >= 0].sum()
        x = row.data[keep]
        x = x / total * target_sum / medians[tok[keep]] if normalization != "none" else x / medians[tok[keep]]
        order = np.lexsort((tok[keep], -x))
        out.append(tok[keep][order][:max_genes])
    return out


def geneformer_upstream_tokens(X, col_tok, medians, *, max_genes, n_counts=None) -> list[np.ndarray]:
    """Geneformer's own rule: X / n_counts * 10_000 / median on vocabulary genes, argsort(-x), first max_genes."""
    X = sp.csr_matrix(X, dtype=np.float64)
    if n_counts is None:
        n_counts = np.asarray(X.sum(axis=1)).ravel()
    keep_cols = np.flatnonzero(col_tok >= 0)
    sub = X[:, keep_cols].toarray()
    x_norm = sub / n_counts[:, None] * 10_000 / medians[col_tok[keep_cols]]
    x_norm = sp.csr_matrix(x_norm)
    out = []
    for i in range(x_norm.shape[0]):
        row = x_norm.getrow(i)
        out.append(col_tok[keep_cols][row.indices][np.argsort(-row.data)][:max_genes])
    return out


def unpad(tokens: np.ndarray, lengths: np.ndarray, start: int = 0, end_trim: int = 0) -> list[np.ndarray]:
    return [tokens[i, start : lengths[i] - end_trim] for i in range(len(lengths))]

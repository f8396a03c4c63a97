"""`mixgf.pp.rank_tokenize`: AnnData in, rank-value tokens out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _logging as logg
from .._keys import TOKENS_KEY, tokens_obs_keys
from .._settings import settings
from ..genes import Vocabulary, map_to_ensembl
from ._input import get_matrix, iter_csr_chunks
from ._kernels import check_values, tokenize_csr

if TYPE_CHECKING:
    from anndata import AnnData

    from ..genes import GeneMapping

_LOW_COVERAGE = 0.5
_TOP_UNMAPPED = 20


@dataclass
class _GenePlan:
    """How the data's columns feed the tokenizer: token per column, optional summing of duplicate columns."""

    mapping: GeneMapping
    col2tok: np.ndarray  # token per data column, -1 outside the vocabulary
    sum_matrix: sp.csr_matrix | None  # columns -> aggregated columns when duplicates are summed
    agg_col2tok: np.ndarray | None


def _plan_genes(
    adata: AnnData,
    vocab: Vocabulary,
    *,
    gene_id_key: str | None,
    species: str,
    duplicates: str,
) -> _GenePlan:
    if gene_id_key is None:
        names = adata.var_names
        if not names.is_unique:
            dup = names[names.duplicated()].unique()
            msg = (
                f"adata.var_names has {len(dup)} duplicated names, e.g. {dup[:10].tolist()}. Tokens cannot tell "
                "such genes apart. Make them unique (`adata.var_names_make_unique()`), or point gene_id_key at a "
                "var column of Ensembl IDs."
            )
            raise ValueError(msg)
    else:
        if gene_id_key not in adata.var.columns:
            msg = f"gene_id_key={gene_id_key!r} is not a column of adata.var; columns: {adata.var.columns.tolist()}."
            raise KeyError(msg)
        names = pd.Index(adata.var[gene_id_key].to_numpy(dtype=object))
    gene_tokens = np.asarray(vocab.tokens, dtype=object)[vocab.is_gene]
    mapping = map_to_ensembl(names.to_numpy(dtype=object), species, prefer=gene_tokens)
    if mapping.species not in vocab.species:
        msg = (
            f"The data are {mapping.species} genes, but vocabulary {vocab.name!r} holds only "
            f"{' and '.join(vocab.species)} genes. Use a vocabulary with {mapping.species} genes (the default "
            "'mixgf' vocabulary has both species), or pass species=... if the detection is wrong."
        )
        raise ValueError(msg)
    ids = np.array([x if x is not None else "" for x in mapping.ensembl_ids], dtype=object)
    col2tok = vocab.token_ids(ids)
    col2tok[~vocab.is_gene[np.maximum(col2tok, 0)] | (ids == "")] = -1
    if not (col2tok >= 0).any():
        msg = (
            f"None of the {adata.n_vars:,} genes is in vocabulary {vocab.name!r} ({mapping.species}; "
            f"{mapping.n_mapped:,} have an Ensembl ID). First names: {names[:5].tolist()}. If the var names are not "
            "gene IDs or symbols, pass gene_id_key='<var column with Ensembl IDs>'."
        )
        raise ValueError(msg)
    in_vocab = col2tok[col2tok >= 0]
    dup_tok = np.unique(in_vocab[pd.Series(in_vocab).duplicated().to_numpy()])
    if len(dup_tok) == 0:
        return _GenePlan(mapping, col2tok.astype(np.int64), None, None)
    if duplicates != "sum":
        groups = [names[col2tok == t].tolist() for t in dup_tok[:10]]
        msg = (
            f"{len(dup_tok)} genes appear in more than one var after mapping to Ensembl IDs, e.g. "
            f"{[f'{vocab.tokens[t]}: {g}' for t, g in zip(dup_tok[:10], groups)]}. Pass duplicates='sum' to add "
            "their counts, or remove the extra vars."
        )
        raise ValueError(msg)
    # columns -> one column per in-vocabulary token (summed) + every out-of-vocabulary column unchanged
    uniq = np.unique(in_vocab)
    out_cols = np.flatnonzero(col2tok < 0)
    target = np.empty(adata.n_vars, dtype=np.int64)
    mapped = col2tok >= 0
    target[mapped] = np.searchsorted(uniq, col2tok[mapped])
    target[out_cols] = len(uniq) + np.arange(len(out_cols))
    m = sp.csr_matrix(
        (np.ones(adata.n_vars), (np.arange(adata.n_vars), target)), shape=(adata.n_vars, len(uniq) + len(out_cols))
    )
    agg = np.concatenate([uniq, np.full(len(out_cols), -1, dtype=np.int64)])
    return _GenePlan(mapping, col2tok.astype(np.int64), m, agg)


def _check_block(block: sp.csr_matrix, start: int, adata: AnnData, *, counts: str, what: str) -> int:
    nonfinite, negative, nonint, n_nonint = check_values(block.data, check_integer=True)

    def where(k: int) -> str:
        row = int(np.searchsorted(block.indptr, k, side="right") - 1)
        return f"cell {adata.obs_names[start + row]!r}, gene {adata.var_names[block.indices[k]]!r}"

    if nonfinite >= 0:
        msg = (
            f"{what} holds NaN or infinite values (first at {where(nonfinite)}: {block.data[nonfinite]}). "
            "Rank-value encoding needs finite counts: fix or remove those entries first."
        )
        raise ValueError(msg)
    if negative >= 0:
        msg = (
            f"{what} holds negative values (first at {where(negative)}: {block.data[negative]}), so it is not "
            "counts (scaled or centred data?). Pass layer='…' naming the layer with raw counts."
        )
        raise ValueError(msg)
    if nonint >= 0 and counts == "raw":
        msg = (
            f"{what} holds non-integer values (first at {where(nonint)}: {block.data[nonint]}), so it is not raw "
            "counts (normalized or log-transformed?). Pass layer='…' naming the layer with raw counts, or "
            "counts='normalized' to rank these values anyway."
        )
        raise ValueError(msg)
    return n_nonint


def rank_tokenize(
    adata: AnnData,
    *,
    vocab: str | Vocabulary = "mixgf",
    layer: str | None = None,
    gene_id_key: str | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    max_len: int | None = None,
    counts: Literal["raw", "normalized"] = "raw",
    duplicates: Literal["error", "sum"] = "error",
    chunk_size: int | None = None,
    key_added: str = TOKENS_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Rank-value encode every cell into gene tokens (Geneformer / Mix-Geneformer).

    Per cell, each expressed gene of the vocabulary gets ``x = count / total * target_sum / median`` (the gene's
    non-zero median over the pre-training corpus; ``total`` as the vocabulary's rules say, see
    :class:`mixgf.genes.TokenizerRules`), genes are sorted by descending ``x`` and the first ones kept, up to
    ``max_len`` tokens including the special tokens the rules add. **Ties** (equal float64 ``x``) are broken by
    ascending token id, so the result is deterministic. Cells are read in chunks, so dense, sparse (CSR/CSC),
    backed (``backed="r"``) and dask-backed matrices all work with memory bound by the chunk size plus the output,
    and give identical tokens.

    Parameters
    ----------
    adata
        Cells × genes with raw counts, human or mouse. Var names (or ``gene_id_key``) are Ensembl IDs
        (versions are stripped) or gene symbols.
    vocab
        The vocabulary and its rules: ``"mixgf"`` (default model, human + mouse), ``"geneformer-v1"``,
        ``"geneformer-v2"``, a path, or a :class:`mixgf.genes.Vocabulary`.
    layer
        Layer with the raw counts; `None` uses ``adata.X``.
    gene_id_key
        Column of ``adata.var`` with Ensembl IDs or symbols; `None` uses ``adata.var_names``.
    species
        ``"auto"`` detects it from the genes; a mixture of species is an error.
    max_len
        Longest sequence, special tokens included; `None` uses the vocabulary's rule (2,048 for Mix-Geneformer).
    counts
        ``"raw"`` requires non-negative integers; ``"normalized"`` accepts non-integer values with a warning
        (ranks then reflect that normalization, unlike what the model was trained on).
    duplicates
        What to do when several vars map to one Ensembl gene: ``"error"`` or ``"sum"`` their counts.
    chunk_size
        Cells per chunk; `None` uses :attr:`mixgf.settings.chunk_size`.
    key_added
        Where to store the results (see Returns).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obsm[key_added]`` : `numpy.ndarray` (uint16 while the vocabulary has ≤ 65,536 tokens, else uint32)
        Token ids per cell, padded with the ``<pad>`` id (0) to the longest sequence.
    ``adata.obs[key_added + "_n_tokens"]`` : int
        Sequence length per cell (special tokens included).
    ``adata.obs[key_added + "_empty"]`` : bool
        Cells without a single vocabulary gene expressed; they are kept, with no gene token.
    ``adata.uns[key_added]["params"]`` : dict
        Vocabulary name and sha256, rules, ``max_len``, species, layer, genes mapped / in the vocabulary / total,
        empty cells, mixgf version.
    ``adata.uns[key_added]["coverage"]`` : dict
        Coverage report: genes and counts covered by the vocabulary, why the others are not, top unmapped genes.

    Raises
    ------
    ValueError
        For NaN/inf, negative or (with ``counts="raw"``) non-integer values, duplicated genes, mixed or unknown
        species, or no gene in the vocabulary. Nothing is written to ``adata`` in that case.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> adata.obsm["mixgf_tokens"].shape[0] == adata.n_obs
    True
    """
    from .. import __version__

    t0 = logg.info("rank-value tokenization")
    if counts not in ("raw", "normalized"):
        msg = f"counts must be 'raw' or 'normalized', got {counts!r}."
        raise ValueError(msg)
    if duplicates not in ("error", "sum"):
        msg = f"duplicates must be 'error' or 'sum', got {duplicates!r}."
        raise ValueError(msg)
    vocab = Vocabulary.load(vocab)
    rules = vocab.rules
    max_len = rules.max_len if max_len is None else int(max_len)
    n_special = int(rules.add_cls) + int(rules.add_eos)
    if max_len < n_special + 1:
        msg = f"max_len={max_len} leaves no room for a gene token (the rules add {n_special} special tokens)."
        raise ValueError(msg)
    max_genes = max_len - n_special
    chunk_size = settings.chunk_size if chunk_size is None else int(chunk_size)

    plan = _plan_genes(adata, vocab, gene_id_key=gene_id_key, species=species, duplicates=duplicates)
    X = get_matrix(adata, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    n_obs = adata.n_obs
    pad = vocab.id_of("pad")
    # zero pages come from the OS lazily, so np.zeros is much cheaper than filling (padding id 0 in every preset)
    full = np.zeros((n_obs, max_len), dtype=vocab.dtype) if pad == 0 else np.full((n_obs, max_len), pad, vocab.dtype)
    n_genes = np.zeros(n_obs, dtype=np.int64)
    gene_totals = np.zeros(adata.n_vars, dtype=np.float64)
    cell_total = np.zeros(n_obs, dtype=np.float64)
    cell_vocab = np.zeros(n_obs, dtype=np.float64)
    in_vocab_col = (plan.col2tok >= 0).astype(np.float64)
    n_nonint = 0
    col2tok = plan.agg_col2tok if plan.sum_matrix is not None else plan.col2tok

    from tqdm.auto import tqdm

    with tqdm(total=n_obs, desc="tokenizing", unit="cell", disable=not settings.progress_bar) as bar:
        for start, end, block in iter_csr_chunks(X, chunk_size):
            n_nonint += _check_block(block, start, adata, counts=counts, what=what)
            gene_totals += np.bincount(block.indices, weights=block.data, minlength=adata.n_vars)
            cell_total[start:end] = np.asarray(block.sum(axis=1)).ravel()
            cell_vocab[start:end] = block @ in_vocab_col
            if plan.sum_matrix is not None:
                block = sp.csr_matrix(block @ plan.sum_matrix)
            n_genes[start:end] = tokenize_csr(
                block.indptr,
                block.indices,
                block.data,
                col2tok,
                vocab.medians,
                normalization=rules.normalization,
                target_sum=rules.target_sum,
                max_genes=max_genes,
                out=full[start:end],
                start_col=int(rules.add_cls),
            )
            bar.update(end - start)

    if n_nonint:
        logg.warn(
            f"{what} holds {n_nonint:,} non-integer values; tokens rank them as given (counts='normalized'). "
            "mixgf models were trained on raw counts."
        )
    if rules.add_cls:
        full[:, 0] = vocab.id_of("cls")
    if rules.add_eos:
        full[np.arange(n_obs), n_genes + int(rules.add_cls)] = vocab.id_of("eos")
    lengths = n_genes + n_special
    width = max(int(lengths.max(initial=0)), 1)
    tokens = np.ascontiguousarray(full[:, :width])
    del full

    empty = n_genes == 0
    coverage = _coverage(adata, plan, gene_totals, cell_total, cell_vocab, vocab)
    params = {
        "vocab": vocab.name,
        "vocab_sha256": vocab.sha256,
        "max_len": max_len,
        "normalization": rules.normalization,
        "add_cls": rules.add_cls,
        "add_eos": rules.add_eos,
        "pad_id": pad,
        "species": plan.mapping.species,
        "layer": layer,
        "gene_id_key": gene_id_key,
        "counts": counts,
        "duplicates": duplicates,
        "n_genes_total": int(adata.n_vars),
        "n_genes_mapped": plan.mapping.n_mapped,
        "n_genes_in_vocab": int((plan.col2tok >= 0).sum()),
        "n_cells_empty": int(empty.sum()),
        "tie_break": "token id ascending",
        "mixgf_version": __version__,
    }

    if copy:
        adata = adata.copy()
    elif getattr(adata, "is_view", False):
        logg.warn("received a view of an AnnData; making a copy to store the tokens.")
        adata._init_as_actual(adata.copy())
    n_key, empty_key = tokens_obs_keys(key_added)
    adata.obsm[key_added] = tokens
    adata.obs[n_key] = lengths
    adata.obs[empty_key] = empty
    adata.uns[key_added] = {"params": params, "coverage": coverage}

    if empty.any():
        logg.warn(
            f"{int(empty.sum()):,} of {n_obs:,} cells express no gene of vocabulary {vocab.name!r} (e.g. "
            f"{adata.obs_names[empty][:5].tolist()}); they are kept with no gene token and flagged in "
            f"adata.obs[{empty_key!r}]."
        )
    if coverage["frac_counts_in_vocab"] < _LOW_COVERAGE:
        logg.warn(
            f"only {coverage['frac_counts_in_vocab']:.1%} of the counts fall on vocabulary genes: check the gene "
            "IDs (gene_id_key=...) and the species."
        )
    logg.info(format_coverage(coverage))
    logg.info(
        f"    added {key_added!r} (adata.obsm), {n_key!r}, {empty_key!r} (adata.obs), {key_added!r} (adata.uns)",
        start=t0,
    )
    return adata if copy else None


def _coverage(adata, plan, gene_totals, cell_total, cell_vocab, vocab) -> dict:
    m = plan.mapping
    in_vocab = plan.col2tok >= 0
    reason = np.where(in_vocab, "in vocabulary", np.where(m.kind == "ensembl", "not in vocabulary", ""))
    reason = np.where(
        (reason == "") & (m.kind == "symbol"), "not in vocabulary", np.where(reason == "", "no Ensembl ID", reason)
    )
    reason = np.where(m.kind == "ambiguous", "ambiguous symbol", reason)
    total = float(gene_totals.sum())
    out_idx = np.flatnonzero(~in_vocab & (gene_totals > 0))
    top = out_idx[np.argsort(-gene_totals[out_idx], kind="stable")[:_TOP_UNMAPPED]]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_cell = np.where(cell_total > 0, cell_vocab / cell_total, np.nan)
    counts_by_reason = pd.Series(gene_totals).groupby(reason).sum()
    return {
        "species": m.species,
        "vocab": vocab.name,
        "n_genes": int(adata.n_vars),
        "n_genes_with_ensembl_id": m.n_mapped,
        "n_genes_in_vocab": int(in_vocab.sum()),
        "n_genes_expressed": int((gene_totals > 0).sum()),
        "n_genes_expressed_in_vocab": int(((gene_totals > 0) & in_vocab).sum()),
        "frac_counts_in_vocab": float(gene_totals[in_vocab].sum() / total) if total > 0 else 0.0,
        "median_cell_frac_counts_in_vocab": float(np.nanmedian(frac_cell)) if np.isfinite(frac_cell).any() else 0.0,
        "genes_by_reason": {k: int(v) for k, v in pd.Series(reason).value_counts().items()},
        "counts_by_reason": {k: float(v) for k, v in counts_by_reason.items()},
        "top_unmapped_genes": [str(x) for x in adata.var_names[top]],
        "top_unmapped_counts": [float(x) for x in gene_totals[top]],
        "top_unmapped_reasons": [str(x) for x in reason[top]],
    }


def format_coverage(cov: dict) -> str:
    """Human-readable coverage report of :func:`rank_tokenize` (from ``adata.uns[key]["coverage"]``)."""
    lines = [
        f"coverage of vocabulary {cov['vocab']!r} ({cov['species']} genes):",
        f"    genes: {cov['n_genes']:,} in the data, {cov['n_genes_with_ensembl_id']:,} with an Ensembl ID, "
        f"{cov['n_genes_in_vocab']:,} in the vocabulary",
        f"    expressed genes: {cov['n_genes_expressed']:,}, of which {cov['n_genes_expressed_in_vocab']:,} in the "
        "vocabulary",
        f"    counts on vocabulary genes: {cov['frac_counts_in_vocab']:.1%} overall, "
        f"{cov['median_cell_frac_counts_in_vocab']:.1%} in the median cell",
    ]
    reasons = {k: int(v) for k, v in cov["genes_by_reason"].items() if k != "in vocabulary"}
    if reasons:
        lines.append("    genes left out: " + ", ".join(f"{v:,} {k}" for k, v in reasons.items()))
    if len(cov["top_unmapped_genes"]):
        top = ", ".join(
            f"{g} ({float(c):,.0f}; {r})"
            for g, c, r in zip(
                list(cov["top_unmapped_genes"])[:10],
                list(cov["top_unmapped_counts"])[:10],
                list(cov["top_unmapped_reasons"])[:10],
            )
        )
        lines.append(f"    top left-out genes by counts: {top}")
    return "\n".join(lines)


def coverage_report(adata: AnnData, *, key: str = TOKENS_KEY) -> str:
    """The coverage report that :func:`~mixgf.pp.rank_tokenize` logged, as text.

    Parameters
    ----------
    adata
        AnnData tokenized by :func:`mixgf.pp.rank_tokenize`.
    key
        The ``key_added`` used there.

    Returns
    -------
    str
        The report.
    """
    if key not in adata.uns or "coverage" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] holds no coverage report; run `mgf.pp.rank_tokenize(adata)` first."
        raise KeyError(msg)
    return format_coverage(adata.uns[key]["coverage"])

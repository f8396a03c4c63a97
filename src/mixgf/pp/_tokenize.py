"""`mixgf.pp.rank_tokenize`: AnnData in, rank-value tokens out."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import TOKENS_KEY, tokens_obs_keys
from .._settings import settings
from .._version import __version__
from ..engine._tokenize import tokenize_csr
from ..genes import Vocabulary, map_to_ensembl
from ._input import check_counts_block, counts_advice, describe_source, get_matrix, iter_csr_chunks
from ._store import TokenStoreWriter, check_store_path

if TYPE_CHECKING:
    import os

    from anndata import AnnData

    from ..genes import GeneMapping

_LOW_COVERAGE = 0.5
_TOP_UNMAPPED = 20


@dataclass
class _GenePlan:
    """How the data's columns feed the tokenizer: token per column, optional summing of columns sharing a token."""

    mapping: GeneMapping
    col2tok: np.ndarray  # token per data column, -1 outside the vocabulary
    merged_tokens: np.ndarray | None = None  # tokens that several columns are summed into (the kernel collapses)


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
        names = pd.Index(np.asarray(adata.var[gene_id_key]).astype(object))  # pandas or lazy (xarray) column
    gene_tokens = np.asarray(vocab.tokens, dtype=object)[vocab.is_gene]
    mapping = map_to_ensembl(names.to_numpy(dtype=object), species, prefer=gene_tokens, id_map=vocab.input_id_map)
    if mapping.species not in vocab.species:
        msg = (
            f"The data are {mapping.species} genes, but vocabulary {vocab.name!r} holds only "
            f"{' and '.join(vocab.species)} genes. Use a vocabulary with {mapping.species} genes (the default "
            "'mixgf' vocabulary has both species), or pass species=... if the detection is wrong."
        )
        raise ValueError(msg)
    ids = np.array([x if x is not None else "" for x in mapping.ensembl_ids], dtype=object)
    col2tok = vocab.token_ids(ids)
    col2tok[~vocab.is_gene[np.maximum(col2tok, 0)] | (ids == "") | (mapping.kind == "not in mapping dictionary")] = -1
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
        return _GenePlan(mapping, col2tok.astype(np.int64))
    if vocab.rules.collapse and duplicates != "sum":
        # the rules merge different input genes that map to one ID; the same name twice is still an input error
        same = pd.Series(names[col2tok >= 0]).duplicated(keep=False).to_numpy()
        if same.any():
            twice = pd.unique(names[col2tok >= 0][same])[:10].tolist()
            msg = (
                f"{int(same.sum())} vars share a gene name with another var ({twice}): the same gene appears twice "
                "in the input. Pass duplicates='sum' to add their counts, or remove the extra vars. (Different "
                f"names that vocabulary {vocab.name!r} maps to one gene are merged by its rules.)"
            )
            raise ValueError(msg)
    elif duplicates != "sum":
        groups = [names[col2tok == t].tolist() for t in dup_tok[:10]]
        msg = (
            f"{len(dup_tok)} genes appear in more than one var after mapping to Ensembl IDs, e.g. "
            f"{[f'{vocab.tokens[t]}: {g}' for t, g in zip(dup_tok[:10], groups)]}. Pass duplicates='sum' to add "
            "their counts, or remove the extra vars."
        )
        raise ValueError(msg)
    return _GenePlan(mapping, col2tok.astype(np.int64), dup_tok)


def _add_special(out: np.ndarray, n_genes: np.ndarray, cls_id: int | None, eos_id: int | None) -> None:
    """Write ``<cls>`` before and ``<eos>`` after the gene tokens of each row of ``out`` (in place)."""
    if cls_id is not None:
        out[:, 0] = cls_id
    if eos_id is not None:
        out[np.arange(out.shape[0]), n_genes + int(cls_id is not None)] = eos_id


def rank_tokenize(
    adata: AnnData,
    *,
    vocab: str | Vocabulary = "mixgf",
    layer: str | None = None,
    use_raw: bool = False,
    gene_id_key: str | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    max_len: int | None = None,
    counts: Literal["raw", "normalized"] = "raw",
    duplicates: Literal["error", "sum"] = "error",
    chunk_size: int | None = None,
    key_added: str = TOKENS_KEY,
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Rank-value encode every cell into gene tokens (Geneformer / Mix-Geneformer).

    Per cell, each expressed gene of the vocabulary gets ``x = count / total * target_sum / median`` (the gene's
    non-zero median over the pre-training corpus; ``total`` as the vocabulary's rules say, see
    :class:`mixgf.genes.TokenizerRules`), genes are sorted by descending ``x`` and the first ones kept, up to
    ``max_len`` tokens including the special tokens the rules add. **Ties** (equal float64 ``x``) are broken by
    ascending token id, so the result is deterministic.

    **How genes find their token** is part of the vocabulary's rules (:attr:`mixgf.genes.TokenizerRules.id_mapping`).
    ``"geneformer-v2"`` does what Geneformer V2's tokenizer does: every name (Ensembl ID or symbol, upper-cased) goes
    through Geneformer's Ensembl mapping dictionary to the current Ensembl ID (a retired ID such as TXNIP's hg19
    ``ENSG00000117289`` becomes ``ENSG00000265972``), and the counts of all input genes that land on one ID are
    summed before the totals, the normalisation and the ranking. The other presets take Ensembl IDs as given; for
    every vocabulary, symbols that mixgf's current symbol tables do not know are resolved through previous and
    alias symbols (``GNB2L1`` -> RACK1) where those name exactly one gene. Each remapped and merged gene is listed in
    the coverage report. A V2 cell without any vocabulary gene becomes ``<cls>``, ``<eos>`` and is flagged (upstream
    fails on such a cell). See :doc:`/geneformer` for checking a tokenization against Geneformer's own code.

    Cells are read in chunks of ``chunk_size`` cells, so dense, sparse (CSR/CSC), backed (``backed="r"``) and
    dask-backed matrices all work and give identical tokens: in particular AnnData read with
    :func:`anndata.experimental.read_lazy` (dask ``X``, lazy ``obs``/``var``), whose dask row chunks are computed
    one block at a time, never the whole matrix. By default the tokens go to ``adata.obsm[key_added]``, an
    ``n_obs × max_len`` matrix in memory. For data larger than memory pass ``store="<name>.tokens.zarr"``: the
    tokens are then written chunk by chunk, without padding, into an on-disk token store (zarr; see
    :class:`mixgf.pp.TokenStore`) and no ``n_obs × max_len`` buffer exists, so memory stays bound by a few chunks
    (``chunk_size × max_len`` tokens and the chunk's counts) plus a few numbers per cell and per gene.

    Parameters
    ----------
    adata
        Cells × genes with raw counts, human or mouse. Var names (or ``gene_id_key``) are Ensembl IDs
        (versions are stripped) or gene symbols.
    vocab
        The vocabulary and its rules: ``"mixgf"`` (default model, human + mouse), ``"geneformer-v1"``,
        ``"geneformer-v2"``, a path, or a :class:`mixgf.genes.Vocabulary`.
    layer
        Layer with the raw counts (as in scanpy, e.g. ``"counts"`` after ``adata.layers["counts"] = adata.X.copy()``);
        `None` uses ``adata.X``. When the matrix read is not counts, the error names the layer or ``.raw`` that
        holds integer counts, if exactly one does; nothing is picked on its own.
    use_raw
        Read the counts from ``adata.raw`` (its ``X`` and its var names, which may be more genes than ``adata``
        has); not together with ``layer``.
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
        What to do when several vars map to one Ensembl gene: ``"error"`` or ``"sum"`` their counts. Vocabularies
        whose rules collapse genes (``"geneformer-v2"``) sum different names that map to one gene anyway; the same
        name given twice still needs ``"sum"``.
    chunk_size
        Cells per chunk; `None` uses :attr:`mixgf.settings.chunk_size`.
    key_added
        Where to store the results (see Returns).
    store
        Path of a token store directory (e.g. ``"pbmc.tokens.zarr"``) to write the tokens to instead of
        ``adata.obsm``. Its ``manifest.json`` is written last, so a store that has one is complete; if an error
        stops the tokenization mid-way, the partial store is deleted (a killed process leaves a directory without
        manifest, which :meth:`mixgf.pp.TokenStore.open` reports as an interrupted write). Read it with
        :meth:`mixgf.pp.TokenStore.open`; ``adata.uns[key_added]["store"]`` records its absolute path.
    overwrite
        With ``store``: replace a store (complete or interrupted) already at that path. It is deleted when the
        writing starts, after the input checks. A path that holds anything else is never replaced.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obsm[key_added]`` : `numpy.ndarray` (uint16 while the vocabulary has ≤ 65,536 tokens, else uint32)
        Token ids per cell, padded with the ``<pad>`` id (0) to the longest sequence. Not written with ``store``
        (an earlier ``obsm[key_added]`` is then removed): the tokens are in the store.
    ``adata.obs[key_added + "_n_tokens"]`` : int
        Sequence length per cell (special tokens included).
    ``adata.obs[key_added + "_empty"]`` : bool
        Cells without a single vocabulary gene expressed; they are kept, with no gene token.
    ``adata.uns[key_added]["params"]`` : dict
        Vocabulary name and sha256, rules (including ``id_mapping`` and ``collapse``), ``max_len``, species, layer,
        genes mapped / remapped / merged / in the vocabulary / total, empty cells, mixgf version.
    ``adata.uns[key_added]["coverage"]`` : dict
        Coverage report: genes and counts covered by the vocabulary, why the others are not, top unmapped genes,
        every remapped gene (``remapped_genes`` -> ``remapped_to``, with ``remapped_kinds``) and every group of
        genes summed into one token (``merged_groups``).
    ``adata.uns[key_added]["store"]`` : str
        With ``store``: the absolute path of the token store, whose manifest holds the same ``params`` and
        ``coverage``.

    Raises
    ------
    ValueError
        For NaN/inf, negative or (with ``counts="raw"``) non-integer values, duplicated genes, mixed or unknown
        species, or no gene in the vocabulary. Nothing is written to ``adata`` in that case, and no store is left
        behind.
    FileExistsError
        ``store`` names an existing token store and ``overwrite=False``, or a path that is not a token store.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> adata.obsm["mixgf_tokens"].shape[0] == adata.n_obs
    True

    Tokenize a file larger than memory into a token store, reading it lazily:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> tmp = tempfile.TemporaryDirectory()
    >>> adata.write_h5ad(Path(tmp.name) / "pbmc.h5ad")
    >>> lazy = ad.experimental.read_lazy(Path(tmp.name) / "pbmc.h5ad")
    >>> mgf.pp.rank_tokenize(lazy, gene_id_key="gene_id", store=Path(tmp.name) / "pbmc.tokens.zarr")
    >>> store = mgf.pp.TokenStore.open(lazy.uns["mixgf_tokens"]["store"])
    >>> bool((store.padded()[0] == adata.obsm["mixgf_tokens"]).all())
    True
    >>> tmp.cleanup()
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = (
            f"adata has {adata.n_obs} cells and {adata.n_vars} genes: there is nothing to tokenize. Check the "
            "filtering or subsetting that produced it."
        )
        raise ValueError(msg)
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

    store_path = None if store is None else check_store_path(store, overwrite=overwrite)

    X = get_matrix(adata, layer, use_raw)
    genes_of = adata.raw if use_raw else adata  # .raw has its own var (often more genes)
    plan = _plan_genes(genes_of, vocab, gene_id_key=gene_id_key, species=species, duplicates=duplicates)
    what = describe_source(layer, use_raw)
    if what == "adata.X" and "log1p" in adata.uns:
        what = "adata.X (log-normalised: adata.uns['log1p'] is set)"
    n_vars = genes_of.n_vars
    var_names = pd.Index(genes_of.var_names)
    n_obs = adata.n_obs
    pad = vocab.id_of("pad")
    cls_id = vocab.id_of("cls") if rules.add_cls else None
    eos_id = vocab.id_of("eos") if rules.add_eos else None
    if store_path is None:
        # zero pages come from the OS lazily, so np.zeros is much cheaper than filling (padding id 0 in every preset)
        full = np.zeros((n_obs, max_len), vocab.dtype) if pad == 0 else np.full((n_obs, max_len), pad, vocab.dtype)
        writer = contextlib.nullcontext()
    else:  # tokens go block by block into the store: no n_obs x max_len buffer
        full = None
        writer = TokenStoreWriter(store_path, vocab.dtype, overwrite=overwrite)
    n_genes = np.zeros(n_obs, dtype=np.int64)
    gene_totals = np.zeros(n_vars, dtype=np.float64)
    cell_total = np.zeros(n_obs, dtype=np.float64)
    cell_vocab = np.zeros(n_obs, dtype=np.float64)
    in_vocab_col = (plan.col2tok >= 0).astype(np.float64)
    n_nonint = 0
    col2tok = plan.col2tok

    from tqdm.auto import tqdm

    with (
        writer,
        tqdm(total=n_obs, desc="tokenizing", unit="cell", disable=not settings.progress_bar) as bar,
    ):
        for start, end, block in iter_csr_chunks(X, chunk_size):
            n_nonint += check_counts_block(
                block, start, adata.obs_names, var_names, counts=counts, what=what,
                advice=lambda: counts_advice(adata, layer, use_raw),
            )  # fmt: skip
            gene_totals += np.bincount(block.indices, weights=block.data, minlength=n_vars)
            cell_total[start:end] = np.asarray(block.sum(axis=1)).ravel()
            cell_vocab[start:end] = block @ in_vocab_col
            out = full[start:end] if full is not None else np.full((end - start, max_len), pad, vocab.dtype)
            n_blk = tokenize_csr(
                block.indptr,
                block.indices,
                block.data,
                col2tok,
                vocab.medians,
                normalization=rules.normalization,
                target_sum=rules.target_sum,
                max_genes=max_genes,
                out=out,
                start_col=int(rules.add_cls),
                collapse=plan.merged_tokens is not None,
            )
            n_genes[start:end] = n_blk
            if full is None:
                _add_special(out, n_blk, cls_id, eos_id)
                writer.append_padded(out, n_blk + n_special)
            del block, out
            bar.update(end - start)
        lengths = n_genes + n_special
        empty = n_genes == 0
        coverage = _coverage(genes_of, plan, gene_totals, cell_total, cell_vocab, vocab)
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
            "use_raw": bool(use_raw),
            "gene_id_key": gene_id_key,
            "counts": counts,
            "duplicates": duplicates,
            "n_genes_total": int(n_vars),
            "n_genes_mapped": plan.mapping.n_mapped,
            "n_genes_in_vocab": int((plan.col2tok >= 0).sum()),
            "id_mapping": rules.id_mapping,
            "collapse": rules.collapse,
            "n_genes_remapped": coverage["n_genes_remapped"],
            "n_genes_merged": coverage["n_genes_merged"],
            "n_cells_empty": int(empty.sum()),
            "tie_break": "token id ascending",
            "mixgf_version": __version__,
        }
        if full is None:
            writer.finish(adata.obs_names, params, coverage)

    if n_nonint:
        logg.warn(
            f"{what} holds {n_nonint:,} non-integer values; tokens rank them as given (counts='normalized'). "
            "mixgf models were trained on raw counts."
        )
    tokens = None
    if full is not None:
        _add_special(full, n_genes, cls_id, eos_id)
        width = max(int(lengths.max(initial=0)), 1)
        tokens = np.ascontiguousarray(full[:, :width])
        del full

    if copy:
        adata = adata.copy()
    elif getattr(adata, "is_view", False):
        logg.warn("received a view of an AnnData; making a copy to store the tokens.")
        adata._init_as_actual(adata.copy())
    n_key, empty_key = tokens_obs_keys(key_added)
    if tokens is not None:
        adata.obsm[key_added] = tokens
    elif key_added in adata.obsm:  # tokens from an earlier run would contradict the store
        del adata.obsm[key_added]
        logg.info(f"    removed the earlier tokens in adata.obsm[{key_added!r}]; the tokens are in the store now")
    adata.obs[n_key] = lengths
    adata.obs[empty_key] = empty
    adata.uns[key_added] = {"params": params, "coverage": coverage}
    if store_path is not None:
        adata.uns[key_added]["store"] = str(store_path.resolve())

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
        f"    added {f'token store {str(store_path)!r}' if store_path else f'{key_added!r} (adata.obsm)'}, {n_key!r}, "
        f"{empty_key!r} (adata.obs), {key_added!r} (adata.uns)",
        start=t0,
    )
    return adata if copy else None


def _coverage(adata, plan, gene_totals, cell_total, cell_vocab, vocab) -> dict:
    m = plan.mapping
    in_vocab = plan.col2tok >= 0
    given_id = np.isin(m.kind, ["ensembl", "not in mapping dictionary"])
    reason = np.where(in_vocab, "in vocabulary", np.where(given_id, "not in vocabulary", ""))
    reason = np.where(
        (reason == "") & np.isin(m.kind, ["symbol", "alias", "remapped"]),
        "not in vocabulary",
        np.where(reason == "", "no Ensembl ID", reason),
    )
    reason = np.where(m.kind == "ambiguous", "ambiguous symbol", reason)
    total = float(gene_totals.sum())
    out_idx = np.flatnonzero(~in_vocab & (gene_totals > 0))
    top = out_idx[np.argsort(-gene_totals[out_idx], kind="stable")[:_TOP_UNMAPPED]]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_cell = np.where(cell_total > 0, cell_vocab / cell_total, np.nan)
    alias_kinds = ["alias of another var's gene", "alias shared with another var"]
    reason = np.where(np.isin(m.kind, alias_kinds), m.kind.astype(str), reason)
    counts_by_reason = pd.Series(gene_totals).groupby(reason).sum()
    names = np.asarray(m.names, dtype=object).astype(str)
    remapped = np.flatnonzero(in_vocab & np.isin(m.kind, ["remapped", "alias"]))
    remapped = remapped[np.argsort(-gene_totals[remapped], kind="stable")]
    merged_tok = plan.merged_tokens if plan.merged_tokens is not None else np.zeros(0, dtype=np.int64)
    groups = [np.flatnonzero(plan.col2tok == t) for t in merged_tok]
    groups.sort(key=lambda g: -float(gene_totals[g].sum()))
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
        "n_genes_remapped": len(remapped),
        "remapped_genes": [str(x) for x in names[remapped]],
        "remapped_to": [str(x) for x in m.ensembl_ids[remapped]],
        "remapped_kinds": [
            "retired Ensembl ID" if k == "remapped" else "previous/alias symbol" for k in m.kind[remapped]
        ],
        "n_genes_merged": int(sum(len(g) for g in groups)),
        "n_tokens_merged": len(groups),
        "merged_groups": [" + ".join(names[g]) + f" -> {vocab.tokens[t]}" for g, t in zip(groups, merged_tok)],
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
    if cov.get("n_genes_remapped"):
        pairs = zip(list(cov["remapped_genes"])[:10], list(cov["remapped_to"])[:10], list(cov["remapped_kinds"])[:10])
        ex = ", ".join(f"{g} -> {t} ({k})" for g, t, k in pairs)
        lines.append(f"    remapped genes: {int(cov['n_genes_remapped']):,}, e.g. {ex}")
    if cov.get("n_genes_merged"):
        ex = "; ".join(list(cov["merged_groups"])[:5])
        lines.append(
            f"    merged genes: {int(cov['n_genes_merged']):,} vars summed into {int(cov['n_tokens_merged']):,} tokens, "
            f"e.g. {ex}"
        )
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

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> print(mgf.pp.coverage_report(adata))  # doctest: +ELLIPSIS
    coverage of vocabulary 'mixgf' (human genes):
        genes: 16,634 in the data, 16,634 with an Ensembl ID, 13,237 in the vocabulary
    ...
    """
    if key not in adata.uns or "coverage" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] holds no coverage report; run `mgf.pp.rank_tokenize(adata)` first."
        raise KeyError(msg)
    return format_coverage(adata.uns[key]["coverage"])

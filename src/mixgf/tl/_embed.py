"""`mixgf.tl.embed` and `mixgf.tl.embed_genes`: cell and gene embeddings from a model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import EMBEDDING_KEY, GENES_KEY, TOKENS_KEY
from .._settings import settings
from .._utils._docs import doc_params
from ._utils import (
    check_not_empty,
    get_tokens,
    prepare_target,
    provenance,
    resolve_model,
    split_layer,
    token_source,
    uns_key,
    untrained_present,
    warn_untrained,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from .._models._mixgeneformer import MixGeneformer

DEFAULT_LAYER = -2
"""Hidden-state index used for embeddings: the output of the second-to-last block (Geneformer's default)."""


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", desc="embedding")


@doc_params("doc_model", "doc_tokens_key", "doc_counts", "doc_device", "doc_copy")
def embed(
    adata: AnnData,
    *,
    model: MixGeneformer | str | Path | None = None,
    tokens_key: str = TOKENS_KEY,
    layer: str | None = None,
    use_raw: bool = False,
    hidden_layer: int = DEFAULT_LAYER,
    pooling: Literal["mean", "cls"] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    token_budget: int | None = None,
    distributed: bool | None = None,
    key_added: str = EMBEDDING_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Embed every cell with a Mix-Geneformer / Geneformer model.

    Cells are batched by a token budget (not a cell count) in length order; on CUDA the batch is packed into one
    token stream with variable-length attention in bf16 (pooling in fp32), on CPU it runs fp32 attention over
    length-bucketed batches. A cell's embedding does not depend on the other cells in its batch.

    Tokens written to a token store (``mgf.pp.rank_tokenize(adata, store=...)``) are streamed from disk in blocks
    of cells, so the padded token matrix of all cells is never held in memory.

    **Several GPUs or processes.** Started with ``torchrun --nproc-per-node N script.py``, where the script calls
    ``torch.distributed.init_process_group()`` (backend ``"nccl"`` on GPUs, ``"gloo"`` on CPUs) before
    ``mgf.tl.embed(adata)``, every process (rank) embeds a contiguous, token-balanced share of the cells on its own
    device (``cuda:LOCAL_RANK``), and the shares are gathered so that every rank ends with the same full
    ``obsm[key_added]`` in the original cell order. Each cell is embedded exactly once. Every rank must call
    ``embed`` with the same ``adata`` and arguments.

    Parameters
    ----------
    adata
        Cells tokenized by :func:`mixgf.pp.rank_tokenize` with the model's vocabulary. Missing tokens are computed
        on the fly with the model's vocabulary (and stored under ``tokens_key``).
    {doc_model}
    {doc_tokens_key}
    {doc_counts}
    hidden_layer
        Hidden state to pool: ``0`` = token embeddings, ``i`` = output of block ``i``, ``-1`` = last block,
        ``-2`` = second-to-last block (default; Geneformer's ``emb_layer=-1``). Later blocks are not computed.
        Formerly ``layer=``: an integer ``layer`` still works, with a FutureWarning, until the next release. (Not
        called ``emb_layer``: Geneformer's ``emb_layer`` counts from the second-to-last block, helical's from the
        last, so the same number would mean different layers.)
    pooling
        ``"mean"`` over gene tokens (padding and special tokens excluded; Geneformer's ``emb_mode="cell"``) or
        ``"cls"`` (the ``<cls>`` position; ``emb_mode="cls"``; only for vocabularies whose rules put ``<cls>``
        first). `None` (default) follows upstream: ``"cls"`` for vocabularies with ``<cls>`` (Geneformer V2),
        ``"mean"`` otherwise (Geneformer V1, Mouse-/Mix-Geneformer).
    {doc_device}
    dtype
        Compute dtype; `None` = bf16 on CUDA, fp32 on CPU.
    token_budget
        Tokens per batch; halved automatically when the GPU runs out of memory.
    distributed
        Share the cells between the processes of a :mod:`torch.distributed` process group and gather the
        embeddings on every rank. `None` (default): on when a process group with more than one process is
        initialised (e.g. under ``torchrun``); `False`: every process embeds every cell.
    key_added
        ``obsm`` key of the embedding; the parameters go to ``uns[key_added without "X_"]``.
    {doc_copy}

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.obsm[key_added]`` : `numpy.ndarray` (float32, cells × hidden size)
        Cell embeddings (NaN rows for cells without gene tokens).
    ``adata.uns["mixgf"]["params"]`` : dict
        Model name and weights sha256, vocabulary sha256, hidden layer, pooling, device, dtype, number of processes
        (``world_size``), mixgf version.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> mgf.tl.embed(adata)
    >>> adata.obsm["X_mixgf"].shape
    (200, 128)
    """
    from ..engine._device import rank_device, resolve_dtype
    from ..engine._distributed import all_gather_rows, partition_cells, rank_world, use_distributed
    from ..engine._inference import embed_tokens

    counts_layer, hidden_layer = split_layer(layer, hidden_layer if hidden_layer != DEFAULT_LAYER else None,
                                             default=DEFAULT_LAYER)  # fmt: skip
    check_not_empty(adata, "embed")
    mdl = resolve_model(model)
    rank, world = rank_world() if use_distributed(distributed) else (0, 1)
    dev = rank_device(device)
    if pooling is None:
        pooling = "cls" if mdl.vocab.rules.add_cls else "mean"
    if pooling == "cls" and not mdl.vocab.rules.add_cls:
        msg = f"pooling='cls' needs tokens that start with <cls>; the rules of vocabulary {mdl.vocab.name!r} add none."
        raise ValueError(msg)
    target = prepare_target(adata, copy=copy)
    src = token_source(target, mdl, tokens_key, layer=counts_layer, use_raw=use_raw)
    lengths = src.lengths
    where = "" if world == 1 else f" ({world} processes)"
    t0 = logg.info(f"embedding {target.n_obs:,} cells with model {mdl.name!r} on {dev}{where}")
    hidden = mdl.config.hidden_size
    n_special = int(mdl.vocab.rules.add_cls) + int(mdl.vocab.rules.add_eos)
    has_genes = lengths > n_special
    emb_kw = {
        "layer": hidden_layer,
        "pooling": pooling,
        "special_ids": [int(i) for i in mdl.vocab.special_ids],
        "cls_id": mdl.vocab.id_of("cls") if pooling == "cls" else None,
        "device": dev,
        "dtype": dtype,
        "token_budget": token_budget,
    }
    # this rank's cells: a contiguous range, balanced by tokens (all cells in a single process)
    share = partition_cells(target.n_obs, world, weights=np.where(has_genes, lengths, 0))[rank]
    idx = share[has_genes[share]]
    local = np.empty((idx.shape[0], hidden), dtype=np.float32)
    progress = settings.progress_bar and rank == 0
    untrained: list[np.ndarray] = []
    if idx.size and src.in_memory:
        local[:] = embed_tokens(mdl.encoder, src.tokens[idx], lengths[idx], progress=progress, **emb_kw)
        untrained.append(untrained_present(mdl, src.tokens[idx]))
    elif idx.size:
        # token store: read and embed blocks of consecutive cells, never the whole padded matrix
        step = src.chunk_cells()
        bar = _progress_bar(idx.shape[0], progress)
        done = 0
        for a in range(int(share[0]), int(share[-1]) + 1, step):
            b = min(a + step, int(share[-1]) + 1)
            keep = has_genes[a:b]
            if not keep.any():
                continue
            block = src.block(a, b)[keep]
            k = int(keep.sum())
            local[done : done + k] = embed_tokens(mdl.encoder, block, lengths[a:b][keep], **emb_kw)
            untrained.append(untrained_present(mdl, block))
            done += k
            if bar is not None:
                bar.update(k)
        if bar is not None:
            bar.close()
    if world == 1:  # also under torchrun with distributed=False: this process's cells only, nothing to gather
        out = np.full((target.n_obs, hidden), np.nan, dtype=np.float32)
        out[idx] = local
    else:
        out = all_gather_rows(local, idx, target.n_obs)
    if rank == 0:
        warn_untrained(mdl, np.unique(np.concatenate([np.empty(0, np.int64), *untrained])), tested=False)
    if (~has_genes).any():
        logg.warn(
            f"{int((~has_genes).sum())} cells have no gene token (e.g. {target.obs_names[~has_genes][:5].tolist()}); "
            f"their rows of adata.obsm[{key_added!r}] are NaN."
        )
    target.obsm[key_added] = out
    target.uns[uns_key(key_added)] = {
        "params": provenance(
            mdl,
            tokens_key=tokens_key,
            hidden_layer=hidden_layer,
            pooling=pooling,
            token_budget=token_budget,
            world_size=world,
            device=dev if world == 1 else dev.type,
            dtype=resolve_dtype(dtype, dev),
        )
    }
    logg.info(f"    added {key_added!r} (adata.obsm), {uns_key(key_added)!r} (adata.uns)", start=t0)
    return target if copy else None


@doc_params("doc_model", "doc_tokens_key", "doc_counts", "doc_device", "doc_copy")
def embed_genes(
    adata: AnnData,
    *,
    model: MixGeneformer | str | Path | None = None,
    mode: Literal["contextual", "static"] = "contextual",
    tokens_key: str = TOKENS_KEY,
    layer: str | None = None,
    use_raw: bool = False,
    hidden_layer: int = DEFAULT_LAYER,
    device: str | None = None,
    token_budget: int | None = None,
    key_added: str = GENES_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Gene embeddings: static (the model's input embedding rows) or contextual (mean hidden state over cells).

    Parameters
    ----------
    adata
        Tokenized cells (see :func:`embed`); only needed for ``mode="contextual"`` and to map genes to tokens.
    {doc_model}
    mode
        ``"static"``: the token's row of the input embedding table, the same in every dataset.
        ``"contextual"``: the hidden state of the gene's token at ``hidden_layer``, averaged over every cell of ``adata``
        where the gene is among the cell's tokens.
    {doc_tokens_key}
    {doc_counts}
    hidden_layer
        Hidden state for ``mode="contextual"`` (see :func:`embed`; formerly ``layer=``).
    {doc_device}
    token_budget
        Tokens per batch.
    key_added
        ``varm`` key of the embeddings.
    {doc_copy}

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.varm[key_added]`` : `numpy.ndarray` (float32, genes × hidden size)
        One row per var; NaN for genes outside the vocabulary (and, contextually, for genes in no cell's tokens).
    ``adata.var[key_added + "_n_cells"]`` : int
        For ``mode="contextual"``: in how many cells the gene's token occurs.
    ``adata.uns[key_added]["params"]`` : dict
        Model, mode, hidden layer, …

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.baron_mouse_pancreas()[:100].copy()
    >>> mgf.tl.embed_genes(adata, mode="static")
    >>> adata.varm["mixgf_genes"].shape[0] == adata.n_vars
    True
    """
    import torch

    from ..engine._device import resolve_device
    from ..engine._gene_states import token_state_means
    from ..genes import map_to_ensembl

    if mode not in ("contextual", "static"):
        msg = f"mode must be 'contextual' or 'static', got {mode!r}."
        raise ValueError(msg)
    counts_layer, hidden_layer = split_layer(layer, hidden_layer if hidden_layer != DEFAULT_LAYER else None,
                                             default=DEFAULT_LAYER)  # fmt: skip
    if mode == "contextual":
        check_not_empty(adata, "average gene states over")
    mdl = resolve_model(model)
    dev = resolve_device(device)
    target = prepare_target(adata, copy=copy)
    tparams = target.uns.get(tokens_key, {}).get("params", {})
    gene_id_key = tparams.get("gene_id_key") or None
    names = target.var_names if gene_id_key is None else pd.Index(target.var[gene_id_key].to_numpy(dtype=object))
    gene_tokens = np.asarray(mdl.vocab.tokens, dtype=object)[mdl.vocab.is_gene]
    mapping = map_to_ensembl(names.to_numpy(dtype=object), tparams.get("species", "auto"), prefer=gene_tokens)
    col_tok = mdl.vocab.token_ids(np.array([x or "" for x in mapping.ensembl_ids], dtype=object))
    t0 = logg.info(f"{mode} gene embeddings with model {mdl.name!r}")
    if mode == "static":
        table = mdl.encoder.embeddings.word.weight.detach().to("cpu", dtype=torch.float32)
        table = table.numpy()
        n_cells = None
    else:
        tokens, lengths = get_tokens(target, mdl, tokens_key, layer=counts_layer, use_raw=use_raw)
        table, counts = token_state_means(
            mdl.encoder, tokens, lengths, layer=hidden_layer, device=dev, token_budget=token_budget
        )
        n_cells = np.where(col_tok >= 0, counts[np.maximum(col_tok, 0)], 0)
    out = np.full((target.n_vars, mdl.config.hidden_size), np.nan, dtype=np.float32)
    ok = col_tok >= 0
    out[ok] = table[col_tok[ok]]
    target.varm[key_added] = out
    if n_cells is not None:
        target.var[f"{key_added}_n_cells"] = n_cells
    target.uns[key_added] = {
        "params": provenance(
            mdl, mode=mode, hidden_layer=hidden_layer if mode == "contextual" else "", tokens_key=tokens_key, device=dev
        )
    }
    logg.info(f"    added {key_added!r} (adata.varm) for {int(ok.sum()):,} genes in the vocabulary", start=t0)
    return target if copy else None

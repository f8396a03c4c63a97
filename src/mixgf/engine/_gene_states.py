"""Contextual gene embeddings: each token's hidden state averaged over the cells it occurs in."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..module._encoder import resolve_layer
from ._device import resolve_device
from ._inference import DEFAULT_TOKEN_BUDGET_CPU, DEFAULT_TOKEN_BUDGET_CUDA, make_batches

if TYPE_CHECKING:
    from ..module._encoder import BertEncoderModel


def token_state_means(
    model: BertEncoderModel,
    tokens: np.ndarray,
    lengths: np.ndarray,
    *,
    layer: int = -2,
    device: str | torch.device | None = "cpu",
    token_budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean hidden state of every token id over all its occurrences.

    Parameters
    ----------
    model
        The encoder.
    tokens
        ``[N, L]`` right-padded token ids.
    lengths
        ``[N]`` number of real tokens per cell (cells with 0 tokens are skipped).
    layer
        Hidden-state index (as in :func:`mixgf.model.embed_tokens`).
    device
        Torch device.
    token_budget
        Padded tokens per batch.

    Returns
    -------
    means
        ``[vocab_size, hidden]`` float32, NaN for tokens that never occur.
    counts
        ``[vocab_size]`` number of occurrences.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.model import token_state_means
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:20].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> means, counts = token_state_means(model.encoder, tokens, lengths)
    >>> means.shape, int(counts.sum()) == int(lengths.sum())
    ((29629, 128), True)
    >>> cd74, gapdh_mouse = model.vocab.token_ids(["ENSG00000019582", "ENSMUSG00000057666"])
    >>> int(counts[cd74]), bool(np.isnan(means[gapdh_mouse]).all())  # no mouse gene in human cells
    (5, True)
    """
    dev = resolve_device(device)
    resolve_layer(layer, model.num_layers)
    lengths = np.asarray(lengths, dtype=np.int64)
    budget = token_budget or (DEFAULT_TOKEN_BUDGET_CUDA if dev.type == "cuda" else DEFAULT_TOKEN_BUDGET_CPU)
    v, h = model.config.vocab_size, model.config.hidden_size
    sums = torch.zeros(v, h, dtype=torch.float64, device=dev)
    counts = torch.zeros(v, dtype=torch.float64, device=dev)
    keep = np.flatnonzero(lengths > 0)
    was_training = model.training
    model.to(dev).eval()
    try:
        with torch.inference_mode():
            for b in make_batches(lengths[keep], budget):
                idx = keep[b]
                L = int(lengths[idx].max())
                ids = torch.from_numpy(np.asarray(tokens[idx, :L]).astype(np.int64)).to(dev)
                mask = torch.arange(L, device=dev)[None, :] < torch.from_numpy(lengths[idx]).to(dev)[:, None]
                ids = ids.masked_fill(~mask, model.config.pad_token_id)
                hidden = model(ids, mask, layer).to(torch.float64)
                flat_ids = ids[mask]
                sums.index_add_(0, flat_ids, hidden[mask])
                counts.index_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.float64))
    finally:
        model.train(was_training)
    means = (sums / counts.clamp(min=1)[:, None]).to(torch.float32).cpu().numpy()
    counts_np = counts.cpu().numpy().astype(np.int64)
    means[counts_np == 0] = np.nan
    return means, counts_np

"""Contextual gene embeddings: each token's hidden state averaged over the cells it occurs in."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..module._encoder import resolve_layer
from ._batching import run_batches
from ._device import resolve_device, resolve_dtype
from ._forward import encode, eval_mode, token_batch
from ._inference import DEFAULT_TOKEN_BUDGET_CPU, DEFAULT_TOKEN_BUDGET_CUDA

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
    dtype: str | torch.dtype | None = "float32",
    progress: bool | None = None,
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
        Padded tokens per batch; halved (and the failing batch retried) whenever the device runs out of memory.
    dtype
        Compute dtype (autocast; as in :func:`mixgf.model.embed_tokens`, but float32 unless asked).
    progress
        Show a tqdm progress bar; `None` follows :attr:`mixgf.settings.progress_bar`.

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
    ((37677, 128), True)
    >>> cd74, gapdh_mouse = model.vocab.token_ids(["ENSG00000019582", "ENSMUSG00000057666"])
    >>> int(counts[cd74]), bool(np.isnan(means[gapdh_mouse]).all())  # no mouse gene in human cells
    (5, True)
    """
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, dev)
    resolve_layer(layer, model.num_layers)
    lengths = np.asarray(lengths, dtype=np.int64)
    budget = token_budget or (DEFAULT_TOKEN_BUDGET_CUDA if dev.type == "cuda" else DEFAULT_TOKEN_BUDGET_CPU)
    config = model.config
    sums = torch.zeros(config.vocab_size, config.hidden_size, dtype=torch.float64, device=dev)
    counts = torch.zeros(config.vocab_size, dtype=torch.float64, device=dev)
    keep = np.flatnonzero(lengths > 0)

    def compute(b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = token_batch(
            tokens, lengths, keep[b], packed=False, device=dev, pad_token_id=config.pad_token_id,
            vocab_size=config.vocab_size,
        )  # fmt: skip
        hidden = encode(model, batch, layer=layer, dtype=compute_dtype)
        return batch.ids[batch.mask], hidden[batch.mask].to(torch.float64)

    with eval_mode(model, device=dev):
        for _, (flat_ids, states) in run_batches(
            lengths[keep], budget, compute, device=dev, progress=progress, desc="gene states"
        ):
            sums.index_add_(0, flat_ids, states)
            counts.index_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.float64))
    means = (sums / counts.clamp(min=1)[:, None]).to(torch.float32).cpu().numpy()
    counts_np = counts.cpu().numpy().astype(np.int64)
    means[counts_np == 0] = np.nan
    return means, counts_np

"""Cell embedding: token rows -> one fp32 vector per cell."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..module._encoder import resolve_layer
from ._batching import run_batches
from ._device import resolve_device, resolve_dtype
from ._forward import encode_pooled, eval_mode, token_batch

if TYPE_CHECKING:
    from ..module._encoder import BertEncoderModel, PackedBackend
    from ..module._pooling import Pooling

logger = logging.getLogger("mixgf")

__all__ = [
    "DEFAULT_TOKEN_BUDGET_CPU",
    "DEFAULT_TOKEN_BUDGET_CUDA",
    "embed_tokens",
]

#: Default token budget on CPU (padded tokens per batch). fp32 CPU inference packs every batch internally, so
#: padding costs no compute; 4k-8k tokens keep the activations in cache (V1 on a 2-core AMD EPYC: 33 cells/s at
#: 4,096 or 8,192 tokens, 29 at 16,384).
DEFAULT_TOKEN_BUDGET_CPU = 8_192
#: Default token budget on CUDA (packed or padded tokens per batch).
DEFAULT_TOKEN_BUDGET_CUDA = 65_536


def embed_tokens(
    model: BertEncoderModel,
    tokens: np.ndarray,
    lengths: np.ndarray | Sequence[int],
    *,
    layer: int = -2,
    pooling: Pooling = "mean",
    special_ids: Sequence[int] = (),
    cls_id: int | None = None,
    device: str | torch.device | None = "cpu",
    token_budget: int | None = None,
    dtype: str | torch.dtype | None = None,
    packed: bool | None = None,
    backend: PackedBackend = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Embed tokenised cells into one vector per cell.

    Parameters
    ----------
    model
        The encoder. It is moved to ``device`` (in place) and run in eval mode; its previous
        training flag is restored afterwards. The MLM head is never evaluated.
    tokens
        ``[N, L_max]`` integer token ids (e.g. uint16 or int32), right-padded.
    lengths
        ``[N]`` number of real tokens of every cell (``1 <= length <= L_max``).
    layer
        Hidden-state index to pool (``0`` embeddings, ``i`` block ``i``, ``-1`` last block,
        ``-2`` penultimate block — Geneformer's default). Later blocks are not computed.
    pooling
        ``"mean"`` over gene tokens (padding, ``pad_token_id`` and ``special_ids`` excluded) or
        ``"cls"`` (hidden state of the first token).
    special_ids
        Token ids excluded from mean pooling (``<cls>``, ``<eos>``, ...).
    cls_id
        With ``pooling="cls"``, verify that every cell starts with this id.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``/``None`` (CUDA if available), ...
    token_budget
        Tokens per batch: ``n_cells * max_len`` on the padded path, total tokens on the packed path.
        Defaults to :data:`DEFAULT_TOKEN_BUDGET_CPU` / :data:`DEFAULT_TOKEN_BUDGET_CUDA`. Halved
        (and the failing batch retried) whenever the device runs out of memory.
    dtype
        Compute dtype (autocast); ``None`` = bf16 on capable CUDA devices, fp32 otherwise.
    packed
        Use the packed (unpadded) path. ``None`` chooses it on CUDA devices where the varlen
        flash-attention kernel is available and ``dtype`` is half precision.
    backend
        Attention backend of the packed path (see :meth:`BertEncoderModel.forward_packed`).
    progress
        Show a tqdm progress bar.

    Returns
    -------
    numpy.ndarray
        ``[N, hidden_size]`` float32, rows in the order of ``tokens``. A cell's embedding does not
        depend on which other cells share its batch.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.model import embed_tokens
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:20].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> z = embed_tokens(model.encoder, tokens, lengths, layer=-1, special_ids=model.vocab.special_ids)
    >>> z.shape, z.dtype
    ((20, 128), dtype('float32'))

    Smaller batches give the same embeddings:

    >>> z_small = embed_tokens(
    ...     model.encoder, tokens, lengths, layer=-1, special_ids=model.vocab.special_ids, token_budget=512
    ... )
    >>> bool(np.allclose(z, z_small, atol=1e-5))
    True
    """
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, dev)
    tokens_arr = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if tokens_arr.ndim != 2 or not np.issubdtype(tokens_arr.dtype, np.integer):
        msg = f"tokens must be a 2-D integer array, got shape {tokens_arr.shape} and dtype {tokens_arr.dtype}."
        raise ValueError(msg)
    lengths_arr = np.asarray(lengths)
    if lengths_arr.ndim != 1 or lengths_arr.shape[0] != tokens_arr.shape[0]:
        msg = f"lengths must have shape ({tokens_arr.shape[0]},), got {lengths_arr.shape}."
        raise ValueError(msg)
    if lengths_arr.size and not np.issubdtype(lengths_arr.dtype, np.integer):
        msg = f"lengths must be integers, got dtype {lengths_arr.dtype}."
        raise ValueError(msg)
    lengths_arr = lengths_arr.astype(np.int64)
    n_cells = tokens_arr.shape[0]
    out = np.empty((n_cells, model.config.hidden_size), dtype=np.float32)
    if n_cells == 0:
        return out
    if lengths_arr.min() < 1 or lengths_arr.max() > tokens_arr.shape[1]:
        msg = f"lengths must lie in [1, {tokens_arr.shape[1]}], got [{lengths_arr.min()}, {lengths_arr.max()}]."
        raise ValueError(msg)
    if lengths_arr.max() > model.config.max_position_embeddings:
        msg = (
            f"A cell has {lengths_arr.max()} tokens but the model accepts at most "
            f"{model.config.max_position_embeddings}; truncate the tokens."
        )
        raise ValueError(msg)
    if pooling not in ("mean", "cls"):
        msg = f"Unknown pooling {pooling!r}; use 'mean' or 'cls'."
        raise ValueError(msg)
    resolve_layer(layer, model.num_layers)  # validate before doing any work

    if packed is None:
        packed = (
            dev.type == "cuda"
            and compute_dtype in (torch.bfloat16, torch.float16)
            and model.select_packed_backend(dev, backend) == "varlen"
        )
    budget = (
        int(token_budget)
        if token_budget is not None
        else (DEFAULT_TOKEN_BUDGET_CUDA if dev.type == "cuda" else DEFAULT_TOKEN_BUDGET_CPU)
    )
    if budget < 1:
        msg = f"token_budget must be positive, got {budget}."
        raise ValueError(msg)

    logger.debug(
        "Embedding %d cells on %s (%s, %s path, token budget %d, layer %d, %s pooling).",
        n_cells,
        dev,
        str(compute_dtype).removeprefix("torch."),
        "packed" if packed else "padded",
        budget,
        layer,
        pooling,
    )
    config = model.config

    def compute(idx: np.ndarray) -> np.ndarray:
        batch = token_batch(
            tokens_arr,
            lengths_arr,
            idx,
            packed=packed,
            device=dev,
            pad_token_id=config.pad_token_id,
            vocab_size=config.vocab_size,
        )
        pooled = encode_pooled(
            model,
            batch,
            layer=layer,
            pooling=pooling,
            special_ids=special_ids,
            cls_id=cls_id,
            dtype=compute_dtype,
            backend=backend,
        )
        return pooled.to(device="cpu", dtype=torch.float32).numpy()

    with eval_mode(model, device=dev):
        for idx, pooled in run_batches(lengths_arr, budget, compute, device=dev, packed=packed, progress=progress):
            out[idx] = pooled
    return out

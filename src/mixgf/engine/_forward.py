"""One forward path: token rows -> device batch (padded or packed) -> encoder under autocast -> fp32 pooling.

Embedding (:func:`~mixgf.model.embed_tokens`, hence perturbation), classifier prediction and fine-tuning, and
pre-training all encode their batches with these functions; inference-style callers add the batch loop of
:func:`mixgf.engine._batching.run_batches` (out-of-memory back-off, progress).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..module._pooling import Pooling, pool_packed, pool_padded

if TYPE_CHECKING:
    from torch import nn

    from ..module._encoder import BertEncoderModel, PackedBackend

__all__ = ["TokenBatch", "autocast", "encode", "encode_pooled", "eval_mode", "pool", "rows_batch", "token_batch"]


class TokenBatch(NamedTuple):
    """A batch of token rows on the device: padded ``[B, L]`` with a mask, or packed ``[T]`` with offsets."""

    ids: torch.Tensor  #: ``[B, L]`` (padded, pad id after each row's length) or ``[T]`` (packed) int64 ids
    mask: torch.Tensor | None  #: ``[B, L]`` boolean, True at real tokens (padded batches only)
    cu_seqlens: torch.Tensor | None  #: ``[B + 1]`` int32 offsets (packed batches only)
    positions: torch.Tensor | None  #: ``[T]`` position of every token in its row (packed batches only)
    max_len: int  #: longest row

    @property
    def packed(self) -> bool:
        """Whether the rows are packed back to back."""
        return self.cu_seqlens is not None


def _check_range(ids: np.ndarray, vocab_size: int | None) -> None:
    if vocab_size is None or ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        msg = f"Token ids must lie in [0, {vocab_size}) for this model; found values in [{lo}, {hi}]."
        raise ValueError(msg)


def _packed(flat: np.ndarray, lens: np.ndarray, device: torch.device) -> TokenBatch:
    cu = np.zeros(lens.shape[0] + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    positions = np.arange(flat.shape[0], dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), lens)
    return TokenBatch(
        torch.from_numpy(flat).to(device),
        None,
        torch.from_numpy(cu).to(device),
        torch.from_numpy(positions).to(device),
        int(lens.max()) if lens.size else 0,
    )


def token_batch(
    tokens: np.ndarray,
    lengths: np.ndarray,
    idx: np.ndarray,
    *,
    packed: bool,
    device: torch.device,
    pad_token_id: int = 0,
    vocab_size: int | None = None,
) -> TokenBatch:
    """Rows ``idx`` of right-padded ``tokens`` (``lengths[i]`` real tokens each) as a device batch.

    Whatever follows a row's length is ignored; ``vocab_size`` checks the ids (`None`: no check).
    """
    batch_lengths = np.asarray(lengths[idx], dtype=np.int64)
    max_len = int(batch_lengths.max()) if batch_lengths.size else 0
    ids = np.asarray(tokens[idx, :max_len]).astype(np.int64, copy=True)
    valid = np.arange(max_len)[None, :] < batch_lengths[:, None]
    ids[~valid] = pad_token_id
    _check_range(ids, vocab_size)
    if packed:
        return _packed(ids[valid], batch_lengths, device)
    return TokenBatch(torch.from_numpy(ids).to(device), torch.from_numpy(valid).to(device), None, None, max_len)


def rows_batch(rows: Sequence[np.ndarray], *, device: torch.device, vocab_size: int | None = None) -> TokenBatch:
    """Ragged 1-D token rows as a packed device batch."""
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, dtype=np.int64)
    _check_range(flat, vocab_size)
    return _packed(flat, lens, device)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode(
    model: BertEncoderModel,
    batch: TokenBatch,
    *,
    layer: int | None = -1,
    dtype: torch.dtype = torch.float32,
    backend: PackedBackend = "auto",
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden states ``layer`` of a batch (``[B, L, H]`` padded, ``[T, H]`` packed), under autocast to ``dtype``.

    ``input_ids`` replaces the batch's ids (same shape; e.g. masked ids in pre-training). Dropout is active when
    ``model`` is in training mode.
    """
    ids = batch.ids if input_ids is None else input_ids
    with autocast(ids.device, dtype):
        if batch.packed:
            return model.forward_packed(
                ids, batch.cu_seqlens, batch.max_len, batch.positions, output_layer=layer, backend=backend
            )
        return model(ids, batch.mask, layer)


def pool(
    hidden: torch.Tensor,
    batch: TokenBatch,
    *,
    pooling: Pooling = "mean",
    special_ids: Sequence[int] = (),
    pad_token_id: int | None = 0,
    cls_id: int | None = None,
) -> torch.Tensor:
    """One fp32 vector per row (differentiable): mean over gene tokens of the batch's ids, or the first token."""
    kw = {"special_ids": special_ids, "pad_token_id": pad_token_id, "cls_id": cls_id}
    if batch.packed:
        return pool_packed(hidden, batch.ids, batch.cu_seqlens, pooling, **kw)
    return pool_padded(hidden, batch.ids, batch.mask, pooling, **kw)


def encode_pooled(
    model: BertEncoderModel,
    batch: TokenBatch,
    *,
    layer: int | None = -1,
    pooling: Pooling = "mean",
    special_ids: Sequence[int] = (),
    cls_id: int | None = None,
    dtype: torch.dtype = torch.float32,
    backend: PackedBackend = "auto",
) -> torch.Tensor:
    """``[B, H]`` fp32 cell embeddings of a batch: :func:`encode` then :func:`pool`."""
    hidden = encode(model, batch, layer=layer, dtype=dtype, backend=backend)
    return pool(
        hidden, batch, pooling=pooling, special_ids=special_ids, pad_token_id=model.config.pad_token_id, cls_id=cls_id
    )


@contextlib.contextmanager
def eval_mode(*modules: nn.Module, device: torch.device) -> Iterator[None]:
    """Move ``modules`` to ``device`` and run the block in eval and inference mode; training flags are restored."""
    flags = [m.training for m in modules]
    for m in modules:
        m.to(device)
        m.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)

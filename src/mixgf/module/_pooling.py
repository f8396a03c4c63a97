"""Cell-level pooling of token hidden states (always computed in fp32)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .._utils._docs import doc_params

__all__ = ["Pooling", "gene_token_mask", "pool_packed", "pool_padded"]

#: Pooling methods: mean over gene tokens, or the hidden state of the ``<cls>`` token.
Pooling = Literal["mean", "cls"]


def gene_token_mask(
    input_ids: torch.Tensor,
    valid: torch.Tensor | None,
    special_ids: Sequence[int] = (),
    pad_token_id: int | None = 0,
) -> torch.Tensor:
    """Boolean mask of the tokens that count as genes.

    Parameters
    ----------
    input_ids
        Token ids of any shape.
    valid
        Boolean mask of real (non-padding) positions, same shape, or ``None`` for all.
    special_ids
        Ids to exclude (``<cls>``, ``<eos>``, ...).
    pad_token_id
        Padding id, also excluded; ``None`` to skip.

    Returns
    -------
    torch.Tensor
        Boolean mask, ``True`` at gene tokens.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import gene_token_mask
    >>> ids = torch.tensor([[2, 7, 8, 0], [2, 9, 0, 0]])  # <cls> = 2 first, <pad> = 0 at the end
    >>> gene_token_mask(ids, ids != 0, special_ids=[2]).tolist()
    [[False, True, True, False], [False, True, False, False]]
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.to(torch.bool).clone()
    excluded = [int(i) for i in special_ids]
    if pad_token_id is not None:
        excluded.append(int(pad_token_id))
    if excluded:
        ids = torch.tensor(sorted(set(excluded)), device=input_ids.device, dtype=input_ids.dtype)
        mask &= ~torch.isin(input_ids, ids)
    return mask


def _check_cls(first_tokens: torch.Tensor, cls_id: int | None) -> None:
    if cls_id is not None and bool((first_tokens != cls_id).any()):
        bad = int((first_tokens != cls_id).sum())
        msg = f"pooling='cls' but {bad} sequence(s) do not start with the <cls> token id {cls_id}."
        raise ValueError(msg)


@doc_params("doc_pool_ids")
def pool_padded(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    method: Pooling = "mean",
    *,
    special_ids: Sequence[int] = (),
    pad_token_id: int | None = 0,
    cls_id: int | None = None,
) -> torch.Tensor:
    """Pool a padded batch of hidden states into one vector per sequence.

    Parameters
    ----------
    hidden
        ``[B, L, H]`` hidden states.
    input_ids
        ``[B, L]`` token ids.
    attention_mask
        ``[B, L]`` boolean mask of real tokens (``None`` = no padding).
    method
        ``"mean"``: average over gene tokens (excluding padding, ``pad_token_id`` and ``special_ids``);
        a sequence without any gene token gets a zero vector. ``"cls"``: the hidden state at position 0.
    {doc_pool_ids}

    Returns
    -------
    torch.Tensor
        ``[B, H]`` float32.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import pool_padded
    >>> ids = torch.tensor([[2, 7, 8], [2, 9, 0]])  # <cls> = 2, <pad> = 0
    >>> hidden = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [5.0, 6.0], [9.0, 9.0]]])
    >>> pool_padded(hidden, ids, ids != 0, "mean", special_ids=[2]).tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    >>> pool_padded(hidden, ids, ids != 0, "cls", cls_id=2).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    if method == "cls":
        _check_cls(input_ids[:, 0], cls_id)
        return hidden[:, 0].float()
    if method != "mean":
        msg = f"Unknown pooling {method!r}; use 'mean' or 'cls'."
        raise ValueError(msg)
    weights = gene_token_mask(input_ids, attention_mask, special_ids, pad_token_id).to(torch.float32)
    summed = torch.einsum("bl,blh->bh", weights, hidden.float())
    counts = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return summed / counts


@doc_params("doc_pool_ids")
def pool_packed(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    method: Pooling = "mean",
    *,
    special_ids: Sequence[int] = (),
    pad_token_id: int | None = 0,
    cls_id: int | None = None,
) -> torch.Tensor:
    """Pool packed hidden states into one vector per sequence.

    Parameters
    ----------
    hidden
        ``[T, H]`` hidden states of all sequences concatenated.
    input_ids
        ``[T]`` token ids.
    cu_seqlens
        ``[B + 1]`` cumulative lengths.
    method
        ``"mean"`` or ``"cls"`` (first token of each sequence), as in :func:`pool_padded`.
    {doc_pool_ids}

    Returns
    -------
    torch.Tensor
        ``[B, H]`` float32.

    Examples
    --------
    The two cells of :func:`pool_padded`'s example, packed without padding:

    >>> import torch
    >>> from mixgf.model import pool_packed
    >>> ids = torch.tensor([2, 7, 8, 2, 9])
    >>> hidden = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [5.0, 6.0]])
    >>> pool_packed(hidden, ids, torch.tensor([0, 3, 5]), "mean", special_ids=[2]).tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    """
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.int64)
    n_seq = cu.numel() - 1
    if method == "cls":
        starts = cu[:-1]
        if bool((cu[1:] == starts).any()):
            msg = "pooling='cls' needs every sequence to be non-empty."
            raise ValueError(msg)
        _check_cls(input_ids[starts], cls_id)
        return hidden[starts].float()
    if method != "mean":
        msg = f"Unknown pooling {method!r}; use 'mean' or 'cls'."
        raise ValueError(msg)
    lengths = cu[1:] - cu[:-1]
    max_len = int(lengths.max()) if n_seq else 0
    total = hidden.shape[0]
    segment = torch.repeat_interleave(torch.arange(n_seq, device=hidden.device), lengths, output_size=total)
    position = torch.arange(total, device=hidden.device) - torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    # Scatter into a zero-padded [B, L, H] layout (no duplicate indices, hence deterministic on GPU too)
    # and reduce exactly like the padded path.
    flat = segment * max_len + position
    padded = hidden.new_zeros(n_seq * max_len, hidden.shape[-1], dtype=torch.float32)
    padded[flat] = hidden.float()
    weights = hidden.new_zeros(n_seq * max_len, dtype=torch.float32)
    weights[flat] = gene_token_mask(input_ids, None, special_ids, pad_token_id).to(torch.float32)
    padded = padded.view(n_seq, max_len, -1)
    weights = weights.view(n_seq, max_len)
    summed = torch.einsum("bl,blh->bh", weights, padded)
    return summed / weights.sum(dim=1, keepdim=True).clamp_min(1.0)

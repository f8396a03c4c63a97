"""The encoder's building blocks: embeddings, the post-LayerNorm transformer block and the MLM head."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import _cpu_attention, _cpu_linear, _cpu_linear_add, _use_cpu_fast_path, _varlen_attention
from ._config import EncoderConfig

__all__ = ["Embeddings", "EncoderLayer", "MLMHead"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact erf form, as Hugging Face "gelu"
    "silu": F.silu,
}


class Embeddings(nn.Module):
    """Word + absolute position + token-type-0 embeddings, LayerNorm and dropout.

    Parameters
    ----------
    config
        Model configuration.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Embed tokens.

        Parameters
        ----------
        input_ids
            Token ids of any shape.
        position_ids
            Positions broadcastable to ``input_ids``.

        Returns
        -------
        torch.Tensor
            Embeddings with a trailing hidden dimension.
        """
        # Same summation order as Hugging Face: (word + token_type) + position.
        x = self.word(input_ids) + self.token_type.weight[0]
        x = x + self.position(position_ids)
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer block with fused q/k/v projection.

    Parameters
    ----------
    config
        Model configuration.

    Examples
    --------
    >>> import torch
    >>> import mixgf as mgf
    >>> from mixgf.model import EncoderLayer
    >>> encoder = mgf.MixGeneformer.load().encoder
    >>> block = encoder.layers[0]
    >>> isinstance(block, EncoderLayer), block.num_heads, block.head_dim
    (True, 4, 32)
    >>> with torch.no_grad():
    ...     out = block(torch.randn(2, 5, 128), None)  # [cells, tokens, hidden], no padding
    >>> out.shape
    torch.Size([2, 5, 128])
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attn_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(h, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = _ACTIVATIONS[config.hidden_act]

    def _dropout_p(self) -> float:
        return self.attn_dropout if self.training else 0.0

    def _post_attention(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn_out(context)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the block on a padded batch.

        Parameters
        ----------
        x
            ``[B, L, H]`` hidden states.
        attn_mask
            Boolean ``[B, 1, 1, L]`` key mask (``True`` = attend) or ``None`` for no padding.

        Returns
        -------
        torch.Tensor
            ``[B, L, H]`` output.
        """
        b, length, h = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self._dropout_p())
        ctx = ctx.transpose(1, 2).reshape(b, length, h)
        return self._post_attention(x, ctx)

    def forward_packed(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        bounds: list[int],
        max_seqlen: int,
        backend: Literal["varlen", "sdpa"],
    ) -> torch.Tensor:
        """Run the block on packed sequences.

        Parameters
        ----------
        x
            ``[T, H]`` hidden states of all sequences concatenated.
        cu_seqlens
            ``[B + 1]`` int32 cumulative sequence offsets (on ``x.device``).
        bounds
            ``cu_seqlens`` as a Python list (used by the per-sequence fallback).
        max_seqlen
            Length of the longest sequence.
        backend
            ``"varlen"`` (CUDA flash kernel) or ``"sdpa"`` (per-sequence fallback).

        Returns
        -------
        torch.Tensor
            ``[T, H]`` output.
        """
        t, h = x.shape
        if backend != "varlen" and _use_cpu_fast_path(self, x):
            return self._forward_packed_cpu(x, bounds)
        q, k, v = self.qkv(x).view(t, 3, self.num_heads, self.head_dim).unbind(1)  # each [T, nh, d]
        if backend == "varlen":
            ctx = _varlen_attention(q, k, v, cu_seqlens, max_seqlen)
        else:
            p = self._dropout_p()
            pieces = []
            for start, end in itertools.pairwise(bounds):
                qi, ki, vi = (z[start:end].transpose(0, 1).unsqueeze(0) for z in (q, k, v))  # [1, nh, len, d]
                pieces.append(F.scaled_dot_product_attention(qi, ki, vi, dropout_p=p)[0].transpose(0, 1))
            ctx = torch.cat(pieces, dim=0) if pieces else q.new_zeros(q.shape)
        return self._post_attention(x, ctx.reshape(t, h))

    def _forward_packed_cpu(self, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        """CPU inference on packed sequences, fp32 or bf16 autocast (same function as the generic path, faster)."""
        x = x.contiguous()
        # Fold the softmax scale into the q rows of the projection (exact when head_dim is a power of 4).
        h = x.shape[1]
        scale = self.head_dim**-0.5
        weight = torch.cat([self.qkv.weight[:h] * scale, self.qkv.weight[h:]])
        bias = torch.cat([self.qkv.bias[:h] * scale, self.qkv.bias[h:]])
        qkv = _cpu_linear(x, weight, bias)
        ctx = _cpu_attention(qkv, bounds, self.num_heads, self.head_dim)
        del qkv
        x = self.attn_norm(_cpu_linear_add(ctx, x, self.attn_out.weight, self.attn_out.bias))
        del ctx
        if self.act is F.relu:
            inner = _cpu_linear(x, self.ffn_in.weight, self.ffn_in.bias, relu=True)
        else:
            inner = self.act(_cpu_linear(x, self.ffn_in.weight, self.ffn_in.bias))
        return self.ffn_norm(_cpu_linear_add(inner, x, self.ffn_out.weight, self.ffn_out.bias))


class MLMHead(nn.Module):
    """Masked-language-model head: dense -> activation -> LayerNorm -> decoder + bias.

    The decoder matrix is the word embedding matrix when ``config.tie_word_embeddings`` is true
    (passed at call time, so the weight is stored once), otherwise a parameter of its own.

    Parameters
    ----------
    config
        Model configuration.

    Examples
    --------
    >>> import torch
    >>> import mixgf as mgf
    >>> encoder = mgf.MixGeneformer.load().encoder
    >>> head = encoder.mlm_head  # tied: the decoder is the word embedding matrix
    >>> with torch.no_grad():
    ...     logits = head(torch.randn(3, 128), encoder.embeddings.word.weight)
    >>> logits.shape
    torch.Size([3, 37677])
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder: nn.Parameter | None = None
        if not config.tie_word_embeddings:
            self.decoder = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """Compute vocabulary logits.

        Parameters
        ----------
        hidden
            ``[..., H]`` final hidden states of the positions to score.
        word_embeddings
            ``[V, H]`` word embedding matrix (used when tied).

        Returns
        -------
        torch.Tensor
            ``[..., V]`` logits.
        """
        x = self.norm(self.act(self.dense(hidden)))
        weight = word_embeddings if self.decoder is None else self.decoder
        return F.linear(x, weight, self.bias)

"""Post-LayerNorm BERT encoder numerically equivalent to Hugging Face ``BertModel``.

Two forward paths share the same weights:

* :meth:`BertEncoderModel.forward` takes a right-padded ``[B, L]`` batch and uses
  :func:`torch.nn.functional.scaled_dot_product_attention` with a key mask.
* :meth:`BertEncoderModel.forward_packed` takes the sequences concatenated into one flat
  ``[T]`` tensor delimited by ``cu_seqlens``. On CUDA (bf16/fp16, compute capability >= 8.0)
  it uses :func:`torch.nn.attention.varlen.varlen_attn`; elsewhere it falls back to one SDPA
  call per sequence.

fp32 inference on the CPU (no autograd, eval mode, no autocast) takes a fast path: the padded
batch is packed internally (no compute is spent on padding), attention runs without a mask through
torch's fused kernel, one call per sequence or per run of equal-length sequences, and on x86 the
matrix products use oneDNN (``torch.ops.mkldnn._linear_pointwise``, about twice as fast as MKL's
sgemm on AMD CPUs) with the ReLU and the residual additions fused into them. It computes the same function in fp32 (differences
of the order of 1e-6) and can be switched off with ``MIXGF_CPU_FAST_PATH=0``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import platform
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._config import EncoderConfig

logger = logging.getLogger("mixgf")

__all__ = [
    "BertEncoderModel",
    "EncoderLayer",
    "MLMHead",
    "PackedBackend",
    "describe",
    "packed_position_ids",
    "resolve_layer",
    "varlen_available",
]

#: Attention implementation of the packed path.
PackedBackend = Literal["auto", "varlen", "sdpa"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact erf form, as Hugging Face "gelu"
    "silu": F.silu,
}


def resolve_layer(output_layer: int | None, num_layers: int) -> int:
    """Translate a hidden-states index into the number of blocks to run.

    Parameters
    ----------
    output_layer
        Index into Hugging Face's ``hidden_states`` tuple (length ``num_layers + 1``):
        ``0`` is the embedding output, ``i`` the output of block ``i``; negative values count
        from the end (``-1`` last block, ``-2`` penultimate block). ``None`` means ``-1``.
    num_layers
        Number of transformer blocks of the model.

    Returns
    -------
    int
        Non-negative index in ``[0, num_layers]``.

    Examples
    --------
    >>> from mixgf.model import resolve_layer
    >>> resolve_layer(-1, 4), resolve_layer(-2, 4), resolve_layer(0, 4), resolve_layer(None, 4)
    (4, 3, 0, 4)
    """
    if output_layer is None:
        return num_layers
    if isinstance(output_layer, bool) or not isinstance(output_layer, int):
        msg = f"output_layer must be an int or None, got {output_layer!r}."
        raise TypeError(msg)
    idx = output_layer if output_layer >= 0 else num_layers + 1 + output_layer
    if not 0 <= idx <= num_layers:
        msg = (
            f"output_layer={output_layer} is out of range for a model with {num_layers} blocks "
            f"(valid: {-(num_layers + 1)}..{num_layers})."
        )
        raise ValueError(msg)
    return idx


def varlen_available(device: torch.device | str) -> bool:
    """Whether :func:`torch.nn.attention.varlen.varlen_attn` can run on ``device``.

    Parameters
    ----------
    device
        Target device.

    Returns
    -------
    bool
        ``True`` on CUDA devices with compute capability >= 8.0 when the function is importable.

    Examples
    --------
    >>> from mixgf.model import varlen_available
    >>> varlen_available("cpu")
    False
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


@functools.cache
def _varlen_accepts_num_splits() -> bool:
    from torch.nn.attention.varlen import varlen_attn

    return "num_splits" in inspect.signature(varlen_attn).parameters


def _varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> torch.Tensor:
    """Flash varlen attention over packed ``[T, heads, head_dim]`` tensors (CUDA only)."""
    from torch.nn.attention.varlen import varlen_attn

    out_dtype = q.dtype
    if q.dtype not in (torch.float16, torch.bfloat16):
        # The flash kernel only accepts half precision; the caller's dtype is restored afterwards.
        q, k, v = (z.to(torch.bfloat16) for z in (q, k, v))
    # num_splits=1 disables split-KV, so a sequence's result does not depend on the rest of the batch.
    extra = {"num_splits": 1} if _varlen_accepts_num_splits() else {}
    ctx = varlen_attn(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **extra
    )
    return ctx.to(out_dtype)


# --------------------------------------------------------------------------------------------------
# Fast fp32 CPU inference
# --------------------------------------------------------------------------------------------------


def cpu_fast_path_enabled() -> bool:
    """Whether fp32 CPU inference uses the fast path (set ``MIXGF_CPU_FAST_PATH=0`` to disable it)."""
    return os.environ.get("MIXGF_CPU_FAST_PATH", "1").strip().lower() not in ("0", "false", "no", "off")


def _use_cpu_fast_path(module: nn.Module, x: torch.Tensor) -> bool:
    """fp32 inference on the CPU: no autograd, eval mode, no autocast."""
    return (
        x.device.type == "cpu"
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and cpu_fast_path_enabled()
    )


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) works here (x86 CPUs only).

    MKL's sgemm, which :func:`torch.nn.functional.linear` uses for fp32 on the CPU, takes a slow AVX2
    path on AMD CPUs; oneDNN uses AVX-512 where the CPU has it. A tiny self-check guards against
    builds where the private op is missing or behaves differently.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, other = torch.randn(5, 7, generator=gen), torch.randn(5, 3, generator=gen)
        w, b = torch.randn(3, 7, generator=gen), torch.randn(3, generator=gen)
        want = F.linear(x, w, b)
        checks = (
            (op(x, w, b, "none", [], ""), want),
            (op(x, w, None, "none", [], ""), F.linear(x, w)),
            (op(x, w, b, "relu", [], ""), F.relu(want)),
            (op.binary(x, other, w, b, "add"), want + other),
        )
        return all(got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5) for got, ref in checks)
    except Exception:  # noqa: BLE001 - any failure means "do not use it"
        return False


def _cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """``x @ weight.T + bias`` (then ReLU) for fp32 CPU inference; ``weight`` must be contiguous."""
    if _onednn_linear_available() and x.dtype == weight.dtype == torch.float32:
        # A non-contiguous weight makes oneDNN very slow (not wrong).
        weight = weight if weight.is_contiguous() else weight.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


def _cpu_linear_add(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + bias + residual`` for fp32 CPU inference."""
    if _onednn_linear_available() and x.dtype == weight.dtype == residual.dtype == torch.float32:
        weight = weight if weight.is_contiguous() else weight.contiguous()
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
    return F.linear(x, weight, bias) + residual


def _round_up(n: int, quantum: int) -> int:
    """``n`` rounded up to a multiple of ``quantum``, or of 1/32 of its power of two when that is larger."""
    q = max(quantum, 1 << max(n.bit_length() - 6, 0))
    return -(-n // q) * q


def _cpu_attention(qkv: torch.Tensor, bounds: list[int], num_heads: int, head_dim: int) -> torch.Tensor:
    """Unmasked softmax attention of every packed sequence (fp32 CPU inference).

    Consecutive sequences of equal length (e.g. the perturbed copies of one cell) go through one batched
    ``scaled_dot_product_attention`` call, other sequences one call each: no padding, no mask, and torch's fused
    CPU attention kernel (which measured faster than explicit per-head products on a 2-core AMD EPYC: 87 vs 109 ms
    for 16 cells of ~820 tokens, V1 geometry).

    Parameters
    ----------
    qkv
        ``[T, 3 * H]`` fused projections (q | k | v, heads contiguous within each), with q already
        multiplied by the softmax scale ``head_dim ** -0.5``.
    bounds
        Sequence offsets ``[0, ..., T]``.
    num_heads, head_dim
        Attention geometry.

    Returns
    -------
    torch.Tensor
        ``[T, H]`` attention context.
    """
    h = num_heads * head_dim
    ctx = qkv.new_empty(qkv.shape[0], h)
    ctx[bounds[-1] :].zero_()  # rows after the last sequence (padding of the packed batch), if any
    pairs = list(itertools.pairwise(bounds))
    i_seq = 0
    while i_seq < len(pairs):
        start, end = pairs[i_seq]
        n = end - start
        run = 1
        while i_seq + run < len(pairs) and pairs[i_seq + run][1] - pairs[i_seq + run][0] == n and run * n < 65_536:
            run += 1
        i_seq += run
        if n == 0:
            continue
        stop = start + run * n
        q, k, v = qkv[start:stop].view(run, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # [run, heads, n, d]
        ctx[start:stop] = out.transpose(1, 2).reshape(run * n, h)
    return ctx


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
        """fp32 CPU inference on packed sequences (same function as the generic path, faster kernels)."""
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
    torch.Size([3, 29629])
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


class BertEncoderModel(nn.Module):
    """BERT encoder (Geneformer architecture) with an optional MLM head.

    Parameters
    ----------
    config
        Model configuration; ``config.has_mlm_head`` decides whether the masked-gene head ``mlm_head`` exists
        (`None` otherwise).

    Notes
    -----
    Parameter names are mixgf's own; :func:`mixgf.model.import_hf_bert` maps Hugging Face names onto
    them (q/k/v projections are fused into one ``qkv`` matrix). Outputs match ``transformers``'
    ``BertForMaskedLM`` in fp32 to about 1e-6.

    Examples
    --------
    The padded and the packed path compute the same hidden states:

    >>> import torch
    >>> from mixgf.model import BertEncoderModel, EncoderConfig
    >>> _ = torch.manual_seed(0)
    >>> config = EncoderConfig(
    ...     vocab_size=100,
    ...     hidden_size=32,
    ...     num_hidden_layers=2,
    ...     num_attention_heads=2,
    ...     intermediate_size=64,
    ...     max_position_embeddings=16,
    ... )
    >>> model = BertEncoderModel(config).eval()
    >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])  # two cells, the second padded
    >>> mask = ids != config.pad_token_id
    >>> with torch.no_grad():
    ...     padded = model(ids, mask)  # [2, 4, 32]
    ...     packed = model.forward_packed(ids[mask], torch.tensor([0, 4, 6]), max_seqlen=4)  # [6, 32]
    ...     logits = model.mlm_logits(padded, mask)  # masked-gene logits of the 6 real tokens
    >>> padded.shape, packed.shape, logits.shape
    (torch.Size([2, 4, 32]), torch.Size([6, 32]), torch.Size([6, 100]))
    >>> bool(torch.allclose(padded[mask], packed, atol=1e-5))
    True

    The bundled model's encoder:

    >>> import mixgf as mgf
    >>> encoder = mgf.MixGeneformer.load().encoder
    >>> encoder.num_layers, encoder.hidden_size, encoder.mlm_head is not None
    (4, 128, True)
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.mlm_head: MLMHead | None = MLMHead(config) if config.has_mlm_head else None
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return self.config.hidden_size

    def reset_parameters(self) -> None:
        """Initialise weights like BERT: N(0, initializer_range) matrices, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MLMHead):
                nn.init.zeros_(module.bias)
                if module.decoder is not None:
                    nn.init.normal_(module.decoder, mean=0.0, std=std)

    def _check_positions(self, length: int) -> None:
        if length > self.config.max_position_embeddings:
            msg = (
                f"Sequence length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "truncate the input."
            )
            raise ValueError(msg)

    def _run_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_layer: int | None,
        keep_all: bool,
    ) -> list[torch.Tensor]:
        if input_ids.ndim != 2:
            msg = f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}."
            raise ValueError(msg)
        n_blocks = resolve_layer(output_layer, self.num_layers)
        b, length = input_ids.shape
        self._check_positions(length)
        position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
        mask4d = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                msg = f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}."
                raise ValueError(msg)
            attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
            # A batch without padding needs no mask, which lets SDPA pick its fastest kernel.
            if not bool(attention_mask.all()):
                mask4d = attention_mask.view(b, 1, 1, length)
        if _use_cpu_fast_path(self, input_ids) and self._cpu_weights_ok():
            valid = None if mask4d is None else mask4d.view(b, length)
            return self._run_padded_cpu(input_ids, valid, n_blocks, keep_all)
        x = self.embeddings(input_ids, position_ids)
        states = [x] if keep_all else []
        for layer in self.layers[:n_blocks]:
            x = layer(x, mask4d)
            if keep_all:
                states.append(x)
        return states if keep_all else [x]

    def _cpu_weights_ok(self) -> bool:
        return self.embeddings.word.weight.dtype == torch.float32

    def _run_padded_cpu(
        self, input_ids: torch.Tensor, valid: torch.Tensor | None, n_blocks: int, keep_all: bool
    ) -> list[torch.Tensor]:
        """Padded-path inference on the CPU: pack the real tokens, run the packed blocks, scatter back.

        Padded positions come back as zeros (the generic path leaves meaningless values there).
        """
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(b, length)
        if valid is None:
            flat_ids, flat_pos = input_ids.reshape(-1), positions.reshape(-1)
            bounds = list(range(0, b * length + 1, length)) if length else [0] * (b + 1)
        else:
            flat_ids, flat_pos = input_ids[valid], positions[valid]
            bounds = [0, *itertools.accumulate(int(n) for n in valid.sum(dim=1).tolist())]
        cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
        max_seqlen = max((e - s for s, e in itertools.pairwise(bounds)), default=0)

        def unpack(z: torch.Tensor) -> torch.Tensor:
            if valid is None:
                return z.view(b, length, -1)
            out = z.new_zeros(b, length, z.shape[-1])
            out[valid] = z
            return out

        # Pad the token count with pad tokens that belong to no sequence: fewer distinct matrix shapes, hence fewer
        # oneDNN kernels to create and cache.
        n_tokens = bounds[-1]
        n_rows = _round_up(n_tokens, 128)
        if n_rows > n_tokens:
            flat_ids = torch.cat([flat_ids, flat_ids.new_full((n_rows - n_tokens,), self.config.pad_token_id)])
            flat_pos = torch.cat([flat_pos, flat_pos.new_zeros(n_rows - n_tokens)])
        x = self.embeddings(flat_ids, flat_pos)
        states = [unpack(x[:n_tokens])] if keep_all else []
        for layer in self.layers[:n_blocks]:
            x = layer.forward_packed(x, cu_seqlens, bounds, max_seqlen, "sdpa")
            if keep_all:
                states.append(unpack(x[:n_tokens]))
        return states if keep_all else [unpack(x[:n_tokens])]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_layer: int | None = None,
    ) -> torch.Tensor:
        """Encode a right-padded batch.

        Parameters
        ----------
        input_ids
            ``[B, L]`` int64 token ids.
        attention_mask
            ``[B, L]`` boolean, ``True`` at real tokens. ``None`` means no padding.
        output_layer
            Which hidden state to return, indexed like Hugging Face ``hidden_states``
            (``0`` embeddings, ``i`` block ``i``, ``-1`` last, ``-2`` penultimate). ``None`` = ``-1``.
            Blocks after the requested one are not run.

        Returns
        -------
        torch.Tensor
            ``[B, L, H]`` hidden states (values at padded positions are meaningless).
        """
        return self._run_padded(input_ids, attention_mask, output_layer, keep_all=False)[0]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_layer: int | None = None,
    ) -> list[torch.Tensor]:
        """Return every hidden state up to ``output_layer`` (padded path).

        Parameters
        ----------
        input_ids
            ``[B, L]`` int64 token ids.
        attention_mask
            ``[B, L]`` boolean, ``True`` at real tokens.
        output_layer
            Last hidden state to compute (same indexing as :meth:`forward`).

        Returns
        -------
        list of torch.Tensor
            ``[embeddings, block_1, ..., block_k]``, each ``[B, L, H]``.
        """
        return self._run_padded(input_ids, attention_mask, output_layer, keep_all=True)

    def select_packed_backend(self, device: torch.device | str, backend: PackedBackend = "auto") -> str:
        """Choose the attention implementation of :meth:`forward_packed`.

        Parameters
        ----------
        device
            Device the inputs live on.
        backend
            ``"auto"`` picks ``"varlen"`` where available (CUDA, sm80+, head_dim a multiple of 8
            and at most 256) and ``"sdpa"`` otherwise.

        Returns
        -------
        str
            ``"varlen"`` or ``"sdpa"``.
        """
        head_ok = self.config.head_dim % 8 == 0 and self.config.head_dim <= 256
        if backend == "auto":
            return "varlen" if head_ok and varlen_available(device) else "sdpa"
        if backend == "varlen":
            if not varlen_available(device):
                msg = "backend='varlen' needs a CUDA device with compute capability >= 8.0."
                raise RuntimeError(msg)
            if not head_ok:
                msg = f"backend='varlen' needs head_dim to be a multiple of 8 and <= 256, got {self.config.head_dim}."
                raise RuntimeError(msg)
            return "varlen"
        if backend == "sdpa":
            return "sdpa"
        msg = f"Unknown packed backend {backend!r}; use 'auto', 'varlen' or 'sdpa'."
        raise ValueError(msg)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        position_ids: torch.Tensor | None = None,
        output_layer: int | None = None,
        *,
        backend: PackedBackend = "auto",
    ) -> torch.Tensor:
        """Encode sequences packed back to back without padding.

        Parameters
        ----------
        input_ids
            ``[T]`` int64 token ids of all sequences concatenated.
        cu_seqlens
            ``[B + 1]`` cumulative lengths starting at 0 and ending at ``T``.
        max_seqlen
            Length of the longest sequence.
        position_ids
            ``[T]`` position of every token within its sequence; computed from ``cu_seqlens`` if ``None``.
        output_layer
            Which hidden state to return (same indexing as :meth:`forward`).
        backend
            ``"auto"`` (varlen flash attention on capable CUDA devices, else per-sequence SDPA),
            ``"varlen"`` or ``"sdpa"``.

        Returns
        -------
        torch.Tensor
            ``[T, H]`` hidden states.

        Notes
        -----
        The varlen kernel only runs in fp16/bf16 (q/k/v are cast to bf16 when needed; use
        ``torch.autocast("cuda", dtype=torch.bfloat16)`` for the whole forward) and applies no
        attention-probability dropout, so this path is meant for inference.
        """
        if input_ids.ndim != 1:
            msg = f"input_ids must be flat [T] for the packed path, got shape {tuple(input_ids.shape)}."
            raise ValueError(msg)
        n_blocks = resolve_layer(output_layer, self.num_layers)
        device = input_ids.device
        chosen = self.select_packed_backend(device, backend)
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
        bounds = [int(v) for v in cu_seqlens.tolist()]
        if len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != input_ids.shape[0]:
            msg = f"cu_seqlens must start at 0 and end at T={input_ids.shape[0]}, got {bounds[:1]}...{bounds[-1:]}."
            raise ValueError(msg)
        lengths = [e - s for s, e in itertools.pairwise(bounds)]
        if any(n < 0 for n in lengths):
            msg = "cu_seqlens must be non-decreasing."
            raise ValueError(msg)
        true_max = max(lengths, default=0)
        if int(max_seqlen) < true_max:
            msg = f"max_seqlen={max_seqlen} is smaller than the longest sequence ({true_max})."
            raise ValueError(msg)
        self._check_positions(true_max)
        if position_ids is None:
            position_ids = packed_position_ids(cu_seqlens)
        else:
            position_ids = position_ids.to(device)
            if position_ids.shape != input_ids.shape:
                msg = f"position_ids shape {tuple(position_ids.shape)} != input_ids shape {tuple(input_ids.shape)}."
                raise ValueError(msg)
        x = self.embeddings(input_ids, position_ids)
        for layer in self.layers[:n_blocks]:
            x = layer.forward_packed(x, cu_seqlens, bounds, int(max_seqlen), chosen)
        return x

    def mlm_logits(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the MLM head, optionally only at selected positions.

        Parameters
        ----------
        hidden
            Final-layer hidden states, ``[B, L, H]`` or packed ``[T, H]``.
        positions
            Either a boolean mask with the shape of ``hidden[..., 0]`` or an integer index tensor
            into the flattened tokens. ``None`` scores every position.

        Returns
        -------
        torch.Tensor
            ``[K, V]`` logits for the ``K`` selected positions, or ``[..., V]`` when ``positions`` is ``None``.
        """
        if self.mlm_head is None:
            msg = "This model has no MLM head (config.has_mlm_head is False)."
            raise RuntimeError(msg)
        if positions is not None:
            if positions.dtype == torch.bool:
                hidden = hidden[positions]
            else:
                hidden = hidden.reshape(-1, hidden.shape[-1])[positions.to(hidden.device)]
        return self.mlm_head(hidden, self.embeddings.word.weight)


def packed_position_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Positions ``0..len_i-1`` of every token of a packed batch.

    Parameters
    ----------
    cu_seqlens
        ``[B + 1]`` cumulative lengths.

    Returns
    -------
    torch.Tensor
        ``[T]`` int64 positions on ``cu_seqlens.device``.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import packed_position_ids
    >>> packed_position_ids(torch.tensor([0, 3, 5])).tolist()  # sequences of 3 and 2 tokens
    [0, 1, 2, 0, 1]
    """
    cu = cu_seqlens.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    total = int(cu[-1]) if cu.numel() else 0
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu.device) - starts


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: BertEncoderModel) -> str:
    """One-line human-readable summary of a model.

    Parameters
    ----------
    model
        The model.

    Returns
    -------
    str
        Summary such as ``"BertEncoderModel(6 layers, hidden 256, 4 heads, 10.3M params, MLM head)"``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> from mixgf.model import describe
    >>> describe(mgf.MixGeneformer.load().encoder)
    'BertEncoderModel(4 layers, hidden 128, 4 heads, 4.50M params, MLM head)'
    """
    c = model.config
    head = "MLM head" if model.mlm_head is not None else "no MLM head"
    millions = _num_params(model) / 1e6
    return (
        f"BertEncoderModel({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} heads, {millions:.2f}M params, {head})"
    )

"""Post-LayerNorm BERT encoder numerically equivalent to Hugging Face ``BertModel``.

Two forward paths share the same weights:

* :meth:`BertEncoderModel.forward` takes a right-padded ``[B, L]`` batch and uses
  :func:`torch.nn.functional.scaled_dot_product_attention` with a key mask.
* :meth:`BertEncoderModel.forward_packed` takes the sequences concatenated into one flat
  ``[T]`` tensor delimited by ``cu_seqlens``. On CUDA (bf16/fp16, compute capability >= 8.0)
  it uses :func:`torch.nn.attention.varlen.varlen_attn`; elsewhere it falls back to one SDPA
  call per sequence.

Inference on the CPU (no autograd, eval mode, fp32 or bf16 autocast) takes a fast path: the padded
batch is packed internally (no compute is spent on padding), attention runs without a mask through
torch's fused kernel, one call per sequence or per run of equal-length sequences, and on x86 the
matrix products use oneDNN (``torch.ops.mkldnn._linear_pointwise``, about twice as fast as MKL's
sgemm on AMD CPUs) with the ReLU and the residual additions fused into them (in fp32; under bf16 autocast the
products run in bf16 through autocast). It computes the same function (in fp32, differences of the order of 1e-6)
and can be switched off with :attr:`mixgf.settings.cpu_fast_path`
(default: the environment variable ``MIXGF_CPU_FAST_PATH``). The kernels live in ``_attention``, the blocks in
``_layers``.
"""

from __future__ import annotations

import itertools
import logging
from typing import Literal

import torch
from torch import nn

from ._attention import _round_up, _use_cpu_fast_path, varlen_available
from ._config import EncoderConfig
from ._layers import Embeddings, EncoderLayer, MLMHead

logger = logging.getLogger("mixgf")

__all__ = [
    "BertEncoderModel",
    "PackedBackend",
    "describe",
    "packed_position_ids",
    "resolve_layer",
]

#: Attention implementation of the packed path.
PackedBackend = Literal["auto", "varlen", "sdpa"]


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
    'BertEncoderModel(4 layers, hidden 128, 4 heads, 5.54M params, MLM head)'
    """
    c = model.config
    head = "MLM head" if model.mlm_head is not None else "no MLM head"
    millions = _num_params(model) / 1e6
    return (
        f"BertEncoderModel({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} heads, {millions:.2f}M params, {head})"
    )

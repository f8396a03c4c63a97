"""Attention kernels of the encoder: varlen flash attention (CUDA) and the fast CPU inference path.

Inference on the CPU (no autograd, eval mode, no autocast or bf16 autocast, :attr:`mixgf.settings.cpu_fast_path`
on) packs the padded batch (no compute is spent on padding) and runs attention without a mask through torch's fused
kernel, one call per sequence or per run of equal-length sequences. In fp32 it computes the matrix products on x86
with oneDNN (``torch.ops.mkldnn._linear_pointwise``, about twice as fast as MKL's sgemm on AMD CPUs) with the ReLU
and the residual additions fused into them, and computes the same function (differences of the order of 1e-6).
Under bf16 autocast the matrix products and attention run in bf16 through autocast (oneDNN's bf16 kernels, fp32
accumulation), the residual stream and LayerNorm stay fp32.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import platform

import torch
import torch.nn.functional as F
from torch import nn

from .._settings import settings

__all__ = ["varlen_available"]


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


def _cpu_autocast_bf16() -> bool:
    """Whether CPU autocast to bf16 is on."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _use_cpu_fast_path(module: nn.Module, x: torch.Tensor) -> bool:
    """Inference on the CPU: no autograd, eval mode, fp32 or bf16 autocast, :attr:`mixgf.settings.cpu_fast_path`."""
    return (
        x.device.type == "cpu"
        and not module.training
        and not torch.is_grad_enabled()
        and (not torch.is_autocast_enabled("cpu") or _cpu_autocast_bf16())
        and settings.cpu_fast_path
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
    """``x @ weight.T + bias`` (then ReLU) for CPU inference (under bf16 autocast: a bf16 product)."""
    if _onednn_linear_available() and x.dtype == weight.dtype == torch.float32 and not _cpu_autocast_bf16():
        # A non-contiguous weight makes oneDNN very slow (not wrong).
        weight = weight if weight.is_contiguous() else weight.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


def _cpu_linear_add(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + bias + residual`` for CPU inference (under bf16 autocast: a bf16 product, fp32 sum)."""
    fp32 = x.dtype == weight.dtype == residual.dtype == torch.float32
    if _onednn_linear_available() and fp32 and not _cpu_autocast_bf16():
        weight = weight if weight.is_contiguous() else weight.contiguous()
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
    return F.linear(x, weight, bias) + residual


def _round_up(n: int, quantum: int) -> int:
    """``n`` rounded up to a multiple of ``quantum``, or of 1/32 of its power of two when that is larger."""
    q = max(quantum, 1 << max(n.bit_length() - 6, 0))
    return -(-n // q) * q


def _cpu_attention(qkv: torch.Tensor, bounds: list[int], num_heads: int, head_dim: int) -> torch.Tensor:
    """Unmasked softmax attention of every packed sequence (CPU inference, fp32 or bf16).

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

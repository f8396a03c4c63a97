"""Where and in which precision model work runs: the one device and dtype resolver of mixgf."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .._settings import settings

__all__ = ["cpu_supports_bf16", "rank_device", "resolve_device", "resolve_dtype"]

#: ``/proc/cpuinfo`` flags of native bf16 matrix arithmetic: AVX512-BF16 dot products and AMX tiles.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (first processor); empty where the file does not exist."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _torch_cpu_bf16() -> bool:
    """What torch's cpuinfo says: AVX512-BF16 or AMX tiles (private helpers; False where they are missing)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    for check in checks:
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private helper that fails means "not detected"
            continue
    return False


def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), so that bf16 pays off there.

    bf16 runs on every CPU, but without these instructions torch converts to fp32 and back and bf16 is slower than
    fp32. Read from torch's CPU feature detection and from the ``flags`` of ``/proc/cpuinfo`` (either suffices).
    ``torch.backends.cpu.get_cpu_capability()`` alone cannot tell: it says ``"AVX512"`` with or without bf16.

    Returns
    -------
    bool
        ``True`` on CPUs with AVX512-BF16 or AMX (e.g. Intel Cooper Lake and Sapphire Rapids or later, AMD Zen 4
        or later), ``False`` elsewhere (AVX2-only CPUs, Arm).

    Examples
    --------
    >>> from mixgf.model import cpu_supports_bf16
    >>> isinstance(cpu_supports_bf16(), bool)
    True
    """
    return _torch_cpu_bf16() or any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)


def _local_cuda_index() -> int:
    count = torch.cuda.device_count()
    local = os.environ.get("LOCAL_RANK")
    if local is not None and count:
        return int(local) % count
    return torch.cuda.current_device()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user device specification into the :class:`torch.device` this process computes on.

    Every mixgf function that runs a model resolves its device here.

    Parameters
    ----------
    device
        ``None`` takes :attr:`mixgf.settings.device`. ``"auto"`` selects CUDA when
        available and the CPU otherwise (MPS is never selected automatically). Under ``torchrun`` (``LOCAL_RANK``
        set) ``"auto"`` and a plain ``"cuda"`` become ``cuda:LOCAL_RANK`` (modulo the number of visible GPUs), so
        every process gets its own GPU; an explicit index (``"cuda:1"``) or ``"cpu"`` is kept.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    RuntimeError
        If CUDA or MPS is requested but not available.

    Examples
    --------
    >>> from mixgf.model import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cuda", "cpu")  # CUDA when available
    True
    """
    if device is None:
        device = settings.device
    if isinstance(device, str) and device.lower() == "auto":
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"Device {str(dev)!r} was requested but CUDA is not available in this torch build/machine."
        raise RuntimeError(msg)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        msg = "Device 'mps' was requested but MPS is not available."
        raise RuntimeError(msg)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", _local_cuda_index())
    return dev


def rank_device(device: str | torch.device | None = None) -> torch.device:
    """The device this process computes on (the same as :func:`resolve_device`).

    Parameters
    ----------
    device
        As in :func:`resolve_device`.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> from mixgf.model import rank_device
    >>> rank_device("cpu")
    device(type='cpu')
    """
    return resolve_device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype for inference.

    Parameters
    ----------
    dtype
        ``None`` or ``"auto"`` picks bf16 autocast on CUDA devices that support it and on CPUs with native bf16
        matrix arithmetic (AVX512-BF16 or AMX, see :func:`cpu_supports_bf16`), and fp32 otherwise. Under bf16 the
        encoder's matrix products and attention run in bf16 (fp32 accumulation inside the kernels), LayerNorm,
        the residual stream and pooling in fp32. Strings such as ``"bf16"``, ``"float16"``, ``"fp32"`` or a
        :class:`torch.dtype` are accepted; an explicit dtype is always used as given (bf16 runs on every CPU,
        slowly where the CPU has no native bf16).
    device
        Target device.

    Returns
    -------
    torch.dtype
        One of float32, bfloat16, float16.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import resolve_dtype
    >>> resolve_dtype("float32", torch.device("cpu"))
    torch.float32
    >>> from mixgf.model import cpu_supports_bf16
    >>> resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    True
    >>> resolve_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            msg = f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}."
            raise ValueError(msg)
        return _DTYPE_NAMES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        msg = f"dtype must be float32, bfloat16 or float16, got {dtype}."
        raise ValueError(msg)
    return dtype

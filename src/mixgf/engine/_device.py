"""Where and in which precision model work runs: the one device and dtype resolver of mixgf."""

from __future__ import annotations

import os

import torch

from .._settings import settings

__all__ = ["rank_device", "resolve_device", "resolve_dtype"]

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
        ``None`` or ``"auto"`` picks bf16 autocast on CUDA devices that support it and fp32 otherwise;
        strings such as ``"bf16"``, ``"float16"``, ``"fp32"`` or a :class:`torch.dtype` are accepted.
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
    >>> resolve_dtype(None, torch.device("cpu"))
    torch.float32
    >>> resolve_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
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

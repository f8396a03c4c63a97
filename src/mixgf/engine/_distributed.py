"""Multi-process inference helpers (``torchrun``): share out cells, gather results back in cell order.

Pure torch / numpy. Every helper also works in a single process (``torch.distributed`` not initialised): rank 0 of a
world of 1 owns every cell and gathering is a copy. Under ``torchrun --nproc-per-node N`` with
``torch.distributed.init_process_group()`` each process (rank) takes a contiguous share of the cells, balanced by
tokens, and :func:`all_gather_rows` puts every rank's rows back at their original positions on every rank. The
collectives use CPU tensors with the gloo backend and the rank's CUDA device with NCCL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ._device import _local_cuda_index

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "all_gather_rows",
    "all_reduce_scalar",
    "is_distributed",
    "partition_cells",
    "rank_world",
    "use_distributed",
]

#: Bytes each rank contributes to one round of :func:`all_gather_rows` (bounds the transient buffers).
GATHER_BLOCK_BYTES = 64 << 20


def is_distributed() -> bool:
    """Whether :mod:`torch.distributed` is available and a process group is initialised.

    Examples
    --------
    >>> from mixgf.model import is_distributed
    >>> is_distributed()  # a plain Python process, not started by torchrun
    False
    """
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when :mod:`torch.distributed` is not initialised.

    Examples
    --------
    >>> from mixgf.model import rank_world
    >>> rank_world()
    (0, 1)
    """
    if not is_distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def use_distributed(distributed: bool | None) -> bool:
    """Resolve a ``distributed=`` argument.

    Parameters
    ----------
    distributed
        `None`: on when a process group with more than one process is initialised. `True`: requires an
        initialised process group. `False`: off (every process computes everything on its own).

    Returns
    -------
    bool
        Whether to share the work between the processes of the group.

    Raises
    ------
    RuntimeError
        ``distributed=True`` without an initialised process group.

    Examples
    --------
    >>> from mixgf.model import use_distributed
    >>> use_distributed(None)  # no process group: every process works alone
    False
    """
    if distributed is None:
        return rank_world()[1] > 1
    if distributed and not is_distributed():
        msg = (
            "distributed=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group() in the script and start it with "
            "`torchrun --nproc-per-node N script.py`."
        )
        raise RuntimeError(msg)
    return bool(distributed)


def partition_cells(
    n_cells: int,
    world: int,
    *,
    weights: np.ndarray | Sequence[float] | None = None,
) -> list[np.ndarray]:
    """Split the cells ``range(n_cells)`` into ``world`` contiguous shares.

    Every index occurs in exactly one share, in increasing order (no tail is dropped); the split depends only on
    the arguments, so every rank computes the same one.

    Parameters
    ----------
    n_cells
        Number of cells.
    world
        Number of shares (processes).
    weights
        Optional ``[n_cells]`` non-negative cost of each cell (e.g. its number of tokens). `None`: shares differ by
        at most one cell. Otherwise the share boundaries are put where the cumulative cost is closest to
        ``k / world`` of the total, so shares differ in cost by about one cell's cost at most.

    Returns
    -------
    list of numpy.ndarray
        ``world`` int64 index arrays (some empty when ``n_cells < world``).

    Examples
    --------
    >>> from mixgf.model import partition_cells
    >>> [p.tolist() for p in partition_cells(7, 3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    >>> [p.tolist() for p in partition_cells(5, 2, weights=[400, 100, 100, 100, 100])]  # balanced by tokens
    [[0], [1, 2, 3, 4]]
    """
    n_cells, world = int(n_cells), int(world)
    if world < 1:
        msg = f"world must be >= 1, got {world}."
        raise ValueError(msg)
    if n_cells < 0:
        msg = f"n_cells must be >= 0, got {n_cells}."
        raise ValueError(msg)
    bounds = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != n_cells:
            msg = f"weights must have one entry per cell ({n_cells}), got {w.shape[0]}."
            raise ValueError(msg)
        if (w < 0).any() or not np.isfinite(w).all():
            msg = "weights must be finite and non-negative."
            raise ValueError(msg)
        total = float(w.sum())
        if total > 0:
            cum = np.concatenate([[0.0], np.cumsum(w)])  # cum[b] = cost of cells [0, b)
            targets = total * np.arange(1, world) / world
            right = np.searchsorted(cum, targets, side="left").clip(1, n_cells)  # first b with cum[b] >= target
            left = right - 1
            pick = np.where(np.abs(cum[left] - targets) <= np.abs(cum[right] - targets), left, right)
            bounds = np.concatenate([[0], np.maximum.accumulate(pick), [n_cells]]).astype(np.int64)
    if bounds is None:
        base, extra = divmod(n_cells, world)
        sizes = np.full(world, base, dtype=np.int64)
        sizes[:extra] += 1
        bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[k], bounds[k + 1], dtype=np.int64) for k in range(world)]


def _comm_device() -> torch.device:
    """Device of the tensors handed to collectives: the rank's GPU for a NCCL-only group, else the CPU."""
    backend = str(torch.distributed.get_backend()).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", _local_cuda_index())
    return torch.device("cpu")


def _gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t)
    return out


def all_reduce_scalar(value: float, op: Literal["sum", "max", "min"] = "sum") -> float:
    """Reduce one number over the process group (returned on every rank); the value itself in a single process.

    Examples
    --------
    >>> from mixgf.model import all_reduce_scalar
    >>> all_reduce_scalar(3.0, "max")
    3.0
    """
    if rank_world()[1] == 1:
        return value
    ops = {
        "sum": torch.distributed.ReduceOp.SUM,
        "max": torch.distributed.ReduceOp.MAX,
        "min": torch.distributed.ReduceOp.MIN,
    }
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t, op=ops[op])
    return float(t.item())


def all_gather_rows(
    local: np.ndarray,
    index: np.ndarray | Sequence[int],
    n_total: int,
    *,
    fill: float = np.nan,
) -> np.ndarray:
    """Gather every rank's rows into one ``[n_total, ...]`` array, each row at its original position, on every rank.

    Ranks may hold different numbers of rows (including none). Rows are exchanged in blocks of about
    ``GATHER_BLOCK_BYTES`` (64 MiB) per rank, so the transient buffers stay bounded whatever ``n_total``.

    Parameters
    ----------
    local
        ``[k, ...]`` this rank's rows (numeric dtype; the same dtype and trailing shape on every rank).
    index
        ``[k]`` positions of these rows in the full array.
    n_total
        Rows of the full array.
    fill
        Value of rows no rank provided.

    Returns
    -------
    numpy.ndarray
        ``[n_total, ...]`` with ``local``'s dtype, identical on every rank.

    Raises
    ------
    ValueError
        Mismatched shapes, an index outside ``[0, n_total)``, or a position provided by more than one row.

    Examples
    --------
    In a single process the rows are put in place; under ``torchrun`` every rank passes its own rows and positions
    and receives the same full array.

    >>> import numpy as np
    >>> from mixgf.model import all_gather_rows
    >>> all_gather_rows(np.array([[1.0], [2.0]]), [2, 0], 3)
    array([[ 2.],
           [nan],
           [ 1.]])
    """
    local = np.ascontiguousarray(local)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.shape[0] != local.shape[0]:
        msg = f"index has {index.shape[0]} entries but local has {local.shape[0]} rows."
        raise ValueError(msg)
    rest = local.shape[1:]
    out = np.full((int(n_total), *rest), fill, dtype=local.dtype)
    _, world = rank_world()
    if world == 1:
        _place(out, index, local)
        return out
    dev = _comm_device()
    width = int(np.prod(rest, dtype=np.int64)) if rest else 1
    sizes_t = _gather_tensor(torch.tensor([local.shape[0], width], dtype=torch.int64, device=dev))
    n_rows = [int(t[0]) for t in sizes_t]
    if any(int(t[1]) != width for t in sizes_t):
        msg = f"Ranks hold rows of different sizes ({[int(t[1]) for t in sizes_t]} values per row)."
        raise ValueError(msg)
    longest = max(n_rows)
    if longest == 0:
        return out
    pad_idx = np.full(longest, -1, dtype=np.int64)
    pad_idx[: index.shape[0]] = index
    indices = [t.cpu().numpy() for t in _gather_tensor(torch.from_numpy(pad_idx).to(dev))]
    seen = np.zeros(int(n_total), dtype=bool)
    for r, idx in enumerate(indices):
        idx = idx[: n_rows[r]]
        if idx.size and (idx.min() < 0 or idx.max() >= n_total):
            msg = f"Rank {r} holds row positions outside [0, {n_total})."
            raise ValueError(msg)
        if seen[idx].any() or np.unique(idx).shape[0] != idx.shape[0]:
            msg = f"Row positions are provided more than once (rank {r}); every cell must belong to one rank."
            raise ValueError(msg)
        seen[idx] = True
    flat = local.reshape(local.shape[0], width)
    block = max(1, GATHER_BLOCK_BYTES // max(1, width * local.dtype.itemsize))
    for start in range(0, longest, block):
        k = min(block, longest - start)
        buf = np.zeros((k, width), dtype=local.dtype)
        mine = flat[start : start + k]
        buf[: mine.shape[0]] = mine
        parts = _gather_tensor(torch.from_numpy(buf).to(dev))
        for r, part in enumerate(parts):
            valid = max(0, min(n_rows[r], start + k) - start)
            if valid:
                rows = part[:valid].cpu().numpy().reshape(valid, *rest)
                out[indices[r][start : start + valid]] = rows
    return out


def _place(out: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    if index.size and (index.min() < 0 or index.max() >= out.shape[0]):
        msg = f"Row positions must lie in [0, {out.shape[0]})."
        raise ValueError(msg)
    if np.unique(index).shape[0] != index.shape[0]:
        msg = "Row positions are provided more than once."
        raise ValueError(msg)
    out[index] = rows

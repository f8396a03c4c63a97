"""The one token-budget batcher of mixgf, and the inference batch loop (out-of-memory back-off, progress).

Every model pass over many cells is cut into batches here: embedding and perturbation (:func:`embed_tokens`),
classifier prediction and fine-tuning, pre-training and contextual gene states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from .._settings import settings

logger = logging.getLogger("mixgf")

__all__ = ["make_batches", "run_batches"]

T = TypeVar("T")


def _batch_end(
    lengths: np.ndarray, cum: np.ndarray, start: int, budget: int, packed: bool, max_cells: int | None
) -> int:
    """End (exclusive) of the batch that starts at ``start`` (``lengths`` in batch order, ``cum`` their cumsum)."""
    n = lengths.shape[0]
    if packed:
        base = cum[start - 1] if start > 0 else 0
        end = int(np.searchsorted(cum, base + budget, side="right"))
    else:
        # Padded: cells x longest cell of the batch. At most budget // lengths[start] cells can fit; in
        # descending-length order the first cell is the longest, so exactly that many do.
        limit = budget // max(int(lengths[start]), 1)
        if max_cells is not None:
            limit = min(limit, max_cells)
        seg = np.maximum(lengths[start : start + limit], 1)
        padded = np.maximum.accumulate(seg) * np.arange(1, seg.shape[0] + 1)
        end = start + int(np.searchsorted(padded, budget, side="right"))
    if max_cells is not None:
        end = min(end, start + max_cells)
    return min(max(end, start + 1), n)


def make_batches(
    lengths: np.ndarray | Sequence[int],
    token_budget: int,
    *,
    packed: bool = False,
    max_cells: int | None = None,
    sort: bool = True,
) -> list[np.ndarray]:
    """Group cells into batches that respect a token budget.

    Cells are sorted by decreasing length so that cells of similar length share a batch.

    Parameters
    ----------
    lengths
        ``[N]`` number of tokens of every cell.
    token_budget
        Padded path: ``n_cells * max_length <= token_budget``. Packed path: ``sum(lengths) <= token_budget``.
        A single cell longer than the budget forms a batch of its own.
    packed
        Which of the two budgets to apply.
    max_cells
        At most this many cells per batch (`None`: no cap).
    sort
        Sort the cells by decreasing length first (stable). ``False`` keeps the given order: batches are then
        consecutive runs of cells, for callers that shuffle or group the cells themselves.

    Returns
    -------
    list of numpy.ndarray
        Indices into ``lengths`` of every batch; each cell occurs exactly once.

    Examples
    --------
    >>> from mixgf.model import make_batches
    >>> [b.tolist() for b in make_batches([5, 3, 8, 2], token_budget=16)]  # cells x longest <= 16
    [[2, 0], [1, 3]]
    >>> [b.tolist() for b in make_batches([5, 3, 8, 2], token_budget=10, packed=True)]  # sum of lengths <= 10
    [[2], [0, 1, 3]]
    >>> [b.tolist() for b in make_batches([5, 3, 8, 2], token_budget=10, packed=True, max_cells=2)]
    [[2], [0, 1], [3]]
    >>> [b.tolist() for b in make_batches([5, 3, 8, 2], token_budget=10, packed=True, sort=False)]
    [[0, 1], [2, 3]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    _check_budget(token_budget, max_cells)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(lengths.shape[0])
    ordered = lengths[order]
    cum = np.cumsum(ordered)
    batches = []
    start = 0
    while start < order.shape[0]:
        end = _batch_end(ordered, cum, start, token_budget, packed, max_cells)
        batches.append(order[start:end])
        start = end
    return batches


def _check_budget(token_budget: int, max_cells: int | None) -> None:
    if token_budget < 1:
        msg = f"token_budget must be positive, got {token_budget}."
        raise ValueError(msg)
    if max_cells is not None and max_cells < 1:
        msg = f"max_cells must be positive, got {max_cells}."
        raise ValueError(msg)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


class Progress:
    """Optional tqdm progress bar over cells (tqdm is imported only when shown)."""

    def __init__(self, total: int, enabled: bool | None, desc: str) -> None:
        self._bar = None
        if settings.progress_bar if enabled is None else enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency of mixgf
                logger.info("tqdm is not installed; progress is not shown.")
            else:
                self._bar = tqdm(total=total, unit="cell", desc=desc)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_batches(
    lengths: np.ndarray,
    token_budget: int,
    compute: Callable[[np.ndarray], T],
    *,
    device: torch.device,
    packed: bool = False,
    max_cells: int | None = None,
    progress: bool | None = False,
    desc: str = "embedding",
) -> Iterator[tuple[np.ndarray, T]]:
    """Run ``compute`` over token-budget batches of the cells, longest first; yield ``(cells, result)``.

    The inference loop shared by :func:`~mixgf.model.embed_tokens`, :func:`~mixgf.model.predict_logits` and
    :func:`~mixgf.model.token_state_means`: batches as :func:`make_batches` cuts them, and when the device runs out
    of memory the token budget is halved and the same batch retried (a single cell that does not fit raises).
    ``compute`` must not change any state a retry would see twice (results are consumed only when yielded).

    Parameters
    ----------
    lengths
        ``[N]`` tokens per cell.
    token_budget
        Initial token budget (as in :func:`make_batches`).
    compute
        Cells (indices into ``lengths``) -> result.
    device
        Where ``compute`` runs (named in the out-of-memory warning; its cache is emptied before a retry).
    packed, max_cells
        As in :func:`make_batches`.
    progress
        Show a tqdm progress bar over cells; `None` follows :attr:`mixgf.settings.progress_bar`.
    desc
        Label of the progress bar.

    Yields
    ------
    tuple of (numpy.ndarray, object)
        The cells of a batch and ``compute``'s result for them; every cell occurs in exactly one batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    _check_budget(token_budget, max_cells)
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    cum = np.cumsum(ordered)
    n, budget, start = order.shape[0], int(token_budget), 0
    bar = Progress(n, progress, desc)
    try:
        while start < n:
            end = _batch_end(ordered, cum, start, budget, packed, max_cells)
            idx = order[start:end]
            failed = False
            try:
                result = compute(idx)
            except RuntimeError as err:
                if not _is_oom(err) or end - start == 1:
                    raise
                failed = True
            if failed:
                # Retry outside the except block so that the failed batch's tensors can be freed.
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                batch_tokens = int(ordered[start:end].sum()) if packed else (end - start) * int(ordered[start])
                budget //= 2
                if budget >= batch_tokens:  # the failing batch was below budget: make sure it shrinks
                    budget = batch_tokens // 2
                budget = max(budget, 1)
                logger.warning(
                    "Out of memory on %s with a batch of %d cells (%d tokens); retrying with token budget %d.",
                    device,
                    end - start,
                    batch_tokens,
                    budget,
                )
                continue
            yield idx, result
            bar.update(end - start)
            start = end
    finally:
        bar.close()

"""What the pre-training loop reads: tokenized cells in memory or from any row source, read batch by batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._pretrain import PretrainConfig, _Schedule

__all__ = ["ConcatRows", "PaddedRows", "RowSource", "TokenCorpus", "batch_loader"]


@runtime_checkable
class RowSource(Protocol):
    """Where the trainer reads token rows from: per-cell ``lengths`` in memory, rows fetched by position.

    Anything with these two members is a row source: :class:`PaddedRows` (a padded matrix in memory),
    :class:`ConcatRows` (several sources one after the other), or an on-disk token store reader
    (:class:`mixgf.pp.TokenStore` has both). The batch schedule needs only ``lengths``; rows are read batch by
    batch, in a :class:`torch.utils.data.DataLoader` (see :attr:`PretrainConfig.num_workers`), so a corpus larger
    than memory can be trained on. A source is sent to the loader's worker processes, so it must be picklable
    (or the platform must fork).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import PaddedRows, RowSource
    >>> source = PaddedRows(np.array([[5, 6, 0], [7, 0, 0]]), np.array([2, 1]))
    >>> isinstance(source, RowSource)
    True
    >>> [r.tolist() for r in source.rows([1, 0])]
    [[7], [5, 6]]
    """

    lengths: np.ndarray

    def rows(self, idx: np.ndarray) -> Sequence[np.ndarray]:
        """1-D token arrays of the cells ``idx``, in that order (each at least ``lengths[i]`` long)."""
        ...


class PaddedRows:
    """A :class:`RowSource` over right-padded tokens ``[N, L]`` in memory.

    Parameters
    ----------
    tokens
        ``[N, L]`` token ids.
    lengths
        ``[N]`` tokens per cell.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import PaddedRows
    >>> source = PaddedRows(np.array([[5, 6, 0], [7, 0, 0]]), np.array([2, 1]))
    >>> [r.tolist() for r in source.rows([0, 1, 0])]
    [[5, 6], [7], [5, 6]]
    """

    in_memory = True

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.tokens = tokens
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[0] != self.lengths.shape[0]:
            msg = f"tokens must be [N, L] with N = len(lengths) = {self.lengths.shape[0]}, got {tokens.shape}."
            raise ValueError(msg)

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        """Rows ``idx`` without their padding."""
        return [self.tokens[i, : self.lengths[i]] for i in np.asarray(idx, dtype=np.int64)]


class ConcatRows:
    """Several :class:`RowSource` objects one after the other, as one source (e.g. one per dataset).

    Parameters
    ----------
    parts
        The sources; cell ``i`` of part ``k`` is cell ``sum(len(parts[j].lengths) for j < k) + i``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import ConcatRows, PaddedRows
    >>> human = PaddedRows(np.array([[5, 6], [7, 0]]), np.array([2, 1]))
    >>> mouse = PaddedRows(np.array([[9, 8, 4]]), np.array([3]))
    >>> both = ConcatRows([human, mouse])
    >>> both.lengths.tolist(), [r.tolist() for r in both.rows([2, 0])]
    ([2, 1, 3], [[9, 8, 4], [5, 6]])
    """

    def __init__(self, parts: Sequence[RowSource]) -> None:
        self.parts = list(parts)
        sizes = [len(p.lengths) for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.lengths = (
            np.concatenate([np.asarray(p.lengths, dtype=np.int64) for p in self.parts])
            if self.parts
            else np.zeros(0, dtype=np.int64)
        )
        self.in_memory = all(getattr(p, "in_memory", False) for p in self.parts)

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        """Rows ``idx`` (each part is asked once per call)."""
        idx = np.asarray(idx, dtype=np.int64)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out: list[np.ndarray | None] = [None] * len(idx)
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            for j, row in zip(sel, self.parts[k].rows(idx[sel] - self.starts[k]), strict=True):
                out[j] = row
        return out  # type: ignore[return-value]


@dataclass
class TokenCorpus:
    """Tokenized cells as the trainer reads them: in memory, or from any :class:`RowSource` (e.g. on disk).

    Attributes
    ----------
    tokens
        ``[N, L]`` right-padded token ids in memory, or a :class:`RowSource` whose rows are read batch by batch
        (the ``[N, L]`` matrix then never exists).
    lengths
        ``[N]`` tokens per cell.
    species
        ``[N]`` small integer species code per cell (only used to report and to project).
    pad_id, mask_id
        Ids of ``<pad>`` and ``<mask>``.
    special_ids
        Ids that are never masked nor pooled.
    gene_ids
        Ids random replacements are drawn from.
    ortholog_map
        ``[vocab_size]`` id of each token's one-to-one ortholog in the other species, ``-1`` where none
        (needed by the cross-species term only).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import TokenCorpus
    >>> tokens = np.array([[5, 6, 7], [8, 9, 0]], dtype=np.uint16)
    >>> corpus = TokenCorpus(
    ...     tokens,
    ...     lengths=np.array([3, 2]),
    ...     species=np.zeros(2, dtype=np.int8),
    ...     pad_id=0,
    ...     mask_id=1,
    ...     special_ids=np.array([0, 1, 2, 3]),
    ...     gene_ids=np.arange(4, 10),
    ... )
    >>> len(corpus), [r.tolist() for r in corpus.row_source().rows([1])]
    (2, [[8, 9]])
    """

    tokens: np.ndarray | RowSource
    lengths: np.ndarray
    species: np.ndarray
    pad_id: int
    mask_id: int
    special_ids: np.ndarray
    gene_ids: np.ndarray
    ortholog_map: np.ndarray | None = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.lengths)
        if isinstance(self.tokens, np.ndarray):
            if self.tokens.ndim != 2 or self.tokens.shape[0] != n:
                msg = f"tokens must be [N, L] with N = len(lengths) = {n}, got {self.tokens.shape}."
                raise ValueError(msg)
        elif not isinstance(self.tokens, RowSource):
            msg = f"tokens must be an [N, L] array or a row source (lengths + rows(idx)), got {type(self.tokens)}."
            raise TypeError(msg)
        elif not np.array_equal(np.asarray(self.tokens.lengths), np.asarray(self.lengths)):
            msg = "lengths differ from the row source's lengths."
            raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.lengths)

    def row_source(self) -> RowSource:
        """The cells as a :class:`RowSource` (the padded matrix wrapped in :class:`PaddedRows`)."""
        if isinstance(self.tokens, np.ndarray):
            return PaddedRows(self.tokens, self.lengths)
        return self.tokens


class _BatchRows(torch.utils.data.Dataset):
    """Data-loader dataset: ``(step, idx, epoch)`` -> the same with the rows of ``idx``, cut to the step's lengths."""

    def __init__(self, source: RowSource, lengths: np.ndarray) -> None:
        self.source, self.lengths = source, lengths

    def __getitem__(self, item: tuple[int, np.ndarray, int]) -> tuple[int, np.ndarray, int, list[np.ndarray]]:
        step, idx, epoch = item
        rows = self.source.rows(idx)
        return step, idx, epoch, [np.asarray(r[:n]) for r, n in zip(rows, self.lengths[idx], strict=True)]


class _StepSampler:
    """Yields ``(step, idx, epoch)`` for steps ``start..stop-1`` from the schedule (in the training process)."""

    def __init__(self, sched: _Schedule, start: int, stop: int) -> None:
        self.sched, self.start, self.stop = sched, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        for step in range(self.start, self.stop):
            idx, epoch = self.sched.batch(step)
            yield step, idx, epoch


def _as_is(x: Any) -> Any:
    return x


def batch_loader(
    source: RowSource, lengths: np.ndarray, sched: _Schedule, start: int, cfg: PretrainConfig
) -> torch.utils.data.DataLoader:
    """Rows of the batches of steps ``start..`` in order, read ahead by ``num_workers`` processes."""
    workers = cfg.num_workers
    if workers is None:
        workers = 0 if getattr(source, "in_memory", False) else 1
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"prefetch_factor": cfg.prefetch_batches, "persistent_workers": False}
    return torch.utils.data.DataLoader(
        _BatchRows(source, lengths),
        batch_size=None,
        sampler=_StepSampler(sched, start, cfg.steps),
        num_workers=workers,
        collate_fn=_as_is,
        generator=torch.Generator(),  # the loader's seed must not come from (and move) the global torch RNG
        **kw,
    )

"""Pre-training loop: MLM + SimCSE + cross-species alignment, single process or torch.distributed (pure torch).

Reproducibility: every random choice of step ``k`` on rank ``r`` (batch order, masking, dropout) is derived from
``(seed, k, r)``, and checkpoints hold the weights, the optimizer state and the step. A run of N steps and a run of
N/2 steps resumed for N/2 more therefore produce the same losses and weights on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ...module._checkpoint import load_model_dir, save_model_dir
from ...module._encoder import BertEncoderModel
from ...module._losses import info_nce, mask_tokens, segment_mean
from .._device import resolve_device

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger("mixgf")

__all__ = [
    "ConcatRows",
    "PaddedRows",
    "PretrainConfig",
    "RowSource",
    "TokenCorpus",
    "latest_checkpoint",
    "pretrain_encoder",
]

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain_encoder` (all saved with every checkpoint).

    Attributes
    ----------
    steps
        Optimizer steps in total.
    token_budget
        Tokens per step and process (the cells of a batch are packed into one stream, without padding).
    max_cells
        Upper bound on cells per batch (InfoNCE needs several; memory needs a cap).
    train_max_len
        Truncate cells to their top-ranked ``train_max_len`` tokens during training (`None`: no truncation).
    lr, warmup_steps, min_lr_ratio
        Peak learning rate, linear warm-up, cosine decay down to ``min_lr_ratio * lr``.
    weight_decay, betas, eps, grad_clip
        AdamW and gradient clipping (``grad_clip <= 0`` disables it).
    mask_prob
        Fraction of gene tokens to predict (80 % masked, 10 % random gene, 10 % kept).
    mlm_weight, simcse_weight, xspec_weight
        Loss weights; a weight of 0 skips that term (SimCSE needs a second encoder pass, the cross-species term
        two more).
    simcse_temperature, xspec_temperature
        InfoNCE temperatures.
    xspec_min_tokens
        Cells whose ortholog projection keeps fewer tokens are left out of the cross-species term.
    xspec_max_cells
        At most this many cells of a batch (chosen at random) enter the cross-species term, which costs two extra
        encoder passes over them.
    seed
        Seed of all randomness.
    dtype
        ``"float32"`` or ``"bfloat16"`` (autocast; CUDA only); ``"auto"`` = bf16 on CUDA, fp32 on CPU.
    log_every, checkpoint_every
        Logging and checkpoint intervals in steps (``checkpoint_every=0``: only at the end).
    keep_checkpoints
        How many step checkpoints to keep.
    num_workers
        Processes of the :class:`torch.utils.data.DataLoader` that reads the rows of upcoming batches from the
        corpus's row source; `None`: 0 (in the training process) for tokens in memory, 1 for sources that read
        from disk (token stores). Workers only change where rows are read, never which: results are identical.
    prefetch_batches
        Batches each worker reads ahead (``prefetch_factor`` of the data loader; used with ``num_workers > 0``).

    Examples
    --------
    >>> from mixgf.model import PretrainConfig
    >>> cfg = PretrainConfig(steps=10_000, token_budget=32_768, xspec_weight=0.5, num_workers=2)
    >>> cfg.to_dict()["xspec_weight"], cfg.lr
    (0.5, 0.001)
    """

    steps: int = 1000
    token_budget: int = 16_384
    max_cells: int = 64
    train_max_len: int | None = None
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    mask_prob: float = 0.15
    mlm_weight: float = 1.0
    simcse_weight: float = 1.0
    simcse_temperature: float = 0.05
    xspec_weight: float = 0.0
    xspec_temperature: float = 0.1
    xspec_min_tokens: int = 8
    xspec_max_cells: int = 16
    seed: int = 0
    dtype: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    num_workers: int | None = None
    prefetch_batches: int = 4

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if (self.num_workers is not None and self.num_workers < 0) or self.prefetch_batches < 1:
            msg = "num_workers must be >= 0 (or None) and prefetch_batches >= 1."
            raise ValueError(msg)
        if self.steps < 1 or self.token_budget < 1 or self.max_cells < 2:
            msg = "steps and token_budget must be positive and max_cells at least 2."
            raise ValueError(msg)
        if not 0 < self.mask_prob < 1:
            msg = f"mask_prob must lie in (0, 1), got {self.mask_prob}."
            raise ValueError(msg)
        if min(self.mlm_weight, self.simcse_weight, self.xspec_weight) < 0:
            msg = "loss weights must be >= 0."
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


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


def _batch_loader(
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


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_batches(lengths: np.ndarray, cfg: PretrainConfig, epoch: int) -> list[np.ndarray]:
    """Batches of one epoch: shuffled, length-grouped within megabatches, cut by the token budget."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    mega = max(cfg.max_cells * 16, 1)
    for s in range(0, len(order), mega):
        chunk = order[s : s + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        i = 0
        while i < len(chunk):
            cum = np.cumsum(lengths[chunk[i : i + cfg.max_cells]])
            n = max(2, int(np.searchsorted(cum, cfg.token_budget, side="right")))
            batches.append(chunk[i : i + n])
            i += n
    perm = rng.permutation(len(batches))
    return [batches[j] for j in perm]


class _Schedule:
    """Global step -> batch of cells for this rank (rank r takes every world-th batch)."""

    def __init__(self, lengths: np.ndarray, cfg: PretrainConfig, rank: int, world: int) -> None:
        self.lengths, self.cfg, self.rank, self.world = lengths, cfg, rank, world
        self._epoch = -1
        self._batches: list[np.ndarray] = []
        self._offset = 0  # global batch index of the first batch of the cached epoch

    def batch(self, step: int) -> tuple[np.ndarray, int]:
        k = step * self.world + self.rank
        epoch, offset = 0, 0
        while True:
            batches = _epoch_batches(self.lengths, self.cfg, epoch) if epoch != self._epoch else self._batches
            if k < offset + len(batches):
                self._epoch, self._batches, self._offset = epoch, batches, offset
                return batches[k - offset], epoch
            offset += len(batches)
            epoch += 1


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _packed(rows: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Pack token rows into one stream: ids, cu_seqlens (int32), positions, segment of each token, longest."""
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    cu = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    ids = torch.from_numpy(np.concatenate(rows).astype(np.int64)).to(device)
    pos = torch.from_numpy(np.concatenate([np.arange(n) for n in lens])).to(device)
    seg = torch.from_numpy(np.repeat(np.arange(len(rows)), lens)).to(device)
    return ids, torch.from_numpy(cu).to(device), pos, seg, int(lens.max())


def _encode(model: BertEncoderModel, rows: list[np.ndarray], special: torch.Tensor, device: torch.device):
    """Mean-pooled final-layer embedding of each row (packed pass, dropout active in training mode)."""
    ids, cu, pos, seg, longest = _packed(rows, device)
    h = model.forward_packed(ids, cu, longest, pos, output_layer=-1)
    return segment_mean(h, seg, ~torch.isin(ids, special), len(rows))


def _save_checkpoint(
    out: Path,
    step: int,
    model: BertEncoderModel,
    opt: torch.optim.Optimizer,
    cfg: PretrainConfig,
    history: list[dict[str, float]],
    extra_files: dict[str, bytes],
    metadata: dict[str, Any],
) -> Path:
    names = {id(p): n for n, p in model.named_parameters()}
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"{names[id(p)]}::{k}"] = v.detach().to("cpu").contiguous()
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    state = {"step": step, "config": cfg.to_dict(), "history": history, "param_order": order, "param_groups": groups}
    buf = out / f".opt-{os.getpid()}.safetensors"
    save_file(tensors, str(buf))
    files = {**extra_files, OPTIMIZER_FILE: buf.read_bytes(), STATE_FILE: json.dumps(state).encode()}
    buf.unlink()
    path = out / f"step-{step:08d}"
    save_model_dir(path, model, extra_files=files, metadata={**metadata, "step": step}, overwrite=True)
    steps = sorted(out.glob("step-*"))
    for old in steps[: max(len(steps) - cfg.keep_checkpoints, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint (one whose manifest exists) under ``out``, or `None`.

    Parameters
    ----------
    out
        The ``out_dir`` of :func:`pretrain_encoder`.

    Returns
    -------
    pathlib.Path or None
        The ``step-XXXXXXXX`` directory with the highest step, or `None` when there is none.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from mixgf.model import (
    ...     BertEncoderModel,
    ...     EncoderConfig,
    ...     PretrainConfig,
    ...     TokenCorpus,
    ...     latest_checkpoint,
    ...     pretrain_encoder,
    ... )
    >>> tokens = np.random.default_rng(0).integers(4, 50, size=(16, 12)).astype(np.uint16)
    >>> corpus = TokenCorpus(
    ...     tokens,
    ...     lengths=np.full(16, 12),
    ...     species=np.zeros(16, dtype=np.int8),
    ...     pad_id=0,
    ...     mask_id=1,
    ...     special_ids=np.array([0, 1, 2, 3]),
    ...     gene_ids=np.arange(4, 50),
    ... )
    >>> model = BertEncoderModel(
    ...     EncoderConfig(
    ...         vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ...     )
    ... )
    >>> out = tempfile.mkdtemp()
    >>> latest_checkpoint(out) is None
    True
    >>> config = PretrainConfig(steps=2, token_budget=96, max_cells=8, warmup_steps=1, checkpoint_every=1)
    >>> _ = pretrain_encoder(model, corpus, config, out_dir=out, device="cpu")
    >>> latest_checkpoint(out).name  # an interrupted run resumes from here
    'step-00000002'
    """
    cands = sorted(p for p in Path(out).glob("step-*") if (p / "manifest.json").is_file() and p.is_dir())
    return cands[-1] if cands else None


def _load_optimizer(opt: torch.optim.Optimizer, model: BertEncoderModel, ckpt: Path, state: dict) -> None:
    tensors = load_file(str(ckpt / OPTIMIZER_FILE))
    params = dict(model.named_parameters())
    order = state["param_order"]
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, k = key.split("::")
        by_index.setdefault(order.index(name), {})[k] = value.to(params[name].device)
    groups, i = [], 0
    for g in state["param_groups"]:
        n = len(opt.param_groups[len(groups)]["params"])
        groups.append({**g, "params": list(range(i, i + n))})
        i += n
    opt.load_state_dict({"state": by_index, "param_groups": groups})


def pretrain_encoder(
    model: BertEncoderModel,
    corpus: TokenCorpus,
    config: PretrainConfig,
    *,
    out_dir: str | Path,
    extra_files: dict[str, bytes] | None = None,
    metadata: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
) -> tuple[BertEncoderModel, list[dict[str, float]]]:
    """Pre-train an encoder with masked-gene modelling, SimCSE and (optionally) cross-species alignment.

    Run it in one process, or under ``torchrun`` with ``torch.distributed`` initialised: each rank then takes a
    disjoint share of the batches and gradients are averaged, so all ranks end with identical weights.

    Parameters
    ----------
    model
        Encoder with an MLM head.
    corpus
        Tokenized cells.
    config
        Training settings.
    out_dir
        Where checkpoints (``step-XXXXXXXX``) go; the last one is the result.
    extra_files
        Files stored in every checkpoint (e.g. the vocabulary).
    metadata
        Stored in every checkpoint's manifest.
    device
        Torch device.
    resume
        Continue from the newest complete checkpoint in ``out_dir`` when there is one.

    Returns
    -------
    tuple of (BertEncoderModel, list of dict)
        The trained model and the loss history (one entry per step).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import torch
    >>> from mixgf.model import BertEncoderModel, EncoderConfig, PretrainConfig, TokenCorpus, pretrain_encoder
    >>> rng = np.random.default_rng(0)
    >>> tokens = rng.integers(4, 50, size=(32, 12)).astype(np.uint16)
    >>> corpus = TokenCorpus(
    ...     tokens,
    ...     lengths=np.full(32, 12),
    ...     species=np.zeros(32, dtype=np.int8),
    ...     pad_id=0,
    ...     mask_id=1,
    ...     special_ids=np.array([0, 1, 2, 3]),
    ...     gene_ids=np.arange(4, 50),
    ... )
    >>> _ = torch.manual_seed(0)
    >>> model = BertEncoderModel(
    ...     EncoderConfig(
    ...         vocab_size=50,
    ...         hidden_size=16,
    ...         num_hidden_layers=1,
    ...         num_attention_heads=2,
    ...         intermediate_size=32,
    ...         max_position_embeddings=16,
    ...     )
    ... )
    >>> cfg = PretrainConfig(steps=2, token_budget=96, max_cells=8, warmup_steps=1)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     model, history = pretrain_encoder(model, corpus, cfg, out_dir=out, device="cpu")
    >>> len(history), sorted(history[-1])[:3]
    (2, ['cells', 'epoch', 'loss'])
    """
    cfg = config
    if model.mlm_head is None:
        msg = "pre-training needs an encoder with an MLM head (EncoderConfig(has_mlm_head=True))."
        raise ValueError(msg)
    if cfg.xspec_weight > 0 and corpus.ortholog_map is None:
        msg = "xspec_weight > 0 needs corpus.ortholog_map (one-to-one orthologs between the species)."
        raise ValueError(msg)
    rank, world = _rank_world()
    dev = resolve_device(device)
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and dev.type == "cuda")
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model.to(dev)
    opt_kw = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if dev.type == "cuda":
        opt_kw["fused"] = True
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **opt_kw)
    start, history = 0, []
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        loaded = load_model_dir(ckpt, device=dev)
        model.load_state_dict(loaded.model.state_dict())
        state = json.loads((ckpt / STATE_FILE).read_text())
        _load_optimizer(opt, model, ckpt, state)
        start, history = int(state["step"]), list(state["history"])
        if rank == 0:
            logger.info("resuming from %s (step %d)", ckpt, start)
    extra = dict(extra_files or {})
    meta = dict(metadata or {})
    meta["pretrain_config"] = cfg.to_dict()

    source = corpus.row_source()
    lengths = np.asarray(corpus.lengths, dtype=np.int64)
    if cfg.train_max_len:
        lengths = np.minimum(lengths, cfg.train_max_len)
    sched = _Schedule(lengths, cfg, rank, world)
    special = torch.as_tensor(np.asarray(corpus.special_ids, dtype=np.int64), device=dev)
    gene_ids = torch.as_tensor(np.asarray(corpus.gene_ids, dtype=np.int64), device=dev)
    omap = None if corpus.ortholog_map is None else np.asarray(corpus.ortholog_map, dtype=np.int64)
    model.train()
    t_last = time.perf_counter()
    cells_seen = 0
    for step, idx, epoch, fetched in _batch_loader(source, lengths, sched, start, cfg):
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step * 7919 + rank)
        torch.manual_seed(cfg.seed * 1_000_003 + step * 7919 + rank + 17)
        rows = [r.astype(np.int64) for r in fetched]
        ids, cu, pos, seg, longest = _packed(rows, dev)
        genes = ~torch.isin(ids, special)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            inputs, target = mask_tokens(
                ids, genes, mask_id=corpus.mask_id, random_ids=gene_ids, mask_prob=cfg.mask_prob, generator=gen
            )
            h1 = model.forward_packed(inputs, cu, longest, pos, output_layer=-1)
            logits = model.mlm_logits(h1, target)
            mlm = torch.nn.functional.cross_entropy(logits.float(), ids[target])
            loss = cfg.mlm_weight * mlm
            rec = {"step": step + 1, "epoch": epoch, "lr": _lr(step, cfg), "cells": len(idx), "mlm": mlm.item()}
            if cfg.simcse_weight > 0:
                h2 = model.forward_packed(inputs, cu, longest, pos, output_layer=-1)
                z1, z2 = segment_mean(h1, seg, genes, len(rows)), segment_mean(h2, seg, genes, len(rows))
                sim = info_nce(z1, z2, cfg.simcse_temperature)
                loss = loss + cfg.simcse_weight * sim
                rec["simcse"] = sim.item()
            if cfg.xspec_weight > 0:
                proj = [omap[r][omap[r] >= 0] for r in rows]
                keep = [i for i, p in enumerate(proj) if len(p) >= cfg.xspec_min_tokens]
                if len(keep) > cfg.xspec_max_cells:
                    pick = torch.randperm(len(keep), generator=torch.Generator().manual_seed(cfg.seed + step))
                    keep = sorted(keep[int(j)] for j in pick[: cfg.xspec_max_cells])
                if len(keep) >= 2:
                    za = _encode(model, [rows[i] for i in keep], special, dev)
                    zp = _encode(model, [proj[i] for i in keep], special, dev)
                    xs = info_nce(za, zp, cfg.xspec_temperature)
                    loss = loss + cfg.xspec_weight * xs
                    rec["xspec"] = xs.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= world
            for g, s in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                g.copy_(s)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        rec["loss"] = loss.item()
        history.append(rec)
        cells_seen += len(idx)
        if rank == 0 and (step + 1) % max(cfg.log_every, 1) == 0:
            now = time.perf_counter()
            terms = ", ".join(f"{k} {rec[k]:.4f}" for k in ("loss", "mlm", "simcse", "xspec") if k in rec)
            logger.info(
                "step %d/%d: %s (lr %.2e, %.1f cells/s)", step + 1, cfg.steps, terms, rec["lr"],
                cells_seen / (now - t_last),
            )  # fmt: skip
            t_last, cells_seen = now, 0
        last = step + 1 == cfg.steps
        if rank == 0 and (last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)):
            model.eval()
            _save_checkpoint(out, step + 1, model, opt, cfg, history, extra, meta)
            model.train()
        if world > 1 and (last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)):
            dist.barrier()
    model.eval()
    return model, history

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ...module._checkpoint import load_model_dir, save_model_dir
from ...module._encoder import BertEncoderModel
from ...module._losses import info_nce, mask_tokens
from .._batching import make_batches
from .._device import resolve_device, resolve_dtype
from .._forward import autocast, encode, encode_pooled, pool, rows_batch
from ._corpus import ConcatRows, PaddedRows, RowSource, TokenCorpus, batch_loader

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
    decay_steps
        `None`: the cosine decay spans every step after the warm-up. A number: the rate stays at its peak after the
        warm-up and the cosine decay spans only the last ``decay_steps`` steps (warm-up, stable, decay). A run in its
        stable phase can then be resumed with more ``steps`` without changing the rate of any step already taken,
        so checkpoints of runs compared at equal compute can be continued instead of retrained.
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
        ``"float32"`` or ``"bfloat16"`` (autocast); ``"auto"`` = bf16 on CUDA and on CPUs with native bf16
        (AVX512-BF16 or AMX, :func:`~mixgf.model.cpu_supports_bf16`), fp32 elsewhere (:func:`~mixgf.model.resolve_dtype`).
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
    decay_steps: int | None = None
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
        if self.decay_steps is not None and not 0 < self.decay_steps <= self.steps - self.warmup_steps:
            msg = f"decay_steps must lie in [1, steps - warmup_steps], got {self.decay_steps}."
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
        runs = make_batches(lengths[chunk], cfg.token_budget, packed=True, max_cells=cfg.max_cells)
        batches.extend(chunk[b] for b in runs)
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
    begin = cfg.warmup_steps if cfg.decay_steps is None else cfg.steps - cfg.decay_steps
    if step < begin:
        return cfg.lr
    t = min((step - begin) / max(cfg.steps - begin, 1), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


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
    compute_dtype = resolve_dtype(cfg.dtype, dev)
    if compute_dtype == torch.float16:
        msg = "pre-training runs in float32 or bfloat16 (float16 would need loss scaling)."
        raise ValueError(msg)
    if rank == 0:
        logger.info("pre-training on %s in %s", dev, str(compute_dtype).removeprefix("torch."))
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
    meta["compute_dtype"] = str(compute_dtype).removeprefix("torch.")

    source = corpus.row_source()
    lengths = np.asarray(corpus.lengths, dtype=np.int64)
    if cfg.train_max_len:
        lengths = np.minimum(lengths, cfg.train_max_len)
    sched = _Schedule(lengths, cfg, rank, world)
    special_ids = [int(i) for i in np.asarray(corpus.special_ids).ravel()]
    special = torch.as_tensor(special_ids, dtype=torch.int64, device=dev)
    pad_id = int(corpus.pad_id)
    gene_ids = torch.as_tensor(np.asarray(corpus.gene_ids, dtype=np.int64), device=dev)
    omap = None if corpus.ortholog_map is None else np.asarray(corpus.ortholog_map, dtype=np.int64)
    model.train()
    t_last = time.perf_counter()
    cells_seen = 0
    for step, idx, epoch, fetched in batch_loader(source, lengths, sched, start, cfg):
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step * 7919 + rank)
        torch.manual_seed(cfg.seed * 1_000_003 + step * 7919 + rank + 17)
        rows = [r.astype(np.int64) for r in fetched]
        batch = rows_batch(rows, device=dev)
        genes = ~torch.isin(batch.ids, special)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        with autocast(dev, compute_dtype):
            inputs, target = mask_tokens(
                batch.ids, genes, mask_id=corpus.mask_id, random_ids=gene_ids, mask_prob=cfg.mask_prob, generator=gen
            )
            h1 = encode(model, batch, dtype=compute_dtype, input_ids=inputs)
            logits = model.mlm_logits(h1, target)
            mlm = torch.nn.functional.cross_entropy(logits.float(), batch.ids[target])
            loss = cfg.mlm_weight * mlm
            rec = {"step": step + 1, "epoch": epoch, "lr": _lr(step, cfg), "cells": len(idx), "mlm": mlm.item()}
            if cfg.simcse_weight > 0:
                h2 = encode(model, batch, dtype=compute_dtype, input_ids=inputs)
                z1, z2 = (pool(h, batch, special_ids=special_ids, pad_token_id=pad_id) for h in (h1, h2))
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
                    za, zp = (
                        encode_pooled(model, rows_batch(part, device=dev), special_ids=special_ids, dtype=compute_dtype)
                        for part in ([rows[i] for i in keep], [proj[i] for i in keep])
                    )
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

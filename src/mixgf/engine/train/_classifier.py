"""Cell classifier on top of the encoder: head, fine-tuning loop and temperature scaling (pure torch)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...module._encoder import BertEncoderModel, resolve_layer
from ...module._heads import ClassifierHead
from .._batching import Progress, make_batches, run_batches
from .._device import resolve_device, resolve_dtype
from .._forward import encode_pooled, eval_mode, token_batch

logger = logging.getLogger("mixgf")

__all__ = ["FinetuneConfig", "finetune_classifier", "fit_temperature", "predict_logits"]


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune_classifier`.

    Attributes
    ----------
    train_layers
        How many of the encoder's top blocks are trained: ``0`` = frozen encoder (only the head learns), ``-1`` =
        all blocks and the embeddings.
    layer
        Hidden state that is pooled (``-1`` = last block).
    epochs, patience
        Maximum epochs; stop when the validation loss has not improved for ``patience`` epochs (the best epoch's
        weights are kept).
    lr, head_lr, weight_decay
        AdamW learning rates of the encoder and the head, and weight decay.
    warmup_fraction
        Linear warm-up over this fraction of the steps, then linear decay.
    token_budget, max_cells
        Tokens and cells per batch.
    max_len
        Keep each cell's top ``max_len`` tokens (`None`: all).
    class_weights
        Weight the loss by inverse class frequency (``"balanced"``) or not (``"none"``).
    dropout
        Dropout of the head.
    seed
        Seed of batch order, dropout and head initialisation.

    Examples
    --------
    >>> from mixgf.model import FinetuneConfig
    >>> config = FinetuneConfig(train_layers=1, epochs=3, max_len=512)  # train the top block and the head
    >>> config.to_dict()["train_layers"], config.lr, config.class_weights
    (1, 5e-05, 'balanced')
    """

    train_layers: int = -1
    layer: int = -1
    epochs: int = 10
    patience: int = 2
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.001
    warmup_fraction: float = 0.1
    token_budget: int = 16_384
    max_cells: int = 32
    max_len: int | None = None
    class_weights: str = "balanced"
    dropout: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


def _pooled(model, tokens, lengths, idx, special_ids, layer, device, dtype=torch.float32) -> torch.Tensor:
    """Mean-pooled hidden states ``layer`` of cells ``idx`` (packed; differentiable in training)."""
    batch = token_batch(tokens, lengths, idx, packed=True, device=device, pad_token_id=model.config.pad_token_id)
    return encode_pooled(model, batch, layer=layer, special_ids=special_ids, dtype=dtype)


def _train_batches(lengths: np.ndarray, cfg: FinetuneConfig, order: np.ndarray) -> list[np.ndarray]:
    """Training batches: consecutive runs of ``order`` (packed token budget, at most ``max_cells`` cells)."""
    runs = make_batches(lengths[order], cfg.token_budget, packed=True, max_cells=cfg.max_cells, sort=False)
    return [order[b] for b in runs]


def predict_logits(
    model: BertEncoderModel,
    head: ClassifierHead,
    tokens: np.ndarray,
    lengths: np.ndarray,
    *,
    special_ids: np.ndarray,
    layer: int = -1,
    device: str | torch.device | None = "cpu",
    token_budget: int = 16_384,
    max_cells: int = 64,
    dtype: str | torch.dtype | None = "float32",
    progress: bool | None = None,
) -> np.ndarray:
    """Logits ``[N, n_classes]`` (float32) of every cell, in input order.

    Parameters
    ----------
    model
        The encoder.
    head
        The classification head.
    tokens, lengths
        ``[N, L]`` right-padded token ids and the number of tokens of each cell (at least 1).
    special_ids
        Token ids left out of the mean pooling.
    layer
        Hidden state that is pooled (``-1`` = last block).
    device
        Torch device.
    token_budget, max_cells
        Tokens and cells per batch; the token budget is halved (and the failing batch retried) whenever the device
        runs out of memory.
    dtype
        Compute dtype of the encoder (autocast; as in :func:`mixgf.model.embed_tokens`, but float32 unless asked).
    progress
        Show a tqdm progress bar; `None` follows :attr:`mixgf.settings.progress_bar`.

    Returns
    -------
    numpy.ndarray
        ``[N, n_classes]`` float32 logits.

    Examples
    --------
    >>> import mixgf as mgf
    >>> from mixgf.model import ClassifierHead, predict_logits
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:20].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=128)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> head = ClassifierHead(model.config.hidden_size, n_classes=3)  # untrained, for the shapes only
    >>> predict_logits(model.encoder, head, tokens, lengths, special_ids=model.vocab.special_ids).shape
    (20, 3)
    """
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, dev)
    special = [int(i) for i in np.asarray(special_ids).ravel()]
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros((len(lengths), head.linear.out_features), dtype=np.float32)

    def compute(idx: np.ndarray) -> np.ndarray:
        return head(_pooled(model, tokens, lengths, idx, special, layer, dev, compute_dtype)).float().cpu().numpy()

    with eval_mode(model, head, device=dev):
        for idx, logits in run_batches(
            lengths, token_budget, compute, device=dev, packed=True, max_cells=max_cells, progress=progress,
            desc="predicting",
        ):  # fmt: skip
            out[idx] = logits
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature that minimises the negative log-likelihood of ``softmax(logits / T)`` on held-out cells.

    Parameters
    ----------
    logits
        ``[N, n_classes]`` logits of held-out cells.
    labels
        ``[N]`` their true class indices.

    Returns
    -------
    float
        The temperature ``T > 0``: above 1 softens over-confident probabilities, below 1 sharpens them.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import fit_temperature
    >>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> fit_temperature(logits, np.array([0, 1, 1, 0])) > 1  # confident and wrong once: soften
    True
    >>> fit_temperature(logits, np.array([0, 0, 1, 0])) < 1  # always right: sharpen
    True
    """
    lg = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    best_t, best = 1.0, math.inf
    for t in [1.0, *np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))]:
        nll = float(nn.functional.cross_entropy(lg / t, y))
        if nll < best:
            best_t, best = float(t), nll
    log_t = torch.tensor(math.log(best_t), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=50)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not (math.isfinite(t) and t > 0) or float(nn.functional.cross_entropy(lg / t, y)) > best:
        return best_t
    return t


def _fit_head_on_embeddings(enc, head, tokens, lengths, labels, train_idx, val_idx, n_classes, special_ids, layer,
                            cfg, dev):  # fmt: skip
    """Frozen encoder: embed every cell once, then train the head on the cached embeddings (many cheap epochs)."""
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), cfg.max_len or tokens.shape[1])
    from .._inference import embed_tokens

    z = torch.as_tensor(
        embed_tokens(enc, tokens, lengths, layer=layer, special_ids=[int(i) for i in special_ids], device=dev),
        device=dev,
    )
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=dev)
    counts = np.bincount(np.asarray(labels)[train_idx], minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    if cfg.class_weights != "balanced":
        w = np.ones(n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(w, dtype=torch.float32, device=dev))
    mu, sd = z[train_idx].mean(0), z[train_idx].std(0).clamp(min=1e-6)
    # fold the standardisation into the head so that it applies to raw embeddings
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr * 10, weight_decay=cfg.weight_decay)
    zs = (z - mu) / sd
    g = torch.Generator().manual_seed(cfg.seed)
    tr = torch.as_tensor(np.asarray(train_idx), device=dev)
    va = torch.as_tensor(np.asarray(val_idx), device=dev)
    best, history, bad = (math.inf, None), [], 0
    for epoch in range(cfg.epochs * 20):
        head.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), 256):
            b = perm[i : i + 256]
            loss = loss_fn(head(zs[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            vl = head(zs[va])
            val_loss = float(loss_fn(vl, y[va]))
            rec = {"epoch": epoch + 1, "train_loss": float(loss_fn(head(zs[tr]), y[tr])), "val_loss": val_loss,
                   "val_accuracy": float((vl.argmax(1) == y[va]).float().mean())}  # fmt: skip
        history.append(rec)
        if val_loss < best[0] - 1e-6:
            best, bad = (val_loss, copy.deepcopy(head.state_dict())), 0
        else:
            bad += 1
            if bad >= max(cfg.patience, 5):
                break
    head.load_state_dict(best[1])
    with torch.no_grad():
        head.linear.bias -= head.linear.weight @ (mu / sd)
        head.linear.weight /= sd
    head.eval()
    return head, history


def finetune_classifier(
    model: BertEncoderModel,
    tokens: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    n_classes: int,
    *,
    special_ids: np.ndarray,
    config: FinetuneConfig,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
) -> tuple[BertEncoderModel, ClassifierHead, list[dict[str, float]]]:
    """Fine-tune a copy of ``model`` with a new head on labelled cells; early stopping on the validation loss.

    Returns the fine-tuned encoder, the head and one history entry per epoch (train loss, validation loss and
    accuracy). The input ``model`` is not modified.

    The head is first fitted on the frozen embeddings (linear probing; history entry ``epoch`` 0), then the
    trainable blocks and the head are fine-tuned together. :func:`mixgf.tl.train_classifier` calls it on AnnData.

    Parameters
    ----------
    model
        The encoder to start from (it is copied).
    tokens, lengths
        ``[N, L]`` right-padded token ids and the number of tokens of each cell.
    labels
        ``[N]`` class index of each cell.
    train_idx, val_idx
        Cells used for training and for validation (early stopping).
    n_classes
        Number of classes.
    special_ids
        Token ids left out of the mean pooling.
    config
        Training settings.
    device
        Torch device.
    progress
        Show a tqdm progress bar over the fine-tuning steps (in cells). Training runs without out-of-memory
        back-off: a step's batch is part of the seeded schedule, so a batch that does not fit raises.

    Returns
    -------
    encoder : BertEncoderModel
        The fine-tuned copy of ``model`` (eval mode, gradients off).
    head : ClassifierHead
        The trained head.
    history : list of dict
        One entry per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.model import FinetuneConfig, finetune_classifier
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:200]
    >>> adata = adata[adata.obs["cell_type"].notna()].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=64)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> classes, labels = np.unique(adata.obs["cell_type"].astype(str), return_inverse=True)
    >>> cells = np.arange(adata.n_obs)
    >>> train, val = cells[cells % 4 != 0], cells[cells % 4 == 0]
    >>> encoder, head, history = finetune_classifier(
    ...     model.encoder,
    ...     tokens,
    ...     lengths,
    ...     labels,
    ...     train,
    ...     val,
    ...     len(classes),
    ...     special_ids=model.vocab.special_ids,
    ...     config=FinetuneConfig(train_layers=1, epochs=1),
    ... )
    >>> [h["epoch"] for h in history], encoder is model.encoder
    ([0, 1], False)
    >>> head.linear.out_features == len(classes)
    True
    """
    cfg = config
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    enc = copy.deepcopy(model).to(dev)
    n_layers = enc.num_layers
    layer = resolve_layer(cfg.layer, n_layers)
    head = ClassifierHead(enc.config.hidden_size, n_classes, cfg.dropout).to(dev)
    for p in enc.parameters():
        p.requires_grad_(False)
    if cfg.train_layers != 0:
        blocks = list(enc.layers)[:layer] if layer > 0 else []
        trainable = blocks if cfg.train_layers < 0 else blocks[-cfg.train_layers :]
        for b in trainable:
            for p in b.parameters():
                p.requires_grad_(True)
        if cfg.train_layers < 0 or cfg.train_layers >= len(blocks):
            for p in enc.embeddings.parameters():
                p.requires_grad_(True)
    if cfg.train_layers == 0:
        head, history = _fit_head_on_embeddings(
            enc, head, tokens, lengths, labels, train_idx, val_idx, n_classes, special_ids, layer, cfg, dev
        )
        return enc.eval(), head, history
    # Linear probing first, then fine-tuning (LP-FT): the head starts from the best linear classifier of the frozen
    # embeddings, so fine-tuning starts from a good solution instead of distorting the encoder to fit a random head.
    # The probed head ("epoch 0") stays the result if fine-tuning never improves the validation loss.
    head, probe_history = _fit_head_on_embeddings(
        enc, head, tokens, lengths, labels, train_idx, val_idx, n_classes, special_ids, layer, cfg, dev
    )
    enc_params = [p for p in enc.parameters() if p.requires_grad]
    groups = [{"params": head.parameters(), "lr": cfg.head_lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), cfg.max_len or tokens.shape[1])
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels[train_idx], minlength=n_classes).astype(np.float64)
    if cfg.class_weights == "balanced":
        w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    else:
        w = np.ones(n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(w, dtype=torch.float32, device=dev))
    special = [int(i) for i in np.asarray(special_ids).ravel()]
    rng = np.random.default_rng(cfg.seed)
    train_idx = np.asarray(train_idx)
    n_steps = cfg.epochs * len(_train_batches(lengths, cfg, train_idx))
    warm = max(int(cfg.warmup_fraction * n_steps), 1)
    base = [g["lr"] for g in opt.param_groups]
    val0 = predict_logits(
        enc, head, tokens[val_idx], lengths[val_idx], special_ids=special_ids, layer=layer, device=dev,
        token_budget=cfg.token_budget, progress=False,
    )  # fmt: skip
    yv0 = labels[val_idx]
    val_loss0 = float(loss_fn(torch.as_tensor(val0, device=dev), torch.as_tensor(yv0, device=dev)))
    history = [{
        "epoch": 0,
        "train_loss": probe_history[-1]["train_loss"] if probe_history else float("nan"),
        "val_loss": val_loss0,
        "val_accuracy": float((val0.argmax(1) == yv0).mean()),
    }]  # fmt: skip
    best = (val_loss0, copy.deepcopy(enc.state_dict()), copy.deepcopy(head.state_dict()))
    bad, step = 0, 0
    y_all = torch.as_tensor(labels, device=dev)
    bar = Progress(cfg.epochs * len(train_idx), progress, "fine-tuning")
    for epoch in range(cfg.epochs):
        enc.train()
        head.train()
        perm = rng.permutation(np.asarray(train_idx))
        # length-grouped batches within chunks keep padding-free packs of similar cost
        chunks = [perm[i : i + cfg.max_cells * 8] for i in range(0, len(perm), cfg.max_cells * 8)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
        batches = _train_batches(lengths, cfg, order)
        total = 0.0
        for idx in (batches[j] for j in rng.permutation(len(batches))):
            scale = min((step + 1) / warm, max(0.0, (n_steps - step) / max(n_steps - warm, 1)))
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * scale
            logits = head(_pooled(enc, tokens, lengths, idx, special, layer, dev))
            loss = loss_fn(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            step += 1
            bar.update(len(idx))
        val = predict_logits(
            enc, head, tokens[val_idx], lengths[val_idx], special_ids=special_ids, layer=layer, device=dev,
            token_budget=cfg.token_budget, progress=False,
        )  # fmt: skip
        yv = labels[val_idx]
        val_loss = float(loss_fn(torch.as_tensor(val, device=dev), torch.as_tensor(yv, device=dev)))
        rec = {
            "epoch": epoch + 1,
            "train_loss": total / max(len(train_idx), 1),
            "val_loss": val_loss,
            "val_accuracy": float((val.argmax(1) == yv).mean()),
        }
        history.append(rec)
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.3f", epoch + 1, rec["train_loss"],
                    val_loss, rec["val_accuracy"])  # fmt: skip
        if val_loss < best[0] - 1e-6:
            best = (val_loss, copy.deepcopy(enc.state_dict()), copy.deepcopy(head.state_dict()))
            bad = 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    bar.close()
    if best[1] is not None:
        enc.load_state_dict(best[1])
        head.load_state_dict(best[2])
    enc.eval()
    head.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc, head, history

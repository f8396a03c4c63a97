"""mclSTExp-style contrastive retrieval: align patches and spots (CLIP), predict by nearest reference spots.

Training aligns an image encoder (the small CNN on patches, and / or precomputed patch features, through a
projection head) with a spot encoder (expression plus learned x / y position embeddings through pre-norm attention
over the batch) by a symmetric InfoNCE loss. Prediction embeds a query patch, finds its ``k`` most cosine-similar
reference spot keys and averages the measured expression of those spots with weights ``1 / ||key - query||_1^2``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["build_retrieval_nets", "retrieval_predict", "spot_keys", "train_retrieval"]


def build_retrieval_nets(config: dict[str, Any]) -> tuple[Any, Any]:
    """The image and spot encoders described by a retrieval model's config (fresh weights)."""
    from ._nets import ImageEncoder, SmallCNN, SpotEncoder

    backbone = SmallCNN(config["cnn_width"]) if config["use_patches"] else None
    bdim = backbone.out_dim if backbone is not None else 0
    img = ImageEncoder(backbone, bdim, config["n_features"], config["d_out"], config["dropout"])
    spot = SpotEncoder(config["n_genes"], config["d_model"], config["n_positions"], config["n_layers"],
                       config["n_heads"], config["d_out"], config["dropout"])  # fmt: skip
    return img, spot


def _tensor(a: np.ndarray | None, device: Any) -> Any:
    import torch

    return None if a is None else torch.as_tensor(np.ascontiguousarray(a)).to(device)


def train_retrieval(
    expression: np.ndarray,
    positions: np.ndarray,
    *,
    patches: np.ndarray | None = None,
    features: np.ndarray | None = None,
    cnn_width: int = 16,
    d_model: int = 256,
    d_out: int = 128,
    n_layers: int = 2,
    n_heads: int = 8,
    dropout: float = 0.1,
    temperature: float = 0.1,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    device: Any = "cpu",
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Train the two encoders by the CLIP loss; returns (config, weights, history).

    Parameters
    ----------
    expression
        Spot-encoder input of the training spots (spots x inputs): their log-normalised expression, optionally with
        other standardised spot representations (e.g. transformer cell embeddings) appended as columns.
    positions
        Integer array coordinates (spots x 2; x, y >= 0).
    patches
        uint8 patches (spots x h x w x 3) for the CNN branch, or `None` (features only).
    features
        Standardised patch features (spots x f), or `None` (CNN only).
    cnn_width, d_model, d_out, n_layers, n_heads, dropout
        Sizes: first CNN block, attention width, shared space, attention blocks, heads; dropout.
    temperature
        Softmax temperature of the InfoNCE loss on L2-normalised embeddings.
    epochs, batch_size, lr, weight_decay
        Adam training schedule.
    seed
        Torch seed (initialisation, batches, augmentation).
    device
        Torch device.

    Returns
    -------
    tuple
        Config (sizes), weights (name -> array, prefixed ``image.`` / ``spot.``), history (losses, time).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import train_retrieval
    >>> rng = np.random.default_rng(0)
    >>> expr = rng.random((40, 5)).astype(np.float32)
    >>> cfg, weights, hist = train_retrieval(
    ...     expr, rng.integers(0, 9, (40, 2)), features=expr[:, :3], epochs=2, d_model=16, d_out=8, n_heads=2
    ... )
    >>> cfg["n_genes"], len(hist["loss"])
    (5, 2)
    """
    import torch

    from ._features import patches_to_tensor
    from ._nets import augment, clip_loss, n_params

    if patches is None and features is None:
        msg = "train_retrieval needs patches, features or both for the image side."
        raise ValueError(msg)
    n = len(expression)
    positions = np.asarray(positions, dtype=np.int64)
    if positions.min() < 0:
        msg = "array positions must be non-negative integers; shift them (e.g. subtract the minimum)."
        raise ValueError(msg)
    config = {
        "cnn_width": int(cnn_width), "use_patches": patches is not None,
        "n_features": 0 if features is None else int(features.shape[1]), "n_genes": int(expression.shape[1]),
        "d_model": int(d_model), "d_out": int(d_out), "n_layers": int(n_layers), "n_heads": int(n_heads),
        "n_positions": int(max(128, positions.max() + 1)), "dropout": float(dropout),
        "temperature": float(temperature), "batch_size": int(batch_size),
    }  # fmt: skip
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    img, spot = build_retrieval_nets(config)
    img.to(dev), spot.to(dev)
    opt = torch.optim.Adam([*img.parameters(), *spot.parameters()], lr=lr, weight_decay=weight_decay)
    x_all = None if patches is None else patches_to_tensor(patches)
    f_all = _tensor(None if features is None else features.astype(np.float32), "cpu")
    e_all = _tensor(expression.astype(np.float32), "cpu")
    p_all = _tensor(positions, "cpu")
    losses, t0 = [], time.perf_counter()
    for _ in range(epochs):
        img.train(), spot.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            x = None if x_all is None else augment(x_all[idx], gen).to(dev)
            f = None if f_all is None else f_all[idx].to(dev)
            loss = clip_loss(img(x, f), spot(e_all[idx].to(dev), p_all[idx].to(dev)), temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    weights = {f"image.{k}": v.detach().cpu().numpy() for k, v in img.state_dict().items()}
    weights |= {f"spot.{k}": v.detach().cpu().numpy() for k, v in spot.state_dict().items()}
    history = {"loss": losses, "train_seconds": time.perf_counter() - t0, "n_spots": n, "epochs": epochs,
               "n_parameters": n_params(img) + n_params(spot), "device": str(dev)}  # fmt: skip
    return config, weights, history


def _load(module: Any, weights: dict[str, np.ndarray], prefix: str) -> Any:
    import torch

    state = {k[len(prefix) :]: torch.as_tensor(v) for k, v in weights.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True)
    return module.eval()


def spot_keys(config: dict[str, Any], weights: dict[str, np.ndarray], expression: np.ndarray,
              positions: np.ndarray, *, device: Any = "cpu") -> np.ndarray:  # fmt: skip
    """Spot-encoder keys of reference spots (in file-order batches of the training batch size)."""
    import torch

    _, spot = build_retrieval_nets(config)
    spot = _load(spot, weights, "spot.").to(device)
    out = []
    bs = config["batch_size"]
    with torch.no_grad():
        for s in range(0, len(expression), bs):
            e = _tensor(expression[s : s + bs].astype(np.float32), device)
            p = _tensor(np.asarray(positions[s : s + bs], dtype=np.int64), device)
            out.append(torch.nn.functional.normalize(spot(e, p), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def image_queries(config: dict[str, Any], weights: dict[str, np.ndarray], *, patches: np.ndarray | None,
                  features: np.ndarray | None, device: Any = "cpu", batch_size: int = 256) -> np.ndarray:  # fmt: skip
    """L2-normalised image embeddings of query patches."""
    import torch

    from ._features import patches_to_tensor

    img, _ = build_retrieval_nets(config)
    img = _load(img, weights, "image.").to(device)
    n = len(patches) if patches is not None else len(features)
    out = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            x = None if not config["use_patches"] else patches_to_tensor(patches[s : s + batch_size]).to(device)
            f = None if not config["n_features"] else _tensor(features[s : s + batch_size].astype(np.float32), device)
            out.append(torch.nn.functional.normalize(img(x, f), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def retrieval_predict(queries: np.ndarray, keys: np.ndarray, reference: np.ndarray, *, k: int = 200) -> np.ndarray:
    """Distance-weighted mean of the reference expression of each query's ``k`` most similar keys.

    Parameters
    ----------
    queries
        Normalised query embeddings (queries x d).
    keys
        Normalised reference keys (references x d).
    reference
        Measured expression of the references (references x genes).
    k
        Neighbours (capped at the number of references).

    Returns
    -------
    numpy.ndarray
        Predicted expression, queries x genes.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import retrieval_predict
    >>> keys = np.eye(3, dtype=np.float32)
    >>> ref = np.array([[1.0], [2.0], [3.0]])
    >>> retrieval_predict(keys[:1], keys, ref, k=1)
    array([[1.]])
    """
    k = int(min(max(k, 1), len(keys)))
    sim = queries @ keys.T
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    out = np.empty((len(queries), reference.shape[1]), dtype=np.float64)
    for i, idx in enumerate(top):
        d = np.abs(keys[idx] - queries[i]).sum(axis=1)
        w = 1.0 / np.maximum(d, 1e-6) ** 2
        out[i] = (w / w.sum()) @ reference[idx]
    return out

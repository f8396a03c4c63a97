"""Handcrafted patch features (scikit-image) and features from a user's torch image encoder (no AnnData).

The summary features describe the stain and the texture of a patch: haematoxylin / eosin / DAB channels of the
colour deconvolution of Ruifrok & Johnston (``skimage.color.rgb2hed``) and RGB (mean, spread, quantiles), the
share of background pixels, grey-level co-occurrence statistics (``skimage.feature.graycomatrix``) and a histogram
of uniform local binary patterns (``skimage.feature.local_binary_pattern``), each over the whole patch and over
the spot's own disc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "channel_stats",
    "encoder_features",
    "module_features",
    "stain_normalize",
    "summary_feature_names",
    "summary_features",
]

_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_LBP_P = 8
_QUANTILES = (0.1, 0.5, 0.9)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _import_skimage() -> Any:
    try:
        import skimage.color
        import skimage.feature
    except ImportError as e:  # pragma: no cover - depends on the environment
        msg = (
            "method='summary' needs scikit-image: pip install 'mixgf[histology]' (or scikit-image). Or pass "
            "method='cnn' with a trained model, or your own encoder."
        )
        raise ImportError(msg) from e
    return skimage


def summary_feature_names() -> list[str]:
    """Names of the columns of :func:`summary_features`.

    Returns
    -------
    list of str
        Feature names.

    Examples
    --------
    >>> from mixgf.engine.histology import summary_feature_names
    >>> names = summary_feature_names()
    >>> len(names), names[0]
    (77, 'patch_H_mean')
    """
    names = []
    for region in ("patch", "spot"):
        for ch in ("H", "E", "D", "R", "G", "B"):
            names += [f"{region}_{ch}_mean", f"{region}_{ch}_std"] + [
                f"{region}_{ch}_q{int(q * 100)}" for q in _QUANTILES
            ]
        names.append(f"{region}_background")
    names += [f"glcm_{p}" for p in _GLCM_PROPS]
    names += [f"lbp_{i}" for i in range(_LBP_P + 2)]
    return names


def _stats(channels: np.ndarray, mask: np.ndarray) -> list[float]:
    """Mean, std and quantiles of each channel over the masked pixels (channels last)."""
    v = channels[mask] if mask.any() else channels.reshape(-1, channels.shape[-1])
    out: list[float] = []
    q = np.quantile(v, _QUANTILES, axis=0)
    for c in range(v.shape[1]):
        out += [float(v[:, c].mean()), float(v[:, c].std())] + [float(x) for x in q[:, c]]
    return out


def summary_features(patches: np.ndarray, *, spot_fraction: float = 1 / 1.5, background: int = 220) -> np.ndarray:
    """Stain, colour and texture features of patches (spots x 77, float32).

    Parameters
    ----------
    patches
        uint8 RGB patches, spots x height x width x 3.
    spot_fraction
        Diameter of the spot's disc relative to the patch side (the second set of colour features is computed on
        it).
    background
        Grey level above which a pixel counts as background (glass / fat).

    Returns
    -------
    numpy.ndarray
        Features; columns named by :func:`summary_feature_names`.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import summary_features
    >>> patches = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    >>> summary_features(patches).shape
    (2, 77)
    """
    sk = _import_skimage()
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        msg = f"patches must be uint8 spots x height x width x 3; got {patches.dtype} {patches.shape}."
        raise ValueError(msg)
    n, h, w, _ = patches.shape
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) <= (spot_fraction * min(h, w) / 2) ** 2
    full = np.ones((h, w), dtype=bool)
    rows = []
    for p in patches:
        rgb = p.astype(np.float32) / 255.0
        hed = sk.color.rgb2hed(rgb).astype(np.float32)
        chans = np.concatenate([hed, rgb], axis=2)
        grey = (sk.color.rgb2gray(rgb) * 255).astype(np.uint8)
        feats: list[float] = []
        for region in (full, disc):
            feats += _stats(chans, region)
            feats.append(float((grey[region] > background).mean()))
        glcm = sk.feature.graycomatrix(
            grey // 8, distances=[1, 3], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32,
            symmetric=True, normed=True,
        )  # fmt: skip
        feats += [float(np.nan_to_num(sk.feature.graycoprops(glcm, prop)).mean()) for prop in _GLCM_PROPS]
        lbp = sk.feature.local_binary_pattern(grey, _LBP_P, 1, method="uniform")
        feats += (np.bincount(lbp.astype(np.int64).ravel(), minlength=_LBP_P + 2) / lbp.size).tolist()
        rows.append(feats)
    return np.asarray(rows, dtype=np.float32).reshape(n, -1)


def patches_to_tensor(patches: np.ndarray, *, normalize: bool = True) -> Any:
    """uint8 patches (spots x h x w x 3) as a float tensor (spots x 3 x h x w), ImageNet-normalised if asked."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255.0
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x


def encoder_features(
    patches: np.ndarray,
    encoder: Callable,
    *,
    batch_size: int = 64,
    device: Any = "cpu",
    normalize: bool = True,
) -> np.ndarray:
    """Features of patches from a torch image encoder (any ``nn.Module``, e.g. a torchvision or timm model).

    Parameters
    ----------
    patches
        uint8 RGB patches, spots x height x width x 3.
    encoder
        Maps a float batch (n x 3 x h x w) to n x ... features (flattened); a module is run in eval mode.
    batch_size
        Patches per forward pass.
    device
        Torch device.
    normalize
        Normalise with the ImageNet channel means and standard deviations first (what ImageNet-trained encoders
        expect).

    Returns
    -------
    numpy.ndarray
        Features, spots x d (float32).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from mixgf.engine.histology import encoder_features
    >>> enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> patches = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    >>> encoder_features(patches, enc).shape
    (3, 4)
    """
    import torch

    was_training = getattr(encoder, "training", False)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(patches), batch_size):
                x = patches_to_tensor(patches[start : start + batch_size], normalize=normalize).to(device)
                out.append(torch.as_tensor(encoder(x)).reshape(len(x), -1).float().cpu().numpy())
    finally:
        if isinstance(encoder, torch.nn.Module) and was_training:
            encoder.train()
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def channel_stats(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the pixels of a set of uint8 patches (one section)."""
    flat = np.asarray(patches, dtype=np.float64).reshape(-1, 3)
    return flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-6)


def stain_normalize(patches: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """Match the per-channel mean and spread of one section's patches to a target (Reinhard-style, in RGB).

    Sections stained or scanned differently then look alike to an encoder; the statistics are taken over all the
    section's patches, so only the image is used.

    Parameters
    ----------
    patches
        uint8 patches of one section (spots x h x w x 3).
    target_mean, target_std
        Per-channel target mean and standard deviation (0-255 scale), e.g. those of the training sections.

    Returns
    -------
    numpy.ndarray
        Normalised uint8 patches.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import stain_normalize
    >>> p = np.random.default_rng(0).integers(100, 150, (4, 8, 8, 3), dtype=np.uint8)
    >>> out = stain_normalize(p, np.array([180.0, 120.0, 170.0]), np.array([20.0, 20.0, 20.0]))
    >>> out.reshape(-1, 3).mean(axis=0).round(-1).tolist()
    [180.0, 120.0, 170.0]
    """
    mean, std = channel_stats(patches)
    x = (np.asarray(patches, dtype=np.float32) - mean) / std * np.asarray(target_std) + np.asarray(target_mean)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def module_features(
    method: Callable, patches: np.ndarray, *, weights: Any = None, batch_size: int = 64, device: Any = "cpu"
) -> np.ndarray:
    """Features of patches from a user's encoder: a torch module (optionally with local weights) or a callable.

    A callable maps the uint8 patches to spots x features; a module runs through :func:`encoder_features`.

    Parameters
    ----------
    method
        A torch ``nn.Module`` (run by :func:`encoder_features`) or a callable.
    patches
        uint8 RGB patches, spots x height x width x 3.
    weights
        Path of a safetensors state dict to load into the module first (modules only).
    batch_size, device
        As in :func:`encoder_features`.

    Returns
    -------
    numpy.ndarray
        Features, spots x d (float32).

    Examples
    --------
    A small randomly initialised convolutional encoder (any torchvision or timm model works the same way) and a
    plain function, on 4 random patches:

    >>> import numpy as np
    >>> import torch
    >>> from mixgf.engine.histology import module_features
    >>> patches = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    >>> _ = torch.manual_seed(0)
    >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> module_features(cnn, patches).shape
    (4, 8)
    >>> module_features(lambda p: p.reshape(len(p), -1, 3).mean(axis=1), patches).shape  # mean colour per patch
    (4, 3)
    """
    import torch

    if isinstance(method, torch.nn.Module):
        if weights is not None:
            from safetensors.torch import load_file

            missing = method.load_state_dict(load_file(str(weights)), strict=False)
            if missing.missing_keys or missing.unexpected_keys:
                msg = (
                    f"weights {weights} do not fit the module: missing {missing.missing_keys[:5]}, unexpected "
                    f"{missing.unexpected_keys[:5]}. Pass the architecture these weights were saved from."
                )
                raise ValueError(msg)
        return encoder_features(patches, method.to(device), batch_size=batch_size, device=device)
    if weights is not None:
        msg = "weights= loads into a torch module; it cannot be used with a plain callable."
        raise ValueError(msg)
    out = np.asarray(method(patches), dtype=np.float32)
    if out.ndim != 2 or len(out) != len(patches):
        msg = f"the feature callable must return spots x features; got shape {out.shape} for {len(patches)} spots."
        raise ValueError(msg)
    return out

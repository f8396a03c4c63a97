"""`HistologyModel`: a trained expression-from-histology model, saved as a model directory.

A directory holds ``histology.safetensors`` (network weights and arrays: reference keys and expression for
retrieval, prototypes and gene parameters for composition, feature standardisation), ``histology.json`` (method,
genes, sizes, parameters, training history) and ``manifest.json`` (size and sha256 of every other file, checked on
load). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._utils._files import model_dir_writer, verify_model_dir

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "HistologyModel"]

FORMAT_NAME = "mixgf-histology"
FORMAT_VERSION = 1
_ARRAYS = "histology.safetensors"
_META = "histology.json"
METHODS = ("retrieval", "prototypes")


def zscore(f: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit standard deviation (constant columns only centred)."""
    sd = f.std(axis=0)
    return (f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


@dataclass
class HistologyModel:
    """Predicts log-normalised expression of spots from their H&E patches (and patch features).

    Made by :func:`mixgf.tl.train_histology_model`, used by :func:`mixgf.tl.predict_expression`; :meth:`save` and
    :meth:`load` store it as a model directory.

    Attributes
    ----------
    method
        ``"retrieval"`` (mclSTExp-style contrastive retrieval) or ``"prototypes"`` (CPNN-style composition).
    genes
        Predicted genes.
    config
        Network sizes, patch geometry (``context``, ``patch_px``), the feature source and its names.
    weights
        Network weights and arrays (name -> array).
    params
        How it was trained (AnnData-side options, version).
    history
        Training record (losses, seconds, spots).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from mixgf.engine.histology import HistologyModel, train_composition
    >>> rng = np.random.default_rng(0)
    >>> M = np.array([[20.0, 1.0], [1.0, 10.0], [5.0, 5.0]])
    >>> P = rng.dirichlet([1, 1], 30)
    >>> cfg, w, hist = train_composition(P, rng.poisson(P @ M.T * 10), M, P, epochs=2)
    >>> cfg |= {
    ...     "feature_source": "custom",
    ...     "feature_mean": [0.0, 0.0],
    ...     "feature_std": [1.0, 1.0],
    ...     "count_fraction": 1.0,
    ...     "types": ["a", "b"],
    ...     "target_sum": 1e4,
    ... }
    >>> model = HistologyModel("prototypes", ["g1", "g2", "g3"], cfg, w)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = HistologyModel.load(model.save(d + "/m"))
    >>> back.predict(features=P[:2]).shape
    (2, 3)
    """

    method: str
    genes: list[str]
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            msg = f"method must be one of {METHODS}; got {self.method!r}."
            raise ValueError(msg)
        self.genes = list(map(str, self.genes))

    def __repr__(self) -> str:
        n_ref = len(self.weights.get("ref_expression", ()))
        ref = f", {n_ref:,} reference spots" if n_ref else ""
        return f"HistologyModel({self.method}, {len(self.genes)} genes{ref})"

    @property
    def uses_patches(self) -> bool:
        """Whether prediction needs the patches (the CNN branch), not only patch features."""
        return bool(self.config.get("use_patches", False))

    @property
    def uses_features(self) -> bool:
        """Whether prediction needs patch features."""
        return int(self.config.get("n_features", 0)) > 0

    def standardize(self, features: np.ndarray) -> np.ndarray:
        """Features standardised as in training: over the given spots (one section) or with the training statistics.

        With ``config["standardize"] == "section"`` every section's features were z-scored over its own spots in
        training, so the query spots (one section) are z-scored over themselves; otherwise the training spots'
        means and standard deviations are used.
        """
        f = np.asarray(features, dtype=np.float64)
        mean = np.asarray(self.config["feature_mean"])
        if f.ndim != 2 or f.shape[1] != len(mean):
            msg = (
                f"the model was trained on {len(mean)} patch features ({self.config.get('feature_source')!r}) but "
                f"got {f.shape}; compute the same features for the query spots."
            )
            raise ValueError(msg)
        if self.config.get("standardize") == "section":
            if len(f) < 2:
                msg = "features are standardised per section: pass all spots of the section (at least 2)."
                raise ValueError(msg)
            return zscore(f).astype(np.float32)
        return ((f - mean) / np.asarray(self.config["feature_std"])).astype(np.float32)

    def normalize_patches(self, patches: np.ndarray) -> np.ndarray:
        """The query section's patches stain-normalised to the training target (when the model was trained so)."""
        if self.config.get("stain_mean") is None:
            return patches
        from ._features import stain_normalize

        return stain_normalize(patches, np.asarray(self.config["stain_mean"]), np.asarray(self.config["stain_std"]))

    def image_embedding(self, patches: np.ndarray, *, batch_size: int = 64, device: Any = "cpu") -> np.ndarray:
        """The trained CNN's embedding of patches (stain-normalised as in training); retrieval models with patches."""
        from ._features import encoder_features
        from ._retrieval import _load, build_retrieval_nets

        img, _ = build_retrieval_nets(self.config)
        img = _load(img, self.weights, "image.").to(device)
        return encoder_features(self.normalize_patches(patches), img.embed, batch_size=batch_size, device=device)

    def predict(
        self, *, patches: np.ndarray | None = None, features: np.ndarray | None = None, k: int = 200,
        device: Any = "cpu",
    ) -> np.ndarray:  # fmt: skip
        """Predicted log-normalised expression (``log1p`` of counts per ``target_sum``), spots x genes.

        Parameters
        ----------
        patches
            uint8 patches (needed when :attr:`uses_patches`).
        features
            Raw (unstandardised) patch features (needed when :attr:`uses_features`).
        k
            Reference spots averaged per query (retrieval).
        device
            Torch device.

        Returns
        -------
        numpy.ndarray
            Predictions.
        """
        if self.uses_patches and patches is None:
            msg = "this model has a CNN branch: pass the spots' patches."
            raise ValueError(msg)
        feats = self.standardize(features) if self.uses_features and features is not None else None
        if self.uses_features and feats is None:
            msg = f"this model needs the patch features {self.config.get('feature_source')!r}: pass features."
            raise ValueError(msg)
        if self.method == "retrieval":
            from ._retrieval import image_queries, retrieval_predict

            patches = None if patches is None else self.normalize_patches(patches)
            q = image_queries(self.config, self.weights, patches=patches, features=feats, device=device)
            return retrieval_predict(q, self.weights["ref_keys"], self.weights["ref_expression"], k=k)
        return np.log1p(self.config["target_sum"] * self.config["count_fraction"] * self.composition(feats)[1])

    def composition(self, features: np.ndarray, *, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """Composition (spots x types) and expression profile of standardised features (prototypes method)."""
        from ._composition import composition_predict

        if self.method != "prototypes":
            msg = "only a method='prototypes' model predicts compositions."
            raise ValueError(msg)
        return composition_predict(self.config, self.weights, features, device=device)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model as a directory (safetensors, JSON, sha256 manifest).

        Parameters
        ----------
        path
            Destination directory.
        overwrite
            Replace an existing histology model directory.

        Returns
        -------
        pathlib.Path
            The directory.
        """
        from safetensors.numpy import save_file

        with model_dir_writer(
            path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="mixgf histology model", overwrite=overwrite
        ) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(tmp / _ARRAYS))
            meta = {"method": self.method, "genes": self.genes, "config": self.config, "params": self.params,
                    "history": self.history}  # fmt: skip
            (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> HistologyModel:
        """Read a directory written by :meth:`save`, checking every file against the manifest.

        Parameters
        ----------
        path
            The directory.

        Returns
        -------
        mixgf.engine.histology.HistologyModel
            The model.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        verify_model_dir(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="mixgf histology model")
        meta = json.loads((path / _META).read_text(encoding="utf-8"))
        weights = dict(load_file(str(path / _ARRAYS)))
        return cls(method=meta["method"], genes=meta["genes"], config=meta["config"], weights=weights,
                   params=meta.get("params", {}), history=meta.get("history", {}))  # fmt: skip

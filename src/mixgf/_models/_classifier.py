"""`CellClassifier`: a fine-tuned encoder + classification head + label list + calibration temperature."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._mixgeneformer import VOCAB_FILE, MixGeneformer, _weights_sha

if TYPE_CHECKING:
    from ..module._heads import ClassifierHead

HEAD_FILE = "head.safetensors"
CLASSIFIER_FILE = "classifier.json"


@dataclass
class CellClassifier:
    """A cell-type (or any label) classifier: encoder, head, classes and a fitted temperature.

    Create one with :func:`mixgf.tl.train_classifier`, apply it with :func:`mixgf.tl.classify`, store it with
    :meth:`save` and read it back with :meth:`load`.

    Attributes
    ----------
    model
        The (fine-tuned) encoder with its vocabulary.
    head
        The linear head on the mean-pooled embedding.
    classes
        Class names, in the order of the head's outputs.
    temperature
        Logits are divided by it before the softmax (fitted on the validation cells; 1 = uncalibrated).
    species
        Species of the training cells; cells of the other species are projected onto its one-to-one orthologs.
    layer
        Hidden state that is pooled.
    metadata
        Training record: labels key, splits, metrics, history, settings.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> clf = mgf.tl.train_classifier(adata, "cell_type", finetune="frozen", max_len=64)
    >>> len(clf.classes), clf.species, clf.layer
    (7, 'human', -1)
    >>> clf.temperature > 0, sorted(clf.metadata)[:3]
    (True, ['base_model', 'base_weights_sha256', 'class_counts'])
    """

    model: MixGeneformer
    head: ClassifierHead
    classes: list[str]
    temperature: float = 1.0
    species: str = "human"
    layer: int = -1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"CellClassifier({len(self.classes)} classes from {self.metadata.get('labels_key', '?')!r}, "
            f"{self.species} cells, T={self.temperature:.3f}, encoder {self.model.name!r})"
        )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a model directory: encoder safetensors, head safetensors, vocabulary, classes, sha256 manifest.

        Parameters
        ----------
        path
            Destination directory.
        overwrite
            Replace an existing model directory.

        Returns
        -------
        pathlib.Path
            The directory.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import mixgf as mgf
        >>> adata = mgf.datasets.pbmc3k()[:200].copy()
        >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
        >>> clf = mgf.tl.train_classifier(adata, "cell_type", finetune="frozen", max_len=64)
        >>> path = clf.save(Path(tempfile.mkdtemp()) / "pbmc_classifier")
        >>> sorted(p.name for p in path.iterdir())
        ['classifier.json', 'config.json', 'head.safetensors', 'manifest.json', 'model.safetensors', 'vocab.json']
        """
        from safetensors.torch import save

        from ..module._checkpoint import save_model_dir

        info = {
            "classes": self.classes,
            "temperature": self.temperature,
            "species": self.species,
            "layer": self.layer,
            "dropout": float(self.head.dropout.p),
        }
        head = save({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()})
        files = {
            VOCAB_FILE: self.model.vocab.to_json().encode(),
            HEAD_FILE: head,
            CLASSIFIER_FILE: json.dumps(info).encode(),
        }
        meta = {**self.metadata, "name": self.model.name, "kind": "cell_classifier", "trained": True}
        return save_model_dir(path, self.model.encoder, extra_files=files, metadata=meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> CellClassifier:
        """Read a classifier directory written by :meth:`save` (every file's sha256 is verified).

        Parameters
        ----------
        path
            The directory.
        device
            Torch device.

        Returns
        -------
        mixgf.CellClassifier
            The classifier.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import mixgf as mgf
        >>> adata = mgf.datasets.pbmc3k()[:200].copy()
        >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
        >>> clf = mgf.tl.train_classifier(adata, "cell_type", finetune="frozen", max_len=64)
        >>> path = clf.save(Path(tempfile.mkdtemp()) / "pbmc_classifier")
        >>> loaded = mgf.CellClassifier.load(path)
        >>> loaded.classes == clf.classes, loaded.temperature == clf.temperature
        (True, True)
        >>> mgf.tl.classify(adata, model=path)  # a classifier directory works as well
        >>> adata.obs["mixgf_label"].cat.categories.tolist() == clf.classes
        True
        """
        from safetensors.torch import load

        from ..genes import Vocabulary
        from ..module._checkpoint import load_model_dir
        from ..module._heads import ClassifierHead

        loaded = load_model_dir(path, device=device)
        if CLASSIFIER_FILE not in loaded.extra_files:
            msg = f"{path} is a model directory but not a cell classifier (no {CLASSIFIER_FILE})."
            raise ValueError(msg)
        info = json.loads(Path(loaded.extra_files[CLASSIFIER_FILE]).read_text())
        state = load(Path(loaded.extra_files[HEAD_FILE]).read_bytes())
        head = ClassifierHead(loaded.config.hidden_size, len(info["classes"]), info.get("dropout", 0.1))
        head.load_state_dict(state)
        head.to(device).eval()
        vocab = Vocabulary.load(loaded.extra_files[VOCAB_FILE])
        meta = dict(loaded.metadata)
        sha = _weights_sha(json.loads((Path(path) / "manifest.json").read_text()))
        model = MixGeneformer(loaded.model, vocab, meta.get("name", Path(path).name), meta, Path(path), sha)
        return cls(model, head, list(info["classes"]), float(info["temperature"]), info["species"], info["layer"], meta)

    def predict_proba(self, tokens: np.ndarray, lengths: np.ndarray, *, device: str = "cpu") -> np.ndarray:
        """Calibrated class probabilities ``[N, n_classes]`` of tokenized cells (tokens of ``self.species``).

        :func:`mixgf.tl.classify` calls it on AnnData (and projects cells of the other species first).

        Parameters
        ----------
        tokens
            ``[N, L]`` right-padded token ids of the classifier's vocabulary.
        lengths
            ``[N]`` tokens per cell (at least 1).
        device
            Torch device.

        Returns
        -------
        numpy.ndarray
            ``[N, n_classes]`` probabilities, columns in the order of :attr:`classes`.

        Examples
        --------
        >>> import numpy as np
        >>> import mixgf as mgf
        >>> adata = mgf.datasets.pbmc3k()[:200].copy()
        >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
        >>> clf = mgf.tl.train_classifier(adata, "cell_type", finetune="frozen", max_len=64)
        >>> proba = clf.predict_proba(
        ...     adata.obsm["mixgf_tokens"][:10], adata.obs["mixgf_tokens_n_tokens"].to_numpy()[:10]
        ... )
        >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1.0))
        ((10, 7), True)
        """
        from ..engine.train._classifier import predict_logits

        max_len = self.metadata.get("config", {}).get("max_len")
        if max_len:  # predict on what the classifier was trained on: each cell's top max_len tokens
            lengths = np.minimum(np.asarray(lengths), int(max_len))
        logits = predict_logits(
            self.model.encoder, self.head, tokens, lengths, special_ids=self.model.vocab.special_ids,
            layer=self.layer, device=device,
        )  # fmt: skip
        z = logits / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

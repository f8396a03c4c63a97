"""`MixGeneformer`: an encoder together with its vocabulary, loaded from a model directory.

A mixgf model directory holds ``config.json`` + ``model.safetensors`` (the encoder), ``vocab.json`` (tokens,
gene medians, tokenization rules) and ``manifest.json`` (sha256 of every file, verified on load, and the model
card's metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._logging import info
from .._utils._files import sha256_file

if TYPE_CHECKING:
    from ..genes import Vocabulary
    from ..module._config import EncoderConfig
    from ..module._encoder import BertEncoderModel

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
VOCAB_FILE = "vocab.json"

_CACHE: dict[tuple[str, str, tuple], MixGeneformer] = {}
"""Verified models by (folder, device, what is on disk): a folder rewritten since it was loaded is read again."""


@dataclass
class MixGeneformer:
    """A Geneformer-family encoder with the vocabulary it was trained on.

    Use :meth:`load` for mixgf model directories (the bundled default with ``source=None``) and
    :meth:`from_huggingface` for Geneformer, Mouse-Geneformer and Mix-Geneformer checkpoints in a local folder.

    Attributes
    ----------
    encoder
        The pure-torch encoder (:class:`mixgf.model.BertEncoderModel`).
    vocab
        Its vocabulary and tokenization rules.
    name
        A short name, recorded with every result.
    metadata
        Model-card metadata (training data, steps, whether it is trained, …).
    path
        The directory it was loaded from, if any.
    weights_sha256
        SHA-256 of ``model.safetensors`` (from the verified manifest), recorded with every result.

    Examples
    --------
    >>> import mixgf as mgf
    >>> model = mgf.MixGeneformer.load()  # the bundled default
    >>> model.vocab.species
    ('human', 'mouse')
    """

    encoder: BertEncoderModel
    vocab: Vocabulary
    name: str = "custom"
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        cfg = self.encoder.config
        if cfg.vocab_size != len(self.vocab):
            msg = (
                f"The encoder has {cfg.vocab_size:,} token embeddings but the vocabulary {self.vocab.name!r} has "
                f"{len(self.vocab):,} tokens: they do not belong together."
            )
            raise ValueError(msg)
        if cfg.max_position_embeddings < self.vocab.rules.max_len:
            msg = (
                f"The vocabulary's rules produce up to {self.vocab.rules.max_len} tokens but the encoder has only "
                f"{cfg.max_position_embeddings} positions."
            )
            raise ValueError(msg)

    @property
    def config(self) -> EncoderConfig:
        """The encoder's configuration (:class:`mixgf.model.EncoderConfig`)."""
        return self.encoder.config

    @property
    def trained(self) -> bool:
        """Whether the weights were trained (the card says so); `False` for a random initialisation."""
        return bool(self.metadata.get("trained", False))

    def __repr__(self) -> str:
        c = self.config
        state = "trained" if self.trained else "UNTRAINED (random weights)"
        return (
            f"MixGeneformer({self.name!r}, {state}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads} heads, FFN {c.intermediate_size}, {c.hidden_act}; {self.vocab!r})"
        )

    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu", verify: bool = True) -> MixGeneformer:
        """Load a mixgf model directory.

        Parameters
        ----------
        source
            A model directory; `None` loads the default model that ships with mixgf.
        device
            Torch device for the weights.
        verify
            Check every file's sha256 against ``manifest.json`` (a corrupt file raises `ValueError`).

        Returns
        -------
        mixgf.MixGeneformer
            The model. Loading the same directory (with ``verify=True``) again returns the same object.

        Examples
        --------
        >>> import mixgf as mgf
        >>> model = mgf.MixGeneformer.load()
        >>> model.name, model.trained
        ('mixgf-default-4L128', True)
        >>> model.config.num_hidden_layers, model.config.hidden_size, model.vocab.rules.max_len
        (4, 128, 1024)
        """
        from ..genes import Vocabulary
        from ..module._checkpoint import load_model_dir

        path = DEFAULT_MODEL_DIR if source is None else Path(source)
        key = (str(path.resolve()), str(device), _dir_stamp(path))
        if key in _CACHE and verify:
            return _CACHE[key]
        if not (path / "manifest.json").is_file():
            hint = (
                " It looks like a Hugging Face checkpoint: use MixGeneformer.from_huggingface(path, vocab=...)."
                if (path / "config.json").is_file()
                else ""
            )
            msg = f"{path} is not a mixgf model directory (no manifest.json).{hint}"
            raise FileNotFoundError(msg)
        loaded = load_model_dir(path, device=device, verify=verify)
        if VOCAB_FILE not in loaded.extra_files:
            msg = f"{path} holds no {VOCAB_FILE}; a mixgf model directory stores its vocabulary."
            raise ValueError(msg)
        vocab = Vocabulary.load(loaded.extra_files[VOCAB_FILE])
        manifest = json.loads((path / "manifest.json").read_text())
        sha = _weights_sha(manifest)
        meta = dict(loaded.metadata)
        model = cls(loaded.model, vocab, meta.get("name", path.name), meta, path, sha)
        if not model.trained:
            info(f"model {model.name!r} is untrained (random weights): use it to try the API, not for biology")
        if verify:  # only verified models are shared by later load() calls
            _CACHE[key] = model
        return model

    @classmethod
    def from_huggingface(
        cls,
        path: str | Path,
        *,
        vocab: str | Path | Vocabulary | None = None,
        name: str | None = None,
        device: str = "cpu",
    ) -> MixGeneformer:
        """Import a Geneformer / Mouse-Geneformer / Mix-Geneformer checkpoint from a local folder.

        Parameters
        ----------
        path
            Folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read with
            ``torch.load(weights_only=True)`` only).
        vocab
            The vocabulary the checkpoint was trained with: ``"geneformer-v1"`` for the 2,048-token V1 models,
            ``"geneformer-v2"`` for the 4,096-token models, or a vocabulary JSON converted from the model's
            token dictionary (:meth:`mixgf.genes.Vocabulary.from_geneformer`). `None`: the folder brings its own
            Geneformer dictionaries (Mouse-Geneformer, Mix-Geneformer, or a V2 model with its files):
            ``token_dictionary*.pkl``, ``gene_median_dictionary*.pkl`` and, for a token dictionary with ``<cls>`` /
            ``<eos>``, ``ensembl_mapping_dict*.pkl``, read with :func:`mixgf.genes.read_geneformer_pickle`; the
            rules follow from them (``<cls>``/``<eos>`` present: V2's rules with the folder's mapping dictionary).
            A missing file is an error that lists what is missing.
        name
            Name to record; defaults to the folder name.
        device
            Torch device.

        Returns
        -------
        mixgf.MixGeneformer
            The model, marked as trained.

        Examples
        --------
        A small randomly initialised BERT written with ``transformers`` stands in for a downloaded Geneformer
        checkpoint here:

        >>> import tempfile
        >>> from transformers import BertConfig, BertForMaskedLM
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("geneformer-v1")
        >>> config = BertConfig(
        ...     vocab_size=len(vocab),
        ...     hidden_size=32,
        ...     num_hidden_layers=2,
        ...     num_attention_heads=2,
        ...     intermediate_size=64,
        ...     max_position_embeddings=2048,
        ...     hidden_act="relu",
        ... )
        >>> path = tempfile.mkdtemp()
        >>> BertForMaskedLM(config).save_pretrained(path)
        >>> model = mgf.MixGeneformer.from_huggingface(path, vocab="geneformer-v1", name="tiny-bert")
        >>> model.name, model.config.num_hidden_layers, model.config.hidden_act
        ('tiny-bert', 2, 'relu')
        """
        from ..genes import Vocabulary
        from ..genes._vocab import vocabulary_from_geneformer_folder
        from ..module._hf import import_hf_bert

        vocab = vocabulary_from_geneformer_folder(path, name=name) if vocab is None else vocab
        encoder, _ = import_hf_bert(path, device=device)
        path = Path(path)
        meta = {"name": name or path.name, "trained": True, "source": f"Hugging Face BERT checkpoint {path}"}
        weights = path / "model.safetensors"
        sha = sha256_file(weights) if weights.exists() else sha256_file(path / "pytorch_model.bin")
        return cls(encoder, Vocabulary.load(vocab), meta["name"], meta, path, sha)

    def save(self, path: str | Path, *, overwrite: bool = False, extra_files: dict[str, bytes] | None = None) -> Path:
        """Write the model as a mixgf model directory (safetensors + vocabulary + sha256 manifest).

        Parameters
        ----------
        path
            Destination directory.
        overwrite
            Replace an existing model directory.
        extra_files
            More files to store with the model (``{name: bytes}``).

        Returns
        -------
        pathlib.Path
            The directory.

        Examples
        --------
        An encoder (here the bundled model's, e.g. one trained with :func:`mixgf.model.pretrain_encoder`) and its
        vocabulary, saved as a model directory that :meth:`load` reads:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import mixgf as mgf
        >>> default = mgf.MixGeneformer.load()
        >>> model = mgf.MixGeneformer(default.encoder, default.vocab, name="my-model", metadata={"trained": True})
        >>> path = model.save(Path(tempfile.mkdtemp()) / "my_model")
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'manifest.json', 'model.safetensors', 'vocab.json']
        >>> loaded = mgf.MixGeneformer.load(path)
        >>> loaded.name, loaded.weights_sha256 == default.weights_sha256
        ('my-model', True)
        """
        from ..module._checkpoint import save_model_dir

        meta = {**self.metadata, "name": self.name}
        out = save_model_dir(
            path,
            self.encoder,
            extra_files={**(extra_files or {}), VOCAB_FILE: self.vocab.to_json().encode()},
            metadata=meta,
            overwrite=overwrite,
        )
        manifest = json.loads((out / "manifest.json").read_text())
        for key, cached in list(_CACHE.items()):  # this object now stands for the saved copy, not its source
            if cached is self:
                del _CACHE[key]
        self.path, self.weights_sha256 = out, _weights_sha(manifest)
        return out


def _dir_stamp(path: Path) -> tuple:
    """Size and modification time (ns) of every file of a model folder: changes whenever a file is rewritten."""
    if not path.is_dir():
        return ()
    return tuple(
        (f.name, st.st_size, st.st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file() and (st := f.stat())
    )


def _weights_sha(manifest: dict[str, Any]) -> str | None:
    files = manifest.get("files", {})
    entry = files.get("model.safetensors") if isinstance(files, dict) else None
    return entry.get("sha256") if isinstance(entry, dict) else None


def load_model(source: str | Path | None = None, *, device: str = "cpu") -> MixGeneformer:
    """Load a mixgf model directory (`None`: the bundled default). Shortcut for :meth:`MixGeneformer.load`.

    Parameters
    ----------
    source
        Model directory or `None`.
    device
        Torch device.

    Returns
    -------
    mixgf.MixGeneformer
        The model.

    Examples
    --------
    >>> import mixgf as mgf
    >>> model = mgf.load_model()
    >>> model is mgf.MixGeneformer.load()  # loaded once, then cached
    True
    >>> model.vocab.species
    ('human', 'mouse')
    """
    return MixGeneformer.load(source, device=device)

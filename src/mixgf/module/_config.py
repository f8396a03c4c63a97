"""Configuration of the BERT-style encoder."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("mixgf")

__all__ = ["SUPPORTED_ACTIVATIONS", "EncoderConfig"]

#: Activation functions understood by :class:`EncoderConfig` (``"gelu"`` is the exact erf form).
SUPPORTED_ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu")

# Hugging Face spellings that mean the same function as one of ours.
_HF_ACTIVATION_ALIASES = {"relu": "relu", "gelu": "gelu", "silu": "silu", "swish": "silu"}


@dataclass
class EncoderConfig:
    """Hyper-parameters of a post-LayerNorm BERT encoder (Geneformer family).

    Parameters
    ----------
    vocab_size
        Number of rows of the token embedding table.
    hidden_size
        Width of the residual stream.
    num_hidden_layers
        Number of transformer blocks.
    num_attention_heads
        Number of attention heads; must divide ``hidden_size``.
    intermediate_size
        Width of the feed-forward hidden layer.
    hidden_act
        Activation of the feed-forward layer and the MLM transform: ``"relu"``, ``"gelu"``
        (exact erf GELU, as Hugging Face ``"gelu"``) or ``"silu"``.
    max_position_embeddings
        Number of learned absolute positions (maximum input length).
    type_vocab_size
        Rows of the token-type table (only row 0 is ever used).
    layer_norm_eps
        Epsilon of every LayerNorm.
    pad_token_id
        Id of the padding token.
    hidden_dropout_prob
        Dropout after the embeddings and after each residual branch (training only).
    attention_probs_dropout_prob
        Dropout on the attention probabilities (training only).
    initializer_range
        Standard deviation of the normal initialisation of fresh weights.
    has_mlm_head
        Whether the model carries a masked-language-model head.
    tie_word_embeddings
        Whether the MLM decoder reuses the word embedding matrix (the BERT default).

    Examples
    --------
    >>> from mixgf.model import EncoderConfig
    >>> config = EncoderConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    >>> config.head_dim
    16
    >>> EncoderConfig.from_dict(config.to_dict()) == config
    True
    >>> EncoderConfig(vocab_size=1000, hidden_size=64, num_attention_heads=3)
    Traceback (most recent call last):
    ...
    ValueError: hidden_size (64) must be divisible by num_attention_heads (3).

    The configuration of the bundled model:

    >>> import mixgf as mgf
    >>> mgf.MixGeneformer.load().config.hidden_act
    'silu'
    """

    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    max_position_embeddings: int = 2048
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.02
    attention_probs_dropout_prob: float = 0.02
    initializer_range: float = 0.02
    has_mlm_head: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"EncoderConfig.{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        if self.hidden_size % self.num_attention_heads != 0:
            msg = (
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
            raise ValueError(msg)
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            msg = f"hidden_act must be one of {SUPPORTED_ACTIVATIONS}, got {self.hidden_act!r}."
            raise ValueError(msg)
        if not 0 <= self.pad_token_id < self.vocab_size:
            msg = f"pad_token_id ({self.pad_token_id}) must lie in [0, vocab_size={self.vocab_size})."
            raise ValueError(msg)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = float(getattr(self, name))
            if not 0.0 <= value < 1.0:
                msg = f"EncoderConfig.{name} must lie in [0, 1), got {value!r}."
                raise ValueError(msg)
        if not self.layer_norm_eps > 0:
            msg = f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}."
            raise ValueError(msg)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dictionary.

        Returns
        -------
        dict
            One entry per field.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """Build a configuration from :meth:`to_dict` output.

        Parameters
        ----------
        d
            Mapping of field names to values; unknown keys are an error.

        Returns
        -------
        EncoderConfig
            The configuration.
        """
        if not isinstance(d, dict):
            msg = f"Expected a dict for EncoderConfig, got {type(d).__name__}."
            raise TypeError(msg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            msg = f"Unknown EncoderConfig field(s): {unknown}. Known fields: {sorted(known)}."
            raise ValueError(msg)
        if "vocab_size" not in d:
            msg = "EncoderConfig requires 'vocab_size'."
            raise ValueError(msg)
        return cls(**d)

    def save_json(self, path: str | Path) -> None:
        """Write the configuration to a JSON file.

        Parameters
        ----------
        path
            Destination file.
        """
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load_json(cls, path: str | Path) -> EncoderConfig:
        """Read a configuration written by :meth:`save_json`.

        Parameters
        ----------
        path
            JSON file.

        Returns
        -------
        EncoderConfig
            The configuration.
        """
        with Path(path).open(encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """Translate a Hugging Face BERT ``config.json`` dictionary.

        Parameters
        ----------
        d
            Parsed ``config.json`` of a ``BertModel`` / ``BertForMaskedLM`` checkpoint.

        Returns
        -------
        EncoderConfig
            The equivalent configuration. ``has_mlm_head`` is set to ``True``; the importer
            adjusts it to what the weights contain.

        Raises
        ------
        ValueError
            If the checkpoint is not an absolute-position, encoder-only BERT with a supported activation.
        """
        model_type = d.get("model_type")
        if model_type != "bert":
            msg = (
                f"Only Hugging Face BERT checkpoints can be imported (config.json 'model_type' must be 'bert', "
                f"got {model_type!r})."
            )
            raise ValueError(msg)
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            msg = (
                f"Unsupported position_embedding_type {pos_type!r}: only 'absolute' position embeddings "
                "(as used by Geneformer) are implemented."
            )
            raise ValueError(msg)
        if d.get("is_decoder", False) or d.get("add_cross_attention", False):
            msg = "Decoder / cross-attention BERT checkpoints are not supported; an encoder-only BERT is required."
            raise ValueError(msg)
        act = d.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in _HF_ACTIVATION_ALIASES:
            msg = (
                f"Unsupported hidden_act {act!r} in config.json; supported: "
                f"{sorted(_HF_ACTIVATION_ALIASES)} ('gelu' is the exact erf GELU)."
            )
            raise ValueError(msg)
        if "vocab_size" not in d:
            msg = "config.json lacks 'vocab_size'."
            raise ValueError(msg)
        pad = d.get("pad_token_id")
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d.get("hidden_size", 768)),
            num_hidden_layers=int(d.get("num_hidden_layers", 12)),
            num_attention_heads=int(d.get("num_attention_heads", 12)),
            intermediate_size=int(d.get("intermediate_size", 3072)),
            hidden_act=_HF_ACTIVATION_ALIASES[act],
            max_position_embeddings=int(d.get("max_position_embeddings", 512)),
            type_vocab_size=int(d.get("type_vocab_size", 2)),
            layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
            pad_token_id=0 if pad is None else int(pad),
            hidden_dropout_prob=float(d.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(d.get("attention_probs_dropout_prob", 0.1)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            has_mlm_head=True,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        )

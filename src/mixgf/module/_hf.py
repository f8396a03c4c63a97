"""Import Hugging Face BERT checkpoints (Geneformer, Mouse-Geneformer, Mix-Geneformer) as mixgf encoders.

Weights are read with :mod:`safetensors`, and legacy ``pytorch_model.bin`` files only with
``torch.load(..., weights_only=True)``: nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._checkpoint import _build_model, _check_file_name, _listing, _read_safetensors, _shape_errors, check_state_dict
from ._config import EncoderConfig

if TYPE_CHECKING:
    from ._encoder import BertEncoderModel

logger = logging.getLogger("mixgf")

__all__ = ["hf_to_mixgf_state_dict", "import_hf_bert"]


_HF_LAYER_PARTS = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_HF_EMBEDDING_PARTS = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
}
_HF_HEAD_PARTS = {
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm",
}
# Heads and buffers that an encoder does not need.
_HF_IGNORED_PREFIXES = ("pooler.", "classifier.", "cls.seq_relationship.", "qa_outputs.")
_HF_SILENT = ("embeddings.position_ids", "embeddings.token_type_ids")


def _hf_expected_shapes(config: EncoderConfig) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """Expected (prefix-less) Hugging Face names/shapes and the subset that may be absent."""
    h, i_size, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for layer in range(config.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (h, h)
            shapes[f"{p}attention.self.{name}.bias"] = (h,)
        shapes[f"{p}attention.output.dense.weight"] = (h, h)
        shapes[f"{p}attention.output.dense.bias"] = (h,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = (h,)
        shapes[f"{p}attention.output.LayerNorm.bias"] = (h,)
        shapes[f"{p}intermediate.dense.weight"] = (i_size, h)
        shapes[f"{p}intermediate.dense.bias"] = (i_size,)
        shapes[f"{p}output.dense.weight"] = (h, i_size)
        shapes[f"{p}output.dense.bias"] = (h,)
        shapes[f"{p}output.LayerNorm.weight"] = (h,)
        shapes[f"{p}output.LayerNorm.bias"] = (h,)
    optional: set[str] = set()
    if config.has_mlm_head:
        shapes["cls.predictions.transform.dense.weight"] = (h, h)
        shapes["cls.predictions.transform.dense.bias"] = (h,)
        shapes["cls.predictions.transform.LayerNorm.weight"] = (h,)
        shapes["cls.predictions.transform.LayerNorm.bias"] = (h,)
        shapes["cls.predictions.bias"] = (v,)
        shapes["cls.predictions.decoder.bias"] = (v,)
        shapes["cls.predictions.decoder.weight"] = (v, h)
        # The bias may be stored under either name; the decoder matrix is omitted when tied.
        optional |= {"cls.predictions.bias", "cls.predictions.decoder.bias"}
        if config.tie_word_embeddings:
            optional.add("cls.predictions.decoder.weight")
    return shapes, frozenset(optional)


def _normalise_hf_name(key: str) -> str:
    if key.startswith("bert."):
        key = key[len("bert.") :]
    # Very old (TF-converted) checkpoints name LayerNorm parameters gamma/beta.
    if key.endswith(".gamma"):
        key = key[: -len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[: -len(".beta")] + ".bias"
    return key


def hf_to_mixgf_state_dict(
    hf_state: Mapping[str, torch.Tensor],
    config: EncoderConfig,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], EncoderConfig]:
    """Map a Hugging Face BERT state dict onto mixgf parameter names.

    Parameters
    ----------
    hf_state
        State dict of ``BertForMaskedLM`` (``bert.``-prefixed) or ``BertModel`` (no prefix).
        ``pooler.*``, ``classifier.*`` and NSP weights are dropped with a log message.
    config
        Configuration from :meth:`EncoderConfig.from_hf_dict`.
    source
        Name used in messages.

    Returns
    -------
    state : dict
        mixgf state dict (q/k/v fused into ``layers.{i}.qkv``).
    config : EncoderConfig
        ``config`` with ``has_mlm_head`` set to whether the checkpoint has an MLM head.

    Raises
    ------
    ValueError
        Listing missing, unexpected and mis-shaped tensors (Hugging Face names, without ``bert.``).

    Examples
    --------
    >>> from transformers import BertConfig, BertForMaskedLM
    >>> from mixgf.model import EncoderConfig, hf_to_mixgf_state_dict
    >>> hf = BertForMaskedLM(
    ...     BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ... )
    >>> state, config = hf_to_mixgf_state_dict(hf.state_dict(), EncoderConfig.from_hf_dict(hf.config.to_dict()))
    >>> state["layers.0.qkv.weight"].shape  # query, key and value fused
    torch.Size([96, 32])
    >>> config.has_mlm_head, config.hidden_act
    (True, 'gelu')
    """
    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in hf_state.items():
        name = _normalise_hf_name(key)
        if name in _HF_SILENT:
            continue
        if name.startswith(_HF_IGNORED_PREFIXES):
            ignored.append(key)
            continue
        if name in state:
            msg = f"{source} contains {name!r} twice (with and without the 'bert.' prefix)."
            raise ValueError(msg)
        if not isinstance(value, torch.Tensor):
            msg = f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor."
            raise ValueError(msg)
        state[name] = value
    if ignored:
        logger.info("Ignoring %d tensor(s) not used by the encoder in %s: %s", len(ignored), source, _listing(ignored))

    has_head = any(k.startswith("cls.predictions.") for k in state)
    config = replace(config, has_mlm_head=has_head)
    expected, optional = _hf_expected_shapes(config)
    problems = _shape_errors({k: tuple(v.shape) for k, v in state.items()}, expected, optional)
    if has_head and "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" not in state:
        problems.append("missing keys [cls.predictions.bias]")
    non_float = sorted(k for k, v in state.items() if not v.is_floating_point())
    if non_float:
        problems.append(f"non-floating-point tensors {_listing(non_float)}")
    if problems:
        msg = f"{source} is not a BERT checkpoint matching its config.json: " + "; ".join(problems) + "."
        raise ValueError(msg)

    out: dict[str, torch.Tensor] = {}
    for hf_name, ours in _HF_EMBEDDING_PARTS.items():
        for suffix in ("weight", "bias"):
            if f"{hf_name}.{suffix}" in state:
                out[f"{ours}.{suffix}"] = state[f"{hf_name}.{suffix}"]
    for layer in range(config.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for suffix in ("weight", "bias"):
            out[f"layers.{layer}.qkv.{suffix}"] = torch.cat(
                [state[f"{p}attention.self.{n}.{suffix}"] for n in ("query", "key", "value")], dim=0
            )
            for hf_part, ours in _HF_LAYER_PARTS.items():
                out[f"layers.{layer}.{ours}.{suffix}"] = state[f"{p}{hf_part}.{suffix}"]
    if has_head:
        for hf_name, ours in _HF_HEAD_PARTS.items():
            for suffix in ("weight", "bias"):
                out[f"{ours}.{suffix}"] = state[f"{hf_name}.{suffix}"]
        bias = state.get("cls.predictions.bias")
        decoder_bias = state.get("cls.predictions.decoder.bias")
        if bias is None:
            bias = decoder_bias
        elif decoder_bias is not None and not torch.equal(bias, decoder_bias):
            logger.warning("%s: cls.predictions.bias and decoder.bias differ; using cls.predictions.bias.", source)
        out["mlm_head.bias"] = bias
        decoder = state.get("cls.predictions.decoder.weight")
        if config.tie_word_embeddings:
            word = state["embeddings.word_embeddings.weight"]
            if decoder is not None and not torch.equal(decoder, word):
                logger.warning(
                    "%s: the MLM decoder matrix differs from the word embeddings although the config ties them; "
                    "using the word embeddings (as transformers does).",
                    source,
                )
        else:
            out["mlm_head.decoder"] = decoder
    return out, config


def _torch_load_weights_only(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as err:
        msg = (
            f"Refusing to load {file}: it cannot be read with torch.load(weights_only=True), so it is either "
            f"corrupt or contains arbitrary Python objects (possible malicious pickle). Details: {err}"
        )
        raise ValueError(msg) from err
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        msg = f"{file} does not contain a plain {{name: tensor}} state dict."
        raise ValueError(msg)
    return obj


def _read_sharded(path: Path, index_name: str, reader: Any) -> dict[str, torch.Tensor]:
    try:
        index = json.loads((path / index_name).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        msg = f"{path / index_name} is not a valid shard index."
        raise ValueError(msg) from err
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        _check_file_name(shard)
        state.update(reader(path / shard))
    return state


def _read_hf_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    candidates = [
        ("model.safetensors", lambda: _read_safetensors(path / "model.safetensors")),
        (
            "model.safetensors.index.json",
            lambda: _read_sharded(path, "model.safetensors.index.json", _read_safetensors),
        ),
        ("pytorch_model.bin", lambda: _torch_load_weights_only(path / "pytorch_model.bin")),
        (
            "pytorch_model.bin.index.json",
            lambda: _read_sharded(path, "pytorch_model.bin.index.json", _torch_load_weights_only),
        ),
    ]
    for name, read in candidates:
        if (path / name).is_file():
            return read(), name
    msg = (
        f"No weights found in {path}: expected model.safetensors, pytorch_model.bin or a sharded index (*.index.json)."
    )
    raise FileNotFoundError(msg)


def import_hf_bert(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
) -> tuple[BertEncoderModel, EncoderConfig]:
    """Import a Hugging Face BERT checkpoint (Geneformer, Mouse-Geneformer, Mix-Geneformer).

    Parameters
    ----------
    path
        Directory with ``config.json`` and ``model.safetensors`` (preferred), a sharded safetensors
        index, or ``pytorch_model.bin`` (read only with ``torch.load(weights_only=True)``).
        ``BertForMaskedLM`` (``bert.``-prefixed) and bare ``BertModel`` checkpoints are accepted;
        pooler, classifier and NSP weights are ignored.
    device
        Device to place the model on.

    Returns
    -------
    model : BertEncoderModel
        The encoder in eval mode (with an MLM head when the checkpoint has one).
    config : EncoderConfig
        Its configuration.

    Raises
    ------
    ValueError
        If the configuration is not an absolute-position BERT, a pickle is unsafe, or the weights do
        not match ``config.json``.

    Examples
    --------
    A small randomly initialised ``transformers`` BERT stands in for a Geneformer checkpoint; the imported
    encoder computes the same hidden states:

    >>> import tempfile
    >>> import torch
    >>> from transformers import BertConfig, BertForMaskedLM
    >>> from mixgf.model import import_hf_bert
    >>> hf = BertForMaskedLM(
    ...     BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ... ).eval()
    >>> path = tempfile.mkdtemp()
    >>> hf.save_pretrained(path)
    >>> model, config = import_hf_bert(path)
    >>> config.num_hidden_layers, model.mlm_head is not None
    (2, True)
    >>> ids = torch.tensor([[5, 6, 7, 8]])
    >>> with torch.no_grad():
    ...     same = torch.allclose(model(ids), hf.bert(ids).last_hidden_state, atol=1e-5)
    >>> same
    True
    """
    path = Path(path)
    if not path.is_dir():
        msg = f"{path} is not a directory."
        raise FileNotFoundError(msg)
    config_path = path / "config.json"
    if not config_path.is_file():
        msg = f"{path} has no config.json; not a Hugging Face checkpoint."
        raise FileNotFoundError(msg)
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{config_path} is not valid JSON."
        raise ValueError(msg) from err
    if not isinstance(hf_config, dict):
        msg = f"{config_path} does not hold a JSON object."
        raise ValueError(msg)
    config = EncoderConfig.from_hf_dict(hf_config)
    hf_state, weights_name = _read_hf_weights(path)
    state, config = hf_to_mixgf_state_dict(hf_state, config, source=str(path / weights_name))
    check_state_dict(state, config, source=str(path / weights_name))
    model = _build_model(config, state, device)
    logger.info(
        "Imported Hugging Face BERT from %s (%d layers, hidden %d, %s MLM head).",
        path,
        config.num_hidden_layers,
        config.hidden_size,
        "with" if config.has_mlm_head else "without",
    )
    return model, config

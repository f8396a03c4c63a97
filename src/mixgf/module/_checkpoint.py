"""mixgf model directories (safetensors + manifest); the Hugging Face BERT importer is in ``_hf``.

A mixgf model directory holds

* ``config.json`` — :class:`~mixgf.model.EncoderConfig`,
* ``model.safetensors`` — weights under mixgf's parameter names,
* any extra files given by the caller (vocabulary, gene medians, ...),
* ``manifest.json`` — format name and version, the size and sha256 of every other file, and
  free-form JSON metadata.

Nothing here unpickles arbitrary objects: weights are read with :mod:`safetensors`, and legacy
``pytorch_model.bin`` files only with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._utils._files import atomic_write_bytes, fsync_dir, fsync_file, sha256_file
from ._config import EncoderConfig
from ._encoder import BertEncoderModel

logger = logging.getLogger("mixgf")

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "LoadedModel",
    "check_state_dict",
    "expected_state_shapes",
    "load_model_dir",
    "save_model_dir",
    "verify_model_dir",
]

#: Value of ``manifest.json["format"]``.
FORMAT_NAME = "mixgf-model"
#: Current (and highest readable) ``manifest.json["format_version"]``.
FORMAT_VERSION = 1
#: File names inside a model directory.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
_RESERVED = frozenset({CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_LISTED = 12


class LoadedModel(NamedTuple):
    """Result of :func:`load_model_dir` (unpacks as a 4-tuple).

    Attributes
    ----------
    model
        The encoder, in eval mode, on the requested device.
    config
        Its configuration.
    extra_files
        Paths of the extra files stored with the model, by file name.
    metadata
        The JSON metadata given to :func:`save_model_dir`.

    Examples
    --------
    >>> import mixgf as mgf
    >>> from mixgf.model import load_model_dir
    >>> loaded = load_model_dir(mgf.MixGeneformer.load().path)  # the bundled model's directory
    >>> loaded.config.num_hidden_layers, sorted(loaded.extra_files), loaded.metadata["name"]
    (4, ['heldout.json', 'vocab.json'], 'mixgf-default-4L128')
    >>> model, config, extra_files, metadata = loaded  # unpacks as a tuple
    >>> model.training
    False
    """

    model: BertEncoderModel
    config: EncoderConfig
    extra_files: dict[str, Path]
    metadata: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _check_file_name(name: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in {".", ".."}:
        msg = f"Invalid file name {name!r}: use a plain file name (letters, digits, '_', '-', '.'; no directories)."
        raise ValueError(msg)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _shape_errors(
    got: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    optional: frozenset[str] = frozenset(),
) -> list[str]:
    missing = sorted(k for k in expected if k not in got and k not in optional)
    unexpected = sorted(k for k in got if k not in expected)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(got[k])} vs config {tuple(expected[k])}"
        for k in got
        if k in expected and tuple(got[k]) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    return problems


def expected_state_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a :class:`BertEncoderModel` built from ``config``.

    Parameters
    ----------
    config
        Model configuration.

    Returns
    -------
    dict
        ``{name: shape}`` of every entry of the model's state dict.

    Examples
    --------
    >>> from mixgf.model import EncoderConfig, expected_state_shapes
    >>> config = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    >>> shapes = expected_state_shapes(config)
    >>> shapes["embeddings.word.weight"], shapes["layers.0.qkv.weight"]  # q, k and v fused
    ((100, 32), (96, 32))
    """
    with torch.device("meta"):
        model = BertEncoderModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(state: Mapping[str, torch.Tensor], config: EncoderConfig, source: str = "checkpoint") -> None:
    """Validate tensor names and shapes against a configuration.

    Parameters
    ----------
    state
        Mapping of mixgf parameter names to tensors.
    config
        Configuration the weights are meant for.
    source
        Name used in the error message (usually the file).

    Raises
    ------
    ValueError
        Listing every missing, unexpected and mis-shaped tensor.

    Examples
    --------
    >>> from mixgf.model import BertEncoderModel, EncoderConfig, check_state_dict
    >>> config = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    >>> state = BertEncoderModel(config).state_dict()
    >>> check_state_dict(state, config)  # matches: returns None
    >>> del state["layers.0.qkv.weight"]
    >>> check_state_dict(state, config, source="my.safetensors")
    Traceback (most recent call last):
    ...
    ValueError: Weights in my.safetensors do not match the model configuration: missing keys [layers.0.qkv.weight].
    """
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = _shape_errors(got, expected_state_shapes(config))
    bad_dtype = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad_dtype:
        problems.append(f"non-floating-point tensors {_listing(bad_dtype)}")
    if problems:
        msg = f"Weights in {source} do not match the model configuration: " + "; ".join(problems) + "."
        raise ValueError(msg)


def _build_model(config: EncoderConfig, state: dict[str, torch.Tensor], device: str | torch.device) -> BertEncoderModel:
    # Build on the meta device (no random initialisation), then adopt the checked fp32 tensors.
    with torch.device("meta"):
        model = BertEncoderModel(config)
    state = {k: v.to(torch.float32).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    model.eval()
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        msg = f"Could not read {path.name} as safetensors ({err}); the checkpoint is corrupt or not a safetensors file."
        raise ValueError(msg) from err


# --------------------------------------------------------------------------------------------------
# mixgf model directories
# --------------------------------------------------------------------------------------------------


def save_model_dir(
    path: str | os.PathLike[str],
    model: BertEncoderModel,
    *,
    extra_files: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically.

    Everything is written into ``<path>.partial-<pid>`` first and renamed into place at the end,
    so a crash never leaves a half-written ``path``.

    Parameters
    ----------
    path
        Destination directory.
    model
        Model to store (weights are written in their current dtype).
    extra_files
        Additional files, ``{file name: content}`` (e.g. ``"vocab.json"``). Names must be plain file
        names other than ``config.json``, ``model.safetensors`` and ``manifest.json``.
    metadata
        JSON-serialisable metadata stored in ``manifest.json``.
    overwrite
        Replace an existing model directory (one holding ``manifest.json``) or an empty directory.

    Returns
    -------
    pathlib.Path
        The directory written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false, or if it exists but is not a model directory.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import mixgf as mgf
    >>> from mixgf.model import load_model_dir, save_model_dir
    >>> encoder = mgf.MixGeneformer.load().encoder
    >>> path = save_model_dir(
    ...     Path(tempfile.mkdtemp()) / "encoder",
    ...     encoder,
    ...     extra_files={"notes.txt": b"fine-tuned on pbmc3k"},
    ...     metadata={"name": "my-encoder"},
    ... )
    >>> sorted(p.name for p in path.iterdir())
    ['config.json', 'manifest.json', 'model.safetensors', 'notes.txt']
    >>> load_model_dir(path).metadata
    {'name': 'my-encoder'}
    """
    path = Path(path)
    extra = dict(extra_files or {})
    for name, content in extra.items():
        _check_file_name(name)
        if name in _RESERVED:
            msg = f"Extra file name {name!r} is reserved for the model directory itself."
            raise ValueError(msg)
        if not isinstance(content, bytes | bytearray | memoryview):
            msg = f"Extra file {name!r} must be given as bytes, got {type(content).__name__}."
            raise TypeError(msg)
    meta = dict(metadata or {})
    try:
        meta_json = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        msg = f"metadata must be JSON-serialisable: {err}"
        raise ValueError(msg) from err
    if path.exists() or path.is_symlink():
        if not overwrite:
            msg = f"{path} already exists; pass overwrite=True to replace it."
            raise FileExistsError(msg)
        if not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST_NAME).is_file()):
            msg = f"Refusing to overwrite {path}: it is not a mixgf model directory (no {MANIFEST_NAME})."
            raise FileExistsError(msg)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.config.save_json(tmp / CONFIG_NAME)
        fsync_file(tmp / CONFIG_NAME)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        fsync_file(tmp / WEIGHTS_NAME)
        for name, content in extra.items():
            atomic_write_bytes(tmp / name, bytes(content))
        files = {}
        for name in [CONFIG_NAME, WEIGHTS_NAME, *sorted(extra)]:
            file = tmp / name
            files[name] = {"sha256": sha256_file(file), "size": file.stat().st_size}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "files": files,
            "metadata": meta_json,
        }
        atomic_write_bytes(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        fsync_dir(tmp)
        if path.exists() or path.is_symlink():
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Saved model directory %s (%d extra file(s)).", path, len(extra))
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        msg = f"{path} is not a directory."
        raise FileNotFoundError(msg)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        hint = ""
        if (path / CONFIG_NAME).is_file() and (
            (path / "pytorch_model.bin").is_file() or (path / WEIGHTS_NAME).is_file()
        ):
            hint = " It looks like a Hugging Face checkpoint; use mixgf.model.import_hf_bert()."
        msg = f"{path} is not a mixgf model directory: {MANIFEST_NAME} is missing.{hint}"
        raise ValueError(msg)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{MANIFEST_NAME} in {path} is not valid JSON; the checkpoint is corrupt."
        raise ValueError(msg) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        msg = f"{MANIFEST_NAME} in {path} does not describe a {FORMAT_NAME!r} directory."
        raise ValueError(msg)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        msg = f"{MANIFEST_NAME} in {path} has an invalid format_version {version!r}."
        raise ValueError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"{path} uses model-directory format version {version}, newer than this mixgf supports "
            f"({FORMAT_VERSION}); upgrade mixgf."
        )
        raise ValueError(msg)
    files = manifest.get("files")
    if not isinstance(files, dict):
        msg = f"{MANIFEST_NAME} in {path} has no 'files' table; the checkpoint is corrupt."
        raise ValueError(msg)
    for name, entry in files.items():
        _check_file_name(name)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            msg = f"{MANIFEST_NAME} entry for {name!r} lacks sha256/size; the checkpoint is corrupt."
            raise ValueError(msg)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if name not in files:
            msg = f"{MANIFEST_NAME} in {path} does not list {name}; the checkpoint is incomplete."
            raise ValueError(msg)
    return manifest


def verify_model_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the size and sha256 of every file listed in ``manifest.json``.

    Parameters
    ----------
    path
        Model directory.

    Returns
    -------
    dict
        The parsed manifest.

    Raises
    ------
    ValueError
        Naming the first missing, truncated or modified file.

    Examples
    --------
    >>> import shutil
    >>> import tempfile
    >>> from pathlib import Path
    >>> import mixgf as mgf
    >>> from mixgf.model import verify_model_dir
    >>> path = Path(tempfile.mkdtemp()) / "model"
    >>> _ = shutil.copytree(mgf.MixGeneformer.load().path, path)  # a copy of the bundled model
    >>> verify_model_dir(path)["format_version"]
    1
    >>> with (path / "config.json").open("a") as f:
    ...     _ = f.write(" ")
    >>> verify_model_dir(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Checkpoint ... is corrupt: config.json has ... bytes, manifest.json records ...
    """
    path = Path(path)
    manifest = _read_manifest(path)
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            msg = f"Checkpoint {path} is incomplete: {name} listed in {MANIFEST_NAME} is missing."
            raise ValueError(msg)
        size = file.stat().st_size
        if size != entry["size"]:
            msg = f"Checkpoint {path} is corrupt: {name} has {size} bytes, {MANIFEST_NAME} records {entry['size']}."
            raise ValueError(msg)
        digest = sha256_file(file)
        if digest != entry["sha256"]:
            msg = (
                f"Checkpoint {path} is corrupt: sha256 of {name} is {digest}, "
                f"{MANIFEST_NAME} records {entry['sha256']}."
            )
            raise ValueError(msg)
    return manifest


def load_model_dir(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> LoadedModel:
    """Load a directory written by :func:`save_model_dir`.

    Parameters
    ----------
    path
        Model directory.
    device
        Device to place the model on.
    verify
        Check the sha256 of every file against ``manifest.json`` before reading it.

    Returns
    -------
    LoadedModel
        ``(model, config, extra_files, metadata)``; ``extra_files`` maps names to paths.

    Raises
    ------
    ValueError
        If a file is corrupt, or the weights do not match ``config.json`` (every missing, unexpected
        or mis-shaped tensor is listed).

    Examples
    --------
    >>> import mixgf as mgf
    >>> from mixgf.model import describe, load_model_dir
    >>> model, config, extra_files, metadata = load_model_dir(mgf.MixGeneformer.load().path)
    >>> describe(model)
    'BertEncoderModel(4 layers, hidden 128, 4 heads, 5.54M params, MLM head)'
    >>> extra_files["vocab.json"].name, metadata["trained"]
    ('vocab.json', True)
    """
    path = Path(path)
    manifest = verify_model_dir(path) if verify else _read_manifest(path)
    try:
        config = EncoderConfig.load_json(path / CONFIG_NAME)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{CONFIG_NAME} in {path} is not valid JSON; the checkpoint is corrupt."
        raise ValueError(msg) from err
    state = _read_safetensors(path / WEIGHTS_NAME)
    check_state_dict(state, config, source=str(path / WEIGHTS_NAME))
    model = _build_model(config, state, device)
    extras = {name: path / name for name in manifest["files"] if name not in _RESERVED}
    metadata = manifest.get("metadata") or {}
    return LoadedModel(model, config, extras, dict(metadata))

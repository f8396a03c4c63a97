"""Files written so that a reader never sees half of them: sha256 of files, atomic writes, durable renames."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "fsync_file",
    "input_stem",
    "model_dir_writer",
    "sha256_file",
    "verify_model_dir",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file to disk."""
    with Path(path).open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. Windows
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader sees either the old file or the whole new one. With ``durable`` the data and the rename are flushed to
    disk before returning.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1, durable: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as JSON (values JSON cannot hold are written with ``str``)."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent, default=str).encode(), durable=durable)


def input_stem(path: str | os.PathLike[str]) -> str:
    """A file's name without ``.tokens.zarr``, ``.h5ad`` or ``.zarr``."""
    name = Path(path).name
    for suffix in (".tokens.zarr", ".h5ad", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


MANIFEST = "manifest.json"


@contextmanager
def model_dir_writer(
    path: str | os.PathLike[str], *, fmt: str, version: int, what: str, overwrite: bool
) -> Iterator[Path]:
    """Write a model directory atomically: fill the yielded temporary folder; it then gets its manifest and replaces ``path``.

    The manifest (``manifest.json``) records ``fmt``, ``version`` and every file's sha256 and size. An existing
    ``path`` is replaced only with ``overwrite`` and only when it is such a directory (``what`` names it in errors).
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            msg = f"{path} exists; pass overwrite=True to replace it."
            raise FileExistsError(msg)
        if any(path.iterdir()) and not (path / MANIFEST).is_file():
            msg = f"Refusing to overwrite {path}: it is not a {what} directory (no {MANIFEST})."
            raise FileExistsError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_mixgf_", dir=path.parent))
    try:
        yield tmp
        files = {f.name: {"sha256": sha256_file(f), "size": f.stat().st_size} for f in sorted(tmp.iterdir())}
        manifest = {"format": fmt, "format_version": version, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def verify_model_dir(
    path: str | os.PathLike[str], *, fmt: str, version: int, what: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check a directory written by :func:`model_dir_writer`: its manifest, and every file (and ``required``) by sha256.

    Returns the manifest; raises `FileNotFoundError` without a manifest and `ValueError` naming a corrupt file.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        msg = f"{path} is not a {what} directory: {MANIFEST} is missing."
        raise FileNotFoundError(msg)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        msg = f"{mpath} is not valid JSON ({err}); the directory is corrupt."
        raise ValueError(msg) from err
    if manifest.get("format") != fmt or int(manifest.get("format_version", 0)) > version:
        msg = f"{mpath} does not describe a {fmt!r} directory of version <= {version}."
        raise ValueError(msg)
    files = manifest.get("files", {})
    for name in sorted(set(files) | set(required)):
        info = files.get(name)
        f = path / name
        if info is None or not f.is_file() or sha256_file(f) != info["sha256"]:
            msg = f"{f} is missing or does not match its sha256 in {MANIFEST}; the directory is corrupt."
            raise ValueError(msg)
    return manifest

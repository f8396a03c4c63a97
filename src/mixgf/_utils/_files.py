"""Files written so that a reader never sees half of them: sha256 of files, atomic writes, durable renames."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "fsync_file", "input_stem", "sha256_file"]


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

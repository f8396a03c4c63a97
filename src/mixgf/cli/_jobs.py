"""Corpus-scale jobs of the command line: inputs cut into shards, each processed on its own, resumably.

A job (``mixgf tokenize``, ``mixgf embed``, ``mixgf perturb``) reads one or more inputs, cuts each into shards of
consecutive cells and writes one output per shard into the output directory:

- ``<shard>.<suffix>.partial`` while the shard is being written (removed when a restarted job finds it);
- ``<shard>.<suffix>`` once complete (moved there in one rename);
- ``<shard>.done.json`` right after: what the shard was made from (input path, size and modification time, rows,
  options, mixgf version) and a summary. A shard whose ``done.json`` matches is skipped when the job is run again,
  so a killed job restarted with the same command redoes only unfinished shards.
- ``manifest.json`` at the end: the job, its options and every shard's record.

Under ``torchrun`` every rank takes every ``world``-th pending shard, so N processes (or N GPUs) share the work and
write disjoint files; rank 0 writes the manifest after all ranks are done.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils._files import atomic_write_json, input_stem
from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData

MANIFEST = "manifest.json"
_ANNDATA_SUFFIXES = (".h5ad", ".zarr")


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of one input file."""

    name: str
    path: Path
    start: int
    stop: int

    @property
    def n_cells(self) -> int:
        """Cells in the shard."""
        return self.stop - self.start


def _is_zarr_anndata(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zattrs").exists())


def is_token_store(path: Path) -> bool:
    """Whether ``path`` is a complete token store written by :func:`mixgf.pp.rank_tokenize` (``store=``)."""
    from ..pp._store import store_state

    return store_state(path) == "complete"


def expand_inputs(paths: Sequence[str | os.PathLike], *, stores: bool = False) -> list[Path]:
    """Input files: AnnData files (``.h5ad`` or ``.zarr`` directories), token stores when ``stores``, or folders.

    A folder that is neither an AnnData zarr store nor a token store stands for the inputs it holds (sorted by
    name; for a job output folder, its finished shards).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            msg = f"input {str(p)!r} does not exist."
            raise FileNotFoundError(msg)
        if stores and is_token_store(p):
            out.append(p)
        elif p.is_file() or _is_zarr_anndata(p):
            if not p.name.endswith(_ANNDATA_SUFFIXES):
                msg = f"input {str(p)!r} is not an AnnData file (.h5ad or .zarr)."
                raise ValueError(msg)
            out.append(p)
        elif p.is_dir():
            inner = sorted(
                q
                for q in p.iterdir()
                if not q.name.endswith(".partial")
                and ((stores and is_token_store(q)) or (q.name.endswith(_ANNDATA_SUFFIXES) and not is_token_store(q)))
            )
            if not inner:
                kinds = "AnnData files (.h5ad, .zarr)" + (" or token stores" if stores else "")
                msg = f"folder {str(p)!r} holds no {kinds}."
                raise ValueError(msg)
            out.extend(inner)
        else:
            msg = f"input {str(p)!r} is neither a file nor a folder."
            raise ValueError(msg)
    if len(set(out)) != len(out):
        msg = "an input is listed twice."
        raise ValueError(msg)
    return out


def n_cells_of(path: Path) -> int:
    """Number of cells of an AnnData file or token store, read from its metadata only."""
    if is_token_store(path):
        return int(json.loads((path / MANIFEST).read_text())["n_cells"])
    g = _open_group(path)
    try:
        obs = g["obs"]
        index = obs[obs.attrs.get("_index", "_index")]
        if hasattr(index, "shape"):  # a string array: its length, without reading it
            return int(index.shape[0])
    finally:
        if hasattr(g, "close"):
            g.close()
    return len(read_obs_names(path))


def _open_group(path: Path) -> Any:
    if path.is_dir():
        import zarr

        return zarr.open_group(str(path), mode="r")
    import h5py

    return h5py.File(path, "r")


def read_obs_names(path: Path, start: int = 0, stop: int | None = None) -> Any:
    """The obs names ``start:stop`` of an AnnData file, without reading its matrices or the other names."""
    import pandas as pd
    from anndata.io import read_elem

    g = _open_group(path)
    try:
        obs = g["obs"]
        index = obs[obs.attrs.get("_index", "_index")]
        if index.attrs.get("encoding-type") == "string-array":  # read just the slice
            part = index.asstr()[start:stop] if hasattr(index, "asstr") else index[start:stop]
            return pd.Index(np.asarray(part, dtype=object), name=None)
        return pd.Index(read_elem(index), name=None)[start:stop]
    finally:
        if hasattr(g, "close"):
            g.close()


def plan_shards(inputs: Sequence[Path], shard_cells: int | None) -> list[Shard]:
    """Cut every input into shards of at most ``shard_cells`` cells (`None`: one shard per input)."""
    if shard_cells is not None and shard_cells < 1:
        msg = f"shard_cells must be >= 1, got {shard_cells}."
        raise ValueError(msg)
    stems = [input_stem(p) for p in inputs]
    names = [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]
    shards: list[Shard] = []
    for name, path in zip(names, inputs):
        n = n_cells_of(path)
        if n == 0:
            msg = f"input {str(path)!r} holds no cells; leave it out of the job."
            raise ValueError(msg)
        if shard_cells is None or n <= shard_cells:
            shards.append(Shard(name, path, 0, n))
            continue
        for k, start in enumerate(range(0, n, shard_cells)):
            shards.append(Shard(f"{name}-{k:05d}", path, start, min(start + shard_cells, n)))
    return shards


def _source_signature(path: Path) -> dict[str, Any]:
    """Size and modification time of an input (summed / latest over the files of a folder)."""
    if path.is_dir():
        size, mtime = 0, 0
        for root, _, files in os.walk(path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
        return {"size": size, "mtime_ns": mtime}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_shard(shard: Shard, *, obs: bool = True, layer: str | None = None, use_raw: bool = False) -> AnnData:
    """The shard's cells as an AnnData whose ``X`` is a lazy dask array (read chunk by chunk when used).

    ``obs`` holds the input's obs columns (``obs=False``: the names only); ``var`` the input's var table. With
    ``layer``, that layer is read lazily into ``layers[layer]`` instead of ``X``; with ``use_raw``, ``raw/X``
    becomes ``X`` and ``raw/var`` the var table.
    """
    import anndata as ad
    import pandas as pd
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    from .._settings import settings

    g = _open_group(shard.path)
    if layer is not None and use_raw:
        msg = "pass either --layer or --use-raw, not both: they name two different count matrices."
        raise ValueError(msg)
    if use_raw and "raw" not in g:
        msg = f"--use-raw: {shard.path} has no .raw; pass --layer naming the layer with raw counts instead."
        raise ValueError(msg)
    if use_raw:
        elem = g["raw"]["X"]
    elif layer is None:
        elem = g["X"]
    else:
        names = list(g["layers"].keys()) if "layers" in g else []
        if layer not in names:
            msg = f"layer {layer!r} not found in {shard.path}; its layers: {names or 'none'}."
            raise KeyError(msg)
        elem = g["layers"][layer]
    X = read_elem_lazy(elem, chunks=(settings.chunk_size, -1))[shard.start : shard.stop]
    var = read_elem(g["raw"]["var"] if use_raw else g["var"])
    if obs:
        obs_df = read_elem(g["obs"]).iloc[shard.start : shard.stop]
    else:
        obs_df = pd.DataFrame(index=read_obs_names(shard.path, shard.start, shard.stop))
    obs_df.index = obs_df.index.astype(str)
    var.index = var.index.astype(str)
    if layer is None:
        return ad.AnnData(X=X, obs=obs_df, var=var)
    return ad.AnnData(obs=obs_df, var=var, layers={layer: X})


def source_obs(store_path: Path, obs_names: Any) -> Any:
    """The obs table of the cells of a token store written by ``mixgf tokenize``, read from its input file.

    The job's ``<shard>.done.json`` next to the store names the input and the rows; the table is returned only when
    that input still holds exactly these cells (same names, in order). `None` when it cannot be found.
    """
    import pandas as pd
    from anndata.io import read_elem

    done = store_path.parent / f"{store_path.name.removesuffix('.tokens.zarr')}.done.json"
    if not done.exists():
        return None
    key = json.loads(done.read_text()).get("key", {})
    src, rows = Path(str(key.get("input", ""))), key.get("rows")
    if not rows or not src.exists():
        return None
    g = _open_group(src)
    try:
        obs = read_elem(g["obs"]).iloc[int(rows[0]) : int(rows[1])]
    finally:
        if hasattr(g, "close"):
            g.close()
    obs.index = obs.index.astype(str)
    if not obs.index.equals(pd.Index(obs_names).astype(str)):
        return None
    return obs


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class ShardJob:
    """Run ``work`` over shards into ``out_dir``, skipping shards that a matching earlier run finished.

    Parameters
    ----------
    out_dir
        Output folder (created).
    command
        The job's name (``"tokenize"``, ``"embed"``, ``"perturb"``), recorded and compared.
    options
        Everything that changes a shard's output; a finished shard made with other options is an error
        (``overwrite=True`` redoes it).
    suffix
        Output name of a shard: ``<shard name><suffix>``.
    overwrite
        Redo every shard.
    log
        Where progress lines go.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        command: str,
        options: dict[str, Any],
        suffix: str,
        overwrite: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.command, self.options, self.suffix = command, dict(options), suffix
        self.overwrite, self.log = overwrite, log

    def output(self, shard: Shard) -> Path:
        """Where the finished output of ``shard`` lies."""
        return self.out_dir / f"{shard.name}{self.suffix}"

    def _done_path(self, shard: Shard) -> Path:
        return self.out_dir / f"{shard.name}.done.json"

    def _key(self, shard: Shard) -> dict[str, Any]:

        return {
            "command": self.command,
            "input": str(shard.path.resolve()),
            **_source_signature(shard.path),
            "rows": [shard.start, shard.stop],
            "options": self.options,
            "mixgf_version": __version__,
        }

    def _finished(self, shard: Shard, key: dict[str, Any]) -> dict[str, Any] | None:
        done = self._done_path(shard)
        if not done.exists() or not self.output(shard).exists():
            return None
        record = json.loads(done.read_text())
        if record.get("key") == json.loads(json.dumps(key, default=str)):
            return record
        if self.overwrite:
            return None
        old, new = record.get("key", {}), json.loads(json.dumps(key, default=str))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        msg = (
            f"{self.output(shard)} was made by an earlier job with other inputs or options (differs in: "
            f"{', '.join(diff)}). Use a new output folder, or pass --overwrite to redo it."
        )
        raise ValueError(msg)

    def run(self, shards: Sequence[Shard], work: Callable[[Shard, Path], dict[str, Any]]) -> dict[str, Any]:
        """Process the unfinished shards; ``work(shard, path)`` writes the shard's output at ``path``.

        Returns
        -------
        The job manifest (also written to ``out_dir / "manifest.json"`` by rank 0).
        """
        from ..engine._distributed import rank_world

        rank, world = rank_world()
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        _barrier()
        keys = [self._key(s) for s in shards]
        records: dict[str, dict[str, Any] | None] = {
            s.name: self._finished(s, k) for s, k in zip(shards, keys)
        }  # fmt: skip
        pending = [i for i, s in enumerate(shards) if records[s.name] is None]
        _barrier()  # every rank has seen the same finished shards before any writes
        n_skip = len(shards) - len(pending)
        if rank == 0:
            self.log(
                f"{self.command}: {len(shards)} shard(s), {n_skip} already finished (skipped), {len(pending)} to do"
                + (f" on {world} processes" if world > 1 else "")
            )
        for i in pending[rank::world]:
            shard, key = shards[i], keys[i]
            final, partial = self.output(shard), self.out_dir / f"{shard.name}{self.suffix}.partial"
            for stale in (partial, final, self._done_path(shard)):
                _remove(stale)
            t0 = time.perf_counter()
            summary = work(shard, partial)
            os.replace(partial, final)
            record = {
                "key": key,
                "shard": shard.name,
                "output": final.name,
                "n_cells": shard.n_cells,
                "seconds": round(time.perf_counter() - t0, 3),
                **summary,
            }
            atomic_write_json(self._done_path(shard), record)
            self.log(f"  {shard.name}: {shard.n_cells:,} cells in {record['seconds']:.1f} s -> {final.name}")
        _barrier()
        manifest = {
            "command": self.command,
            "options": self.options,
            "n_shards": len(shards),
            "n_cells": sum(s.n_cells for s in shards),
            "shards": [json.loads(self._done_path(s).read_text()) for s in shards],
        }
        if rank == 0:
            atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest

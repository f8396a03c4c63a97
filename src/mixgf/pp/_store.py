"""On-disk token stores: the rank-value tokens of many cells, ragged, in a zarr v3 group (numpy + zarr only).

Layout of a store directory (e.g. ``pbmc.tokens.zarr/``):

``tokens``
    1-D array of the vocabulary's token dtype: every cell's tokens concatenated in cell order (special tokens
    included, no padding), in chunks of :data:`DEFAULT_CHUNK_TOKENS` tokens.
``offsets``
    1-D int64 array of ``n_cells + 1`` entries; cell ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
``obs_names``
    1-D variable-length strings: the cells' names.
``manifest.json``
    Written last and atomically: format and version, cell and token counts, dtype, the tokenization parameters
    and coverage report, the sha256 of the raw little-endian bytes of ``tokens`` and ``offsets``. A directory
    without it is an incomplete store (an interrupted write).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._files import atomic_write_json
from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["DEFAULT_CHUNK_TOKENS", "FORMAT", "FORMAT_VERSION", "TokenStore", "TokenStoreWriter", "check_store_path"]

FORMAT = "mixgf-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_CHUNK_TOKENS = 2**20
"""Tokens per chunk of the ``tokens`` array (2 MiB of uint16)."""

_MARKER_KEY = "mixgf"
_MARKER_VALUE = "tokens"  # group attribute written when a store is created: marks incomplete stores as ours


class TokenStoreError(ValueError):
    """A token store is missing, incomplete, damaged or of an unknown format."""


def store_state(path: Path) -> str:
    """``"missing"``, ``"empty"`` (empty directory), ``"complete"``, ``"incomplete"`` or ``"other"``."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "other"
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            fmt = json.loads(manifest.read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        return "complete" if fmt == FORMAT else "other"
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            attrs = {}
        return "incomplete" if attrs.get(_MARKER_KEY) == _MARKER_VALUE else "other"
    return "empty" if not any(path.iterdir()) else "other"


def check_store_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that a token store may be written at ``path``; return it as a :class:`~pathlib.Path`.

    Raises
    ------
    FileExistsError
        A complete or incomplete store is there and ``overwrite=False``, or ``path`` is a file or a non-empty
        directory that is not a token store (never replaced, whatever ``overwrite`` says).
    """
    p = Path(path)
    state = store_state(p)
    if state == "other":
        msg = (
            f"{str(p)!r} exists and is not a mixgf token store; it is left alone. Choose another path (e.g. "
            "'<name>.tokens.zarr') or remove it yourself."
        )
        raise FileExistsError(msg)
    if state == "complete" and not overwrite:
        msg = f"token store {str(p)!r} already exists; pass overwrite=True to replace it, or choose another path."
        raise FileExistsError(msg)
    if state == "incomplete" and not overwrite:
        msg = (
            f"{str(p)!r} holds an incomplete token store (an interrupted write); pass overwrite=True to replace it, "
            "or delete it."
        )
        raise FileExistsError(msg)
    return p


def _le(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous little-endian array (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return x.item()
    return x


class TokenStoreWriter:
    """Write a token store block of cells by block of cells (memory bound by one chunk of tokens).

    Use it as a context manager: on an exception inside the ``with`` block the partial store is deleted, so a
    store that looks complete (has a manifest) is always complete. A process killed mid-way leaves a directory
    without manifest, which :meth:`TokenStore.open` reports as an interrupted write.

    Parameters
    ----------
    path
        The store directory to create.
    dtype
        Token dtype (the vocabulary's: uint16 or uint32).
    overwrite
        Replace a store already at ``path`` (deleted when writing starts, i.e. on ``__enter__``).
    chunk_tokens
        Tokens per chunk of the ``tokens`` array.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dtype: np.dtype | str,
        *,
        overwrite: bool = False,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> None:
        self.path = check_store_path(path, overwrite=overwrite)
        self.overwrite = overwrite
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.kind != "u":
            msg = f"token dtype must be an unsigned integer type, got {self.dtype}."
            raise ValueError(msg)
        self.chunk_tokens = int(chunk_tokens)
        if self.chunk_tokens < 1:
            msg = f"chunk_tokens must be positive, got {chunk_tokens}."
            raise ValueError(msg)
        self._lengths: list[np.ndarray] = []
        self._buf: list[np.ndarray] = []
        self._n_buf = 0
        self._written = 0
        self._sha = hashlib.sha256()
        self._arr = None
        self._group = None
        self._state = "new"  # new -> open -> finished | aborted

    # --------------------------------------------------------------------------------------------------------------
    def __enter__(self) -> TokenStoreWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.abort()
            msg = "TokenStoreWriter left without finish(); the partial store was removed."
            raise RuntimeError(msg)

    def open(self) -> None:
        """Create the store directory (replacing an old store when ``overwrite=True``)."""
        import zarr

        if self._state != "new":
            msg = "this writer was already opened."
            raise RuntimeError(msg)
        check_store_path(self.path, overwrite=self.overwrite)  # the path may have changed since __init__
        if store_state(self.path) in ("complete", "incomplete"):
            shutil.rmtree(self.path)
        self._state = "open"
        self._group = zarr.open_group(self.path, mode="w", attributes={_MARKER_KEY: _MARKER_VALUE})
        self._arr = self._group.create_array("tokens", shape=(0,), dtype=self.dtype, chunks=(self.chunk_tokens,))

    def abort(self) -> None:
        """Delete the partial store (no-op once finished)."""
        if self._state == "open":
            self._state = "aborted"
            self._buf.clear()
            shutil.rmtree(self.path, ignore_errors=True)

    # --------------------------------------------------------------------------------------------------------------
    def _write(self, flat: np.ndarray) -> None:
        n = flat.shape[0]
        if n == 0:
            return
        self._sha.update(memoryview(flat).cast("B"))
        self._arr.resize((self._written + n,))
        self._arr[self._written : self._written + n] = flat
        self._written += n

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add cells: ``tokens`` = their tokens concatenated (1-D), ``lengths`` = tokens per cell."""
        if self._state != "open":
            msg = "open the writer first (use it as a context manager)."
            raise RuntimeError(msg)
        lengths = np.asarray(lengths, dtype=np.int64).ravel()
        tokens = np.asarray(tokens).ravel()
        if (lengths < 0).any() or int(lengths.sum()) != tokens.shape[0]:
            msg = f"lengths (sum {int(lengths.sum())}) do not add up to the {tokens.shape[0]} tokens given."
            raise ValueError(msg)
        if tokens.size and (
            tokens.dtype.kind not in "ui" or tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max
        ):
            msg = f"tokens do not fit the store's dtype {self.dtype.name}."
            raise ValueError(msg)
        self._lengths.append(lengths)
        if tokens.size == 0:
            return
        self._buf.append(_le(tokens.astype(self.dtype, copy=False)))
        self._n_buf += tokens.shape[0]
        if self._n_buf >= self.chunk_tokens:  # write whole chunks only; keep the rest for the next call
            buf = np.concatenate(self._buf)
            self._buf.clear()
            cut = (buf.shape[0] // self.chunk_tokens) * self.chunk_tokens
            rest = buf[cut:].copy()
            buf = buf[:cut]
            self._write(buf)
            del buf
            self._buf, self._n_buf = ([rest] if rest.size else []), rest.shape[0]

    def append_padded(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add cells given as right-padded rows ``tokens [n, L]`` with ``lengths [n]``."""
        lengths = np.asarray(lengths, dtype=np.int64).ravel()
        if tokens.ndim != 2 or tokens.shape[0] != lengths.shape[0] or (lengths > tokens.shape[1]).any():
            msg = "append_padded needs tokens [n, L] and n lengths of at most L."
            raise ValueError(msg)
        width = int(lengths.max(initial=0))
        keep = np.arange(width) < lengths[:, None]
        self.append(tokens[:, :width][keep], lengths)

    def finish(self, obs_names: Sequence[str], params: dict, coverage: dict | None = None) -> TokenStore:
        """Write the remaining tokens, ``offsets``, ``obs_names`` and, last, the manifest; return the reader."""
        if self._state != "open":
            msg = "open the writer first (use it as a context manager)."
            raise RuntimeError(msg)
        if self._buf:
            self._write(np.concatenate(self._buf))
            self._buf, self._n_buf = [], 0
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        names = np.asarray([str(x) for x in obs_names], dtype=object)
        if names.shape[0] != lengths.shape[0]:
            msg = f"{names.shape[0]} obs_names for {lengths.shape[0]} cells written."
            raise ValueError(msg)
        offsets = np.zeros(lengths.shape[0] + 1, dtype="<i8")
        np.cumsum(lengths, out=offsets[1:])
        off = self._group.create_array(
            "offsets", shape=offsets.shape, dtype="<i8", chunks=(min(offsets.shape[0], DEFAULT_CHUNK_TOKENS),)
        )
        off[:] = offsets
        obs = self._group.create_array(
            "obs_names", shape=names.shape, dtype=str, chunks=(max(min(names.shape[0], 2**16), 1),)
        )
        if names.shape[0]:
            obs[:] = names
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_cells": int(lengths.shape[0]),
            "n_tokens": int(self._written),
            "dtype": self.dtype.name,
            "params": _jsonable(dict(params)),
            "coverage": _jsonable(dict(coverage or {})),
            "sha256": {"tokens": self._sha.hexdigest(), "offsets": hashlib.sha256(offsets.tobytes()).hexdigest()},
            "mixgf_version": __version__,
        }
        atomic_write_json(self.path / MANIFEST, manifest)
        self._state = "finished"
        return TokenStore.open(self.path)


def _open_arrays(p: Path) -> tuple[dict, np.ndarray, np.ndarray, Any]:
    """Manifest, offsets, obs_names and the (unread) zarr tokens array of a complete store; clear errors else."""
    if not p.exists():
        msg = f"no token store at {str(p)!r}; write one with `mgf.pp.rank_tokenize(adata, store=...)`."
        raise FileNotFoundError(msg)
    state = store_state(p)
    if state == "incomplete":
        msg = (
            f"token store {str(p)!r} is incomplete (it has no manifest.json): an interrupted write; delete it "
            "and rerun `mgf.pp.rank_tokenize(..., store=...)` (or pass overwrite=True)."
        )
        raise TokenStoreError(msg)
    if state != "complete":
        msg = f"{str(p)!r} is not a mixgf token store (no manifest.json of format {FORMAT!r})."
        raise TokenStoreError(msg)
    manifest = json.loads((p / MANIFEST).read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        msg = (
            f"token store {str(p)!r} has format_version {version!r}; this mixgf reads version {FORMAT_VERSION}. "
            "Upgrade mixgf, or tokenize the data again with this version."
        )
        raise TokenStoreError(msg)
    missing = {"n_cells", "n_tokens", "dtype", "params", "sha256"} - set(manifest)
    if missing:
        msg = f"the manifest of token store {str(p)!r} lacks {sorted(missing)}; the store is damaged."
        raise TokenStoreError(msg)
    import zarr

    n = int(manifest["n_cells"])
    try:
        group = zarr.open_group(p, mode="r")
        offsets = np.asarray(group["offsets"][:], dtype=np.int64)
        names = group["obs_names"][:] if n else np.zeros(0, dtype=object)
        tokens = group["tokens"]
    except Exception as e:  # zarr / codec errors: name the store and the fix
        msg = f"cannot read token store {str(p)!r} ({type(e).__name__}: {e}); it is damaged, write it again."
        raise TokenStoreError(msg) from e
    problems = []
    if offsets.shape != (n + 1,):
        problems.append(f"offsets has {offsets.shape[0]} entries for {n} cells")
    elif offsets[0] != 0 or offsets[-1] != manifest["n_tokens"] or (np.diff(offsets) < 0).any():
        problems.append("offsets are not a cumulative count ending at n_tokens")
    if tokens.shape != (int(manifest["n_tokens"]),) or tokens.dtype != np.dtype(manifest["dtype"]):
        problems.append(f"tokens is {tokens.dtype}{list(tokens.shape)}, the manifest says {manifest['dtype']}")
    if len(names) != n:
        problems.append(f"{len(names)} obs_names for {n} cells")
    if problems:
        msg = f"token store {str(p)!r} is damaged: {'; '.join(problems)}. Write it again."
        raise TokenStoreError(msg)
    return manifest, offsets, names, tokens


class TokenStore:
    """Rank-value tokens of many cells on disk (ragged, zarr), read cell by cell or in padded blocks.

    A token store is written by :func:`mixgf.pp.rank_tokenize` with ``store=path``, chunk by chunk, so data
    larger than memory can be tokenized; it holds every cell's tokens without padding, the cells' names, and
    the tokenization parameters and coverage report (``adata.uns[key]["params"]`` / ``["coverage"]``) in its
    ``manifest.json``, which is written last: a directory without it is an interrupted write. Opening a store
    reads only the per-cell offsets (8 bytes per cell) and names; tokens are read when asked for.

    Parameters
    ----------
    path
        The store directory.
    verify
        Re-hash ``tokens`` and ``offsets`` (reads the whole store once) and compare with the manifest.

    Attributes
    ----------
    path : pathlib.Path
        The store directory.
    n_cells : int
        Number of cells (also ``len(store)``).
    n_tokens : int
        Number of tokens of all cells together.
    lengths : numpy.ndarray
        int64 ``[n_cells]``: tokens per cell, special tokens included.
    offsets : numpy.ndarray
        int64 ``[n_cells + 1]``: cell ``i`` holds tokens ``offsets[i]:offsets[i + 1]``.
    obs_names : pandas.Index
        The cells' names.
    params : dict
        Tokenization parameters, as in ``adata.uns[key]["params"]`` (``vocab``, ``vocab_sha256``, ``pad_id``,
        ``max_len``, ``species``, …).
    coverage : dict
        The coverage report of the tokenization (see :func:`mixgf.pp.coverage_report`).
    dtype : numpy.dtype
        Token dtype (uint16 or uint32).
    manifest : dict
        The whole manifest.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "pbmc.tokens.zarr"
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", store=path)
    >>> store = mgf.pp.TokenStore.open(path, verify=True)
    >>> store.n_cells == adata.n_obs, store.params["species"]
    (True, 'human')
    >>> first = store.rows([0, 5])  # 1-D token arrays, no padding
    >>> len(first[1]) == int(store.lengths[5])
    True
    >>> tokens, lengths = store.padded(0, 100)  # padded with params["pad_id"]
    >>> tokens.shape[0], bool((lengths == adata.obs["mixgf_tokens_n_tokens"][:100]).all())
    (100, True)
    >>> sum(stop - start for start, stop, _, _ in store.iter_chunks(1000))
    2700
    >>> tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False) -> None:
        p = Path(path)
        manifest, offsets, names, tokens = _open_arrays(p)
        self.path = p
        self.manifest = manifest
        self.n_cells = int(manifest["n_cells"])
        self.n_tokens = int(manifest["n_tokens"])
        self.dtype = np.dtype(manifest["dtype"])
        self.params = dict(manifest["params"])
        self.coverage = dict(manifest.get("coverage", {}))
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        self.obs_names = pd.Index(np.asarray(names, dtype=object))
        self._tokens = tokens
        if verify:
            self.verify()

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> TokenStore:
        """Open a complete token store (the same as ``TokenStore(path, verify=verify)``).

        Parameters
        ----------
        path
            The store directory.
        verify
            Re-hash ``tokens`` and ``offsets`` (reads the whole store once) and compare with the manifest.

        Returns
        -------
        TokenStore
            The reader.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            ``path`` is not a token store, is incomplete (interrupted write), has an unknown format version, or
            is damaged (inconsistent arrays; with ``verify=True``, contents that do not match the manifest).
        """
        return cls(path, verify=verify)

    def verify(self) -> None:
        """Re-hash ``tokens`` and ``offsets`` and compare with the manifest; raise `ValueError` on a mismatch."""
        expected = self.manifest["sha256"]
        h = hashlib.sha256()
        step = max(int(self._arr.chunks[0]), 1)
        try:
            for a in range(0, self.n_tokens, step):
                h.update(memoryview(_le(np.asarray(self._arr[a : a + step]))).cast("B"))
        except Exception as e:
            msg = f"token store {str(self.path)!r} is corrupt: its tokens cannot be read ({type(e).__name__}: {e})."
            raise TokenStoreError(msg) from e
        got = {"tokens": h.hexdigest(), "offsets": hashlib.sha256(_le(self.offsets).tobytes()).hexdigest()}
        bad = [k for k in ("tokens", "offsets") if got[k] != expected.get(k)]
        if bad:
            msg = (
                f"token store {str(self.path)!r} is corrupt: the sha256 of {' and '.join(bad)} does not match the "
                "manifest. Write it again (`mgf.pp.rank_tokenize(..., store=..., overwrite=True)`)."
            )
            raise TokenStoreError(msg)

    # --------------------------------------------------------------------------------------------------------------
    @property
    def _arr(self):
        if self._tokens is None:
            import zarr

            self._tokens = zarr.open_group(self.path, mode="r")["tokens"]
        return self._tokens

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokens"] = None  # reopened lazily (e.g. in a DataLoader worker)
        return state

    def __len__(self) -> int:
        return self.n_cells

    def __repr__(self) -> str:
        p = self.params
        return (
            f"TokenStore({str(self.path)!r}: {self.n_cells:,} cells, {self.n_tokens:,} tokens, {self.dtype.name}, "
            f"vocab {p.get('vocab')!r}, species {p.get('species')!r})"
        )

    @property
    def pad_id(self) -> int:
        """Id of the padding token (``params["pad_id"]``)."""
        return int(self.params.get("pad_id", 0))

    def _read(self, a: int, b: int) -> np.ndarray:
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        return np.asarray(self._arr[a:b])

    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_cells if stop is None else int(stop)
        start = int(start)
        if not 0 <= start <= stop <= self.n_cells:
            msg = f"cell range {start}:{stop} is outside 0:{self.n_cells}."
            raise IndexError(msg)
        return start, stop

    # --------------------------------------------------------------------------------------------------------------
    def rows(self, idx: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Tokens of the cells ``idx``, in the given order, as 1-D arrays (no padding).

        Cells that share a chunk of the store are read together, so each chunk is read once per call, and
        only the tokens asked for are kept (each returned array is its own copy, or a view of nothing larger).

        Parameters
        ----------
        idx
            Cell positions (``0 <= i < n_cells``); repeats are allowed.

        Returns
        -------
        list of numpy.ndarray
            One array of :attr:`dtype` per cell.
        """
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if idx.size == 0:
            return []
        if idx.min() < 0 or idx.max() >= self.n_cells:
            msg = f"cell positions must lie in 0:{self.n_cells}; got {int(idx.min())}..{int(idx.max())}."
            raise IndexError(msg)
        starts, stops = self.offsets[idx], self.offsets[idx + 1]
        out: list[np.ndarray | None] = [None] * len(idx)
        for j in np.flatnonzero(stops == starts):
            out[j] = np.zeros(0, dtype=self.dtype)
        sel = np.flatnonzero(stops > starts)
        if sel.size:
            order = sel[np.argsort(starts[sel], kind="stable")]
            s, e = starts[order], stops[order]
            reach = np.maximum.accumulate(e)
            # a span of cells to read at once grows while the next cell starts in the chunk where the span ends
            step = int(self._arr.chunks[0])
            new = np.ones(len(order), dtype=bool)
            new[1:] = s[1:] // step > (reach[:-1] - 1) // step
            bounds = [*np.flatnonzero(new).tolist(), len(order)]
            for a, b in itertools.pairwise(bounds):
                lo, hi = int(s[a]), int(reach[b - 1])
                span = self._read(lo, hi)
                for k in range(a, b):
                    row = span[s[k] - lo : e[k] - lo]
                    out[order[k]] = row if b - a == 1 else row.copy()
        return out  # type: ignore[return-value]

    def padded(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of cells ``start:stop`` as a right-padded matrix, and their lengths.

        Parameters
        ----------
        start, stop
            Cell range (``stop=None``: to the last cell).

        Returns
        -------
        tokens : numpy.ndarray
            ``[stop - start, width]`` of :attr:`dtype`, padded with ``params["pad_id"]``; ``width`` is the
            longest length in the range (at least 1), so ``padded()`` equals ``adata.obsm[key]`` of an
            in-memory :func:`~mixgf.pp.rank_tokenize`.
        lengths : numpy.ndarray
            int64 ``[stop - start]``.
        """
        start, stop = self._check_range(start, stop)
        lengths = self.lengths[start:stop].copy()
        flat = self._read(int(self.offsets[start]), int(self.offsets[stop]))
        width = max(int(lengths.max(initial=0)), 1)
        out = np.full((stop - start, width), self.pad_id, dtype=self.dtype)
        out[np.arange(width) < lengths[:, None]] = flat
        return out, lengths

    def iter_chunks(self, n_cells: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Iterate over consecutive blocks of ``n_cells`` cells: ``(start, stop, padded tokens, lengths)``.

        Memory is bound by one block (see :meth:`padded`).
        """
        n_cells = int(n_cells)
        if n_cells < 1:
            msg = f"n_cells must be positive, got {n_cells}."
            raise ValueError(msg)
        for start in range(0, self.n_cells, n_cells):
            stop = min(start + n_cells, self.n_cells)
            tokens, lengths = self.padded(start, stop)
            yield start, stop, tokens, lengths

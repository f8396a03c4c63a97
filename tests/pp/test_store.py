"""Token stores: out-of-core tokenization (backed, lazy, dask) into an on-disk store, and reading it back."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import mixgf as mgf
from mixgf.genes import Vocabulary
from mixgf.pp import TokenStore
from mixgf.pp._store import TokenStoreWriter

da = pytest.importorskip("dask.array")

KEY = "mixgf_tokens"
N_KEY, EMPTY_KEY = f"{KEY}_n_tokens", f"{KEY}_empty"
DATASETS = {"pbmc": {"gene_id_key": "gene_id"}, "baron": {}}


@pytest.fixture(scope="module")
def files(tmp_path_factory, pbmc_full, baron_full):
    """Each bundled dataset written once to an h5ad file, with its in-memory tokenization as the reference."""
    out = {}
    d = tmp_path_factory.mktemp("h5ad")
    with mgf.settings.override(progress_bar=False, verbosity="warning"):
        for name, adata in (("pbmc", pbmc_full), ("baron", baron_full)):
            path = d / f"{name}.h5ad"
            adata.write_h5ad(path)
            ref = ad.read_h5ad(path)
            mgf.pp.rank_tokenize(ref, **DATASETS[name])
            out[name] = (path, ref)
    return out


def _open(kind: str, path: Path) -> ad.AnnData:
    if kind == "memory":
        return ad.read_h5ad(path)
    if kind == "backed":
        return ad.read_h5ad(path, backed="r")
    if kind == "lazy":
        pytest.importorskip("xarray")  # anndata's read_lazy reads obs / var with it (in the test extras)
        return ad.experimental.read_lazy(path)
    adata = ad.read_h5ad(path)  # dask: row chunks that do not line up with chunk_size
    adata.X = da.from_array(adata.X, chunks=(333, -1), asarray=False)
    return adata


def _same_result(adata, ref, store: TokenStore | None = None):
    np.testing.assert_array_equal(np.asarray(adata.obs[N_KEY]), ref.obs[N_KEY].to_numpy())
    np.testing.assert_array_equal(np.asarray(adata.obs[EMPTY_KEY]), ref.obs[EMPTY_KEY].to_numpy())
    assert adata.uns[KEY]["params"] == ref.uns[KEY]["params"]
    assert adata.uns[KEY]["coverage"] == ref.uns[KEY]["coverage"]
    if store is None:
        tokens = adata.obsm[KEY]
        assert tokens.dtype == ref.obsm[KEY].dtype
        np.testing.assert_array_equal(tokens, ref.obsm[KEY])
        return
    assert KEY not in adata.obsm
    tokens, lengths = store.padded()
    assert tokens.dtype == ref.obsm[KEY].dtype
    np.testing.assert_array_equal(tokens, ref.obsm[KEY])
    np.testing.assert_array_equal(lengths, ref.obs[N_KEY].to_numpy())
    assert store.obs_names.equals(ref.obs_names)
    assert store.params == ref.uns[KEY]["params"]
    assert store.coverage == ref.uns[KEY]["coverage"]
    assert store.n_tokens == int(lengths.sum())


# --------------------------------------------------------------------------------------------------------------------
# (a) every kind of input gives the same tokens, in adata.obsm and in a store
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("kind", ["memory", "backed", "lazy", "dask"])
def test_inputs_give_identical_tokens(files, tmp_path, name, kind):
    path, ref = files[name]
    # chunk sizes smaller and larger than the dask chunks (333 rows) and the lazy ones (1,000 rows)
    adata = _open(kind, path)
    mgf.pp.rank_tokenize(adata, chunk_size=500, **DATASETS[name])
    _same_result(adata, ref)

    adata = _open(kind, path)
    store_path = tmp_path / f"{name}.tokens.zarr"
    mgf.pp.rank_tokenize(adata, chunk_size=256, store=store_path, **DATASETS[name])
    assert adata.uns[KEY]["store"] == str(store_path.resolve())
    store = TokenStore.open(adata.uns[KEY]["store"], verify=True)
    _same_result(adata, ref, store)


def test_store_replaces_earlier_obsm_tokens_and_copy(files, tmp_path):
    path, ref = files["baron"]
    adata = ad.read_h5ad(path)
    mgf.pp.rank_tokenize(adata, max_len=32)  # earlier tokens, in obsm
    out = mgf.pp.rank_tokenize(adata, store=tmp_path / "a.zarr", copy=True)
    assert adata.obsm[KEY].shape[1] == 32 and KEY not in out.obsm  # copy=True leaves the input alone
    _same_result(out, ref, TokenStore.open(tmp_path / "a.zarr"))
    mgf.pp.rank_tokenize(adata, store=tmp_path / "b.zarr")
    _same_result(adata, ref, TokenStore.open(tmp_path / "b.zarr"))  # the stale obsm tokens are gone


# --------------------------------------------------------------------------------------------------------------------
# (b) manifest: complete or not, verified, overwritten only when asked
@pytest.fixture
def small(pbmc):
    return pbmc[:120].copy()


def test_incomplete_store_is_refused(small, tmp_path):
    p = tmp_path / "s.tokens.zarr"
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    (p / "manifest.json").unlink()  # as if the process had been killed before the end
    with pytest.raises(ValueError, match=r"incomplete.*interrupted write; delete it and rerun"):
        TokenStore.open(p)
    with pytest.raises(FileExistsError, match=r"incomplete token store.*overwrite=True"):
        mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p, overwrite=True)
    assert TokenStore.open(p, verify=True).n_cells == small.n_obs


def test_flipped_byte_is_found_by_verify(small, tmp_path):
    p = tmp_path / "s.tokens.zarr"
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    TokenStore.open(p, verify=True)
    chunk = p / "tokens" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is corrupt"):
        TokenStore.open(p, verify=True)


def test_manifest_and_format_checks(small, tmp_path):
    p = tmp_path / "s.tokens.zarr"
    with pytest.raises(FileNotFoundError, match="no token store"):
        TokenStore.open(p)
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    manifest = json.loads((p / "manifest.json").read_text())
    assert manifest["format"] == "mixgf-tokens" and manifest["format_version"] == 1
    assert manifest["n_cells"] == small.n_obs and manifest["dtype"] == "uint16"
    assert manifest["n_tokens"] == int(small.obs[N_KEY].sum())
    assert set(manifest["sha256"]) == {"tokens", "offsets"}
    assert manifest["params"] == small.uns[KEY]["params"] and manifest["mixgf_version"] == mgf.__version__
    manifest["format_version"] = 99
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 99"):
        TokenStore.open(p)
    with pytest.raises(ValueError, match="not a mixgf token store"):
        TokenStore.open(tmp_path)


def test_overwrite_semantics(small, tmp_path):
    p = tmp_path / "s.tokens.zarr"
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p, max_len=64)
    assert TokenStore.open(p).params["max_len"] == small.uns[KEY]["params"]["max_len"]  # untouched
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p, max_len=64, overwrite=True)
    store = TokenStore.open(p, verify=True)
    assert store.params["max_len"] == 64 and store.lengths.max() <= 64
    # something that is not a token store is never replaced
    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a mixgf token store"):
        mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    # an empty directory may receive a store
    empty_dir = tmp_path / "empty.zarr"
    empty_dir.mkdir()
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=empty_dir)
    assert TokenStore.open(empty_dir).n_cells == small.n_obs


def test_errors_leave_no_store(small, tmp_path):
    p = tmp_path / "s.tokens.zarr"
    with pytest.raises(KeyError, match="gene_id_key"):  # input checks come before anything is written
        mgf.pp.rank_tokenize(small, gene_id_key="nope", store=p)
    assert not p.exists()
    bad = small.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X[100, bad.X[100].indices[0]] = np.nan  # found in the last chunk, after two chunks were written
    with pytest.raises(ValueError, match="NaN"):
        mgf.pp.rank_tokenize(bad, gene_id_key="gene_id", store=p, chunk_size=40)
    assert not p.exists()
    assert N_KEY not in bad.obs and KEY not in bad.uns
    # an error mid-way while overwriting removes the old store too, so nothing looks complete and stale
    mgf.pp.rank_tokenize(small, gene_id_key="gene_id", store=p)
    with pytest.raises(ValueError, match="NaN"):
        mgf.pp.rank_tokenize(bad, gene_id_key="gene_id", store=p, chunk_size=40, overwrite=True)
    assert not p.exists()


# --------------------------------------------------------------------------------------------------------------------
# (c) peak memory of out-of-core tokenization is bound by the chunk size
def test_peak_memory_is_bound_by_the_chunk(tmp_path, pbmc_full):
    reps = 8
    big = ad.AnnData(
        sp.vstack([pbmc_full.X] * reps, format="csr"),
        var=pbmc_full.var[["gene_id"]].copy(),
    )
    big.obs_names = [f"c{i}" for i in range(big.n_obs)]
    path = tmp_path / "big.h5ad"
    big.write_h5ad(path)
    n_obs, n_vars = big.n_obs, big.n_vars
    indptr = big.X.indptr
    del big

    chunk_size = 32
    vocab = Vocabulary.load("mixgf")
    # one-time costs are not part of the measure: loading the vocabulary, numba's compiled kernels, zarr's modules
    mgf.pp.rank_tokenize(pbmc_full[:50].copy(), vocab=vocab, gene_id_key="gene_id", store=tmp_path / "warm.zarr")
    max_len, itemsize = vocab.rules.max_len, vocab.dtype.itemsize
    # A chunk holds chunk_size x max_len tokens and the chunk's counts; the kernels copy each stored count into
    # int64 indices, float64 values and a uint64 sort key (~32 bytes per count at the peak, measured).
    max_nnz = max(int(indptr[min(s + chunk_size, n_obs)] - indptr[s]) for s in range(0, n_obs, chunk_size))
    chunk_bytes = chunk_size * max_len * itemsize + max_nnz * 32
    # The writer buffers up to one zarr chunk of tokens (2**20) and zarr copies it ~3 times while encoding.
    store_chunk = 2**20 * itemsize
    per_cell = 200 * n_obs  # n_tokens / empty / totals / lengths / offsets (8 bytes each), obs columns, names
    per_gene = 200 * n_vars  # gene plan, per-gene totals, the coverage report's string arrays
    bound = 2 * chunk_bytes + 5 * store_chunk + per_cell + per_gene  # margin: two chunks alive at once
    in_memory_output = n_obs * max_len * itemsize  # the n_obs x max_len buffer of the in-memory mode

    adata = ad.read_h5ad(path, backed="r")
    tracemalloc.start()
    try:
        mgf.pp.rank_tokenize(adata, vocab=vocab, gene_id_key="gene_id", chunk_size=chunk_size,
                             store=tmp_path / "big.tokens.zarr")  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    adata.file.close()
    store = TokenStore.open(tmp_path / "big.tokens.zarr")
    assert store.n_cells == n_obs
    # the cells repeat: so do their tokens
    first, _ = store.padded(0, pbmc_full.n_obs)
    again, _ = store.padded(5 * pbmc_full.n_obs, 6 * pbmc_full.n_obs)
    np.testing.assert_array_equal(first, again)
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert peak < in_memory_output / 2, f"peak {peak / 2**20:.1f} MiB vs output {in_memory_output / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------------------------------
# (d) reading: rows, padded, iter_chunks, empty cells
def _ragged(seed=0, n=60):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 25, size=n)
    lengths[[0, 7, 8, n - 1]] = 0  # empty cells, also first and last
    rows = [rng.integers(1, 60_000, size=k).astype(np.uint16) for k in lengths]
    return rows, lengths


def _write(path, rows, lengths, *, chunk_tokens, pad_id=0, block=9):
    names = [f"cell{i}" for i in range(len(rows))]
    with TokenStoreWriter(path, np.uint16, chunk_tokens=chunk_tokens) as w:
        for s in range(0, len(rows), block):
            part = rows[s : s + block]
            w.append(np.concatenate(part) if part else np.zeros(0, np.uint16), lengths[s : s + block])
        return w.finish(names, {"pad_id": pad_id, "species": "human"}, {})


@pytest.mark.parametrize("chunk_tokens", [7, 100, 2**20])
def test_rows_padded_iter_chunks(tmp_path, chunk_tokens):
    rows, lengths = _ragged()
    store = _write(tmp_path / "r.zarr", rows, lengths, chunk_tokens=chunk_tokens, pad_id=5)
    store = TokenStore.open(store.path, verify=True)
    assert len(store) == 60 and store.n_tokens == int(lengths.sum())
    np.testing.assert_array_equal(store.lengths, lengths)
    assert store.offsets[0] == 0 and store.offsets[-1] == store.n_tokens
    assert store.obs_names[3] == "cell3"

    rng = np.random.default_rng(1)
    for idx in ([0], [59], [7, 8], list(range(60)), rng.integers(0, 60, size=40), [3, 3, 50, 1, 3]):
        got = store.rows(idx)
        assert len(got) == len(idx)
        for i, r in zip(idx, got):
            assert r.dtype == np.uint16
            np.testing.assert_array_equal(r, rows[i])
    assert store.rows([]) == []
    with pytest.raises(IndexError):
        store.rows([60])

    width = int(lengths.max())
    tokens, _ = store.padded()
    assert tokens.shape == (60, width) and tokens.dtype == np.uint16
    for i in range(60):
        np.testing.assert_array_equal(tokens[i, : lengths[i]], rows[i])
        assert (tokens[i, lengths[i] :] == 5).all()
    sub, sub_len = store.padded(7, 9)  # only empty cells: one column of padding
    assert sub.shape == (2, 1) and (sub == 5).all() and (sub_len == 0).all()
    assert store.padded(10, 10)[0].shape == (0, 1)
    with pytest.raises(IndexError):
        store.padded(50, 61)

    seen = []
    for start, stop, block, block_len in store.iter_chunks(13):
        assert stop - start == block.shape[0] <= 13
        np.testing.assert_array_equal(block_len, lengths[start:stop])
        np.testing.assert_array_equal(block[:, : tokens.shape[1]], tokens[start:stop, : block.shape[1]])
        seen.append((start, stop))
    assert seen[0][0] == 0 and seen[-1][1] == 60 and all(a[1] == b[0] for a, b in itertools.pairwise(seen))


def test_empty_cells_through_rank_tokenize(small, tmp_path):
    adata = small.copy()
    X = adata.X.tolil()
    X[[0, 55, 119]] = 0  # no counts at all
    adata.X = X.tocsr()
    with pytest.warns(UserWarning, match="3 of 120 cells express no gene"):
        mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", store=tmp_path / "e.zarr", chunk_size=50)
    store = TokenStore.open(tmp_path / "e.zarr")
    empty = np.asarray(adata.obs[EMPTY_KEY])
    assert empty[[0, 55, 119]].all() and empty.sum() == 3 == store.params["n_cells_empty"]
    with pytest.warns(UserWarning, match="express no gene"):
        ref = mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", copy=True)
    tokens, lengths = store.padded()
    np.testing.assert_array_equal(tokens, ref.obsm[KEY])
    special = int(store.params["add_cls"]) + int(store.params["add_eos"])  # none in the mixgf rules
    assert (lengths[[0, 55, 119]] == special).all()
    for i, r in zip([0, 55, 119, 1], store.rows([0, 55, 119, 1])):
        np.testing.assert_array_equal(r, ref.obsm[KEY][i, : lengths[i]])


def test_writer_refuses_misuse(tmp_path):
    w = TokenStoreWriter(tmp_path / "w.zarr", np.uint16)
    with pytest.raises(RuntimeError, match="open the writer"):
        w.append(np.zeros(3, np.uint16), [3])
    with pytest.raises(ValueError, match="add up"), TokenStoreWriter(tmp_path / "w.zarr", np.uint16) as w:
        w.append(np.zeros(3, np.uint16), [2])
    assert not (tmp_path / "w.zarr").exists()
    with pytest.raises(ValueError, match="dtype"), TokenStoreWriter(tmp_path / "w.zarr", np.uint16) as w:
        w.append(np.array([70_000]), [1])
    assert not (tmp_path / "w.zarr").exists()

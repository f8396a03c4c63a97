"""Multi-process inference: tl.embed / tl.perturb under torchrun (2 CPU processes, gloo) equal one process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mixgf as mgf
from mixgf.model import all_gather_rows, partition_cells, rank_device, rank_world, use_distributed

WORKER = Path(__file__).with_name("_dist_worker.py")
_spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


# -- single-process helpers ----------------------------------------------------------------------------------------
def test_partition_covers_every_cell_once_contiguous_and_balanced():
    for n, world in [(101, 2), (7, 3), (2, 4), (0, 3), (1000, 8), (5, 1)]:
        parts = partition_cells(n, world)
        assert len(parts) == world
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
        sizes = [p.shape[0] for p in parts]
        assert max(sizes) - min(sizes) <= 1
    w = np.random.default_rng(0).integers(10, 2048, 1001)
    for world in (2, 3, 4, 7):
        parts = partition_cells(w.shape[0], world, weights=w)
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(w.shape[0]))  # contiguous, in order
        cost = np.array([w[p].sum() for p in parts])
        assert np.abs(cost - w.sum() / world).max() <= w.max()
        assert all(np.array_equal(a, b) for a, b in zip(parts, partition_cells(w.shape[0], world, weights=w)))
    # zero cost everywhere falls back to equal counts; heavy cells are not all given to one rank
    assert [p.shape[0] for p in partition_cells(6, 2, weights=np.zeros(6))] == [3, 3]
    assert [p.tolist() for p in partition_cells(4, 2, weights=[100, 1, 1, 100])] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="one entry per cell"):
        partition_cells(3, 2, weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        partition_cells(2, 2, weights=[1, -2])
    with pytest.raises(ValueError, match="world"):
        partition_cells(3, 0)


def test_single_process_helpers(monkeypatch):
    assert rank_world() == (0, 1)
    assert use_distributed(None) is False and use_distributed(False) is False
    with pytest.raises(RuntimeError, match="init_process_group"):
        use_distributed(True)
    out = all_gather_rows(np.array([[1.0, 2.0], [3.0, 4.0]]), [2, 0], 3)
    np.testing.assert_array_equal(out, [[3.0, 4.0], [np.nan, np.nan], [1.0, 2.0]])
    with pytest.raises(ValueError, match="more than once"):
        all_gather_rows(np.zeros((2, 1)), [1, 1], 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        all_gather_rows(np.zeros((1, 1)), [3], 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device(None) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="init_process_group"):
        mgf.tl.embed(mgf.datasets.pbmc3k()[:2].copy(), distributed=True)


# -- two processes -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the worker under torchrun with 2 CPU processes (gloo); the directory of what each rank wrote."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*torchrun, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def single():
    """The worker's inputs computed in this one process."""
    with mgf.settings.override(progress_bar=False, verbosity="warning"):
        a = worker.tokenized()
        mgf.tl.embed(a)
        mgf.tl.perturb(a, **worker.PERTURB)
    return a


def _both(ranks: Path, name: str) -> np.ndarray:
    r0, r1 = np.load(ranks / f"{name}_rank0.npy"), np.load(ranks / f"{name}_rank1.npy")
    np.testing.assert_array_equal(r0, r1)  # every rank holds the same full result
    return r0


def test_embed_is_shared_and_gathered_in_cell_order(ranks, single):
    emb = _both(ranks, "embed")
    assert emb.shape == (worker.N_CELLS, 128) and np.isfinite(emb).all()  # no tail dropped
    np.testing.assert_allclose(emb, single.obsm["X_mixgf"], atol=1e-5, rtol=0)
    params = json.loads((ranks / "params_rank0.json").read_text())
    assert params["world"] == 2 and params["embed"]["world_size"] == 2
    assert single.uns["mixgf"]["params"]["world_size"] == 1


def test_embed_streams_a_token_store_in_every_rank(ranks, single):
    emb = _both(ranks, "embed_store")
    np.testing.assert_allclose(emb, single.obsm["X_mixgf"], atol=1e-5, rtol=0)


def test_perturb_is_shared_and_equals_one_process(ranks, single):
    entry = single.uns["mixgf_perturb"]
    np.testing.assert_allclose(_both(ranks, "shift"), single.obsm["mixgf_perturb_shift"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(_both(ranks, "original"), single.obsm["mixgf_perturb_original"], atol=1e-5)
    np.testing.assert_allclose(_both(ranks, "perturbed"), entry["perturbed_embeddings"], atol=1e-5)
    r0 = (ranks / "perturb_rank0.csv").read_text()
    assert r0 == (ranks / "perturb_rank1.csv").read_text()
    got = pd.read_csv(ranks / "perturb_rank0.csv", index_col=0, keep_default_na=False)
    want = entry["results"]
    assert got.index.tolist() == want.index.tolist() and got.columns.tolist() == want.columns.tolist()
    for col in want.columns:
        if pd.api.types.is_float_dtype(want[col]):
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-4, atol=1e-7)
        else:
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col
    p_dist = json.loads((ranks / "params_rank1.json").read_text())["perturb"]
    for key in ("n_cells_selected", "n_cells_perturbed", "n_cells_skipped", "n_copies", "n_goal_cells"):
        assert p_dist[key] == entry["params"][key], key
    assert p_dist["world_size"] == 2 and p_dist["n_copies"] > 0


def test_gather_of_uneven_and_empty_shares(ranks):
    g0, g1 = np.load(ranks / "gather_rank0.npz"), np.load(ranks / "gather_rank1.npz")
    for key in ("uneven", "one_empty", "total"):
        np.testing.assert_array_equal(g0[key], g1[key])
    rows = np.arange(7, dtype=np.float64)
    np.testing.assert_array_equal(g0["uneven"][:7], np.stack([rows * 10, rows * 10 + 1], axis=1))
    assert np.isnan(g0["uneven"][7]).all()
    want = np.full((6, 1), np.nan, dtype=np.float32)
    want[[0, 5, 2], 0] = [0.5, 5.5, 2.5]
    np.testing.assert_array_equal(g0["one_empty"], want)
    assert g0["one_empty"].dtype == np.float32 and float(g0["total"]) == 3.0

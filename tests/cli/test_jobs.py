"""Sharded, resumable command-line jobs: ``mixgf tokenize`` / ``embed`` / ``perturb`` over several inputs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest

import mixgf as mgf
from mixgf.cli import main
from mixgf.cli._jobs import expand_inputs, plan_shards

MAX_LEN = 256  # short sequences keep the model work small; the sharding logic does not depend on it


@pytest.fixture
def inputs(pbmc_full, tmp_path):
    """Three real pbmc3k slices as separate .h5ad files (130, 130 and 101 cells)."""
    d = tmp_path / "in"
    d.mkdir()
    bounds = [(0, 130), (130, 260), (260, 361)]
    for i, (a, b) in enumerate(bounds):
        pbmc_full[a:b].copy().write_h5ad(d / f"part{i}.h5ad")
    return d


def _embed_args(src, out, *extra):
    return ["embed", str(src), "-o", str(out), "--gene-id-key", "gene_id", "--max-len", str(MAX_LEN), *extra]


def _read_embedding(out):
    files = sorted(p for p in out.glob("*.h5ad"))
    return ad.concat([ad.read_h5ad(f) for f in files])


def test_plan_shards_covers_every_cell_once(inputs, pbmc_full):
    paths = expand_inputs([inputs])
    assert [p.name for p in paths] == ["part0.h5ad", "part1.h5ad", "part2.h5ad"]
    shards = plan_shards(paths, 50)
    assert [s.name for s in shards[:3]] == ["part0-00000", "part0-00001", "part0-00002"]
    rows = {(s.path.name, r) for s in shards for r in range(s.start, s.stop)}
    assert len(rows) == sum(s.n_cells for s in shards) == 361
    assert max(s.n_cells for s in shards) == 50
    with pytest.raises(ValueError, match="shard_cells"):
        plan_shards(paths, 0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_inputs([inputs / "nope.h5ad"])
    pbmc_full[:0].copy().write_h5ad(inputs / "zzz_empty.h5ad")
    with pytest.raises(ValueError, match="holds no cells"):
        plan_shards(expand_inputs([inputs]), 50)


def test_embed_shards_match_in_memory_embedding(inputs, pbmc_full, tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(_embed_args(inputs, out, "--shard-cells", "100", "--chunk-cells", "60")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_shards"] == 6 and manifest["n_cells"] == 361  # 100 + 30, 100 + 30, 100 + 1
    got = _read_embedding(out)
    ref = pbmc_full[:361].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id", max_len=MAX_LEN)
    mgf.tl.embed(ref)
    assert list(got.obs_names) == list(ref.obs_names)  # every cell once, in input order
    np.testing.assert_allclose(got.obsm["X_mixgf"], ref.obsm["X_mixgf"], atol=1e-5)
    assert (got.obs["cell_type"].astype(str) == ref.obs["cell_type"].astype(str)).all()
    params = ad.read_h5ad(out / "part0-00000.h5ad").uns["mixgf"]["params"]
    assert params["model"] == "mixgf-default-4L128"
    # a second run does nothing; other options on the same folder are refused, --overwrite redoes
    capsys.readouterr()
    assert main(_embed_args(inputs, out, "--shard-cells", "100", "--chunk-cells", "60")) == 0
    assert "6 already finished (skipped), 0 to do" in capsys.readouterr().out
    assert main(_embed_args(inputs, out, "--shard-cells", "100", "--pooling", "cls")) == 2
    assert "other inputs or options" in capsys.readouterr().err


def test_killed_job_resumes_without_redoing_finished_shards(inputs, pbmc_full, tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "part2-00002.h5ad.partial").write_text("left by a crash")  # stale partial output of a shard
    cmd = [sys.executable, "-m", "mixgf", *_embed_args(inputs, out, "--shard-cells", "40")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 600
    while not list(out.glob("*.done.json")):  # wait for the first finished shard, then kill
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.done.json")}
    assert 1 <= len(finished) < 11  # killed part-way: 4 + 4 + 3 shards in all
    assert not (out / "manifest.json").exists()

    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert f"{len(finished)} already finished (skipped), {11 - len(finished)} to do" in result.stdout
    for name, mtime in finished.items():  # finished shards were not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob("*.partial"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_shards"] == 11 and manifest["n_cells"] == 361

    clean = tmp_path / "clean"
    assert main(_embed_args(inputs, clean, "--shard-cells", "40")) == 0
    a, b = _read_embedding(out), _read_embedding(clean)
    assert list(a.obs_names) == list(b.obs_names) == list(pbmc_full.obs_names[:361])
    np.testing.assert_array_equal(a.obsm["X_mixgf"], b.obsm["X_mixgf"])


def test_perturb_shards(inputs, tmp_path):
    out = tmp_path / "pert"
    args = [
        "perturb", str(inputs / "part0.h5ad"), str(inputs / "part1.h5ad"), "-o", str(out), "--genes", "CD74,LYZ+S100A9",
        "--gene-id-key", "gene_id", "--max-len", str(MAX_LEN), "--max-cells", "20", "--n-controls", "4",
    ]  # fmt: skip
    assert main(args) == 0
    res = ad.read_h5ad(out / "part0.perturb.h5ad")
    assert res.n_obs <= 20 and set(res.var_names) == {"CD74", "LYZ+S100A9"}
    assert {"shift_mean", "p_value", "p_adj", "n_cells"} <= set(res.var.columns)
    n = res.var.loc["CD74", "n_cells"]
    assert n == int((~np.isnan(res[:, "CD74"].X)).sum())
    table = (out / "results.tsv").read_text().splitlines()
    assert table[0].split("\t")[0] == "gene" and len(table) == 1 + 2 * 2
    # the command line pools the same hidden layer as mgf.tl.perturb (-1), so both give the same numbers
    assert res.uns["mixgf_perturb"]["params"]["hidden_layer"] == -1
    sub = ad.read_h5ad(inputs / "part0.h5ad")
    mgf.pp.rank_tokenize(sub, gene_id_key="gene_id", max_len=MAX_LEN)
    py = mgf.tl.perturb(sub, genes=["CD74", ["LYZ", "S100A9"]], max_cells=20, n_controls=4, inplace=False)
    np.testing.assert_allclose(py.loc["CD74", "shift_mean"], res.var.loc["CD74", "shift_mean"], rtol=1e-4)


def test_old_layer_spellings_still_work_with_a_warning(capsys):
    from mixgf.cli._main import DEFAULT_EMBED_LAYER, _split_layers
    from mixgf.tl._embed import DEFAULT_LAYER

    assert DEFAULT_EMBED_LAYER == DEFAULT_LAYER  # `mixgf embed` and mgf.tl.embed pool the same layer
    old = argparse.Namespace(layer="-2", hidden_layer=None, counts_layer="counts")
    _split_layers(old)
    assert (old.layer, old.hidden_layer) == ("counts", -2)
    err = capsys.readouterr().err
    assert "--hidden-layer -2" in err and "--counts-layer is deprecated" in err
    new = argparse.Namespace(layer="counts", hidden_layer=-1, counts_layer=None)
    _split_layers(new)
    assert (new.layer, new.hidden_layer) == ("counts", -1) and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="disagree"):
        _split_layers(argparse.Namespace(layer="-2", hidden_layer=-1, counts_layer=None))


def test_torchrun_processes_share_the_shards(inputs, pbmc_full, tmp_path):
    out = tmp_path / "emb"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mixgf",
        *_embed_args(inputs, out, "--shard-cells", "70"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 processes" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_shards"] == 6 and manifest["n_cells"] == 361
    got = _read_embedding(out)
    ref = pbmc_full[:361].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id", max_len=MAX_LEN)
    mgf.tl.embed(ref)
    assert list(got.obs_names) == list(ref.obs_names)
    np.testing.assert_allclose(got.obsm["X_mixgf"], ref.obsm["X_mixgf"], atol=1e-5)


def test_tokenize_into_stores_then_embed_them(inputs, pbmc_full, tmp_path, capsys):
    tok = tmp_path / "tokens"
    assert main(["tokenize", str(inputs), "-o", str(tok), "--gene-id-key", "gene_id", "--max-len", "300",
                 "--shard-cells", "100", "--chunk-size", "32"]) == 0  # fmt: skip
    manifest = json.loads((tok / "manifest.json").read_text())
    assert manifest["n_shards"] == 6 and manifest["n_cells"] == 361
    ref = pbmc_full[:361].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id", max_len=300)
    stores = [mgf.pp.TokenStore.open(tok / r["output"], verify=True) for r in manifest["shards"]]
    tokens = np.concatenate([s.padded()[0][:, : ref.obsm["mixgf_tokens"].shape[1]] for s in stores if s.n_cells], 0)
    assert sum(s.n_cells for s in stores) == 361
    assert [n for s in stores for n in s.obs_names] == list(ref.obs_names)
    lengths = np.concatenate([s.lengths for s in stores])
    np.testing.assert_array_equal(lengths, ref.obs["mixgf_tokens_n_tokens"].to_numpy())
    for i in range(361):
        np.testing.assert_array_equal(tokens[i, : lengths[i]], ref.obsm["mixgf_tokens"][i, : lengths[i]])
    assert manifest["shards"][0]["n_tokens"] == int(stores[0].lengths.sum())

    emb = tmp_path / "emb"
    assert main(["embed", str(tok), "-o", str(emb)]) == 0  # stores: no re-tokenization
    got = _read_embedding(emb)
    mgf.tl.embed(ref)
    assert list(got.obs_names) == list(ref.obs_names)
    # the cells' obs columns come back from the inputs the stores were tokenized from
    assert "cell_type" in got.obs and list(got.obs["cell_type"].astype(str)) == list(ref.obs["cell_type"].astype(str))
    np.testing.assert_allclose(got.obsm["X_mixgf"], ref.obsm["X_mixgf"], atol=1e-5)
    # a store made with another vocabulary is refused with the fix named
    other = tmp_path / "v1"
    assert main(["tokenize", str(inputs / "part2.h5ad"), "-o", str(other), "--gene-id-key", "gene_id",
                 "--vocab", "geneformer-v1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["embed", str(other), "-o", str(tmp_path / "emb-v1")]) == 2
    assert "tokenize again with --vocab" in capsys.readouterr().err


def test_tokenize_reads_a_counts_layer_of_zarr_and_h5ad_inputs(pbmc_full, tmp_path, capsys):
    adata = pbmc_full[:150].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(np.float32) / 7  # not counts
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata.write_zarr(tmp_path / "b.zarr")
    ref = pbmc_full[:150].copy()
    mgf.pp.rank_tokenize(ref, gene_id_key="gene_id")
    out = tmp_path / "tok"
    common = ["--gene-id-key", "gene_id", "--shard-cells", "100"]
    assert main(["tokenize", str(tmp_path / "a.h5ad"), "-o", str(out), *common]) == 2  # X is not counts
    assert "non-integer" in capsys.readouterr().err
    assert not list(out.glob("*.tokens.zarr"))  # nothing that looks finished
    args = ["tokenize", str(tmp_path / "a.h5ad"), str(tmp_path / "b.zarr"), "-o", str(out), *common]
    assert main([*args, "--layer", "counts"]) == 0
    for stem in ("a", "b"):
        stores = [mgf.pp.TokenStore.open(out / f"{stem}-{k:05d}.tokens.zarr") for k in (0, 1)]
        assert [n for s in stores for n in s.obs_names] == list(ref.obs_names)
        for s, (a, b) in zip(stores, [(0, 100), (100, 150)]):
            tokens, lengths = s.padded()
            np.testing.assert_array_equal(lengths, ref.obs["mixgf_tokens_n_tokens"].to_numpy()[a:b])
            np.testing.assert_array_equal(tokens, ref.obsm["mixgf_tokens"][a:b, : tokens.shape[1]])
    assert main([*args, "--layer", "nope", "--overwrite"]) == 2
    assert "layer 'nope' not found" in capsys.readouterr().err

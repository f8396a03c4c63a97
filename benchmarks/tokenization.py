"""Benchmark of rank-value tokenization: ``mixgf.pp.rank_tokenize`` against a Geneformer-style reference.

What it does, in one run on one input:

1. builds a large input by **replicating real cells** (pbmc3k, 10x human PBMCs; by default read from
   ``../shared/data``, else the copy bundled with mixgf) to ``--cells`` rows, shuffled with a fixed seed; the
   matrix stays CSR with integer counts (int32);
2. runs each method in its **own child process** (``subprocess``, this same script with ``--child``) with every
   thread pool set to one thread: one warm-up call on a 1,000-cell slice (timed separately; numba compiles
   into a fresh temporary cache, so this is the real JIT cost), then the timed call(s) on the whole input;
3. measures peak memory in the child as the kernel's resident-set high-water mark (``VmHWM`` in
   ``/proc/self/status``, the counter behind ``ru_maxrss``) at the end, minus the resident set (``VmRSS``) right
   before the timed call, with the high-water mark reset there (``/proc/self/clear_refs``). ``ru_maxrss`` itself
   is not used: in a child started by fork/exec it also holds the *parent's* peak, which hides the child's own;
4. checks that the methods give the same tokens: per cell the same sequence, or the same one up to the order
   of genes with exactly equal normalized values (ties), which the reference breaks arbitrarily;
5. prints one table (and with ``--write-docs`` writes the "Tokenization" section of ``docs/benchmarks.md``).

Methods
-------
``mixgf``
    ``mixgf.pp.rank_tokenize(adata, gene_id_key=...)`` with the default ``"mixgf"`` vocabulary (2,048 tokens).
``reference``
    Geneformer's ``TranscriptomeTokenizer.tokenize_anndata`` written out here (upstream ``geneformer/tokenizer.py``):
    keep the vocabulary genes; per chunk of 512 cells ``X / n_counts * 10_000 / medians`` as a **dense float64**
    matrix, converted back to CSR; then per cell ``tokens[row.indices][np.argsort(-row.data)]`` in a Python loop;
    all untruncated rank lists are kept in a list and cut to 2,048 at the end. ``n_counts`` is the total of all
    genes of the cell, as upstream. Old scipy densified ``sparse / dense``, which is the upstream behaviour the
    research notes describe.
``reference-sparse``
    The same upstream expression evaluated literally on the installed scipy, where ``csr_matrix / ndarray`` stays
    sparse (``self.multiply(1 / other)``): what a user running Geneformer's code today gets.
``mixgf-v1``, ``mixgf-v2``
    ``rank_tokenize`` with ``vocab="geneformer-v1"`` (IDs as given, 2,048 tokens) and ``vocab="geneformer-v2"``
    (every ID through Geneformer's mapping dictionary, genes mapping to one ID summed, ``<cls>`` + 4,094 genes +
    ``<eos>``), to measure what V2's rules cost (human inputs only). Not part of the default ``--methods``.

Both references use the same vocabulary, medians and column -> token mapping as mixgf
(``mixgf.genes.map_to_ensembl`` + ``Vocabulary.token_ids``). mixgf's vocabulary normalizes by the total of the
vocabulary genes instead of all genes; that is one factor per cell, so it does not change a cell's ranking (up to
float rounding of near-ties, which the correctness check accounts for).

Usage::

    python benchmarks/tokenization.py                      # 200,000 PBMC cells + 50,000 mouse pancreas cells
    python benchmarks/tokenization.py --cells 20000 --mouse-cells 0
    python benchmarks/tokenization.py --write-docs         # also update docs/benchmarks.md
    python benchmarks/tokenization.py --cprofile --cells 50000   # cProfile of rank_tokenize only (pbmc)
    python benchmarks/tokenization.py --cprofile baron --cells 50000
    python benchmarks/tokenization.py --methods mixgf-v1,mixgf-v2 --cells 50000 --mouse-cells 0 --repeats 3

This is a benchmark, not a test: it asserts nothing and takes minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import memory_mb, reset_peak_memory, write_docs_section

REPO = Path(__file__).resolve().parents[1]
MAX_LEN = 2048  # tokens kept per cell (the default "mixgf" vocabulary's rule)
REF_CHUNK = 512  # Geneformer's default chunk_size
TARGET_SUM = 10_000
WARM_CELLS = 1_000
TIE_RTOL = 1e-12  # relative difference of x below which genes count as tied (see compare)
GOAL_PER_CORE = 30_000  # cells/s per core, project goal for mixgf
GOAL_RATIO = 5.0  # mixgf / reference, project goal
DOCS_HEADING = "## Tokenization (`benchmarks/tokenization.py`)"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

METHODS = {
    "mixgf": "mixgf `rank_tokenize`",
    "reference": "Geneformer-style reference (dense)",
    "reference-sparse": "Geneformer code on scipy 1.17 (sparse)",
}
# rank_tokenize under Geneformer's V1 and V2 rules (opt-in; human inputs only)
PRESET_METHODS = {"mixgf-v1": "geneformer-v1", "mixgf-v2": "geneformer-v2"}
METHODS |= {m: f"mixgf `rank_tokenize(vocab={v!r})`" for m, v in PRESET_METHODS.items()}
DEFAULT_METHODS = ("mixgf", "reference", "reference-sparse")


@dataclass(frozen=True)
class Profile:
    """A real data set to replicate."""

    name: str
    label: str
    shared_path: str  # relative to the --shared folder
    bundled: str  # function of mixgf.datasets
    gene_id_key: str | None  # var column with gene IDs; None = var_names (symbols)


PROFILES = {
    "pbmc": Profile(
        "pbmc", "human PBMCs (10x 3k PBMCs)", "data/pbmc3k_raw_labeled/pbmc3k_raw_labeled.h5ad", "pbmc3k", "gene_id"
    ),
    "baron": Profile(
        "baron",
        "mouse pancreas (Baron 2016 mouse 1, inDrop)",
        "data/baron2016_mouse_pancreas/baron2016_mouse1_pancreas.h5ad",
        "baron_mouse_pancreas",
        None,
    ),
}


# --------------------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------------------


def load_source(profile: Profile, shared: Path):
    """The real cells to replicate: the ../shared copy when present, else the one bundled with mixgf."""
    import anndata as ad

    import mixgf as mgf

    path = shared / profile.shared_path
    if path.exists():
        adata, where = ad.read_h5ad(path), f"`{path.relative_to(shared.parent)}`"
    else:
        adata, where = getattr(mgf.datasets, profile.bundled)(), f"`mixgf.datasets.{profile.bundled}()`"
    X = sp.csr_matrix(adata.X)
    if not np.array_equal(X.data, np.round(X.data)):
        msg = f"{where} does not hold integer counts."
        raise ValueError(msg)
    X = sp.csr_matrix(X, dtype=np.int32)
    X.sum_duplicates()
    names = adata.var_names.to_numpy(dtype=str)
    ids = names if profile.gene_id_key is None else adata.var[profile.gene_id_key].astype(str).to_numpy(dtype=str)
    return X, names, ids, where


def replicate(X: sp.csr_matrix, n_cells: int, seed: int) -> sp.csr_matrix:
    """``n_cells`` rows drawn by repeating the rows of ``X`` (each used ``n_cells / n`` times), shuffled."""
    rows = np.resize(np.arange(X.shape[0]), n_cells)
    np.random.default_rng(seed).shuffle(rows)
    out = X[rows]
    out.sort_indices()
    return out


def save_csr(workdir: Path, name: str, X: sp.csr_matrix) -> None:
    for part in ("indptr", "indices", "data"):
        np.save(workdir / f"{name}_{part}.npy", getattr(X, part))
    (workdir / f"{name}_shape.json").write_text(json.dumps(list(X.shape)))


def load_csr(workdir: Path, name: str) -> sp.csr_matrix:
    shape = tuple(json.loads((workdir / f"{name}_shape.json").read_text()))
    parts = [np.load(workdir / f"{name}_{p}.npy") for p in ("data", "indices", "indptr")]
    return sp.csr_matrix(tuple(parts), shape=shape, copy=False)


def make_adata(X: sp.csr_matrix, meta: dict):
    import anndata as ad

    var = pd.DataFrame(index=pd.Index(meta["var_names"], name=None))
    if meta["gene_id_key"] is not None:
        var[meta["gene_id_key"]] = meta["gene_ids"]
    obs = pd.DataFrame(index=pd.RangeIndex(X.shape[0]).astype(str))
    return ad.AnnData(X, obs=obs, var=var)


# --------------------------------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------------------------------


def column_tokens(gene_names: np.ndarray, vocab) -> np.ndarray:
    """Token id per data column (-1 outside the vocabulary), mapped the way ``rank_tokenize`` maps genes."""
    import mixgf as mgf

    gene_tokens = np.asarray(vocab.tokens, dtype=object)[vocab.is_gene]
    mapping = mgf.genes.map_to_ensembl(np.asarray(gene_names, dtype=object), "auto", prefer=gene_tokens)
    ids = np.array([x if x is not None else "" for x in mapping.ensembl_ids], dtype=object)
    col2tok = vocab.token_ids(ids).astype(np.int64)
    col2tok[~vocab.is_gene[np.maximum(col2tok, 0)] | (ids == "")] = -1
    return col2tok


def rank_genes(gene_vector: np.ndarray, gene_tokens: np.ndarray) -> np.ndarray:
    """Geneformer's ``rank_genes``: tokens sorted by descending normalized value."""
    sorted_indices = np.argsort(-gene_vector)
    return gene_tokens[sorted_indices]


def geneformer_reference(adata, gene_id_key: str | None, vocab, *, dense: bool) -> list[np.ndarray]:
    """Geneformer's ``tokenize_anndata`` loop (h5ad path, no ``filter_pass``), then truncation to 2,048."""
    names = adata.var_names.to_numpy() if gene_id_key is None else adata.var[gene_id_key].to_numpy()
    col2tok = column_tokens(names, vocab)
    coding_miRNA_loc = np.flatnonzero(col2tok >= 0)
    coding_miRNA_tokens = col2tok[coding_miRNA_loc]
    norm_factor_vector = vocab.medians[coding_miRNA_tokens]
    n_counts_all = np.asarray(adata.X.sum(axis=1)).ravel()  # upstream: adata.obs["n_counts"], all genes
    filter_pass_loc = np.arange(adata.n_obs)

    tokenized_cells = []
    for i in range(0, len(filter_pass_loc), REF_CHUNK):
        idx = filter_pass_loc[i : i + REF_CHUNK]
        n_counts = n_counts_all[idx][:, None]
        X_view0 = adata[idx, :].X
        X_view = X_view0[:, coding_miRNA_loc]
        if dense:  # what ``sparse / dense`` gave on the scipy versions Geneformer was written against
            X_view = X_view.toarray()
        X_norm = X_view / n_counts * TARGET_SUM / norm_factor_vector
        X_norm = sp.csr_matrix(X_norm)
        tokenized_cells += [
            rank_genes(X_norm[j].data, coding_miRNA_tokens[X_norm[j].indices]) for j in range(X_norm.shape[0])
        ]
    # upstream truncates later, in ``create_dataset`` / ``format_cell_features`` (no special tokens for 2,048)
    return [cell[:MAX_LEN] for cell in tokenized_cells]


def run_method(method: str, adata, gene_id_key: str | None):
    """Run one method on ``adata``; returns what it produced (kept alive until memory is read)."""
    import mixgf as mgf

    if method == "mixgf" or method in PRESET_METHODS:
        mgf.pp.rank_tokenize(adata, gene_id_key=gene_id_key, vocab=PRESET_METHODS.get(method, "mixgf"))
        return adata.obsm["mixgf_tokens"]
    vocab = mgf.genes.Vocabulary.load("mixgf")
    return geneformer_reference(adata, gene_id_key, vocab, dense=method == "reference")


def flatten(method: str, out, adata) -> tuple[np.ndarray, np.ndarray]:
    """All cells' tokens concatenated (uint16) and the number per cell."""
    if method == "mixgf" or method in PRESET_METHODS:
        lengths = adata.obs["mixgf_tokens_n_tokens"].to_numpy().astype(np.int64)
        mask = np.arange(out.shape[1])[None, :] < lengths[:, None]
        return out[mask].astype(np.uint16), lengths
    lengths = np.fromiter((len(c) for c in out), dtype=np.int64, count=len(out))
    flat = np.concatenate(out) if len(out) else np.empty(0, dtype=np.int64)
    return flat.astype(np.uint16), lengths


# --------------------------------------------------------------------------------------------------------------
# child process: one method, timed and measured
# --------------------------------------------------------------------------------------------------------------


def child_main(method: str, workdir: Path, repeats: int) -> None:
    import mixgf as mgf

    mgf.settings.progress_bar = False
    mgf.settings.verbosity = "warning"
    meta = json.loads((workdir / "meta.json").read_text())
    key = meta["gene_id_key"]

    # warm-up first (imports, numba compilation into a fresh cache), on a small slice
    warm = make_adata(load_csr(workdir, "warm"), meta)
    t = time.perf_counter()
    run_method(method, warm, key)
    warmup_s = time.perf_counter() - t
    del warm
    gc.collect()

    adata = make_adata(load_csr(workdir, "input"), meta)
    seconds, cpu_seconds, sys_seconds, peak_mb, out = [], [], [], [], None
    for _ in range(repeats):
        out = None  # free the previous output first
        adata.obsm.pop("mixgf_tokens", None)
        gc.collect()
        hwm_reset = reset_peak_memory()
        base = memory_mb()
        t, c = time.perf_counter(), os.times()
        out = run_method(method, adata, key)
        seconds.append(time.perf_counter() - t)
        c1 = os.times()
        cpu_seconds.append(c1.user + c1.system - c.user - c.system)
        sys_seconds.append(c1.system - c.system)
        peak_mb.append(memory_mb()["VmHWM"] - base["VmRSS"])

    flat, lengths = flatten(method, out, adata)
    np.save(workdir / f"tokens_{method}.npy", flat)
    np.save(workdir / f"lengths_{method}.npy", lengths)
    result = {
        "method": method,
        "n_cells": adata.n_obs,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "warmup_s": warmup_s,
        "sys_seconds": sys_seconds,
        "baseline_rss_mb": base["VmRSS"],
        "hwm_reset": hwm_reset,
        "peak_mb": peak_mb[0],  # first call, in a fresh process (later calls may reuse memory kept by malloc)
        "peak_mb_all": peak_mb,
    }
    (workdir / f"result_{method}.json").write_text(json.dumps(result))


def run_child(method: str, workdir: Path, repeats: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(workdir / f"numba_cache_{method}"))
    env.update(dict.fromkeys(THREAD_VARS, "1"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--workdir", str(workdir)]
    subprocess.run([*cmd, "--repeats", str(repeats)], env=env, check=True)
    return json.loads((workdir / f"result_{method}.json").read_text())


# --------------------------------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------------------------------


def compare(workdir: Path, a: str, b: str, X: sp.csr_matrix, col2tok: np.ndarray, medians: np.ndarray) -> dict:
    """Classify every cell: identical, the same up to the order of tied genes, or a real mismatch.

    Genes count as tied when their normalized values ``x`` agree to ``TIE_RTOL`` (relative): exact ties (equal
    count and median) and ties of exact arithmetic that float rounding splits (e.g. ``9 / m1 == 13 / m2``), which
    the methods round differently because they divide by different totals (all genes vs vocabulary genes).
    """
    ta, la = np.load(workdir / f"tokens_{a}.npy"), np.load(workdir / f"lengths_{a}.npy")
    tb, lb = np.load(workdir / f"tokens_{b}.npy"), np.load(workdir / f"lengths_{b}.npy")
    n = len(la)
    if len(lb) != n:
        return {"cells": n, "identical": 0, "ties": 0, "ties_at_cut": 0, "mismatch": n}
    oa, ob = np.concatenate([[0], np.cumsum(la)]), np.concatenate([[0], np.cumsum(lb)])
    if np.array_equal(la, lb):
        differing = np.unique(np.searchsorted(oa, np.flatnonzero(ta != tb), side="right") - 1)
    else:
        same = [la[i] == lb[i] and np.array_equal(ta[oa[i] : oa[i + 1]], tb[ob[i] : ob[i + 1]]) for i in range(n)]
        differing = np.flatnonzero(~np.asarray(same, dtype=bool))
    ties = ties_at_cut = mismatch = 0
    x = np.zeros(len(medians))
    for i in differing:
        sa, sb = ta[oa[i] : oa[i + 1]].astype(np.int64), tb[ob[i] : ob[i + 1]].astype(np.int64)
        row = X[i]
        tok = col2tok[row.indices]
        keep = (tok >= 0) & (row.data > 0)
        x[:] = 0
        x[tok[keep]] = row.data[keep] / row.data.sum() * TARGET_SUM / medians[tok[keep]]
        if len(sa) != len(sb) or not np.allclose(x[sa], x[sb], rtol=TIE_RTOL, atol=0):
            mismatch += 1
        elif np.array_equal(np.sort(sa), np.sort(sb)):
            ties += 1
        else:
            ties_at_cut += 1
    n_diff = len(differing)
    return {"cells": n, "identical": n - n_diff, "ties": ties, "ties_at_cut": ties_at_cut, "mismatch": mismatch}


# --------------------------------------------------------------------------------------------------------------
# one profile: build input, run the children, compare
# --------------------------------------------------------------------------------------------------------------


def run_profile(profile: Profile, n_cells: int, args: argparse.Namespace, methods: list[str]) -> dict:
    import mixgf as mgf

    src, names, ids, where = load_source(profile, args.shared)
    X = replicate(src, n_cells, args.seed)
    genes_per_cell = np.diff(src.indptr)
    info = {
        "profile": profile.name,
        "label": profile.label,
        "source": where,
        "n_source": src.shape[0],
        "n_genes": src.shape[1],
        "n_cells": n_cells,
        "copies": n_cells / src.shape[0],
        "median_genes": float(np.median(genes_per_cell)),
        "mean_genes": float(genes_per_cell.mean()),
        "nnz": int(X.nnz),
        "input_mb": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20,
    }
    print(
        f"\n[{profile.name}] {n_cells:,} cells = {src.shape[0]:,} real cells from {where} replicated "
        f"{info['copies']:.1f}x, shuffled (seed {args.seed}); {src.shape[1]:,} genes, "
        f"median {info['median_genes']:.0f} genes/cell, CSR int32 {info['input_mb']:,.0f} MB",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mixgf_bench_tok_", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        save_csr(workdir, "input", X)
        save_csr(workdir, "warm", X[: min(WARM_CELLS, n_cells)])
        meta = {"gene_id_key": profile.gene_id_key, "var_names": names.tolist(), "gene_ids": ids.tolist()}
        (workdir / "meta.json").write_text(json.dumps(meta))

        results = {}
        for method in methods:
            if method in PRESET_METHODS and profile.name != "pbmc":
                continue  # the Geneformer vocabularies hold human genes only
            print(f"  running {method} ...", flush=True)
            results[method] = res = run_child(method, workdir, args.repeats)
            best = min(res["seconds"])
            print(
                f"    {best:.2f} s ({n_cells / best:,.0f} cells/s), warm-up {res['warmup_s']:.2f} s, "
                f"peak +{res['peak_mb']:,.0f} MB",
                flush=True,
            )
        if "mixgf-v1" in results and "mixgf-v2" in results:
            ratio = min(results["mixgf-v2"]["seconds"]) / min(results["mixgf-v1"]["seconds"])
            print(f"  V2 / V1 time: {ratio:.2f}x (best of {args.repeats})", flush=True)
        checks = {}
        if "mixgf" in methods:
            vocab = mgf.genes.Vocabulary.load("mixgf")
            col2tok = column_tokens(ids, vocab)
            for ref in methods:
                if ref != "mixgf" and ref not in PRESET_METHODS:
                    checks[ref] = compare(workdir, "mixgf", ref, X, col2tok, vocab.medians)
    return {"info": info, "results": results, "checks": checks}


# --------------------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gb = int(f.readline().split()[1]) / 2**20
    pkgs = ("numpy", "scipy", "numba", "anndata", "mixgf")
    return {
        "date": time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": mem_gb,
        "load_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in pkgs},
    }


def cpu_of(res: dict) -> float:
    """CPU seconds of the fastest (wall clock) repeat."""
    return res["cpu_seconds"][res["seconds"].index(min(res["seconds"]))]


def table_rows(run: dict) -> list[dict]:
    rows, results = [], run["results"]
    ref = results.get("reference")
    for method, res in results.items():
        best = min(res["seconds"])
        cpu = cpu_of(res)
        rate = run["info"]["n_cells"] / best
        row = {
            "method": METHODS[method],
            "cells": run["info"]["n_cells"],
            "seconds": best,
            "first": res["seconds"][0],
            "first_sys": res["sys_seconds"][0],
            "repeats": len(res["seconds"]),
            "cells_s": rate,
            "per_core": run["info"]["n_cells"] / cpu,  # one core: cells per CPU second of the single thread
            "cpu_wall": cpu / best,
            "peak_mb": res["peak_mb"],
            "ratio": (ref and cpu_of(ref) / cpu) or float("nan"),  # CPU time: robust to other load on the host
        }
        rows.append(row)
    return rows


def text_table(rows: list[dict]) -> str:
    head = f"{'method':<40} {'cells':>9} {'1st call s (sys)':>16} {'best s':>7} {'cells/s':>9} {'cells/s/core':>12}"
    head += f" {'CPU/wall':>8} {'peak MB':>8} {'x dense ref':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        first = f"{r['first']:.2f} ({r['first_sys']:.2f})"
        lines.append(
            f"{r['method']:<40} {r['cells']:>9,} {first:>16} {r['seconds']:>7.2f} {r['cells_s']:>9,.0f} "
            f"{r['per_core']:>12,.0f} {r['cpu_wall']:>8.2f} {r['peak_mb']:>8,.0f} {r['ratio']:>11.2f}"
        )
    return "\n".join(lines)


def md_table(rows: list[dict]) -> str:
    n = rows[0]["repeats"] if rows else 1
    lines = [
        f"| method | cells | first call s (of which kernel) | best of {n} s | cells/s | cells/s per core | CPU s / wall s "
        "| peak MB | vs dense reference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['cells']:,} | {r['first']:.2f} ({r['first_sys']:.2f}) | {r['seconds']:.2f} | "
            f"{r['cells_s']:,.0f} | {r['per_core']:,.0f} | {r['cpu_wall']:.2f} | {r['peak_mb']:,.0f} | "
            f"{r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def check_line(name: str, c: dict) -> str:
    return (
        f"mixgf vs {name}: {c['cells']:,} cells compared; {c['identical']:,} identical, {c['ties']:,} differ only in "
        f"the order of tied genes, {c['ties_at_cut']:,} also in which tied gene is cut at 2,048; "
        f"**{c['mismatch']:,} mismatches**"
    )


def input_line(info: dict) -> str:
    return (
        f"{info['n_cells']:,} cells of {info['label']}: the {info['n_source']:,} real cells of {info['source']} "
        f"replicated {info['copies']:.1f}x and shuffled (real data replicated, not new cells); "
        f"{info['n_genes']:,} genes, median {info['median_genes']:,.0f} (mean {info['mean_genes']:,.0f}) "
        f"expressed genes per cell, {info['nnz']:,} non-zeros, CSR int32 ({info['input_mb']:,.0f} MB)"
    )


def goal_lines(run: dict) -> list[str]:
    rows = {r["method"]: r for r in table_rows(run)}
    m = rows.get(METHODS["mixgf"])
    if m is None:
        return []
    out = [
        f"- Goal >= {GOAL_PER_CORE:,} cells/s per core: **{'met' if m['per_core'] >= GOAL_PER_CORE else 'not met'}** "
        f"({m['per_core']:,.0f} cells/s per core, {m['per_core'] / GOAL_PER_CORE:.0%} of the goal; the first call "
        f"in a fresh process ran at {m['cells'] / m['first']:,.0f} cells/s wall clock)."
    ]
    for key in ("reference", "reference-sparse"):
        if key in run["results"]:
            ratio = m["per_core"] / rows[METHODS[key]]["per_core"]
            met = "met" if ratio >= GOAL_RATIO else "not met"
            out.append(f"- Goal >= {GOAL_RATIO:g}x the {METHODS[key]}: **{met}** (mixgf is {ratio:.2f}x as fast).")
    return out


def print_report(runs: list[dict], mach: dict) -> None:
    print(
        f"\nmachine: {mach['cpu']}, os.cpu_count() = {mach['cores']}; each method runs in one process on ONE core "
        "(cells/s = wall clock; cells/s/core = cells per CPU second; x dense ref = ratio of cells/s/core)\n"
        f"1-minute load average: {mach['load_start']:.1f} at the start, {mach['load_end']:.1f} at the end"
    )
    for run in runs:
        info = run["info"]
        print(f"\n[{info['profile']}] {input_line(info)}")
        print(text_table(table_rows(run)))
        for name, c in run["checks"].items():
            print(check_line(name, c).replace("**", ""))
        if "mixgf" in run["results"]:
            print(f"mixgf warm-up (first call on {WARM_CELLS:,} cells, numba JIT included): "
                  f"{run['results']['mixgf']['warmup_s']:.1f} s")  # fmt: skip
        for line in goal_lines(run):
            print(line.replace("**", ""))


def docs_section(runs: list[dict], mach: dict, command: str) -> str:
    v = mach["versions"]
    out = [
        DOCS_HEADING,
        "",
        "Rank-value tokenization (`mixgf.pp.rank_tokenize`) against a Geneformer-style reference written inside the "
        "benchmark the way Geneformer's `TranscriptomeTokenizer.tokenize_anndata` works: keep the vocabulary genes; "
        "per chunk of 512 cells `X / n_counts * 10_000 / medians` as a dense float64 matrix, back to CSR, then per "
        "cell `tokens[row.indices][np.argsort(-row.data)]` in a Python loop, all untruncated rank lists kept in a "
        "list and cut to 2,048 at the end. The second reference row runs the same upstream expression literally on "
        f"the installed scipy ({v['scipy']}), where `csr_matrix / ndarray` stays sparse: what Geneformer's code does "
        "today. All methods use the same vocabulary (`mixgf`), gene medians and column-to-token mapping.",
        "",
        f"- Date: {mach['date']}",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores (`os.cpu_count()`), {mach['mem_gb']:.0f} GB RAM; "
        f"Python {mach['python']}, numpy {v['numpy']}, scipy {v['scipy']}, numba {v['numba']}, "
        f"anndata {v['anndata']}, mixgf {v['mixgf']}",
        f"- Host load (1-minute load average, other jobs included): {mach['load_start']:.1f} at the start, "
        f"{mach['load_end']:.1f} at the end of the run.",
        "- Every method runs alone in a child process on **one core**: the code is single-threaded (the numba "
        "kernels are not parallel) and the OpenMP/BLAS/numba thread pools are pinned to 1 thread. *cells/s* is "
        "wall clock; *cells/s per core* is cells per CPU second (user + system) of that one thread. On an idle "
        "machine the two are equal; when other jobs share the host (CPU s / wall s below 1: the process waited for "
        "a core) the per-core figure is the steadier one, though still slowed by shared caches and memory "
        "bandwidth. *vs dense reference* and the goal ratios compare cells/s per core.",
        "- Time: wall clock of the call on the whole input, after one warm-up call on "
        f"{WARM_CELLS:,} cells (numba compiles into a fresh cache during the warm-up; it is reported separately). "
        "*first call* is the first timed call in the fresh process, with its kernel (system) CPU time in "
        "parentheses: on this VM, touching fresh memory for the first time is expensive, and later calls reuse "
        "pages the process already has. *best of N* is the fastest of the `--repeats` calls; cells/s, cells/s per "
        "core, CPU s / wall s and the ratios are computed from it.",
        "- Peak MB: in the child, the kernel's resident-set high-water mark (`VmHWM` of `/proc/self/status`, the "
        "counter behind `ru_maxrss`) after the call minus the resident set right before it, with the high-water "
        "mark reset at that point (`/proc/self/clear_refs`), for the first call. So it is the memory each method "
        "needs on top of the "
        "loaded input matrix, its output included (mixgf: a uint16 array of cells x 2,048, padded; references: "
        "a list of int64 arrays). `ru_maxrss` itself is not used because a fork/exec child inherits the parent's "
        "peak in it.",
        "- Correctness: per cell, the token sequences of mixgf and a reference are identical, or they differ only "
        "in the order of tied genes, i.e. the two sequences of normalized values `x` agree position by position to "
        f"a relative {TIE_RTOL:g}. Ties are exact (equal count and median; mixgf breaks them by ascending token id, "
        "`np.argsort` arbitrarily) or exact in real arithmetic but split by float rounding (e.g. 9 / m1 = 13 / m2), "
        "which the methods round differently because they divide by different totals. Anything else is a mismatch.",
    ]
    for run in runs:
        info = run["info"]
        out += ["", f"### {info['label']}", "", f"Input: {input_line(info)}.", "", md_table(table_rows(run)), ""]
        if "mixgf" in run["results"]:
            out.append(
                f"- mixgf warm-up (first call on {WARM_CELLS:,} cells, numba JIT compilation included): "
                f"{run['results']['mixgf']['warmup_s']:.1f} s."
            )
        out += goal_lines(run)
        out += [f"- {check_line(METHODS[name], c)}." for name, c in run["checks"].items()]
    out += ["", "Reproduce (from the repository root):", "", "```bash", command, "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# cProfile of rank_tokenize
# --------------------------------------------------------------------------------------------------------------


def cprofile_mixgf(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    import mixgf as mgf

    mgf.settings.progress_bar = False
    mgf.settings.verbosity = "warning"
    profile = PROFILES[args.cprofile]
    src, names, ids, where = load_source(profile, args.shared)
    X = replicate(src, args.cells, args.seed)
    meta = {"gene_id_key": profile.gene_id_key, "var_names": names.tolist(), "gene_ids": ids.tolist()}
    mgf.pp.rank_tokenize(make_adata(X[:WARM_CELLS], meta), gene_id_key=profile.gene_id_key)  # compile
    adata = make_adata(X, meta)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    mgf.pp.rank_tokenize(adata, gene_id_key=profile.gene_id_key)
    prof.disable()
    dt = time.perf_counter() - t
    print(f"rank_tokenize on {args.cells:,} cells from {where}: {dt:.2f} s under cProfile")
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(20)


# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000, help="cells of the main (PBMC) input (default 200,000)")
    p.add_argument(
        "--mouse-cells", type=int, default=50_000, help="cells of the second (mouse pancreas) input; 0 skips it"
    )
    p.add_argument("--repeats", type=int, default=1, help="timed calls per method; the best is reported")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {list(METHODS)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the row shuffle")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="shared folder (default ../shared)")
    p.add_argument("--tmp", default=None, help="folder for the temporary input/output files (default: system tmp)")
    p.add_argument("--write-docs", action="store_true", help="write the Tokenization section of --out")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="docs file to update")
    p.add_argument(
        "--cprofile",
        nargs="?",
        const="pbmc",
        choices=list(PROFILES),
        help="only run rank_tokenize under cProfile on --cells cells of this input (default pbmc)",
    )
    p.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.workdir, args.repeats)
        return
    if args.cprofile:
        cprofile_mixgf(args)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        msg = f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}"
        raise SystemExit(msg)
    mach = machine()
    runs = [run_profile(PROFILES["pbmc"], args.cells, args, methods)]
    if args.mouse_cells > 0:
        runs.append(run_profile(PROFILES["baron"], args.mouse_cells, args, methods))
    mach["load_end"] = os.getloadavg()[0]
    print_report(runs, mach)
    if args.write_docs:
        command = shlex.join(["python", "benchmarks/tokenization.py", *(argv if argv is not None else sys.argv[1:])])
        write_docs_section(args.out, DOCS_HEADING, docs_section(runs, mach, command))


if __name__ == "__main__":
    main()

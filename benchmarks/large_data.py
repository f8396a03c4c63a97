"""Benchmark of the corpus-scale command-line jobs on a multi-million-cell corpus built from real cells.

What it does, in one run:

1. builds the corpus (once; reused while its spec is unchanged): ``--cells`` cells in ``.h5ad`` shards of
   ``--shard-cells`` cells, each shard made by **replicating real cells** (rows drawn with a fixed seed): human
   PBMCs (pbmc3k) in 9 of every 10 shards, mouse pancreas cells (Baron 2016) in the 10th, raw integer counts, CSR;
2. tokenizes the whole corpus with ``mixgf tokenize CORPUS -o TOKENS`` in **one process**, and again with
   ``torchrun --nproc-per-node 2 -m mixgf tokenize ...`` (two processes share the shards), each in a child process
   with one thread per process; wall time, cells/s, tokens/s and the peak resident set of the largest process
   (``os.wait4``'s ``ru_maxrss``);
3. runs **the reference way** on the same shards in one process: what a user does without mixgf's jobs — read
   each shard into memory (``anndata.read_h5ad``), tokenize it with Geneformer's ``tokenize_anndata`` loop
   (written out in ``benchmarks/tokenization.py``, on the installed scipy) and save the token lists (``np.save`` of
   the concatenated tokens and their offsets) — and reports mixgf's speed as a ratio to it;
4. checks the outputs: the one- and two-process token stores are identical (sha256 in their manifests), and per
   cell the first shard's tokens equal the reference's (up to the order of exactly tied genes);
5. embeds ``--embed-cells`` cells of the corpus with ``mixgf embed`` and the bundled default model, in one process
   (all threads) and with ``torchrun`` on 2 processes of one thread, and extrapolates to the whole corpus;
6. prints a table; ``--write-docs`` writes the "Large data" section of ``docs/benchmarks.md``.

Usage::

    python benchmarks/large_data.py                          # 2,000,000 cells in 20 shards (about 14 GB on disk)
    python benchmarks/large_data.py --cells 200000 --shard-cells 20000 --embed-cells 1000
    python benchmarks/large_data.py --write-docs

This is a benchmark, not a test: it asserts nothing and takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(HERE))

from _common import write_docs_section  # noqa: E402
from tokenization import PROFILES, geneformer_reference, load_source, replicate  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------------------


def build_corpus(workdir: Path, n_cells: int, shard_cells: int) -> dict:
    """Write the replicated corpus as .h5ad shards (skipped when an identical one is there)."""
    import anndata as ad
    import pandas as pd

    corpus = workdir / "corpus"
    spec = {"cells": n_cells, "shard_cells": shard_cells, "version": 1}
    info_path = workdir / "corpus.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("spec") == spec:
        return json.loads(info_path.read_text())
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    sources = {}
    for key in ("pbmc", "baron"):
        X, names, ids, where = load_source(PROFILES[key], SHARED)
        sources[key] = (X, names, ids, where)
    t0 = time.perf_counter()
    n_shards = -(-n_cells // shard_cells)
    nnz, species = 0, []
    for k in range(n_shards):
        key = "baron" if k % 10 == 9 else "pbmc"
        X, names, ids, _ = sources[key]
        n = min(shard_cells, n_cells - k * shard_cells)
        Xk = replicate(X, n, seed=k)
        var = pd.DataFrame({"gene_id": ids, "gene_symbol": names}, index=pd.Index(ids, name=None))
        obs = pd.DataFrame(index=pd.Index([f"s{k:03d}c{i:06d}" for i in range(n)], name=None))
        ad.AnnData(Xk, obs=obs, var=var).write_h5ad(corpus / f"shard-{k:03d}.h5ad")
        nnz += Xk.nnz
        species.append("mouse" if key == "baron" else "human")
    info = {
        "spec": spec,
        "n_shards": n_shards,
        "nnz": int(nnz),
        "bytes": sum(p.stat().st_size for p in corpus.iterdir()),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "species": species,
        "sources": {k: v[3] for k, v in sources.items()},
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info


# --------------------------------------------------------------------------------------------------------------
# timed child processes
# --------------------------------------------------------------------------------------------------------------


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS of its largest process (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        msg = f"command failed ({status}): {' '.join(cmd)}"
        raise RuntimeError(msg)
    return {"seconds": secs, "peak_rss_mb": usage.ru_maxrss / 1024}


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]


def reference_child(corpus: Path, out: Path, limit: int | None) -> None:
    """The reference way, in this process: read each shard, Geneformer's tokenizer loop, save the token lists."""
    import anndata as ad

    import mixgf as mgf

    vocab = mgf.genes.Vocabulary.load("mixgf")
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(corpus.glob("*.h5ad"))[:limit]:
        adata = ad.read_h5ad(path)
        # upstream cuts at the model's input size at the end; cut at the same number of genes as mixgf's vocabulary
        n_genes = vocab.rules.max_len - int(vocab.rules.add_cls) - int(vocab.rules.add_eos)
        cells = [c[:n_genes] for c in geneformer_reference(adata, "gene_id", vocab, dense=False)]
        lengths = np.fromiter((len(c) for c in cells), dtype=np.int64, count=len(cells))
        np.save(out / f"{path.stem}.tokens.npy", np.concatenate(cells).astype(np.uint16))
        np.save(out / f"{path.stem}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))


# --------------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------------


def same_stores(a: Path, b: Path) -> bool:
    ma = json.loads((a / "manifest.json").read_text())["shards"]
    mb = json.loads((b / "manifest.json").read_text())["shards"]
    sha = [
        [json.loads((d / r["output"] / "manifest.json").read_text())["sha256"] for r in m]
        for d, m in ((a, ma), (b, mb))
    ]  # fmt: skip
    return sha[0] == sha[1]


def compare_with_reference(tokens_dir: Path, ref_dir: Path, shard: str) -> dict:
    """Per cell: identical sequence, or identical up to the order of tied genes (same multiset, same ranks' values)."""
    import mixgf as mgf

    store = mgf.pp.TokenStore.open(tokens_dir / f"{shard}.tokens.zarr")
    ref_tok = np.load(ref_dir / f"{shard}.tokens.npy")
    ref_off = np.load(ref_dir / f"{shard}.offsets.npy")
    cls = int(store.params.get("add_cls", False))
    eos = int(store.params.get("add_eos", False))
    exact = same_set = 0
    for i, row in ((a + j, t[j, : n[j]]) for a, _, t, n in store.iter_chunks(20_000) for j in range(len(n))):
        genes = row[cls : len(row) - eos]
        ref = ref_tok[ref_off[i] : ref_off[i + 1]][: len(genes)]
        if np.array_equal(genes, ref):
            exact += 1
        elif np.array_equal(np.sort(genes), np.sort(ref)):
            same_set += 1
    return {"cells": store.n_cells, "identical": exact, "tie_order_only": same_set}


# --------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=2_000_000)
    p.add_argument("--shard-cells", type=int, default=100_000)
    p.add_argument("--embed-cells", type=int, default=2_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mixgf-large-data"))
    p.add_argument("--keep", action="store_true", help="keep the outputs (the corpus is always kept)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--reference-child", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reference_child:
        reference_child(Path(args.reference_child[0]), Path(args.reference_child[1]), None)
        return
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    mach = machine()
    print(f"machine: {mach}")
    corpus_info = build_corpus(work, args.cells, args.shard_cells)
    corpus = work / "corpus"
    print(f"corpus: {corpus_info}")
    for d in ("tokens-1", "tokens-2", "reference", "embed-1", "embed-2"):
        shutil.rmtree(work / d, ignore_errors=True)

    mixgf = [sys.executable, "-m", "mixgf"]
    tok_args = ["tokenize", str(corpus), "--gene-id-key", "gene_id"]
    runs = {}
    runs["mixgf tokenize, 1 process"] = run_timed([*mixgf, *tok_args, "-o", str(work / "tokens-1")], ONE_THREAD)
    runs["mixgf tokenize, torchrun 2 processes"] = run_timed(
        [*torchrun(2), "-m", "mixgf", *tok_args, "-o", str(work / "tokens-2")], ONE_THREAD
    )
    runs["reference way, 1 process"] = run_timed(
        [sys.executable, str(HERE / "large_data.py"), "--reference-child", str(corpus), str(work / "reference")],
        ONE_THREAD,
    )
    manifest = json.loads((work / "tokens-1" / "manifest.json").read_text())
    n_tokens = sum(r["n_tokens"] for r in manifest["shards"])
    store_bytes = sum(f.stat().st_size for f in (work / "tokens-1").rglob("*") if f.is_file())
    ref_tokens = sum(np.load(f, mmap_mode="r").shape[0] for f in (work / "reference").glob("*.tokens.npy"))
    for name, r in runs.items():
        r["cells_per_s"] = args.cells / r["seconds"]
        r["tokens_per_s"] = (ref_tokens if name.startswith("reference") else n_tokens) / r["seconds"]
    checks = {
        "one_vs_two_processes_identical": same_stores(work / "tokens-1", work / "tokens-2"),
        "vs_reference_shard_000": compare_with_reference(work / "tokens-1", work / "reference", "shard-000"),
    }

    # embedding: a slice of the corpus, one process with all threads vs two processes of one thread
    import anndata as ad

    import mixgf as mgf

    sample = ad.read_h5ad(corpus / "shard-000.h5ad")[: args.embed_cells].copy()
    sample_path = work / "embed-sample.h5ad"
    sample.write_h5ad(sample_path)
    emb_args = ["embed", str(sample_path), "--gene-id-key", "gene_id", "--shard-cells", str(args.embed_cells // 4)]
    emb = {
        "mixgf embed, 1 process (2 threads)": run_timed([*mixgf, *emb_args, "-o", str(work / "embed-1")]),
        "mixgf embed, torchrun 2 processes (1 thread each)": run_timed(
            [*torchrun(2), "-m", "mixgf", *emb_args, "-o", str(work / "embed-2")], ONE_THREAD
        ),
    }
    for r in emb.values():
        r["cells_per_s"] = args.embed_cells / r["seconds"]
        r["corpus_hours"] = args.cells / r["cells_per_s"] / 3600
    a = ad.concat([ad.read_h5ad(f) for f in sorted((work / "embed-1").glob("*.h5ad"))])
    b = ad.concat([ad.read_h5ad(f) for f in sorted((work / "embed-2").glob("*.h5ad"))])
    checks["embed_1_vs_2_max_abs_diff"] = float(np.abs(a.obsm["X_mixgf"] - b.obsm["X_mixgf"]).max())
    tokens_per_cell = float(np.mean(a.obs["mixgf_tokens_n_tokens"])) if "mixgf_tokens_n_tokens" in a.obs else None

    result = {
        "machine": mach,
        "corpus": corpus_info,
        "n_tokens": n_tokens,
        "store_bytes": store_bytes,
        "tokenize": runs,
        "embed": emb,
        "embed_tokens_per_cell": tokens_per_cell,
        "max_len": int(mgf.genes.Vocabulary.load("mixgf").rules.max_len),
        "checks": checks,
    }
    (work / "result.json").write_text(json.dumps(result, indent=1))
    section = docs_section(result, args)
    print(section)
    if args.write_docs:
        write_docs_section(REPO / "docs" / "benchmarks.md", "## Large data", section)
    if not args.keep:
        for d in ("tokens-1", "tokens-2", "reference", "embed-1", "embed-2"):
            shutil.rmtree(work / d, ignore_errors=True)


def docs_section(res: dict, args: argparse.Namespace) -> str:
    m, c = res["machine"], res["corpus"]
    ref = res["tokenize"]["reference way, 1 process"]
    lines = [
        "## Large data",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}, "
        "no GPU; `python benchmarks/large_data.py"
        + (f" --cells {args.cells} --shard-cells {args.shard_cells}" if args.cells != 2_000_000 else "")
        + (f" --embed-cells {args.embed_cells}" if args.embed_cells != 2_000 else "")
        + " --write-docs`.",
        "",
        f"Corpus: {args.cells:,} cells in {c['n_shards']} `.h5ad` shards of {args.shard_cells:,}, built by "
        f"replicating real cells (human pbmc3k in 9 of 10 shards, mouse Baron 2016 pancreas in the 10th); "
        f"{c['nnz']:,} non-zero counts, {c['bytes'] / 1e9:.1f} GB on disk. Token stores written: "
        f"{res['n_tokens']:,} tokens ({res['n_tokens'] / args.cells:.0f} per cell), "
        f"{res['store_bytes'] / 1e9:.2f} GB (zarr, compressed).",
        "",
        "| job | wall time | cells/s | tokens/s | peak RSS of the largest process | vs the reference way |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["tokenize"].items():
        ratio = ref["seconds"] / r["seconds"]
        lines.append(
            f"| {name} | {r['seconds']:.0f} s | {r['cells_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} MB | {ratio:.2f}x |"
        )
    ck = res["checks"]
    v = ck["vs_reference_shard_000"]
    lines += [
        "",
        "The reference way reads each shard into memory, runs Geneformer's `tokenize_anndata` loop (as written out "
        "in `benchmarks/tokenization.py`), keeps as many genes per cell as mixgf's vocabulary does and saves the "
        "token lists; mixgf's job reads each shard lazily in chunks "
        f"of `settings.chunk_size` cells and writes a token store per shard. One- and two-process token stores "
        f"identical: {ck['one_vs_two_processes_identical']}. First shard against the reference: "
        f"{v['identical']:,} of {v['cells']:,} cells identical, {v['tie_order_only']:,} differ only in the order of "
        "genes with exactly equal normalized values.",
        "",
        f"Embedding with the bundled default model (`mixgf embed`, {args.embed_cells:,} cells of the corpus "
        f"tokenized on the fly with its vocabulary, up to {res['max_len']:,} tokens per cell, "
        f"{res['embed_tokens_per_cell'] or float('nan'):.0f} on average):",
        "",
        "| job | cells/s | peak RSS | whole corpus at this speed |",
        "|---|---:|---:|---:|",
    ]
    for name, r in res["embed"].items():
        lines.append(f"| {name} | {r['cells_per_s']:,.1f} | {r['peak_rss_mb']:,.0f} MB | {r['corpus_hours']:,.1f} h |")
    lines += [
        "",
        f"One and two processes agree within {ck['embed_1_vs_2_max_abs_diff']:.1e} (max abs difference). On this "
        "CPU the corpus's model work is hours; tokenization is minutes. No GPU was available for this run.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

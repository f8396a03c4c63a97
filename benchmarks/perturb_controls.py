"""Benchmark of the matched test's controls: perturbed in every cell of a gene against a capped, shared subset.

A gene list tested with ``test="matched"`` costs ``n_controls`` extra perturbed copies per gene and cell. With
``control_cells=N`` (the default, 100) a gene's controls are perturbed in at most ``N`` of its cells, drawn in one
seeded order shared by all tested genes (so a control shared by two genes is embedded once per cell); the gene's own
shifts are still measured in all of its cells, and the test compares it with its controls in the capped cells.
``control_cells=None`` is the previous behaviour (controls in every cell of the gene). One run measures, side by
side:

1. ``two-gene`` — **the documented mouse call**: ``mgf.tl.perturb(mouse, genes=["Ins2", "Gcg"], inplace=False)``
   on the 822 bundled Baron 2016 mouse pancreas cells with the bundled default model, ``control_cells=None`` and
   the default; perturbed copies, seconds, the ratio, and each gene's shift, expected shift, n_control_cells and
   p-value under both.
2. ``calibration`` — **the test's size**: ``--calib-genes`` genes drawn at random (seed 0) among those in the token
   lists of at least 20 of ``--calib-cells`` pbmc3k tutorial-QC cells (tokenized with ``max_len=64``), given as a
   list (each with 20 matched controls), for the bundled default model and a random-weight copy of it
   (``torch.manual_seed(0)``), with ``control_cells`` = None, 100 and 25. A random gene is a random member of its
   rank group, so its p-values should be uniform: Kolmogorov-Smirnov test against Uniform(0, 1), fractions below
   0.05 / 0.01, BH discoveries at 0.05.

Usage::

    python benchmarks/perturb_controls.py                  # ~30 min on 2 busy cores (the uncapped two-gene call)
    python benchmarks/perturb_controls.py --write-docs     # also update its section of docs/benchmarks.md

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed as embed_bench
from _common import write_docs_section
from perturb import fmt_p, pvalue_stats, quiet_mixgf, random_copy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "_out" / "perturb_controls.md"
DEFAULT_DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADING = "## Matched controls: cost and calibration (`benchmarks/perturb_controls.py`)"
CAPS = (None, 100, 25)


def two_gene_part(args: argparse.Namespace) -> dict:
    mgf = quiet_mixgf()
    model = mgf.MixGeneformer.load()
    mouse = mgf.datasets.baron_mouse_pancreas()
    mgf.pp.rank_tokenize(mouse, vocab=model.vocab)
    out = {"n_cells": mouse.n_obs, "model": model.name, "runs": {}}
    for cap in (100, None):
        print(f"  two-gene: control_cells={cap} ...", end=" ", flush=True)
        t = time.perf_counter()
        res = mgf.tl.perturb(mouse, genes=["Ins2", "Gcg"], model=model, control_cells=cap, copy=True)
        sec = time.perf_counter() - t
        entry = res.uns["mixgf_perturb"]
        out["runs"][cap] = {"seconds": sec, "table": entry["results"], "copies": int(entry["params"]["n_copies"])}
        print(f"{sec:.1f} s, {out['runs'][cap]['copies']:,} copies", flush=True)
    return out


def calibration_part(args: argparse.Namespace) -> dict:
    mgf = quiet_mixgf()
    default = mgf.MixGeneformer.load()
    adata = mgf.datasets.pbmc3k()
    adata = adata[adata.obs["cell_type"].notna()].copy()
    mgf.pp.rank_tokenize(adata, vocab=default.vocab, gene_id_key="gene_id", max_len=64)
    sel = np.sort(np.random.default_rng(0).choice(adata.n_obs, min(args.calib_cells, adata.n_obs), replace=False))
    adata = adata[sel].copy()
    tokens = adata.obsm["mixgf_tokens"]
    counts = np.bincount(tokens[tokens >= 0].ravel(), minlength=len(default.vocab))
    pool = np.flatnonzero(counts >= 20)
    pool = pool[default.vocab.is_gene[pool] & (default.vocab.gene_species[pool] == "human")]
    drawn = np.random.default_rng(0).choice(pool, min(args.calib_genes, pool.shape[0]), replace=False)
    listed = [default.vocab.tokens[t] for t in np.sort(drawn)]
    rows = []
    for label, model in (("default (trained)", default), ("random weights", random_copy(default))):
        for cap in CAPS:
            print(f"  calibration: {label}, control_cells={cap} ...", end=" ", flush=True)
            t = time.perf_counter()
            res = mgf.tl.perturb(adata, genes=listed, model=model, control_cells=cap, copy=True)
            sec = time.perf_counter() - t
            df = res.uns["mixgf_perturb"]["results"]
            n = df["n_cells"].to_numpy()
            cells = df["n_control_cells"].to_numpy()
            rows.append(
                {"model": label, "cap": cap, "seconds": sec, "median_cells": float(np.median(n[n > 0])),
                 "copies": int(res.uns["mixgf_perturb"]["params"]["n_copies"]),
                 "median_control_cells": float(np.median(cells[n > 0]))} | pvalue_stats(df, n >= 1)
            )  # fmt: skip
            print(f"{sec:.1f} s", flush=True)
    return {"rows": rows, "n_cells": adata.n_obs, "n_genes": len(listed), "model": default.name}


def section(info: dict, two: dict | None, cal: dict | None, command: str) -> str:
    lines = [
        DOCS_HEADING,
        "",
        'A gene list tested with `test="matched"` costs `n_controls` (20) extra perturbed copies per gene and cell. '
        "`control_cells` (default 100) caps the cells in which a gene's controls are perturbed; the cells are drawn "
        "in one seeded order shared by all tested genes, so a control shared by two genes is embedded once per "
        "cell, and the gene's own shifts are still measured in all of its cells. `control_cells=None` is the "
        "earlier behaviour (controls in every cell of the gene). Both settings run side by side in one run.",
        "",
        f"Command: `{command}`; {info['date']}; {info['cpu']}, {info['cores']} cores; torch "
        f"{info['versions']['torch']}, mixgf {info['versions']['mixgf']}; load average {info['load_start']:.2f} at "
        f"the start, {info['load_end']:.2f} at the end.",
        "",
    ]
    if two:
        runs = two["runs"]
        copies = {cap: r["copies"] for cap, r in runs.items()}
        ratio = runs[None]["seconds"] / runs[100]["seconds"]
        lines += [
            "### The documented mouse call",
            "",
            f'`mgf.tl.perturb(mouse, genes=["Ins2", "Gcg"], inplace=False)` on the {two["n_cells"]:,} bundled '
            f"Baron 2016 mouse pancreas cells, model `{two['model']}`, the CPU.",
            "",
            "| control_cells | perturbed copies | seconds | gene | n_cells | shift_mean | expected_shift | "
            "n_control_cells | p_value |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for cap in (None, 100):
            tab = runs[cap]["table"]
            for g in ("Ins2", "Gcg"):
                r = tab.loc[g]
                lines.append(
                    f"| {cap if cap is not None else 'None (all)'} | {copies[cap]:,} | {runs[cap]['seconds']:.0f} | "
                    f"{g} | {int(r['n_cells']):,} | {r['shift_mean']:.2e} | {r['expected_shift']:.2e} | "
                    f"{int(r['n_control_cells']):,} | {fmt_p(float(r['p_value']))} |"
                )
        lines += [
            "",
            f"Speed-up of the default over `control_cells=None`: **{ratio:.1f}x** in time, "
            f"{copies[None] / copies[100]:.1f}x fewer perturbed copies.",
            "",
        ]
    if cal:
        lines += [
            "### Calibration under the cap",
            "",
            f"{cal['n_genes']} genes drawn at random (seed 0) among those in the token lists of at least 20 of "
            f"{cal['n_cells']} pbmc3k tutorial-QC cells (seed 0, `max_len=64`), given as a list, each with 20 "
            f"matched controls; model `{cal['model']}` and a random-weight copy. Under the null the p-values are "
            "uniform: 5% below 0.05, 1% below 0.01. KS: Kolmogorov-Smirnov test against Uniform(0, 1) (p, "
            "statistic D).",
            "",
            "| model | control_cells | median cells per gene | median control cells | genes with p | KS p (D) | "
            "p < 0.05 | p < 0.01 | BH < 0.05 | perturbed copies | seconds |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in cal["rows"]:
            cap = "None (all)" if r["cap"] is None else str(r["cap"])
            lines.append(
                f"| {r['model']} | {cap} | {r['median_cells']:.0f} | {r['median_control_cells']:.0f} | "
                f"{r['with_p']:,} | {fmt_p(r['ks_p'])} ({r['ks_d']:.3f}) | {r['lt05']:.3f} | {r['lt01']:.3f} | "
                f"{r['bh05']:,} | {r['copies']:,} | {r['seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="two-gene,calibration", help="comma-separated: two-gene, calibration")
    p.add_argument("--calib-cells", type=int, default=1_000, help="pbmc3k cells of the calibration part")
    p.add_argument("--calib-genes", type=int, default=500, help="random genes of the calibration part")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    args = p.parse_args(argv)
    args.device = "cpu"
    import torch

    torch.set_num_threads(args.threads)
    command = "python benchmarks/perturb_controls.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    info = embed_bench.machine(args)
    info["versions"] |= {"scipy": version("scipy")}
    parts = {x.strip() for x in args.parts.split(",")}
    cal = calibration_part(args) if "calibration" in parts else None
    two = two_gene_part(args) if "two-gene" in parts else None
    info["load_end"] = os.getloadavg()[0]
    text = section(info, two, cal, command)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.write_docs:
        write_docs_section(args.docs, DOCS_HEADING, text)


if __name__ == "__main__":
    main()

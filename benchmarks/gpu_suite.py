"""The GPU suite: every GPU measurement of mixgf in one command that fits one short lease of one CUDA GPU.

One run (one process, except the tests), in this order, each step timed and recorded even when another fails:

1. ``tests``: the GPU-marked tests (``pytest -m gpu`` on the test files that hold them);
2. ``embed``: ``mgf.tl.embed`` (defaults: bf16 autocast, packed varlen attention on CUDA) on the 2,700 **real**
   pbmc3k cells (``geneformer-v1`` vocabulary, maximum length 2,048), against the Geneformer way (fp32
   ``BertForMaskedLM`` with all hidden states, padded batches of 100 cells; ``benchmarks/embed.py``) and the fastest
   plain transformers variant in bf16 (``hf-fast`` of ``embed.py``), then mixgf alone on ~27,000 replicated cells
   (10 copies of pbmc3k) for the steady state: cells/s, peak GPU memory, per-cell cosine against the fp32 Geneformer
   way (min / mean);
3. ``delete-all``: every gene of the longest pbmc3k cell (2,048 tokens) deleted in turn, ``mgf.tl.perturb(...,
   genes="all", test="none")`` against the Geneformer way (``benchmarks/perturb.py``): seconds per cell and the
   Spearman correlation of the shifts;
4. ``gene-list``: the 10 genes present in the most pbmc3k token lists deleted in 3,000 cells (pbmc3k repeated past
   2,700), the same two ways: cells/s and Spearman;
5. ``pretrain``: ``pretrain_encoder`` of a V1-size model (random weights, bf16 autocast on CUDA) on the pbmc3k
   tokens: cells/s from the training log (the ``cells/s`` of its log lines, first interval left out as warm-up).

Random-weight V1-size models (6 layers, hidden 256, 4 heads, FFN 512, ReLU, 2,048 positions, vocabulary 25,426;
``torch.manual_seed(0)``) as in the other benchmarks. The data is the pbmc3k set bundled with mixgf
(``mixgf.datasets``), so the suite needs neither network nor ``../shared``.

It prints one Markdown table (step, measurement, result, goal) and appends every result to ``OUT/gpu_suite.jsonl``
(one JSON object per line) and the table to ``OUT/gpu_suite.md``. Steps that would start after ``--budget-s`` are
skipped (and say so), so the suite ends inside a lease.

``--dry-run`` runs the same code on the CPU at tiny sizes (a 2-layer, hidden-32 model, 64-token cells, a few dozen
cells, 3 training steps) in well under a minute: CI runs it (``tests/benchmarks/test_gpu_suite.py``) so that the
suite does not rot while no GPU is at hand. Its numbers mean nothing.

Usage::

    python benchmarks/gpu_suite.py --out benchmarks/_out/gpu      # one CUDA GPU, ~5-8 min
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_dry    # CPU, tiny sizes, < 1 min

This is a benchmark, not a test: it asserts nothing (the exit status is 1 only when a step raised).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed as embed_bench
import perturb as perturb_bench

REPO = Path(__file__).resolve().parents[1]
VOCAB = "geneformer-v1"
VOCAB_SIZE = 25_426
GOALS = {
    "embed": "≥ 8,000 cells/s and ≥ 12x the Geneformer way (H100/H200), cosine ≥ 0.999",
    "delete-all": "≤ 0.3 s per 2,048-gene cell",
    "gene-list": "-",
    "pretrain": "≥ 800 cells/s (V1 size)",
    "tests": "all pass",
}


@dataclass
class Sizes:
    """What one run measures; ``full`` for a GPU, ``dry`` for the CPU check."""

    device: str
    geometry: tuple[int, int, int, int]  # layers, hidden, heads, ffn
    max_len: int
    source_cells: int  # pbmc3k cells used (real)
    replicate: int  # steady-state embedding: source cells x replicate
    list_cells: int
    list_genes: int
    gf_batch: int
    pretrain_steps: int
    pretrain_log_every: int
    pretrain_budget: int
    pretrain_max_cells: int

    @classmethod
    def full(cls, device: str) -> Sizes:
        return cls(device, (6, 256, 4, 512), 2_048, 2_700, 10, 3_000, 10, 100, 60, 10, 131_072, 256)

    @classmethod
    def dry(cls) -> Sizes:
        return cls("cpu", (2, 32, 2, 64), 64, 24, 2, 24, 3, 8, 3, 1, 1_024, 16)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    embed_bench.sync(device)


def gpu_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def timed(fn, device: str):
    """``(result, seconds, peak GPU MB)`` of one call of ``fn``."""
    gpu_reset(device)
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t, gpu_peak_mb(device)


def make_checkpoint(sizes: Sizes, folder: Path) -> None:
    """A random-weight ``BertForMaskedLM`` of the suite's geometry, saved the way a checkpoint on disk looks."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, heads, ffn = sizes.geometry
    cfg = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_act="relu",
        max_position_embeddings=max(2_048, sizes.max_len),
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(folder)


def pbmc_tokens(sizes: Sizes):
    """The first ``source_cells`` pbmc3k cells, tokenized with the V1 vocabulary at ``max_len`` (AnnData)."""
    mgf = perturb_bench.quiet_mixgf()
    adata = mgf.datasets.pbmc3k()[: sizes.source_cells].copy()
    mgf.pp.rank_tokenize(adata, vocab=VOCAB, gene_id_key="gene_id", max_len=sizes.max_len)
    return adata


def replicate(adata, n_cells: int):
    idx = np.arange(n_cells) % adata.n_obs
    out = adata[idx].copy()
    out.obs_names_make_unique()
    return out


def token_arrays(adata) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(adata.obsm["mixgf_tokens"]), adata.obs["mixgf_tokens_n_tokens"].to_numpy().astype(np.int64)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


# --------------------------------------------------------------------------------------------------------------
# the steps (each returns a list of result rows: {"step", "what", "value", "unit", ...})
# --------------------------------------------------------------------------------------------------------------


def step_tests(sizes: Sizes, ctx: dict) -> list[dict]:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    summary = tail[-1] if tail else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    return [
        {
            "step": "tests",
            "what": f"GPU-marked tests ({len(files)} file(s))",
            "value": counts.get("passed", 0),
            "unit": "passed",
            "detail": summary,
            "returncode": proc.returncode,
            "seconds": time.perf_counter() - t,
            "ok": proc.returncode in (0, 5) and not counts.get("failed") and not counts.get("error"),
        }
    ]


def step_embed(sizes: Sizes, ctx: dict) -> list[dict]:
    import torch
    from transformers import BertForMaskedLM, BertModel

    mgf = perturb_bench.quiet_mixgf()
    dev, ckpt = sizes.device, ctx["ckpt"]
    adata = ctx["adata"]
    tokens, lengths = token_arrays(adata)
    rows = []

    # (a) the Geneformer way, fp32
    gf = BertForMaskedLM.from_pretrained(ckpt, output_hidden_states=True).to(dev).eval()
    embed_bench.geneformer_embed(gf, tokens[:8], lengths[:8], dev, sizes.gf_batch)  # warm-up
    ref, sec, mem = timed(lambda: embed_bench.geneformer_embed(gf, tokens, lengths, dev, sizes.gf_batch), dev)
    gf_rate = adata.n_obs / sec
    rows.append(
        {"what": f"Geneformer way, fp32, {adata.n_obs:,} real cells", "value": gf_rate, "unit": "cells/s",
         "gpu_mb": mem, "seconds": sec}
    )  # fmt: skip

    # (c) plain transformers, bf16 on CUDA (fp32 on the CPU), token budget
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    hf = BertModel.from_pretrained(ckpt, add_pooling_layer=False, attn_implementation="sdpa", dtype=dtype)
    keep = hf.config.num_hidden_layers + 1 + embed_bench.LAYER
    hf.encoder.layer = hf.encoder.layer[:keep]
    hf.config.num_hidden_layers = keep
    hf = hf.to(dev).eval()
    budget = 65_536 if dev.startswith("cuda") else 2_048
    embed_bench.hf_fast_embed(hf, tokens[:8], lengths[:8], dev, budget)
    emb, sec, mem = timed(lambda: embed_bench.hf_fast_embed(hf, tokens, lengths, dev, budget), dev)
    cos = embed_bench.cosine(emb, ref)
    hf_rate = adata.n_obs / sec
    rows.append(
        {"what": f"plain transformers ({str(dtype).removeprefix('torch.')}), {adata.n_obs:,} real cells",
         "value": hf_rate, "unit": "cells/s", "gpu_mb": mem, "seconds": sec,
         "cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
    )  # fmt: skip

    # (b) mixgf, defaults
    model = mgf.MixGeneformer.from_huggingface(ckpt, vocab=VOCAB, device=dev)
    mgf.tl.embed(adata[:8].copy(), model=model, hidden_layer=embed_bench.LAYER, device=dev)
    _, sec, mem = timed(lambda: mgf.tl.embed(adata, model=model, hidden_layer=embed_bench.LAYER, device=dev), dev)
    emb = np.asarray(adata.obsm["X_mixgf"])
    cos = embed_bench.cosine(emb, ref)
    rate = adata.n_obs / sec
    params = adata.uns["mixgf"]["params"]
    rows.append(
        {"what": f"mgf.tl.embed ({params.get('dtype')}), {adata.n_obs:,} real cells", "value": rate,
         "unit": "cells/s", "gpu_mb": mem, "seconds": sec, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
         "vs_geneformer": rate / gf_rate, "vs_transformers": rate / hf_rate, "goal": GOALS["embed"]}
    )  # fmt: skip

    # steady state: mixgf on the cells replicated
    big = replicate(adata, adata.n_obs * sizes.replicate)
    _, sec, mem = timed(lambda: mgf.tl.embed(big, model=model, hidden_layer=embed_bench.LAYER, device=dev), dev)
    emb = np.asarray(big.obsm["X_mixgf"])
    cos = embed_bench.cosine(emb, np.tile(ref, (sizes.replicate, 1)))
    rows.append(
        {"what": f"mgf.tl.embed, {big.n_obs:,} cells (pbmc3k x {sizes.replicate})", "value": big.n_obs / sec,
         "unit": "cells/s", "gpu_mb": mem, "seconds": sec, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
         "vs_geneformer": big.n_obs / sec / gf_rate, "goal": GOALS["embed"]}
    )  # fmt: skip
    return [{"step": "embed", **r} for r in rows]


def step_delete_all(sizes: Sizes, ctx: dict) -> list[dict]:
    mgf = perturb_bench.quiet_mixgf()
    dev, ckpt, adata = sizes.device, ctx["ckpt"], ctx["adata"]
    tokens, lengths = token_arrays(adata)
    i = int(np.argmax(lengths))  # the longest cell (the first one at the cap)
    cell = [int(t) for t in tokens[i, : lengths[i]]]
    one = adata[[i]].copy()
    gf = perturb_bench.gf_load(ckpt, dev)
    perturb_bench.gf_delete_all(gf, cell, 2, 2, dev)  # warm-up
    ref, gf_sec, _ = timed(lambda: perturb_bench.gf_delete_all(gf, cell, len(cell), sizes.gf_batch, dev), dev)
    model = mgf.MixGeneformer.from_huggingface(ckpt, vocab=VOCAB, device=dev)
    ids = [model.vocab.tokens[t] for t in cell]
    cfg = {"device": dev, "mixgf_dtype": None, "token_budget": None}
    perturb_bench.mixgf_shifts(one.copy(), model, ids[:2], ids[:2], cfg)  # warm-up
    got, sec, mem = timed(lambda: perturb_bench.mixgf_shifts(one.copy(), model, "all", ids, cfg)[0], dev)
    ag = perturb_bench.agreement(ref, got)
    return [
        {"step": "delete-all", "what": f"Geneformer way, fp32, cell of {len(cell):,} genes", "value": gf_sec,
         "unit": "s/cell", "seconds": gf_sec},
        {"step": "delete-all", "what": f"mgf.tl.perturb, cell of {len(cell):,} genes", "value": sec, "unit": "s/cell",
         "gpu_mb": mem, "seconds": sec, "vs_geneformer": gf_sec / sec, "spearman": ag["spearman"],
         "goal": GOALS["delete-all"]},
    ]  # fmt: skip


def step_gene_list(sizes: Sizes, ctx: dict) -> list[dict]:
    mgf = perturb_bench.quiet_mixgf()
    dev, ckpt, adata = sizes.device, ctx["ckpt"], ctx["adata"]
    cells = replicate(adata, sizes.list_cells)
    tokens, lengths = token_arrays(cells)
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    counts = np.bincount(tokens[valid].astype(np.int64), minlength=VOCAB_SIZE)
    counts[:2] = 0  # <pad>, <mask>
    top = [int(t) for t in np.argsort(-counts, kind="stable")[: sizes.list_genes]]
    gf = perturb_bench.gf_load(ckpt, dev)
    perturb_bench.gf_gene_list(gf, tokens[:2], lengths[:2], top, sizes.gf_batch, dev)  # warm-up
    ref, gf_sec, _ = timed(lambda: perturb_bench.gf_gene_list(gf, tokens, lengths, top, sizes.gf_batch, dev), dev)
    model = mgf.MixGeneformer.from_huggingface(ckpt, vocab=VOCAB, device=dev)
    ids = [model.vocab.tokens[t] for t in top]
    cfg = {"device": dev, "mixgf_dtype": None, "token_budget": None}
    perturb_bench.mixgf_shifts(cells[:2].copy(), model, ids, ids, cfg)  # warm-up
    got, sec, mem = timed(lambda: perturb_bench.mixgf_shifts(cells, model, ids, ids, cfg), dev)
    ag = perturb_bench.agreement(ref, got)
    n = cells.n_obs
    return [
        {"step": "gene-list", "what": f"Geneformer way, fp32, {len(top)} genes x {n:,} cells", "value": n / gf_sec,
         "unit": "cells/s", "seconds": gf_sec},
        {"step": "gene-list", "what": f"mgf.tl.perturb, {len(top)} genes x {n:,} cells", "value": n / sec,
         "unit": "cells/s", "gpu_mb": mem, "seconds": sec, "vs_geneformer": gf_sec / sec, "spearman": ag["spearman"]},
    ]  # fmt: skip


def step_pretrain(sizes: Sizes, ctx: dict) -> list[dict]:
    import torch

    from mixgf.genes import Vocabulary
    from mixgf.model import BertEncoderModel, EncoderConfig, PretrainConfig, TokenCorpus, pretrain_encoder

    dev = sizes.device
    tokens, lengths = token_arrays(ctx["adata"])
    vocab = Vocabulary.load(VOCAB)
    special = np.asarray(vocab.special_ids, dtype=np.int64)
    genes = np.setdiff1d(np.arange(len(vocab.tokens)), special)
    corpus = TokenCorpus(tokens, lengths, np.zeros(len(lengths), dtype=np.int8), vocab.id_of("pad"), vocab.id_of("mask"),
                         special, genes)  # fmt: skip
    layers, hidden, heads, ffn = sizes.geometry
    torch.manual_seed(0)
    model = BertEncoderModel(
        EncoderConfig(vocab_size=len(vocab.tokens), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=ffn, hidden_act="relu",
                      max_position_embeddings=max(2_048, sizes.max_len))
    )  # fmt: skip
    cfg = PretrainConfig(steps=sizes.pretrain_steps, token_budget=sizes.pretrain_budget,
                         max_cells=sizes.pretrain_max_cells, warmup_steps=1, log_every=sizes.pretrain_log_every)  # fmt: skip
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("mixgf")
    handler, level = Capture(level=logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as out:
            gpu_reset(dev)
            t = time.perf_counter()
            _, history = pretrain_encoder(model, corpus, cfg, out_dir=out, device=dev)
            sync(dev)
            wall = time.perf_counter() - t
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    rates = [float(m.group(1)) for line in lines if (m := re.search(r"\(lr [^,]+, ([0-9.]+) cells/s\)", line))]
    steady = rates[1:] or rates
    dtype = next((line.rsplit(" ", 1)[-1] for line in lines if line.startswith("pre-training on")), "?")
    return [
        {"step": "pretrain", "what": f"pretrain_encoder ({dtype}), {cfg.steps} steps of <= {cfg.token_budget:,} tokens"
         f" / {cfg.max_cells} cells", "value": float(np.mean(steady)) if steady else None, "unit": "cells/s (log)",
         "gpu_mb": gpu_peak_mb(dev), "seconds": wall, "log_rates": rates,
         "cells": int(sum(h["cells"] for h in history)), "goal": GOALS["pretrain"]}
    ]  # fmt: skip


STEPS = {
    "tests": step_tests,
    "embed": step_embed,
    "delete-all": step_delete_all,
    "gene-list": step_gene_list,
    "pretrain": step_pretrain,
}


# --------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------


def machine(sizes: Sizes) -> dict:
    """Date, CPU, GPU and versions (mixgf's from the package: on a GPU machine it runs from ``src`` uninstalled)."""
    import platform

    import torch
    import transformers

    import mixgf

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if sizes.device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "mixgf": mixgf.__version__},
    }


def table(rows: list[dict], info: dict, dry_run: bool) -> str:
    dev = info["gpu"] or f"{info['cpu']} ({info['cores']} cores)"
    head = [
        f"GPU suite{' (DRY RUN: tiny sizes on the CPU; the numbers mean nothing)' if dry_run else ''}: "
        f"{info['date']}; {dev}; Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "",
        "| step | measurement | result | peak GPU MB | vs Geneformer way | agreement | goal |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            result = f"**error**: {r['error']}"
        elif r.get("skipped"):
            result = f"skipped: {r['skipped']}"
        else:
            result = f"{fmt(r.get('value'), 3 if r.get('unit') == 's/cell' else 1)} {r.get('unit', '')}"
            if r["step"] == "tests":
                result = r.get("detail") or result
        agree = []
        if "cos_min" in r:
            agree.append(f"cosine {r['cos_min']:.5f} / {r['cos_mean']:.5f}")
        if r.get("spearman") is not None:
            agree.append(f"Spearman {r['spearman']:.4f}")
        vs = f"{r['vs_geneformer']:.1f}x" if r.get("vs_geneformer") else "-"
        if r.get("vs_transformers"):
            vs += f" ({r['vs_transformers']:.2f}x transformers)"
        head.append(
            f"| {r['step']} | {r.get('what', '')} | {result} | {fmt(r.get('gpu_mb'), 0)} | {vs} | "
            f"{'; '.join(agree) or '-'} | {r.get('goal', '-')} |"
        )
    return "\n".join(head) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "_out" / "gpu", help="folder the results go to")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks that the suite runs)")
    p.add_argument("--device", default="cuda", help="device of the full run (default cuda)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {','.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=480.0, help="no step starts after this many seconds (480)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    sizes = Sizes.dry() if args.dry_run else Sizes.full(args.device)
    if args.dry_run:
        torch.set_num_threads(1)  # tiny work: threads only add overhead (and contention on a shared CI machine)
    if sizes.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run on a machine with one, or use --dry-run", file=sys.stderr)
        return 2
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if bad := [s for s in steps if s not in STEPS]:
        print(f"unknown step(s) {bad}; choose from {list(STEPS)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    info = machine(sizes)
    print(f"# gpu_suite {'--dry-run ' if args.dry_run else ''}| {info['gpu'] or info['cpu']} | {sizes}", flush=True)
    rows: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="mixgf_gpu_suite_") as tmp:
        ctx: dict = {"ckpt": Path(tmp) / "ckpt"}
        for name in steps:
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                rows.append({"step": name, "skipped": f"time budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"})
                continue
            print(f"  {name} ({elapsed:.0f} s) ...", flush=True)
            t = time.perf_counter()
            try:
                if name != "tests" and "adata" not in ctx:
                    make_checkpoint(sizes, ctx["ckpt"])
                    ctx["adata"] = pbmc_tokens(sizes)
                new = STEPS[name](sizes, ctx)
            except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others' results
                traceback.print_exc()
                new = [{"step": name, "error": f"{type(exc).__name__}: {exc}"[:300]}]
                failed = True
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            for r in new:
                r.setdefault("step_seconds", time.perf_counter() - t)
                print(f"    {r.get('what', name)}: {r.get('value', r.get('error', r.get('skipped')))}", flush=True)
            rows += new
    total = time.perf_counter() - start
    text = table(rows, info, args.dry_run) + f"\nTotal {total:.0f} s.\n"
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = {"date": info["date"], "machine": info, "dry_run": args.dry_run, "total_s": total}
    with (args.out / "gpu_suite.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps(stamp | r, default=float) + "\n")
    with (args.out / "gpu_suite.md").open("a") as f:
        f.write(text + "\n")
    print(f"appended to {args.out / 'gpu_suite.jsonl'} and {args.out / 'gpu_suite.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

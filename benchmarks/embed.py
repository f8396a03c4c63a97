"""Benchmark of cell embedding: Geneformer's way, ``mixgf.tl.embed`` and the fastest plain transformers variant.

What it does, in one run:

1. builds random-weight models the way a checkpoint on disk looks: ``transformers.BertForMaskedLM(BertConfig(...))``
   after ``torch.manual_seed(0)``, saved with ``save_pretrained`` into a temporary folder (speed does not depend on
   the weight values). Sizes: ``v1`` = Geneformer V1 (6 layers, hidden 256, 4 heads, FFN 512, ReLU, 2,048 positions,
   vocabulary 25,426); ``l12`` = 12 layers, hidden 512, 8 heads, FFN 1,024, ReLU, 2,048 positions;
2. takes the first ``--cells`` **real** cells of pbmc3k (``mixgf.datasets.pbmc3k``; cells are repeated cyclically
   when more are asked for, and the output says so) and tokenizes them once with ``mgf.pp.rank_tokenize`` and the
   ``geneformer-v1`` vocabulary, truncated to ``--max-len`` (about 830 tokens per cell at 2,048);
3. runs every method in its **own child process** (this script with ``--child``): one warm-up call on 8 cells, then
   ``--repeats`` timed calls on all cells (the fastest is reported); peak memory is the process's peak RSS
   (``VmHWM``, reset before each timed call) minus its RSS just before the call, and on CUDA also
   ``torch.cuda.max_memory_allocated``;
4. compares the cell embeddings with those of the Geneformer way: cosine per cell (min and mean) and the largest
   absolute difference;
5. prints one Markdown section and writes it to ``benchmarks/_out/embed.md`` (``--out``) and, with
   ``--write-docs``, into docs/benchmarks.md.

Methods
-------
``geneformer``
    What ``geneformer.EmbExtractor`` does (``emb_extractor.get_embs`` with ``perturber_utils.load_model``), minus its
    Hugging Face ``datasets`` overhead: ``BertForMaskedLM.from_pretrained(..., output_hidden_states=True)`` (every
    forward computes the MLM logits over all positions and keeps every layer), fp32, cells sorted by length (longest
    first), padded batches of a fixed number of cells (``--gf-batch``; Geneformer's ``forward_batch_size`` default
    is 100, which needs ~20 GB of logits per batch at full length, so the CPU default here is 16), ``torch.no_grad``,
    mean of ``hidden_states[-2]`` over the non-padding positions (Geneformer's default ``emb_layer=-1``);
    ``torch.cuda.empty_cache()`` after every batch on CUDA, as upstream.
``mixgf``
    ``mgf.tl.embed(adata, model=mgf.MixGeneformer.from_huggingface(folder, vocab="geneformer-v1"), hidden_layer=-2)``,
    end to end: AnnData with tokens in, ``obsm["X_mixgf"]`` out. Defaults only (fp32 on CPU; bf16 and packed
    variable-length attention on CUDA).
``hf-fast``
    The fastest honest plain transformers variant: ``BertModel`` (no MLM head, no pooler),
    ``attn_implementation="sdpa"``, ``model.encoder.layer`` sliced to the first L-1 blocks (the last block is not
    run), cells sorted by length in batches by a token budget (cells x padded length <= ``--hf-budget``, the same
    rule as mixgf's; default 2,048 tokens on CPU, its fastest setting on a 2-core AMD EPYC among 1 cell per batch to
    32,768 tokens, and mixgf's CUDA default on CUDA), ``torch.inference_mode()``, mean of the last hidden state over
    non-padding positions. fp32 on CPU, bf16 weights on CUDA.
``mixgf-generic``
    (not run by default) ``mixgf`` with its fast CPU path switched off (``MIXGF_CPU_FAST_PATH=0``): padded batches,
    masked SDPA, MKL matrix products.

Usage::

    python benchmarks/embed.py                                  # V1, 256 cells, max length 2,048, this CPU
    python benchmarks/embed.py --max-len 2048,512 --sizes v1,l12
    python benchmarks/embed.py --device cuda --cells 3000       # GPU: bf16 packed path, Geneformer batch 100
    python benchmarks/embed.py --mixgf-dtype bf16 --hf-dtype bf16   # CPU: mixgf and transformers both in bf16

This is a benchmark, not a test: it asserts nothing.
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
from importlib.metadata import version
from pathlib import Path

import numpy as np
from _common import memory_mb, reset_peak_memory, write_docs_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "_out" / "embed.md"
DOCS_HEADING = "## Cell embedding (`benchmarks/embed.py`)"
VOCAB = "geneformer-v1"
LAYER = -2  # hidden_states[-2]: Geneformer's default emb_layer=-1
WARM_CELLS = 8
SIZES = {
    # name: (layers, hidden, heads, ffn)
    "v1": (6, 256, 4, 512),
    "l12": (12, 512, 8, 1024),
}
METHODS = {
    "geneformer": "Geneformer way (`BertForMaskedLM`, all hidden states, fp32, fixed batch)",
    "mixgf": "`mgf.tl.embed` (AnnData in, obsm out)",
    "hf-fast": "transformers `BertModel` SDPA, L-1 blocks, token budget",
    "mixgf-generic": "`mgf.tl.embed`, fast CPU path off",
}
SHORT = {
    "geneformer": "(a) Geneformer",
    "mixgf": "(b) mixgf",
    "hf-fast": "(c) HF fast",
    "mixgf-generic": "mixgf generic",
}


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


def hf_config(size: str):
    from transformers import BertConfig

    layers, hidden, heads, ffn = SIZES[size]
    return BertConfig(
        vocab_size=25_426,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_act="relu",
        max_position_embeddings=2_048,
        pad_token_id=0,
    )


def make_checkpoint(size: str, folder: Path) -> None:
    import torch
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    BertForMaskedLM(hf_config(size)).save_pretrained(folder)


def make_cells(n_cells: int, max_len: int, path: Path) -> dict:
    """First ``n_cells`` pbmc3k cells (repeated cyclically past 2,700), tokenized, written as h5ad."""
    import mixgf as mgf

    mgf.settings.progress_bar = False
    mgf.settings.verbosity = "warning"
    full = mgf.datasets.pbmc3k()
    replicated = n_cells > full.n_obs
    idx = np.arange(n_cells) % full.n_obs
    adata = full[idx].copy()
    adata.obs_names_make_unique()
    mgf.pp.rank_tokenize(adata, vocab=VOCAB, gene_id_key="gene_id", max_len=max_len)
    adata.write_h5ad(path)
    n_key = next(k for k in adata.obs.columns if k.endswith("_n_tokens"))
    lengths = adata.obs[n_key].to_numpy()
    return {
        "n_cells": int(n_cells),
        "replicated": bool(replicated),
        "source_cells": int(full.n_obs),
        "max_len": int(max_len),
        "mean_len": float(lengths.mean()),
        "median_len": float(np.median(lengths)),
        "max_len_seen": int(lengths.max()),
        "n_at_cap": int((lengths >= max_len).sum()),
    }


def read_tokens(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import anndata as ad

    adata = ad.read_h5ad(path)
    tokens = np.asarray(adata.obsm["mixgf_tokens"])
    lengths = adata.obs["mixgf_tokens_n_tokens"].to_numpy().astype(np.int64)
    return tokens, lengths


# --------------------------------------------------------------------------------------------------------------
# the methods (each returns [N, H] float32 in input order)
# --------------------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def geneformer_embed(model, tokens: np.ndarray, lengths: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    """``EmbExtractor.get_embs``: longest first, fixed cell count per padded batch, mean of hidden_states[-2]."""
    import torch

    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(lengths), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lens = torch.from_numpy(lengths[idx])
        max_len = int(lens.max())
        ids = torch.from_numpy(tokens[idx, :max_len].astype(np.int64))
        mask = torch.arange(max_len)[None, :] < lens[:, None]  # gen_attention_mask
        ids[~mask] = 0  # pad_tensor_list with the pad token
        with torch.no_grad():
            outputs = model(input_ids=ids.to(device), attention_mask=mask.long().to(device))
            embs = outputs.hidden_states[LAYER]
            # mean_nonpadding_embs
            m = mask.to(device).unsqueeze(2)
            mean = (embs * m).sum(1) / lens.to(device).unsqueeze(1)
        out[idx] = mean.float().cpu().numpy()
        del outputs, embs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def hf_fast_embed(model, tokens: np.ndarray, lengths: np.ndarray, device: str, budget: int) -> np.ndarray:
    """Plain transformers, done well: encoder only, L-1 blocks, token-budget batches, inference mode."""
    import torch

    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(lengths), model.config.hidden_size), dtype=np.float32)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            n = max(1, budget // int(lengths[order[start]]))
            idx = order[start : start + n]
            start += len(idx)
            lens = torch.from_numpy(lengths[idx]).to(device)
            max_len = int(lengths[idx].max())
            ids = torch.from_numpy(tokens[idx, :max_len].astype(np.int64)).to(device)
            mask = torch.arange(max_len, device=device)[None, :] < lens[:, None]
            ids = ids.masked_fill(~mask, 0)
            hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            mean = (hidden.float() * mask.unsqueeze(2)).sum(1) / lens.unsqueeze(1).float()
            out[idx] = mean.cpu().numpy()
    return out


class Runner:
    """One method, set up once (model loaded), callable on a slice of the cells."""

    def __init__(self, method: str, workdir: Path, size: str, h5ad: Path, args: argparse.Namespace) -> None:
        import torch

        self.method, self.device, self.args = method, args.device, args
        ckpt = workdir / f"ckpt_{size}"
        if method in ("mixgf", "mixgf-generic"):
            import anndata as ad

            import mixgf as mgf

            mgf.settings.progress_bar = False
            mgf.settings.verbosity = "warning"
            self.model = mgf.MixGeneformer.from_huggingface(ckpt, vocab=VOCAB)
            self.adata = ad.read_h5ad(h5ad)
            self.n_cells = self.adata.n_obs
        else:
            import transformers
            from transformers import BertForMaskedLM, BertModel

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()

            self.tokens, self.lengths = read_tokens(h5ad)
            self.n_cells = len(self.lengths)
            if method == "geneformer":
                # perturber_utils.load_model("Pretrained", ...): fp32, all hidden states, MLM head kept
                model = BertForMaskedLM.from_pretrained(ckpt, output_hidden_states=True, output_attentions=False)
            else:
                dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
                if self.args.hf_dtype:
                    dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}.get(self.args.hf_dtype, torch.float32)
                model = BertModel.from_pretrained(
                    ckpt, add_pooling_layer=False, attn_implementation="sdpa", dtype=dtype
                )
                keep = model.config.num_hidden_layers + 1 + LAYER  # blocks up to hidden_states[LAYER]
                model.encoder.layer = model.encoder.layer[:keep]
                model.config.num_hidden_layers = keep
            self.model = model.to(self.device).eval()

    def __call__(self, sl: slice) -> np.ndarray:
        if self.method in ("mixgf", "mixgf-generic"):
            import mixgf as mgf

            adata = self.adata if sl == slice(None) else self.adata[sl].copy()
            mgf.tl.embed(
                adata,
                model=self.model,
                hidden_layer=LAYER,
                device=self.device,
                token_budget=self.args.token_budget,
                dtype=self.args.mixgf_dtype,
            )
            return np.asarray(adata.obsm["X_mixgf"])
        tokens, lengths = self.tokens[sl], self.lengths[sl]
        if self.method == "geneformer":
            return geneformer_embed(self.model, tokens, lengths, self.device, self.args.gf_batch)
        return hf_fast_embed(self.model, tokens, lengths, self.device, self.args.hf_budget)


# --------------------------------------------------------------------------------------------------------------
# child process: one method, timed and measured
# --------------------------------------------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    import torch

    workdir, method, size = Path(args.workdir), args.child, args.child_size
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    h5ad = workdir / f"cells_{args.child_max_len}.h5ad"
    t = time.perf_counter()
    runner = Runner(method, workdir, size, h5ad, args)
    runner(slice(0, WARM_CELLS))
    sync(args.device)
    setup_s = time.perf_counter() - t
    seconds, peak_mb, gpu_peak_mb, out = [], [], [], None
    for _ in range(args.repeats):
        out = None
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        hwm_reset = reset_peak_memory()
        base = memory_mb()
        t = time.perf_counter()
        out = runner(slice(None))
        sync(args.device)
        seconds.append(time.perf_counter() - t)
        peak_mb.append(memory_mb()["VmHWM"] - base["VmRSS"])
        if args.device.startswith("cuda"):
            gpu_peak_mb.append(torch.cuda.max_memory_allocated() / 2**20)
    tag = f"{method}_{size}_{args.child_max_len}"
    np.save(workdir / f"emb_{tag}.npy", out)
    result = {
        "method": method,
        "n_cells": runner.n_cells,
        "seconds": seconds,
        "setup_s": setup_s,
        "peak_mb": peak_mb[0],
        "peak_mb_all": peak_mb,
        "hwm_reset": hwm_reset,
        "gpu_peak_mb": gpu_peak_mb[0] if gpu_peak_mb else None,
        "threads": torch.get_num_threads(),
    }
    (workdir / f"result_{tag}.json").write_text(json.dumps(result))


def run_child(method: str, size: str, max_len: int, workdir: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if method == "mixgf-generic":
        env["MIXGF_CPU_FAST_PATH"] = "0"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child", method,
        "--child-size", size,
        "--child-max-len", str(max_len),
        "--workdir", str(workdir),
        "--device", args.device,
        "--threads", str(args.threads),
        "--repeats", str(args.repeats),
        "--gf-batch", str(args.gf_batch),
        "--hf-budget", str(args.hf_budget),
    ]  # fmt: skip
    if args.token_budget:
        cmd += ["--token-budget", str(args.token_budget)]
    if args.mixgf_dtype:
        cmd += ["--mixgf-dtype", args.mixgf_dtype]
    if args.hf_dtype:
        cmd += ["--hf-dtype", args.hf_dtype]
    subprocess.run(cmd, env=env, check=True)
    return json.loads((workdir / f"result_{method}_{size}_{max_len}.json").read_text())


# --------------------------------------------------------------------------------------------------------------
# comparison and reporting
# --------------------------------------------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def machine(args: argparse.Namespace) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "load_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "transformers", "mixgf")},
    }


def mixgf_budget(args: argparse.Namespace) -> int:
    from mixgf.model import DEFAULT_TOKEN_BUDGET_CPU, DEFAULT_TOKEN_BUDGET_CUDA

    if args.token_budget:
        return args.token_budget
    return DEFAULT_TOKEN_BUDGET_CUDA if args.device.startswith("cuda") else DEFAULT_TOKEN_BUDGET_CPU


def fmt_mem(res: dict) -> str:
    rss = f"{res['peak_mb']:,.0f}"
    return rss if res.get("gpu_peak_mb") is None else f"{rss} / GPU {res['gpu_peak_mb']:,.0f}"


def section(info: dict, runs: list[dict], args: argparse.Namespace, command: str) -> str:
    dev = info["gpu"] or f"{info['cpu']}, {info['cores']} cores, {args.threads} threads"
    lines = [
        DOCS_HEADING,
        "",
        f"{info['date']}; {dev}; Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; load average {info['load_start']:.2f} at the start, {info['load_end']:.2f} at the end.",
        "",
        "Random-weight models saved with `save_pretrained` (speed does not depend on weight values); real pbmc3k "
        "cells tokenized with the `geneformer-v1` vocabulary; embedding = mean over genes of `hidden_states[-2]`. "
        f"Each method in its own process, warmed up on {WARM_CELLS} cells, best of {args.repeats} timed run(s). "
        f"Geneformer way: {args.gf_batch} cells per padded batch"
        + (
            " (its default `forward_batch_size` 100 needs ~20 GB of MLM logits per batch on a CPU)"
            if args.gf_batch < 100
            else ""
        )
        + f", without its Hugging Face `datasets` overhead. mixgf: token budget {mixgf_budget(args):,}. "
        + f"HF fast: batches of at most {args.hf_budget:,} padded tokens. "
        + (
            f"dtypes: mixgf {args.mixgf_dtype or 'auto (its default)'}, HF fast {args.hf_dtype or 'default'}. "
            if args.mixgf_dtype or args.hf_dtype
            else ""
        )
        + "Memory: peak RSS above the RSS before the call (MB)"
        + (", and peak GPU memory allocated." if args.device.startswith("cuda") else ".")
        + " Cosine: per-cell cosine similarity with the Geneformer way's embedding (min / mean).",
        "",
    ]
    for run in runs:
        cells, results = run["cells"], run["results"]
        rep = " (cells repeated)" if cells["replicated"] else ""
        layers, hidden, heads, ffn = SIZES[run["size"]]
        lines += [
            f"**{run['size']}** ({layers} layers, hidden {hidden}, {heads} heads, FFN {ffn}), "
            f"max length {cells['max_len']:,}: {cells['n_cells']:,} cells{rep}, "
            f"mean {cells['mean_len']:.0f} tokens (median {cells['median_len']:.0f}, longest {cells['max_len_seen']:,}, "
            f"{cells['n_at_cap']} at the cap)",
            "",
            "| Method | seconds | cells/s | peak MB | cosine vs (a) min / mean | max abs diff |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for method, res in results.items():
            best = min(res["seconds"])
            cmp = run["compare"].get(method)
            cos = (
                "reference"
                if method == "geneformer"
                else (f"{cmp['cos_min']:.7f} / {cmp['cos_mean']:.7f}" if cmp else "-")
            )
            diff = f"{cmp['max_abs']:.1e}" if cmp else "-"
            lines.append(
                f"| {SHORT[method]}: {METHODS[method]} | {best:.2f} | {res['n_cells'] / best:.1f} | {fmt_mem(res)} "
                f"| {cos} | {diff} |"
            )
        rate = {m: r["n_cells"] / min(r["seconds"]) for m, r in results.items()}
        ratios = []
        if "mixgf" in rate and "geneformer" in rate:
            ratios.append(f"(b)/(a) = **{rate['mixgf'] / rate['geneformer']:.1f}x**")
        if "mixgf" in rate and "hf-fast" in rate:
            ratios.append(f"(b)/(c) = **{rate['mixgf'] / rate['hf-fast']:.2f}x**")
        if "hf-fast" in rate and "geneformer" in rate:
            ratios.append(f"(c)/(a) = {rate['hf-fast'] / rate['geneformer']:.1f}x")
        if ratios:
            lines += ["", "Speed-up: " + ", ".join(ratios) + "."]
        lines.append("")
    lines += ["Command:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="v1", help="comma-separated model sizes: v1, l12 (default: v1)")
    p.add_argument("--cells", type=int, default=None, help="number of cells (default: 256 on CPU, 2,700 on CUDA)")
    p.add_argument("--max-len", default="2048", help="comma-separated maximum lengths, e.g. 2048,512 (default: 2048)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on CPU (default: all cores)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method; the fastest is reported")
    p.add_argument(
        "--gf-batch", type=int, default=None, help="Geneformer way: cells per batch (default 16 CPU, 100 CUDA)"
    )
    p.add_argument("--token-budget", type=int, default=None, help="token budget of mixgf (default: mixgf's default)")
    p.add_argument(
        "--hf-budget", type=int, default=None, help="token budget of hf-fast (default 2,048 CPU, 65,536 CUDA)"
    )
    p.add_argument("--mixgf-dtype", default=None, help="mixgf's dtype (default: its 'auto'; e.g. bf16, float32)")
    p.add_argument(
        "--hf-dtype", default=None, help="hf-fast's dtype: bf16 or float32 (default: bf16 on CUDA, fp32 on CPU)"
    )
    p.add_argument("--methods", default="geneformer,mixgf,hf-fast", help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the Markdown section")
    p.add_argument("--write-docs", action="store_true", help="also replace its section of docs/benchmarks.md")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the temporary checkpoints and cells")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-size", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-max-len", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.cells is None:
        args.cells = 2_700 if cuda else 256
    if args.gf_batch is None:
        args.gf_batch = 100 if cuda else 16
    if args.hf_budget is None:
        args.hf_budget = 65_536 if cuda else 2_048
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    max_lens = [int(x) for x in args.max_len.split(",") if x.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, allowed, given in (("size", SIZES, sizes), ("method", METHODS, methods)):
        bad = [x for x in given if x not in allowed]
        if bad:
            sys.exit(f"unknown {name}(s) {bad}; choose from {list(allowed)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda but CUDA is not available")
    command = "python benchmarks/embed.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    info = machine(args)
    print(f"# {info['date']} | {info['gpu'] or info['cpu']} | {info['cores']} cores | threads {args.threads} | "
          f"torch {info['versions']['torch']} | transformers {info['versions']['transformers']} | "
          f"load {info['load_start']:.2f}", flush=True)  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="mixgf_bench_embed_", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        for size in sizes:
            make_checkpoint(size, workdir / f"ckpt_{size}")
        cells = {}
        for max_len in max_lens:
            cells[max_len] = make_cells(args.cells, max_len, workdir / f"cells_{max_len}.h5ad")
        for size in sizes:
            for max_len in max_lens:
                results, compare = {}, {}
                for method in methods:
                    print(f"  {size} max_len={max_len} {method} ...", end=" ", flush=True)
                    res = run_child(method, size, max_len, workdir, args)
                    results[method] = res
                    print(f"{res['n_cells'] / min(res['seconds']):.1f} cells/s "
                          f"({', '.join(f'{s:.1f}' for s in res['seconds'])} s), peak {fmt_mem(res)} MB", flush=True)  # fmt: skip
                ref_path = workdir / f"emb_geneformer_{size}_{max_len}.npy"
                if ref_path.exists():
                    ref = np.load(ref_path)
                    for method in methods:
                        if method == "geneformer":
                            continue
                        emb = np.load(workdir / f"emb_{method}_{size}_{max_len}.npy")
                        cos = cosine(emb, ref)
                        compare[method] = {
                            "cos_min": float(cos.min()),
                            "cos_mean": float(cos.mean()),
                            "max_abs": float(np.abs(emb - ref).max()),
                        }
                runs.append({"size": size, "cells": cells[max_len], "results": results, "compare": compare})
    info["load_end"] = os.getloadavg()[0]
    text = section(info, runs, args, command)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    if args.write_docs:
        write_docs_section(REPO / "docs" / "benchmarks.md", DOCS_HEADING, text)


if __name__ == "__main__":
    main()

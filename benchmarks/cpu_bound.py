"""What this CPU allows: fp32 arithmetic of the embedding and perturbation workloads against the machine's kernels.

The speed goals of ``embed.py`` and ``perturb.py`` are ratios against the Geneformer way. This script asks how far
any fp32 implementation could go on the machine it runs on, in one run:

1. **kernel throughput** (fp32, all torch threads): the matrix product mixgf uses on x86
   (``torch.ops.mkldnn._linear_pointwise``, oneDNN) at the V1 model's four shapes with 8,192 token rows and at
   4,096^3, and ``scaled_dot_product_attention`` (torch's fused CPU kernel) at sequence lengths 256 to 2,048. The
   fastest matrix product is the **peak**;
2. **arithmetic of each workload** in floating-point operations (a multiply-add = 2), counted from the model
   geometry and the real token lengths: per layer and token ``8 h^2 + 4 h f`` for the projections and the
   feed-forward block and ``4 h L`` for attention (``h`` hidden, ``f`` FFN, ``L`` the sequence length);
   embeddings, LayerNorm, softmax and pooling are not counted (they only add time). mixgf's work is what it runs:
   the layers up to the one pooled, no padding, no MLM head. The Geneformer way's work adds the MLM head on every
   position (``2 h^2 + 2 h V``, ``V`` = 25,426), every layer, and its padding;
   The same products and attention in bf16 are measured too (``F.linear`` / SDPA on bf16 tensors, as autocast
   runs them), with a bf16 peak bound; on CPUs without AVX512-BF16 or AMX they are slower than fp32;
3. **bounds** for mixgf: the *peak bound* = all of its arithmetic at the peak matrix-product rate (no fp32
   implementation on this machine can be faster); the *kernel bound* = projections at the oneDNN rate of their
   shapes plus attention at the measured fused-attention rate for each sequence's length (linear interpolation
   between the measured lengths);
4. **the Geneformer way, timed in this run** on a sample of the same inputs (the functions of ``embed.py`` and
   ``perturb.py``), and ``mgf.tl.embed`` timed on the same sample; from these, the largest speed-up over the
   Geneformer way that the peak bound allows, next to the goals.

Workloads (V1 geometry: 6 layers, hidden 256, 4 heads, FFN 512, ReLU, vocabulary 25,426, random weights), each
counted over exactly the inputs that are timed: ``embed-2048`` and ``embed-512``: the first ``--sample`` (64) of
``embed.py``'s pbmc3k cells at maximum length 2,048 / 512, pooled at the second-to-last layer (5 layers run; the
Geneformer way in padded batches of 16, longest first); ``delete-all``: ``perturb.py`` part 1, genes of a
2,048-token cell deleted one at a time (copies of 2,047 tokens; the last layer pooled, 6 layers run; the Geneformer
way in batches of 8 copies, ``--copies`` of them timed); ``gene-list``: a 10-gene deletion list over the first
``--list-cells`` (8) ``embed-2048`` cells, each cell's original and 10 copies one token shorter (6 layers; the
Geneformer way in one padded batch per cell), as in ``perturb.py`` part 2.

Usage::

    python benchmarks/cpu_bound.py                  # ~2 min on 2 cores
    python benchmarks/cpu_bound.py --write-docs     # also update docs/benchmarks.md

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed as embed_bench
import perturb as perturb_bench
from _common import write_docs_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "_out" / "cpu_bound.md"
DEFAULT_DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADING = "## What the CPU allows (`benchmarks/cpu_bound.py`)"
H, FFN, LAYERS, HEADS, VOCAB_SIZE = 256, 512, 6, 4, 25_426
ROWS = 8_192  # token rows of the matrix-product measurements
ATTN_LENGTHS = (256, 512, 821, 1_024, 1_536, 2_048)
GOALS = {"embed-2048": "25 cells/s, 6x", "embed-512": "40 cells/s", "delete-all": "5x", "gene-list": "5x"}


def timed(fn, seconds: float = 2.0) -> float:
    """Seconds per call of ``fn`` (3 warm-up calls, then as many as fit in ``seconds``)."""
    for _ in range(3):
        fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def kernel_rates() -> dict:
    """GFLOP/s of oneDNN fp32 matrix products (V1 shapes, 4,096^3) and of fused attention per sequence length."""
    import torch
    import torch.nn.functional as F

    from mixgf.module._attention import _onednn_linear_available

    gen = torch.Generator().manual_seed(0)
    onednn = _onednn_linear_available()

    def linear(x, w, b):
        if onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return F.linear(x, w, b)

    shapes = {"qkv": (H, 3 * H), "attn_out": (H, H), "ffn_in": (H, FFN), "ffn_out": (FFN, H)}
    rates = {}
    for name, (k, n) in shapes.items():
        x, w, b = torch.randn(ROWS, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
        rates[name] = 2 * ROWS * k * n / timed(lambda x=x, w=w, b=b: linear(x, w, b)) / 1e9
    big = torch.randn(4_096, 4_096, generator=gen)
    wbig, bbig = torch.randn(4_096, 4_096, generator=gen), torch.zeros(4_096)
    rates["square_4096"] = 2 * 4_096**3 / timed(lambda: linear(big, wbig, bbig)) / 1e9
    attention = {}
    for length in ATTN_LENGTHS:
        batch = max(1, 16_384 // length)  # about 16k tokens per call, as in a token-budget batch
        q, k, v = (torch.randn(batch, HEADS, length, H // HEADS, generator=gen) for _ in range(3))
        flops = batch * 4 * H * length * length
        attention[length] = flops / timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)) / 1e9
    return {"linear": rates, "attention": attention, "onednn": onednn, "bf16": bf16_rates()}


def bf16_rates() -> dict:
    """GFLOP/s of bf16 matrix products (V1 shapes, 8,192 rows, as autocast runs them) and bf16 fused attention.

    On a CPU without native bf16 (no AVX512-BF16 or AMX) torch converts to fp32 and back, so these are slower than
    fp32; there they are measured briefly (0.5 s each) only to show it.
    """
    import torch
    import torch.nn.functional as F

    from mixgf.model import cpu_supports_bf16

    native = cpu_supports_bf16()
    seconds = 2.0 if native else 0.5
    gen = torch.Generator().manual_seed(0)
    shapes = {"qkv": (H, 3 * H), "attn_out": (H, H), "ffn_in": (H, FFN), "ffn_out": (FFN, H)}
    rates = {}
    for name, (k, n) in shapes.items():
        x, w = torch.randn(ROWS, k, generator=gen).bfloat16(), torch.randn(n, k, generator=gen).bfloat16()
        b = torch.randn(n, generator=gen).bfloat16()
        rates[name] = 2 * ROWS * k * n / timed(lambda x=x, w=w, b=b: F.linear(x, w, b), seconds) / 1e9
    length = 821  # the mean full-length pbmc3k cell
    q, k, v = (torch.randn(16, HEADS, length, H // HEADS, generator=gen).bfloat16() for _ in range(3))
    att = 16 * 4 * H * length * length / timed(lambda: F.scaled_dot_product_attention(q, k, v), seconds) / 1e9
    return {"native": native, "linear": rates, "attention_821": att, "peak": max(rates.values())}


def linear_flops(tokens: float) -> float:
    """Projections + feed-forward of one layer over ``tokens`` tokens."""
    return tokens * (8 * H * H + 4 * H * FFN)


def attention_flops(length: np.ndarray) -> np.ndarray:
    """Attention products of one layer for sequences of ``length`` tokens."""
    return 4.0 * H * np.asarray(length, dtype=np.float64) ** 2


def mlm_flops(tokens: float) -> float:
    """MLM head (transform + decoder over the vocabulary) on ``tokens`` positions."""
    return tokens * (2 * H * H + 2 * H * VOCAB_SIZE)


def workload(lengths: np.ndarray, layers_run: int, padded_batches: list[np.ndarray], units: int) -> dict:
    """Arithmetic of mixgf (``layers_run`` layers, no padding) and of the Geneformer way (padded, 6 layers + MLM).

    ``lengths``: every sequence mixgf embeds; ``padded_batches``: the Geneformer way's batches (lengths);
    ``units``: cells or perturbed copies the work yields.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    mixgf_lin = layers_run * linear_flops(lengths.sum())
    mixgf_att = layers_run * attention_flops(lengths)
    padded = np.concatenate([np.full(len(b), b.max(), dtype=np.float64) for b in padded_batches])
    ref = LAYERS * (linear_flops(padded.sum()) + attention_flops(padded).sum()) + mlm_flops(padded.sum())
    return {
        "n": int(units),
        "mean_len": float(lengths.mean()),
        "mixgf_linear": float(mixgf_lin),
        "mixgf_attention": mixgf_att,
        "mixgf_total": float(mixgf_lin + mixgf_att.sum()),
        "reference_total": float(ref),
    }


def bounds(w: dict, rates: dict) -> dict:
    """Seconds per unit of work at the peak rate and at the kernel rates."""
    lin = rates["linear"]
    peak = max(lin.values())
    # the four products of a layer in proportion to their arithmetic
    weights = {"qkv": 3 * H * H, "attn_out": H * H, "ffn_in": H * FFN, "ffn_out": FFN * H}
    lin_rate = sum(weights.values()) / sum(v / lin[k] for k, v in weights.items())
    lengths = np.array(sorted(rates["attention"]))
    att_rate = np.interp(np.sqrt(w["mixgf_attention"] / (4.0 * H)), lengths, [rates["attention"][x] for x in lengths])
    kernel_s = w["mixgf_linear"] / (lin_rate * 1e9) + float((w["mixgf_attention"] / (att_rate * 1e9)).sum())
    return {"peak_s": w["mixgf_total"] / (peak * 1e9), "kernel_s": kernel_s}


def embed_cells(n_cells: int, max_len: int, tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The first ``n_cells`` of ``embed.py``'s pbmc3k cells at ``max_len``: the h5ad, tokens and lengths."""
    path = tmp / f"cells_{max_len}.h5ad"
    embed_bench.make_cells(n_cells, max_len, path)
    tokens, lengths = embed_bench.read_tokens(path)
    return path, tokens, lengths


def gf_batches(lengths: np.ndarray, batch: int) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")
    return [lengths[order[i : i + batch]] for i in range(0, len(order), batch)]


def time_reference_embed(ckpt: Path, tokens: np.ndarray, lengths: np.ndarray, sample: int) -> float:
    """Seconds per cell of the Geneformer way (batches of 16) on the first ``sample`` cells."""
    model = perturb_bench.gf_load(ckpt, "cpu")
    embed_bench.geneformer_embed(model, tokens[:8], lengths[:8], "cpu", 16)  # warm-up
    start = time.perf_counter()
    embed_bench.geneformer_embed(model, tokens[:sample], lengths[:sample], "cpu", 16)
    return (time.perf_counter() - start) / sample


def time_mixgf_embed(ckpt: Path, h5ad: Path, sample: int) -> float:
    """Seconds per cell of ``mgf.tl.embed`` (layer -2, defaults) on the first ``sample`` cells."""
    import anndata as ad

    mgf = perturb_bench.quiet_mixgf()
    model = mgf.MixGeneformer.from_huggingface(ckpt, vocab="geneformer-v1")
    adata = ad.read_h5ad(h5ad)[:sample].copy()
    mgf.tl.embed(adata[:8].copy(), model=model, hidden_layer=-2)  # warm-up
    start = time.perf_counter()
    mgf.tl.embed(adata, model=model, hidden_layer=-2)
    return (time.perf_counter() - start) / sample


def time_reference_delete_all(ckpt: Path, n_copies: int) -> tuple[float, int]:
    """Seconds per copy of the Geneformer way's delete-all on a 2,048-token cell (batches of 8)."""
    with tempfile.TemporaryDirectory() as d:
        perturb_bench.make_long_cell(Path(d) / "cell.h5ad")
        import anndata as ad

        a = ad.read_h5ad(Path(d) / "cell.h5ad")
        cell = [int(t) for t in np.asarray(a.obsm["mixgf_tokens"])[0, : int(a.obs["mixgf_tokens_n_tokens"].iloc[0])]]
    model = perturb_bench.gf_load(ckpt, "cpu")
    perturb_bench.gf_delete_all(model, cell, 2, 2, "cpu")  # warm-up
    start = time.perf_counter()
    perturb_bench.gf_delete_all(model, cell, n_copies, 8, "cpu")
    return (time.perf_counter() - start) / n_copies, len(cell)


def time_reference_gene_list(ckpt: Path, tokens: np.ndarray, lengths: np.ndarray, sample: int) -> float:
    """Seconds per copy of the Geneformer way with a 10-gene list (original + 10 copies per cell, one batch)."""
    model = perturb_bench.gf_load(ckpt, "cpu")
    seqs = [[int(t) for t in tokens[i, : lengths[i]]] for i in range(sample)]

    def one(cell: list[int]) -> None:
        copies = [cell] + [cell[:j] + cell[j + 1 :] for j in range(10)]  # 10 genes it expresses deleted in turn
        perturb_bench.gf_embed(model, copies, "cpu")

    one(seqs[0])  # warm-up
    start = time.perf_counter()
    for cell in seqs:
        one(cell)
    return (time.perf_counter() - start) / (sample * 10)


def machine() -> str:
    import torch

    m = embed_bench.machine(argparse.Namespace(device="cpu"))
    return (
        f"{m['date']}; {m['cpu']}, {m['cores']} cores, {torch.get_num_threads()} torch threads; Python "
        f"{m['python']}, torch {m['versions']['torch']}, transformers {m['versions']['transformers']}; load "
        f"average {m['load_start']:.2f} at the start"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=int, default=64, help="cells timed for the embedding workloads (default 64)")
    p.add_argument("--copies", type=int, default=16, help="copies timed for delete-all (default 16)")
    p.add_argument("--list-cells", type=int, default=8, help="cells timed for the gene list (default 8)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the Markdown section")
    p.add_argument("--write-docs", action="store_true", help="also replace this section of docs/benchmarks.md")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="docs file for --write-docs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    info = machine()
    print("#", info, flush=True)
    print("  kernels ...", flush=True)
    rates = kernel_rates()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = tmp / "v1"
        embed_bench.make_checkpoint("v1", ckpt)
        for max_len in (2_048, 512):
            name = f"embed-{max_len}"
            print(f"  {name} ...", flush=True)
            h5ad, tokens, lengths = embed_cells(args.sample, max_len, tmp)  # exactly the cells that are timed
            w = workload(lengths, LAYERS - 1, gf_batches(lengths, 16), len(lengths))
            ref_s = time_reference_embed(ckpt, tokens, lengths, args.sample)
            mix_s = time_mixgf_embed(ckpt, h5ad, args.sample)
            rows.append({"name": name, "unit": "cell", "w": w, "ref_s": ref_s, "mixgf_s": mix_s})
            if max_len == 2_048:
                list_tokens, list_lengths = tokens, lengths
        print("  delete-all ...", flush=True)
        ref_s, cell_len = time_reference_delete_all(ckpt, args.copies)
        copy_lengths = np.full(cell_len, cell_len - 1)
        batches = [np.array([cell_len]), *(copy_lengths[i : i + 8] for i in range(0, cell_len, 8))]
        w = workload(np.r_[cell_len, copy_lengths], LAYERS, batches, cell_len)
        rows.append({"name": "delete-all", "unit": "copy", "w": w, "ref_s": ref_s, "mixgf_s": None})
        print("  gene-list ...", flush=True)
        ref_s = time_reference_gene_list(ckpt, list_tokens, list_lengths, args.list_cells)
        batches = [np.r_[n, np.full(10, n - 1)] for n in list_lengths[: args.list_cells]]  # original + 10 copies
        w = workload(np.concatenate(batches), LAYERS, batches, 10 * len(batches))
        rows.append({"name": "gene-list", "unit": "copy", "w": w, "ref_s": ref_s, "mixgf_s": None})
    text = section(info, rates, rows, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.write_docs:
        write_docs_section(args.docs, DOCS_HEADING, text)


def section(info: str, rates: dict, rows: list[dict], args: argparse.Namespace) -> str:
    lin, att = rates["linear"], rates["attention"]
    lines = [
        DOCS_HEADING,
        "",
        f"{info}.",
        "",
        "How fast could any fp32 implementation embed and perturb cells on this machine? The script measures the "
        "throughput of the kernels mixgf runs on (oneDNN matrix products"
        + ("" if rates["onednn"] else " — not available here, so torch's default")
        + ", torch's fused attention), "
        "counts the arithmetic of each workload from the model geometry and the real token lengths (multiply-add = "
        "2 operations; embeddings, LayerNorm, softmax and pooling not counted), and times the Geneformer way on a "
        "sample of the same inputs in the same run. V1 geometry (6 layers, hidden 256, 4 heads, FFN 512, "
        "vocabulary 25,426).",
        "",
        "Kernel throughput, fp32, GFLOP/s: matrix products (8,192 token rows) "
        + ", ".join(f"{k} {v:.0f}" for k, v in lin.items() if k != "square_4096")
        + f"; 4,096^3 {lin['square_4096']:.0f}. Fused attention by sequence length: "
        + ", ".join(f"{length:,} {v:.0f}" for length, v in att.items())
        + ".",
        "",
        "| workload | unit | mean tokens | mixgf GFLOP per unit | Geneformer way GFLOP per unit | peak bound, "
        "units/s | kernel bound, units/s | Geneformer way measured, units/s | mixgf measured, units/s | largest "
        "speed-up the peak allows | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w, b = r["w"], bounds(r["w"], rates)
        n = w["n"]
        peak_rate, kernel_rate = n / b["peak_s"], n / b["kernel_s"]
        ref_rate = 1.0 / r["ref_s"]
        mix = f"{1.0 / r['mixgf_s']:.1f}" if r["mixgf_s"] else "-"
        lines.append(
            f"| {r['name']} | {r['unit']} | {w['mean_len']:,.0f} | {w['mixgf_total'] / n / 1e9:.2f} | "
            f"{w['reference_total'] / n / 1e9:.2f} | {peak_rate:.1f} | {kernel_rate:.1f} | {ref_rate:.2f} | {mix} | "
            f"**{peak_rate / ref_rate:.1f}x** | {GOALS[r['name']]} |"
        )
    bf = rates["bf16"]
    bf_bounds = ", ".join(f"{r['name']} {r['w']['n'] / (r['w']['mixgf_total'] / (bf['peak'] * 1e9)):.1f}" for r in rows)
    lines += [
        "",
        'bf16 (what `dtype="bf16"` runs; `dtype="auto"` picks it only where the CPU has native bf16): this CPU '
        + (
            "has native bf16 (AVX512-BF16 or AMX). "
            if bf["native"]
            else "has **no** native bf16 (no AVX512-BF16, no AMX): torch converts bf16 to fp32 and back, so bf16 is "
            'slower than fp32 here and `dtype="auto"` stays fp32. '
        )
        + "bf16 matrix products (8,192 token rows), GFLOP/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in bf["linear"].items())
        + f"; bf16 fused attention at 821 tokens {bf['attention_821']:.0f}. bf16 peak bound (all of mixgf's "
        f"arithmetic at the fastest bf16 product rate), units/s: {bf_bounds}.",
    ]
    lines += [
        "",
        "Peak bound: all of mixgf's arithmetic at the fastest matrix-product rate measured above; no fp32 "
        "implementation on this machine can be faster (attention runs below that rate). Kernel bound: projections "
        "at the oneDNN rate of their shapes, attention at the fused kernel's rate for each sequence's length. "
        "Every row counts the arithmetic of the inputs that are timed: the Geneformer way on the first "
        f"{args.sample} cells (embedding), {args.copies} copies (delete-all) and {args.list_cells} cells x 10 copies "
        f"(gene list) of the workloads above; `mgf.tl.embed` on the same {args.sample} cells. Units: cells for "
        "embedding, perturbed copies for perturbation (each cell's original is embedded once and counted in the "
        'work). A speed-up goal above the column "largest speed-up the peak allows" cannot be met in fp32 on this '
        "machine.",
        "",
        "Command:",
        "",
        "```bash",
        "python benchmarks/cpu_bound.py --write-docs",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Benchmark of in silico perturbation: Geneformer's way against ``mixgf.tl.perturb``, calibration and biology.

What it does, in one run (each part can be skipped with ``--skip-parts``):

1. ``delete-all`` — **speed of deleting every gene of one full-length cell**. A Geneformer V1-size model (6 layers,
   hidden 256, 4 heads, FFN 512, ReLU, 2,048 positions, vocabulary 25,426; random weights after
   ``torch.manual_seed(0)``, saved with ``save_pretrained``; built by ``benchmarks/embed.py``) and one **real** cell
   with at least 2,048 expressed genes of the ``geneformer-v1`` vocabulary: the pbmc3k cell with the most such genes
   among the cells that passed the tutorial QC (a megakaryocyte, ~2,400 genes), tokenized with ``mgf.pp.rank_tokenize``
   and cut to its top-ranked 2,048 genes as Geneformer does. Deleting one gene at a time means one forward pass of
   2,047 tokens per gene: 2,048 of them per cell. On a CPU that is far too slow for a benchmark, so only the copies
   that delete the first ``--n-perturb`` genes of the rank list are timed (default 64 on CPU, all on CUDA); the
   seconds per full cell are then *extrapolated* from copies/s (and the output says so). Both methods perturb the
   same genes, and their shifts ``1 - cos(original, perturbed)`` are compared (max |difference|, Spearman rho).
2. ``list`` — **speed of a 10-gene list over many cells**: the ``--list-genes`` genes (default 10) present in the
   most pbmc3k token lists, deleted one at a time in ``--list-cells`` pbmc3k cells (repeated cyclically past 2,700,
   said so; default 10,000 on CUDA, 48 on CPU), on the same V1-size model; cells/s, the ratio, and agreement.
3. ``calibration`` — ``mgf.tl.perturb(adata, genes="all", max_cells=N, model=M, inplace=False)`` (default
   ``test="matched"``; ``N = --calib-cells``, default 300 on CPU, all 2,638 tutorial-QC cells on CUDA) on pbmc3k
   cells tokenized with ``max_len=64`` (``--calib-max-len``), for ``M`` = the bundled default model and a
   random-weight copy of it (``BertEncoderModel(cfg)`` after ``torch.manual_seed(0)``):
   number of genes, Kolmogorov-Smirnov test of the p-values against the uniform distribution, fraction of p < 0.05
   and < 0.01, Benjamini-Hochberg discoveries at 0.05; for all genes and separately for genes seen in one cell and
   in two or more. Under the null the p-values should be uniform; with random weights there is no biology to find.
4. ``biology`` — **known biology** with the default model: for B cells, CD14+ monocytes, NK cells and CD4 T cells,
   the top 5 marker genes of each type (``scanpy.tl.rank_genes_groups``, Wilcoxon, on log1p-normalised counts of the
   same cells; only genes of the model's vocabulary) are deleted in cells of that type with
   ``goal={"key": "cell_type", "source": T, "target": T}``: the shift is ``cos(perturbed, c_T) - cos(original, c_T)``
   with ``c_T`` the type's centroid, so deleting a marker should make it negative (moving the cell away from its own
   type) and more negative than for its expression-matched controls (``expected_shift``). ``--bio-cells`` cells per
   type (default 20 on CPU, 300 on CUDA), tokenized to ``--bio-max-len`` (default 512 on CPU, the model's 1,024 on
   CUDA). The goal centroid is the mean of up to 2,000 cells of the type (the tool's default).

Methods of parts 1 and 2 (each in its **own child process**, one warm-up call, then ``--repeats`` timed calls):

``(a) Geneformer way``
    What ``geneformer.InSilicoPerturber`` does, minus its Hugging Face ``datasets`` overhead:
    ``BertForMaskedLM.from_pretrained(..., output_hidden_states=True)`` (every forward computes the MLM logits and
    keeps every layer), fp32, ``torch.no_grad``. Delete-all (``isp_perturb_all``): the original cell is embedded
    alone, then the perturbed copies are built with Python list deletion (``perturber_utils.delete_indices``) and
    run in padded batches of ``--gf-batch`` copies (upstream ``forward_batch_size`` default 100, which needs ~20 GB
    of MLM logits per batch at 2,047 tokens; the CPU default here is 8). Gene list: per cell, the original and its
    perturbed copies (one per listed gene the cell expresses) in padded batches of ``--gf-batch`` sequences (one
    batch when it fits). This is kinder to Geneformer than running ``InSilicoPerturber`` once per gene, which embeds
    every original again for each gene. Cell embedding: mean of ``hidden_states[-1]`` over the non-padding
    positions (Geneformer's ``emb_layer=0``, the last layer, which is also mixgf's default perturbation layer);
    shift = ``1 - cos`` between the perturbed and the original cell embedding (Geneformer's cell-state path;
    without goal states upstream averages per-gene cosines instead, which costs the same forwards plus more).
``(b) mixgf``
    ``mgf.tl.perturb(adata, genes=..., test="none", model=mgf.MixGeneformer.from_huggingface(folder,
    vocab="geneformer-v1"), hidden_layer=-1)``, end to end: AnnData with tokens in, per-cell shifts out. Defaults only
    (fp32 on CPU; bf16 and packed attention on CUDA, unless ``--mixgf-dtype``).

Usage::

    python benchmarks/perturb.py                                    # this CPU (~25 min on 2 busy cores)
    python benchmarks/perturb.py --device cuda                      # GPU: all 2,048 deletions, 10,000 cells
    python benchmarks/perturb.py --skip-parts delete-all,list       # only calibration and biology
    python benchmarks/perturb.py --write-docs                       # also update docs/benchmarks.md

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed as embed_bench
from _common import memory_mb, reset_peak_memory, write_docs_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "_out" / "perturb.md"
DEFAULT_DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADING = "## In silico perturbation (`benchmarks/perturb.py`)"
VOCAB = "geneformer-v1"
SIZE = "v1"
LAYER = -1  # hidden_states[-1]: Geneformer's emb_layer=0 (last layer) = mixgf's DEFAULT_PERTURB_LAYER
FULL_LEN = 2_048
WARM_PERTURB = 2  # warm-up: this many deletions (part 1) ...
WARM_CELLS = 4  # ... or cells (part 2)
PARTS = ("delete-all", "list", "calibration", "biology")
BIO_TYPES = ("B cells", "CD14+ Monocytes", "NK cells", "CD4 T cells")
N_MARKERS = 5
SHORT = {"gf": "(a) Geneformer way", "mixgf": "(b) mixgf `tl.perturb`"}


def quiet_mixgf():
    import mixgf as mgf

    mgf.settings.progress_bar = False
    mgf.settings.verbosity = "warning"
    return mgf


# --------------------------------------------------------------------------------------------------------------
# inputs (parent process)
# --------------------------------------------------------------------------------------------------------------


def make_long_cell(path: Path) -> dict:
    """One real pbmc3k cell with >= 2,048 genes of the V1 vocabulary, tokenized to 2,048 tokens, written as h5ad."""
    mgf = quiet_mixgf()
    full = mgf.datasets.pbmc3k()
    capped = mgf.pp.rank_tokenize(full, vocab=VOCAB, gene_id_key="gene_id", max_len=FULL_LEN, copy=True)
    n_tok = capped.obs["mixgf_tokens_n_tokens"].to_numpy()
    cand = np.flatnonzero(n_tok >= FULL_LEN)
    note = ""
    if cand.size == 0:  # never the case for pbmc3k (6 cells qualify); kept so the script says what it used
        cand = np.array([int(np.argmax(n_tok))])
        note = f"no pbmc3k cell has {FULL_LEN:,} vocabulary genes; the longest one is used"
    # the number of V1-vocabulary genes each candidate expresses (uncapped)
    uncapped = mgf.pp.rank_tokenize(full[cand].copy(), vocab=VOCAB, gene_id_key="gene_id", max_len=100_000, copy=True)
    n_vocab = uncapped.obs["mixgf_tokens_n_tokens"].to_numpy()
    labelled = full.obs["cell_type"].iloc[cand].notna().to_numpy()
    # prefer cells that passed the scanpy tutorial QC (labelled), then the most vocabulary genes
    pick = cand[np.lexsort((-n_vocab, ~labelled))[0]]
    j = int(np.flatnonzero(cand == pick)[0])
    one = capped[[pick]].copy()
    one.write_h5ad(path)
    return {
        "name": str(full.obs_names[pick]),
        "cell_type": str(full.obs["cell_type"].iloc[pick]) if labelled[j] else "unlabelled",
        "n_detected": int((full.X[pick] > 0).sum()),
        "n_vocab": int(n_vocab[j]),
        "n_tokens": int(n_tok[pick]),
        "n_candidates": int(cand.size),
        "note": note,
    }


def choose_list_genes(n_genes: int) -> dict:
    """The ``n_genes`` genes present in the most token lists of the 2,700 pbmc3k cells (``geneformer-v1``)."""
    from mixgf.genes import Vocabulary, id_to_symbol

    mgf = quiet_mixgf()
    full = mgf.pp.rank_tokenize(mgf.datasets.pbmc3k(), vocab=VOCAB, gene_id_key="gene_id", max_len=FULL_LEN, copy=True)
    tokens = np.asarray(full.obsm["mixgf_tokens"]).astype(np.int64)
    lengths = full.obs["mixgf_tokens_n_tokens"].to_numpy()
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    counts = np.bincount(tokens[valid])  # a gene appears at most once per cell
    counts[:2] = 0  # <pad>, <mask>
    top = np.argsort(-counts, kind="stable")[:n_genes]
    vocab = Vocabulary.load(VOCAB)
    ids = [str(vocab.tokens[t]) for t in top]
    sym = id_to_symbol("human")
    return {
        "tokens": [int(t) for t in top],
        "ensembl": ids,
        "symbols": [sym.get(i, i) for i in ids],
        "frac_cells": [float(counts[t] / full.n_obs) for t in top],
    }


# --------------------------------------------------------------------------------------------------------------
# the Geneformer way (child process)
# --------------------------------------------------------------------------------------------------------------


def gf_load(ckpt: Path, device: str):
    """``perturber_utils.load_model("Pretrained", ...)``: fp32 BertForMaskedLM with all hidden states."""
    import transformers
    from transformers import BertForMaskedLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = BertForMaskedLM.from_pretrained(ckpt, output_hidden_states=True, output_attentions=False)
    return model.to(device).eval()


def gf_embed(model, seqs: list[list[int]], device: str):
    """``emb_extractor.get_embs`` on one minibatch: pad to its longest, forward, mean of hidden_states[LAYER]."""
    import torch

    lens = torch.tensor([len(s) for s in seqs])
    width = int(lens.max())
    ids = torch.zeros((len(seqs), width), dtype=torch.long)  # pad_tensor_list with <pad> = 0
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    mask = torch.arange(width)[None, :] < lens[:, None]  # gen_attention_mask
    with torch.no_grad():
        out = model(input_ids=ids.to(device), attention_mask=mask.long().to(device))
        hidden = out.hidden_states[LAYER]
        m = mask.to(device).unsqueeze(2)
        emb = (hidden * m).sum(1) / lens.to(device).unsqueeze(1)  # mean_nonpadding_embs
        emb = emb.cpu().numpy()
    del out, hidden
    return emb


def cos_shift(emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``1 - cos`` in float64 (so that comparisons see the embeddings, not the rounding of the cosine)."""
    return 1.0 - embed_bench.cosine(emb, np.broadcast_to(ref, emb.shape))


def gf_delete_all(model, cell: list[int], n_perturb: int, batch: int, device: str) -> np.ndarray:
    """``isp_perturb_all`` for one cell, the first ``n_perturb`` deletions."""
    import torch

    original = gf_embed(model, [cell], device)  # get_embs(example_cell)
    copies = []  # make_perturbation_batch -> delete_indices: one copy per index, Python list deletion
    for i in range(n_perturb):
        c = list(cell)
        del c[i]
        copies.append(c)
    out = np.empty(n_perturb)
    for start in range(0, n_perturb, batch):
        emb = gf_embed(model, copies[start : start + batch], device)
        out[start : start + emb.shape[0]] = cos_shift(emb, original)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def gf_gene_list(model, tokens, lengths, gene_tokens: list[int], batch: int, device: str) -> np.ndarray:
    """Per cell: the original and one copy per listed gene it expresses, in padded batches of ``batch``."""
    import torch

    out = np.full((len(lengths), len(gene_tokens)), np.nan)
    for i in range(len(lengths)):
        cell = tokens[i, : lengths[i]].tolist()
        cols, seqs = [], [cell]
        for j, g in enumerate(gene_tokens):
            if g in cell:  # filter_data_by_tokens
                c = list(cell)
                del c[c.index(g)]
                seqs.append(c)
                cols.append(j)
        if not cols:
            continue
        emb = np.concatenate([gf_embed(model, seqs[s : s + batch], device) for s in range(0, len(seqs), batch)])
        out[i, cols] = cos_shift(emb[1:], emb[0])
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------------------------
# mixgf (child process)
# --------------------------------------------------------------------------------------------------------------


def mixgf_shifts(adata, model, genes, gene_ids: list[str], cfg: dict) -> np.ndarray:
    """``mgf.tl.perturb(..., test="none")``; shifts as ``[cells, genes]`` in the order of ``gene_ids``."""
    mgf = quiet_mixgf()
    mgf.tl.perturb(
        adata,
        genes=genes,
        test="none",
        model=model,
        hidden_layer=LAYER,
        device=cfg["device"],
        dtype=cfg["mixgf_dtype"],
        token_budget=cfg["token_budget"],
    )
    res = adata.uns["mixgf_perturb"]["results"]
    label_of = dict(zip(res["ensembl_id"], res["gene"], strict=True))
    shift = adata.obsm["mixgf_perturb_shift"]
    return np.column_stack([shift[label_of[g]].to_numpy(np.float64) for g in gene_ids])


# --------------------------------------------------------------------------------------------------------------
# child process: one method of one part, timed and measured
# --------------------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, part: str, method: str, workdir: Path, cfg: dict) -> None:
        import anndata as ad

        self.part, self.method, self.cfg, self.device = part, method, cfg, cfg["device"]
        ckpt = workdir / f"ckpt_{SIZE}"
        h5ad = workdir / ("long_cell.h5ad" if part == "delete-all" else "list_cells.h5ad")
        if method == "gf":
            self.model = gf_load(ckpt, self.device)
            self.tokens, self.lengths = embed_bench.read_tokens(h5ad)
        else:
            mgf = quiet_mixgf()
            self.model = mgf.MixGeneformer.from_huggingface(ckpt, vocab=VOCAB, device=self.device)
            self.adata = ad.read_h5ad(h5ad)
        if part == "delete-all":
            tokens, lengths = embed_bench.read_tokens(h5ad)
            self.cell = tokens[0, : lengths[0]].astype(np.int64)
            self.n_genes = int(lengths[0])
            self.n_perturb = min(cfg["n_perturb"] or self.n_genes, self.n_genes)
        else:
            self.genes = json.loads((workdir / "list_genes.json").read_text())

    def __call__(self, warm: bool) -> np.ndarray:
        if self.part == "delete-all":
            n = min(WARM_PERTURB, self.n_perturb) if warm else self.n_perturb
            if self.method == "gf":
                return gf_delete_all(self.model, self.cell.tolist(), n, self.cfg["gf_batch"], self.device)
            vocab = self.model.vocab
            ids = [vocab.tokens[int(t)] for t in self.cell[:n]]
            genes = "all" if n == self.n_genes else ids
            return mixgf_shifts(self.adata.copy(), self.model, genes, ids, self.cfg)[0]
        sl = slice(0, WARM_CELLS) if warm else slice(None)
        if self.method == "gf":
            tokens, lengths = self.tokens[sl], self.lengths[sl]
            return gf_gene_list(self.model, tokens, lengths, self.genes["tokens"], self.cfg["gf_batch"], self.device)
        adata = self.adata[sl].copy() if warm else self.adata
        return mixgf_shifts(adata, self.model, self.genes["ensembl"], self.genes["ensembl"], self.cfg)


def child_main(spec: str, workdir: Path) -> None:
    import torch

    cfg = json.loads((workdir / "config.json").read_text())
    part, method = spec.split(":")
    cuda = cfg["device"].startswith("cuda")
    if not cuda:
        torch.set_num_threads(cfg["threads"])
    t = time.perf_counter()
    runner = Runner(part, method, workdir, cfg)
    runner(warm=True)
    embed_bench.sync(cfg["device"])
    setup_s = time.perf_counter() - t
    seconds, peak_mb, gpu_peak_mb, out = [], [], [], None
    for _ in range(cfg["repeats"]):
        out = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        hwm_reset = reset_peak_memory()
        base = memory_mb()
        t = time.perf_counter()
        out = runner(warm=False)
        embed_bench.sync(cfg["device"])
        seconds.append(time.perf_counter() - t)
        peak_mb.append(memory_mb()["VmHWM"] - base["VmRSS"])
        if cuda:
            gpu_peak_mb.append(torch.cuda.max_memory_allocated() / 2**20)
    tag = f"{part}_{method}"
    np.save(workdir / f"shifts_{tag}.npy", out)
    result = {
        "seconds": seconds,
        "setup_s": setup_s,
        "peak_mb": min(peak_mb),
        "hwm_reset": hwm_reset,
        "gpu_peak_mb": max(gpu_peak_mb) if gpu_peak_mb else None,
        "threads": torch.get_num_threads(),
    }
    if part == "delete-all":
        result |= {"n_genes": runner.n_genes, "n_perturb": runner.n_perturb}
    else:
        result |= {"n_cells": len(out), "n_copies": int((~np.isnan(out)).sum())}
    (workdir / f"result_{tag}.json").write_text(json.dumps(result))


def run_child(part: str, method: str, workdir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{part}:{method}", "--workdir", str(workdir)]
    subprocess.run(cmd, check=True)
    res = json.loads((workdir / f"result_{part}_{method}.json").read_text())
    res["shifts"] = np.load(workdir / f"shifts_{part}_{method}.npy")
    return res


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy import stats

    both = ~np.isnan(a) & ~np.isnan(b)
    x, y = a[both], b[both]
    return {
        "n": int(both.sum()),
        "nan_mismatch": int((np.isnan(a) != np.isnan(b)).sum()),
        "max_abs": float(np.abs(x - y).max()) if x.size else float("nan"),
        "max_shift": float(np.abs(x).max()) if x.size else float("nan"),
        "mean_shift": float(x.mean()) if x.size else float("nan"),
        "spearman": float(stats.spearmanr(x, y).statistic) if x.size > 2 else float("nan"),
    }


def speed_part(part: str, workdir: Path) -> dict:
    results = {}
    for method in ("gf", "mixgf"):
        print(f"  {part}: {SHORT[method]} ...", end=" ", flush=True)
        res = run_child(part, method, workdir)
        results[method] = res
        best = min(res["seconds"])
        n = res["n_perturb"] if part == "delete-all" else res["n_cells"]
        unit = "copies/s" if part == "delete-all" else "cells/s"
        print(f"{n / best:.2f} {unit} ({', '.join(f'{s:.1f}' for s in res['seconds'])} s), "
              f"peak {fmt_mem(res)} MB", flush=True)  # fmt: skip
    return {"results": results, "agree": agreement(results["gf"]["shifts"], results["mixgf"]["shifts"])}


# --------------------------------------------------------------------------------------------------------------
# parts 3 and 4 (parent process)
# --------------------------------------------------------------------------------------------------------------


def random_copy(model):
    import torch

    import mixgf as mgf
    from mixgf.model import BertEncoderModel

    torch.manual_seed(0)
    encoder = BertEncoderModel(model.encoder.config).eval()
    return mgf.MixGeneformer(encoder, model.vocab, "random", {"trained": False})


def pvalue_stats(df, subset) -> dict:
    from scipy import stats

    sub = df[subset]
    p = sub["p_value"].dropna().to_numpy()
    return {
        "genes": len(sub),
        "with_p": int(p.size),
        "ks_p": float(stats.kstest(p, "uniform").pvalue) if p.size else float("nan"),
        "ks_d": float(stats.kstest(p, "uniform").statistic) if p.size else float("nan"),
        "lt05": float((p < 0.05).mean()) if p.size else float("nan"),
        "lt01": float((p < 0.01).mean()) if p.size else float("nan"),
        "bh05": int((sub["p_adj"] < 0.05).sum()),
    }


def calibration_part(args: argparse.Namespace) -> dict:
    mgf = quiet_mixgf()
    default = mgf.MixGeneformer.load()
    adata = mgf.datasets.pbmc3k()
    adata = adata[adata.obs["cell_type"].notna()].copy()
    mgf.pp.rank_tokenize(adata, vocab=default.vocab, gene_id_key="gene_id", max_len=args.calib_max_len)
    rows = []
    for label, model in (("default (trained)", default), ("random weights", random_copy(default))):
        print(f"  calibration: {label} ...", end=" ", flush=True)
        t = time.perf_counter()
        df = mgf.tl.perturb(adata, genes="all", max_cells=args.calib_cells, model=model, inplace=False,
                            device=args.device)  # fmt: skip
        sec = time.perf_counter() - t
        n = df["n_cells"].to_numpy()
        for subset_name, subset in (("all", n >= 1), ("n_cells = 1", n == 1), ("n_cells >= 2", n >= 2)):
            rows.append({"model": label, "subset": subset_name, "seconds": sec} | pvalue_stats(df, subset))
        print(f"{sec:.1f} s, {len(df):,} genes", flush=True)
    # genes perturbed at random: a seeded draw of listed genes, each with its own 20 matched controls
    tokens = adata.obsm["mixgf_tokens"]
    counts = np.bincount(tokens[tokens >= 0].ravel(), minlength=len(default.vocab))
    pool = np.flatnonzero(counts >= args.calib_list_min_cells)
    pool = pool[default.vocab.is_gene[pool] & (default.vocab.gene_species[pool] == "human")]
    drawn = np.random.default_rng(0).choice(pool, min(args.calib_list_genes, pool.shape[0]), replace=False)
    listed = [default.vocab.tokens[t] for t in np.sort(drawn)]
    for label, model in (("default (trained)", default), ("random weights", random_copy(default))):
        print(f"  calibration: {len(listed)} random genes, {label} ...", end=" ", flush=True)
        t = time.perf_counter()
        df = mgf.tl.perturb(adata, genes=listed, max_cells=args.calib_cells, model=model, inplace=False,
                            device=args.device)  # fmt: skip
        sec = time.perf_counter() - t
        n = df["n_cells"].to_numpy()
        rows.append({"model": label, "subset": f"{len(listed)} random, listed", "seconds": sec}
                    | pvalue_stats(df, n >= 1))  # fmt: skip
        print(f"{sec:.1f} s", flush=True)
    return {
        "rows": rows,
        "n_cells": min(args.calib_cells, adata.n_obs),
        "model": default.name,
        "n_listed": len(listed),
    }


def marker_genes(adata, vocab, types: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Top ``N_MARKERS`` Wilcoxon markers per type (log1p-normalised counts), as (symbol, Ensembl ID) in ``vocab``."""
    import scanpy as sc

    from mixgf.genes import resolve_genes

    b = adata.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.tl.rank_genes_groups(b, "cell_type", groups=types, reference="rest", method="wilcoxon")
    out = {}
    for t in types:
        names = sc.get.rank_genes_groups_df(b, group=t)["names"].tolist()
        chosen = []
        for name in names:
            gid = str(b.var.loc[name, "gene_id"])
            try:
                resolve_genes([gid], vocab, "human")
            except KeyError:
                continue  # not in the model's vocabulary
            chosen.append((str(b.var.loc[name, "gene_symbol"]), gid))
            if len(chosen) == N_MARKERS:
                break
        out[t] = chosen
    return out


def biology_part(args: argparse.Namespace) -> dict:
    mgf = quiet_mixgf()
    model = mgf.MixGeneformer.load()
    adata = mgf.datasets.pbmc3k()
    adata = adata[adata.obs["cell_type"].notna()].copy()
    mgf.pp.rank_tokenize(adata, vocab=model.vocab, gene_id_key="gene_id", max_len=args.bio_max_len)
    types = [t for t in BIO_TYPES if t in set(adata.obs["cell_type"].astype(str))]
    markers = marker_genes(adata, model.vocab, types)
    rows, summary = [], []
    for t in types:
        ids = [g for _, g in markers[t]]
        print(f"  biology: {t} ({', '.join(s for s, _ in markers[t])}) ...", end=" ", flush=True)
        tt = time.perf_counter()
        df = mgf.tl.perturb(
            adata,
            genes=ids,
            goal={"key": "cell_type", "source": t, "target": t},
            max_cells=args.bio_cells,
            n_controls=20,
            model=model,
            inplace=False,
            device=args.device,
        )
        sec = time.perf_counter() - tt
        df = df.set_index("ensembl_id").loc[ids]
        sym = {g: s for s, g in markers[t]}
        for gid, r in df.iterrows():
            rows.append(
                {
                    "type": t,
                    "gene": sym[gid],
                    "n_cells": int(r["n_cells"]),
                    "shift_mean": float(r["shift_mean"]),
                    "expected": float(r["expected_shift"]),
                    "n_controls": int(r["n_controls"]),
                    "p_value": float(r["p_value"]),
                    "p_adj": float(r["p_adj"]),
                }
            )
        sm, ex, padj = df["shift_mean"].to_numpy(), df["expected_shift"].to_numpy(), df["p_adj"].to_numpy()
        summary.append(
            {
                "type": t,
                "n_markers": len(ids),
                "cells": min(args.bio_cells, int((adata.obs["cell_type"] == t).sum())),
                "negative": int((sm < 0).sum()),
                "below_expected": int((sm < ex).sum()),
                "sig_below": int(((sm < ex) & (padj < 0.05)).sum()),
                "seconds": sec,
            }
        )
        print(f"{sec:.1f} s; {summary[-1]['below_expected']}/{len(ids)} below their controls", flush=True)
    return {
        "rows": rows,
        "summary": summary,
        "model": model.name,
        "max_len": args.bio_max_len or model.vocab.rules.max_len,
    }


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def fmt_mem(res: dict) -> str:
    rss = f"{res['peak_mb']:,.0f}"
    return rss if res.get("gpu_peak_mb") is None else f"{rss} / GPU {res['gpu_peak_mb']:,.0f}"


def fmt_p(p: float) -> str:
    if p != p:  # NaN
        return "-"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def mixgf_settings(args: argparse.Namespace) -> str:
    from mixgf.model import DEFAULT_TOKEN_BUDGET_CPU, DEFAULT_TOKEN_BUDGET_CUDA

    cuda = args.device.startswith("cuda")
    budget = args.token_budget or (DEFAULT_TOKEN_BUDGET_CUDA if cuda else DEFAULT_TOKEN_BUDGET_CPU)
    dtype = args.mixgf_dtype or ("bf16 where supported" if cuda else "fp32")
    return f"token budget {budget:,}, {dtype}"


def agree_text(ag: dict) -> str:
    txt = (
        f"shifts of (b) vs (a) over {ag['n']:,} (cell, gene) pairs: max |difference| {ag['max_abs']:.1e} "
        f"(largest shift {ag['max_shift']:.1e}, mean {ag['mean_shift']:.1e}), Spearman rho {ag['spearman']:.6f}"
    )
    if ag["nan_mismatch"]:
        txt += f"; {ag['nan_mismatch']} pairs scored by only one method"
    return txt


def section(info: dict, out: dict, args: argparse.Namespace, command: str) -> str:
    cuda = args.device.startswith("cuda")
    dev = info["gpu"] or f"{info['cpu']}, {info['cores']} cores, {args.threads} torch threads"
    lines = [
        DOCS_HEADING,
        "",
        f"{info['date']}; device `{args.device}`: {dev}; Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; load average {info['load_start']:.2f} at the start, {info['load_end']:.2f} at the end.",
        "",
    ]
    if {"delete-all", "list"} & set(out):
        lines += [
            "Parts 1 and 2 use a Geneformer V1-size model (6 layers, hidden 256, 4 heads, FFN 512, ReLU, 2,048 "
            "positions, vocabulary 25,426) with random weights saved by `save_pretrained` (speed does not depend on "
            "the weights) and real pbmc3k cells tokenized with the `geneformer-v1` vocabulary. Each method runs in "
            f"its own process, warmed up, best of {args.repeats} timed run(s); peak MB is the process's peak RSS "
            "above its RSS before the call" + (" and the peak GPU memory allocated" if cuda else "") + ". "
            f"(a) Geneformer way: `BertForMaskedLM` with all hidden states (MLM logits computed), fp32, "
            f"{args.gf_batch} sequences per padded batch"
            + (" (upstream default `forward_batch_size` 100 needs ~20 GB of MLM logits per batch)"
               if args.gf_batch < 100 else "")
            + ", copies built by Python list deletion, no Hugging Face `datasets` overhead. "
            f"(b) mixgf: `mgf.tl.perturb(..., test=\"none\", hidden_layer=-1)` end to end ({mixgf_settings(args)}). "
            "Both embed a cell as the mean of the last layer's hidden states (Geneformer `emb_layer=0`); "
            "shift = 1 - cos(original, perturbed).",
            "",
        ]  # fmt: skip
    if "delete-all" in out:
        p1 = out["delete-all"]
        cell, res = p1["cell"], p1["results"]
        n_genes, n_pert = res["gf"]["n_genes"], res["gf"]["n_perturb"]
        extrap = n_pert < n_genes
        rate = {m: n_pert / min(r["seconds"]) for m, r in res.items()}
        lines += [
            "### 1. Delete every gene of one full-length cell",
            "",
            f"Cell: pbmc3k `{cell['name']}` ({cell['cell_type']}; {cell['n_detected']:,} genes detected, "
            f"{cell['n_vocab']:,} of them in the V1 vocabulary; its top-ranked {cell['n_tokens']:,} kept, as "
            f"Geneformer truncates; {cell['n_candidates']} pbmc3k cells have >= {FULL_LEN:,} vocabulary genes)"
            + (f"; {cell['note']}" if cell["note"] else "")
            + f". A full delete-all is {n_genes:,} perturbed copies of {n_genes - 1:,} tokens. "
            + (
                f"Timed: the first {n_pert:,} deletions of the rank list (plus the original); seconds per full cell "
                f"are **extrapolated** as {n_genes:,} / (copies/s)."
                if extrap
                else "Timed: all of them (plus the original)."
            ),
            "",
            "| Method | copies | seconds | copies/s | s per full cell" + (" (extrapolated)" if extrap else "")
            + " | peak MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for m, r in res.items():
            best = min(r["seconds"])
            lines.append(
                f"| {SHORT[m]} | {n_pert:,} | {best:.2f} | {rate[m]:.2f} | {n_genes / rate[m]:,.0f} | {fmt_mem(r)} |"
            )
        lines += [
            "",
            f"Speed-up (b)/(a): **{rate['mixgf'] / rate['gf']:.1f}x**. Agreement: {agree_text(p1['agree'])}.",
            "",
        ]
    if "list" in out:
        p2 = out["list"]
        res, genes, cells = p2["results"], p2["genes"], p2["cells"]
        rep = f" (the {cells['source_cells']:,} cells repeated cyclically)" if cells["replicated"] else ""
        rate = {m: r["n_cells"] / min(r["seconds"]) for m, r in res.items()}
        lines += [
            f"### 2. A {len(genes['tokens'])}-gene list over many cells",
            "",
            f"{cells['n_cells']:,} pbmc3k cells{rep}, mean {cells['mean_len']:.0f} tokens (longest "
            f"{cells['max_len_seen']:,}); genes: the {len(genes['tokens'])} present in the most pbmc3k token lists "
            "(share of the 2,700 cells): "
            + ", ".join(f"{s} ({f:.0%})" for s, f in zip(genes["symbols"], genes["frac_cells"], strict=True))
            + ", each deleted alone. (a) embeds, per cell, the original and one copy per listed gene it expresses.",
            "",
            "| Method | cells | perturbed copies | seconds | cells/s | copies/s | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m, r in res.items():
            best = min(r["seconds"])
            lines.append(
                f"| {SHORT[m]} | {r['n_cells']:,} | {r['n_copies']:,} | {best:.2f} | {rate[m]:.2f} | "
                f"{r['n_copies'] / best:.2f} | {fmt_mem(r)} |"
            )
        lines += [
            "",
            f"Speed-up (b)/(a): **{rate['mixgf'] / rate['gf']:.1f}x**. Agreement: {agree_text(p2['agree'])}.",
            "",
        ]
    if "calibration" in out:
        p3 = out["calibration"]
        lines += [
            "### 3. Calibration of the matched-control test",
            "",
            f'`mgf.tl.perturb(adata, genes="all", max_cells={args.calib_cells}, model=M, inplace=False)` (test '
            f'"matched", 20 controls) on {p3["n_cells"]:,} pbmc3k cells (tutorial-QC cells, drawn with seed 0) '
            f"tokenized with `max_len={args.calib_max_len}`; M = the bundled default model (`{p3['model']}`) and a "
            "random-weight copy of it (`torch.manual_seed(0)`). KS: Kolmogorov-Smirnov test of the p-values against "
            "Uniform(0, 1) (p of the KS test, statistic D). BH: genes with `p_adj` < 0.05 (adjusted over all genes "
            "by the tool). Under the null the p-values are uniform: 5% below 0.05, 1% below 0.01. Rows "
            f'"random, listed": {p3.get("n_listed", 0)} genes drawn at random (seed 0) among those in the token '
            f"lists of at least {args.calib_list_min_cells} of the QC cells, given as a list (`genes=[...]`, each "
            "with its own 20 matched controls perturbed in its cells); a random gene is a random member of its "
            "rank group, so its p-values are uniform whatever the model.",
            "",
            "| model | genes | n genes | with p | KS p (D) | p < 0.05 | p < 0.01 | BH < 0.05 | seconds |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for r in p3["rows"]:
            lines.append(
                f"| {r['model']} | {r['subset']} | {r['genes']:,} | {r['with_p']:,} | {fmt_p(r['ks_p'])} "
                f"({r['ks_d']:.3f}) | {r['lt05']:.3f} | {r['lt01']:.3f} | {r['bh05']:,} | {r['seconds']:.1f} |"
            )
        lines.append("")
    if "biology" in out:
        p4 = out["biology"]
        lines += [
            "### 4. Known biology: deleting a cell type's markers",
            "",
            f"Default model `{p4['model']}`, tutorial-QC pbmc3k cells tokenized with `max_len={p4['max_len']}`. "
            f"Markers: top {N_MARKERS} per type by `scanpy.tl.rank_genes_groups` (Wilcoxon, type vs rest, "
            "log1p of counts normalised to 10,000) among the model's vocabulary. "
            f'`mgf.tl.perturb(adata, genes=markers, goal={{"key": "cell_type", "source": T, "target": T}}, '
            f"max_cells={args.bio_cells}, n_controls=20)`: shift = cos(perturbed, c_T) - cos(original, c_T) with "
            "c_T the type's centroid; negative = the cell moves away from its own type. expected = the shift "
            "predicted from the 20 expression-matched control genes; p_adj: BH over the type's markers. "
            "Note: the default model was pre-trained on these pbmc3k cells (90%).",
            "",
            "| cell type | marker | cells | shift_mean | expected | p_adj |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in p4["rows"]:
            lines.append(
                f"| {r['type']} | {r['gene']} | {r['n_cells']} | {r['shift_mean']:.2e} | {r['expected']:.2e} "
                f"| {fmt_p(r['p_adj'])} |"
            )
        lines += ["", "Per type: markers with a negative shift / below their expected shift / significantly below "
                  "(p_adj < 0.05):", ""]  # fmt: skip
        for s in p4["summary"]:
            k = s["n_markers"]
            lines.append(
                f"- {s['type']}: {s['negative']}/{k} negative, **{s['below_expected']}/{k}** below expected, "
                f"{s['sig_below']}/{k} significantly ({s['cells']} cells, {s['seconds']:.0f} s)."
            )
        lines.append("")
    lines += ["Command:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on CPU (default: all cores)")
    p.add_argument(
        "--n-perturb", type=int, default=None, help="part 1: deletions timed (default 64 on CPU, 0 = all on CUDA)"
    )
    p.add_argument("--list-cells", type=int, default=None, help="part 2: cells (default 48 on CPU, 10,000 on CUDA)")
    p.add_argument("--list-genes", type=int, default=10, help="part 2: genes in the list (default 10)")
    p.add_argument(
        "--gf-batch", type=int, default=None, help="Geneformer way: sequences per batch (default 8 CPU, 100 CUDA)"
    )
    p.add_argument("--token-budget", type=int, default=None, help="mixgf token budget (default: mixgf's)")
    p.add_argument("--mixgf-dtype", default=None, help="mixgf compute dtype (default: mixgf's; e.g. float32)")
    p.add_argument("--repeats", type=int, default=1, help="parts 1-2: timed runs per method, best reported")
    p.add_argument(
        "--calib-cells", type=int, default=None, help="part 3: max_cells (default 300 on CPU, 2,638 on CUDA)"
    )
    p.add_argument("--calib-max-len", type=int, default=64, help="part 3: tokens per cell (default 64)")
    p.add_argument("--calib-list-genes", type=int, default=500, help="part 3: genes drawn for the list design")
    p.add_argument("--calib-list-min-cells", type=int, default=20, help="part 3: drawn among genes in >= N cells")
    p.add_argument("--bio-cells", type=int, default=None, help="part 4: max_cells per type (default 20 CPU, 300 CUDA)")
    p.add_argument(
        "--bio-max-len", type=int, default=None, help="part 4: tokens per cell (default 512 CPU, model's 1,024 CUDA)"
    )
    p.add_argument(
        "--skip-parts", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)} (or their numbers 1-4)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the Markdown section")
    p.add_argument("--write-docs", action="store_true", help="also replace this section of --docs")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="docs file for --write-docs")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the temporary checkpoint and cells")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    cuda = args.device.startswith("cuda")
    if args.n_perturb is None:
        args.n_perturb = 0 if cuda else 64
    if args.list_cells is None:
        args.list_cells = 10_000 if cuda else 48
    if args.gf_batch is None:
        args.gf_batch = 100 if cuda else 8
    if args.calib_cells is None:
        args.calib_cells = 2_638 if cuda else 300
    if args.bio_cells is None:
        args.bio_cells = 300 if cuda else 20
    if args.bio_max_len is None and not cuda:
        args.bio_max_len = 512  # None on CUDA: the model's rule (1,024)
    skip = set()
    for s in (x.strip() for x in args.skip_parts.split(",") if x.strip()):
        if s.isdigit() and 1 <= int(s) <= len(PARTS):
            skip.add(PARTS[int(s) - 1])
        elif s in PARTS:
            skip.add(s)
        else:
            p.error(f"unknown part {s!r} in --skip-parts; choose from {', '.join(PARTS)} or 1-4")
    args.parts = [x for x in PARTS if x not in skip]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.workdir)
        return
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    command = "python benchmarks/perturb.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    info = embed_bench.machine(args)
    info["versions"] |= {p: version(p) for p in ("scanpy", "scipy")}
    print(f"# {info['date']} | {info['gpu'] or info['cpu']} | {info['cores']} cores | threads {args.threads} | "
          f"device {args.device} | torch {info['versions']['torch']} | load {info['load_start']:.2f} | "
          f"parts {', '.join(args.parts)}", flush=True)  # fmt: skip
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="mixgf_bench_perturb_", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        cfg = {
            "device": args.device,
            "threads": args.threads,
            "n_perturb": args.n_perturb,
            "gf_batch": args.gf_batch,
            "token_budget": args.token_budget,
            "mixgf_dtype": args.mixgf_dtype,
            "repeats": args.repeats,
        }
        (workdir / "config.json").write_text(json.dumps(cfg))
        if {"delete-all", "list"} & set(args.parts):
            embed_bench.make_checkpoint(SIZE, workdir / f"ckpt_{SIZE}")
        if "delete-all" in args.parts:
            cell = make_long_cell(workdir / "long_cell.h5ad")
            print(f"  delete-all: cell {cell['name']} ({cell['cell_type']}), {cell['n_tokens']:,} tokens", flush=True)
            out["delete-all"] = speed_part("delete-all", workdir) | {"cell": cell}
        if "list" in args.parts:
            cells = embed_bench.make_cells(args.list_cells, FULL_LEN, workdir / "list_cells.h5ad")
            genes = choose_list_genes(args.list_genes)
            (workdir / "list_genes.json").write_text(json.dumps(genes))
            print(f"  list: {cells['n_cells']:,} cells, genes {', '.join(genes['symbols'])}", flush=True)
            out["list"] = speed_part("list", workdir) | {"cells": cells, "genes": genes}
    if "calibration" in args.parts:
        out["calibration"] = calibration_part(args)
    if "biology" in args.parts:
        out["biology"] = biology_part(args)
    info["load_end"] = os.getloadavg()[0]
    text = section(info, out, args, command)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    if args.write_docs:
        write_docs_section(args.docs, DOCS_HEADING, text)


if __name__ == "__main__":
    main()

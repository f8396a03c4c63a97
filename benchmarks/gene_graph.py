"""Gene embeddings from co-expression graphs (MuSe-GNN) on 8 real datasets, against baselines.

Run from the repository root (reads the shared data folder):

    OMP_NUM_THREADS=1 python benchmarks/gene_graph.py --write-docs

Datasets (human unless said): pbmc3k (labelled cells), Kang 2018 control and IFN-beta-stimulated PBMCs (the harmony
subset, two datasets), the CellTypist immune sample, the Hao 2021 PBMC subset, Baron 2016 mouse pancreas (mouse), the
mouse olfactory bulb ST spots (mouse, spatial) and one her2st section (spatial). Mitochondrial genes are dropped and
every dataset gets a 1,000-gene CS-CORE graph (p < 0.005, positive co-expression; spatially variable genes for the
spatial sets). One model is trained on all 8 (groups: PBMC, pancreas, spatial brain, spatial breast) and scored by
``mgf.tl.evaluate_gene_embedding`` with PCA loadings, co-expression rows and the bundled model's ``tl.embed_genes``
(static and contextual) as baselines. ``benchmarks/gene_graph_pyg.py`` times the dense layers against torch_geometric.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from _common import write_docs_section

import mixgf as mgf

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"pbmc3k": "pbmc", "kang_ctrl": "pbmc", "kang_stim": "pbmc", "celltypist": "pbmc", "hao": "pbmc",
          "baron_mouse": "pancreas", "mob_spatial": "spatial_brain", "her2st": "spatial_breast"}  # fmt: skip


def _clean(a: ad.AnnData) -> ad.AnnData:
    a.var_names_make_unique()
    mt = a.var_names.str.upper().str.startswith("MT-")
    a = a[:, ~mt].copy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    return a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()


def load(data: Path, section: str) -> dict[str, ad.AnnData]:
    out = {}
    p = ad.read_h5ad(data / "pbmc3k_raw_labeled/pbmc3k_raw_labeled.h5ad")
    out["pbmc3k"] = p[p.obs["cell_type"].notna()].copy()
    k = ad.read_h5ad(data / "kang2018_pbmc_ifnb/kang2018_harmony_pbmc_stim.h5ad")
    out["kang_ctrl"] = k[k.obs["condition"].astype(str) == "ctrl"].copy()
    out["kang_stim"] = k[k.obs["condition"].astype(str) == "stim"].copy()
    out["celltypist"] = ad.read_h5ad(data / "celltypist_sample/celltypist_sample_559cells_raw.h5ad")
    out["hao"] = ad.read_h5ad(data / "hao2021_pbmc_subset/hao2021_pbmc_1336cells_raw.h5ad")
    out["baron_mouse"] = ad.read_h5ad(data / "baron2016_mouse_pancreas/baron2016_mouse1_pancreas.h5ad")
    out["mob_spatial"] = ad.read_h5ad(data / "mouse_olfactory_bulb_st/mob_stdeconvolve_262spots_raw.h5ad")
    h = ad.read_h5ad(data / "her2st/her2st_36sections_counts.h5ad")
    h = h[h.obs["section"].astype(str) == section]
    out["her2st"] = h[:, h.var["n_sections_listed"] == 36].copy()
    return {k: _clean(v) for k, v in out.items()}


def contextual(a: ad.AnnData, n_cells: int, seed: int) -> np.ndarray:
    """Contextual gene states of the bundled model, averaged over up to ``n_cells`` cells of the dataset."""
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(a.n_obs, min(n_cells, a.n_obs), replace=False))
    sub = a[cells].copy()
    mgf.pp.rank_tokenize(sub, max_len=512)
    mgf.tl.embed_genes(sub, mode="contextual")
    return sub.varm["mixgf_genes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--n-top-genes", type=int, default=1000)
    ap.add_argument("--her2st-section", default="B1")
    ap.add_argument("--context-cells", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mgf.settings.verbosity = "warning"
    t_start = time.perf_counter()
    sets = load(args.shared / "data", args.her2st_section)
    graph_rows = []
    for name, a in sets.items():
        spatial = GROUPS[name].startswith("spatial")
        t0 = time.perf_counter()
        b = mgf.tl.gene_graph(a, n_top_genes=args.n_top_genes, method="pearson", copy=True,
                              selection="spatial" if spatial else "hvg")  # fmt: skip
        t_pearson = time.perf_counter() - t0
        t0 = time.perf_counter()
        mgf.tl.gene_graph(a, n_top_genes=args.n_top_genes, selection="spatial" if spatial else "hvg")
        t_cs = time.perf_counter() - t0
        info = a.uns["mixgf_gene_graph"]
        graph_rows.append((name, info["species"], a.n_obs, info["n_edges"], info["mean_degree"], t_cs,
                           b.uns["mixgf_gene_graph"]["mean_degree"], t_pearson))  # fmt: skip
        print(graph_rows[-1], flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    model = mgf.tl.train_gene_embedding(sets, group_by=GROUPS, epochs=args.epochs, seed=args.seed, progress=False)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    print(f"trained {args.epochs} epochs in {t_train:.1f} s ({c_train:.1f} s CPU)", flush=True)
    embeddings = {"mixgf static": "mixgf_genes"}
    t0 = time.perf_counter()
    for a in sets.values():
        mgf.tl.embed_genes(a, mode="static")
        if args.context_cells > 0:
            a.varm["mixgf_contextual"] = contextual(a, args.context_cells, args.seed)
            embeddings["mixgf contextual"] = "mixgf_contextual"
    t_embed = time.perf_counter() - t0
    print(f"embed_genes (static + contextual over {args.context_cells} cells) in {t_embed:.1f} s", flush=True)
    t0 = time.perf_counter()
    table = mgf.tl.evaluate_gene_embedding(sets, model, embeddings=embeddings, groupby="cell_type", seed=args.seed)
    t_eval = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    summary = table.groupby(["metric", "method"])["value"].mean().unstack("method")
    order = [m for m in ["muse-gnn", "pca", "coexpression", "mixgf static", "mixgf contextual"] if m in summary]
    summary = summary[order]
    print(summary.round(3).to_string())
    table.to_csv(ROOT / "benchmarks" / "gene_graph_results.csv", index=False)
    if not args.write_docs:
        return
    lines = [
        "## Gene embeddings from co-expression graphs (`benchmarks/gene_graph.py`)",
        "",
        f"`OMP_NUM_THREADS={args.threads} python benchmarks/gene_graph.py --write-docs --threads {args.threads}`"
        f" — {args.threads} CPU thread(s) on a shared 2-core machine, torch {torch.__version__}, "
        f"{total / 60:.1f} min in all. {len(sets)} real datasets, {args.n_top_genes}-gene graphs, one model "
        f"trained {args.epochs} epochs (seed {args.seed}), 10 % of each graph's edges held out.",
        "",
        "### Graphs",
        "",
        "| dataset | species | cells / spots | CS-CORE edges | mean degree | CS-CORE s | Pearson mean degree | Pearson s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in graph_rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:,} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} |")
    lines += [
        "",
        f"Training on all {len(sets)} graphs: **{t_train:.0f} s** wall, {c_train:.0f} s CPU time of this process "
        f"({c_train / args.epochs / len(sets):.2f} s CPU per dataset step; the machine was shared, so wall time "
        "includes waiting for a core). `tl.embed_genes` baselines "
        f"(static, and contextual over {args.context_cells} cells per dataset with `max_len=512`): {t_embed:.0f} s. "
        f"Evaluation: {t_eval:.0f} s.",
        "",
        "### Metrics (mean over datasets / dataset pairs; higher is better)",
        "",
        "| metric | " + " | ".join(order) + " |",
        "|---|" + "---:|" * len(order),
    ]
    for metric, row in summary.iterrows():
        lines.append(f"| {metric} | " + " | ".join("–" if pd.isna(row[m]) else f"{row[m]:.3f}" for m in order) + " |")
    held = table[table["metric"] == "heldout_edge_auc"].pivot(index="dataset", columns="method", values="value")
    lines += ["", "Held-out edge AUC per dataset:", "", "| dataset | " + " | ".join(order) + " |",
              "|---|" + "---:|" * len(order)]  # fmt: skip
    for d, row in held.iterrows():
        lines.append(f"| {d} | " + " | ".join("–" if pd.isna(row.get(m)) else f"{row[m]:.3f}" for m in order) + " |")
    orth = table[table["metric"].str.startswith("ortholog")]
    orth = orth.assign(pair=orth["dataset"] + " → " + orth["other"])
    orth = orth.pivot_table(index=["pair", "metric"], columns="method", values="value")
    lines += ["", "Ortholog recall, human dataset → mouse dataset:", "", "| pair | metric | " + " | ".join(order) + " |",
              "|---|---|" + "---:|" * len(order)]  # fmt: skip
    for (pair, metric), row in orth.iterrows():
        vals = " | ".join("–" if pd.isna(row.get(m)) else f"{row[m]:.3f}" for m in order)
        lines.append(f"| {pair} | {metric.removeprefix('ortholog_')} | {vals} |")
    lines += ["", "Full per-dataset table: `benchmarks/gene_graph_results.csv`. See {doc}`gene_graph` for what the "
              "numbers mean.", ""]  # fmt: skip
    write_docs_section(args.out, lines[0], "\n".join(lines))


if __name__ == "__main__":
    main()

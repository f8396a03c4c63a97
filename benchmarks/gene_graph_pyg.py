"""Dense torch vs torch_geometric for the gene-graph encoder: CPU time of one forward+backward on real graphs.

torch_geometric is not a mixgf dependency; install it anywhere and point ``--pyg-path`` at it if it is not
importable (it is pure Python). Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/gene_graph_pyg.py --pyg-path DIR --write-docs

The graphs are the pbmc3k CS-CORE graphs (p < 0.005, positive) of the 500 and 1,000 most variable genes over the 2,638
labelled cells. Both sides run the same layers (MuSe-GNN's encoder: TransformerConv 4 x 32 + GraphNorm + Mish, shared
TransformerConv 2 x 32 + GraphNorm + Mish + TransformerConv 1 x 32, plus a residual TransformerConv). Timings are
process CPU time (so that other jobs on a shared machine do not count), medians of interleaved repeats, after a
warm-up; "step" adds the training step's dense decoder and binary cross-entropy over all gene pairs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from _common import write_docs_section

import mixgf as mgf

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pyg-path", default=None)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if args.pyg_path:
        sys.path.insert(0, args.pyg_path)
    import torch_geometric
    from torch_geometric.nn import GraphNorm, TransformerConv

    from mixgf.engine.genegraph import adjacency_from_pvalues, cscore, pearson_residuals, select_genes
    from mixgf.engine.genegraph._model import GeneGraphNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    mish = torch.nn.functional.mish
    a = mgf.datasets.pbmc3k()
    a = a[a.obs["cell_type"].notna()].copy()
    X = sp.csr_matrix(a.X)
    depth = np.asarray(X.sum(axis=1)).ravel()
    rows = []
    for n in (500, 1000):
        idx, _ = select_genes(X, n)
        adj = adjacency_from_pvalues(cscore(X[:, idx], depth), 0.005, positive_only=True).tocoo()
        x = torch.from_numpy(pearson_residuals(X, idx).T)
        mask = torch.from_numpy(adj.toarray() > 0)
        edge_index = torch.from_numpy(np.vstack([adj.col, adj.row]).astype(np.int64))  # message j -> i
        dense = GeneGraphNet([x.shape[1]], [0], 1)
        t1, n1 = TransformerConv(x.shape[1], 32, heads=4), GraphNorm(128)
        t2, n2, t3 = TransformerConv(128, 32, heads=2), GraphNorm(64), TransformerConv(64, 32)
        tr = TransformerConv(128, 32)

        def pyg(x=x, ei=edge_index, t1=t1, n1=n1, t2=t2, n2=n2, t3=t3, tr=tr):
            h = mish(n1(t1(x, ei)))
            return t3(mish(n2(t2(h, ei))), ei) + tr(h, ei)

        def den(dense=dense, x=x, mask=mask):
            return dense.encode(0, x, mask)

        def encoder(enc):
            enc().sum().backward()

        def step(enc, mask=mask):
            zn = torch.nn.functional.normalize(enc(), dim=-1)
            logits = 5.0 * zn @ zn.T - 2.0
            torch.nn.functional.binary_cross_entropy_with_logits(logits, mask.float()).backward()

        cases = {"dense encoder": lambda: encoder(den), "pyg encoder": lambda: encoder(pyg),
                 "dense step": lambda: step(den), "pyg step": lambda: step(pyg)}  # fmt: skip
        for f in cases.values():
            f()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.reps):
            for k, f in cases.items():
                t0 = time.process_time()
                f()
                times[k].append(time.process_time() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append((n, int(adj.nnz), med))
        print(n, adj.nnz, {k: round(v) for k, v in med.items()}, flush=True)
    if not args.write_docs:
        return
    lines = [
        "## Dense torch vs torch_geometric for gene graphs (`benchmarks/gene_graph_pyg.py`)",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/gene_graph_pyg.py --pyg-path DIR --write-docs` — torch "
        f"{torch.__version__}, torch_geometric {torch_geometric.__version__}, one thread, process CPU time (median of "
        f"{args.reps} interleaved repeats) of one forward+backward of MuSe-GNN's encoder on the pbmc3k CS-CORE graphs "
        '(2,638 cells); "step" adds the dense decoder and the BCE over all gene pairs of a training step.',
        "",
        "| genes | directed edges | dense encoder ms | torch_geometric encoder ms | dense step ms | torch_geometric step ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, e, m in rows:
        lines.append(f"| {n:,} | {e:,} | {m['dense encoder']:.0f} | {m['pyg encoder']:.0f} | {m['dense step']:.0f} | "
                     f"{m['pyg step']:.0f} |")  # fmt: skip
    lines.append("")
    write_docs_section(args.out, "## Dense torch vs torch_geometric for gene graphs", "\n".join(lines))


if __name__ == "__main__":
    main()

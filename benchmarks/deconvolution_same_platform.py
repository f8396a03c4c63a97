"""Why NNLS beats the NB mixture on a same-platform split: convergence, dispersion or genes? One run, real data.

Run from the repository root (the bundled pbmc3k cells; no shared data needed):

    python benchmarks/deconvolution_same_platform.py [--write-docs]

Prototypes from the even-numbered labelled pbmc3k cells, 30 pseudo-bulks of 300 of the odd-numbered cells with
Dirichlet(1) fractions (the split of ``tests/tl/test_deconvolve.py``). The NB mixture of
:func:`mixgf.engine.deconvolution.fit_deconvolution` (no gene sensitivity, no ambient term: the ``tl.deconvolve``
defaults) is refitted with one thing changed at a time:

- more L-BFGS iterations (convergence);
- the per-gene inverse dispersion held fixed instead of fitted (a diagnostic: the NB log-likelihood is evaluated with
  a constant ``phi``; large = close to Poisson);
- only the most expressed genes of the prototypes (the genes NNLS is dominated by).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from _common import write_docs_section

import mixgf as mgf
import mixgf.engine.deconvolution._nb as nb_engine
from mixgf.engine.deconvolution import fit_deconvolution, fraction_agreement, nnls

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Deconvolution: the same-platform split (`benchmarks/deconvolution_same_platform.py`)"


def split(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prototype means (genes x types), pseudo-bulks (samples x genes) and their true fractions."""
    a = mgf.datasets.pbmc3k()
    cells = a[a.obs["cell_type"].notna()].copy()
    ref = cells[::2].copy()
    mgf.tl.prototypes(ref, groupby="cell_type", min_cells=5)
    protos = mgf.get.prototypes(ref)
    held = cells[1::2]
    labels = held.obs["cell_type"].astype(str).to_numpy()
    X = sp.csr_matrix(held.X)
    rng = np.random.default_rng(seed)
    types = list(protos.types)
    rows, truth = [], []
    for f in rng.dirichlet(np.ones(len(types)), 30):
        k = rng.multinomial(300, f)
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == t), n) for t, n in zip(types, k) if n])
        rows.append(np.asarray(X[idx].sum(axis=0)).ravel())
        truth.append(pd.Series(labels[idx]).value_counts(normalize=True).reindex(types).fillna(0).to_numpy())
    pos = [protos.genes.index(g) for g in held.var_names]
    M, Y = protos.means[pos], np.vstack(rows).astype(np.float64)
    keep = M.max(axis=1) > 0
    return M[keep], Y[:, keep], np.vstack(truth)


def fit_fixed_phi(Y: np.ndarray, M: np.ndarray, phi: float) -> np.ndarray:
    """The NB mixture with every gene's inverse dispersion held at ``phi`` (a diagnostic, not a mixgf option)."""
    orig = nb_engine.nb_nll

    def fixed(y, mu, log_phi, *, lgy=None):
        return orig(y, mu, torch.full_like(log_phi, float(np.log(phi))), lgy=lgy)

    nb_engine.nb_nll = fixed
    try:
        return fit_deconvolution(Y, M, gene_sensitivity=False, ambient=False).fractions
    finally:
        nb_engine.nb_nll = orig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mgf.settings.verbosity = "error"
    t_all = time.perf_counter()
    M, Y, T = split()
    top = np.argsort(-M.mean(axis=1))
    rows = []

    def add(what: str, fn) -> None:
        t = time.perf_counter()
        p = fn()
        m = fraction_agreement(p, T)
        rows.append({"fit": what, "rmse": float(m["rmse_all"]), "r": float(m["r_all"]),
                     "seconds": time.perf_counter() - t})  # fmt: skip
        print(f"{what:55s} RMSE {m['rmse_all']:.3f}  r {m['r_all']:.3f}", flush=True)

    def nb(**kw):
        return lambda: fit_deconvolution(Y, M, gene_sensitivity=False, ambient=False, **kw).fractions

    add(f"NNLS, all {M.shape[0]:,} genes", lambda: nnls(Y, M))
    add("NB, fitted dispersion, 300 iterations (the default)", nb(max_iter=300))
    add("NB, fitted dispersion, 1,000 iterations", nb(max_iter=1000))
    add("NB, dispersion held at phi = 1e4 (close to Poisson)", lambda: fit_fixed_phi(Y, M, 1e4))
    add("NB, dispersion held at phi = 10", lambda: fit_fixed_phi(Y, M, 10.0))
    for n in (2000, 500):
        g = top[:n]
        add(f"NB, fitted dispersion, top {n:,} genes", lambda g=g: fit_deconvolution(
            Y[:, g], M[g], gene_sensitivity=False, ambient=False).fractions)  # fmt: skip
        add(f"NNLS, top {n:,} genes", lambda g=g: nnls(Y[:, g], M[g]))
    total = time.perf_counter() - t_all
    table = pd.DataFrame(rows)
    if args.write_docs:
        lines = [
            HEADING,
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d} on the 2-core CPU, torch threads {args.threads}, whole run "
            f"{total / 60:.1f} min. Command: `python benchmarks/deconvolution_same_platform.py --write-docs`. "
            "Prototypes from half of the labelled pbmc3k cells, 30 pseudo-bulks of 300 cells of the other half "
            "(Dirichlet fractions); one change to the NB fit at a time.",
            "",
            "| fit | RMSE | r | seconds |",
            "|---|---:|---:|---:|",
            *[f"| {r.fit} | {r.rmse:.3f} | {r.r:.3f} | {r.seconds:.1f} |" for r in table.itertuples()],
        ]
        write_docs_section(args.out, HEADING, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Expression from H&E histology on her2st: retrieval (mclSTExp-style) and prototype composition (CPNN-style) against
kNN / ridge on handcrafted features and a gene-mean floor.

Run from the repository root (reads the shared data folder):

    OMP_NUM_THREADS=1 python benchmarks/histology.py [--write-docs] [--loso]

Data: the 7 her2st sections whose H&E images fit their spot coordinates (A1, B4, C2-C6 of patients A, B and C;
A2 and J2 are not used, see the data manifest). Every section gets the summary features of
:func:`mixgf.tl.image_features` (patches of 1.5 spot diameters, 64 px). Evaluation is leave-one-**patient**-out
(train on two patients, test on every spot of the third); leave-one-section-out (the published mclSTExp protocol,
where sections of the test patient are in the training set) is a secondary, labelled row with ``--loso``.
Genes are chosen on the training sections only (the 250 most variable and 50 most expressed); Pearson r per gene
between predicted and measured ``log1p`` counts per 10,000 across the test spots, averaged over the 50 most
expressed (HEG) and the 250 most variable (HVG) training genes, and the fraction of all predicted genes with r > 0.3.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mixgf as mgf  # noqa: E402
from mixgf.tl._histology import _lognorm, select_genes  # noqa: E402

SECTIONS = ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]
COLS = ["HEG50 r", "HVG250 r", "frac r>0.3", "seconds"]
HEADING = "## Expression from histology (her2st)"


def load_sections(shared: Path, *, embed: bool = True) -> dict[str, ad.AnnData]:
    """The 7 usable sections with their image, scale and spot diameter, summary image features and (``embed``)
    the bundled default model's embedding of every spot (``obsm["X_mixgf"]``, for the spot encoder rows)."""
    d = shared / "data" / "her2st"
    full = ad.read_h5ad(d / "her2st_36sections_counts.h5ad")
    images = pd.read_csv(d / "images" / "IMAGES.tsv", sep="\t").set_index("section")
    meta = pd.read_csv(d / "her2st_sections.tsv", sep="\t").set_index("section")
    out = {}
    for s in SECTIONS:
        a = full[full.obs["section"] == s].copy()
        a.obs["patient"] = a.obs["patient"].astype(str)
        mgf.tl.image_features(
            a, image=d / images.loc[s, "file"], scale_factor=float(images.loc[s, "scale_spatial_to_image"]),
            spot_diameter=float(meta.loc[s, "spot_diameter_fullres_px"]), context=1.5, patch_px=64,
        )  # fmt: skip
        if embed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # genes the small default model never saw in training
                mgf.pp.rank_tokenize(a, duplicates="sum")  # symbols: gene_id is empty for 1,110 genes
                mgf.tl.embed(a)
        out[s] = a
    return out


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r per column (NaN where either side is constant)."""
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    den = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    constant = (np.ptp(pred, axis=0) == 0) | (np.ptp(truth, axis=0) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(constant | (den == 0), np.nan, (p * t).sum(axis=0) / den)


def _lognorm_of(a: ad.AnnData, genes: list[str]) -> np.ndarray:
    X = sp.csr_matrix(a.X, dtype=np.float64)
    tot = np.asarray(X.sum(axis=1)).ravel()
    return np.asarray(_lognorm(X[:, a.var_names.get_indexer(genes)], tot).todense())


def _zscore(F: np.ndarray) -> np.ndarray:
    sd = F.std(axis=0)
    return (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def baselines(train: list[ad.AnnData], test: ad.AnnData, genes: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Floor (training gene means scaled by spot totals), ridge and kNN on the summary features.

    Ridge and kNN run on features standardised over the pooled training spots ("pooled") and on features z-scored
    within every section ("per section", what the histology models do by default).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import KNeighborsRegressor

    Ytr = np.vstack([_lognorm_of(a, genes) for a in train])
    out = {}
    t = time.perf_counter()
    Xtr = sp.vstack([sp.csr_matrix(a.X, dtype=np.float64)[:, a.var_names.get_indexer(genes)] for a in train])
    rate = np.asarray(Xtr.sum(axis=0)).ravel() / max(Xtr.sum(), 1)
    # expected counts = spot total x training rate; per-spot normalisation makes it one value per gene
    out["floor (train means x spot total)"] = (np.tile(np.log1p(1e4 * rate), (test.n_obs, 1)), time.perf_counter() - t)
    for how in ("pooled", "per section"):
        if how == "pooled":
            Ftr = np.vstack([a.obsm["X_image"] for a in train]).astype(np.float64)
            m, sd = Ftr.mean(axis=0), np.where(Ftr.std(axis=0) > 0, Ftr.std(axis=0), 1.0)
            Ftr, Fte = (Ftr - m) / sd, (test.obsm["X_image"] - m) / sd
        else:
            Ftr = np.vstack([_zscore(a.obsm["X_image"].astype(np.float64)) for a in train])
            Fte = _zscore(test.obsm["X_image"].astype(np.float64))
        t = time.perf_counter()
        ridge = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(Ftr, Ytr)
        out[f"ridge, features {how}"] = (ridge.predict(Fte), time.perf_counter() - t)
        t = time.perf_counter()
        knn = KNeighborsRegressor(n_neighbors=50, weights="distance").fit(Ftr, Ytr)
        out[f"kNN k=50, features {how}"] = (knn.predict(Fte), time.perf_counter() - t)
    return out


MODELS = {
    "retrieval: CNN + features (mixgf default)": {"method": "retrieval", "use_patches": True},
    "retrieval: CNN only (mclSTExp-like)": {"method": "retrieval", "use_patches": True, "use_rep": None},
    "retrieval: features only": {"method": "retrieval", "use_patches": False},
    "retrieval: CNN + features, spot encoder + mixgf embedding": {
        "method": "retrieval",
        "use_patches": True,
        "spot_rep": "X_mixgf",
    },
    "retrieval: CNN + features, spot encoder on mixgf embedding only": {
        "method": "retrieval",
        "use_patches": True,
        "spot_rep": "X_mixgf",
        "spot_expression": False,
    },
    "prototypes: 8 clusters (CPNN-like)": {"method": "prototypes"},
}
CNN_MODELS = {k for k, v in MODELS.items() if v.get("use_patches") and v["method"] == "retrieval"}


def run_fold(protocol: str, train: list[ad.AnnData], tests: dict[str, ad.AnnData], args, rows: list,
             *, cnn: bool = True) -> None:  # fmt: skip
    """Train every model once on ``train``; score each test section."""
    A = ad.concat(train, join="inner")
    X = sp.csr_matrix(A.X, dtype=np.float64)
    genes, heg, hvg = select_genes(_lognorm(X, np.asarray(X.sum(axis=1)).ravel()), A.var_names)
    preds: dict[str, dict[str, tuple[np.ndarray, float]]] = {s: baselines(train, t, genes) for s, t in tests.items()}
    for label, kw in MODELS.items():
        if (
            (args.quick and "only" in label)
            or (not cnn and label in CNN_MODELS)
            or (args.no_mixgf and "mixgf" in label)
        ):
            continue
        t = time.perf_counter()
        model = mgf.tl.train_histology_model(train, genes=genes, seed=args.seed, **kw)
        t_train = time.perf_counter() - t
        for s, test in tests.items():
            t = time.perf_counter()
            mgf.tl.predict_expression(test, model, k=args.k)
            preds[s][label] = (test.obsm["mixgf_predicted"][genes].to_numpy(), t_train + time.perf_counter() - t)
            if kw["method"] == "retrieval" and label.endswith("(mixgf default)"):
                t = time.perf_counter()
                mgf.tl.predict_expression(test, model, k=50)
                preds[s]["retrieval: CNN + features, k=50"] = (test.obsm["mixgf_predicted"][genes].to_numpy(),
                                                               t_train + time.perf_counter() - t)  # fmt: skip
    pos = {g: i for i, g in enumerate(genes)}
    for s, test in tests.items():
        truth = _lognorm_of(test, genes)
        for label, (pred, secs) in preds[s].items():
            r = pearson_per_gene(pred, truth)
            ok = np.isfinite(r).any()
            rows.append({"protocol": protocol, "test": s, "method": label, "n_test": test.n_obs,
                         "HEG50 r": np.nanmean(r[[pos[g] for g in heg]]) if ok else np.nan,
                         "HVG250 r": np.nanmean(r[[pos[g] for g in hvg]]) if ok else np.nan,
                         "frac r>0.3": float(np.mean(np.nan_to_num(r, nan=0.0) > 0.3)), "seconds": secs})  # fmt: skip
            print(rows[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loso", action="store_true", help="also leave-one-section-out (secondary, leaky)")
    ap.add_argument("--quick", action="store_true", help="skip the ablation rows")
    ap.add_argument("--no-mixgf", action="store_true", help="skip the rows with mixgf spot embeddings (no embedding)")
    ap.add_argument("--no-lopo", action="store_true", help="skip leave-one-patient-out (e.g. to run --loso apart)")
    ap.add_argument("--rows-out", type=Path, help="also write every row to this CSV")
    ap.add_argument("--from-rows", type=Path, nargs="+", help="write the docs from saved CSVs; compute nothing")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    mgf.settings.verbosity = "warning"
    if args.from_rows:
        table = pd.concat([pd.read_csv(f) for f in args.from_rows], ignore_index=True)
        meta = pd.concat([pd.read_csv(f.with_suffix(".meta.csv")) for f in args.from_rows])
        args.loso = bool((table["protocol"] != "leave-one-patient-out").any())
        summary = table.groupby(["protocol", "method"], sort=False)[COLS].mean()
        print(summary.to_string())
        runs = ", ".join(f"{m / 60:.1f}" for m in meta["total_s"])
        cmd = (
            "two runs, `OMP_NUM_THREADS=1 python benchmarks/histology.py --rows-out lopo.csv` and "
            "`OMP_NUM_THREADS=1 python benchmarks/histology.py --no-lopo --loso --rows-out loso.csv` "
            f"({runs} min), then `python benchmarks/histology.py --from-rows lopo.csv loso.csv --write-docs`"
        )
        write_docs(args, table, summary, float(meta["features_s"].max()), cmd)
        return
    t0 = time.perf_counter()
    secs = load_sections(args.shared, embed=not args.no_mixgf)
    t_feat = time.perf_counter() - t0
    print(f"features (and mixgf embeddings) of {sum(a.n_obs for a in secs.values())} spots in {t_feat:.1f} s",
          flush=True)  # fmt: skip
    rows: list[dict] = []
    for patient in () if args.no_lopo else ("A", "B", "C"):
        tests = {s: secs[s] for s in SECTIONS if s.startswith(patient)}
        run_fold("leave-one-patient-out", [secs[s] for s in SECTIONS if s not in tests], tests, args, rows)
    if args.loso:
        for s in SECTIONS:
            others = [secs[o] for o in SECTIONS if o != s]
            run_fold("leave-one-section-out (leaky)", others, {s: secs[s]}, args, rows, cnn=False)
    table = pd.DataFrame(rows)
    total = time.perf_counter() - t0
    summary = table.groupby(["protocol", "method"], sort=False)[COLS].mean()
    if args.rows_out:
        table.to_csv(args.rows_out, index=False)
        pd.DataFrame({"features_s": [t_feat], "total_s": [total]}).to_csv(args.rows_out.with_suffix(".meta.csv"))
    print(table.to_string())
    print(summary.to_string())
    print(f"total {total:.0f} s")
    if args.write_docs:
        cmd = f"`OMP_NUM_THREADS=1 python benchmarks/histology.py --write-docs{' --loso' if args.loso else ''}` "
        write_docs(args, table, summary, t_feat, cmd + f"({total / 60:.1f} min)")


def _fmt(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(("—" if not np.isfinite(v) else f"{v:.3f}" if c != "seconds" else f"{v:.0f}")
                         if isinstance(v, float) else str(v))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(summary: pd.DataFrame) -> str:
    """Which models beat the strongest ridge baseline on held-out patients (mean over test sections), in words."""
    lopo = summary.loc["leave-one-patient-out"]
    base = lopo.loc["ridge, features per section"]
    lines = ["Against ridge on the per-section features (the strongest baseline), leave-one-patient-out:", ""]
    for method, row in lopo.iterrows():
        if not method.startswith(("retrieval", "prototypes")):
            continue
        beats = [c for c in ("HEG50 r", "HVG250 r", "frac r>0.3") if row[c] > base[c]]
        verdict = "beats it on " + ", ".join(beats) if beats else "does **not** beat it on any metric"
        lines.append(
            f"- {method}: {verdict} (HEG50 {row['HEG50 r']:.3f} vs {base['HEG50 r']:.3f}, "
            f"HVG250 {row['HVG250 r']:.3f} vs {base['HVG250 r']:.3f})."
        )
    return "\n".join(lines)


def write_docs(args, table: pd.DataFrame, summary: pd.DataFrame, t_feat: float, cmd: str) -> None:
    from _common import write_docs_section

    body = f"""{HEADING}

Command: {cmd}; seed {args.seed}, k = {args.k}, one thread each, on a 2-core CPU shared with other work
(the summary features and mixgf embeddings of all 7 sections took {t_feat:.0f} s). Data: her2st sections A1, B4, C2-C6
(patients A, B, C; the only sections whose H&E images fit their spots). **Leave-one-patient-out**: each model is
trained on two patients and tested on every section of the third; genes (250 HVG + 50 most expressed) are chosen
on the training sections. Pearson r per gene between predicted and measured `log1p` counts per 10,000 over the test
spots, averaged over the 50 most expressed (HEG50) and 250 most variable (HVG250) genes; "frac r>0.3" over all
predicted genes; seconds = training + prediction per fold. The floor predicts each spot's total times the training
gene rates, which after per-spot normalisation is the same value for every spot, so its r is undefined (—).
Rows "spot encoder + mixgf embedding" put mixgf's transformer in front of the retrieval spot encoder: every spot is
rank-tokenized and embedded by the bundled default model (`mgf.pp.rank_tokenize`, `mgf.tl.embed`; the model never
saw these spots), and `train_histology_model(..., spot_rep="X_mixgf")` gives that embedding to the spot encoder with
the expression ("only": `spot_expression=False`, the embedding alone); queries are still embedded from their image.

Mean over test sections:

{_fmt(summary.reset_index())}

{_verdict(summary)}

Every method x fold:

{_fmt(table[["protocol", "test", "method", "n_test", "HEG50 r", "HVG250 r", "frac r>0.3", "seconds"]])}
"""
    write_docs_section(args.out, HEADING, body)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

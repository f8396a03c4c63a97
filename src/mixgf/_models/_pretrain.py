"""`mixgf.pretrain`: pre-train a Mix-Geneformer encoder on tokenized AnnData of both species."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import TOKENS_KEY, tokens_obs_keys
from .._utils._files import input_stem
from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ..engine.train._pretrain import PretrainConfig
    from ..genes import Vocabulary
    from ..module._config import EncoderConfig
    from ..pp import TokenStore
    from ._mixgeneformer import MixGeneformer

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


class StoreRows:
    """Row source (:class:`mixgf.model.RowSource`) over some cells of a token store, read on demand.

    Parameters
    ----------
    store
        The token store.
    cells
        Positions of the cells to train on, in store order.
    """

    def __init__(self, store: TokenStore, cells: np.ndarray) -> None:
        self.store = store
        self.cells = np.asarray(cells, dtype=np.int64)
        self.lengths = store.lengths[self.cells]

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        """Tokens of cells ``idx`` (positions among ``cells``)."""
        return self.store.rows(self.cells[np.asarray(idx, dtype=np.int64)])


def _store_entry(entry: Any) -> tuple[TokenStore, dict[str, Any]] | None:
    """A token store corpus entry (a TokenStore, a store directory, or ``{"store": path, ...}``), opened; else None."""
    from ..pp import TokenStore

    if isinstance(entry, TokenStore):
        return entry, {}
    if isinstance(entry, Mapping):
        if "store" not in entry:
            return None
        spec = dict(entry)
        store = spec.pop("store")
        return (store if isinstance(store, TokenStore) else TokenStore.open(store)), spec
    if isinstance(entry, str | Path) and Path(entry).is_dir():  # .h5ad files are files; stores are directories
        return TokenStore.open(entry), {}
    return None


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
        msg = (
            "A corpus entry given as a dict needs 'path' (an .h5ad file), 'adata' (an AnnData) or 'store' (a token "
            "store directory written by mgf.pp.rank_tokenize(..., store=...))."
        )
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
    corpus: Sequence[AnnData | TokenStore | str | Path | Mapping[str, Any]],
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
    ``{"path": ... or "adata": ..., "gene_id_key": ..., "layer": ..., "name": ...}``, or a token store written by
    :func:`mixgf.pp.rank_tokenize` with ``store=...`` (its directory, a :class:`mixgf.pp.TokenStore`, or
    ``{"store": path, "name": ...}``). A seeded ``holdout_fraction`` of every dataset is split off first and never
    trained on; its cell names are saved with the model (``heldout.json``). Without a ``vocab``, one is built from
    the training cells with :func:`mixgf.pp.build_vocabulary`, so the gene medians come from the training corpus
    (human medians from Geneformer's 95M-cell corpus). Gene tokens no training cell had are recorded in the model's
    vocabulary (``Vocabulary.untrained``) and given the mean input embedding of the trained ones. Run under
    ``torchrun`` to train on several GPUs or nodes.

    AnnData entries are tokenized in memory. Token stores are streamed: only their per-cell lengths are held in
    memory (the batch schedule needs nothing else) and the rows of upcoming batches are read from disk by a
    :class:`torch.utils.data.DataLoader` (``train={"num_workers": ...}``, default 1 worker), so the corpus may be
    larger than memory. Each store's species comes from its parameters, so a collection of human and mouse stores
    trains the cross-species term as well. Training from stores gives the same weights as training from the same
    tokens in memory.

    Parameters
    ----------
    corpus
        The training datasets.
    out_dir
        Output folder: ``checkpoints/step-…`` (resumable) and ``model/`` (the final mixgf model directory).
    vocab
        A vocabulary (or preset / path); `None` builds one from the corpus, or, when the corpus holds token
        stores, uses the vocabulary they were tokenized with. Every store must have been tokenized with the
        training vocabulary (checked by its sha256).
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

    Examples
    --------
    A tiny run on a human and a mouse token store (a real run trains far longer and a larger model):

    >>> import tempfile
    >>> from pathlib import Path
    >>> import mixgf as mgf
    >>> tmp_dir = tempfile.TemporaryDirectory()
    >>> tmp = Path(tmp_dir.name)
    >>> human, mouse = mgf.datasets.pbmc3k()[:60].copy(), mgf.datasets.baron_mouse_pancreas()[:40].copy()
    >>> mgf.pp.rank_tokenize(human, gene_id_key="gene_id", store=tmp / "human.tokens.zarr")
    >>> mgf.pp.rank_tokenize(mouse, duplicates="sum", store=tmp / "mouse.tokens.zarr")
    >>> model = mgf.pretrain(
    ...     [tmp / "human.tokens.zarr", {"store": tmp / "mouse.tokens.zarr", "name": "pancreas"}],
    ...     out_dir=tmp / "run",
    ...     architecture={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    ...     train={
    ...         "steps": 2,
    ...         "token_budget": 2048,
    ...         "max_cells": 8,
    ...         "train_max_len": 64,
    ...         "warmup_steps": 1,
    ...         "xspec_weight": 0.5,
    ...         "num_workers": 0,
    ...     },
    ... )
    >>> model.metadata["cells_per_species"]
    {'human': 60, 'mouse': 40}
    >>> tmp_dir.cleanup()
    """
    import torch

    from ..engine._device import resolve_device
    from ..engine.train._pretrain import ConcatRows, PaddedRows, PretrainConfig, TokenCorpus, pretrain_encoder
    from ..module._config import EncoderConfig
    from ..pp import rank_tokenize
    from ._mixgeneformer import MixGeneformer

    out = Path(out_dir)
    t0 = logg.info(f"pre-training {name!r} on {len(corpus)} dataset(s)")
    # each entry: ("adata", AnnData of the training cells, spec) or ("store", TokenStore, training cells, spec)
    entries: list[tuple] = []
    heldout = {}
    for i, entry in enumerate(corpus):
        opened = _store_entry(entry)
        if opened is not None:
            store, spec = opened
            label = spec.get("name") or input_stem(store.path)
            hold = split_holdout(store.n_cells, holdout_fraction, holdout_seed + i)
            heldout[label] = store.obs_names[hold].tolist()
            entries.append(("store", store, np.flatnonzero(~hold & (store.lengths > 0)), {**spec, "name": label}))
            continue
        adata, spec = _read(entry)
        label = spec.get("name") or (Path(spec["path"]).stem if "path" in spec else f"dataset_{i}")
        hold = split_holdout(adata.n_obs, holdout_fraction, holdout_seed + i)
        heldout[label] = adata.obs_names[hold].tolist()
        entries.append(("adata", adata[~hold].copy() if hold.any() else adata, {**spec, "name": label}))
    vocab = _corpus_vocab(vocab, entries, name=name, max_len=max_len)

    parts, species, per_dataset = [], [], []
    sp_code = {"human": 0, "mouse": 1}
    for kind, *rest in entries:
        if kind == "store":  # rows stay on disk; only the lengths of the training cells are read
            store, cells, spec = rest
            part = StoreRows(store, cells)
            sp_name = store.params["species"]
        else:
            adata, spec = rest
            tok = rank_tokenize(
                adata, vocab=vocab, gene_id_key=spec.get("gene_id_key"), layer=spec.get("layer"),
                duplicates=spec.get("duplicates", "sum"), copy=True,
            )  # fmt: skip
            sp_name = tok.uns[TOKENS_KEY]["params"]["species"]
            n = tok.obs[tokens_obs_keys(TOKENS_KEY)[0]].to_numpy()
            keep = n > 0
            part = PaddedRows(tok.obsm[TOKENS_KEY][keep], n[keep])
            del tok
        parts.append(part)
        species.append(np.full(len(part.lengths), sp_code[sp_name], dtype=np.int8))
        per_dataset.append({"name": spec["name"], "species": sp_name, "cells": len(part.lengths)})
    to_other = np.full(len(vocab), -1, dtype=np.int64)
    hmap, mmap = vocab.ortholog_token_map("human"), vocab.ortholog_token_map("mouse")
    is_m = vocab.gene_species == "mouse"
    is_h = vocab.gene_species == "human"
    to_other[is_m] = hmap[is_m]
    to_other[is_h] = mmap[is_h]
    rows = ConcatRows(parts)
    tc = TokenCorpus(
        tokens=rows,
        lengths=rows.lengths,
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
    longest = int(rows.lengths.max(initial=0))
    if tcfg.train_max_len:
        longest = min(longest, tcfg.train_max_len)
    if longest > cfg.max_position_embeddings:
        msg = (
            f"the corpus has cells of {longest} tokens, more than the model's max_position_embeddings "
            f"({cfg.max_position_embeddings}); set train={{'train_max_len': {cfg.max_position_embeddings}}} or a "
            "larger architecture['max_position_embeddings']."
        )
        raise ValueError(msg)
    dev = resolve_device(device)
    torch.manual_seed(tcfg.seed)
    from ..module._encoder import BertEncoderModel

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
    vocab = dataclasses.replace(vocab, untrained=_untrained_tokens(rows, vocab, to_other))
    _average_untrained(encoder, vocab)
    model = MixGeneformer(encoder, vocab, name, meta)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        model.save(out / "model", overwrite=True, extra_files={"heldout.json": heldout_bytes})
        hist.to_csv(out / "history.csv", index=False)
    logg.info(f"    saved {out / 'model'}", start=t0)
    return model


def _corpus_vocab(vocab, entries: list[tuple], *, name: str, max_len: int | None) -> Vocabulary:
    """The vocabulary to train with: given, the token stores', or built from the AnnData entries."""
    from ..genes import Vocabulary
    from ..pp import build_vocabulary

    stores = [e[1] for e in entries if e[0] == "store"]
    if vocab is None and stores:  # stores were tokenized already: their vocabulary is the one
        first = stores[0].params
        try:
            vocab = Vocabulary.load(first["vocab"])
        except Exception as e:
            msg = (
                f"token store {str(stores[0].path)!r} was tokenized with vocabulary {first['vocab']!r}, which "
                "cannot be loaded by that name; pass vocab=<that vocabulary> to mgf.pretrain."
            )
            raise ValueError(msg) from e
    elif vocab is None:
        from dataclasses import replace

        from ..genes import MIX_GENEFORMER_RULES

        rules = MIX_GENEFORMER_RULES if max_len is None else replace(MIX_GENEFORMER_RULES, max_len=int(max_len))
        adatas = [e[1] for e in entries]
        keys = [e[2].get("gene_id_key") for e in entries]
        return build_vocabulary(adatas, gene_id_keys=keys, name=f"{name}-vocab", rules=rules)
    vocab = Vocabulary.load(vocab)
    for store in stores:
        if store.params.get("vocab_sha256") != vocab.sha256:
            msg = (
                f"token store {str(store.path)!r} was tokenized with vocabulary {store.params.get('vocab')!r} "
                f"(sha256 {str(store.params.get('vocab_sha256'))[:12]}…), not with {vocab.name!r} "
                f"(sha256 {vocab.sha256[:12]}…). Tokenize it again with the training vocabulary, or train with "
                "the store's."
            )
            raise ValueError(msg)
    return vocab


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


def _average_untrained(encoder: Any, vocab: Vocabulary) -> None:
    """Give the untrained gene tokens the mean input embedding of the trained ones, not their random start.

    Such a gene in a user's cell then acts as an average gene (what ``tl.embed`` / ``tl.perturb`` warn about); the
    tokens' MLM output bias stays as trained (never a target, so pushed down).
    """
    import torch

    if vocab.untrained is None or not vocab.untrained.size:
        return
    w = encoder.embeddings.word.weight
    with torch.no_grad():
        trained = torch.as_tensor(np.flatnonzero(vocab.trained & vocab.is_gene), device=w.device)
        w[torch.as_tensor(vocab.untrained.astype(np.int64), device=w.device)] = w[trained].mean(dim=0)


def _untrained_tokens(rows: Any, vocab: Vocabulary, to_other: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Gene tokens in no training cell's token list nor in its ortholog-projected copy (their embeddings are untrained)."""
    seen = np.zeros(len(vocab), dtype=bool)
    n = len(rows.lengths)
    for a in range(0, n, chunk):
        idx = np.arange(a, min(a + chunk, n))
        for i, r in zip(idx, rows.rows(idx)):
            seen[np.asarray(r[: rows.lengths[i]], dtype=np.int64)] = True
    projected = to_other[np.flatnonzero(seen)]
    seen[projected[projected >= 0]] = True
    return np.flatnonzero(vocab.is_gene & ~seen)

"""`mixgf.tl.train_classifier` and `mixgf.tl.classify`: cell-type classification, also across species."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import LABEL_KEY, TOKENS_KEY
from .._settings import settings
from .._utils._docs import doc_params
from .._version import __version__
from ._utils import check_not_empty, get_tokens, prepare_target, provenance, resolve_model, split_layer

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from .._models._classifier import CellClassifier
    from .._models._mixgeneformer import MixGeneformer


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: mean |accuracy − confidence| over equal-width confidence bins, weighted by size."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _labels(adata: AnnData, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    if labels_key not in adata.obs:
        msg = f"labels_key={labels_key!r} is not a column of adata.obs; columns: {adata.obs.columns.tolist()}."
        raise KeyError(msg)
    raw = adata.obs[labels_key]
    ok = raw.notna().to_numpy()
    return raw.astype("string").to_numpy(dtype=object), ok


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(1, round(len(idx) * fraction)) if len(idx) >= 2 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@doc_params("doc_tokens_key", "doc_counts", "doc_device")
def train_classifier(
    adata: AnnData,
    labels_key: str,
    *,
    model: MixGeneformer | str | Path | None = None,
    tokens_key: str = TOKENS_KEY,
    finetune: Literal["all", "frozen"] | int = "all",
    hidden_layer: int = -1,
    layer: str | None = None,
    use_raw: bool = False,
    val_fraction: float = 0.15,
    epochs: int = 10,
    patience: int = 2,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    class_weights: Literal["balanced", "none"] = "balanced",
    max_len: int | None = None,
    token_budget: int = 16_384,
    seed: int = 0,
    device: str | None = None,
) -> CellClassifier:
    """Train a cell classifier: a head on the pooled embedding, with the encoder fine-tuned or frozen.

    A stratified ``val_fraction`` of the labelled cells is held out for early stopping (on the validation loss)
    and for temperature scaling, which calibrates the probabilities; the fitted temperature and the expected
    calibration error before and after are stored with the classifier.

    Parameters
    ----------
    adata
        Labelled cells (tokenized with the model's vocabulary, or tokenized on the fly).
    labels_key
        ``obs`` column with the labels; cells with missing labels are left out (and reported).
    model
        The encoder to start from (`None`: the bundled default model).
    {doc_tokens_key}
    finetune
        ``"all"`` trains every block and the embeddings, an integer ``k`` the top ``k`` blocks, ``"frozen"`` only
        the head.
    hidden_layer
        Hidden state that is pooled (``-1`` = last block); stored as the classifier's ``layer``. Formerly
        ``layer=``: an integer ``layer`` still works, with a FutureWarning, until the next release.
    {doc_counts}
    val_fraction
        Fraction of each class used for validation.
    epochs, patience
        Maximum epochs and early-stopping patience.
    lr, head_lr
        Learning rates of the encoder and the head.
    class_weights
        ``"balanced"`` weights the loss by inverse class frequency.
    max_len
        Use each cell's top ``max_len`` tokens only (faster; `None` = all).
    token_budget
        Tokens per batch.
    seed
        Seed of the split, batch order and initialisation.
    {doc_device}

    Returns
    -------
    mixgf.CellClassifier
        The classifier (see :func:`classify`, :meth:`mixgf.CellClassifier.save`).

    Examples
    --------
    A head on the frozen encoder, trained on each cell's top 64 tokens (fast; ``finetune="all"`` and the full
    sequences give better classifiers):

    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> clf = mgf.tl.train_classifier(adata, "cell_type", finetune="frozen", max_len=64)
    >>> clf.classes[:3]
    ['B cells', 'CD14+ Monocytes', 'CD4 T cells']
    >>> clf.metadata["n_train"] + clf.metadata["n_val"] == int(adata.obs["cell_type"].notna().sum())
    True
    """
    from .._models._classifier import CellClassifier
    from ..engine._device import resolve_device
    from ..engine.train._classifier import FinetuneConfig, finetune_classifier, fit_temperature, predict_logits

    counts_layer, hidden_layer = split_layer(layer, hidden_layer if hidden_layer != -1 else None, default=-1)
    check_not_empty(adata, "train on")
    mdl = resolve_model(model)
    labels, ok = _labels(adata, labels_key)
    if not ok.all():
        logg.warn(f"{int((~ok).sum()):,} cells have no {labels_key!r} label and are left out of training.")
    tokens, lengths = get_tokens(adata, mdl, tokens_key, layer=counts_layer, use_raw=use_raw)
    species = adata.uns[tokens_key]["params"]["species"]
    ok &= lengths > 0
    y_names = labels[ok]
    classes, counts = np.unique(y_names, return_counts=True)
    small = classes[counts < 2]
    if len(small):
        msg = (
            f"classes with fewer than 2 labelled cells cannot be split into training and validation: "
            f"{small.tolist()}. Merge them into a broader label or remove those cells."
        )
        raise ValueError(msg)
    if len(classes) < 2:
        msg = f"adata.obs[{labels_key!r}] has only one class ({classes.tolist()}); a classifier needs two or more."
        raise ValueError(msg)
    y = np.searchsorted(classes, y_names)
    cells = np.flatnonzero(ok)
    tr, va = _stratified_split(y, val_fraction, seed)
    train_layers = {"all": -1, "frozen": 0}.get(finetune, finetune)
    if not isinstance(train_layers, int) or isinstance(train_layers, bool):
        msg = f"finetune must be 'all', 'frozen' or a number of top blocks, got {finetune!r}."
        raise ValueError(msg)
    cfg = FinetuneConfig(
        train_layers=train_layers, layer=hidden_layer, epochs=epochs, patience=patience, lr=lr, head_lr=head_lr,
        class_weights=class_weights, max_len=max_len, token_budget=token_budget, seed=seed,
    )  # fmt: skip
    dev = resolve_device(device)
    t0 = logg.info(
        f"training a {len(classes)}-class classifier on {len(tr):,} cells ({len(va):,} for validation), "
        f"finetune={finetune!r}, on {dev}"
    )
    tok = tokens[cells]
    lens = lengths[cells]
    enc, head, history = finetune_classifier(
        mdl.encoder, tok, lens, y, tr, va, len(classes), special_ids=mdl.vocab.special_ids, config=cfg, device=dev,
        progress=settings.progress_bar,
    )  # fmt: skip
    lens_c = np.minimum(lens, max_len or tok.shape[1])
    val_logits = predict_logits(enc, head, tok[va], lens_c[va], special_ids=mdl.vocab.special_ids, layer=hidden_layer,
                                device=dev, token_budget=token_budget)  # fmt: skip
    temperature = fit_temperature(val_logits, y[va])
    p_raw, p_cal = _softmax(val_logits), _softmax(val_logits / temperature)
    from sklearn.metrics import f1_score

    pred = val_logits.argmax(1)
    meta = {
        "labels_key": labels_key,
        "n_train": len(tr),
        "n_val": len(va),
        "class_counts": {str(c): int(n) for c, n in zip(classes, counts)},
        "finetune": str(finetune),
        "config": cfg.to_dict(),
        "history": history,
        "val_accuracy": float((pred == y[va]).mean()),
        "val_macro_f1": float(f1_score(y[va], pred, average="macro")),
        "val_nll_before": _nll(p_raw, y[va]),
        "val_nll_after": _nll(p_cal, y[va]),
        "val_ece_before": expected_calibration_error(p_raw, y[va]),
        "val_ece_after": expected_calibration_error(p_cal, y[va]),
        "base_model": mdl.name,
        "base_weights_sha256": mdl.weights_sha256 or "",
        "vocab": mdl.vocab.name,
        "vocab_sha256": mdl.vocab.sha256,
        "device": str(dev),
        "mixgf_version": __version__,
    }
    from .._models._mixgeneformer import MixGeneformer

    tuned = MixGeneformer(enc, mdl.vocab, f"{mdl.name}+{labels_key}", {"trained": True, **meta})
    clf = CellClassifier(tuned, head, [str(c) for c in classes], temperature, species, hidden_layer, meta)
    logg.info(
        f"    validation accuracy {meta['val_accuracy']:.3f}, macro-F1 {meta['val_macro_f1']:.3f}, "
        f"ECE {meta['val_ece_before']:.3f} -> {meta['val_ece_after']:.3f} (T={temperature:.2f})",
        start=t0,
    )
    return clf


@doc_params("doc_tokens_key", "doc_counts", "doc_device", "doc_copy")
def classify(
    adata: AnnData,
    *,
    model: CellClassifier | str | Path,
    tokens_key: str = TOKENS_KEY,
    layer: str | None = None,
    use_raw: bool = False,
    device: str | None = None,
    key_added: str = LABEL_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Predict labels with a :class:`mixgf.CellClassifier`, also for cells of the other species.

    Cells of the species the classifier was trained on are classified directly. Cells of the other species are
    first projected onto the one-to-one orthologs of the classifier's species (genes without one are dropped;
    the rank order is kept), which the shared vocabulary makes possible.

    Parameters
    ----------
    adata
        Cells (tokenized with the classifier's vocabulary, or tokenized on the fly).
    model
        The classifier or its directory.
    {doc_tokens_key}
    {doc_counts}
    {doc_device}
    key_added
        Where to store the results (see Returns).
    {doc_copy}

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.obs[key_added]`` : categorical
        Predicted label (NaN for cells without tokens).
    ``adata.obs[key_added + "_score"]`` : float
        Calibrated probability of the predicted label.
    ``adata.obsm[key_added + "_proba"]`` : `numpy.ndarray` (cells × classes)
        Calibrated probabilities; columns in ``adata.uns[key_added]["params"]["classes"]``.
    ``adata.uns[key_added]["params"]`` : dict
        Classes, temperature, model, species of the data and of the classifier, projection coverage.

    Examples
    --------
    Train on 200 human PBMCs, classify 100 others:

    >>> import mixgf as mgf
    >>> pbmc = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(pbmc, gene_id_key="gene_id")
    >>> clf = mgf.tl.train_classifier(pbmc[:200].copy(), "cell_type", finetune="frozen", max_len=64)
    >>> adata = pbmc[200:].copy()
    >>> mgf.tl.classify(adata, model=clf)
    >>> adata.obsm["mixgf_label_proba"].shape
    (100, 7)
    >>> bool(adata.obs["mixgf_label"].isin(clf.classes).all())
    True

    Mouse cells are projected onto their human orthologs first:

    >>> mouse = mgf.datasets.baron_mouse_pancreas()[:50].copy()
    >>> mgf.tl.classify(mouse, model=clf)
    >>> mouse.uns["mixgf_label"]["params"]["cross_species"]
    True
    """
    from .._models._classifier import CellClassifier
    from ..engine._device import resolve_device

    check_not_empty(adata, "classify")
    clf = model if isinstance(model, CellClassifier) else CellClassifier.load(model)
    dev = resolve_device(device)
    target = prepare_target(adata, copy=copy)
    tokens, lengths = get_tokens(target, clf.model, tokens_key, layer=layer, use_raw=use_raw)
    data_species = target.uns[tokens_key]["params"]["species"]
    kept = 1.0
    if data_species != clf.species:
        tokens, lengths, kept = _project(tokens, lengths, clf.model.vocab.ortholog_token_map(clf.species))
        logg.info(
            f"projecting {data_species} cells onto {clf.species} orthologs for a classifier trained on {clf.species} "
            f"cells ({kept:.0%} of the tokens kept on average)"
        )
    proba = np.full((target.n_obs, len(clf.classes)), np.nan, dtype=np.float32)
    ok = lengths > 0
    if ok.any():
        proba[ok] = clf.predict_proba(tokens[ok], lengths[ok], device=str(dev))
    if (~ok).any():
        logg.warn(f"{int((~ok).sum())} cells have no token to classify; their label is NaN.")
    pred = np.full(target.n_obs, None, dtype=object)
    pred[ok] = np.asarray(clf.classes, dtype=object)[np.nanargmax(proba[ok], axis=1)]
    target.obs[key_added] = pd.Categorical(pred, categories=clf.classes)
    score = np.full(target.n_obs, np.nan, dtype=np.float32)
    score[ok] = proba[ok].max(axis=1)
    target.obs[f"{key_added}_score"] = score
    target.obsm[f"{key_added}_proba"] = proba
    target.uns[key_added] = {
        "params": provenance(
            clf.model,
            classes=list(clf.classes),
            temperature=clf.temperature,
            labels_key=clf.metadata.get("labels_key", ""),
            classifier_species=clf.species,
            data_species=data_species,
            cross_species=data_species != clf.species,
            mean_fraction_of_tokens_kept=kept,
            tokens_key=tokens_key,
            hidden_layer=clf.layer,
            pooling="mean",
            device=dev,
            dtype="float32",
        )
    }
    logg.info(f"    added {key_added!r}, {key_added + '_score'!r} (adata.obs), {key_added + '_proba'!r} (adata.obsm)")
    return target if copy else None


def _project(tokens: np.ndarray, lengths: np.ndarray, omap: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    out = np.zeros_like(tokens)
    new = np.zeros_like(lengths)
    frac = []
    for i in range(len(lengths)):
        p = omap[tokens[i, : lengths[i]].astype(np.int64)]
        p = p[p >= 0]
        out[i, : len(p)] = p
        new[i] = len(p)
        if lengths[i]:
            frac.append(len(p) / lengths[i])
    return out, new, float(np.mean(frac)) if frac else 0.0

"""Plots of :func:`mixgf.tl.classify` results: confusion matrix and per-class scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._keys import LABEL_KEY
from .._utils._docs import doc_params
from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _check(adata: AnnData, key: str) -> None:
    if key not in adata.obs or key not in adata.uns:
        msg = f"adata.obs[{key!r}] not found; run `mgf.tl.classify(adata, model=..., key_added={key!r})` first."
        raise KeyError(msg)


@doc_params("doc_show", "doc_plot_returns")
def confusion_matrix(
    adata: AnnData,
    true_key: str,
    *,
    key: str = LABEL_KEY,
    normalize: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heat map of true labels (rows) against predicted labels (columns).

    Parameters
    ----------
    adata
        With predictions from :func:`mixgf.tl.classify`.
    true_key
        ``obs`` column with the true labels (their names may differ from the classifier's classes, e.g. across
        species: every true label gets a row, every class a column).
    key
        ``key_added`` of :func:`mixgf.tl.classify`.
    normalize
        Show the fraction of each true label's cells (rows sum to 1) instead of counts.
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> clf = mgf.tl.train_classifier(adata[:200].copy(), "cell_type", finetune="frozen", max_len=64)
    >>> mgf.tl.classify(adata, model=clf)
    >>> ax = mgf.pl.confusion_matrix(adata, "cell_type", show=False)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('predicted (mixgf_label)', 'cell_type')
    """
    import matplotlib.pyplot as plt

    _check(adata, key)
    if true_key not in adata.obs:
        msg = f"true_key={true_key!r} is not a column of adata.obs."
        raise KeyError(msg)
    classes = list(adata.uns[key]["params"]["classes"])
    ok = adata.obs[true_key].notna() & adata.obs[key].notna()
    tab = pd.crosstab(adata.obs.loc[ok, true_key].astype(str), adata.obs.loc[ok, key].astype(str))
    tab = tab.reindex(columns=classes, fill_value=0)
    values = tab.div(tab.sum(axis=1).replace(0, 1), axis=0) if normalize else tab
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.5 * len(classes) + 2.5, 0.45 * len(tab) + 2), layout="constrained")
    else:
        fig = ax.figure
    im = ax.imshow(values.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(tab)), tab.index)
    ax.set_xlabel(f"predicted ({key})")
    ax.set_ylabel(true_key)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values.iat[i, j]
            if v:
                txt = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.5 * values.max().max() else "black",
                )
    fig.colorbar(im, ax=ax, label="fraction of cells" if normalize else "cells")
    return finish(fig, ax, show=show, return_fig=return_fig)


@doc_params("doc_show", "doc_plot_returns")
def classify_scores(
    adata: AnnData,
    *,
    key: str = LABEL_KEY,
    groupby: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Box plots of the calibrated score of the predicted label, per predicted class (or per ``groupby`` group).

    Parameters
    ----------
    adata
        With predictions from :func:`mixgf.tl.classify`.
    key
        ``key_added`` of :func:`mixgf.tl.classify`.
    groupby
        ``obs`` column to group by instead of the predicted label.
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    >>> clf = mgf.tl.train_classifier(adata[:200].copy(), "cell_type", finetune="frozen", max_len=64)
    >>> mgf.tl.classify(adata, model=clf)
    >>> ax = mgf.pl.classify_scores(adata, groupby="cell_type", show=False)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('cell_type', 'score of the predicted label')
    """
    import matplotlib.pyplot as plt

    _check(adata, key)
    by = key if groupby is None else groupby
    if by not in adata.obs:
        msg = f"groupby={groupby!r} is not a column of adata.obs."
        raise KeyError(msg)
    score = adata.obs[f"{key}_score"].to_numpy()
    groups = adata.obs[by].astype("string").fillna("<NA>").to_numpy(dtype=object)
    finite = np.isfinite(score)
    names = [g for g in pd.unique(groups[finite]) if g != "<NA>"]
    data = [score[(groups == g) & finite] for g in names]
    if ax is None:
        longest = max((len(str(n)) for n in names), default=0)  # rotated tick labels take height, not width
        fig, ax = plt.subplots(figsize=(0.45 * len(names) + 2.5, 3.0 + 0.08 * longest), layout="constrained")
    else:
        fig = ax.figure
    ax.boxplot(data, tick_labels=names, showfliers=False)
    for i, d in enumerate(data, start=1):
        ax.scatter(np.full(len(d), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(d)), d, s=3, alpha=0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("score of the predicted label")
    ax.set_xlabel(by)
    ax.tick_params(axis="x", rotation=90)
    return finish(fig, ax, show=show, return_fig=return_fig)

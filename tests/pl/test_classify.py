from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import mixgf as mgf


@pytest.fixture(scope="module")
def predicted(pbmc_full):
    a = pbmc_full[:300].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=128)
    clf = mgf.tl.train_classifier(a[:200].copy(), "cell_type", finetune="frozen", epochs=2)
    b = a[200:].copy()
    mgf.tl.classify(b, model=clf)
    yield b
    plt.close("all")


def test_confusion_matrix(predicted):
    ax = mgf.pl.confusion_matrix(predicted, "cell_type", show=False)
    assert isinstance(ax, Axes)
    img = ax.images[0].get_array()
    rows = img.sum(axis=1)
    np.testing.assert_allclose(rows[rows > 0], 1, atol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == predicted.uns["mixgf_label"]["params"]["classes"]
    counts = mgf.pl.confusion_matrix(predicted, "cell_type", normalize=False, show=False)
    assert counts.images[0].get_array().sum() == predicted.obs["cell_type"].notna().sum()
    assert isinstance(mgf.pl.confusion_matrix(predicted, "cell_type", return_fig=True), Figure)


def test_classify_scores(predicted):
    ax = mgf.pl.classify_scores(predicted, show=False)
    assert isinstance(ax, Axes) and ax.get_ylabel() == "score of the predicted label"
    _, ax2 = plt.subplots()
    assert mgf.pl.classify_scores(predicted, groupby="cell_type", ax=ax2, show=False) is ax2
    with pytest.raises(KeyError, match="classify"):
        mgf.pl.classify_scores(predicted, key="missing")

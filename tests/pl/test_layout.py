"""Every plot as a user sees it: rendered to PNG on the bundled data, then its layout checked.

No legend, label or title may overlap another Axes, no two gene labels may overlap, and nothing may be drawn outside
the figure (a cut-off legend or tick label).
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.transforms import Bbox

import mixgf as mgf

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ticklabels(axis, lim):
    """Tick labels that are drawn (ticks outside the view limits are not)."""
    lo, hi = sorted(lim)
    return [t.label1 for t in axis.get_major_ticks() if lo - 1e-9 <= t.get_loc() <= hi + 1e-9]


def _texts(ax):
    ticks = _ticklabels(ax.xaxis, ax.get_xlim()) + _ticklabels(ax.yaxis, ax.get_ylim())
    items = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, *ticks]
    return [t for t in items if t.get_visible() and t.get_text()]


def _overlap(a: Bbox, b: Bbox, tol: float = 1.0) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


def assert_layout(fig, path):
    """Save to PNG (as a user would), then check the drawn boxes."""
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 1000
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    axes = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in _texts(ax)]
        if ax.get_legend() is not None:
            boxes.append(ax.get_legend().get_window_extent(renderer))
        for bb in boxes:  # nothing outside the figure
            assert page.x0 - 1 <= bb.x0 and bb.x1 <= page.x1 + 1 and page.y0 - 1 <= bb.y0 and bb.y1 <= page.y1 + 1, (
                f"drawn outside the figure: {bb} vs {page}"
            )
        if ax.get_legend() is not None:  # a legend never runs into another panel or its labels
            leg = ax.get_legend().get_window_extent(renderer)
            for other in axes:
                if other is ax:
                    continue
                assert not _overlap(leg, other.bbox), f"legend of {ax.get_title()!r} overlaps {other.get_title()!r}"
                for t in _texts(other):
                    assert not _overlap(leg, t.get_window_extent(renderer)), f"legend overlaps {t.get_text()!r}"
    for ax in axes:  # gene labels: inside their axes, never on each other
        labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                assert not _overlap(a, b, tol=0.5), "two labels overlap"
    plt.close(fig)


@pytest.fixture(scope="module")
def perturbed(pbmc_full):
    a = pbmc_full[:200].copy()
    genes = ["CD74", "LYZ", "CD3E", "NKG7", "S100A9", "HLA-DRA", "CST3", "MALAT1", "GNLY", "FTL", "TMSB4X", "B2M"]
    with mgf.settings.override(progress_bar=False, verbosity="error"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=48)
        mgf.tl.perturb(a, genes=[g for g in genes if g != "MALAT1"], n_controls=4, max_cells=40)
    return a


@pytest.fixture(scope="module")
def embedded(pbmc_full):
    a = pbmc_full[:300].copy()
    with mgf.settings.override(progress_bar=False, verbosity="error"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=64)
        mgf.tl.embed(a)
        mgf.tl.umap(a)
    return a


def test_readme_umap_two_panels(embedded, tmp_path):
    """The README's call: long cell-type names, then a second panel; the legend must not run under it."""
    fig = mgf.pl.umap(embedded, color=["cell_type", "species"], return_fig=True)
    assert len([a for a in fig.axes if a.get_legend() is not None]) == 2
    assert_layout(fig, tmp_path / "umap.png")
    assert "cell_type_colors" in embedded.uns  # scanpy's palette, stored as scanpy stores it
    fig = mgf.pl.umap(embedded, color=["cell_type", "cell_type", "species"], ncols=2, return_fig=True)
    assert_layout(fig, tmp_path / "umap3.png")


def test_volcano_and_shift_layout(perturbed, tmp_path):
    fig = mgf.pl.perturb_volcano(perturbed, p="p_value", n_labels=8, return_fig=True)
    assert len(fig.axes[0].texts) == 8
    assert_layout(fig, tmp_path / "volcano.png")
    fig = mgf.pl.perturb_shift(perturbed, groupby="cell_type", return_fig=True)
    assert_layout(fig, tmp_path / "shift.png")


def test_classify_plots_layout(pbmc_full, tmp_path):
    a = pbmc_full[:240].copy()
    with mgf.settings.override(progress_bar=False, verbosity="error"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=48)
        clf = mgf.tl.train_classifier(a[:160].copy(), "cell_type", finetune="frozen", epochs=1)
        b = a[160:].copy()
        mgf.tl.classify(b, model=clf)
    assert_layout(mgf.pl.confusion_matrix(b, "cell_type", return_fig=True), tmp_path / "confusion.png")
    assert_layout(mgf.pl.classify_scores(b, return_fig=True), tmp_path / "scores.png")


def test_the_checker_sees_a_cut_off_legend(tmp_path):
    """The check itself: scanpy's default spacing puts a long legend under the next panel."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6, 3))
    a1.scatter([0, 1], [0, 1], label="a very long category name, CD14+ Monocytes")
    a1.legend(loc="center left", bbox_to_anchor=(1, 0.5))
    a2.set_ylabel("second panel")
    with pytest.raises(AssertionError, match=r"overlaps|outside the figure"):
        assert_layout(fig, tmp_path / "bad.png")

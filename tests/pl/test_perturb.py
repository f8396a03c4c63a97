from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

import mixgf as mgf

GENES = ["CD74", "LYZ", "CD3E", "NKG7", "S100A9"]
KEY = "mixgf_perturb"


@pytest.fixture(scope="module")
def perturbed(pbmc_full):
    """150 real PBMCs, 5 genes deleted in 40 of them (matched test), the same without p-values, and a goal run."""
    a = pbmc_full[:150].copy()
    with mgf.settings.override(progress_bar=False, verbosity="warning"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # genes not expressed in any selected cell
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=48)
        mgf.tl.perturb(a, genes=GENES, n_controls=5, max_cells=40)
        mgf.tl.perturb(a, genes=GENES, test="none", max_cells=40, key_added="no_test")
        mgf.tl.perturb(
            a,
            genes=["LYZ", "S100A9"],
            goal={"key": "cell_type", "source": "CD14+ Monocytes", "target": "B cells"},
            n_controls=5,
            max_cells=20,
            key_added="to_b",
        )
    yield a
    plt.close("all")


def _results(adata, key=KEY) -> pd.DataFrame:
    return adata.uns[key]["results"]


def _points(ax) -> np.ndarray:
    """All scatter points drawn on ``ax`` (n x 2)."""
    offs = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    return np.concatenate(offs) if offs else np.empty((0, 2))


def _with_results(adata, df: pd.DataFrame, key: str = KEY):
    """A copy of ``adata`` whose perturbation results are replaced by ``df``."""
    b = adata.copy()
    b.uns[key] = {**adata.uns[key], "results": df}
    return b


# -- volcano -----------------------------------------------------------------------------------------------------
def test_volcano_plots_one_point_per_gene_with_p(perturbed):
    df = _results(perturbed)
    ax = mgf.pl.perturb_volcano(perturbed, show=False)
    assert isinstance(ax, Axes)
    keep = (df["n_cells"] > 0) & np.isfinite(df["p_adj"])
    assert keep.sum() >= 2, "the fixture should leave several genes with p-values"
    pts = _points(ax)
    assert len(pts) == keep.sum()
    np.testing.assert_allclose(np.sort(pts[:, 1]), np.sort(-np.log10(df.loc[keep, "p_adj"].to_numpy())))
    np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(df.loc[keep, "shift_mean"].to_numpy()))
    # significant points are in their own, coloured collection
    sig = [c for c in ax.collections if c.get_label().startswith("p_adj ≤")]
    assert sum(len(c.get_offsets()) for c in sig) == (df.loc[keep, "p_adj"] <= 0.05).sum()
    # dashed significance line, axis labels naming the shift
    hlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(hlines) == 1
    np.testing.assert_allclose(hlines[0].get_ydata(), -np.log10(0.05))
    assert ax.get_xlabel() == "mean cosine shift (1 - cos)"
    assert ax.get_ylabel() == "-log10(p_adj)"
    if (df["n_cells"] == 0).any():
        assert f"{int((df['n_cells'] == 0).sum())} never perturbed" in ax.get_title()


def test_volcano_labels_top_genes_by_p_and_by_shift(perturbed):
    """Labels go to the best p-values and the largest shifts, significant or not (as pertpy / decoupler)."""
    df = _results(perturbed)
    keep = (df["n_cells"] > 0) & np.isfinite(df["p_adj"]) & np.isfinite(df["shift_mean"])
    shown = df.loc[keep]
    ax = mgf.pl.perturb_volcano(perturbed, n_labels=2, show=False)
    labelled = [t.get_text() for t in ax.texts]
    assert len(labelled) == 2
    by_p = shown.sort_values("p_adj", kind="stable").index[0]
    rest = shown.drop(index=by_p)
    by_shift = rest.index[np.argmax(np.abs(rest["shift_mean"].to_numpy()))]
    assert labelled == [by_p, by_shift]
    # nothing significant at a tiny alpha: every point grey, and the top genes are still named
    ax0 = mgf.pl.perturb_volcano(perturbed, alpha=1e-300, n_labels=3, show=False)
    assert len(ax0.texts) == min(3, len(shown))
    assert all(c.get_label().startswith("p_adj >") for c in ax0.collections if isinstance(c, PathCollection))
    # the legend sits beside the axes, not on the data
    fig = ax.figure
    fig.canvas.draw()
    leg = ax.get_legend().get_window_extent()
    assert leg.x0 >= ax.bbox.x1


def test_volcano_explicit_genes_ax_and_fig(perturbed):
    _, ax = plt.subplots()
    out = mgf.pl.perturb_volcano(perturbed, p="p_value", x="shift_median", genes=["LYZ"], ax=ax, show=False)
    assert out is ax
    assert [t.get_text() for t in ax.texts] == ["LYZ"]
    assert ax.get_ylabel() == "-log10(p_value)"
    assert ax.get_xlabel() == "median cosine shift (1 - cos)"
    assert isinstance(mgf.pl.perturb_volcano(perturbed, return_fig=True), Figure)


def test_volcano_clips_zero_and_drops_nan_p(perturbed):
    df = _results(perturbed).copy()
    keep = np.flatnonzero(((df["n_cells"] > 0) & np.isfinite(df["p_adj"])).to_numpy())
    df.iloc[keep[0], df.columns.get_loc("p_adj")] = 0.0
    df.iloc[keep[1], df.columns.get_loc("p_adj")] = np.nan
    b = _with_results(perturbed, df)
    ax = mgf.pl.perturb_volcano(b, show=False)
    pts = _points(ax)
    assert len(pts) == len(keep) - 1
    assert np.isfinite(pts).all()
    np.testing.assert_allclose(pts[:, 1].max(), -np.log10(np.finfo(np.float64).tiny))
    assert "1 without p_adj" in ax.get_title()


def test_volcano_all_nan_p_raises(perturbed):
    assert _results(perturbed, "no_test")["p_adj"].isna().all()
    with pytest.raises(ValueError, match="test='matched'"):
        mgf.pl.perturb_volcano(perturbed, key="no_test")


def test_volcano_goal_axis(perturbed):
    ax = mgf.pl.perturb_volcano(perturbed, key="to_b", alpha=1, show=False)
    assert ax.get_xlabel() == "mean shift toward goal (B cells)"
    assert any(np.allclose(ln.get_xdata(), 0) for ln in ax.lines), "a zero line for the signed shift"


def test_volcano_errors(perturbed):
    with pytest.raises(KeyError, match=r"tl\.perturb"):
        mgf.pl.perturb_volcano(perturbed, key="missing")
    with pytest.raises(KeyError, match="not a column"):
        mgf.pl.perturb_volcano(perturbed, x="nope")
    with pytest.raises(KeyError, match="NOTAGENE"):
        mgf.pl.perturb_volcano(perturbed, genes=["NOTAGENE"])


# -- per-cell shifts -----------------------------------------------------------------------------------------------
def test_shift_default_genes_strip_drops_nan(perturbed):
    df = _results(perturbed)
    shifts = perturbed.obsm[f"{KEY}_shift"]
    ax = mgf.pl.perturb_shift(perturbed, kind="strip", show=False)
    assert isinstance(ax, Axes)
    expected_genes = df.index[df["n_cells"] > 0].tolist()[:10]  # the table is sorted by p-value
    genes = [t.get_text() for t in ax.get_xticklabels()]
    assert genes == expected_genes
    assert all(shifts[g].notna().any() for g in genes), "genes never perturbed are not shown by default"
    pts = _points(ax)
    values = shifts[genes].to_numpy().ravel()
    values = values[~np.isnan(values)]
    assert shifts[genes].isna().to_numpy().any(), "the fixture has cells that were not perturbed"
    assert len(pts) == len(values)
    np.testing.assert_allclose(np.sort(pts[:, 1]), np.sort(values), rtol=1e-6)
    assert ax.get_ylabel() == "cosine shift (1 - cos)"


def test_shift_violin_spans_only_perturbed_cells(perturbed):
    shifts = perturbed.obsm[f"{KEY}_shift"]
    genes = [g for g in shifts.columns if shifts[g].dropna().nunique() >= 2]
    assert genes
    ax = mgf.pl.perturb_shift(perturbed, genes, show=False)
    bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bodies) == len(genes)
    for body, g in zip(bodies, genes):
        y = body.get_paths()[0].vertices[:, 1]
        v = shifts[g].dropna().to_numpy()
        # a NaN drawn as 0 would stretch the violin down to 0
        np.testing.assert_allclose([y.min(), y.max()], [v.min(), v.max()], rtol=1e-5)


def test_shift_box_medians(perturbed):
    shifts = perturbed.obsm[f"{KEY}_shift"]
    genes = [g for g in shifts.columns if shifts[g].notna().any()]
    ax = mgf.pl.perturb_shift(perturbed, genes, kind="box", show=False)
    flat = [float(ln.get_ydata()[0]) for ln in ax.lines if len(ln.get_ydata()) == 2 and np.ptp(ln.get_ydata()) == 0]
    for g in genes:
        assert np.isclose(flat, np.median(shifts[g].dropna())).any(), g


def test_shift_groupby(perturbed):
    shifts = perturbed.obsm[f"{KEY}_shift"]
    genes = ["CD74", "LYZ", "S100A9"]
    _, ax = plt.subplots()
    out = mgf.pl.perturb_shift(perturbed, genes, groupby="cell_type", kind="strip", ax=ax, show=False)
    assert out is ax
    has_group = perturbed.obs["cell_type"].notna().to_numpy()
    sub = shifts.loc[has_group, genes]
    assert len(_points(ax)) == sub.notna().to_numpy().sum()
    present = perturbed.obs.loc[has_group & shifts[genes].notna().any(axis=1).to_numpy(), "cell_type"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(set(present.astype(str)))
    assert ax.get_legend().get_title().get_text() == "cell_type"
    # every (gene, group) with values is its own collection
    n_pairs = int(
        (sub.notna().groupby(perturbed.obs.loc[has_group, "cell_type"].astype(str).to_numpy()).sum() > 0)
        .to_numpy()
        .sum()
    )
    assert sum(isinstance(c, PathCollection) for c in ax.collections) == n_pairs
    for kind in ("violin", "box"):
        assert isinstance(
            mgf.pl.perturb_shift(perturbed, genes, groupby="cell_type", kind=kind, return_fig=True), Figure
        )


def test_shift_goal_is_signed(perturbed):
    ax = mgf.pl.perturb_shift(perturbed, "LYZ", key="to_b", kind="strip", show=False)
    assert ax.get_ylabel() == "shift toward goal (B cells)"
    pts = _points(ax)
    assert len(pts) == perturbed.obsm["to_b_shift"]["LYZ"].notna().sum()
    assert any(np.allclose(ln.get_ydata(), 0) for ln in ax.lines), "a zero line for the signed shift"


def test_shift_errors(perturbed):
    with pytest.raises(KeyError, match="available") as err:
        mgf.pl.perturb_shift(perturbed, ["CD74", "NOTAGENE"])
    assert "NOTAGENE" in str(err.value) and "LYZ" in str(err.value)
    with pytest.raises(KeyError, match=r"tl\.perturb"):
        mgf.pl.perturb_shift(perturbed, key="missing")
    with pytest.raises(KeyError, match="groupby"):
        mgf.pl.perturb_shift(perturbed, groupby="nope")
    with pytest.raises(ValueError, match="kind"):
        mgf.pl.perturb_shift(perturbed, kind="swarm")

from __future__ import annotations

import anndata as ad
import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

import mixgf as mgf

mpl.use("Agg")


@pytest.fixture(scope="module")
def bulk() -> ad.AnnData:
    ref = mgf.datasets.pbmc3k()
    ref = ref[ref.obs["cell_type"].notna()].copy()
    with mgf.settings.override(verbosity="error"):
        mgf.tl.prototypes(ref, groupby="cell_type", min_cells=5)
    rng = np.random.default_rng(0)
    picks = [rng.choice(ref.n_obs, 200) for _ in range(6)]
    b = ad.AnnData(np.vstack([ref.X[p].sum(axis=0) for p in picks]), var=ref.var.copy())
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    b.obsm["truth"] = pd.DataFrame(
        {"B cells": [(labels[p] == "B cells").mean() for p in picks],
         "NK cells": [(labels[p] == "NK cells").mean() for p in picks]},
        index=b.obs_names,
    )  # fmt: skip
    with mgf.settings.override(verbosity="error"):
        mgf.tl.deconvolve(b, ref, genes="markers", n_markers=50)
    return b


def test_fractions_bars(bulk):
    ax = mgf.pl.fractions(bulk, types=["B cells", "NK cells"], sort_by="B cells", show=False)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["B cells", "NK cells", "other"]
    heights = [p.get_height() for p in ax.patches[: bulk.n_obs]]
    assert heights == sorted(heights, reverse=True)  # sorted by the B-cell fraction
    fig = mgf.pl.fractions(bulk, show=False, return_fig=True)
    assert fig is ax.figure or fig.axes


def test_fractions_spatial(bulk):
    b = bulk.copy()
    b.obsm["spatial"] = np.arange(12, dtype=float).reshape(6, 2)
    axes = mgf.pl.fractions(b, types=["B cells", "NK cells", "CD4 T cells"], show=False)
    assert [a.get_title() for a in axes] == ["B cells", "NK cells", "CD4 T cells"]
    ax = mgf.pl.fractions(b, kind="bar", show=False)
    assert ax.get_ylabel() == "fraction of cells"
    with pytest.raises(ValueError, match="one panel"):
        mgf.pl.fractions(b, ax=ax, show=False)


def test_fractions_vs_truth(bulk):
    ax = mgf.pl.fractions_vs_truth(bulk, "truth", show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("B cells: r=") and "RMSE=" in legend[1]
    assert len(ax.collections) == 2 and len(ax.collections[0].get_offsets()) == bulk.n_obs
    with pytest.raises(KeyError, match="must be a truth column"):
        mgf.pl.fractions_vs_truth(bulk, "truth", groups={"T": ["CD4 T cells"]}, show=False)


def test_plots_need_results():
    empty = ad.AnnData(np.ones((2, 2)))
    with pytest.raises(KeyError, match="not found; run"):
        mgf.pl.fractions(empty, show=False)

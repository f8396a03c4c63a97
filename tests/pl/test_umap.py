from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import mixgf as mgf


@pytest.fixture
def embedded(pbmc_full):
    a = pbmc_full[:60].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=256)
    mgf.tl.embed(a)
    mgf.tl.umap(a, n_neighbors=5)
    yield a
    plt.close("all")


def test_umap_returns_axes_and_colours_by_species(embedded):
    axes = mgf.pl.umap(embedded, color=["cell_type", "species"], show=False)
    assert len(axes) == 2 and all(isinstance(ax, Axes) for ax in axes)
    assert axes[1].get_title() == "species"
    assert "species" not in embedded.obs, "the user's obs is not modified"
    assert len(axes[0].collections[0].get_offsets()) == embedded.n_obs


def test_umap_into_given_ax_and_return_fig(embedded):
    _fig, ax = plt.subplots()
    out = mgf.pl.umap(embedded, color="cell_type", ax=ax, show=False)
    assert out is ax
    assert isinstance(mgf.pl.umap(embedded, color="cell_type", return_fig=True), Figure)
    assert mgf.pl.umap(embedded, color="cell_type", show=True) is None


def test_umap_needs_coordinates(pbmc_full):
    with pytest.raises(KeyError, match=r"mgf\.tl\.umap"):
        mgf.pl.umap(pbmc_full[:5].copy(), color="cell_type")

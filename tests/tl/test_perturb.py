"""mgf.tl.perturb and mgf.get.perturb_df on real PBMCs with the bundled default model."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import mixgf as mgf
from mixgf.model import BertEncoderModel

KEY = "mixgf_perturb"


@pytest.fixture(scope="module")
def cells(pbmc_full):
    """120 real PBMCs tokenized with the default vocabulary, cut to their top 48 genes (fast)."""
    a = pbmc_full[:120].copy()
    with mgf.settings.override(verbosity="error"):
        mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=48)
    return a


@pytest.fixture
def a(cells):
    return cells.copy()


def _expressing(adata, symbol: str, rows=None) -> np.ndarray:
    tok = adata.obsm["mixgf_tokens"]
    t = mgf.genes.resolve_genes([symbol], mgf.genes.Vocabulary.load("mixgf"), "human")[0].token
    hit = (tok == t).any(axis=1)
    return hit if rows is None else hit & rows


def test_writes_results_shifts_and_params(a, default_model):
    b_cells = (a.obs["cell_type"] == "B cells").to_numpy()
    mgf.tl.perturb(a, genes=["CD74", "HLA-DRA", "LYZ"], cells=b_cells, model=default_model, n_controls=8)
    res = mgf.get.perturb_df(a, min_cells=0)
    assert list(res.columns[:6]) == ["gene", "ensembl_id", "species", "mode", "n_cells", "shift_mean"]
    assert set(res["gene"]) == {"CD74", "HLA-DRA", "LYZ"}
    shifts = a.obsm[f"{KEY}_shift"]
    assert isinstance(shifts, pd.DataFrame) and list(shifts.columns) == ["CD74", "HLA-DRA", "LYZ"]
    for g in ["CD74", "HLA-DRA", "LYZ"]:
        expressing = _expressing(a, g, b_cells)
        # scored exactly in the selected cells that express the gene; NaN (not 0) everywhere else
        np.testing.assert_array_equal(shifts[g].notna().to_numpy(), expressing)
        row = res.loc[g]
        assert row["n_cells"] == expressing.sum()
        if row["n_cells"]:
            assert row["shift_mean"] == pytest.approx(shifts[g].mean(), rel=1e-5)
            assert (shifts[g].dropna() >= -1e-6).all(), "without a goal the shift is a magnitude, 1 - cos"
    assert res.loc["CD74", "n_cells"] > 0 and 0 <= res.loc["CD74", "p_value"] <= 1
    assert res.loc["CD74", "n_controls"] == 8 and len(res.loc["CD74", "control_genes"].split(";")) == 8
    p = a.uns[KEY]["params"]
    assert p["mode"] == "delete" and p["test"] == "matched" and p["hidden_layer"] == -1
    assert p["n_cells_selected"] == b_cells.sum() and p["weights_sha256"] == default_model.weights_sha256
    assert p["n_cells_skipped"] == p["n_cells_selected"] - p["n_cells_perturbed"]
    orig = a.obsm[f"{KEY}_original"]
    assert np.isnan(orig[~b_cells]).all() and np.isfinite(orig[b_cells]).all()
    # the original embedding is the model's own embedding of the cell
    ref = mgf.tl.embed(a[b_cells].copy(), model=default_model, hidden_layer=-1, copy=True).obsm["X_mixgf"]
    np.testing.assert_allclose(orig[b_cells], ref, atol=1e-5)


def test_goal_shift_is_toward_the_target_centroid(a, default_model):
    mgf.tl.perturb(
        a, genes=["CD74"], goal={"key": "cell_type", "source": "B cells", "target": "CD14+ Monocytes"},
        model=default_model, test="none", store_embeddings=True,
    )  # fmt: skip
    p = a.uns[KEY]["params"]
    assert p["goal_source"] == "B cells" and p["goal_target"] == "CD14+ Monocytes"
    src = (a.obs["cell_type"] == "B cells").to_numpy()
    assert p["n_cells_selected"] == src.sum()
    target = (a.obs["cell_type"] == "CD14+ Monocytes").to_numpy()
    emb = mgf.tl.embed(a, model=default_model, hidden_layer=-1, copy=True).obsm["X_mixgf"]
    centroid = emb[target].mean(axis=0)
    entry = a.uns[KEY]
    i = int(np.flatnonzero(entry["cells"] == a.obs_names[_expressing(a, "CD74", src)][0])[0])
    pert = entry["perturbed_embeddings"][i, 0]
    orig = a.obsm[f"{KEY}_original"][a.obs_names.get_loc(entry["cells"][i])]

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    got = a.obsm[f"{KEY}_shift"].loc[entry["cells"][i], "CD74"]
    assert got == pytest.approx(cos(pert, centroid) - cos(orig, centroid), abs=1e-5)
    assert {"goal_source", "goal_target"} <= set(entry["results"].columns)


def test_sets_modes_orthologs_and_inplace_false(a, default_model, caplog):
    before = set(a.uns) | set(a.obsm)
    df = mgf.tl.perturb(a, genes=[["CD74", "HLA-DRA"], "Cd74"], model=default_model, test="none", inplace=False)
    assert set(a.uns) | set(a.obsm) == before, "inplace=False leaves adata alone"
    both = (_expressing(a, "CD74") & _expressing(a, "HLA-DRA")).sum()
    assert df.loc["CD74+HLA-DRA", "n_cells"] == both
    # a mouse symbol for human cells: the exact mouse gene, mapped through the one-to-one orthologs
    assert df.loc["CD74", "via_ortholog"] == "ENSMUSG00000024610" and df.loc["CD74", "query"] == "Cd74"
    # overexpression applies to every cell, also those that lack the gene (it is inserted at the front)
    over = mgf.tl.perturb(a, genes=["LYZ"], mode="overexpress", model=default_model, test="none", inplace=False)
    assert over.loc["LYZ", "n_cells"] == a.n_obs
    inh = mgf.tl.perturb(a, genes=["CD74"], mode="inhibit", model=default_model, test="none", inplace=False)
    assert inh.loc["CD74", "n_cells"] == _expressing(a, "CD74").sum()


def test_geneformer_statistic(a, default_model):
    genes = ["CD74", "HLA-DRA", "LYZ", "S100A9", "NKG7"]
    df = mgf.tl.perturb(a, genes=genes, model=default_model, test="geneformer", inplace=False)
    shifts = mgf.tl.perturb(a, genes=genes, model=default_model, test="none", copy=True).obsm[f"{KEY}_shift"]
    pool = np.concatenate([shifts[g].dropna().to_numpy() for g in genes])
    for g in genes:
        assert df.loc[g, "p_value"] == pytest.approx(stats.ranksums(pool, shifts[g].dropna()).pvalue, rel=1e-6)
    assert (df["test"] == "geneformer").all() and df["p_adj"].notna().all()


def test_calibrated_p_values_without_gene_signal(cells, default_model):
    """A model whose weights carry no gene signal, every gene perturbed: uniform p-values, BH finds (almost) nothing.

    (The same with the trained default model is measured by benchmarks/perturb.py.)
    """
    torch.manual_seed(0)
    model = mgf.MixGeneformer(BertEncoderModel(default_model.config).eval(), default_model.vocab, "random", {})
    df = mgf.tl.perturb(cells, genes="all", max_cells=30, model=model, inplace=False, seed=0)
    p = df["p_value"].dropna().to_numpy()
    assert p.shape[0] > 500
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs((p < 0.05).mean() - 0.05) < 0.02
    assert (df["p_adj"] < 0.05).sum() <= 1  # of more than 500 null genes
    # genes seen in several cells, whose controls change order between cells, are calibrated too
    multi = df.loc[df["n_cells"] >= 2, "p_value"].dropna().to_numpy()
    assert multi.shape[0] > 100
    assert stats.kstest(multi, "uniform").pvalue > 0.01


def test_get_perturb_df_filters(a, default_model):
    mgf.tl.perturb(a, genes=["CD74", "LYZ", "NKG7", "MS4A1"], model=default_model, n_controls=5)
    full = mgf.get.perturb_df(a, min_cells=0)
    assert full["p_value"].is_monotonic_increasing or full["p_value"].isna().any()
    assert set(mgf.get.perturb_df(a, genes=["LYZ"])["gene"]) <= {"LYZ"}
    big = mgf.get.perturb_df(a, min_abs_shift=0.0)
    assert (big["shift_mean"].abs() >= 0).all()
    sig = mgf.get.perturb_df(a, p_adj_max=0.5)
    assert (sig["p_adj"] <= 0.5).all()
    with pytest.raises(KeyError, match="not in the results"):
        mgf.get.perturb_df(a, genes=["GAPDH"])
    with pytest.raises(KeyError, match="no perturbation results"):
        mgf.get.perturb_df(a, key="other")


def test_results_survive_h5ad(a, default_model, tmp_path):
    mgf.tl.perturb(a, genes=["CD74", "LYZ"], model=default_model, n_controls=5)
    a.write_h5ad(tmp_path / "p.h5ad")
    b = ad.read_h5ad(tmp_path / "p.h5ad")
    pd.testing.assert_frame_equal(
        mgf.get.perturb_df(b, min_cells=0), mgf.get.perturb_df(a, min_cells=0), check_dtype=False
    )
    np.testing.assert_allclose(b.obsm[f"{KEY}_shift"].to_numpy(), a.obsm[f"{KEY}_shift"].to_numpy(), equal_nan=True)


def test_cells_by_positions_or_names_and_untokenized_inplace_false(a, pbmc_full, default_model):
    by_pos = mgf.tl.perturb(a, genes=["CD74"], cells=np.arange(10), model=default_model, test="none", inplace=False)
    by_name = mgf.tl.perturb(a, genes=["CD74"], cells=a.obs_names[:10], model=default_model, test="none", inplace=False)
    assert by_pos.loc["CD74", "n_cells"] == by_name.loc["CD74", "n_cells"] == _expressing(a, "CD74")[:10].sum()
    # tokens missing and inplace=False: tokenized on a copy, the user's AnnData is left as it was
    raw = pbmc_full[:20].copy()
    raw.var_names = raw.var["gene_id"].astype(str).to_numpy()
    keys = (set(raw.obsm), set(raw.obs.columns), set(raw.uns))
    df = mgf.tl.perturb(raw, genes=["CD74"], model=default_model, test="none", inplace=False)
    assert df.loc["CD74", "n_cells"] > 0
    assert (set(raw.obsm), set(raw.obs.columns), set(raw.uns)) == keys


# -- bad input -------------------------------------------------------------------------------------------------------
def test_unknown_gene_names_close_matches(a, default_model):
    with pytest.raises(KeyError, match="CD79A"):
        mgf.tl.perturb(a, genes=["CD7A"], model=default_model)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        mgf.tl.perturb(a, genes=["MALAT1"], model=default_model)  # a real gene outside the vocabulary


def test_gene_in_no_selected_cell_warns_and_keeps_a_row(a, default_model):
    nk = (a.obs["cell_type"] == "NK cells").to_numpy()
    absent = ~_expressing(a, "CD79A", nk)
    assert absent[nk].all()
    with pytest.warns(UserWarning, match="could not be perturbed in any selected cell"):
        df = mgf.tl.perturb(a, genes=["CD79A", "NKG7"], cells=nk, model=default_model, test="none", inplace=False)
    assert df.loc["CD79A", "n_cells"] == 0 and np.isnan(df.loc["CD79A", "shift_mean"])


def test_bad_goal_selection_and_options(a, default_model):
    with pytest.raises(KeyError, match=r"not a column of adata\.obs"):
        mgf.tl.perturb(a, genes=["CD74"], goal={"key": "disease", "target": "normal"}, model=default_model)
    with pytest.raises(KeyError, match="not a value"):
        mgf.tl.perturb(a, genes=["CD74"], goal={"key": "cell_type", "target": "neurons"}, model=default_model)
    with pytest.raises(ValueError, match="No cell to perturb"):
        mgf.tl.perturb(a, genes=["CD74"], cells=np.zeros(a.n_obs, dtype=bool), model=default_model)
    with pytest.raises(IndexError, match="must lie in"):
        mgf.tl.perturb(a, genes=["CD74"], cells=np.array([0, a.n_obs]), model=default_model)
    with pytest.raises(KeyError, match="not cells of adata"):
        mgf.tl.perturb(a, genes=["CD74"], cells=["no-such-cell"], model=default_model)
    with pytest.raises(ValueError, match="one entry per cell"):
        mgf.tl.perturb(a, genes=["CD74"], cells=np.ones(3, dtype=bool), model=default_model)
    with pytest.raises(ValueError, match="not a valid query"):
        mgf.tl.perturb(a, genes=["CD74"], cells="cell_type ==", model=default_model)
    with pytest.raises(KeyError, match="groups"):
        mgf.tl.perturb(a, genes=["CD74"], groupby="cell_type", groups=["neurons"], model=default_model)
    with pytest.raises(ValueError, match="mode"):
        mgf.tl.perturb(a, genes=["CD74"], mode="knockout", model=default_model)
    with pytest.raises(ValueError, match="n_controls"):
        mgf.tl.perturb(a, genes=["CD74"], n_controls=1, model=default_model)
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="control_cells must be a positive number of cells or None"):
            mgf.tl.perturb(a, genes=["CD74"], control_cells=bad, model=default_model)
    assert "mixgf_perturb" not in a.uns  # refused before anything was written
    with pytest.raises(ValueError, match="same gene twice"):
        mgf.tl.perturb(a, genes=[["CD74", "CD74"]], model=default_model)


def test_copy_with_inplace_false_is_an_error(a, default_model):
    before = set(a.uns) | set(a.obsm)
    with pytest.raises(ValueError, match=r"inplace=False.*copy=True"):
        mgf.tl.perturb(a, genes=["CD74"], model=default_model, inplace=False, copy=True)
    assert set(a.uns) | set(a.obsm) == before


def test_every_non_exact_gene_name_is_logged(monkeypatch):
    """'ins2' is taken as Ins2 out loud, like an ortholog mapping; an exact name is not logged."""
    from mixgf.tl import _perturb

    msgs: list[str] = []
    monkeypatch.setattr(_perturb.logg, "info", lambda m, **_: msgs.append(m))
    vocab = mgf.genes.Vocabulary.load("mixgf")
    sets = _perturb._gene_sets(["ins2", "GCG", "Pdx1", "ENSMUSG00000035804.5"], vocab, "mouse")
    assert [r.symbol for (r,) in sets] == ["Ins2", "Gcg", "Pdx1", "Ins1"]
    text = "\n".join(msgs)
    assert "'ins2' taken as mouse gene Ins2 (ENSMUSG00000000215): case-insensitive match" in text
    assert "'GCG' mapped to its one-to-one mouse ortholog Gcg" in text
    assert "'ENSMUSG00000035804.5' taken as mouse gene Ins1" in text and "version stripped" in text
    assert "Pdx1" not in text


def test_umod_on_mouse_cells_runs_and_says_its_token_is_untrained(baron_full, default_model):
    """The documented line on the user's own kidney-like data: real Baron mouse pancreas cells with Umod counts added.

    Umod is not expressed in pancreas; 12 of the real cells get Umod counts (8-30, an artificial addition, so that
    the gene is among their top-ranked genes), the others keep their counts unchanged.
    """
    cells = baron_full[:60]
    rng = np.random.default_rng(0)
    umod = np.zeros((cells.n_obs, 1), dtype=np.float32)
    umod[:12, 0] = rng.integers(8, 31, size=12)
    x = np.hstack([np.asarray(cells.X.todense()), umod])
    adata = ad.AnnData(x, obs=cells.obs.copy(), var=pd.DataFrame(index=[*cells.var_names, "Umod"]))
    assert not default_model.vocab.trained[default_model.vocab.token_ids(["ENSMUSG00000030963"])[0]]
    with mgf.settings.override(verbosity="error"):
        mgf.pp.rank_tokenize(adata, max_len=256)  # each cell's top 256 genes, to keep the test fast
    with pytest.warns(UserWarning, match="Umod was not in the training data") as record:
        mgf.tl.perturb(adata, genes=["Umod"], model=default_model, n_controls=5, control_cells=6)
    assert sum("Umod was not in the training data" in str(w.message) for w in record) == 1  # once per call
    df = mgf.get.perturb_df(adata)
    row = df.loc["Umod"]
    assert row["n_cells"] == 12 and not row["in_training_data"]
    assert row["ensembl_id"] == "ENSMUSG00000030963" and row["species"] == "mouse"
    assert np.isfinite(row["shift_mean"]) and 0 <= row["p_value"] <= 1
    shifts = adata.obsm[f"{KEY}_shift"]["Umod"].to_numpy()
    assert np.isfinite(shifts[:12]).all() and np.isnan(shifts[12:]).all()
    # the controls are genes the model was trained on
    controls = [c for c in row["control_genes"].split(";") if c]
    ids = mgf.genes.resolve_genes(controls, default_model.vocab, "mouse")
    assert default_model.vocab.trained[[g.token for g in ids]].all()
    with pytest.warns(UserWarning, match="were not in the training data"):
        mgf.tl.embed(adata[:12].copy(), model=default_model)

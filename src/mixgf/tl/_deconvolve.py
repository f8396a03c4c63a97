"""`mixgf.tl.prototypes` and `mixgf.tl.deconvolve`: cell-type prototypes and deconvolution of bulk / spot data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _logging as logg
from .._keys import FRACTIONS_KEY, PROTOTYPES_KEY
from .._version import __version__
from ..engine.deconvolution import Prototypes, fit_deconvolution, fit_prototypes
from ..genes import map_to_ensembl, orthologs
from ..pp._input import check_counts_block, counts_advice, get_matrix, iter_csr_chunks
from ._utils import prepare_target

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Fewest reference cells a cell type may have in :func:`mixgf.tl.prototypes` (an error below it).
MIN_CELLS_FLOOR = 3
_TOP_UNMATCHED = 10


def _read_checked(adata: AnnData, layer: str | None, *, counts: str, what: str) -> sp.csr_matrix:
    """The matrix as CSR float64, with the checks of `rank_tokenize`: finite, non-negative, integer for counts."""
    X = get_matrix(adata, layer)
    hint = "Or pass counts='normalized' for TPM / CPM (not log) data." if what.startswith("the mix") else ""
    blocks = []
    for start, _, block in iter_csr_chunks(X, 4096):
        check_counts_block(
            block, start, adata.obs_names, adata.var_names, counts=counts, what=what,
            advice=lambda: counts_advice(adata, layer, False), normalized_hint=hint,
        )  # fmt: skip
        blocks.append(block.astype(np.float64))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, adata.n_vars))


def _gene_names(adata: AnnData, gene_id_key: str | None) -> np.ndarray:
    if gene_id_key is None:
        return adata.var_names.to_numpy(dtype=object)
    if gene_id_key not in adata.var.columns:
        msg = f"gene_id_key={gene_id_key!r} is not a column of adata.var; columns: {adata.var.columns.tolist()}."
        raise KeyError(msg)
    names = np.asarray(adata.var[gene_id_key], dtype=object)
    # an empty ID falls back to the var name (a symbol)
    empty = pd.isna(names) | (pd.Series(names).astype("string").fillna("") == "").to_numpy()
    return np.where(empty, adata.var_names.to_numpy(dtype=object), names)


def prototypes(
    adata: AnnData,
    *,
    groupby: str = "cell_type",
    batch_key: str | None = None,
    layer: str | None = None,
    gene_id_key: str | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    min_cells: int = 20,
    key_added: str = PROTOTYPES_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Cell-type prototypes: the negative-binomial mean (and dispersion) of every gene's counts in every type.

    Each cell's counts are modelled as ``NB(s_c * exp(w_{type,g} + b_{batch,g}), theta_g)`` with ``s_c`` the
    cell's total counts, as in the regression model of CPNN / cell2location: the prototype of a type is its
    expected counts per cell (a rate times the type's mean total counts, so deconvolution gives fractions of
    cells, not of RNA), with batch effects removed when ``batch_key`` is given (the average batch is kept).
    Labels from :func:`mixgf.tl.classify` work as ``groupby``. See :doc:`/deconvolution` for the fit.

    Parameters
    ----------
    adata
        Labelled single cells with raw counts.
    groupby
        ``obs`` column with the cell types (cells without a label are left out).
    batch_key
        ``obs`` column with batches (samples, donors, chemistries) whose effects are removed.
    layer
        Layer with the raw counts (`None`: ``X``).
    gene_id_key
        ``var`` column with Ensembl IDs (empty entries fall back to the var name); `None`: the var names.
    species
        ``"auto"`` detects it from the genes.
    min_cells
        Types with fewer labelled cells are warned about; fewer than 3 is an error.
    key_added
        Where to store the results (see Returns).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.varm[key_added]`` : `numpy.ndarray` (genes × types)
        Expected counts per cell of each type; columns in ``adata.uns[key_added]["types"]``.
    ``adata.var[key_added + "_dispersion"]`` : float
        NB inverse dispersion per gene (``inf``: no overdispersion).
    ``adata.var[key_added + "_gene_id"]`` : str
        Ensembl ID per gene (``""``: none), used to match genes of mixtures and across species.
    ``adata.uns[key_added]`` : dict
        ``types``, ``n_cells``, ``cell_size`` (mean total counts per type), ``species``, ``batches`` and
        ``batch_effects`` (batches × genes, log) when fitted with batches, and ``params``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> adata = adata[adata.obs["cell_type"].notna()].copy()
    >>> mgf.tl.prototypes(adata, groupby="cell_type", min_cells=10)
    >>> adata.varm["mixgf_prototypes"].shape
    (16634, 8)
    >>> adata.uns["mixgf_prototypes"]["types"][:3]
    ['B cells', 'CD14+ Monocytes', 'CD4 T cells']
    >>> protos = mgf.get.prototypes(adata)
    >>> protos.to_df().loc["MS4A1"].idxmax()
    'B cells'
    """
    if groupby not in adata.obs:
        msg = f"groupby={groupby!r} is not a column of adata.obs; columns: {adata.obs.columns.tolist()}."
        raise KeyError(msg)
    if batch_key is not None and batch_key not in adata.obs:
        msg = f"batch_key={batch_key!r} is not a column of adata.obs; columns: {adata.obs.columns.tolist()}."
        raise KeyError(msg)
    labels = adata.obs[groupby]
    ok = labels.notna().to_numpy()
    if not ok.any():
        msg = f"adata.obs[{groupby!r}] has no labelled cell."
        raise ValueError(msg)
    if not ok.all():
        logg.warn(f"{int((~ok).sum()):,} cells have no {groupby!r} label and are left out of the prototypes.")
    types, codes = np.unique(labels[ok].astype(str).to_numpy(), return_inverse=True)
    n = np.bincount(codes, minlength=len(types))
    if (n < MIN_CELLS_FLOOR).any():
        msg = (
            f"cell types with fewer than {MIN_CELLS_FLOOR} cells cannot give a prototype: "
            f"{dict(zip(types[n < MIN_CELLS_FLOOR].tolist(), n[n < MIN_CELLS_FLOOR].tolist()))}. "
            "Merge them into a broader type or remove those cells."
        )
        raise ValueError(msg)
    if (n < min_cells).any():
        small = dict(zip(types[n < min_cells].tolist(), n[n < min_cells].tolist()))
        logg.warn(f"cell types with fewer than min_cells={min_cells} cells give noisy prototypes: {small}.")
    X = _read_checked(adata, layer, counts="raw", what="the reference's count matrix")[np.flatnonzero(ok)]
    b_codes, batches = None, []
    if batch_key is not None:
        bl = adata.obs[batch_key][ok]
        if bl.isna().any():
            msg = f"adata.obs[{batch_key!r}] has missing values among the labelled cells; fill them first."
            raise ValueError(msg)
        batches, b_codes = np.unique(bl.astype(str).to_numpy(), return_inverse=True)
        batches = batches.tolist()
    mapping = map_to_ensembl(_gene_names(adata, gene_id_key), species)
    t0 = logg.info(
        f"fitting NB prototypes of {len(types)} {mapping.species} cell types on {int(ok.sum()):,} cells"
        + (f" in {len(batches)} batches" if batches else "")
    )
    fit = fit_prototypes(X, codes, len(types), batches=b_codes, n_batches=max(len(batches), 1))
    target = prepare_target(adata, copy=copy)
    target.varm[key_added] = fit.means
    target.var[f"{key_added}_dispersion"] = fit.dispersion
    target.var[f"{key_added}_gene_id"] = [g or "" for g in mapping.ensembl_ids]
    target.uns[key_added] = {
        "types": types.tolist(),
        "n_cells": n.tolist(),
        "cell_size": fit.cell_size.tolist(),
        "species": mapping.species,
        "batches": batches,
        "params": {
            "groupby": groupby,
            "batch_key": batch_key,
            "layer": layer,
            "gene_id_key": gene_id_key,
            "min_cells": min_cells,
            "mixgf_version": __version__,
        },
    }
    if fit.batch_effects is not None:
        target.uns[key_added]["batch_effects"] = fit.batch_effects
    logg.info(
        f"    added {key_added!r} (adata.varm), {key_added + '_dispersion'!r}, {key_added + '_gene_id'!r} "
        f"(adata.var), {key_added!r} (adata.uns)",
        start=t0,
    )
    return target if copy else None


def _resolve_prototypes(prototypes: Prototypes | AnnData | str | Path) -> Prototypes:
    from ..get import prototypes as get_prototypes

    if isinstance(prototypes, Prototypes):
        return prototypes
    if isinstance(prototypes, str | Path):
        return Prototypes.load(prototypes)
    return get_prototypes(prototypes)


def _match_genes(protos: Prototypes, names: np.ndarray, species: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pairs (prototype gene, mixture column) of the same gene, by Ensembl ID, then by name; orthologs across species.

    Mixture columns naming the same gene are all returned (their values are summed by the caller).
    """
    mapping = map_to_ensembl(names, species)
    mix_ids = np.array([x or "" for x in mapping.ensembl_ids], dtype=object)
    p_ids = np.asarray(protos.gene_ids, dtype=object)
    cross = mapping.species != protos.species
    if cross:
        table = orthologs()
        to_mix = dict(zip(table[f"{protos.species}_id"], table[f"{mapping.species}_id"]))
        p_keys = np.array([to_mix.get(g, "") for g in p_ids], dtype=object)
        m_keys = mix_ids
    else:
        # Ensembl IDs where both sides have one, else the exact name (same species)
        p_keys = np.where(p_ids != "", p_ids, "name:" + np.asarray(protos.genes, dtype=object))
        m_keys = np.where(mix_ids != "", mix_ids, "name:" + names.astype(str))
    first = pd.Series(np.arange(len(p_keys)))[pd.Series(p_keys) != ""].groupby(p_keys[p_keys != ""]).first()
    pos = pd.Series(m_keys).map(first)
    ok = pos.notna().to_numpy() & (m_keys != "")
    report = {
        "prototype_species": protos.species,
        "mixture_species": mapping.species,
        "via_orthologs": bool(cross),
        "n_prototype_genes": len(p_ids),
        "n_prototype_genes_with_ortholog": int((p_keys != "").sum()) if cross else None,
        "n_mixture_genes": len(names),
        "n_mixture_genes_with_ensembl_id": mapping.n_mapped,
        "n_genes_matched": int(pd.unique(pos[ok]).size),
    }
    if not ok.any():
        hint = (
            f" The prototypes are {protos.species} and the mixture {mapping.species}: genes are matched through "
            f"one-to-one orthologs, which need Ensembl IDs or {mapping.species} symbols (pass gene_id_key=...)."
            if cross
            else " Pass gene_id_key='<var column with Ensembl IDs>' if the var names are not gene symbols or IDs."
        )
        msg = f"no genes in common between the prototypes and the mixture (first names {names[:5].tolist()}).{hint}"
        raise ValueError(msg)
    return pos[ok].to_numpy(dtype=np.int64), np.flatnonzero(ok), report


def _default_genes(means: np.ndarray, n_per_type: int, min_mean: float) -> np.ndarray:
    """Informative genes: per type the top ``n_per_type`` by log fold change over the next-highest type."""
    lm = np.log(means + 1e-3)
    expressed = means.max(axis=1) >= min_mean
    keep = np.zeros(means.shape[0], dtype=bool)
    for k in range(means.shape[1]):
        others = np.delete(lm, k, axis=1).max(axis=1)
        score = np.where(expressed, lm[:, k] - others, -np.inf)
        keep[np.argsort(-score, kind="stable")[:n_per_type]] = True
    return keep & expressed


def deconvolve(
    adata: AnnData,
    prototypes: Prototypes | AnnData | str | Path,
    *,
    layer: str | None = None,
    genes: Sequence[str] | Literal["markers", "all"] = "all",
    gene_id_key: str | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    counts: Literal["raw", "normalized"] = "raw",
    n_markers: int = 200,
    gene_sensitivity: bool = False,
    ambient: bool = False,
    max_iter: int = 300,
    seed: int = 0,
    device: str | None = None,
    key_added: str = FRACTIONS_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Cell-type fractions of bulk samples or spots: a negative-binomial mixture of prototypes (CPNN's model).

    Each sample's expression is ``L_s * r_s / sum(r_s)`` with ``r_sg = exp(alpha_g) * sum_k p_sk mu_kg +
    exp(beta_g) * mean_k(mu_kg)``: ``mu`` the prototypes (counts per cell, so ``p`` are fractions of cells),
    ``p_s = softmax(eta_s)``, optionally ``alpha_g`` a gene sensitivity shared by all samples (platform, protocol,
    TPM's length normalisation) and ``beta_g`` an ambient level, and an NB likelihood with a per-gene dispersion;
    fitted with torch L-BFGS from an NNLS start. Genes are matched by Ensembl ID or symbol; prototypes of the other
    species are used through one-to-one orthologs (:func:`mixgf.genes.orthologs`). See :doc:`/deconvolution`.

    Parameters
    ----------
    adata
        Mixtures (bulk samples or spots) × genes.
    prototypes
        From :func:`mixgf.tl.prototypes`: the reference AnnData, a :class:`~mixgf.engine.deconvolution.Prototypes`
        or its directory.
    layer
        Layer with the expression (`None`: ``X``).
    genes
        ``"all"``: every matched gene expressed in the prototypes; ``"markers"``: per type the ``n_markers`` genes
        most above every other type; or a list of gene names (of the mixture or the prototypes).
    gene_id_key
        ``var`` column of ``adata`` with Ensembl IDs (empty entries fall back to the var name).
    species
        Species of ``adata``; ``"auto"`` detects it.
    counts
        ``"raw"`` requires integer counts; ``"normalized"`` accepts linear-scale normalised values (TPM, CPM; not
        log), used as pseudo-counts on their own scale (TPM: 10^6 per sample); the fitted dispersion sets their
        noise and ``alpha`` absorbs per-gene factors such as transcript length.
    n_markers
        Genes per type with ``genes="markers"``.
    gene_sensitivity, ambient
        Fit ``alpha`` and ``beta``. Off by default: on the benchmark's pseudo-bulk and on real PBMC bulk with FACS
        fractions they made the fractions worse, because a gene sensitivity can trade a type's fraction against
        its markers' expression (see :doc:`/deconvolution`); without them the model is a plain NB mixture.
    max_iter
        L-BFGS iterations.
    seed
        Torch seed.
    device
        Torch device; `None` uses :attr:`mixgf.settings.device`.
    key_added
        Where to store the results (see Returns).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.obsm[key_added]`` : `pandas.DataFrame` (samples × types)
        Fractions of cells per type; each row sums to 1.
    ``adata.obs[key_added + "_deviance"]``, ``adata.obs[key_added + "_r"]`` : float
        NB deviance per gene used, and Pearson r of ``log1p`` fitted and measured expression, per sample.
    ``adata.var[key_added + "_alpha"]``, ``adata.var[key_added + "_beta"]`` : float
        Log gene sensitivity and log ambient level (NaN for genes not used).
    ``adata.uns[key_added]`` : dict
        ``types``, ``coverage`` (genes matched, orthologs, share of the expression on matched genes) and ``params``.

    Examples
    --------
    Prototypes from 1,800 PBMCs; ten pseudo-bulk samples made of the other 838 cells:

    >>> import anndata as ad
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> pbmc = mgf.datasets.pbmc3k()
    >>> pbmc = pbmc[pbmc.obs["cell_type"].notna()].copy()
    >>> mgf.tl.prototypes(pbmc[:1800], groupby="cell_type", min_cells=10, copy=True).uns["mixgf_prototypes"]["types"][0]
    'B cells'
    >>> ref = pbmc[:1800].copy()
    >>> mgf.tl.prototypes(ref, groupby="cell_type", min_cells=10)
    >>> rest = pbmc[1800:]
    >>> rng = np.random.default_rng(0)
    >>> groups = [rng.choice(rest.n_obs, 200) for _ in range(10)]
    >>> bulk = ad.AnnData(np.vstack([rest.X[g].sum(axis=0) for g in groups]), var=rest.var)
    >>> mgf.tl.deconvolve(bulk, ref)
    >>> bulk.obsm["mixgf_fractions"].shape, bool(np.allclose(bulk.obsm["mixgf_fractions"].sum(axis=1), 1))
    ((10, 8), True)

    Human prototypes for mouse pancreas cells pooled into one bulk sample go through one-to-one orthologs:

    >>> mouse = mgf.datasets.baron_mouse_pancreas()
    >>> mouse_bulk = ad.AnnData(np.asarray(mouse.X.sum(axis=0)), var=mouse.var)
    >>> mgf.tl.deconvolve(mouse_bulk, ref)
    >>> mouse_bulk.uns["mixgf_fractions"]["coverage"]["via_orthologs"]
    True
    """
    from ..engine._device import resolve_device

    if counts not in ("raw", "normalized"):
        msg = f"counts must be 'raw' or 'normalized', got {counts!r}."
        raise ValueError(msg)
    protos = _resolve_prototypes(prototypes)
    what = "the mixture's " + ("count matrix" if counts == "raw" else "expression matrix")
    X = _read_checked(adata, layer, counts=counts, what=what)
    p_idx, m_cols, coverage = _match_genes(protos, _gene_names(adata, gene_id_key), species)
    # mixture columns that name the same prototype gene are summed
    uniq, inv = np.unique(p_idx, return_inverse=True)
    agg = sp.csr_matrix((np.ones(len(m_cols)), (m_cols, inv)), shape=(adata.n_vars, len(uniq)))
    Y = np.asarray((X @ agg).todense())
    means = protos.means[uniq]
    expressed = means.max(axis=1) > 0
    if isinstance(genes, str):
        if genes not in ("markers", "all"):
            msg = f"genes must be 'markers', 'all' or a list of gene names, got {genes!r}."
            raise ValueError(msg)
        use = _default_genes(means, n_markers, 0.05) if genes == "markers" else expressed
    else:
        wanted = set(map(str, genes))
        name_of_col = pd.Series(adata.var_names[m_cols]).groupby(inv).agg(set)
        use = np.array([bool(wanted & (name_of_col[i] | {protos.genes[u]})) for i, u in enumerate(uniq)]) & expressed
        if not use.any():
            msg = f"none of the {len(wanted)} requested genes is matched between the mixture and the prototypes."
            raise ValueError(msg)
    total = X.sum(axis=1).A1
    coverage["n_genes_used"] = int(use.sum())
    coverage["frac_expression_on_matched_genes"] = float(Y.sum() / total.sum()) if total.sum() > 0 else 0.0
    col_tot = np.asarray(X.sum(axis=0)).ravel()
    unmatched = np.setdiff1d(np.arange(adata.n_vars), m_cols)
    top = unmatched[np.argsort(-col_tot[unmatched], kind="stable")[:_TOP_UNMATCHED]]
    coverage["top_unmatched_genes"] = [str(g) for g in adata.var_names[top]]
    if (Y[:, use].sum(axis=1) <= 0).any():
        bad = adata.obs_names[Y[:, use].sum(axis=1) <= 0][:5].tolist()
        msg = f"samples {bad} have no expression on the {int(use.sum())} genes used; remove them first."
        raise ValueError(msg)
    dev = resolve_device(device)
    t0 = logg.info(
        f"deconvolving {adata.n_obs:,} samples into {len(protos.types)} {protos.species} cell types on "
        f"{int(use.sum()):,} genes"
        + (" (through one-to-one orthologs)" if coverage["via_orthologs"] else "")
        + f" ({coverage['frac_expression_on_matched_genes']:.1%} of the expression on matched genes), on {dev}"
    )
    res = fit_deconvolution(Y[:, use], means[use], gene_sensitivity=gene_sensitivity, ambient=ambient,
                            max_iter=max_iter, seed=seed, device=dev)  # fmt: skip
    target = prepare_target(adata, copy=copy)
    target.obsm[key_added] = pd.DataFrame(res.fractions, index=target.obs_names.copy(), columns=protos.types)
    target.obs[f"{key_added}_deviance"] = res.deviance / int(use.sum())
    target.obs[f"{key_added}_r"] = res.pearson
    for name, values in (("alpha", res.alpha), ("beta", res.beta)):
        col = np.full(target.n_vars, np.nan)
        # every mixture column of a used gene gets that gene's value
        used_of_col = use[inv]
        col[m_cols[used_of_col]] = values[np.cumsum(use)[inv[used_of_col]] - 1]
        target.var[f"{key_added}_{name}"] = col
    target.uns[key_added] = {
        "types": list(protos.types),
        "coverage": coverage,
        "params": {
            "counts": counts,
            "genes": genes if isinstance(genes, str) else "list",
            "n_markers": n_markers,
            "gene_sensitivity": gene_sensitivity,
            "ambient": ambient,
            "layer": layer,
            "max_iter": max_iter,
            "seed": seed,
            "device": str(dev),
            "n_evaluations": res.history["n_evaluations"],
            "prototypes": repr(protos),
            "prototype_params": dict(protos.params),
            "mixgf_version": __version__,
        },
    }
    logg.info(
        f"    added {key_added!r} (adata.obsm), {key_added + '_deviance'!r}, {key_added + '_r'!r} (adata.obs), "
        f"{key_added + '_alpha'!r}, {key_added + '_beta'!r} (adata.var), {key_added!r} (adata.uns)",
        start=t0,
    )
    return target if copy else None

"""Gene embeddings from co-expression graphs: `gene_graph`, `train_gene_embedding`, `gene_embedding`, `evaluate_gene_embedding`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _logging as logg
from .._keys import GENE_EMBEDDING_KEY, GENE_GRAPH_KEY
from .._version import __version__
from ..engine.genegraph import GeneEmbeddingModel
from ..pp._input import check_counts_block, counts_advice, get_matrix, iter_csr_chunks
from ._utils import prepare_target

if TYPE_CHECKING:
    from anndata import AnnData

_METHODS = ("cs-core", "pearson")


def read_counts(adata: AnnData, layer: str | None, what: str, hint: str = "") -> sp.csr_matrix:
    """The matrix as CSR float64, refused unless finite, non-negative integer counts."""
    X = get_matrix(adata, layer)
    blocks = []
    for start, _, block in iter_csr_chunks(X, 4096):
        check_counts_block(
            block,
            start,
            adata.obs_names,
            adata.var_names,
            counts="raw",
            what=what,
            advice=lambda: counts_advice(adata, layer, False),
            normalized_hint=hint,
        )
        blocks.append(block.astype(np.float64))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, adata.n_vars))


def gene_keys(names: np.ndarray, species: str) -> list[str]:
    """Cross-dataset key per gene.

    The human Ensembl ID (mouse genes through one-to-one orthologs), else ``"<species>:<ID or upper-case name>"``.
    """
    from ..genes import map_to_ensembl, orthologs

    ids = map_to_ensembl(names, species).ensembl_ids
    if species == "mouse":
        to_human = dict(zip(orthologs()["mouse_id"], orthologs()["human_id"], strict=True))
        keys = [to_human.get(i) if i else None for i in ids]
        return [k or f"mouse:{i or str(n).upper()}" for k, i, n in zip(keys, ids, names, strict=True)]
    return [i or f"human:{str(n).upper()}" for i, n in zip(ids, names, strict=True)]


def gene_graph(
    adata: AnnData,
    *,
    n_top_genes: int = 1000,
    method: Literal["cs-core", "pearson"] = "cs-core",
    alpha: float = 0.005,
    edges: Literal["positive", "both"] = "positive",
    selection: Literal["hvg", "spatial"] = "hvg",
    spatial_key: str = "spatial",
    layer: str | None = None,
    gene_id_key: str | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    min_cells: int = 3,
    key_added: str = GENE_GRAPH_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Gene-gene co-expression graph of the most variable genes (MuSe-GNN's per-dataset graph).

    The ``n_top_genes`` genes with the largest variance of Pearson residuals (``selection="hvg"``) or the largest
    Moran's I of their residuals over the spots' 6 nearest neighbours (``selection="spatial"``, for spatial data)
    are connected where their co-expression has ``p < alpha``: CS-CORE on raw counts and sequencing depth (an IRLS
    moment estimator of the underlying expression's covariance, Su et al. 2023), or Pearson correlation of
    ``log1p`` counts per 10,000 (faster, blind to the depth's Poisson noise). See :doc:`/gene_graph`.

    Parameters
    ----------
    adata
        Cells (or spots) of one dataset and one species, raw counts.
    n_top_genes
        Genes in the graph (MuSe-GNN: 1,000).
    method
        ``"cs-core"`` or ``"pearson"``.
    alpha
        P-value threshold of an edge (MuSe-GNN: 0.005; uncorrected).
    edges
        ``"positive"``: only positively co-expressed pairs are edges; ``"both"``: either sign, as MuSe-GNN's
        released graphs (on PBMCs 45 % of those edges are anti-correlations, which the cosine decoder of
        :func:`train_gene_embedding` cannot tell from correlations; see :doc:`/gene_graph`).
    selection
        ``"hvg"``: highly variable genes; ``"spatial"``: spatially variable genes (needs ``obsm[spatial_key]``).
    spatial_key
        ``obsm`` key of the coordinates for ``selection="spatial"``.
    layer
        Layer with the raw counts (`None`: ``X``).
    gene_id_key
        ``var`` column with gene names or Ensembl IDs to match genes across datasets (`None`: the var names).
    species
        ``"auto"`` detects it; one AnnData must hold one species.
    min_cells
        A gene must be detected in this many cells to be selected.
    key_added
        Where to store the results (see Returns).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.varp[key_added]`` : `scipy.sparse.csr_matrix` (genes × genes)
        Binary symmetric graph among the selected genes (no self-loops).
    ``adata.varp[key_added + "_correlation"]`` : `scipy.sparse.csr_matrix`
        Co-expression estimates of all pairs of selected genes.
    ``adata.var[key_added]`` : bool, ``adata.var[key_added + "_key"]`` : str
        The selected genes, and each one's cross-dataset key (human Ensembl ID; for mouse genes the one-to-one
        human ortholog's ID).
    ``adata.uns[key_added]`` : dict
        ``genes`` (names, in graph order), ``species``, ``n_edges``, ``mean_degree``, ``n_iter`` and ``params``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.tl.gene_graph(adata, n_top_genes=300)
    >>> adata.varp["mixgf_gene_graph"].shape, int(adata.var["mixgf_gene_graph"].sum())
    ((16634, 16634), 300)
    >>> genes = adata.uns["mixgf_gene_graph"]["genes"]
    >>> "CD79A" in genes and "CD79B" in genes
    True
    >>> i, j = adata.var_names.get_loc("CD79A"), adata.var_names.get_loc("CD79B")
    >>> bool(adata.varp["mixgf_gene_graph"][i, j] == 1)
    True
    """
    from ..engine.genegraph import adjacency_from_pvalues, cscore, pearson_coexpression, select_genes
    from ..genes import detect_species

    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}."
        raise ValueError(msg)
    if selection not in ("hvg", "spatial"):
        msg = f"selection must be 'hvg' or 'spatial', got {selection!r}."
        raise ValueError(msg)
    if edges not in ("positive", "both"):
        msg = f"edges must be 'positive' or 'both', got {edges!r}."
        raise ValueError(msg)
    if not 0 < alpha < 1:
        msg = f"alpha must be in (0, 1), got {alpha}."
        raise ValueError(msg)
    coords = None
    if selection == "spatial":
        if spatial_key not in adata.obsm:
            msg = f"selection='spatial' needs coordinates in adata.obsm[{spatial_key!r}]; pass spatial_key=."
            raise KeyError(msg)
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    names = adata.var_names.to_numpy(dtype=object)
    if gene_id_key is not None:
        if gene_id_key not in adata.var.columns:
            msg = f"gene_id_key={gene_id_key!r} is not a column of adata.var; columns: {adata.var.columns.tolist()}."
            raise KeyError(msg)
        names = np.where(adata.var[gene_id_key].astype(str).isin(["", "nan"]), names, adata.var[gene_id_key])
    found = detect_species(names, species)  # refuses genes of mixed species
    hint = (
        "CS-CORE models raw counts and sequencing depth; it cannot use normalised values."
        if method == "cs-core"
        else ""
    )
    X = read_counts(adata, layer, f"the count matrix for method={method!r}", hint)
    depth = np.asarray(X.sum(axis=1)).ravel()
    if (depth <= 0).any():
        msg = f"{int((depth <= 0).sum())} cells have no counts; remove them first (e.g. sc.pp.filter_cells)."
        raise ValueError(msg)
    t0 = logg.info(f"co-expression graph ({method}) of {n_top_genes} {selection} genes over {adata.n_obs:,} cells")
    idx, _ = select_genes(X, n_top_genes, min_cells=min_cells, coords=coords)
    sub = X[:, idx]
    if method == "cs-core":
        res = cscore(sub, depth)
    else:
        res = pearson_coexpression(np.log1p(sub.multiply(1e4 / depth[:, None]).toarray()))
    adj = adjacency_from_pvalues(res, alpha, positive_only=edges == "positive")
    embed = sp.csr_matrix(
        (np.ones(len(idx), dtype=np.float32), (idx, np.arange(len(idx)))), shape=(adata.n_vars, len(idx))
    )
    target = prepare_target(adata, copy=copy)
    target.varp[key_added] = sp.csr_matrix(embed @ adj @ embed.T)
    corr = sp.coo_matrix(res.correlation.astype(np.float32))
    target.varp[f"{key_added}_correlation"] = sp.csr_matrix(
        (corr.data, (idx[corr.row], idx[corr.col])), shape=(adata.n_vars, adata.n_vars)
    )
    used = np.zeros(adata.n_vars, dtype=bool)
    used[idx] = True
    target.var[key_added] = used
    keys = np.full(adata.n_vars, "", dtype=object)
    keys[idx] = gene_keys(names[idx], found)
    target.var[f"{key_added}_key"] = keys.astype(str)
    target.uns[key_added] = {
        "genes": [str(g) for g in adata.var_names[idx]],
        "species": found,
        "n_edges": int(adj.nnz // 2),
        "mean_degree": float(adj.nnz / len(idx)),
        "n_iter": int(res.n_iter),
        "params": {
            "n_top_genes": n_top_genes,
            "method": method,
            "alpha": alpha,
            "edges": edges,
            "selection": selection,
            "layer": layer or "",
            "gene_id_key": gene_id_key or "",
            "min_cells": min_cells,
            "n_cells": int(adata.n_obs),
            "mixgf_version": __version__,
        },
    }
    logg.info(
        f"    {adj.nnz // 2:,} edges (mean degree {adj.nnz / len(idx):.1f}); added {key_added!r}, "
        f"{key_added + '_correlation'!r} (adata.varp), {key_added!r}, {key_added + '_key'!r} (adata.var), "
        f"{key_added!r} (adata.uns)",
        start=t0,
    )
    return target if copy else None


def graph_inputs(adata: AnnData, graph_key: str, name: str) -> tuple[np.ndarray, list[str], str, str | None]:
    """Positions of the graph genes (graph order), their keys, the species and the counts layer of a dataset."""
    if graph_key not in adata.uns or graph_key not in adata.varp:
        msg = f"dataset {name!r} has no gene graph under {graph_key!r}: run mgf.tl.gene_graph(adata) first."
        raise KeyError(msg)
    info = adata.uns[graph_key]
    pos = adata.var_names.get_indexer(pd.Index(info["genes"]))
    if (pos < 0).any():
        msg = f"dataset {name!r}: genes of its graph are missing from adata.var_names; run mgf.tl.gene_graph again."
        raise ValueError(msg)
    keys = adata.var[f"{graph_key}_key"].to_numpy()[pos].astype(str).tolist()
    return pos, keys, str(info["species"]), info["params"].get("layer") or None


def _named(adatas: Sequence[AnnData] | Mapping[str, AnnData], keys: Sequence[str] | None) -> dict[str, AnnData]:
    if isinstance(adatas, Mapping):
        if keys is not None:
            msg = "pass dataset names either as the keys of a dict of AnnData or as keys=, not both."
            raise ValueError(msg)
        return {str(k): v for k, v in adatas.items()}
    adatas = list(adatas)
    names = [f"dataset_{i}" for i in range(len(adatas))] if keys is None else [str(k) for k in keys]
    if len(names) != len(adatas) or len(set(names)) != len(names):
        msg = f"keys must be {len(adatas)} unique dataset names, got {names}."
        raise ValueError(msg)
    return dict(zip(names, adatas, strict=True))


def train_gene_embedding(
    adatas: Sequence[AnnData] | Mapping[str, AnnData],
    *,
    keys: Sequence[str] | None = None,
    group_by: Sequence[str] | Mapping[str, str] | None = None,
    graph_key: str = GENE_GRAPH_KEY,
    epochs: int = 100,
    lr: float = 1e-3,
    lambda_con: float = 0.01,
    tau: float = 0.07,
    holdout: float = 0.1,
    dim: int = 32,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
) -> GeneEmbeddingModel:
    """Train MuSe-GNN's gene embedding on the co-expression graphs of several datasets (and species).

    Each dataset's first graph-transformer layer reads its own cells (Pearson residuals of the graph genes); the
    next layers are shared within a group (modality / tissue). The loss reconstructs each graph, pulls a gene
    together with itself in another dataset (weighted by the Jaccard overlap of its neighbours in the two graphs;
    across species, one-to-one orthologs are the same gene) and contrasts genes found in only one dataset with a
    graph neighbour (NT-Xent, ``tau``). ``holdout`` of each graph's edges, and as many non-edges, are hidden for
    :func:`evaluate_gene_embedding`. See :doc:`/gene_graph`.

    Parameters
    ----------
    adatas
        Datasets after :func:`gene_graph`, as a list (names from ``keys``) or a dict name -> AnnData.
    keys
        Dataset names for a list (default ``dataset_0``, ``dataset_1``, ...).
    group_by
        Group (e.g. ``"scrna_pbmc"``, ``"spatial_breast"``) of each dataset, as a list or a dict; `None`: one group.
    graph_key
        ``key_added`` of :func:`gene_graph`.
    epochs
        Passes over the datasets (one optimiser step per dataset and epoch).
    lr
        Adam learning rate.
    lambda_con, tau
        Weight and temperature of the contrastive term (MuSe-GNN: 0.01, 0.07).
    holdout
        Fraction of each graph's edges hidden from training (0 to train on all).
    dim
        Embedding size (MuSe-GNN: 32).
    seed
        Seeds the split, sampling and weights: the same inputs and seed give the same model on one device.
    device
        Torch device; `None` uses :attr:`mixgf.settings.device` (a GPU when there is one).
    progress
        Progress bar; `None` follows :attr:`mixgf.settings.progress_bar`.

    Returns
    -------
    mixgf.engine.genegraph.GeneEmbeddingModel
        The embeddings of every dataset's graph genes, the held-out pairs, weights and training history.

    Examples
    --------
    >>> import mixgf as mgf
    >>> human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    >>> for adata in (human, mouse):
    ...     mgf.tl.gene_graph(adata, n_top_genes=200)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
    >>> model
    GeneEmbeddingModel(2 datasets (human, mouse), 32-d gene embeddings)
    >>> mgf.tl.gene_embedding(human, model)
    >>> human.varm["X_mixgf_gene"].shape
    (16634, 32)
    """
    from .._settings import settings
    from ..engine._device import resolve_device
    from ..engine.genegraph import GeneGraph, pearson_residuals, train_gene_graphs

    named = _named(adatas, keys)
    names = list(named)
    if isinstance(group_by, Mapping):
        missing = [n for n in names if n not in group_by]
        if missing:
            msg = f"group_by has no group for the datasets {missing}."
            raise KeyError(msg)
        groups = [str(group_by[n]) for n in names]
    else:
        groups = ["all"] * len(names) if group_by is None else [str(g) for g in group_by]
        if len(groups) != len(names):
            msg = f"group_by must give one group per dataset ({len(names)}), got {len(groups)}."
            raise ValueError(msg)
    group_names = list(dict.fromkeys(groups))
    graphs, species, genes = [], [], []
    for name, adata in named.items():
        pos, gkeys, sp_, layer = graph_inputs(adata, graph_key, name)
        X = read_counts(adata, layer, f"the count matrix of dataset {name!r}")
        feats = pearson_residuals(X, pos).T
        adj = adata.varp[graph_key][pos][:, pos]
        graphs.append(GeneGraph(feats, adj, gkeys, group_names.index(groups[len(graphs)])))
        species.append(sp_)
        genes.append(adata.var_names[pos].astype(str).tolist())
    key_sets = [set(g.keys) for g in graphs]
    if len(graphs) > 1:
        alone = [
            n for i, n in enumerate(names) if not any(key_sets[i] & key_sets[j] for j in range(len(names)) if j != i)
        ]
        if alone:
            msg = (
                f"the datasets {alone} share no gene with any other dataset, so their embeddings cannot be aligned. "
                "Check the species and gene names (gene_id_key= in mgf.tl.gene_graph) or train them separately."
            )
            raise ValueError(msg)
    dev = resolve_device(device)
    show = settings.progress_bar if progress is None else progress
    t0 = logg.info(f"training gene embeddings on {len(graphs)} graphs in {len(group_names)} groups on {dev}")
    res = train_gene_graphs(
        graphs,
        n_groups=len(group_names),
        epochs=epochs,
        lr=lr,
        lambda_con=lambda_con,
        tau=tau,
        holdout=holdout,
        hidden=32,
        d_out=dim,
        seed=seed,
        device=dev,
        progress=bool(show),
    )
    params = {
        "epochs": epochs,
        "lr": lr,
        "lambda_con": lambda_con,
        "tau": tau,
        "holdout": holdout,
        "dim": dim,
        "hidden": 32,
        "seed": seed,
        "graph_key": graph_key,
        "history": res.history,
        "graph_params": {n: dict(named[n].uns[graph_key]["params"]) for n in names},
        "mixgf_version": __version__,
    }
    model = GeneEmbeddingModel(
        datasets=names,
        groups=groups,
        species=species,
        genes=genes,
        keys=[g.keys for g in graphs],
        embeddings=res.embeddings,
        n_cells=[g.features.shape[1] for g in graphs],
        heldout=res.heldout,
        weights={k: v.numpy() for k, v in res.state_dict.items()},
        params=params,
    )
    logg.info(f"    trained {model!r} in {res.history['seconds']:.1f} s", start=t0)
    return model


def gene_embedding(
    adata: AnnData,
    model: GeneEmbeddingModel | str,
    *,
    dataset: str | None = None,
    graph_key: str = GENE_GRAPH_KEY,
    key_added: str = GENE_EMBEDDING_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Write a dataset's gene embeddings from a trained :class:`~mixgf.engine.genegraph.GeneEmbeddingModel`.

    The first layer of the model is specific to each training dataset (its input is that dataset's cells), so
    this looks up the embedding the model learnt for ``adata``: the dataset named ``dataset``, or the one whose
    graph genes and number of cells match ``adata``'s.

    Parameters
    ----------
    adata
        One of the training datasets.
    model
        The model or its directory.
    dataset
        Name of the dataset in the model; `None` finds it.
    graph_key
        ``key_added`` of :func:`gene_graph`, used to find the dataset.
    key_added
        ``varm`` key of the embeddings.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    `None`, or a copy when ``copy=True``, with

    ``adata.varm[key_added]`` : `numpy.ndarray` (float32, genes × dim)
        The embedding of each graph gene; NaN for the other genes.
    ``adata.uns[key_added]["params"]`` : dict
        The dataset's name and the model's training parameters.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.tl.gene_graph(adata, n_top_genes=100)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": adata}, epochs=2, progress=False)
    >>> mgf.tl.gene_embedding(adata, model)
    >>> int(adata.uns["mixgf_gene_graph"]["params"]["n_top_genes"]), adata.varm["X_mixgf_gene"].shape
    (100, (16634, 32))
    """
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = GeneEmbeddingModel.load(model)
    if dataset is None:
        info = adata.uns.get(graph_key, {})
        hits = [
            d
            for d, g, n in zip(model.datasets, model.genes, model.n_cells, strict=True)
            if list(info.get("genes", [])) == g and n == adata.n_obs
        ]
        if len(hits) != 1:
            what = "no dataset" if not hits else f"several datasets ({hits})"
            msg = (
                f"{what} of the model match this AnnData's graph genes and cells; pass dataset= one of "
                f"{model.datasets}."
            )
            raise ValueError(msg)
        dataset = hits[0]
    i = model.index(dataset)
    pos = adata.var_names.get_indexer(pd.Index(model.genes[i]))
    if (pos < 0).all():
        msg = f"none of the genes of dataset {dataset!r} is in adata.var_names; is this the right AnnData?"
        raise ValueError(msg)
    emb = np.full((adata.n_vars, model.embeddings[i].shape[1]), np.nan, dtype=np.float32)
    emb[pos[pos >= 0]] = model.embeddings[i][pos >= 0]
    target = prepare_target(adata, copy=copy)
    target.varm[key_added] = emb
    params = {k: v for k, v in model.params.items() if k not in ("history", "graph_params")}
    target.uns[key_added] = {"params": {"dataset": dataset, "model": repr(model), **params}}
    logg.info(f"    added {key_added!r} (adata.varm) for {int((pos >= 0).sum()):,} genes of dataset {dataset!r}")
    return target if copy else None


def _markers(adata: AnnData, X: sp.csr_matrix, pos: np.ndarray, groupby: str, n_markers: int) -> list[np.ndarray]:
    """Per cell type the graph-gene rows of its top ``n_markers`` Wilcoxon markers (log1p counts per 10,000)."""
    import anndata as ad
    import scanpy as sc

    labels = adata.obs[groupby]
    ok = labels.notna().to_numpy()
    counts = labels[ok].astype(str).value_counts()
    keep_types = counts.index[counts >= 3]
    ok &= labels.astype(str).isin(keep_types).to_numpy()
    if len(keep_types) < 2:
        return []
    sub = X[np.flatnonzero(ok)][:, pos]
    depth = np.asarray(X[np.flatnonzero(ok)].sum(axis=1)).ravel()
    tmp = ad.AnnData(
        sp.csr_matrix(sub.multiply(1e4 / depth[:, None]).log1p()),
        obs=pd.DataFrame(
            {"g": pd.Categorical(labels[ok].astype(str).to_numpy())}, index=[str(i) for i in range(len(depth))]
        ),
        var=pd.DataFrame(index=[str(i) for i in range(len(pos))]),
    )
    sc.tl.rank_genes_groups(tmp, "g", method="wilcoxon", n_genes=n_markers)
    names = pd.DataFrame(tmp.uns["rank_genes_groups"]["names"])
    return [names[c].astype(int).to_numpy() for c in names.columns]


def evaluate_gene_embedding(
    adatas: Sequence[AnnData] | Mapping[str, AnnData],
    model: GeneEmbeddingModel | str | None = None,
    *,
    keys: Sequence[str] | None = None,
    embeddings: Mapping[str, str] | None = None,
    baselines: Sequence[Literal["pca", "coexpression"]] = ("pca", "coexpression"),
    groupby: str | None = None,
    n_markers: int = 20,
    n_pcs: int = 32,
    graph_key: str = GENE_GRAPH_KEY,
    seed: int = 0,
) -> pd.DataFrame:
    """Score gene embeddings of several datasets on the same genes: the model's, ``varm`` ones and baselines.

    Four metrics, each over the graph genes of :func:`gene_graph`:

    - ``heldout_edge_auc`` (per dataset): AUC of the cosine similarity on the model's held-out edges against as
      many held-out non-edges (needs ``model``; out of sample, unlike MuSe-GNN's in-sample edge AUC);
    - ``consistency_top1`` (per pair of same-species datasets): share of the shared genes whose most similar gene
      in the other dataset is itself (MuSe-GNN's family of metrics);
    - ``ortholog_recall@1`` / ``@10`` (per human-mouse pair): share of one-to-one orthologs found among the 1 / 10
      mouse genes most similar to the human gene;
    - ``marker_pair_auc`` (per labelled dataset): AUC of the similarity of gene pairs that are top markers of the
      same cell type (Wilcoxon, ``n_markers`` per type) against random gene pairs.

    Baselines: ``"pca"``, the genes' scores on the first ``n_pcs`` principal components of the genes x cells
    Pearson residuals (genes as observations, MuSe-GNN's PCA baseline), compared across datasets after an
    orthogonal Procrustes rotation fitted on the shared genes; ``"coexpression"``, each gene's row of the
    co-expression matrix (held-out pairs and the diagonal set to 0), compared across datasets on the shared genes'
    columns.

    Parameters
    ----------
    adatas
        Datasets after :func:`gene_graph`, as a list or a dict name -> AnnData.
    model
        A trained model (or its directory) whose dataset names are the dataset names here.
    keys
        Dataset names for a list (default: the model's datasets, in order).
    embeddings
        More embeddings to score: method name -> ``varm`` key (e.g. ``{"mixgf static": "mixgf_genes"}`` from
        :func:`mixgf.tl.embed_genes`); datasets without the key are skipped for that method.
    baselines
        Baselines to compute.
    groupby
        ``obs`` column with cell types for ``marker_pair_auc`` (datasets without it are skipped).
    n_markers
        Markers per cell type.
    n_pcs
        Components of the PCA baseline.
    graph_key
        ``key_added`` of :func:`gene_graph`.
    seed
        Seeds the random gene pairs.

    Returns
    -------
    pandas.DataFrame
        One row per method, metric and dataset (pair): ``method``, ``metric``, ``dataset``, ``other``, ``value``,
        ``n``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    >>> for adata in (human, mouse):
    ...     mgf.tl.gene_graph(adata, n_top_genes=200)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
    >>> table = mgf.tl.evaluate_gene_embedding({"pbmc": human, "pancreas": mouse}, model, groupby="cell_type")
    >>> sorted(table["metric"].unique())
    ['heldout_edge_auc', 'marker_pair_auc', 'ortholog_recall@1', 'ortholog_recall@10']
    """
    from ..engine.genegraph import evaluation_table, pearson_residuals

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = GeneEmbeddingModel.load(model)
    if model is not None and keys is None and not isinstance(adatas, Mapping):
        keys = model.datasets
    named = _named(adatas, keys)
    bad = [b for b in baselines if b not in ("pca", "coexpression")]
    if bad:
        msg = f"unknown baselines {bad}; choose from 'pca' and 'coexpression'."
        raise ValueError(msg)
    names = list(named)
    methods: dict[str, tuple[str, list]] = {}
    gkeys, species, heldout, markers = [], [], [], []
    if model is not None:
        methods["muse-gnn"] = ("shared", [])
    for b in baselines:
        methods[b] = ("procrustes" if b == "pca" else "coexpression", [])
    for m in embeddings or {}:
        methods[m] = ("shared", [])
    for name, adata in named.items():
        pos, k, sp_, layer = graph_inputs(adata, graph_key, name)
        gkeys.append(k)
        species.append(sp_)
        held = (np.zeros((0, 2), dtype=np.int64),) * 2
        if model is not None:
            i = model.index(name)
            if model.genes[i] != adata.var_names[pos].astype(str).tolist():
                msg = f"dataset {name!r}: its graph genes differ from the model's; was the graph recomputed?"
                raise ValueError(msg)
            methods["muse-gnn"][1].append(model.embeddings[i])
            held = model.heldout[i]
        heldout.append(held)
        X = read_counts(adata, layer, f"the count matrix of dataset {name!r}")
        if "pca" in baselines:
            R = pearson_residuals(X, pos).T.astype(np.float64)
            u, s, _ = np.linalg.svd(R - R.mean(axis=0), full_matrices=False)
            methods["pca"][1].append(u[:, :n_pcs] * s[:n_pcs])
        if "coexpression" in baselines:
            C = np.nan_to_num(adata.varp[f"{graph_key}_correlation"][pos][:, pos].toarray())
            np.fill_diagonal(C, 0.0)
            for pairs in held:
                C[pairs[:, 0], pairs[:, 1]] = C[pairs[:, 1], pairs[:, 0]] = 0.0
            methods["coexpression"][1].append(C)
        for m, vk in (embeddings or {}).items():
            methods[m][1].append(np.asarray(adata.varm[vk], dtype=np.float64)[pos] if vk in adata.varm else None)
        markers.append(_markers(adata, X, pos, groupby, n_markers) if groupby and groupby in adata.obs else None)
    return evaluation_table(methods, names, gkeys, species, heldout if model is not None else None, markers, seed=seed)

"""Plots of gene embeddings across datasets: similarity heatmap / network of query genes, and a gene UMAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._keys import GENE_EMBEDDING_KEY
from .._utils._docs import doc_params
from ..get._gene_graph import gene_embeddings
from ..get._gene_graph import gene_similarity as _similarity
from ._utils import finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _network(table: pd.DataFrame, top: int, ax: Any) -> None:
    import matplotlib.pyplot as plt
    import networkx as nx

    hits = table[(table["rank"] <= top) | table["same_gene"]]
    g = nx.Graph()
    for r in hits.itertuples(index=False):
        src = f"{r.query} ({r.query_dataset})"
        dst = f"{r.gene} ({r.dataset})"
        if src != dst:
            g.add_edge(src, dst, weight=max(float(r.similarity), 0.0))
    pos = nx.spring_layout(g, seed=0, weight="weight")
    datasets = sorted({n.rsplit(" (", 1)[1][:-1] for n in g.nodes})
    cmap = plt.get_cmap("tab10" if len(datasets) <= 10 else "tab20")
    colour = {d: cmap(i % cmap.N) for i, d in enumerate(datasets)}
    for u, v, w in g.edges(data="weight"):
        ax.plot(*np.array([pos[u], pos[v]]).T, color="0.6", lw=0.4 + 2 * w, zorder=1)
    queries = {f"{q}" for q in table["query"]}
    for n, (x, y) in pos.items():
        gene, d = n.rsplit(" (", 1)
        is_query = gene in queries
        ax.scatter(
            x, y, s=80 if is_query else 30, color=colour[d[:-1]], edgecolor="k" if is_query else "none", zorder=2
        )
        ax.annotate(gene, (x, y), fontsize=7 if is_query else 6, ha="center", va="bottom", zorder=3)
    for d in datasets:
        ax.scatter([], [], color=colour[d], label=d, s=30)
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_axis_off()


@doc_params("doc_show", "doc_plot_returns")
def gene_similarity(
    source: Any,
    genes: str | Sequence[str],
    *,
    kind: Literal["heatmap", "network"] = "heatmap",
    top: int = 5,
    species: str | None = None,
    key: str = GENE_EMBEDDING_KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Similarity of query genes across datasets: a heatmap among their copies, or a network of their top hits.

    ``"heatmap"``: the cosine similarity between every copy of the query genes (one row and column per gene and
    dataset that has it); a gene that means the same in every dataset shows as a bright block. ``"network"``: each
    query copy linked to its ``top`` most similar genes in every dataset and to its own copies, laid out by a
    spring layout (seeded), coloured by dataset.

    Parameters
    ----------
    source
        A :class:`~mixgf.engine.genegraph.GeneEmbeddingModel`, or a dict name -> AnnData after
        :func:`mixgf.tl.gene_embedding`.
    genes
        Query genes (names in any case, or human Ensembl IDs).
    kind
        ``"heatmap"`` or ``"network"``.
    top
        Hits per query and dataset in the network.
    species
        Only datasets of this species.
    key
        ``varm`` key of the embeddings (AnnData input).
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    >>> import mixgf as mgf
    >>> human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    >>> for adata in (human, mouse):
    ...     mgf.tl.gene_graph(adata, n_top_genes=200)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
    >>> ax = mgf.pl.gene_similarity(model, ["CD74", "HLA-DRA", "LYZ"], show=False)
    """
    import matplotlib.pyplot as plt

    if kind not in ("heatmap", "network"):
        msg = f"kind must be 'heatmap' or 'network', got {kind!r}."
        raise ValueError(msg)
    queries = [genes] if isinstance(genes, str) else list(genes)
    table = _similarity(source, queries, species=species, top=None if kind == "heatmap" else top, key=key)
    if ax is None:
        size = (6, 5) if kind == "heatmap" else (7, 6)
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    if kind == "network":
        _network(table, top, ax)
        return finish(fig, ax, show=show, return_fig=return_fig)
    query_keys = table.loc[table["same_gene"], ["query", "key"]].drop_duplicates()
    key_to_query = dict(zip(query_keys["key"], query_keys["query"], strict=True))
    sub = table[table["key"].isin(key_to_query)]
    sub = sub.assign(
        row=sub["query"] + " · " + sub["query_dataset"], col=sub["key"].map(key_to_query) + " · " + sub["dataset"]
    )
    mat = sub.pivot_table(index="row", columns="col", values="similarity", aggfunc="first")
    order = sorted(mat.index, key=lambda s: (queries.index(s.split(" · ")[0]), s))
    mat = mat.reindex(index=order, columns=order)
    im = ax.imshow(mat.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    fig.colorbar(im, ax=ax, label="cosine similarity", shrink=0.8)
    ax.set_title("gene similarity across datasets", fontsize=9)
    return finish(fig, ax, show=show, return_fig=return_fig)


@doc_params("doc_show", "doc_plot_returns")
def gene_umap(
    source: Any,
    *,
    color: Literal["dataset", "species", "group"] | Sequence[str] = "dataset",
    n_neighbors: int = 15,
    seed: int = 0,
    key: str = GENE_EMBEDDING_KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """UMAP of the gene embeddings of every dataset, one point per (dataset, gene).

    The UMAP is computed here with scanpy on the stacked embeddings (cosine neighbours, seeded).

    Parameters
    ----------
    source
        A :class:`~mixgf.engine.genegraph.GeneEmbeddingModel`, or a dict name -> AnnData after
        :func:`mixgf.tl.gene_embedding`.
    color
        ``"dataset"``, ``"species"`` or ``"group"``; or a gene set (names or human Ensembl IDs): its genes, in
        every dataset, are drawn on top in colour.
    n_neighbors
        Neighbours of the UMAP graph.
    seed
        UMAP random state.
    key
        ``varm`` key of the embeddings (AnnData input).
    {doc_show}

    Returns
    -------
    {doc_plot_returns}

    Examples
    --------
    >>> import mixgf as mgf
    >>> human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    >>> for adata in (human, mouse):
    ...     mgf.tl.gene_graph(adata, n_top_genes=200)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
    >>> ax = mgf.pl.gene_umap(model, color="species", show=False)
    """
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc

    df = gene_embeddings(source, key=key)
    meta = df[["dataset", "group", "species", "gene", "key"]].astype(str)
    emb = df.drop(columns=meta.columns).to_numpy(dtype=np.float32)
    tmp = ad.AnnData(emb, obs=meta.set_index(pd.Index([f"{i}" for i in range(len(df))])))
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep="X", metric="cosine", random_state=seed)
    sc.tl.umap(tmp, random_state=seed)
    xy = tmp.obsm["X_umap"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    if isinstance(color, str) and color in ("dataset", "species", "group"):
        cats = sorted(meta[color].unique())
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        for i, c in enumerate(cats):
            m = (meta[color] == c).to_numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % cmap.N), label=c, rasterized=True)
        ax.legend(fontsize=7, markerscale=3, frameon=False, title=color, title_fontsize=8)
    else:
        wanted = {str(g).lower() for g in ([color] if isinstance(color, str) else color)}
        hit = (meta["gene"].str.lower().isin(wanted) | meta["key"].str.lower().isin(wanted)).to_numpy()
        if not hit.any():
            msg = f"none of the genes {sorted(wanted)[:10]} is in the embeddings."
            raise KeyError(msg)
        ax.scatter(xy[~hit, 0], xy[~hit, 1], s=3, color="0.85", rasterized=True)
        ax.scatter(xy[hit, 0], xy[hit, 1], s=14, color="tab:red", label=f"gene set ({int(hit.sum())} genes x datasets)")
        ax.legend(fontsize=7, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    return finish(fig, ax, show=show, return_fig=return_fig)

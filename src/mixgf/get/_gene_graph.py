"""`mixgf.get.gene_similarity` and `mixgf.get.gene_embeddings`: tidy tables of gene embeddings across datasets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._keys import GENE_EMBEDDING_KEY, GENE_GRAPH_KEY

if TYPE_CHECKING:
    from anndata import AnnData

    from ..engine.genegraph import GeneEmbeddingModel


def _parts(
    source: GeneEmbeddingModel | Mapping[str, AnnData], key: str, graph_key: str
) -> tuple[list[str], list[str], list[str], list[list[str]], list[list[str]], list[np.ndarray]]:
    """(datasets, groups, species, genes, keys, embeddings) of a model or of AnnDatas with ``varm[key]``."""
    if hasattr(source, "embeddings") and hasattr(source, "keys") and hasattr(source, "datasets"):
        m: Any = source
        return list(m.datasets), list(m.groups), list(m.species), m.genes, m.keys, m.embeddings
    if not isinstance(source, Mapping):
        msg = "pass a GeneEmbeddingModel or a dict name -> AnnData (after mgf.tl.gene_embedding)."
        raise TypeError(msg)
    out: tuple[list, ...] = ([], [], [], [], [], [])
    for name, adata in source.items():
        if key not in adata.varm:
            msg = f"dataset {name!r} has no adata.varm[{key!r}]: run mgf.tl.gene_embedding(adata, model) first."
            raise KeyError(msg)
        emb = np.asarray(adata.varm[key], dtype=np.float32)
        ok = np.isfinite(emb).all(axis=1)
        keys_col = f"{graph_key}_key"
        keys = adata.var[keys_col].astype(str).to_numpy() if keys_col in adata.var else adata.var_names.to_numpy()
        info = adata.uns.get(graph_key, {})
        for lst, value in zip(
            out,
            (
                str(name),
                "",
                str(info.get("species", "")),
                adata.var_names[ok].astype(str).tolist(),
                [str(k) for k in keys[ok]],
                emb[ok],
            ),
        ):
            lst.append(value)
    return out  # type: ignore[return-value]


def gene_similarity(
    source: GeneEmbeddingModel | Mapping[str, AnnData],
    genes: str | Sequence[str],
    *,
    species: str | None = None,
    top: int | None = 20,
    key: str = GENE_EMBEDDING_KEY,
    graph_key: str = GENE_GRAPH_KEY,
) -> pd.DataFrame:
    """The genes most similar to each query gene, in every dataset and species.

    Similarity is the cosine of the gene embeddings. A query matches a gene by name (any case) or by its
    cross-dataset key (a human Ensembl ID), so ``"CD74"`` also finds mouse ``Cd74``; the query's own gene (or
    ortholog) in each dataset is flagged ``same_gene``.

    Parameters
    ----------
    source
        A :class:`~mixgf.engine.genegraph.GeneEmbeddingModel`, or a dict name -> AnnData after
        :func:`mixgf.tl.gene_embedding`.
    genes
        Query genes.
    species
        Only hits in datasets of this species (``"human"``, ``"mouse"``); `None`: all.
    top
        Hits per (query, query dataset, dataset); `None`: every gene.
    key
        ``varm`` key of the embeddings (AnnData input).
    graph_key
        ``key_added`` of :func:`mixgf.tl.gene_graph` (AnnData input: the genes' keys and species).

    Returns
    -------
    pandas.DataFrame
        Columns ``query``, ``query_dataset``, ``dataset``, ``species``, ``rank`` (1 = most similar), ``gene``,
        ``key``, ``similarity``, ``same_gene``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> human, mouse = mgf.datasets.pbmc3k(), mgf.datasets.baron_mouse_pancreas()
    >>> for adata in (human, mouse):
    ...     mgf.tl.gene_graph(adata, n_top_genes=200)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": human, "pancreas": mouse}, epochs=5, progress=False)
    >>> hits = mgf.get.gene_similarity(model, ["CD74"], top=5)
    >>> hits.columns.tolist()[:5]
    ['query', 'query_dataset', 'dataset', 'species', 'rank']
    >>> sorted(hits["dataset"].unique())
    ['pancreas', 'pbmc']
    """
    from ..engine.genegraph import most_similar

    datasets, _, sp, names, keys, emb = _parts(source, key, graph_key)
    queries = [genes] if isinstance(genes, str) else list(genes)
    n_max = max((len(g) for g in names), default=0)
    table = most_similar(emb, names, keys, datasets, sp, queries, top=n_max if top is None else top)
    if species is not None:
        table = table[table["species"] == species].reset_index(drop=True)
    missing = [q for q in queries if q not in set(table["query"])]
    if len(missing) == len(queries):
        msg = f"none of the genes {queries[:10]} is in any dataset's embedding (names or Ensembl IDs of graph genes)."
        raise KeyError(msg)
    return table


def gene_embeddings(
    source: GeneEmbeddingModel | Mapping[str, AnnData],
    *,
    key: str = GENE_EMBEDDING_KEY,
    graph_key: str = GENE_GRAPH_KEY,
) -> pd.DataFrame:
    """Every dataset's gene embeddings stacked, one row per (dataset, gene).

    Parameters
    ----------
    source
        A :class:`~mixgf.engine.genegraph.GeneEmbeddingModel`, or a dict name -> AnnData after
        :func:`mixgf.tl.gene_embedding`.
    key
        ``varm`` key of the embeddings (AnnData input).
    graph_key
        ``key_added`` of :func:`mixgf.tl.gene_graph` (AnnData input).

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset``, ``group``, ``species``, ``gene``, ``key``, then the dimensions ``0 .. d-1``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.tl.gene_graph(adata, n_top_genes=100)
    >>> model = mgf.tl.train_gene_embedding([adata], keys=["pbmc"], epochs=2, progress=False)
    >>> mgf.get.gene_embeddings(model).shape
    (100, 37)
    """
    datasets, groups, sp, names, keys, emb = _parts(source, key, graph_key)
    parts = []
    for d, g, s, n, k, e in zip(datasets, groups, sp, names, keys, emb, strict=True):
        df = pd.DataFrame(np.asarray(e))
        meta = pd.DataFrame({"dataset": d, "group": g, "species": s, "gene": n, "key": k})
        parts.append(pd.concat([meta, df], axis=1))
    return pd.concat(parts, ignore_index=True)

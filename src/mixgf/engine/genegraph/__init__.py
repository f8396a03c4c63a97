"""Gene embeddings from co-expression graphs across datasets and species (MuSe-GNN; numpy / scipy / torch).

No AnnData here: the AnnData side is :func:`mixgf.tl.gene_graph`, :func:`mixgf.tl.train_gene_embedding`,
:func:`mixgf.tl.gene_embedding` and :func:`mixgf.tl.evaluate_gene_embedding`. Torch is imported only by the
training (:mod:`mixgf.engine.genegraph._model` holds the network).
"""

from __future__ import annotations

from ._coexpression import (
    CoexpressionResult,
    adjacency_from_pvalues,
    cscore,
    moran_i,
    pearson_coexpression,
    pearson_residuals,
    select_genes,
)
from ._metrics import (
    auc,
    cross_dataset_consistency,
    evaluation_table,
    heldout_edge_auc,
    marker_pair_auc,
    most_similar,
    ortholog_recall,
    procrustes_align,
)
from ._store import GeneEmbeddingModel
from ._train import GeneGraph, TrainResult, jaccard_weights, split_edges, train_gene_graphs

__all__ = [
    "CoexpressionResult",
    "GeneEmbeddingModel",
    "GeneGraph",
    "TrainResult",
    "adjacency_from_pvalues",
    "auc",
    "cross_dataset_consistency",
    "cscore",
    "evaluation_table",
    "heldout_edge_auc",
    "jaccard_weights",
    "marker_pair_auc",
    "moran_i",
    "most_similar",
    "ortholog_recall",
    "pearson_coexpression",
    "pearson_residuals",
    "procrustes_align",
    "select_genes",
    "split_edges",
    "train_gene_graphs",
]

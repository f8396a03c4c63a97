"""Tools: AnnData -> batches -> model -> results written back under documented keys."""

from __future__ import annotations

from ._classify import classify, train_classifier
from ._deconvolve import deconvolve, prototypes
from ._embed import embed, embed_genes
from ._gene_graph import evaluate_gene_embedding, gene_embedding, gene_graph, train_gene_embedding
from ._histology import image_features, predict_expression, train_histology_model
from ._perturb import perturb
from ._umap import umap

__all__ = [
    "classify",
    "deconvolve",
    "embed",
    "embed_genes",
    "evaluate_gene_embedding",
    "gene_embedding",
    "gene_graph",
    "image_features",
    "perturb",
    "predict_expression",
    "prototypes",
    "train_classifier",
    "train_gene_embedding",
    "train_histology_model",
    "umap",
]

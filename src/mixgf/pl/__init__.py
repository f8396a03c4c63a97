"""Plots of what :mod:`mixgf.tl` stored (matplotlib / scanpy; never runs a model)."""

from __future__ import annotations

from ._classify import classify_scores, confusion_matrix
from ._fractions import fractions, fractions_vs_truth
from ._gene_graph import gene_similarity, gene_umap
from ._perturb import perturb_shift, perturb_volcano
from ._spatial import spatial_prediction
from ._umap import umap

__all__ = [
    "classify_scores",
    "confusion_matrix",
    "fractions",
    "fractions_vs_truth",
    "gene_similarity",
    "gene_umap",
    "perturb_shift",
    "perturb_volcano",
    "spatial_prediction",
    "umap",
]

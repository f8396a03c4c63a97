"""Getters: results stored by :mod:`mixgf.tl` as tidy tables."""

from __future__ import annotations

from ._gene_graph import gene_embeddings, gene_similarity
from ._perturb import perturb_df
from ._prototypes import prototypes

__all__ = ["gene_embeddings", "gene_similarity", "perturb_df", "prototypes"]

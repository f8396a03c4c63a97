"""Tools: AnnData -> batches -> model -> results written back under documented keys."""

from __future__ import annotations

from ._embed import embed, embed_genes
from ._umap import umap

__all__ = ["embed", "embed_genes", "umap"]

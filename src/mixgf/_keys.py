"""Default keys under which mixgf stores results in an AnnData (one place for all of them)."""

from __future__ import annotations

TOKENS_KEY = "mixgf_tokens"
"""``obsm`` key of the rank-value tokens and ``uns`` key of their parameters and coverage report."""

EMBEDDING_KEY = "X_mixgf"
"""``obsm`` key of the cell embeddings."""


def tokens_obs_keys(key: str) -> tuple[str, str]:
    """Names of the ``obs`` columns written next to ``obsm[key]``: (token count, empty-cell flag)."""
    return f"{key}_n_tokens", f"{key}_empty"


GENES_KEY = "mixgf_genes"
"""``varm`` key of the gene embeddings of :func:`mixgf.tl.embed_genes`."""

NEIGHBORS_KEY = "mixgf_neighbors"
"""``uns`` / ``obsp`` key of the neighbour graph that :func:`mixgf.tl.umap` computes on the embedding."""

UMAP_KEY = "X_mixgf_umap"
"""``obsm`` key of the UMAP coordinates of :func:`mixgf.tl.umap`."""

LABEL_KEY = "mixgf_label"
"""``obs`` key of the predicted labels of :func:`mixgf.tl.classify` (``_score`` in obs, ``_proba`` in obsm)."""

SHARD_KEY = "mixgf_shard"
"""``uns`` key recording which input rows a shard written by the ``mixgf`` jobs holds."""

PERTURB_KEY = "mixgf_perturb"
"""``uns`` key of the in silico perturbation results (``results``, ``params``) and stem of its ``obsm`` keys."""


def perturb_obsm_keys(key: str) -> tuple[str, str]:
    """Names of the ``obsm`` entries written next to ``uns[key]``: (per-cell shifts, original embeddings)."""
    return f"{key}_shift", f"{key}_original"


PROTOTYPES_KEY = "mixgf_prototypes"
"""``varm`` key of the cell-type prototypes (genes x types) and ``uns`` key of their types and parameters."""

FRACTIONS_KEY = "mixgf_fractions"
"""``obsm`` key of the cell-type fractions of mixtures (bulk samples or spots) and ``uns`` key of the fit."""

GENE_GRAPH_KEY = "mixgf_gene_graph"
"""``varp`` key of the gene co-expression graph of :func:`mixgf.tl.gene_graph` (``_correlation`` beside it), ``var``
key of the genes it uses (``_key``: their cross-dataset key) and ``uns`` key of its summary and parameters."""

GENE_EMBEDDING_KEY = "X_mixgf_gene"
"""``varm`` key of the gene embeddings of :func:`mixgf.tl.gene_embedding` (``uns`` key of their parameters)."""

IMAGE_FEATURES_KEY = "X_image"
"""``obsm`` key of the per-spot image features of :func:`mixgf.tl.image_features` (``uns`` key of their names)."""

PREDICTED_KEY = "mixgf_predicted"
"""``obsm`` key of the expression predicted from histology by :func:`mixgf.tl.predict_expression`."""

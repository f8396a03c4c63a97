"""Default keys under which mixgf stores results in an AnnData (one place for all of them)."""

from __future__ import annotations

TOKENS_KEY = "mixgf_tokens"
"""``obsm`` key of the rank-value tokens and ``uns`` key of their parameters and coverage report."""

EMBEDDING_KEY = "X_mixgf"
"""``obsm`` key of the cell embeddings."""


def tokens_obs_keys(key: str) -> tuple[str, str]:
    """Names of the ``obs`` columns written next to ``obsm[key]``: (token count, empty-cell flag)."""
    return f"{key}_n_tokens", f"{key}_empty"


PROTOTYPES_KEY = "mixgf_prototypes"
"""``varm`` key of the cell-type prototypes (genes x types) and ``uns`` key of their types and parameters."""

FRACTIONS_KEY = "mixgf_fractions"
"""``obsm`` key of the cell-type fractions of mixtures (bulk samples or spots) and ``uns`` key of the fit."""

"""Default keys under which mixgf stores results in an AnnData (one place for all of them)."""

from __future__ import annotations

TOKENS_KEY = "mixgf_tokens"
"""``obsm`` key of the rank-value tokens and ``uns`` key of their parameters and coverage report."""

EMBEDDING_KEY = "X_mixgf"
"""``obsm`` key of the cell embeddings."""


def tokens_obs_keys(key: str) -> tuple[str, str]:
    """Names of the ``obs`` columns written next to ``obsm[key]``: (token count, empty-cell flag)."""
    return f"{key}_n_tokens", f"{key}_empty"


PERTURB_KEY = "mixgf_perturb"
"""``uns`` key of the in silico perturbation results (``results``, ``params``) and stem of its ``obsm`` keys."""


def perturb_obsm_keys(key: str) -> tuple[str, str]:
    """Names of the ``obsm`` entries written next to ``uns[key]``: (per-cell shifts, original embeddings)."""
    return f"{key}_shift", f"{key}_original"

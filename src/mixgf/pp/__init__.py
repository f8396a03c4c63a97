"""Preprocessing: AnnData in, rank-value tokens out (numpy/scipy/numba; never torch)."""

from __future__ import annotations

from ._build_vocab import build_vocabulary
from ._medians import gene_medians
from ._store import TokenStore
from ._tokenize import coverage_report, rank_tokenize

__all__ = ["TokenStore", "build_vocabulary", "coverage_report", "gene_medians", "rank_tokenize"]

"""Getters: results stored by :mod:`mixgf.tl` as tidy tables."""

from __future__ import annotations

from ._perturb import perturb_df
from ._prototypes import prototypes

__all__ = ["perturb_df", "prototypes"]

"""Getters: results stored by :mod:`mixgf.tl` as tidy tables."""

from __future__ import annotations

from ._perturb import perturb_df

__all__ = ["perturb_df"]

"""The ``mixgf`` command line: ``mixgf demo``, ``mixgf pretrain`` and the corpus jobs ``tokenize / embed / perturb``."""

from __future__ import annotations

from ._main import main

__all__ = ["main"]

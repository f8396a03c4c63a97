"""mixgf: Mix-Geneformer for the scverse.

One transformer over rank-encoded single-cell transcriptomes of human and mouse cells, used the way
scanpy is used::

    import mixgf as mgf

    mgf.pp.rank_tokenize(adata)

Importing :mod:`mixgf` is light: torch, matplotlib.pyplot, umap and statsmodels are imported only by the
functions that need them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, genes, get, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("mixgf")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "genes", "get", "pl", "pp", "settings", "tl"]

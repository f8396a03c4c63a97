"""mixgf: Mix-Geneformer for the scverse.

One transformer over rank-encoded single-cell transcriptomes of human and mouse cells, used the way
scanpy is used::

    import mixgf as mgf

    mgf.pp.rank_tokenize(adata)

Importing :mod:`mixgf` is light: torch, matplotlib.pyplot, umap and statsmodels are imported only by the
functions that need them.
"""

from __future__ import annotations

from . import datasets, genes, get, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = [
    "CellClassifier",
    "MixGeneformer",
    "__version__",
    "datasets",
    "genes",
    "get",
    "load_model",
    "model",
    "pl",
    "pp",
    "pretrain",
    "settings",
    "tl",
]


def __getattr__(name: str):
    # torch is imported only when the model side is first used
    if name == "CellClassifier":
        from ._models._classifier import CellClassifier

        return CellClassifier
    if name in ("MixGeneformer", "load_model"):
        from ._models import _mixgeneformer

        return getattr(_mixgeneformer, name)
    if name == "pretrain":
        from ._models._pretrain import pretrain

        return pretrain
    if name == "model":
        import importlib

        return importlib.import_module(".model", __name__)
    msg = f"module 'mixgf' has no attribute {name!r}"
    raise AttributeError(msg)

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
        from ._cellclassifier import CellClassifier

        return CellClassifier
    if name in ("MixGeneformer", "load_model"):
        from . import _pretrained

        return getattr(_pretrained, name)
    if name == "pretrain":
        from ._training import pretrain

        return pretrain
    if name == "model":
        import importlib

        return importlib.import_module(".model", __name__)
    msg = f"module 'mixgf' has no attribute {name!r}"
    raise AttributeError(msg)

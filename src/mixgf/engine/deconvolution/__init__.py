"""Cell-type prototypes and deconvolution of bulk and spot expression (numpy / scipy / torch; no AnnData).

The AnnData side is :func:`mixgf.tl.prototypes` and :func:`mixgf.tl.deconvolve`.
"""

from __future__ import annotations

from ..._utils._agreement import fraction_agreement
from ._baselines import nnls
from ._nb import (
    DeconvolutionResult,
    PrototypeFit,
    fit_deconvolution,
    fit_prototypes,
    mixture_mean,
    nb_deviance,
    nb_nll,
)
from ._prototypes import Prototypes

__all__ = [
    "DeconvolutionResult",
    "PrototypeFit",
    "Prototypes",
    "fit_deconvolution",
    "fit_prototypes",
    "fraction_agreement",
    "mixture_mean",
    "nb_deviance",
    "nb_nll",
    "nnls",
]

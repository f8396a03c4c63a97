"""Expression from H&E histology: patches, image features, contrastive retrieval and prototype composition.

Arrays and tensors only (no AnnData); the AnnData side is :func:`mixgf.tl.image_features`,
:func:`mixgf.tl.train_histology_model` and :func:`mixgf.tl.predict_expression`. Torch is imported only by the
functions that train or run networks.
"""

from __future__ import annotations

from ._composition import composition_predict, spot_clusters, train_composition
from ._features import (
    channel_stats,
    encoder_features,
    module_features,
    stain_normalize,
    summary_feature_names,
    summary_features,
)
from ._image import SpotImage, check_spots
from ._model import HistologyModel
from ._retrieval import retrieval_predict, spot_keys, train_retrieval

__all__ = [
    "HistologyModel",
    "SpotImage",
    "channel_stats",
    "check_spots",
    "composition_predict",
    "encoder_features",
    "module_features",
    "retrieval_predict",
    "spot_clusters",
    "spot_keys",
    "stain_normalize",
    "summary_feature_names",
    "summary_features",
    "train_composition",
    "train_retrieval",
]

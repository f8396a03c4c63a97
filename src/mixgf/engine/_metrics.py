"""Evaluation helpers shared by the command line and the training scripts."""

from __future__ import annotations

import numpy as np
import pandas as pd


def knn_label_agreement(x: np.ndarray, labels: np.ndarray | pd.Series, k: int = 10) -> float:
    """Fraction of cells whose k nearest neighbours (cosine, the cell itself left out) vote for the cell's label."""
    from sklearn.neighbors import NearestNeighbors

    labels = pd.Series(labels).astype(str).to_numpy()
    _, ind = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x)
    votes = labels[ind[:, 1:]]
    pred = np.array([pd.Series(row).value_counts().index[0] for row in votes])
    return float((pred == labels).mean())

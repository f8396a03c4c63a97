"""Task heads on top of the encoder."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    """Dropout + linear layer on the mean-pooled cell embedding.

    Parameters
    ----------
    hidden_size
        Width of the embedding.
    n_classes
        Number of classes.
    dropout
        Dropout before the linear layer (training only).

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import ClassifierHead
    >>> head = ClassifierHead(hidden_size=128, n_classes=3).eval()
    >>> head(torch.zeros(5, 128)).shape
    torch.Size([5, 3])
    """

    def __init__(self, hidden_size: int, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes]`` of embeddings ``[B, H]``."""
        return self.linear(self.dropout(z))

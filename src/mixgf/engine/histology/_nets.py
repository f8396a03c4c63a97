"""Torch networks of the histology models: a small CNN, the spot encoder, projection heads, the CLIP loss."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn

__all__ = ["ImageEncoder", "ProjectionHead", "SmallCNN", "SpotEncoder", "clip_loss"]


class SmallCNN(nn.Module):
    """Four conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool) and a global average pool.

    Parameters
    ----------
    width
        Channels of the first block (doubled in each of the next, capped at 8x).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for a, b in pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class ProjectionHead(nn.Module):
    """mclSTExp's projection: ``LayerNorm(fc(gelu(W x)) + W x)`` into the shared space."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.fc = nn.Linear(d_out, d_out)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.norm(self.drop(self.fc(nn.functional.gelu(h))) + h)


class ImageEncoder(nn.Module):
    """Patch encoder (the small CNN or a user's module) plus, optionally, the handcrafted features; projected."""

    def __init__(self, backbone: nn.Module | None, backbone_dim: int, n_features: int, d_out: int,
                 dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.n_features = n_features
        self.head = ProjectionHead(backbone_dim + n_features, d_out, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a patch batch (flattened)."""
        assert self.backbone is not None
        return self.backbone(x).reshape(len(x), -1)

    def forward(self, x: torch.Tensor | None, feats: torch.Tensor | None = None) -> torch.Tensor:
        parts = [] if self.backbone is None or x is None else [self.embed(x)]
        if self.n_features:
            parts.append(feats)
        return self.head(torch.cat(parts, dim=1))


class SpotEncoder(nn.Module):
    """mclSTExp's spot encoder: expression + learned x / y position embeddings, pre-norm attention over the batch.

    The spots of a batch form one sequence, so a spot's key sees its batch-mates (as in mclSTExp).

    Parameters
    ----------
    n_genes
        Expression input size.
    d_model
        Width of the attention blocks.
    n_positions
        Size of each position table (array coordinates are clipped to it).
    n_layers, n_heads
        Attention blocks and heads.
    d_out
        Size of the shared space.
    dropout
        Dropout of the blocks and the head.
    """

    def __init__(self, n_genes: int, d_model: int, n_positions: int, n_layers: int, n_heads: int, d_out: int,
                 dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.inp = nn.Linear(n_genes, d_model)
        self.pos_x = nn.Embedding(n_positions, d_model)
        self.pos_y = nn.Embedding(n_positions, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=d_model, dropout=dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = ProjectionHead(d_model, d_out, dropout)
        self.n_positions = n_positions

    def forward(self, expr: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        pos = pos.clamp(0, self.n_positions - 1)
        h = self.inp(expr) + self.pos_x(pos[:, 0]) + self.pos_y(pos[:, 1])
        return self.head(self.blocks(h.unsqueeze(0)).squeeze(0))


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised embeddings, matching rows of ``a`` and ``b`` as the positives."""
    a = nn.functional.normalize(a, dim=1)
    b = nn.functional.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def augment(x: torch.Tensor, generator: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """Random flips, 90-degree rotations and brightness / contrast jitter of a patch batch (same for the batch)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.rand(1, generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    n = len(x)
    scale = 1 + jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    shift = jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    return x * scale + shift


def n_params(module: Any) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

"""MuSe-GNN's multi-graph transformer in dense torch (one 1,000-node graph fits in a dense attention matrix).

Per dataset a first graph-transformer layer reads the dataset's cells (genes x cells residuals); the next two
layers are shared among the datasets of one group (modality / tissue); the output is 32 numbers per gene and
dataset. The edge decoder is a scaled cosine similarity per dataset (MuSe-GNN's released decoder is a
1000x1000 MLP per dataset; see :doc:`/gene_graph` for why it is not used here).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DenseTransformerConv", "GeneGraphNet", "GraphNorm"]


class DenseTransformerConv(nn.Module):
    """Graph-transformer convolution (Shi et al. 2021) on a dense adjacency.

    ``x_i' = W_s x_i + sum_{j in N(i)} alpha_ij W_v x_j`` with ``alpha_ij = softmax_j(<W_q x_i, W_k x_j> / sqrt(d))``
    over the neighbours of ``i``, per head; heads are concatenated (or averaged with ``concat=False``).
    A gene without neighbours keeps only its own term.
    """

    def __init__(self, d_in: int, d_out: int, heads: int = 1, *, concat: bool = True) -> None:
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.qkv = nn.Linear(d_in, 3 * heads * d_out)
        self.skip = nn.Linear(d_in, heads * d_out if concat else d_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: nodes x features; ``mask``: nodes x nodes bool, ``mask[i, j]`` = j sends to i."""
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.d_out).permute(1, 2, 0, 3)  # each heads x n x d
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_out)
        logits = logits.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row without neighbours is all -inf
        out = attn @ v  # heads x n x d
        out = out.transpose(0, 1).reshape(n, -1) if self.concat else out.mean(dim=0)
        return out + self.skip(x)


class GraphNorm(nn.Module):
    """GraphNorm (Cai et al. 2021): normalise each feature over the nodes of the graph with a learnt mean shift."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.mean_scale = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (nodes x features)."""
        out = x - self.mean_scale * x.mean(dim=0, keepdim=True)
        return self.weight * out / torch.sqrt(out.pow(2).mean(dim=0, keepdim=True) + self.eps) + self.bias


class _FirstLayer(nn.Module):
    def __init__(self, n_cells: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.conv = DenseTransformerConv(n_cells, hidden, heads)
        self.norm = GraphNorm(hidden * heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x, mask)))


class _SharedLayers(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.conv1 = DenseTransformerConv(d_in, hidden, 2)
        self.norm = GraphNorm(2 * hidden)
        self.conv2 = DenseTransformerConv(2 * hidden, d_out, 1)
        self.residual = DenseTransformerConv(d_in, d_out, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.mish(self.norm(self.conv1(h, mask))), mask)
        return out + self.residual(h, mask)


class GeneGraphNet(nn.Module):
    """Per-dataset first layers, per-group shared layers and per-dataset cosine edge decoders.

    Parameters
    ----------
    n_cells
        Cells (input features) of each dataset, in dataset order.
    groups
        Group index of each dataset (datasets of one group share layers 2-3).
    n_groups
        Number of groups.
    hidden
        Width per head of the first layer (4 heads) and of the shared layer (2 heads); MuSe-GNN: 32.
    d_out
        Embedding size (MuSe-GNN: 32).
    """

    def __init__(self, n_cells: list[int], groups: list[int], n_groups: int, *, hidden: int = 32, d_out: int = 32):
        super().__init__()
        self.groups = list(groups)
        self.first = nn.ModuleList(_FirstLayer(n, hidden, 4) for n in n_cells)
        self.shared = nn.ModuleList(_SharedLayers(4 * hidden, hidden, d_out) for _ in range(n_groups))
        # decoder: logit = exp(log_scale) * cos(z_a, z_b) + bias, per dataset
        self.log_scale = nn.Parameter(torch.full((len(n_cells),), math.log(5.0)))
        self.bias = nn.Parameter(torch.full((len(n_cells),), -2.0))

    def encode(self, i: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings (genes x d_out) of dataset ``i`` from its node features and neighbour mask."""
        return self.shared[self.groups[i]](self.first[i](x, mask), mask)

    def decode(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Edge logits (genes x genes) of dataset ``i``."""
        zn = F.normalize(z, dim=-1)
        return self.log_scale[i].exp() * (zn @ zn.T) + self.bias[i]

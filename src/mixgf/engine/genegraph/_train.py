"""Training MuSe-GNN's objective: graph reconstruction + weighted cross-dataset similarity + NT-Xent."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["GeneGraph", "TrainResult", "jaccard_weights", "split_edges", "train_gene_graphs"]


@dataclass
class GeneGraph:
    """One dataset's input: node features, co-expression graph and cross-dataset gene keys.

    Attributes
    ----------
    features
        Genes x cells (e.g. Pearson residuals), float32.
    adjacency
        Binary symmetric genes x genes graph (no self-loops).
    keys
        Per gene the key that names "the same gene" in every dataset (e.g. a human Ensembl ID, orthologs mapped).
    group
        Group index (datasets of one group share the 2nd and 3rd layers).

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from mixgf.engine.genegraph import GeneGraph
    >>> g = GeneGraph(np.zeros((3, 10)), sp.csr_matrix(np.eye(3)[[1, 0, 2]]), ["CD3E", "CD3D", "LYZ"])
    >>> g.features.dtype, g.adjacency.nnz
    (dtype('float32'), 3)
    """

    features: np.ndarray
    adjacency: sp.csr_matrix
    keys: list[str]
    group: int = 0

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.adjacency = sp.csr_matrix(self.adjacency, dtype=np.float32)
        n = self.features.shape[0]
        if self.adjacency.shape != (n, n) or len(self.keys) != n:
            msg = f"GeneGraph: {n} genes in features, adjacency {self.adjacency.shape}, {len(self.keys)} keys."
            raise ValueError(msg)
        if len(set(self.keys)) != n:
            msg = "GeneGraph: the gene keys of one dataset must be unique."
            raise ValueError(msg)


@dataclass
class TrainResult:
    """What :func:`train_gene_graphs` returns.

    Attributes
    ----------
    state_dict
        Weights of the network (``mixgf.engine.genegraph._model.GeneGraphNet``), on the CPU.
    embeddings
        Per dataset the genes x d_out embedding (float32).
    heldout
        Per dataset ``(edges, non_edges)``: gene-index pairs (k x 2) hidden from training.
    history
        Per epoch the mean losses (``loss``, ``rec``, ``sim``, ``con``), ``seconds`` and the ``device``.

    Examples
    --------
    See :func:`train_gene_graphs`, which returns one:

    >>> from mixgf.engine.genegraph import TrainResult
    >>> sorted(TrainResult.__dataclass_fields__)
    ['embeddings', 'heldout', 'history', 'state_dict']
    """

    state_dict: dict[str, Any]
    embeddings: list[np.ndarray]
    heldout: list[tuple[np.ndarray, np.ndarray]]
    history: dict[str, Any] = field(default_factory=dict)


def split_edges(
    adj: sp.csr_matrix, frac: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Hide a fraction of a graph's edges and as many non-edges (pairs ``i < j``).

    Returns
    -------
    tuple
        The graph without the hidden edges, the hidden edges (k x 2) and the sampled non-edges (k x 2).
    """
    upper = sp.triu(adj, k=1).tocoo()
    edges = np.column_stack([upper.row, upper.col]).astype(np.int64)
    k = round(frac * len(edges))
    empty = np.zeros((0, 2), dtype=np.int64)
    if k == 0:
        return sp.csr_matrix(adj), empty, empty
    held = edges[np.sort(rng.choice(len(edges), k, replace=False))]
    n = adj.shape[0]
    dense = adj.toarray() > 0
    iu = np.triu_indices(n, 1)
    non = np.flatnonzero(~dense[iu])
    pick = np.sort(rng.choice(len(non), min(k, len(non)), replace=False))
    non_edges = np.column_stack([iu[0][non[pick]], iu[1][non[pick]]]).astype(np.int64)
    dense[held[:, 0], held[:, 1]] = dense[held[:, 1], held[:, 0]] = False
    return sp.csr_matrix(dense.astype(np.float32)), held, non_edges


def _common(a: GeneGraph, b: GeneGraph) -> tuple[np.ndarray, np.ndarray]:
    pos_b = {k: i for i, k in enumerate(b.keys)}
    ia = np.array([i for i, k in enumerate(a.keys) if k in pos_b], dtype=np.int64)
    ib = np.array([pos_b[a.keys[i]] for i in ia], dtype=np.int64)
    return ia, ib


def jaccard_weights(a: GeneGraph, b: GeneGraph, adj_a: sp.csr_matrix, adj_b: sp.csr_matrix) -> tuple[np.ndarray, ...]:
    """Common genes of two datasets and the Jaccard overlap of each one's neighbour sets (by gene key).

    Returns
    -------
    tuple of numpy.ndarray
        Indices of the common genes in ``a`` and in ``b``, and their weights in ``[0, 1]`` (0 if both isolated).
    """
    ia, ib = _common(a, b)
    vocab = {k: i for i, k in enumerate(dict.fromkeys(a.keys + b.keys))}
    ka = np.array([vocab[k] for k in a.keys])
    kb = np.array([vocab[k] for k in b.keys])
    n = len(vocab)
    Pa = sp.csr_matrix((np.ones(len(ka)), (np.arange(len(ka)), ka)), shape=(len(ka), n))
    Pb = sp.csr_matrix((np.ones(len(kb)), (np.arange(len(kb)), kb)), shape=(len(kb), n))
    Na = ((adj_a > 0).astype(np.float64) @ Pa)[ia]
    Nb = ((adj_b > 0).astype(np.float64) @ Pb)[ib]
    inter = np.asarray(Na.multiply(Nb).sum(axis=1)).ravel()
    union = np.asarray(Na.sum(axis=1)).ravel() + np.asarray(Nb.sum(axis=1)).ravel() - inter
    w = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return ia, ib, w


def train_gene_graphs(
    graphs: list[GeneGraph],
    *,
    n_groups: int,
    epochs: int = 200,
    lr: float = 1e-3,
    lambda_con: float = 0.01,
    tau: float = 0.07,
    n_contrastive: int = 100,
    holdout: float = 0.1,
    hidden: int = 32,
    d_out: int = 32,
    seed: int = 0,
    device: Any = "cpu",
    progress: bool = False,
) -> TrainResult:
    """Train MuSe-GNN's objective on several gene graphs.

    Each epoch visits every dataset ``i`` once, in a random order, with a random partner ``j != i``; the loss is
    ``BCE(decoder_i(z_i), A_i) - mean_g w_g cos(z_i[g], z_j[g]) + lambda_con * NTXent_tau``: reconstruction of the
    graph (held-out pairs left out), the cosine similarity of the genes common to ``i`` and ``j`` weighted by the
    Jaccard overlap of their neighbours, and a contrastive term on up to ``n_contrastive`` genes found in only one
    of the two datasets, whose positive is a random graph neighbour (itself when isolated).

    Parameters
    ----------
    graphs
        The datasets.
    n_groups
        Number of groups (``graph.group`` indexes them).
    epochs, lr
        Passes over the datasets; Adam learning rate.
    lambda_con, tau
        Weight and temperature of the contrastive term (MuSe-GNN: 0.01, 0.07).
    n_contrastive
        Dataset-specific genes sampled per side and step.
    holdout
        Fraction of each graph's edges (and as many non-edges) hidden from training and returned for evaluation.
    hidden, d_out
        Layer width per head and embedding size.
    seed
        Seeds the split, the partners, the samples and the weights.
    device
        Torch device.
    progress
        Show a progress bar over epochs.

    Returns
    -------
    TrainResult
        Weights, embeddings, held-out pairs and loss history.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.engine.genegraph import (
    ...     GeneGraph,
    ...     adjacency_from_pvalues,
    ...     cscore,
    ...     heldout_edge_auc,
    ...     pearson_residuals,
    ...     select_genes,
    ...     train_gene_graphs,
    ... )
    >>> X = mgf.datasets.pbmc3k().X
    >>> idx, _ = select_genes(X, 100)
    >>> res = cscore(X[:, idx], np.asarray(X.sum(axis=1)).ravel())
    >>> graph = GeneGraph(
    ...     pearson_residuals(X, idx).T,
    ...     adjacency_from_pvalues(res, 0.005, positive_only=True),
    ...     keys=[str(i) for i in idx],
    ... )
    >>> out = train_gene_graphs([graph], n_groups=1, epochs=20)
    >>> out.embeddings[0].shape
    (100, 32)
    >>> bool(heldout_edge_auc(out.embeddings[0], *out.heldout[0]) > 0.7)
    True
    """
    import torch
    from torch.nn import functional as F

    from ._model import GeneGraphNet

    if len(graphs) < 1:
        msg = "train_gene_graphs needs at least one graph."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    splits = [split_edges(g.adjacency, holdout, rng) for g in graphs]
    net = GeneGraphNet(
        [g.features.shape[1] for g in graphs], [g.group for g in graphs], n_groups, hidden=hidden, d_out=d_out
    ).to(dev)
    X = [torch.from_numpy(g.features).to(dev) for g in graphs]
    masks, targets, loss_masks, neighbours = [], [], [], []
    for (adj, held, non), _g in zip(splits, graphs, strict=True):
        A = torch.from_numpy(adj.toarray() > 0).to(dev)
        masks.append(A)
        targets.append(A.float())
        keep = ~torch.eye(A.shape[0], dtype=torch.bool, device=dev)
        for pairs in (held, non):
            p = torch.from_numpy(pairs).to(dev)
            keep[p[:, 0], p[:, 1]] = keep[p[:, 1], p[:, 0]] = False
        loss_masks.append(keep)
        neighbours.append([adj.indices[adj.indptr[r] : adj.indptr[r + 1]] for r in range(adj.shape[0])])
    n = len(graphs)
    pairs: dict[tuple[int, int], tuple] = {}
    for i in range(n):
        for j in range(n):
            if i != j:
                ia, ib, w = jaccard_weights(graphs[i], graphs[j], splits[i][0], splits[j][0])
                only_i = np.setdiff1d(np.arange(len(graphs[i].keys)), ia)
                only_j = np.setdiff1d(np.arange(len(graphs[j].keys)), ib)
                pairs[i, j] = (
                    torch.from_numpy(ia).to(dev),
                    torch.from_numpy(ib).to(dev),
                    torch.from_numpy(w.astype(np.float32)).to(dev),
                    only_i,
                    only_j,
                )
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def sample_positive(d: int, genes: np.ndarray) -> np.ndarray:
        out = genes.copy()
        for t, g in enumerate(genes):
            nb = neighbours[d][g]
            if len(nb):
                out[t] = nb[rng.integers(len(nb))]
        return out

    history: dict[str, Any] = {"loss": [], "rec": [], "sim": [], "con": []}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, unit="epoch", desc="training")
    t0 = time.perf_counter()
    net.train()
    for _ in range(epochs):
        sums = np.zeros(4)
        for i in rng.permutation(n):
            j = int(rng.choice([d for d in range(n) if d != i])) if n > 1 else i
            z_i = net.encode(int(i), X[i], masks[i])
            logits = net.decode(int(i), z_i)
            rec = F.binary_cross_entropy_with_logits(logits[loss_masks[i]], targets[i][loss_masks[i]])
            sim = con = torch.zeros((), device=dev)
            if j != i:
                z_j = net.encode(j, X[j], masks[j])
                ia, ib, w, only_i, only_j = pairs[int(i), j]
                if len(ia):
                    sim = -(w * F.cosine_similarity(z_i[ia], z_j[ib], dim=-1)).mean()
                anchors, positives = [], []
                for d, z, only in ((int(i), z_i, only_i), (j, z_j, only_j)):
                    if len(only):
                        s = rng.choice(only, n_contrastive)
                        anchors.append(z[torch.from_numpy(s).to(dev)])
                        positives.append(z[torch.from_numpy(sample_positive(d, s)).to(dev)])
                if anchors:
                    a = F.normalize(torch.cat(anchors), dim=-1)
                    p = F.normalize(torch.cat(positives), dim=-1)
                    con = F.cross_entropy(a @ p.T / tau, torch.arange(a.shape[0], device=dev))
            loss = rec + sim + lambda_con * con
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), rec.item(), sim.item(), con.item()]
        for k, v in zip(("loss", "rec", "sim", "con"), sums / n, strict=True):
            history[k].append(float(v))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / n:.3f}")
    if bar is not None:
        bar.close()
    history["seconds"] = time.perf_counter() - t0
    history["device"] = str(dev)
    net.eval()
    with torch.no_grad():
        emb = [net.encode(d, X[d], masks[d]).float().cpu().numpy() for d in range(n)]
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return TrainResult(state, emb, [(h, non) for _, h, non in splits], history)

"""Evaluation of gene embeddings: held-out edges, cross-dataset consistency, ortholog recall, marker coherence."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "auc",
    "cross_dataset_consistency",
    "evaluation_table",
    "heldout_edge_auc",
    "marker_pair_auc",
    "most_similar",
    "ortholog_recall",
    "procrustes_align",
]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores of positives against negatives (ties count one half; NaN if either is empty)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _pair_cos(z: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    u = _unit(z)
    return (u[pairs[:, 0]] * u[pairs[:, 1]]).sum(axis=1)


def heldout_edge_auc(z: np.ndarray, edges: np.ndarray, non_edges: np.ndarray) -> float:
    """AUC of the cosine similarity of gene embeddings on held-out edges against held-out non-edges.

    Parameters
    ----------
    z
        Genes x dims.
    edges, non_edges
        Gene-index pairs (k x 2).

    Returns
    -------
    float
        The AUC (0.5: chance).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.genegraph import heldout_edge_auc
    >>> z = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> heldout_edge_auc(z, np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]]))
    1.0
    """
    return auc(_pair_cos(z, edges), _pair_cos(z, non_edges))


def procrustes_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal matrix ``R`` minimising ``||source @ R - target||`` (rows are matched genes)."""
    u, _, vt = np.linalg.svd(source.T @ target, full_matrices=False)
    return u @ vt


def _same_gene_ranks(z_a: np.ndarray, keys_a: list[str], z_b: np.ndarray, keys_b: list[str]) -> np.ndarray:
    """Rank (1 = most similar) of each shared gene's own row among all of ``b``'s rows, by cosine."""
    pos_b = {k: i for i, k in enumerate(keys_b)}
    ia = np.array([i for i, k in enumerate(keys_a) if k in pos_b], dtype=np.int64)
    if len(ia) == 0:
        return np.zeros(0, dtype=np.int64)
    ib = np.array([pos_b[keys_a[i]] for i in ia], dtype=np.int64)
    ok = np.isfinite(z_a[ia]).all(axis=1) & np.isfinite(z_b[ib]).all(axis=1)
    ia, ib = ia[ok], ib[ok]
    sims = _unit(z_a[ia]) @ _unit(np.nan_to_num(np.asarray(z_b, dtype=np.float64))).T
    own = sims[np.arange(len(ia)), ib]
    return 1 + (sims > own[:, None]).sum(axis=1)


def cross_dataset_consistency(z_a: np.ndarray, keys_a: list[str], z_b: np.ndarray, keys_b: list[str]) -> dict:
    """Share of the genes of two datasets whose nearest neighbour (cosine) among ``b``'s genes is themselves.

    Returns
    -------
    dict
        ``top1`` (fraction whose nearest neighbour is the same gene), ``mean_rank`` (of the same gene among
        ``b``'s genes, 1 = best), ``n`` (genes scored).
    """
    rank = _same_gene_ranks(z_a, keys_a, z_b, keys_b)
    if len(rank) == 0:
        return {"top1": float("nan"), "mean_rank": float("nan"), "n": 0}
    return {"top1": float((rank == 1).mean()), "mean_rank": float(rank.mean()), "n": len(rank)}


def ortholog_recall(
    z_h: np.ndarray, keys_h: list[str], z_m: np.ndarray, keys_m: list[str], ks: tuple[int, ...] = (1, 10)
) -> dict:
    """Recall@k of orthologs between a human and a mouse dataset.

    For each human gene whose one-to-one ortholog is among the mouse genes: is the ortholog among the ``k`` mouse
    genes most similar to it? Keys name orthologs alike (mouse genes keyed by their human ortholog).

    Returns
    -------
    dict
        ``recall@k`` for each k and ``n`` (ortholog pairs scored).
    """
    rank = _same_gene_ranks(z_h, keys_h, z_m, keys_m)
    if len(rank) == 0:
        return {**{f"recall@{k}": float("nan") for k in ks}, "n": 0}
    return {**{f"recall@{k}": float((rank <= k).mean()) for k in ks}, "n": len(rank)}


def marker_pair_auc(z: np.ndarray, marker_sets: list[np.ndarray], seed: int = 0) -> dict:
    """AUC of the cosine similarity of gene pairs marking the same cell type against random gene pairs.

    Parameters
    ----------
    z
        Genes x dims (rows with NaN are left out).
    marker_sets
        Per cell type the row indices of its marker genes.
    seed
        Seeds the random pairs (as many as marker pairs).

    Returns
    -------
    dict
        ``auc`` and ``n_pairs``.
    """
    ok = np.isfinite(z).all(axis=1)
    pos = []
    for s in marker_sets:
        s = np.asarray([g for g in s if ok[g]], dtype=np.int64)
        iu = np.triu_indices(len(s), 1)
        pos.append(np.column_stack([s[iu[0]], s[iu[1]]]))
    pos = np.concatenate(pos) if pos else np.zeros((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    valid = np.flatnonzero(ok)
    if len(pos) == 0 or len(valid) < 2:
        return {"auc": float("nan"), "n_pairs": 0}
    neg = rng.choice(valid, size=(len(pos), 2))
    neg = neg[neg[:, 0] != neg[:, 1]]
    return {"auc": auc(_pair_cos(z, pos), _pair_cos(z, neg)), "n_pairs": len(pos)}


def most_similar(
    embeddings: list[np.ndarray],
    genes: list[list[str]],
    keys: list[list[str]],
    datasets: list[str],
    species: list[str],
    queries: list[str],
    *,
    top: int = 20,
):
    """The genes most similar (cosine) to each query gene, in every dataset, from every dataset that has it.

    A query matches a gene by name (case-insensitive) or by key, so a human symbol also finds its mouse ortholog.

    Returns
    -------
    pandas.DataFrame
        Columns ``query``, ``query_dataset``, ``dataset``, ``species``, ``rank`` (1 = most similar), ``gene``,
        ``key``, ``similarity`` and ``same_gene`` (the hit is the query's own gene or ortholog).
    """
    import pandas as pd

    units = [_unit(np.nan_to_num(e)) for e in embeddings]
    rows = []
    for q in queries:
        ql = str(q).lower()
        for s, (gs, ks) in enumerate(zip(genes, keys, strict=True)):
            hit = [i for i, (g, k) in enumerate(zip(gs, ks, strict=True)) if g.lower() == ql or k.lower() == ql]
            if not hit:
                continue
            key = ks[hit[0]]
            qv = units[s][hit[0]]
            for t, u in enumerate(units):
                sims = u @ qv
                order = np.argsort(-sims, kind="stable")[:top]
                for r, j in enumerate(order, start=1):
                    rows.append(
                        (
                            q,
                            datasets[s],
                            datasets[t],
                            species[t],
                            r,
                            genes[t][j],
                            keys[t][j],
                            float(sims[j]),
                            keys[t][j] == key,
                        )
                    )
    cols = ["query", "query_dataset", "dataset", "species", "rank", "gene", "key", "similarity", "same_gene"]
    return pd.DataFrame(rows, columns=cols)


def _pair_ranks(kind: str, z_a: np.ndarray, keys_a: list[str], z_b: np.ndarray, keys_b: list[str], seed: int):
    """Rank of each shared gene's own row among ``b``'s rows, with both embeddings brought into one space.

    ``"shared"``: as they are. ``"coexpression"``: ``z`` are genes x genes correlation matrices, cut to the shared
    genes' columns in one order. ``"procrustes"``: ``b`` rotated onto ``a`` by orthogonal Procrustes, cross-fitted:
    the shared genes are split in two halves and each half is ranked under the rotation fitted on the other, so no
    gene is scored by a rotation that saw it.
    """
    pos_b = {k: i for i, k in enumerate(keys_b)}
    ia = np.array([i for i, k in enumerate(keys_a) if k in pos_b], dtype=np.int64)
    ib = np.array([pos_b[keys_a[i]] for i in ia], dtype=np.int64)
    if kind == "shared":
        return _same_gene_ranks(z_a, keys_a, z_b, keys_b)
    if kind == "coexpression":
        return _same_gene_ranks(np.nan_to_num(z_a[:, ia]), keys_a, np.nan_to_num(z_b[:, ib]), keys_b)
    if kind != "procrustes":
        msg = f"unknown embedding kind {kind!r}."
        raise ValueError(msg)
    a, b = np.nan_to_num(z_a), np.nan_to_num(z_b)
    if len(ia) < 4:
        return np.zeros(0, dtype=np.int64)
    fold = np.random.default_rng(seed).permutation(len(ia)) % 2
    ranks = []
    for f in (0, 1):
        rot = procrustes_align(b[ib[fold != f]], a[ia[fold != f]])
        keep = set(np.asarray(keys_a, dtype=object)[ia[fold == f]].tolist())
        only = [k if k in keep else "\0" + str(i) for i, k in enumerate(keys_a)]
        ranks.append(_same_gene_ranks(a, only, b @ rot, keys_b))
    return np.concatenate(ranks)


def evaluation_table(
    methods: dict[str, tuple[str, list[np.ndarray | None]]],
    datasets: list[str],
    keys: list[list[str]],
    species: list[str],
    heldout: list[tuple[np.ndarray, np.ndarray]] | None = None,
    markers: list[list[np.ndarray] | None] | None = None,
    *,
    seed: int = 0,
):
    """The four metrics for every method.

    Held-out edge AUC, cross-dataset consistency, ortholog recall@1/@10 and marker-pair AUC.

    Parameters
    ----------
    methods
        Name -> (kind, per dataset the genes x dims embedding in graph-gene order or `None`). Kind ``"shared"``:
        one space for all datasets; ``"procrustes"``: one space per dataset, rotated onto the other of a pair by
        orthogonal Procrustes cross-fitted on two halves of the shared genes; ``"coexpression"``: genes x genes
        co-expression matrices, compared on the shared genes' columns.
    datasets, keys, species
        Per dataset its name, gene keys and species.
    heldout
        Per dataset the held-out ``(edges, non_edges)``.
    markers
        Per dataset the row indices of each cell type's marker genes, or `None`.
    seed
        Seeds the random pairs of the marker metric.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``metric``, ``dataset``, ``other`` (the second dataset of a pair, else ``""``),
        ``value`` and ``n`` (edges, genes, ortholog pairs or gene pairs scored).
    """
    import pandas as pd

    rows = []
    n = len(datasets)
    for name, (kind, zs) in methods.items():
        for d in range(n):
            z = zs[d]
            if z is None:
                continue
            if heldout is not None and len(heldout[d][0]):
                edges, non = heldout[d]
                rows.append((name, "heldout_edge_auc", datasets[d], "", heldout_edge_auc(z, edges, non), len(edges)))
            if markers is not None and markers[d]:
                r = marker_pair_auc(z, markers[d], seed=seed)
                rows.append((name, "marker_pair_auc", datasets[d], "", r["auc"], r["n_pairs"]))
        for a in range(n):
            for b in range(n):
                if a == b or zs[a] is None or zs[b] is None:
                    continue
                cross = species[a] != species[b]
                if (cross and species[a] != "human") or (not cross and b < a):
                    continue  # human -> mouse across species; each same-species pair once
                rank = _pair_ranks(kind, zs[a], keys[a], zs[b], keys[b], seed)
                if len(rank) == 0:
                    continue
                if cross:
                    for k in (1, 10):
                        rows.append(
                            (
                                name,
                                f"ortholog_recall@{k}",
                                datasets[a],
                                datasets[b],
                                float((rank <= k).mean()),
                                len(rank),
                            )
                        )
                else:
                    rows.append(
                        (name, "consistency_top1", datasets[a], datasets[b], float((rank == 1).mean()), len(rank))
                    )
    return pd.DataFrame(rows, columns=["method", "metric", "dataset", "other", "value", "n"])

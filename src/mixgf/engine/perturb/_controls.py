"""Matched controls of an in silico perturbation screen: relative-rank matrices and rank-matched control genes.

Pure numpy/scipy. A cell's tokens (highest-ranked gene first, ``n_front`` / ``n_back`` special tokens at the ends)
become a row of relative ranks ``(rank + 0.5) / n_genes`` in (0, 1). A tested gene set's controls are genes of about
the same rank in the cells where the set is perturbed (:func:`choose_controls`); each control is perturbed in the same
cells, and :func:`mixgf.engine.perturb._stats.matched_test` compares the tested set with them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["applicable_pairs", "choose_controls", "control_columns", "expressed_genes", "rank_matrix"]


def rank_matrix(tokens: np.ndarray, lengths: np.ndarray, n_front: int, n_back: int, vocab_size: int) -> sp.csr_matrix:
    """Cells x tokens sparse matrix of relative ranks (rank + 0.5) / n_genes in (0, 1); absent = not stored."""
    n_genes = np.maximum(lengths - n_front - n_back, 0)
    indptr = np.zeros(tokens.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_genes, out=indptr[1:])
    cols = np.empty(indptr[-1], dtype=np.int64)
    vals = np.empty(indptr[-1], dtype=np.float64)
    for i in range(tokens.shape[0]):
        n = int(n_genes[i])
        cols[indptr[i] : indptr[i + 1]] = tokens[i, n_front : n_front + n]
        vals[indptr[i] : indptr[i + 1]] = (np.arange(n) + 0.5) / max(n, 1)
    m = sp.csr_matrix((vals, cols, indptr), shape=(tokens.shape[0], vocab_size))
    m.sum_duplicates()
    return m


def expressed_genes(tokens: np.ndarray, lengths: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Sorted token ids present in the cells (``tokens[i, :lengths[i]]``), those in ``exclude`` left out."""
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    present = np.unique(tokens[valid])
    return present[~np.isin(present, exclude)]


def applicable_pairs(ranks: sp.csr_matrix, sets: list[np.ndarray], mode: str) -> np.ndarray:
    """Cells x sets: where each set can be perturbed.

    Overexpression applies everywhere; the other modes where the cell expresses every gene of the set.
    """
    applicable = np.ones((ranks.shape[0], len(sets)), dtype=bool)
    if mode != "overexpress" and sets:
        det = ranks.copy()
        det.data[:] = 1.0
        sizes = np.array([m.shape[0] for m in sets])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        expressed = det[:, np.concatenate(sets)].toarray()
        applicable = np.add.reduceat(expressed, starts, axis=1) == sizes[None, :]
    return applicable


def control_columns(
    sets: list[np.ndarray],
    chosen: list[list[tuple[int, ...]]],
    applicable: np.ndarray,
    control_cells: int | None = None,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[list[int]], np.ndarray]:
    """The sets to perturb: the tested ones, then every control set not tested itself (each once).

    Returns all sets, the columns of each tested set's controls among them, and the cells x sets mask of pairs to
    compute: tested sets where they apply, other controls in their tested sets' cells — in at most
    ``control_cells`` of them per tested set (`None`: all). The cells are taken in one seeded random order shared by all tested sets, so
    that sets perturbed in the same cells take their controls' cells from the same ones, and a control shared by
    several tested sets is perturbed once per cell.
    """
    n_tested = len(sets)
    all_sets = list(sets)
    control_cols: list[list[int]] = [[] for _ in range(n_tested)]
    col_of = {tuple(int(x) for x in s): i for i, s in enumerate(all_sets)}
    for s, ctrl in enumerate(chosen):
        for c in ctrl:
            if c not in col_of:
                col_of[c] = len(all_sets)
                all_sets.append(np.array(c))
            control_cols[s].append(col_of[c])
    n_cells = applicable.shape[0]
    cells_of = applicable
    if control_cells is not None and n_cells:
        place = np.empty(n_cells, dtype=np.int64)
        place[np.random.default_rng(seed).permutation(n_cells)] = np.arange(n_cells)
        # a cell's place in the shared order; a set keeps its control_cells applicable cells placed first
        keyed = np.where(applicable, place[:, None], n_cells)
        cut = np.sort(keyed, axis=0)[min(int(control_cells), n_cells) - 1] if control_cells > 0 else -1
        cells_of = applicable & (keyed <= cut)
    want = np.zeros((n_cells, len(all_sets)), dtype=bool)
    want[:, :n_tested] = applicable
    for s in range(n_tested):
        for c in control_cols[s]:
            if c >= n_tested:  # a tested set that is another's control is perturbed in its own cells anyway
                want[:, c] |= cells_of[:, s]
    return all_sets, control_cols, want


def choose_controls(
    ranks: sp.csr_matrix,
    applicable: np.ndarray,
    sets: list[np.ndarray],
    candidates: np.ndarray,
    n_controls: int,
    mode: str,
    seed: int = 0,
    chunk: int = 256,
) -> list[list[tuple[int, ...]]]:
    """For every tested set: up to ``n_controls`` control sets of genes matched member by member on expression rank.

    A member's rank is its mean relative rank over the cells where the set applies. Delete-like modes match among
    candidates expressed in all of those cells (or, where fewer than ``n_controls`` such genes are, the
    best-detected ones; rank averaged over the cells that express them);
    ``overexpress`` counts a gene the cell lacks as ranked last and needs no expression.

    The controls are a window of ``n_controls`` candidates around the tested gene in rank order, with the gene's own
    place in the window drawn at random: the tested gene is then a random member of its matched group (choosing the
    nearest genes would put it at the group's centre, which makes the test conservative).
    """
    rng = np.random.default_rng(seed)
    det = ranks[:, candidates].copy()
    det.data[:] = 1.0
    rk = ranks[:, candidates]
    cand_index = {int(t): j for j, t in enumerate(candidates)}
    out: list[list[tuple[int, ...]]] = []
    for start in range(0, len(sets), chunk):
        block = list(range(start, min(start + chunk, len(sets))))
        ind = sp.csr_matrix(applicable[:, block].T.astype(np.float64))
        n_cells = np.asarray(ind.sum(axis=1)).ravel()
        counts = np.asarray((ind @ det).todense())
        rsum = np.asarray((ind @ rk).todense())
        for row, s in enumerate(block):
            members = sets[s]
            n = n_cells[row]
            if n == 0:
                out.append([])
                continue
            cnt, rs = counts[row], rsum[row]
            if mode == "overexpress":
                score = (rs + (n - cnt)) / n
                ok = np.ones_like(cnt, dtype=bool)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    score = rs / cnt
                # controls are expressed in every cell where the set is perturbed, so that their mean shifts are
                # over the same cells; where too few genes are, the best-detected ones are taken
                need = n_controls + len(members)
                ok = cnt >= n
                if ok.sum() < need:
                    ok = (cnt >= np.sort(cnt)[::-1][min(len(cnt) - 1, need)]) & (cnt > 0)
            member_cols = [cand_index.get(int(m), -1) for m in members]
            ok[[c for c in member_cols if c >= 0]] = False  # a set's genes are never its own controls
            per_member = []
            for m, j in zip(members, member_cols):
                own = score[j] if j >= 0 else _own_score(ranks, applicable[:, s], int(m), mode)
                eligible = np.flatnonzero(ok & np.isfinite(score))
                per_member.append([int(candidates[c]) for c in _window(eligible, score, own, n_controls, rng)])
            k = min(len(p) for p in per_member)
            ctrl = []
            for i in range(k):
                t = tuple(p[i] for p in per_member)
                if len(set(t)) == len(t):
                    ctrl.append(t)
            out.append(ctrl)
    return out


def _window(eligible: np.ndarray, score: np.ndarray, own: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``eligible`` (indices into ``score``) forming a window in score order around ``own``, at a random offset."""
    if eligible.shape[0] <= k:
        return eligible
    order = eligible[np.argsort(score[eligible], kind="stable")]
    pos = int(np.searchsorted(score[order], own))  # where the tested gene sits among the candidates
    start = pos - int(rng.integers(0, k + 1))  # the tested gene takes a random place among the k + 1
    start = min(max(start, 0), order.shape[0] - k)
    return order[start : start + k]


def _own_score(ranks: sp.csr_matrix, cells: np.ndarray, token: int, mode: str) -> float:
    col = ranks[cells][:, [token]].toarray().ravel()
    if mode == "overexpress":
        return float(np.where(col > 0, col, 1.0).mean())
    return float(col[col > 0].mean()) if (col > 0).any() else 1.0

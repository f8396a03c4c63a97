"""`mixgf.tl.perturb`: in silico perturbation with calibrated statistics."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _logging as logg
from .._keys import TOKENS_KEY
from .._settings import settings
from ._utils import TokenSource, prepare_target, provenance, resolve_model, store_path, token_source

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from .._models._classifier import CellClassifier
    from .._models._mixgeneformer import MixGeneformer

DEFAULT_PERTURB_LAYER = -1
"""Hidden state pooled for perturbation: the last block (the Mix-Geneformer perturbation protocol)."""

PERTURB_KEY = "mixgf_perturb"
TestName = Literal["matched", "geneformer", "none"]

_RESULT_COLUMNS = [
    "gene",
    "ensembl_id",
    "species",
    "mode",
    "n_cells",
    "shift_mean",
    "shift_median",
    "shift_sd",
    "expected_shift",
    "shift_vs_expected",
    "n_controls",
    "p_value",
    "p_adj",
    "test",
    "query",
    "via_ortholog",
    "control_genes",
]


# -- cell selection ------------------------------------------------------------------------------------------------
def _select_cells(
    adata: AnnData,
    cells: Any,
    groupby: str | None,
    groups: Sequence[str] | str | None,
) -> np.ndarray:
    mask = np.ones(adata.n_obs, dtype=bool)
    if cells is not None:
        if isinstance(cells, str):
            try:
                hit = adata.obs.query(cells).index
            except Exception as err:
                msg = (
                    f"cells={cells!r} is not a valid query on adata.obs ({err}); e.g. cells='cell_type == \"B cells\"'."
                )
                raise ValueError(msg) from err
            mask &= adata.obs_names.isin(hit)
        else:
            arr = np.asarray(cells)
            if arr.dtype == bool:
                if arr.shape != (adata.n_obs,):
                    msg = f"A boolean `cells` mask must have one entry per cell ({adata.n_obs}), got shape {arr.shape}."
                    raise ValueError(msg)
                mask &= arr
            elif np.issubdtype(arr.dtype, np.integer):
                if arr.size and (arr.min() < -adata.n_obs or arr.max() >= adata.n_obs):
                    msg = f"Cell positions in `cells` must lie in [0, {adata.n_obs}); got [{arr.min()}, {arr.max()}]."
                    raise IndexError(msg)
                sel = np.zeros(adata.n_obs, dtype=bool)
                sel[arr] = True
                mask &= sel
            else:
                names = pd.Index(arr.astype(str))
                unknown = names[~names.isin(adata.obs_names)]
                if len(unknown):
                    msg = f"{len(unknown)} names in `cells` are not cells of adata (e.g. {unknown[:3].tolist()})."
                    raise KeyError(msg)
                mask &= adata.obs_names.isin(names)
    if groupby is not None:
        if groupby not in adata.obs:
            msg = f"groupby={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]})."
            raise KeyError(msg)
        if groups is None:
            msg = "With `groupby`, say which groups to perturb with `groups=`."
            raise ValueError(msg)
        groups = [groups] if isinstance(groups, str) else list(groups)
        present = set(adata.obs[groupby].astype(str))
        missing = [g for g in groups if str(g) not in present]
        if missing:
            msg = f"groups {missing} are not values of adata.obs[{groupby!r}] (values: {sorted(present)[:20]})."
            raise KeyError(msg)
        mask &= adata.obs[groupby].astype(str).isin([str(g) for g in groups]).to_numpy()
    return mask


def _check_goal(adata: AnnData, goal: Mapping[str, Any]) -> tuple[str, str | None, str]:
    if not isinstance(goal, Mapping) or "key" not in goal or "target" not in goal:
        msg = "goal must be a dict like {'key': 'disease', 'source': 'ADPKD', 'target': 'normal'} ('source' optional)."
        raise ValueError(msg)
    key, source, target = goal["key"], goal.get("source"), goal["target"]
    if key not in adata.obs:
        msg = f"goal key {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]})."
        raise KeyError(msg)
    values = set(adata.obs[key].dropna().astype(str))
    for role, v in (("source", source), ("target", target)):
        if v is not None and str(v) not in values:
            msg = f"goal {role} {v!r} is not a value of adata.obs[{key!r}] (values: {sorted(values)[:20]})."
            raise KeyError(msg)
    return str(key), None if source is None else str(source), str(target)


# -- genes -----------------------------------------------------------------------------------------------------------
def _gene_sets(genes: Any, vocab: Any, species: str) -> list[list[Any]]:
    """Resolve ``genes`` (names, or lists of names perturbed together) to lists of ResolvedGene."""
    from ..genes import resolve_genes

    if isinstance(genes, str):
        genes = [genes]
    items = [[g] if isinstance(g, str) else list(g) for g in genes]
    if not items or any(len(i) == 0 for i in items):
        msg = "genes must be 'all', a gene name, or a non-empty list of names (or of lists of names)."
        raise ValueError(msg)
    out = []
    seen = set()
    for item in items:
        res = resolve_genes([str(x) for x in item], vocab, species)
        key = tuple(sorted(r.token for r in res))
        if len(set(key)) != len(key):
            msg = f"The gene set {item} names the same gene twice."
            raise ValueError(msg)
        if key in seen:
            logg.warn(f"gene set {item} is listed twice; it is perturbed once.")
            continue
        seen.add(key)
        for r in res:
            if r.via_ortholog is not None:
                logg.info(f"    {r.query!r} mapped to its one-to-one {species} ortholog {r.symbol} ({r.ensembl_id})")
        out.append(res)
    return out


# -- matched controls ----------------------------------------------------------------------------------------------
def _rank_matrix(tokens: np.ndarray, lengths: np.ndarray, n_front: int, n_back: int, vocab_size: int) -> sp.csr_matrix:
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


def _choose_controls(
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


# -- statistics ----------------------------------------------------------------------------------------------------
def _interp_rows(x: np.ndarray, xs: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weights with which :func:`numpy.interp` predicts at ``x`` (flat beyond the ends), for many rows at once.

    ``xs`` holds one ascending row per query, its first ``m`` entries valid (the rest ``inf``). Returns the two
    positions and the weight of the second: the prediction is ``(1 - a) * v[lo] + a * v[hi]``.
    """
    rows = np.arange(xs.shape[0])
    first, last = xs[:, 0], xs[rows, m - 1]
    flat_lo = x <= first
    flat_hi = ~flat_lo & (x >= last)
    j = np.clip((xs <= x[:, None]).sum(axis=1), 1, np.maximum(m - 1, 1))
    left, right = xs[rows, j - 1], xs[rows, j]
    gap = right - left
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(gap > 0, (x - left) / np.where(gap > 0, gap, 1.0), 0.5)
    lo = np.where(flat_lo, 0, np.where(flat_hi, m - 1, j - 1))
    hi = np.where(flat_lo, 0, np.where(flat_hi, m - 1, j))
    a = np.where(flat_lo | flat_hi, 0.0, a)
    return lo, hi, a


def _matched_test(
    shifts: np.ndarray,
    applicable: np.ndarray,
    tested: int,
    control_cols: list[list[int]],
    sets: list[np.ndarray],
    ranks: sp.csr_matrix,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tested set: expected shift from its controls, number of controls, t statistic and two-sided p-value.

    In every cell where the tested set is perturbed, its expected shift is interpolated between the controls nearest
    to it in rank in that cell (flat beyond the outermost control), and its residual is its shift minus that; each
    control's residual is interpolated in the same way from the other controls present in the cell. Residuals are
    averaged per gene over its cells: ``d = A u`` where ``A`` (from the interpolation weights) maps the genes' own
    effects ``u`` to their mean residuals. Under the null the tested set and its controls are exchangeable genes
    (``u`` independent with a common variance), so the variance of ``d_0 - mean(d_controls)`` relative to the
    expected sample variance of ``d_controls`` is known from ``A``:
    ``t = (d_0 - mean(d_c)) / sqrt(var(d_c) * kappa)`` with ``kappa = c'AA'c / (tr(H A_c A_c' H) / (K - 1))`` and
    Satterthwaite degrees of freedom from the eigenvalues of ``H A_c A_c' H`` (``H`` centres the K controls).
    Were the mean residuals independent with equal variances (``AA' = I``) this would be the prediction-interval
    t-test (``kappa = 1 + 1/K``, ``K - 1`` degrees of freedom); they are not: interpolation correlates neighbouring
    controls, and a gene seen in several cells, whose controls change order between cells or lie on one side of it,
    has a mean residual of another variance than its controls'. Accounting for that keeps the test's size.
    """
    from scipy import stats

    has = ~np.isnan(shifts)
    expected = np.full(tested, np.nan)
    n_ctrl = np.zeros(tested, dtype=np.int64)
    t_stat = np.full(tested, np.nan)
    p = np.full(tested, np.nan)

    def rank_matrix(sub_ranks: sp.csr_matrix, member_sets: list[np.ndarray]) -> np.ndarray:
        """Cells x sets: relative rank of each set (mean over its members) in each cell."""
        flat = np.concatenate(member_sets)
        r = sub_ranks[:, flat].toarray()
        r[r == 0] = 1.0  # a gene the cell lacks (overexpression) counts as ranked last
        bounds = np.cumsum([0, *[m.shape[0] for m in member_sets]])
        return np.add.reduceat(r, bounds[:-1], axis=1) / np.diff(bounds)[None, :]

    for s in range(tested):
        rows = np.flatnonzero(applicable[:, s] & has[:, s])
        if rows.shape[0] == 0 or not control_cols[s]:
            continue
        cols = np.asarray(control_cols[s])
        y = shifts[np.ix_(rows, cols)]  # cells x controls
        ok = ~np.isnan(y)
        keep = ok.any(axis=0)
        n_ctrl[s] = int(keep.sum())
        if n_ctrl[s] < 3:
            continue
        y, ok, cols = y[:, keep], ok[:, keep], cols[keep]
        k = cols.shape[0]
        sub_ranks = ranks[rows]
        r = rank_matrix(sub_ranks, [sets[c] for c in cols])
        r0 = rank_matrix(sub_ranks, [sets[s]])[:, 0]
        # genes: 0 = the tested set, 1..k = its controls; A accumulates each cell's residual operator
        a_sum = np.zeros((k + 1, k + 1))
        resid_sum = np.zeros(k + 1)
        n_obs = np.zeros(k + 1)
        # per cell, the controls present sorted by rank (absent ones last, at +inf)
        m = ok.sum(axis=1)
        use = m >= 3
        if not use.any():
            continue
        r_use, y_use, ok_use, m = r[use], y[use], ok[use], m[use]
        keyed = np.where(ok_use, r_use, np.inf)
        order = np.argsort(keyed, axis=1, kind="stable")
        sr = np.take_along_axis(keyed, order, axis=1)
        sy = np.take_along_axis(np.where(ok_use, y_use, 0.0), order, axis=1)
        cells = np.arange(sr.shape[0])
        # the tested set, interpolated from all of the cell's controls
        lo, hi, w = _interp_rows(r0[use], sr, m)
        pred = (1 - w) * sy[cells, lo] + w * sy[cells, hi]
        a_sum[0, 0] += cells.shape[0]
        np.add.at(a_sum[0], 1 + order[cells, lo], -(1 - w))
        np.add.at(a_sum[0], 1 + order[cells, hi], -w)
        resid_sum[0] += float((shifts[rows[use], s] - pred).sum())
        n_obs[0] += cells.shape[0]
        # every control, interpolated from the cell's other controls (leave one out)
        kc = sr.shape[1]
        pos = np.arange(kc - 1)
        drop = pos[None, :] + (pos[None, :] >= np.arange(kc)[:, None])  # [q, kc - 1]: the positions other than q
        cell_q, q = np.nonzero(np.arange(kc)[None, :] < m[:, None])
        others = drop[q]  # [pairs, kc - 1] positions in the sorted row
        o_r = sr[cell_q[:, None], others]
        lo, hi, w = _interp_rows(sr[cell_q, q], o_r, m[cell_q] - 1)
        lo_pos, hi_pos = others[np.arange(q.shape[0]), lo], others[np.arange(q.shape[0]), hi]
        pred_c = (1 - w) * sy[cell_q, lo_pos] + w * sy[cell_q, hi_pos]
        g = 1 + order[cell_q, q]
        flat = a_sum.reshape(-1)
        np.add.at(flat, g * (k + 1) + g, 1.0)
        np.add.at(flat, g * (k + 1) + 1 + order[cell_q, lo_pos], -(1 - w))
        np.add.at(flat, g * (k + 1) + 1 + order[cell_q, hi_pos], -w)
        np.add.at(resid_sum, g, sy[cell_q, q] - pred_c)
        np.add.at(n_obs, g, 1.0)
        expected[s] = float(pred.mean())
        seen = n_obs > 0  # the tested set always is; a control may be present in too few cells to be scored
        if seen[1:].sum() < 3:
            continue
        amat = a_sum[seen] / n_obs[seen][:, None]
        d = resid_sum[seen] / n_obs[seen]
        kk = d.shape[0] - 1
        cov = amat @ amat.T  # covariance of the mean residuals, in units of the genes' common variance
        centre = np.eye(kk) - 1.0 / kk
        spread = centre @ cov[1:, 1:] @ centre
        ev = np.clip(np.linalg.eigvalsh(spread), 0.0, None)
        ctrl_var = float(d[1:].var(ddof=1))
        if not (ctrl_var > 0 and ev.sum() > 0):
            continue
        contrast = np.concatenate([[1.0], np.full(kk, -1.0 / kk)])
        kappa = float(contrast @ cov @ contrast) / (ev.sum() / (kk - 1))
        if not kappa > 0:
            continue
        df = ev.sum() ** 2 / (ev**2).sum()
        t_stat[s] = float(contrast @ d) / np.sqrt(ctrl_var * kappa)
        p[s] = 2 * stats.t.sf(abs(t_stat[s]), df)
    return expected, n_ctrl, t_stat, p


def _geneformer_test(values: list[np.ndarray], seed: int, pool_max: int = 100_000) -> np.ndarray:
    """Geneformer's statistic: Wilcoxon rank-sum of a gene's shifts against the pooled shifts of all genes."""
    from scipy import stats

    pool = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) else np.empty(0)
    if pool.shape[0] > pool_max:
        pool = np.random.default_rng(seed).choice(pool, pool_max, replace=False)
    out = np.full(len(values), np.nan)
    if len(values) < 2:
        return out
    for i, v in enumerate(values):
        if v.size and pool.size:
            out[i] = stats.ranksums(pool, v).pvalue
    return out


def _bh(p: np.ndarray) -> np.ndarray:
    from statsmodels.stats.multitest import multipletests

    out = np.full_like(p, np.nan, dtype=np.float64)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


# -- model work shared between processes ----------------------------------------------------------------------------
def _embed_shared(
    encoder: Any, src: TokenSource, idx: np.ndarray, rank: int, world: int, emb_kw: dict[str, Any]
) -> np.ndarray:
    """Embeddings of the cells ``idx`` (in that order); with ``world > 1`` each rank embeds a share, all get all."""
    from ..engine._distributed import all_gather_rows, partition_cells
    from ..engine._inference import embed_tokens

    lengths = src.lengths[idx]
    share = partition_cells(idx.shape[0], world, weights=lengths)[rank]
    hidden = int(encoder.config.hidden_size)
    local = np.empty((0, hidden), dtype=np.float32)
    if share.size:
        local = embed_tokens(encoder, src.take(idx[share]), lengths[share], **emb_kw)
    if world == 1:
        return local
    return all_gather_rows(local, share, idx.shape[0])


def _shifts_shared(
    encoder: Any,
    tokens: np.ndarray,
    lengths: np.ndarray,
    sets: list[np.ndarray],
    rank: int,
    world: int,
    *,
    applicable: np.ndarray,
    return_embeddings: bool,
    **kw: Any,
) -> Any:
    """:func:`mixgf.model.perturbation_shifts`, shared between ``world`` processes.

    With ``world > 1`` each rank perturbs a contiguous share of the cells, balanced by the tokens it embeds (cell
    length times one plus its number of perturbed copies), and every rank gathers every cell's results.
    """
    from ..engine._distributed import all_gather_rows, all_reduce_scalar, partition_cells
    from ..engine.perturb._copies import PerturbationResult, perturbation_shifts

    if world == 1:
        return perturbation_shifts(
            encoder, tokens, lengths, sets, applicable=applicable, return_embeddings=return_embeddings, **kw
        )
    cost = lengths.astype(np.float64) * (1.0 + applicable.sum(axis=1))
    share = partition_cells(tokens.shape[0], world, weights=cost)[rank]
    res = perturbation_shifts(
        encoder,
        tokens[share],
        lengths[share],
        sets,
        applicable=applicable[share],
        return_embeddings=return_embeddings,
        **kw,
    )
    n = tokens.shape[0]
    perturbed = all_gather_rows(res.perturbed, share, n) if return_embeddings else None
    return PerturbationResult(
        shifts=all_gather_rows(res.shifts, share, n),
        original=all_gather_rows(res.original, share, n),
        perturbed=perturbed,
        n_copies=int(all_reduce_scalar(res.n_copies, "sum")),
    )


# -- the tool --------------------------------------------------------------------------------------------------------
def perturb(
    adata: AnnData,
    genes: str | Sequence[str | Sequence[str]] = "all",
    *,
    mode: Literal["delete", "overexpress", "inhibit", "activate"] = "delete",
    cells: Any = None,
    groupby: str | None = None,
    groups: Sequence[str] | str | None = None,
    max_cells: int | None = None,
    goal: Mapping[str, Any] | None = None,
    max_goal_cells: int = 2000,
    model: MixGeneformer | CellClassifier | str | Path | None = None,
    tokens_key: str = TOKENS_KEY,
    layer: int | None = None,
    pooling: Literal["mean", "cls"] = "mean",
    rank_shift: float | int = 0.25,
    test: TestName = "matched",
    n_controls: int = 20,
    device: str | None = None,
    dtype: str | None = None,
    token_budget: int | None = None,
    distributed: bool | None = None,
    store_embeddings: bool = False,
    seed: int = 0,
    key_added: str = PERTURB_KEY,
    inplace: bool = True,
    copy: bool = False,
) -> pd.DataFrame | AnnData | None:
    """Perturb genes in silico and measure how far each perturbation moves the cells' embeddings.

    Each selected cell's rank list is edited (``mode``), the perturbed copy is embedded with the same model, layer
    and pooling as the original, and the cell's shift is recorded. Copies of many cells are embedded together in
    token-budget batches (packed attention on GPUs); each original cell is embedded once.

    **The shift.** Without a goal, ``shift = 1 - cos(original, perturbed)``: how far the cell moved, a magnitude
    (0 = unchanged; Geneformer stores the cosine *similarity* under the name "shift" — this is one minus it). With
    ``goal={"key": "disease", "source": "ADPKD", "target": "normal"}``, only cells of the source state are perturbed
    and ``shift = cos(perturbed, c) - cos(original, c)`` with ``c`` the mean original embedding of the target cells:
    positive means toward the goal (the Mix-Geneformer paper's metric). Cells that do not express a deleted
    (inhibited, activated) gene are skipped and counted, never scored as zero.

    **The statistics** (per gene or gene set): ``n_cells``, mean, median and standard deviation of the shift, and a
    p-value from ``test``:

    ``"matched"`` (default)
        Against a null of ``n_controls`` control genes matched to the tested gene by expression rank in the same
        cells. The controls are genes expressed in every cell where the tested gene is perturbed (or, where too few
        are, the best-detected ones), taken as a window around the tested gene's mean relative rank in those cells
        with the tested gene at a random place in the window; each is perturbed in the same cells. In every cell the
        tested gene's expected shift is interpolated between the controls nearest to it in rank (its mean is
        ``expected_shift``, the difference ``shift_vs_expected``), and each control's residual is interpolated from
        the other controls in the same way. The tested gene's mean residual over the cells is compared with its
        controls' by a two-sided t-test whose scale and degrees of freedom come from the interpolation weights:
        the mean residuals are linear combinations of the genes' own effects, correlated between neighbouring
        controls and of unequal variance when the controls change order between cells (the perturbation guide
        gives the formula). It asks whether the gene moves the cells more (or less) than a gene of the same
        expression rank would, and assumes that a null gene is exchangeable with its rank-matched controls and
        that their mean residuals are roughly normal. The unit of replication is the gene, not the cell. With
        ``genes="all"`` the controls are the other perturbed genes (no extra work); with a gene list they cost
        ``n_controls`` extra perturbations per gene and cell.
    ``"geneformer"``
        Geneformer's ``InSilicoPerturberStats`` statistic: Wilcoxon rank-sum of the gene's per-cell shifts against
        the per-cell shifts of all perturbed genes pooled (the tested gene included; down-sampled to 100,000 values,
        seeded). Reproduces published numbers; it treats every (cell, gene) value as independent, so with many cells
        nearly every gene becomes significant. Needs at least two genes.
    ``"none"``
        No p-values.

    p-values are adjusted with Benjamini–Hochberg across genes (``p_adj``).

    Parameters
    ----------
    adata
        Cells tokenized with the model's vocabulary (tokenized on the fly otherwise).
    genes
        ``"all"`` (every gene expressed in the selected cells), a gene, or a list of genes: symbols or Ensembl IDs
        of either species; a gene of the other species is mapped through the one-to-one ortholog table (logged and
        kept in the ``via_ortholog`` column). An inner list (``[["A", "B"]]``) is perturbed together.
    mode
        ``"delete"`` removes the gene's token; ``"overexpress"`` moves it to the front (inserts it there when the
        cell lacks it); ``"inhibit"`` / ``"activate"`` move it ``rank_shift`` down / up the list.
    cells
        Cells to perturb: a boolean mask, integer positions, obs names, or a query on ``adata.obs``
        (``'cell_type == "B cells"'``). Combined with ``groupby`` / ``groups`` and the goal's source.
    groupby, groups
        Perturb the cells whose ``adata.obs[groupby]`` is one of ``groups``.
    max_cells
        Perturb at most this many of the selected cells, drawn at random (``seed``).
    goal
        ``{"key": obs column, "source": state of the perturbed cells (optional), "target": goal state}``.
    max_goal_cells
        At most this many target cells (drawn with ``seed``) make the goal centroid.
    model
        A :class:`mixgf.MixGeneformer`, a :class:`mixgf.CellClassifier` (its fine-tuned encoder is used), a model
        directory, or `None` for the bundled default model.
    tokens_key
        ``obsm`` key of the tokens.
    layer
        Hidden state to pool (see :func:`mixgf.tl.embed`); `None`: the classifier's layer, else ``-1`` (last block,
        as in Mix-Geneformer's perturbation analyses).
    pooling
        ``"mean"`` or ``"cls"``.
    rank_shift
        How far ``inhibit`` / ``activate`` move a gene: a fraction of the cell's genes (default ``0.25``, a
        quartile) or a number of positions (int).
    test
        ``"matched"``, ``"geneformer"`` or ``"none"``.
    n_controls
        Matched control genes per tested gene (``test="matched"``).
    device, dtype, token_budget
        As in :func:`mixgf.tl.embed`.
    distributed
        Share the model work between the processes of a :mod:`torch.distributed` process group (``torchrun``; see
        :func:`mixgf.tl.embed`): each rank embeds a token-balanced share of the selected cells, their perturbed
        copies and the goal cells on its own device; the per-cell results are gathered, and every rank computes the
        same controls and statistics and returns (writes) the same result as a single process would. Every rank
        must call ``perturb`` with the same ``adata`` and arguments. `None` (default): on when a process group with
        more than one process is initialised; `False`: every process does all the work.
    store_embeddings
        Also keep the original and every perturbed embedding (``uns[key_added]["perturbed_embeddings"]``: selected
        cells × genes × hidden).
    seed
        Seed of the cell subsampling and of the Geneformer test's pool.
    key_added
        Where to store the results (see Returns).
    inplace
        Write into ``adata``; with ``inplace=False`` only return the results table.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    With ``inplace=False`` the results DataFrame. Otherwise `None` (or a copy when ``copy=True``) with

    ``adata.uns[key_added]["results"]`` : `pandas.DataFrame`
        One row per gene or gene set: ``gene``, ``ensembl_id``, ``species``, ``mode``, ``n_cells``, ``shift_mean``,
        ``shift_median``, ``shift_sd``, ``expected_shift``, ``shift_vs_expected``, ``n_controls``, ``p_value``,
        ``p_adj``, ``test``, ``query``, ``via_ortholog``, ``control_genes`` (and ``goal_source``,
        ``goal_target`` with a goal), sorted by p-value. Read it with :func:`mixgf.get.perturb_df`.
    ``adata.uns[key_added]["params"]`` : dict
        Model, layer, pooling, mode, goal, test, cell counts (selected, perturbed, skipped), copies embedded, time.
    ``adata.obsm[key_added + "_shift"]`` : `pandas.DataFrame` (cells × genes)
        Per-cell shifts; NaN for cells not perturbed or not expressing the gene.
    ``adata.obsm[key_added + "_original"]`` : `numpy.ndarray` (cells × hidden)
        Embeddings of the unperturbed cells (NaN for cells not perturbed).

    Examples
    --------
    Delete CD74 and CD79A in 20 of the B cells (each cell's top 256 genes, 5 matched controls per gene, to keep the
    example fast):

    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> mgf.tl.perturb(adata, genes=["CD74", "CD79A"], cells='cell_type == "B cells"', max_cells=20, n_controls=5)
    >>> mgf.get.perturb_df(adata).columns[:6].tolist()
    ['gene', 'ensembl_id', 'species', 'mode', 'n_cells', 'shift_mean']
    >>> adata.uns["mixgf_perturb"]["params"]["n_cells_perturbed"]
    20
    >>> adata.obsm["mixgf_perturb_shift"].columns.tolist()
    ['CD74', 'CD79A']
    """
    from .._models._classifier import CellClassifier
    from ..engine._device import rank_device, resolve_dtype
    from ..engine._distributed import all_reduce_scalar, rank_world, use_distributed
    from ..engine.perturb._copies import _check_mode

    t_start = time.perf_counter()
    _check_mode(mode, rank_shift)
    if test not in ("matched", "geneformer", "none"):
        msg = f"Unknown test {test!r}; use 'matched', 'geneformer' or 'none'."
        raise ValueError(msg)
    if test == "matched" and n_controls < 3:
        msg = f"test='matched' needs n_controls >= 3 (got {n_controls}); use test='none' to skip p-values."
        raise ValueError(msg)
    if isinstance(model, CellClassifier):
        mdl = model.model
        layer = model.layer if layer is None else layer
    else:
        mdl = resolve_model(model)
    layer = DEFAULT_PERTURB_LAYER if layer is None else int(layer)
    rank, world = rank_world() if use_distributed(distributed) else (0, 1)
    dev = rank_device(settings.device if device is None else device)
    if inplace:
        target = prepare_target(adata, copy=copy)
    elif tokens_key in adata.obsm or store_path(adata, tokens_key) is not None:
        target = adata  # only read
    else:
        target = adata.copy()  # tokens computed on the fly go to a copy: adata stays untouched
    src = token_source(target, mdl, tokens_key)  # obsm, or a token store (only the cells needed are read)
    lengths = src.lengths
    species = str(target.uns[tokens_key]["params"]["species"])
    vocab = mdl.vocab
    n_front, n_back = int(vocab.rules.add_cls), int(vocab.rules.add_eos)

    # cells
    mask = _select_cells(target, cells, groupby, groups)
    goal_spec = None
    if goal is not None:
        goal_spec = _check_goal(target, goal)
        if goal_spec[1] is not None:
            mask &= (target.obs[goal_spec[0]].astype(str) == goal_spec[1]).to_numpy()
    empty = lengths <= n_front + n_back
    n_empty = int((mask & empty).sum())
    if n_empty:
        logg.warn(f"{n_empty} selected cells have no gene token and are left out.")
    mask &= ~empty
    if not mask.any():
        msg = "No cell to perturb: the selection (cells / groupby / goal source) is empty or holds only empty cells."
        raise ValueError(msg)
    sel = np.flatnonzero(mask)
    rng = np.random.default_rng(seed)
    if max_cells is not None and sel.shape[0] > max_cells:
        sel = np.sort(rng.choice(sel, int(max_cells), replace=False))
    sel_tokens = np.asarray(src.take(sel)).astype(np.int64)
    sel_lengths = lengths[sel]

    # genes
    symbol_table = _symbol_table(vocab)
    special = {int(i) for i in vocab.special_ids} | {vocab.id_of("pad")}
    if isinstance(genes, str) and genes == "all":
        valid = np.arange(sel_tokens.shape[1])[None, :] < sel_lengths[:, None]
        present = np.unique(sel_tokens[valid])
        present = present[~np.isin(present, list(special))]
        symbols = _symbols(symbol_table, present)
        tested_sets = [np.array([t]) for t in present]
        info = [
            {"gene": symbols[i], "ensembl_id": vocab.tokens[t], "query": vocab.tokens[t], "via_ortholog": ""}
            for i, t in enumerate(present.tolist())
        ]
    else:
        resolved = _gene_sets(genes, vocab, species)
        tested_sets = [np.array([r.token for r in rs]) for rs in resolved]
        info = [
            {
                "gene": "+".join(r.symbol for r in rs),
                "ensembl_id": "+".join(r.ensembl_id for r in rs),
                "query": "+".join(r.query for r in rs),
                "via_ortholog": "+".join(r.via_ortholog or "" for r in rs).strip("+"),
            }
            for rs in resolved
        ]
    n_tested = len(tested_sets)
    labels = _unique_labels([i["gene"] for i in info])
    ranks = _rank_matrix(sel_tokens, sel_lengths, n_front, n_back, len(vocab))
    det = ranks.copy()
    det.data[:] = 1.0
    # where each set applies: overexpression everywhere, the other modes where the cell expresses every gene
    applicable = np.ones((sel.shape[0], n_tested), dtype=bool)
    if mode != "overexpress" and n_tested:
        sizes = np.array([m.shape[0] for m in tested_sets])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        expressed = det[:, np.concatenate(tested_sets)].toarray()
        applicable = np.add.reduceat(expressed, starts, axis=1) == sizes[None, :]
    t0 = logg.info(
        f"perturbing {n_tested:,} gene set(s) ({mode}) in {sel.shape[0]:,} {species} cells with model {mdl.name!r} "
        f"on {dev}"
    )

    # controls
    all_sets = list(tested_sets)
    control_cols: list[list[int]] = [[] for _ in range(n_tested)]
    control_names: list[str] = [""] * n_tested
    if test == "matched":
        tested_tokens = np.unique(np.concatenate(tested_sets))
        if isinstance(genes, str) and genes == "all":
            candidates = tested_tokens
        else:
            detected = np.flatnonzero(np.asarray(det.sum(axis=0)).ravel() > 0)
            candidates = detected[(vocab.gene_species[detected] == species) & ~np.isin(detected, tested_tokens)]
        chosen = _choose_controls(ranks, applicable, tested_sets, candidates, n_controls, mode, seed=seed)
        col_of = {tuple(int(x) for x in s): i for i, s in enumerate(all_sets)}
        for s, ctrl in enumerate(chosen):
            for c in ctrl:
                if c not in col_of:
                    col_of[c] = len(all_sets)
                    all_sets.append(np.array(c))
                control_cols[s].append(col_of[c])
            control_names[s] = ";".join("+".join(_symbols(symbol_table, np.array(c))) for c in ctrl)
    # which (cell, set) pairs to compute: tested sets where they apply, controls only in their tested sets' cells
    want = np.zeros((sel.shape[0], len(all_sets)), dtype=bool)
    want[:, :n_tested] = applicable
    for s in range(n_tested):
        for c in control_cols[s]:
            if c >= n_tested:
                want[:, c] |= applicable[:, s]

    # goal centroid
    emb_kw = {
        "layer": layer,
        "pooling": pooling,
        "special_ids": [int(i) for i in vocab.special_ids],
        "device": dev,
        "dtype": dtype,
        "token_budget": token_budget,
    }
    centroid = None
    n_goal = 0
    if goal_spec is not None:
        gmask = (target.obs[goal_spec[0]].astype(str) == goal_spec[2]).to_numpy() & ~empty
        gidx = np.flatnonzero(gmask)
        if gidx.shape[0] == 0:
            msg = f"No cell with tokens has adata.obs[{goal_spec[0]!r}] == {goal_spec[2]!r}: the goal has no centroid."
            raise ValueError(msg)
        if gidx.shape[0] > max_goal_cells:
            gidx = np.sort(rng.choice(gidx, max_goal_cells, replace=False))
        n_goal = int(gidx.shape[0])
        centroid = _embed_shared(mdl.encoder, src, gidx, rank, world, emb_kw).mean(axis=0)

    res = _shifts_shared(
        mdl.encoder,
        sel_tokens,
        sel_lengths,
        all_sets,
        rank,
        world,
        mode=mode,
        applicable=want,
        goal=centroid,
        rank_shift=rank_shift,
        max_len=vocab.rules.max_len,
        n_front=n_front,
        n_back=n_back,
        return_embeddings=store_embeddings,
        progress=settings.progress_bar and rank == 0,
        **emb_kw,
    )
    shifts = res.shifts

    # statistics
    values = [shifts[applicable[:, s] & ~np.isnan(shifts[:, s]), s] for s in range(n_tested)]
    n_cells = np.array([v.shape[0] for v in values])
    with np.errstate(all="ignore"):
        mean = np.array([v.mean() if v.size else np.nan for v in values])
        median = np.array([np.median(v) if v.size else np.nan for v in values])
        sd = np.array([v.std(ddof=1) if v.size > 1 else np.nan for v in values])
    expected = np.full(n_tested, np.nan)
    n_ctrl = np.zeros(n_tested, dtype=np.int64)
    if test == "matched":
        expected, n_ctrl, _, p = _matched_test(shifts, applicable, n_tested, control_cols, all_sets, ranks)
    elif test == "geneformer":
        if n_tested < 2:
            logg.warn("test='geneformer' compares a gene with all perturbed genes pooled: it needs two or more genes.")
        p = _geneformer_test(values, seed)
    else:
        p = np.full(n_tested, np.nan)
    never = np.flatnonzero(n_cells == 0)
    if never.size:
        logg.warn(
            f"{never.size} gene set(s) could not be perturbed in any selected cell (not expressed there), "
            f"e.g. {[labels[i] for i in never[:5]]}; their rows have n_cells 0."
        )
    df = pd.DataFrame(
        {
            "gene": labels,
            "ensembl_id": [i["ensembl_id"] for i in info],
            "species": species,
            "mode": mode,
            "n_cells": n_cells,
            "shift_mean": mean,
            "shift_median": median,
            "shift_sd": sd,
            "expected_shift": expected,
            "shift_vs_expected": mean - expected,
            "n_controls": n_ctrl,
            "p_value": p,
            "p_adj": _bh(p),
            "test": test,
            "query": [i["query"] for i in info],
            "via_ortholog": [i["via_ortholog"] for i in info],
            "control_genes": control_names,
        },
        columns=_RESULT_COLUMNS,
    )
    if goal_spec is not None:
        df["goal_source"] = goal_spec[1] or ""
        df["goal_target"] = goal_spec[2]
    order = np.lexsort((-np.abs(df["shift_mean"].fillna(0).to_numpy()), df["p_value"].fillna(np.inf).to_numpy()))
    df = df.iloc[order].set_index(pd.Index(df["gene"].to_numpy()[order], name=None))

    n_perturbed = int((~np.isnan(shifts[:, :n_tested])).any(axis=1).sum())
    elapsed = time.perf_counter() - t_start
    if world > 1:
        elapsed = all_reduce_scalar(elapsed, "max")  # the same params on every rank
    params = provenance(
        mdl,
        genes="all" if isinstance(genes, str) and genes == "all" else [i["query"] for i in info],
        mode=mode,
        rank_shift=rank_shift,
        layer=layer,
        pooling=pooling,
        tokens_key=tokens_key,
        test=test,
        n_controls=n_controls if test == "matched" else 0,
        goal_key=goal_spec[0] if goal_spec else None,
        goal_source=goal_spec[1] if goal_spec else None,
        goal_target=goal_spec[2] if goal_spec else None,
        n_goal_cells=n_goal,
        n_cells_selected=int(sel.shape[0]),
        n_cells_perturbed=n_perturbed,
        n_cells_skipped=int(sel.shape[0] - n_perturbed),
        n_copies=res.n_copies,
        max_cells=max_cells,
        seed=seed,
        device=str(dev) if world == 1 else dev.type,
        dtype=str(resolve_dtype(dtype, dev)).removeprefix("torch."),
        token_budget=token_budget,
        world_size=world,
        seconds=round(elapsed, 3),
    )
    logg.info(f"    {res.n_copies:,} perturbed copies embedded", start=t0)
    if not inplace:
        return df
    full = np.full((target.n_obs, n_tested), np.nan, dtype=np.float32)
    full[sel] = shifts[:, :n_tested]
    target.obsm[f"{key_added}_shift"] = pd.DataFrame(full, index=target.obs_names, columns=labels)
    orig = np.full((target.n_obs, res.original.shape[1]), np.nan, dtype=np.float32)
    orig[sel] = res.original
    target.obsm[f"{key_added}_original"] = orig
    entry: dict[str, Any] = {"params": params, "results": df}
    if store_embeddings and res.perturbed is not None:
        entry["perturbed_embeddings"] = res.perturbed[:, :n_tested]
        entry["cells"] = target.obs_names[sel].to_numpy().astype(str)
        entry["genes"] = np.asarray(labels, dtype=str)
    target.uns[key_added] = entry
    logg.info(
        f"    added {key_added!r} (adata.uns: results, params), {key_added + '_shift'!r}, "
        f"{key_added + '_original'!r} (adata.obsm)"
    )
    return target if copy else None


def _symbol_table(vocab: Any) -> np.ndarray:
    """Symbol (or Ensembl ID where none is known) of every token of the vocabulary."""
    from ..genes import id_to_symbol

    maps = {s: id_to_symbol(s) for s in ("human", "mouse")}
    species = vocab.gene_species
    return np.array([maps.get(str(sp), {}).get(t, t) for t, sp in zip(vocab.tokens, species)], dtype=object)


def _symbols(table: np.ndarray, tokens: np.ndarray) -> list[str]:
    return [str(x) for x in table[np.asarray(tokens, dtype=np.int64)]]


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if lab in seen:
            seen[lab] += 1
            out.append(f"{lab}-{seen[lab]}")
        else:
            seen[lab] = 0
            out.append(lab)
    return out

"""An in silico perturbation screen on token arrays: controls, perturbed copies, shifts and their statistics.

Pure numpy/scipy/pandas/torch; :func:`mixgf.tl.perturb` is its AnnData face (cell selection, gene names, writing).
:func:`run_screen` chooses each tested gene set's matched controls (:mod:`._controls`), embeds the perturbed copies
of every cell (:func:`mixgf.model.perturbation_shifts`, shared between ``torchrun`` processes), and tests every set
(:mod:`._stats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._distributed import all_gather_rows, all_reduce_scalar, partition_cells, rank_world, use_distributed
from .._inference import embed_tokens
from ._controls import applicable_pairs, choose_controls, control_columns, rank_matrix
from ._copies import PerturbationResult, perturbation_shifts
from ._stats import STAT_COLUMNS, benjamini_hochberg, geneformer_test, matched_test, shift_summary

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from ...module._encoder import BertEncoderModel
    from ._copies import PerturbMode

__all__ = ["STAT_COLUMNS", "ScreenResult", "run_screen"]

TestName = Literal["matched", "geneformer", "none"]


@dataclass
class ScreenResult:
    """Output of :func:`run_screen`.

    Attributes
    ----------
    stats
        One row per tested gene set, in input order: ``n_cells`` (cells where it was perturbed), mean, median and
        standard deviation of its shifts, ``expected_shift`` (mean of its controls' interpolated shifts, matched test
        only), ``shift_vs_expected`` (mean of its shift minus the expected one), both over the ``n_control_cells``
        cells where its controls were perturbed, ``n_controls`` (controls scored), ``p_value`` and BH-adjusted
        ``p_adj``.
    shifts
        ``[n_cells, n_sets]`` float64 shift per cell and tested set; NaN where it was not perturbed.
    original
        ``[n_cells, hidden]`` float32 embeddings of the unperturbed cells.
    perturbed
        ``[n_cells, n_sets, hidden]`` float32 perturbed embeddings with ``return_embeddings=True``, else `None`.
    controls
        Per tested set, its control sets (token ids, one per member of the set).
    n_copies
        Perturbed copies embedded, controls included (summed over processes).
    n_goal_cells
        Cells whose mean embedding is the goal (0 without a goal).
    world_size
        Processes that shared the work.
    """

    stats: pd.DataFrame
    shifts: np.ndarray
    original: np.ndarray
    perturbed: np.ndarray | None
    controls: list[list[tuple[int, ...]]]
    n_copies: int
    n_goal_cells: int
    world_size: int

    @property
    def n_cells_perturbed(self) -> int:
        """Cells in which at least one tested set was perturbed."""
        return int((~np.isnan(self.shifts)).any(axis=1).sum())


def run_screen(
    encoder: BertEncoderModel,
    tokens: np.ndarray,
    lengths: np.ndarray,
    sets: Sequence[np.ndarray],
    *,
    mode: PerturbMode = "delete",
    rank_shift: float | int = 0.25,
    test: TestName = "matched",
    n_controls: int = 20,
    control_cells: int | None = 100,
    control_pool: np.ndarray | None = None,
    goal_tokens: np.ndarray | None = None,
    goal_lengths: np.ndarray | None = None,
    max_len: int | None = None,
    n_front: int = 0,
    n_back: int = 0,
    layer: int = -1,
    pooling: Literal["mean", "cls"] = "mean",
    special_ids: Sequence[int] = (),
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    token_budget: int | None = None,
    distributed: bool | None = None,
    return_embeddings: bool = False,
    progress: bool = False,
    seed: int = 0,
    announce: Callable[[int, int, float, int], None] | None = None,
) -> ScreenResult:
    """Perturb gene sets in cells, embed the copies, and test each set against its rank-matched controls.

    Parameters
    ----------
    encoder
        The encoder.
    tokens, lengths
        ``[N, L]`` right-padded token ids of the cells to perturb (no empty cell) and their numbers of tokens.
    sets
        Token ids of each tested gene set (perturbed together).
    mode, rank_shift, max_len, n_front, n_back
        See :func:`mixgf.model.perturb_cell`.
    test
        ``"matched"`` (against ``n_controls`` rank-matched control sets perturbed in the same cells),
        ``"geneformer"`` (Wilcoxon rank-sum against all tested sets' shifts pooled) or ``"none"``.
    n_controls
        Control sets per tested set (``test="matched"``).
    control_cells
        Cells per tested set in which its controls are perturbed (``test="matched"``), drawn at random (seeded) in
        one order shared by all tested sets; `None`: every cell where the set is perturbed. A control shared by
        several tested sets is perturbed in all of their chosen cells. The test compares a tested set with its
        controls in the cells where at least three of them were perturbed; its own shifts are measured in all of its
        cells.
    control_pool
        Boolean over token ids: genes that may be controls (e.g. genes of the cells' species); a candidate must
        also be expressed in the cells and not be tested. `None`: the tested genes are each other's controls (a
        screen of every gene: no extra perturbations).
    goal_tokens, goal_lengths
        Cells whose mean embedding is the goal; then ``shift = cos(perturbed, goal) - cos(original, goal)``,
        otherwise ``1 - cos(original, perturbed)``.
    layer, pooling, special_ids, device, dtype, token_budget
        See :func:`mixgf.model.embed_tokens`.
    distributed
        Share the model work between the processes of a :mod:`torch.distributed` group (see
        :func:`mixgf.model.use_distributed`); every process gets the same result.
    return_embeddings
        Also return every perturbed embedding.
    progress
        Progress bar (on the first process only).
    announce
        Called once, before the perturbed copies are embedded, with ``(copies, cells, estimated seconds, copies
        without controls)``: the work planned (controls included), an estimate from the measured time of embedding
        the original cells, and the copies the same genes need without matched controls (``test="geneformer"``).
        Single-process runs only.
    seed
        Seed of the controls' placement and of the Geneformer test's pool.

    Returns
    -------
    ScreenResult
        Statistics per tested set, per-cell shifts and embeddings.
    """
    rank, world = rank_world() if use_distributed(distributed) else (0, 1)
    tokens = np.asarray(tokens).astype(np.int64)
    lengths = np.asarray(lengths)
    sets = [np.asarray(s) for s in sets]
    n_tested = len(sets)
    ranks = rank_matrix(tokens, lengths, n_front, n_back, int(encoder.config.vocab_size))
    applicable = applicable_pairs(ranks, sets, mode)
    chosen: list[list[tuple[int, ...]]] = [[] for _ in range(n_tested)]
    if test == "matched":
        tested_tokens = np.unique(np.concatenate(sets))
        if control_pool is None:
            candidates = tested_tokens
        else:
            det = ranks.copy()
            det.data[:] = 1.0
            detected = np.flatnonzero(np.asarray(det.sum(axis=0)).ravel() > 0)
            candidates = detected[np.asarray(control_pool)[detected] & ~np.isin(detected, tested_tokens)]
        chosen = choose_controls(ranks, applicable, sets, candidates, n_controls, mode, seed=seed)
    all_sets, control_cols, want = control_columns(sets, chosen, applicable, control_cells, seed=seed)

    emb_kw: dict[str, Any] = {
        "layer": layer,
        "pooling": pooling,
        "special_ids": [int(i) for i in special_ids],
        "device": device,
        "dtype": dtype,
        "token_budget": token_budget,
    }
    centroid = None
    n_goal = 0
    if goal_tokens is not None:
        n_goal = int(goal_tokens.shape[0])
        centroid = _embed_shared(encoder, goal_tokens, np.asarray(goal_lengths), rank, world, emb_kw).mean(axis=0)
    tell = None
    if announce is not None and world == 1:
        n_alone = int(np.asarray(applicable)[:, :n_tested].sum())

        def tell(n: int, cells: int, seconds: float) -> None:
            announce(n, cells, seconds, n_alone)

    res = _shifts_shared(
        encoder, tokens, lengths, all_sets, rank, world, mode=mode, applicable=want, goal=centroid, announce=tell,
        rank_shift=rank_shift, max_len=max_len, n_front=n_front, n_back=n_back, return_embeddings=return_embeddings,
        progress=progress and rank == 0, **emb_kw,
    )  # fmt: skip
    shifts = res.shifts

    values, n_cells, mean, median, sd = shift_summary(shifts[:, :n_tested], applicable)
    expected = np.full(n_tested, np.nan)
    residual = np.full(n_tested, np.nan)
    n_ctrl = np.zeros(n_tested, dtype=np.int64)
    n_ctrl_cells = np.zeros(n_tested, dtype=np.int64)
    if test == "matched":
        expected, n_ctrl, _, p, residual, n_ctrl_cells = matched_test(
            shifts, applicable, n_tested, control_cols, all_sets, ranks
        )
    elif test == "geneformer":
        p = geneformer_test(values, seed)
    else:
        p = np.full(n_tested, np.nan)
    stats = pd.DataFrame(
        {
            "n_cells": n_cells,
            "shift_mean": mean,
            "shift_median": median,
            "shift_sd": sd,
            "expected_shift": expected,
            "shift_vs_expected": residual,
            "n_controls": n_ctrl,
            "n_control_cells": n_ctrl_cells,
            "p_value": p,
            "p_adj": benjamini_hochberg(p),
        },
        columns=STAT_COLUMNS,
    )
    return ScreenResult(
        stats=stats,
        shifts=shifts[:, :n_tested],
        original=res.original,
        perturbed=None if res.perturbed is None else res.perturbed[:, :n_tested],
        controls=chosen,
        n_copies=res.n_copies,
        n_goal_cells=n_goal,
        world_size=world,
    )


# -- model work shared between processes ----------------------------------------------------------------------------
def _embed_shared(
    encoder: Any, tokens: np.ndarray, lengths: np.ndarray, rank: int, world: int, emb_kw: dict[str, Any]
) -> np.ndarray:
    """Embeddings of the cells (in order); with ``world > 1`` each rank embeds a share and all get all."""
    share = partition_cells(tokens.shape[0], world, weights=lengths)[rank]
    hidden = int(encoder.config.hidden_size)
    local = np.empty((0, hidden), dtype=np.float32)
    if share.size:
        local = embed_tokens(encoder, tokens[share], lengths[share], **emb_kw)
    if world == 1:
        return local
    return all_gather_rows(local, share, tokens.shape[0])


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
) -> PerturbationResult:
    """:func:`mixgf.model.perturbation_shifts`, shared between ``world`` processes.

    With ``world > 1`` each rank perturbs a contiguous share of the cells, balanced by the tokens it embeds (cell
    length times one plus its number of perturbed copies), and every rank gathers every cell's results.
    """
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

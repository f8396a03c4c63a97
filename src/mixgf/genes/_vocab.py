"""The vocabulary: gene tokens of both species, special tokens, gene medians and tokenization rules."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ._tables import DATA_DIR, SPECIES, Species, _check_species, orthologs, species_of_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

FORMAT = "mixgf-vocab/1"

Normalization = Literal["total_counts", "vocab_counts", "none"]
NORMALIZATIONS: tuple[str, ...] = ("total_counts", "vocab_counts", "none")
IdMapping = Literal["identity", "geneformer"]
ID_MAPPINGS: tuple[str, ...] = ("identity", "geneformer")
# rule fields added after vocabularies were first hashed: left out of the JSON at their defaults, so that the
# sha256 of every vocabulary that does not use them stays what it was
_LATER_RULES = {"id_mapping": "identity", "collapse": False}

#: Preset names accepted by :meth:`~mixgf.genes.Vocabulary.load` -> file name of the bundled vocabulary.
PRESETS: dict[str, str] = {
    "mixgf": "mixgf_default_vocab.json.gz",
    "geneformer-v1": "geneformer_gc30M_vocab.json.gz",
    "geneformer-v2": "geneformer_gc95M_vocab.json.gz",
}
SPECIAL_ROLES = ("pad", "mask", "cls", "eos")


@dataclass(frozen=True)
class TokenizerRules:
    """How a model family turns a cell into tokens.

    Attributes
    ----------
    max_len
        Length of the longest token sequence, special tokens included (2,048 for Geneformer V1 and
        Mouse-/Mix-Geneformer, 4,096 for Geneformer V2).
    add_cls
        Put ``<cls>`` first (Geneformer V2).
    add_eos
        Put ``<eos>`` last (Geneformer V2).
    normalization
        Which per-cell total a count is divided by before the gene median (``x = count / total * target_sum /
        median``): ``"total_counts"`` (sum over all genes of the cell, Geneformer), ``"vocab_counts"`` (sum over
        the cell's genes that are in the vocabulary, Mouse-/Mix-Geneformer) or ``"none"`` (``x = count /
        median``). A per-cell constant never changes a cell's ranking, so the three give the same tokens except
        where float64 rounding turns two nearly equal values into a tie; each is computed with exactly the
        upstream operations so that such near-ties resolve as upstream.
    target_sum
        Scale applied after division by the total (10,000 upstream).
    id_mapping
        How input gene names find their token. ``"identity"``: Ensembl IDs as given (versions stripped), symbols
        through mixgf's symbol tables and, failing those, unambiguous previous / alias symbols
        (:func:`mixgf.genes.alias_map`); Geneformer V1, Mouse-/Mix-Geneformer. ``"geneformer"``: every name,
        upper-cased, through the vocabulary's Ensembl mapping dictionary (``Vocabulary.id_map``; retired IDs,
        symbols and aliases -> current ID), as Geneformer V2's tokenizer does; a name it lacks is left out.
    collapse
        Sum the counts of different input genes that map to the same token before normalising (Geneformer V2's
        ``collapse_gene_ids=True``). Without it, such genes are an error unless ``duplicates="sum"`` is passed to
        :func:`mixgf.pp.rank_tokenize`.

    Examples
    --------
    >>> import mixgf as mgf
    >>> rules = mgf.genes.TokenizerRules(
    ...     max_len=4096,
    ...     add_cls=True,
    ...     add_eos=True,
    ...     normalization="total_counts",
    ...     id_mapping="geneformer",
    ...     collapse=True,
    ... )
    >>> rules.max_genes
    4094
    >>> rules == mgf.genes.GENEFORMER_V2_RULES
    True
    >>> mgf.genes.Vocabulary.load("mixgf").rules.normalization
    'vocab_counts'
    """

    max_len: int = 2048
    add_cls: bool = False
    add_eos: bool = False
    normalization: Normalization = "vocab_counts"
    target_sum: float = 10_000.0
    id_mapping: IdMapping = "identity"
    collapse: bool = False

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            msg = f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}."
            raise ValueError(msg)
        if self.id_mapping not in ID_MAPPINGS:
            msg = f"id_mapping must be one of {ID_MAPPINGS}, got {self.id_mapping!r}."
            raise ValueError(msg)
        if self.max_len < 1 + self.add_cls + self.add_eos:
            msg = f"max_len={self.max_len} leaves no room for a gene token."
            raise ValueError(msg)

    @property
    def max_genes(self) -> int:
        """Number of gene tokens a sequence can hold."""
        return self.max_len - int(self.add_cls) - int(self.add_eos)


#: Rules of Geneformer V1 (up to 2,048 gene tokens, no ``<cls>`` or ``<eos>``, counts divided by the cell's total
#: counts).
GENEFORMER_V1_RULES = TokenizerRules(max_len=2048, normalization="total_counts")
#: Rules of Geneformer V2 (input names through the Ensembl mapping dictionary, counts of genes mapping to one ID
#: summed, ``<cls>`` + up to 4,094 gene tokens + ``<eos>``, counts divided by the cell's total counts).
GENEFORMER_V2_RULES = TokenizerRules(
    max_len=4096, add_cls=True, add_eos=True, normalization="total_counts", id_mapping="geneformer", collapse=True
)
#: Rules of Mouse-/Mix-Geneformer (up to 2,048 gene tokens, no ``<cls>`` or ``<eos>``, counts divided by the cell's
#: counts of vocabulary genes).
MIX_GENEFORMER_RULES = TokenizerRules(max_len=2048, normalization="vocab_counts")


@dataclass
class Vocabulary:
    """Tokens of a model: special tokens plus one token per human and per mouse Ensembl gene.

    Mix-Geneformer keeps separate tokens for the two species (``ENSG…`` and ``ENSMUSG…``); orthologs are linked by
    :meth:`ortholog_token_map`, not merged. Each gene token carries the gene's non-zero median used by
    rank-value encoding, and where that median came from.

    Parameters
    ----------
    tokens
        Token strings; the position of a token is its id.
    medians
        Gene median per token (NaN for special tokens).
    specials
        Role (``"pad"``, ``"mask"``, ``"cls"``, ``"eos"``) -> token string. ``pad`` is required.
    rules
        The tokenization rules of the model family.
    name
        A short name.
    median_source
        Where each token's median came from (empty for special tokens).
    provenance
        Free-form record of the sources of the vocabulary.
    id_map
        The Ensembl mapping dictionary of ``rules.id_mapping="geneformer"``: the name of a packaged table
        (``"geneformer_gc95M"``) or ``{input name: Ensembl ID}`` as read from a Geneformer
        ``ensembl_mapping_dict*.pkl``. `None` for other rules.
    untrained
        Ids of the gene tokens that a model trained with this vocabulary never saw in its training cells (their
        embeddings are untrained); `None` where that is not recorded. See ``trained``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> vocab = mgf.genes.Vocabulary.load("geneformer-v1")
    >>> len(vocab), vocab.species, vocab.rules.max_len
    (25426, ('human',), 2048)
    """

    tokens: list[str]
    medians: np.ndarray
    specials: dict[str, str]
    rules: TokenizerRules = field(default_factory=TokenizerRules)
    name: str = "custom"
    median_source: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    id_map: str | dict[str, str] | None = None
    untrained: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.tokens = list(self.tokens)
        if self.untrained is not None:
            self.untrained = np.unique(np.asarray(self.untrained, dtype=np.int64))
            if self.untrained.size and (self.untrained[0] < 0 or self.untrained[-1] >= len(self.tokens)):
                msg = "untrained holds token ids outside the vocabulary."
                raise ValueError(msg)
        self.medians = np.asarray(self.medians, dtype=np.float64)
        if self.median_source is None:
            self.median_source = ["" if t in self.specials.values() else "unknown" for t in self.tokens]
        if len(self.medians) != len(self.tokens) or len(self.median_source) != len(self.tokens):
            msg = "tokens, medians and median_source must have the same length."
            raise ValueError(msg)
        if len(set(self.tokens)) != len(self.tokens):
            dup = pd.Index(self.tokens)[pd.Index(self.tokens).duplicated()].unique()[:10].tolist()
            msg = f"Vocabulary has duplicated tokens: {dup}."
            raise ValueError(msg)
        if "pad" not in self.specials:
            msg = "A vocabulary needs a padding token: specials={'pad': '<pad>', ...}."
            raise ValueError(msg)
        for role, tok in self.specials.items():
            if role not in SPECIAL_ROLES or tok not in self._index:
                msg = f"special token {role}={tok!r} is not a known role {SPECIAL_ROLES} or not in the tokens."
                raise ValueError(msg)
        if self.rules.add_cls and "cls" not in self.specials:
            msg = "rules.add_cls needs a '<cls>' special token."
            raise ValueError(msg)
        if self.rules.add_eos and "eos" not in self.specials:
            msg = "rules.add_eos needs an '<eos>' special token."
            raise ValueError(msg)
        if self.rules.id_mapping == "geneformer" and self.id_map is None:
            msg = "rules.id_mapping='geneformer' needs id_map: a packaged table name or an Ensembl mapping dictionary."
            raise ValueError(msg)
        gene = self.is_gene
        med = self.medians[gene]
        if not np.all(np.isfinite(med) & (med > 0)):
            bad = np.asarray(self.tokens, dtype=object)[gene][~(np.isfinite(med) & (med > 0))][:10].tolist()
            msg = f"every gene token needs a positive, finite median; these do not: {bad}."
            raise ValueError(msg)

    # -- lookups -----------------------------------------------------------------------------------------------
    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.tokens)

    @property
    def trained(self) -> np.ndarray:
        """Whether each token occurred in the model's training cells (all `True` where ``untrained`` is `None`)."""
        out = np.ones(len(self.tokens), dtype=bool)
        if self.untrained is not None:
            out[self.untrained] = False
        return out

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __repr__(self) -> str:
        n = {s: int((self.gene_species == s).sum()) for s in self.species}
        genes = ", ".join(f"{v:,} {k}" for k, v in n.items())
        return (
            f"Vocabulary({self.name!r}: {len(self):,} tokens = {len(self.specials)} special + {genes} genes; "
            f"max_len={self.rules.max_len}, normalization={self.rules.normalization!r})"
        )

    def token_ids(self, ids: Sequence[str] | np.ndarray | pd.Index) -> np.ndarray:
        """Token id of each Ensembl ID / token string, ``-1`` where it is not in the vocabulary.

        Examples
        --------
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("mixgf")
        >>> vocab.token_ids(["ENSG00000111640", "ENSMUSG00000057666", "not-a-gene"]).tolist()  # GAPDH, Gapdh
        [3499, 27719, -1]
        """
        return self._index.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def id_of(self, role: str) -> int:
        """Token id of a special token role (``"pad"``, ``"mask"``, ``"cls"``, ``"eos"``).

        Examples
        --------
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("mixgf")
        >>> vocab.id_of("pad"), vocab.id_of("mask")
        (0, 1)
        """
        if role not in self.specials:
            msg = f"this vocabulary has no {role!r} token; it has {sorted(self.specials)}."
            raise KeyError(msg)
        return int(self._index.get_loc(self.specials[role]))

    @cached_property
    def input_id_map(self) -> dict[str, str] | None:
        """Upper-cased input name -> gene token under ``rules.id_mapping="geneformer"`` (`None` otherwise).

        As upstream, entries whose target is not a gene of this vocabulary are dropped.

        Examples
        --------
        >>> import mixgf as mgf
        >>> m = mgf.genes.Vocabulary.load("geneformer-v2").input_id_map
        >>> m["ENSG00000117289"], m["TXNIP"], m["GNB2L1"]  # TXNIP's hg19 ID, its symbol, RACK1's previous symbol
        ('ENSG00000265972', 'ENSG00000265972', 'ENSG00000204628')
        """
        if self.rules.id_mapping != "geneformer" or self.id_map is None:
            return None
        from ._idmap import id_map_for_vocab

        genes = np.asarray(self.tokens, dtype=object)[self.is_gene].tolist()
        return id_map_for_vocab(self.id_map, genes)

    @cached_property
    def special_ids(self) -> np.ndarray:
        """Ids of all special tokens."""
        return np.sort(self.token_ids(list(self.specials.values())))

    @cached_property
    def is_gene(self) -> np.ndarray:
        """Boolean mask over tokens that marks the genes (not special tokens)."""
        mask = np.ones(len(self.tokens), dtype=bool)
        mask[self._index.get_indexer(list(self.specials.values()))] = False
        return mask

    @cached_property
    def gene_species(self) -> np.ndarray:
        """Species of every token (``"human"``, ``"mouse"``, ``""`` for special or other tokens)."""
        return np.array(
            [(species_of_id(t) or "") if g else "" for t, g in zip(self.tokens, self.is_gene)], dtype=object
        )

    @property
    def species(self) -> tuple[str, ...]:
        """Species that have gene tokens in this vocabulary."""
        present = set(self.gene_species[self.is_gene])
        return tuple(s for s in SPECIES if s in present)

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned integer dtype that holds every token id (uint16 while the vocabulary fits)."""
        return np.dtype(np.uint16) if len(self) <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)

    def ortholog_token_map(self, to: Species) -> np.ndarray:
        """Token of the one-to-one ortholog in species ``to`` for every token (``-1`` where there is none).

        Tokens already of species ``to`` map to themselves; special tokens map to themselves.
        See :func:`mixgf.genes.orthologs` for how the one-to-one set is chosen.

        Examples
        --------
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("mixgf")
        >>> to_mouse = vocab.ortholog_token_map("mouse")
        >>> gapdh, gapdh_mouse = vocab.token_ids(["ENSG00000111640", "ENSMUSG00000057666"]).tolist()
        >>> to_mouse[[gapdh, gapdh_mouse]].tolist() == [gapdh_mouse, gapdh_mouse]  # GAPDH -> Gapdh; Gapdh stays
        True
        """
        _check_species(to)
        other = "mouse" if to == "human" else "human"
        o = orthologs()
        src = self.token_ids(o[f"{other}_id"].to_numpy())
        dst = self.token_ids(o[f"{to}_id"].to_numpy())
        out = np.full(len(self), -1, dtype=np.int64)
        keep = (src >= 0) & (dst >= 0)
        out[src[keep]] = dst[keep]
        same = (self.gene_species == to) | ~self.is_gene
        out[same] = np.arange(len(self))[same]
        return out

    # -- identity and I/O ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form of the vocabulary."""
        sources = sorted(set(self.median_source))
        code = {s: i for i, s in enumerate(sources)}
        rules = {k: v for k, v in asdict(self.rules).items() if k not in _LATER_RULES or v != _LATER_RULES[k]}
        extra: dict[str, Any] = {} if self.id_map is None else {"id_map": self.id_map}
        if self.untrained is not None:
            extra["untrained"] = self.untrained.tolist()
        return {
            **extra,
            "format": FORMAT,
            "name": self.name,
            "rules": rules,
            "specials": dict(self.specials),
            "tokens": self.tokens,
            "medians": [None if not np.isfinite(m) else float(m) for m in self.medians],
            "median_sources": sources,
            "median_source": [code[s] for s in self.median_source],
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_dict` output."""
        if d.get("format") != FORMAT:
            msg = f"not a mixgf vocabulary (format {d.get('format')!r}, expected {FORMAT!r})."
            raise ValueError(msg)
        sources = d["median_sources"]
        return cls(
            tokens=d["tokens"],
            medians=np.array([np.nan if m is None else m for m in d["medians"]], dtype=np.float64),
            specials=dict(d["specials"]),
            rules=TokenizerRules(**d["rules"]),
            name=d["name"],
            median_source=[sources[i] for i in d["median_source"]],
            provenance=dict(d.get("provenance", {})),
            id_map=d.get("id_map"),
            untrained=d.get("untrained"),
        )

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys, no whitespace); :attr:`sha256` hashes it without the untrained record."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON, which identifies the vocabulary in results and checkpoints.

        The record of untrained tokens is left out: it describes a model, not what the token ids mean, so models
        trained with one vocabulary on different cells accept each other's tokens.
        """
        d = self.to_dict()
        d.pop("untrained", None)
        return hashlib.sha256(
            json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        ).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON (gzip-compressed when the name ends in ``.gz``).

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("geneformer-v1")
        >>> path = vocab.save(Path(tempfile.mkdtemp()) / "vocab.json.gz")
        >>> mgf.genes.Vocabulary.load(path).sha256 == vocab.sha256
        True
        """
        path = Path(path)
        data = self.to_json().encode()
        tmp = path.with_name(path.name + ".partial")
        if path.suffix == ".gz":
            tmp.write_bytes(gzip.compress(data, mtime=0))
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, source: str | Path | Vocabulary = "mixgf") -> Vocabulary:
        """Load a vocabulary.

        Parameters
        ----------
        source
            A preset name (``"mixgf"``: the default model's vocabulary, ``"geneformer-v1"``: Geneformer's 30M-cell
            dictionary with 2,048-token rules, ``"geneformer-v2"``: Geneformer's 95M-cell dictionary with
            ``<cls>`` + 4,094 genes + ``<eos>``), a ``.json`` / ``.json.gz`` file, or a model directory that holds
            ``vocab.json``.

        Examples
        --------
        >>> import mixgf as mgf
        >>> vocab = mgf.genes.Vocabulary.load("geneformer-v2")
        >>> vocab.rules.max_len, vocab.rules.add_cls, sorted(vocab.specials)
        (4096, True, ['cls', 'eos', 'mask', 'pad'])
        >>> mgf.genes.Vocabulary.load(mgf.MixGeneformer.load().path).name  # a model directory's vocabulary
        'mixgf'
        """
        if isinstance(source, Vocabulary):
            return source
        key = str(source)
        if key in PRESETS:
            return _load_preset(key)
        path = Path(source)
        if path.is_dir():
            path = path / "vocab.json"
        if not path.exists():
            msg = f"no vocabulary at {source!r}: pass one of {sorted(PRESETS)} or a path to a vocabulary JSON file."
            raise FileNotFoundError(msg)
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            msg = f"{path} is not valid JSON ({e}); the file is corrupt or not a mixgf vocabulary."
            raise ValueError(msg) from e
        return cls.from_dict(d)

    @classmethod
    def from_geneformer(
        cls,
        token_dictionary: Mapping[str, int],
        gene_medians: Mapping[str, float],
        *,
        rules: TokenizerRules,
        name: str,
        median_source: str,
        provenance: dict[str, Any] | None = None,
        id_map: Mapping[str, str] | str | None = None,
    ) -> Vocabulary:
        """Build a vocabulary from Geneformer-style dictionaries, keeping Geneformer's token ids.

        Parameters
        ----------
        token_dictionary
            Token -> id (special tokens such as ``<pad>`` included), e.g. from
            :func:`mixgf.genes.read_geneformer_pickle`.
        gene_medians
            Ensembl ID -> non-zero median.
        rules
            Tokenization rules of the model family.
        name
            Name of the vocabulary.
        median_source
            Where the medians come from (recorded per token).
        provenance
            Extra provenance.
        id_map
            Geneformer's Ensembl mapping dictionary (``ensembl_mapping_dict*.pkl``) or a packaged table name, for
            ``rules.id_mapping="geneformer"``. Only entries that map to a gene of the vocabulary are kept.

        Examples
        --------
        Geneformer's dictionaries (read with :func:`mixgf.genes.read_geneformer_pickle`), here two genes:

        >>> import mixgf as mgf
        >>> token_dictionary = {"<pad>": 0, "<mask>": 1, "ENSG00000111640": 2, "ENSG00000019582": 3}
        >>> gene_medians = {"ENSG00000111640": 12.5, "ENSG00000019582": 3.25}
        >>> vocab = mgf.genes.Vocabulary.from_geneformer(
        ...     token_dictionary,
        ...     gene_medians,
        ...     rules=mgf.genes.GENEFORMER_V1_RULES,
        ...     name="my-geneformer",
        ...     median_source="my corpus",
        ... )
        >>> vocab.token_ids(["ENSG00000019582"]).tolist(), vocab.species, vocab.id_of("mask")
        ([3], ('human',), 1)
        """
        ids = sorted(token_dictionary.items(), key=lambda kv: int(kv[1]))
        if [int(i) for _, i in ids] != list(range(len(ids))):
            msg = "token ids must be 0..n-1 without gaps."
            raise ValueError(msg)
        tokens = [t for t, _ in ids]
        specials = {t.strip("<>"): t for t in tokens if t.startswith("<") and t.endswith(">")}
        missing = [t for t in tokens if t not in specials.values() and t not in gene_medians]
        if missing:
            msg = f"{len(missing)} tokens have no median, e.g. {missing[:5]}."
            raise ValueError(msg)
        medians = np.array([np.nan if t in specials.values() else float(gene_medians[t]) for t in tokens])
        src = ["" if t in specials.values() else median_source for t in tokens]
        if id_map is not None and not isinstance(id_map, str):
            genes = {t for t in tokens if t not in specials.values()}
            id_map = {str(k): str(v) for k, v in sorted(id_map.items()) if str(v) in genes}
        return cls(tokens, medians, specials, rules, name, src, provenance or {}, id_map)


_FOLDER_FILES = {
    "token_dictionary": "token_dictionary*.pkl",
    "gene_median_dictionary": "gene_median_dictionary*.pkl",
    "ensembl_mapping_dict": "ensembl_mapping_dict*.pkl",
}


def vocabulary_from_geneformer_folder(folder: str | Path, *, name: str | None = None) -> Vocabulary:
    """Build the vocabulary of a checkpoint folder that brings its own Geneformer dictionaries.

    The folder must hold exactly one ``token_dictionary*.pkl`` and one ``gene_median_dictionary*.pkl``, and, when
    the token dictionary has ``<cls>`` and ``<eos>`` (a V2-style model), one ``ensembl_mapping_dict*.pkl``. All
    are read with :func:`mixgf.genes.read_geneformer_pickle` (no code runs). The rules are inferred: special tokens
    present -> :data:`GENEFORMER_V2_RULES` with the folder's mapping dictionary; otherwise mouse tokens present
    (Mouse-/Mix-Geneformer) -> :data:`MIX_GENEFORMER_RULES`, else :data:`GENEFORMER_V1_RULES`. A mapping dictionary
    that is not the identity on the vocabulary's genes is used (with collapsing) in every case.

    Parameters
    ----------
    folder
        The checkpoint folder.
    name
        Name of the vocabulary; defaults to the folder name.

    Returns
    -------
    mixgf.genes.Vocabulary
        The vocabulary; its provenance names the files read.

    Raises
    ------
    FileNotFoundError
        A required dictionary is missing; the message lists what is missing and which ``.pkl`` files are there.
    ValueError
        Several files match one dictionary, or a dictionary is not a plain Geneformer pickle.
    """
    from ._pickle import read_geneformer_pickle

    folder = Path(folder)
    found: dict[str, Path | None] = {}
    for role, pattern in _FOLDER_FILES.items():
        hits = sorted(folder.glob(pattern))
        if len(hits) > 1:
            msg = f"{folder} holds several {pattern} files ({[h.name for h in hits]}): keep the one the model uses."
            raise ValueError(msg)
        found[role] = hits[0] if hits else None
    tok = read_geneformer_pickle(found["token_dictionary"]) if found["token_dictionary"] else None
    v2_style = tok is not None and "<cls>" in tok and "<eos>" in tok
    required = ["token_dictionary", "gene_median_dictionary"] + (["ensembl_mapping_dict"] if v2_style else [])
    missing = [_FOLDER_FILES[r] for r in required if found[r] is None]
    if missing:
        there = sorted(p.name for p in folder.glob("*.pkl"))
        why = " (its token dictionary has <cls>/<eos>: a V2-style model)" if v2_style else ""
        msg = (
            f"{folder} lacks the Geneformer dictionaries {missing}{why}; .pkl files there: {there or 'none'}. Copy the "
            "model's dictionaries into the folder, or pass vocab='geneformer-v1' / 'geneformer-v2' / a vocabulary."
        )
        raise FileNotFoundError(msg)
    assert tok is not None
    med = read_geneformer_pickle(found["gene_median_dictionary"])
    mapping = read_geneformer_pickle(found["ensembl_mapping_dict"]) if found["ensembl_mapping_dict"] else None
    genes = {t for t in tok if not (t.startswith("<") and t.endswith(">"))}
    if v2_style:
        rules = GENEFORMER_V2_RULES
    else:
        mouse = any(species_of_id(g) == "mouse" for g in genes)
        rules = MIX_GENEFORMER_RULES if mouse else GENEFORMER_V1_RULES
        identity = mapping is None or all(str(v) == str(k).upper() for k, v in mapping.items() if str(v) in genes)
        if not identity:
            rules = replace(rules, id_mapping="geneformer", collapse=True)
    files = {r: p.name for r, p in found.items() if p is not None}
    return Vocabulary.from_geneformer(
        tok,
        med,
        rules=rules,
        name=name or folder.name,
        median_source=files["gene_median_dictionary"],
        provenance={"source": f"Geneformer dictionaries of checkpoint folder {folder}", "files": files},
        id_map=mapping if rules.id_mapping == "geneformer" else None,
    )


def _load_preset(name: str) -> Vocabulary:
    cached = _PRESET_CACHE.get(name)
    if cached is None:
        cached = Vocabulary.load(DATA_DIR / PRESETS[name])
        _PRESET_CACHE[name] = cached
    return cached


_PRESET_CACHE: dict[str, Vocabulary] = {}

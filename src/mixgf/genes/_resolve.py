"""Resolve user-given gene names (symbols or Ensembl IDs, either species) to tokens of a vocabulary."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._tables import _check_species, id_to_symbol, is_ensembl_id, orthologs, species_of_id, strip_version, symbol_map

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._tables import Species
    from ._vocab import Vocabulary

__all__ = ["ResolvedGene", "resolve_genes"]


@dataclass(frozen=True)
class ResolvedGene:
    """One gene name resolved to a token of a vocabulary, in the species of the cells.

    Attributes
    ----------
    query
        The name as given.
    ensembl_id
        Ensembl ID in the target species.
    symbol
        Symbol of that gene (the Ensembl ID where none is known).
    species
        Target species.
    token
        Token id in the vocabulary.
    via_ortholog
        Ensembl ID of the other species' gene the query named, when it was mapped through the one-to-one
        ortholog table (`None` otherwise).
    match
        How the query was matched: ``"exact"`` (symbol or Ensembl ID as given), or how it was not:
        ``"case-insensitive"``, ``"version stripped"`` (an Ensembl ID with a version), ``"ortholog"``,
        ``"ortholog, case-insensitive"``. Tools log every match that is not exact.

    Examples
    --------
    >>> import mixgf as mgf
    >>> vocab = mgf.genes.Vocabulary.load("mixgf")
    >>> gene = mgf.genes.resolve_genes(["CD74"], vocab, "mouse")[0]
    >>> gene.symbol, gene.ensembl_id, gene.via_ortholog
    ('Cd74', 'ENSMUSG00000024610', 'ENSG00000019582')
    """

    query: str
    ensembl_id: str
    symbol: str
    species: str
    token: int
    via_ortholog: str | None = None
    match: str = "exact"


def _candidates(name: str, species: str, *, ignore_case: bool) -> list[str]:
    """Ensembl IDs of ``species`` that ``name`` (an ID or a symbol) names."""
    if is_ensembl_id([name])[0]:
        gid = str(strip_version([name])[0])
        return [gid] if species_of_id(gid) == species else []
    exact, upper = symbol_map(species)
    return list(upper.get(name.upper(), ()) if ignore_case else exact.get(name, ()))


def _close_matches(name: str, vocab: Vocabulary, species: str, n: int = 5) -> list[str]:
    ids = {vocab.tokens[i] for i in range(len(vocab)) if vocab.gene_species[i] == species}
    sym = id_to_symbol(species)
    names = sorted({sym.get(g, g) for g in ids})
    by_upper = {s.upper(): s for s in names}
    hits = difflib.get_close_matches(name.upper(), list(by_upper), n=n, cutoff=0.7)
    return [by_upper[h] for h in hits]


def resolve_genes(names: Sequence[str], vocab: Vocabulary, species: Species) -> list[ResolvedGene]:
    """Resolve gene names to tokens of ``vocab`` for cells of ``species``.

    A name may be an Ensembl ID (versioned or not) or a symbol, of either species. A name of the other species is
    mapped through the one-to-one ortholog table (:func:`mixgf.genes.orthologs`); the mapping is recorded in
    :attr:`ResolvedGene.via_ortholog`. Exact symbols are matched before case-insensitive ones, so ``"CD74"`` given
    for mouse cells is the human gene CD74 mapped to its mouse ortholog, and ``"Cd74"`` is the mouse gene itself.
    When a symbol names several genes, the one in the vocabulary is taken.

    Parameters
    ----------
    names
        Gene names.
    vocab
        The vocabulary of the model.
    species
        Species of the cells.

    Returns
    -------
    list of mixgf.genes.ResolvedGene
        One :class:`ResolvedGene` per name, in order.

    Raises
    ------
    KeyError
        A name matches no gene of either species, has no one-to-one ortholog in ``species``, or its gene is not in
        the vocabulary; the message lists close matches among the vocabulary's genes.

    Examples
    --------
    >>> import mixgf as mgf
    >>> vocab = mgf.genes.Vocabulary.load("mixgf")
    >>> genes = mgf.genes.resolve_genes(["CD74", "Cd74", "ENSG00000111640.15"], vocab, "mouse")
    >>> [(g.query, g.symbol, g.via_ortholog) for g in genes]
    [('CD74', 'Cd74', 'ENSG00000019582'), ('Cd74', 'Cd74', None), ('ENSG00000111640.15', 'Gapdh', 'ENSG00000111640')]
    >>> mgf.genes.resolve_genes(["CD7x"], vocab, "human")
    Traceback (most recent call last):
    ...
    KeyError: "Gene 'CD7x' is not a known human or mouse gene symbol or Ensembl ID. Close matches in the vocabulary: CD7, CHD7, CDX4, CDX2, CDX1."
    """
    _check_species(species)
    other = "mouse" if species == "human" else "human"
    ortho = orthologs()
    to_target = dict(zip(ortho[f"{other}_id"], ortho[f"{species}_id"]))
    symbols = id_to_symbol(species)
    out = []
    for raw in names:
        name = str(raw).strip()
        via = None
        # exact names first, in the cells' species and then the other; case-insensitive symbols only after that
        cands = _candidates(name, species, ignore_case=False)
        foreign = [] if cands else _candidates(name, other, ignore_case=False)
        case = False
        if not cands and not foreign:
            case = True
            cands = _candidates(name, species, ignore_case=True)
            foreign = [] if cands else _candidates(name, other, ignore_case=True)
        if not cands:
            mapped = [(f, to_target[f]) for f in foreign if f in to_target]
            if mapped:
                via, gid = mapped[0]
                cands = [gid]
            elif foreign:
                msg = (
                    f"Gene {name!r} is a {other} gene ({', '.join(foreign)}) without a one-to-one {species} ortholog, "
                    f"and the cells are {species}: give a {species} gene instead."
                )
                raise KeyError(msg)
        in_vocab = [c for c in cands if c in vocab]
        if not in_vocab:
            close = _close_matches(name, vocab, species)
            what = f"{name!r} ({', '.join(cands)})" if cands else repr(name)
            hint = f" Close matches in the vocabulary: {', '.join(close)}." if close else ""
            if cands:
                msg = f"Gene {what} is not in the vocabulary {vocab.name!r} of the model, so it cannot be perturbed."
            else:
                msg = f"Gene {what} is not a known {species} or {other} gene symbol or Ensembl ID."
            raise KeyError(msg + hint)
        gid = in_vocab[0]
        match = "exact"
        if via is not None:
            match = "ortholog, case-insensitive" if case else "ortholog"
        elif case:
            match = "case-insensitive"
        elif is_ensembl_id([name])[0] and name != gid:
            match = "version stripped"
        out.append(
            ResolvedGene(
                query=name,
                ensembl_id=gid,
                symbol=symbols.get(gid, gid),
                species=species,
                token=int(vocab.token_ids([gid])[0]),
                via_ortholog=via,
                match=match,
            )
        )
    return out

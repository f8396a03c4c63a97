"""Genes and vocabularies: Ensembl IDs, symbols, species, one-to-one orthologs, gene medians and tokens.

This module is the one place where mixgf decides what a gene is; :mod:`mixgf.pp` and :mod:`mixgf.tl` both use it.
"""

from __future__ import annotations

from ._idmap import alias_map
from ._mapping import GeneMapping, detect_species, map_to_ensembl
from ._pickle import read_geneformer_pickle
from ._resolve import ResolvedGene, resolve_genes
from ._tables import gene_table, id_to_symbol, orthologs, species_of_id, strip_version
from ._vocab import (
    GENEFORMER_V1_RULES,
    GENEFORMER_V2_RULES,
    MIX_GENEFORMER_RULES,
    PRESETS,
    TokenizerRules,
    Vocabulary,
)

__all__ = [
    "GENEFORMER_V1_RULES",
    "GENEFORMER_V2_RULES",
    "MIX_GENEFORMER_RULES",
    "PRESETS",
    "GeneMapping",
    "ResolvedGene",
    "TokenizerRules",
    "Vocabulary",
    "alias_map",
    "detect_species",
    "gene_table",
    "id_to_symbol",
    "map_to_ensembl",
    "orthologs",
    "read_geneformer_pickle",
    "resolve_genes",
    "species_of_id",
    "strip_version",
]

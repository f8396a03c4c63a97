"""`mixgf.pp.build_vocabulary`: a two-species vocabulary with gene medians from a training corpus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from ..genes import MIX_GENEFORMER_RULES, TokenizerRules, Vocabulary, orthologs
from ._medians import gene_medians

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

SPECIALS = {"pad": "<pad>", "mask": "<mask>", "cls": "<cls>", "eos": "<eos>"}


def build_vocabulary(
    adatas: Sequence[AnnData],
    *,
    gene_id_keys: Sequence[str | None] | None = None,
    human_medians: Literal["geneformer-v2", "corpus"] = "geneformer-v2",
    min_cells: int = 1,
    corpus_min_cells: int = 20,
    add_orthologs: bool = True,
    complete: bool = False,
    rules: TokenizerRules = MIX_GENEFORMER_RULES,
    name: str = "mixgf-corpus",
) -> Vocabulary:
    """Build a human + mouse vocabulary from the genes a corpus expresses, with their non-zero medians.

    A gene gets a token when it is non-zero in at least ``min_cells`` cells of the corpus (and, for human genes
    with ``human_medians="geneformer-v2"``, is in Geneformer's 95M-cell vocabulary). Its median comes from:

    - human: Geneformer's 95M-cell medians (``"geneformer-v2"``) or the corpus (``"corpus"``);
    - mouse: the corpus when the gene is non-zero in at least ``corpus_min_cells`` cells, else its one-to-one
      human ortholog's median.

    With ``add_orthologs``, the one-to-one ortholog of every kept gene is added too (so the cross-species term of
    pre-training can project every cell). With ``complete``, every gene of Geneformer's 95M-cell dictionary and
    every mouse gene with a one-to-one human ortholog get a token as well, expressed in the corpus or not (mouse:
    the corpus median where it has one, else the ortholog's), so that a model can be handed any human or mouse
    gene. Each token records where its median came from.

    Parameters
    ----------
    adatas
        Raw-count AnnData objects, one species each.
    gene_id_keys
        Per input, the var column with gene IDs or symbols (`None`: var names).
    human_medians
        Source of human medians.
    min_cells
        Minimum non-zero cells for a gene to get a token.
    corpus_min_cells
        Minimum non-zero cells for a mouse (or, with ``"corpus"``, human) median to come from the corpus.
    add_orthologs
        Add one-to-one orthologs of the kept genes.
    complete
        Also add every gene of Geneformer's 95M-cell dictionary and every mouse gene with a one-to-one human
        ortholog of known median.
    rules
        Tokenization rules of the vocabulary (Mix-Geneformer's by default).
    name
        Name of the vocabulary.

    Returns
    -------
    mixgf.genes.Vocabulary
        The vocabulary.

    Examples
    --------
    >>> import mixgf as mgf
    >>> v = mgf.pp.build_vocabulary([mgf.datasets.baron_mouse_pancreas()], add_orthologs=False)
    >>> v.species
    ('mouse',)
    """
    keys = list(gene_id_keys) if gene_id_keys is not None else [None] * len(adatas)
    if len(keys) != len(adatas):
        msg = "gene_id_keys needs one entry per AnnData."
        raise ValueError(msg)
    t0 = logg.info(f"building a vocabulary from {len(adatas)} dataset(s)")
    med = gene_medians(list(adatas), gene_id_key=keys)
    gf = Vocabulary.load("geneformer-v2")
    gf_med = pd.Series(gf.medians[gf.is_gene], index=np.asarray(gf.tokens, dtype=object)[gf.is_gene])
    seen = med[med["n_cells"] >= min_cells]
    rows: dict[str, tuple[float, str]] = {}
    for gid, r in seen.iterrows():
        if r["species"] == "human":
            if human_medians == "geneformer-v2":
                if gid in gf_med.index:
                    rows[gid] = (float(gf_med[gid]), "geneformer_gc95M")
            elif r["n_cells"] >= corpus_min_cells:
                rows[gid] = (float(r["median"]), "corpus")
        elif r["n_cells"] >= corpus_min_cells:
            rows[gid] = (float(r["median"]), "corpus")
    orth = orthologs()
    h2m = dict(zip(orth["human_id"], orth["mouse_id"]))
    m2h = dict(zip(orth["mouse_id"], orth["human_id"]))

    def human_median(hid: str) -> tuple[float, str] | None:
        if hid in rows:
            return rows[hid][0], f"ortholog:{rows[hid][1]}"
        if hid in gf_med.index:
            return float(gf_med[hid]), "ortholog:geneformer_gc95M"
        return None

    # mouse genes seen in too few cells for a corpus median: their human ortholog's
    for gid, r in seen.iterrows():
        if r["species"] == "mouse" and gid not in rows and gid in m2h:
            hm = human_median(m2h[gid])
            if hm is not None:
                rows[gid] = hm
    if add_orthologs:
        for gid in list(rows):
            if gid.startswith("ENSMUSG") and gid in m2h and m2h[gid] not in rows and m2h[gid] in gf_med.index:
                rows[m2h[gid]] = (float(gf_med[m2h[gid]]), "geneformer_gc95M")
        for gid in list(rows):
            if gid.startswith("ENSG") and gid in h2m and h2m[gid] not in rows:
                rows[h2m[gid]] = (rows[gid][0], f"ortholog:{rows[gid][1]}")
    if complete:
        for gid, median in gf_med.items():
            rows.setdefault(gid, (float(median), "geneformer_gc95M"))
        for mid, hid in m2h.items():
            hm = None if mid in rows else human_median(hid)
            if hm is not None:
                rows[mid] = hm
    human = sorted(g for g in rows if g.startswith("ENSG"))
    mouse = sorted(g for g in rows if g.startswith("ENSMUSG"))
    tokens = list(SPECIALS.values()) + human + mouse
    medians = [np.nan] * len(SPECIALS) + [rows[g][0] for g in human + mouse]
    source = [""] * len(SPECIALS) + [rows[g][1] for g in human + mouse]
    vocab = Vocabulary(
        tokens,
        np.asarray(medians),
        dict(SPECIALS),
        rules,
        name,
        source,
        {
            "built_by": "mixgf.pp.build_vocabulary",
            "human_medians": human_medians,
            "min_cells": min_cells,
            "corpus_min_cells": corpus_min_cells,
            "add_orthologs": add_orthologs,
            "complete": complete,
            "corpus_cells": int(sum(a.n_obs for a in adatas)),
        },
    )
    logg.info(f"    {vocab!r}", start=t0)
    return vocab

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixgf as mgf
from mixgf.genes import detect_species, map_to_ensembl, orthologs


def test_orthologs_are_one_to_one_and_cover_housekeeping_genes():
    o = orthologs()
    assert len(o) > 17_000
    assert o["human_id"].is_unique and o["mouse_id"].is_unique
    assert o["human_id"].str.startswith("ENSG").all() and o["mouse_id"].str.startswith("ENSMUSG").all()
    pairs = dict(zip(o["human_symbol"], o["mouse_symbol"]))
    # BioMart alone lacks these; the HCOP part of the set supplies them
    for h, m in {"GAPDH": "Gapdh", "EEF1A1": "Eef1a1", "FTH1": "Fth1", "ACTB": "Actb", "UMOD": "Umod"}.items():
        assert pairs[h] == m
    assert set(o["source"]) == {"both", "ensembl_one2one", "hcop"}


def test_gene_tables_both_species():
    h = mgf.genes.gene_table("human")
    m = mgf.genes.gene_table("mouse")
    assert h["ensembl_id"].str.startswith("ENSG").all()
    assert m["ensembl_id"].str.startswith("ENSMUSG").all()
    assert mgf.genes.id_to_symbol("mouse")["ENSMUSG00000030963"] == "Umod"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["ENSG00000111640", "ENSG00000075624.17"], "human"),
        (["ENSMUSG00000030963", "ENSMUSG00000057666.8"], "mouse"),
        (["CD3E", "LYZ", "MS4A1", "GAPDH", "ENSA"], "human"),
        (["Cd3e", "Lyz2", "Ins1", "Gapdh", "Umod"], "mouse"),
    ],
)
def test_detect_species(names, expected):
    assert detect_species(names) == expected


def test_detect_species_on_real_data(pbmc, baron):
    assert detect_species(pbmc.var_names) == "human"
    assert detect_species(pbmc.var["gene_id"]) == "human"
    assert detect_species(baron.var_names) == "mouse"


def test_mixed_species_ids_name_the_offenders():
    names = ["ENSG00000111640", "ENSG00000075624", "ENSG00000169344", "ENSMUSG00000030963"]
    with pytest.raises(ValueError, match=r"mix species.*ENSMUSG00000030963"):
        detect_species(names)


def test_mixed_species_symbols_error():
    names = ["CD3E", "LYZ", "MS4A1", "CD19", "Cd3e", "Lyz2", "Ms4a1", "Cd19"]
    with pytest.raises(ValueError, match="look mixed"):
        detect_species(names)


def test_other_species_and_unknown_names():
    with pytest.raises(ValueError, match="neither human"):
        detect_species(["ENSRNOG00000000001"])
    with pytest.raises(ValueError, match="Could not tell the species"):
        detect_species(["gene_1", "gene_2"])
    with pytest.raises(ValueError, match="Pass species='mouse'"):
        detect_species(["ENSMUSG00000030963"], species="human")


def test_map_to_ensembl_versions_symbols_and_case_variants():
    m = map_to_ensembl(["Umod", "ENSMUSG00000057666.8", "UMOD", "nope", None, "Pisd", "PISD"])
    assert m.species == "mouse"
    ids = m.ensembl_ids.tolist()
    assert ids[0] == "ENSMUSG00000030963"
    assert ids[1] == "ENSMUSG00000057666"
    # "UMOD" matches Umod only ignoring case, and another var names Umod exactly: left unmapped, not merged
    assert ids[2] is None and m.kind[2] == "case variant of another var"
    assert ids[3] is None and m.kind[3] == "unknown"
    assert ids[4] is None and m.kind[4] == "missing"
    assert ids[5] is not None and ids[6] is None


def test_map_upper_case_mouse_symbols():
    m = map_to_ensembl(["UMOD", "GAPDH"], species="mouse")
    assert m.ensembl_ids.tolist() == ["ENSMUSG00000030963", "ENSMUSG00000057666"]


def test_strip_version():
    out = mgf.genes.strip_version(pd.Index(["ENSG00000141510.17", "ENSA", "ENSMUSG00000030963"]))
    assert out.tolist() == ["ENSG00000141510", "ENSA", "ENSMUSG00000030963"]
    assert mgf.genes.species_of_id("ENSG00000141510") == "human"
    assert np.all(mgf.genes._tables.is_ensembl_id(np.array(["ENSG00000141510.2", "ENSA"])) == [True, False])

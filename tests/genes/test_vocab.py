from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np
import pandas as pd
import pytest

import mixgf as mgf
from mixgf.genes import Vocabulary, read_geneformer_pickle

from ..conftest import SHARED


def test_presets():
    v1 = Vocabulary.load("geneformer-v1")
    assert len(v1) == 25_426 and v1.rules.max_len == 2048 and not v1.rules.add_cls
    assert v1.tokens[:2] == ["<pad>", "<mask>"] and v1.species == ("human",)
    v2 = Vocabulary.load("geneformer-v2")
    assert len(v2) == 20_275 and v2.tokens[:4] == ["<pad>", "<mask>", "<cls>", "<eos>"]
    assert v2.rules.add_cls and v2.rules.add_eos and v2.rules.max_genes == 4094
    mix = Vocabulary.load("mixgf")
    assert mix.species == ("human", "mouse")
    assert mix.dtype == np.uint16
    # the default vocabulary: the corpus's genes, then the genes appended to complete it (each part sorted);
    # human medians are Geneformer 95M's
    human = np.flatnonzero(mix.gene_species == "human")
    human_ids = [mix.tokens[i] for i in human]
    first = int(mix.provenance["extended_from_tokens"])
    for part in (human[human < first], human[human >= first]):
        ids = [mix.tokens[i] for i in part]
        assert ids == sorted(ids)
    assert len(human_ids) == 20_271
    v2_index = {t: i for i, t in enumerate(v2.tokens)}
    assert all(t in v2_index for t in human_ids)
    np.testing.assert_array_equal(mix.medians[human], v2.medians[[v2_index[t] for t in human_ids]])
    assert set(pd.Series(mix.median_source)[human]) == {"geneformer_gc95M"}
    src = pd.Series(mix.median_source)[mix.gene_species == "mouse"]
    assert set(src) == {"corpus", "ortholog:geneformer_gc95M"}
    assert "mixgf" in repr(mix)


def test_round_trip_and_hash(tmp_path):
    v = Vocabulary.load("geneformer-v2")
    for name in ("v.json", "v.json.gz"):
        path = v.save(tmp_path / name)
        w = Vocabulary.load(path)
        assert w.tokens == v.tokens and w.rules == v.rules and w.sha256 == v.sha256
        np.testing.assert_array_equal(w.medians, v.medians)
    assert len(v.sha256) == 64


def test_corrupt_vocabulary_file(tmp_path):
    p = tmp_path / "v.json"
    Vocabulary.load("geneformer-v1").save(p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        Vocabulary.load(p)
    with pytest.raises(FileNotFoundError, match="geneformer-v1"):
        Vocabulary.load(tmp_path / "missing.json")


def test_invalid_vocabularies():
    with pytest.raises(ValueError, match="padding"):
        Vocabulary(["<mask>", "ENSG00000111640"], np.array([np.nan, 1.0]), {"mask": "<mask>"})
    with pytest.raises(ValueError, match="positive, finite median"):
        Vocabulary(["<pad>", "ENSG00000111640"], np.array([np.nan, 0.0]), {"pad": "<pad>"})
    with pytest.raises(ValueError, match="duplicated"):
        Vocabulary(["<pad>", "ENSG1", "ENSG1"], np.array([np.nan, 1.0, 1.0]), {"pad": "<pad>"})


def test_ortholog_token_map():
    v = Vocabulary.load("mixgf")
    to_h = v.ortholog_token_map("human")
    # Actb / ACTB: both in the default vocabulary's corpus
    actb_m, actb_h = v.token_ids(["ENSMUSG00000029580", "ENSG00000075624"])
    assert actb_m >= 0 and actb_h >= 0
    assert to_h[actb_m] == actb_h
    assert to_h[actb_h] == actb_h
    assert to_h[v.id_of("pad")] == v.id_of("pad")
    to_m = v.ortholog_token_map("mouse")
    assert to_m[actb_h] == actb_m
    mapped = to_h[(v.gene_species == "mouse") & (to_h >= 0)]
    assert (v.gene_species[mapped] == "human").all()


def test_restricted_unpickler_accepts_plain_dicts(tmp_path):
    d = {"<pad>": np.int16(0), "<mask>": np.int16(1), "ENSG00000111640": np.float64(2.5), "x": 3}
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(d))
    out = read_geneformer_pickle(p)
    assert out == {"<pad>": 0, "<mask>": 1, "ENSG00000111640": 2.5, "x": 3}
    assert all(type(v) in (int, float) for v in out.values())


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    flag = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"<pad>": _Evil(flag)}))
    with pytest.raises(ValueError, match="refusing to load"):
        read_geneformer_pickle(p)
    assert not flag.exists()
    # a pickled list, or a non-string key, is not a dictionary of the expected form
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a dict"):
        read_geneformer_pickle(p)
    p.write_bytes(pickle.dumps({1: 2}))
    with pytest.raises(ValueError, match="is not str"):
        read_geneformer_pickle(p)


@pytest.mark.skipif(not SHARED.exists(), reason="needs the shared data folder")
@pytest.mark.parametrize("tag", ["gc30M", "gc95M"])
def test_geneformer_pickles_match_shipped_vocabularies(tag):
    tok = read_geneformer_pickle(SHARED / "geneformer_dicts" / f"token_dictionary_{tag}.pkl")
    med = read_geneformer_pickle(SHARED / "geneformer_dicts" / f"gene_median_dictionary_{tag}.pkl")
    v = Vocabulary.load("geneformer-v1" if tag == "gc30M" else "geneformer-v2")
    assert v.tokens == [t for t, _ in sorted(tok.items(), key=lambda kv: kv[1])]
    genes = np.asarray(v.tokens)[v.is_gene]
    np.testing.assert_array_equal(v.medians[v.is_gene], [med[g] for g in genes])
    mapping = None
    if v.rules.id_mapping == "geneformer":
        mapping = read_geneformer_pickle(SHARED / "geneformer_dicts" / f"ensembl_mapping_dict_{tag}.pkl")
    rebuilt = Vocabulary.from_geneformer(
        tok, med, rules=v.rules, name=v.name, median_source=f"geneformer_{tag}", id_map=mapping
    )
    assert rebuilt.tokens == v.tokens
    # the packaged mapping table is the pickle's mapping, as the tokenizer sees it
    assert rebuilt.input_id_map == v.input_id_map


def test_tsv_tables_are_gzip_text():
    with gzip.open(mgf.genes._tables.DATA_DIR / "geneformer_gene_name_id_gc95M.tsv.gz", "rt") as f:
        head = io.StringIO(f.read(200)).readline()
    assert head.strip().split("\t") == ["gene_symbol", "ensembl_id"]


def test_default_vocabulary_is_complete_and_records_its_untrained_tokens(tmp_path):
    v = Vocabulary.load("mixgf")
    gf = Vocabulary.load("geneformer-v2")
    human = set(np.asarray(gf.tokens, dtype=object)[gf.is_gene])
    assert human <= set(v.tokens)  # every gene of Geneformer's 95M-cell dictionary
    orth = mgf.genes.orthologs()
    mouse_with_median = [m for m in orth["mouse_id"] if m in v]
    assert len(mouse_with_median) > 0.95 * len(orth)  # one-to-one orthologs (those of known median)
    umod, gapdh, gapdh_mouse = v.token_ids(["ENSMUSG00000030963", "ENSG00000111640", "ENSMUSG00000057666"])
    assert umod >= 0 and not v.trained[umod] and v.trained[gapdh] and v.trained[gapdh_mouse]
    assert v.untrained.size == (~v.trained).sum() and v.is_gene[v.untrained].all()
    w = Vocabulary.load(v.save(tmp_path / "v.json.gz"))
    np.testing.assert_array_equal(w.untrained, v.untrained)
    assert w.sha256 == v.sha256
    import dataclasses

    assert dataclasses.replace(v, untrained=None).sha256 == v.sha256  # the record is not the token mapping
    assert Vocabulary.load("geneformer-v2").untrained is None and Vocabulary.load("geneformer-v2").trained.all()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Vocabulary(["<pad>", "ENSG00000111640"], np.array([np.nan, 1.0]), {"pad": "<pad>"}, untrained=[2])


def test_build_vocabulary_complete_adds_genes_the_corpus_lacks(baron_full):
    with mgf.settings.override(verbosity="error"):
        corpus = mgf.pp.build_vocabulary([baron_full[:100]], add_orthologs=False)
        full = mgf.pp.build_vocabulary([baron_full[:100]], add_orthologs=False, complete=True)
    umod = "ENSMUSG00000030963"  # a kidney gene: not expressed in these pancreas cells
    assert umod not in corpus and umod in full
    assert full.median_source[full.token_ids([umod])[0]] == "ortholog:geneformer_gc95M"
    assert set(corpus.tokens) <= set(full.tokens) and full.provenance["complete"]
    gf = Vocabulary.load("geneformer-v2")
    ids = full.token_ids(np.asarray(gf.tokens, dtype=object)[gf.is_gene])
    assert (ids >= 0).all()
    np.testing.assert_allclose(full.medians[ids], gf.medians[gf.is_gene])  # human medians are Geneformer's
    kept = [t for t in corpus.tokens if t in full and corpus.is_gene[corpus.token_ids([t])[0]]]
    np.testing.assert_allclose(full.medians[full.token_ids(kept)], corpus.medians[corpus.token_ids(kept)])

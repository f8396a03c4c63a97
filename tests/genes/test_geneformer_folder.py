"""Checkpoint folders that bring their own Geneformer dictionaries (MixGeneformer.from_huggingface without vocab=)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import mixgf as mgf
from mixgf.genes import GENEFORMER_V1_RULES, GENEFORMER_V2_RULES, MIX_GENEFORMER_RULES, Vocabulary
from mixgf.genes._vocab import vocabulary_from_geneformer_folder

DICTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "geneformer_dicts"
needs_shared = pytest.mark.skipif(not DICTS.exists(), reason="needs ../shared/data/geneformer_dicts")


def _tiny_bert(path: Path, vocab_size: int, positions: int) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=positions,
        hidden_act="relu",
    )
    transformers.BertForMaskedLM(config).save_pretrained(path)


@needs_shared
def test_v2_folder_from_shared_dictionaries(tmp_path, pbmc):
    for f in ("token_dictionary_gc95M.pkl", "gene_median_dictionary_gc95M.pkl", "ensembl_mapping_dict_gc95M.pkl"):
        shutil.copy(DICTS / f, tmp_path / f)
    _tiny_bert(tmp_path, 20_275, 4096)
    model = mgf.MixGeneformer.from_huggingface(tmp_path, name="gf-v2-folder")
    preset = Vocabulary.load("geneformer-v2")
    assert model.vocab.rules == GENEFORMER_V2_RULES
    assert model.vocab.tokens == preset.tokens
    np.testing.assert_array_equal(model.vocab.medians[preset.is_gene], preset.medians[preset.is_gene])
    assert model.vocab.input_id_map == preset.input_id_map
    a, b = pbmc[:50].copy(), pbmc[:50].copy()
    mgf.pp.rank_tokenize(a, vocab=model.vocab, gene_id_key="gene_id")
    mgf.pp.rank_tokenize(b, vocab="geneformer-v2", gene_id_key="gene_id")
    np.testing.assert_array_equal(a.obsm["mixgf_tokens"], b.obsm["mixgf_tokens"])
    # the vocabulary, with its mapping, survives a save as a mixgf model directory
    loaded = mgf.MixGeneformer.load(model.save(tmp_path / "saved"))
    assert loaded.vocab.input_id_map == preset.input_id_map


@needs_shared
def test_v1_style_folder_without_mapping(tmp_path):
    for f in ("token_dictionary_gc30M.pkl", "gene_median_dictionary_gc30M.pkl"):
        shutil.copy(DICTS / f, tmp_path / f)
    vocab = vocabulary_from_geneformer_folder(tmp_path)
    assert vocab.rules == GENEFORMER_V1_RULES
    assert vocab.tokens == Vocabulary.load("geneformer-v1").tokens
    shutil.copy(DICTS / "ensembl_mapping_dict_gc30M.pkl", tmp_path)  # V1's mapping is the identity
    assert vocabulary_from_geneformer_folder(tmp_path).rules == GENEFORMER_V1_RULES


def _write(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def test_mix_style_folder_and_missing_files(tmp_path):
    """A Mix-Geneformer-like dictionary (human and mouse genes, no specials) -> Mix rules; clear errors otherwise."""
    tok = {"<pad>": 0, "<mask>": 1, "ENSG00000111640": 2, "ENSMUSG00000057666": 3}
    med = {"ENSG00000111640": 2.5, "ENSMUSG00000057666": 3.0}
    _write(tmp_path / "token_dictionary_mix.pkl", tok)
    with pytest.raises(FileNotFoundError, match=r"gene_median_dictionary\*\.pkl"):
        vocabulary_from_geneformer_folder(tmp_path)
    _write(tmp_path / "gene_median_dictionary_mix.pkl", med)
    vocab = vocabulary_from_geneformer_folder(tmp_path)
    assert vocab.rules == MIX_GENEFORMER_RULES and vocab.species == ("human", "mouse")
    assert vocab.provenance["files"]["token_dictionary"] == "token_dictionary_mix.pkl"

    v2 = tmp_path / "v2"
    v2.mkdir()
    _write(v2 / "token_dictionary_x.pkl", {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, "ENSG00000111640": 4})
    _write(v2 / "gene_median_dictionary_x.pkl", {"ENSG00000111640": 2.5})
    with pytest.raises(FileNotFoundError, match=r"ensembl_mapping_dict\*\.pkl.*V2-style"):
        mgf.MixGeneformer.from_huggingface(v2)
    _write(v2 / "ensembl_mapping_dict_x.pkl", {"ENSG00000111640": "ENSG00000111640", "GAPDH": "ENSG00000111640"})
    vocab = vocabulary_from_geneformer_folder(v2)
    assert vocab.rules == GENEFORMER_V2_RULES
    assert vocab.input_id_map == {"ENSG00000111640": "ENSG00000111640", "GAPDH": "ENSG00000111640"}
    _write(v2 / "token_dictionary_y.pkl", {"<pad>": 0})
    with pytest.raises(ValueError, match="several"):
        vocabulary_from_geneformer_folder(v2)


def test_folder_pickles_are_read_safely(tmp_path):
    _write(tmp_path / "token_dictionary.pkl", {"<pad>": 0, "ENSG00000111640": print})
    _write(tmp_path / "gene_median_dictionary.pkl", {"ENSG00000111640": 2.5})
    with pytest.raises(ValueError, match="refusing"):
        vocabulary_from_geneformer_folder(tmp_path)

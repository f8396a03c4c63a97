"""A V2-shaped Geneformer checkpoint: embeddings as upstream's EmbExtractor computes them, perturbations keep specials.

Upstream ``EmbExtractor`` (re-stated here, not imported): hidden states of layer ``n_layers + emb_layer`` with
``emb_layer=-1`` (the second-to-last block's output); ``emb_mode="cls"`` takes position 0 (``<cls>``),
``emb_mode="cell"`` the mean over the gene positions ``1 .. length-2`` (``<cls>`` and ``<eos>`` excluded). Cells are
sorted by length, longest first, and run in padded batches with an attention mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixgf as mgf
from mixgf.genes import Vocabulary

transformers = pytest.importorskip("transformers")

N_LAYERS = 2
TOL = 1e-5


@pytest.fixture(scope="module")
def v2_checkpoint(tmp_path_factory):
    """A random BertForMaskedLM with Geneformer V2's vocabulary (20,275) and 4,096 positions, tiny otherwise."""
    config = transformers.BertConfig(
        vocab_size=20_275,
        hidden_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=4096,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(config).eval()
    path = tmp_path_factory.mktemp("gf_v2")
    hf.save_pretrained(path)
    return path, hf


@pytest.fixture(scope="module")
def v2_cells(pbmc_full):
    adata = pbmc_full[:24].copy()
    mgf.pp.rank_tokenize(adata, vocab="geneformer-v2", gene_id_key="gene_id")
    return adata


def _emb_extractor(hf, tokens: np.ndarray, lengths: np.ndarray, mode: str, batch: int = 8) -> np.ndarray:
    out = np.empty((len(lengths), hf.config.hidden_size), dtype=np.float32)
    order = np.argsort(-lengths, kind="stable")
    for a in range(0, len(order), batch):
        idx = order[a : a + batch]
        width = int(lengths[idx].max())
        ids = torch.as_tensor(tokens[idx, :width].astype(np.int64))
        mask = (torch.arange(width)[None, :] < torch.as_tensor(lengths[idx])[:, None]).long()
        with torch.no_grad():
            h = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[N_LAYERS - 1]
        for row, cell in enumerate(idx):
            n = int(lengths[cell])
            out[cell] = (h[row, 0] if mode == "cls" else h[row, 1 : n - 1].mean(0)).numpy()
    return out


def test_embeddings_match_emb_extractor(v2_checkpoint, v2_cells):
    path, hf = v2_checkpoint
    model = mgf.MixGeneformer.from_huggingface(path, vocab="geneformer-v2")
    assert model.vocab.rules.add_cls and model.config.max_position_embeddings == 4096
    adata = v2_cells.copy()
    tokens = adata.obsm["mixgf_tokens"]
    lengths = adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    assert (tokens[:, 0] == 2).all() and (tokens[np.arange(adata.n_obs), lengths - 1] == 3).all()

    mgf.tl.embed(adata, model=model)  # the documented default for V2: <cls>
    assert adata.uns["mixgf"]["params"]["pooling"] == "cls"
    mgf.tl.embed(adata, model=model, pooling="mean", key_added="X_mean")
    cls_diff = np.abs(adata.obsm["X_mixgf"] - _emb_extractor(hf, tokens, lengths, "cls")).max()
    cell_diff = np.abs(adata.obsm["X_mean"] - _emb_extractor(hf, tokens, lengths, "cell")).max()
    assert cls_diff <= TOL, cls_diff
    assert cell_diff <= TOL, cell_diff
    # not vacuous: the two modes differ
    assert np.abs(adata.obsm["X_mixgf"] - adata.obsm["X_mean"]).max() > 1e-3


def test_default_pooling_is_mean_without_cls(pbmc):
    adata = pbmc[:8].copy()
    mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")
    mgf.tl.embed(adata)
    assert adata.uns["mixgf"]["params"]["pooling"] == "mean"
    with pytest.raises(ValueError, match="pooling='cls' needs tokens that start with <cls>"):
        mgf.tl.embed(adata, pooling="cls")


@pytest.mark.parametrize("mode", ["delete", "overexpress", "inhibit", "activate"])
def test_perturb_keeps_cls_and_eos(v2_checkpoint, v2_cells, mode, monkeypatch):
    """Every sequence tl.perturb embeds on a V2 model starts with <cls> and ends with <eos>, exactly once each."""
    import mixgf.engine.perturb._copies as core

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = core.embed_tokens

    def spy(model, tokens, lengths, **kw):
        seen.append((np.asarray(tokens).copy(), np.asarray(lengths).copy()))
        return real(model, tokens, lengths, **kw)

    monkeypatch.setattr(core, "embed_tokens", spy)
    path, _ = v2_checkpoint
    model = mgf.MixGeneformer.from_huggingface(path, vocab="geneformer-v2")
    adata = v2_cells[:6].copy()
    vocab = Vocabulary.load("geneformer-v2")
    # the top gene of the first cell and the gene ranked 5th: perturbations at the edges and inside
    genes = [vocab.tokens[int(adata.obsm["mixgf_tokens"][0, 1])], vocab.tokens[int(adata.obsm["mixgf_tokens"][0, 5])]]
    mgf.tl.perturb(adata, genes, mode=mode, model=model, test="none")
    assert seen
    cls_id, eos_id = vocab.id_of("cls"), vocab.id_of("eos")
    for tokens, lengths in seen:
        for row, n in zip(tokens, lengths):
            seq = row[: int(n)]
            assert seq[0] == cls_id and seq[-1] == eos_id
            assert (seq == cls_id).sum() == 1 and (seq == eos_id).sum() == 1

"""bf16 on the CPU against fp32, on real pbmc3k cells and the bundled default model.

bf16 runs on every CPU (slowly where the CPU has no native bf16, as on CI's), so the tolerance of the bf16 path is
tested here with an explicit ``dtype="bf16"``; ``dtype="auto"`` picks it only on CPUs with AVX512-BF16 or AMX.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import mixgf as mgf
from mixgf.model import embed_tokens


@pytest.fixture(scope="module")
def default_model():
    return mgf.MixGeneformer.load()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("fast_path", [True, False])
def test_bf16_embeddings_match_fp32_on_real_cells_at_full_length(default_model, pbmc_full, fast_path):
    adata = pbmc_full[:16].copy()
    mgf.pp.rank_tokenize(adata, gene_id_key="gene_id")  # the model's full length (1,024)
    tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    assert lengths.max() == default_model.config.max_position_embeddings  # some cells are cut at full length
    kw = {"special_ids": default_model.vocab.special_ids, "layer": -2, "device": "cpu"}
    with mgf.settings.override(cpu_fast_path=fast_path):
        ref = embed_tokens(default_model.encoder, tokens, lengths, dtype="float32", **kw)
        got = embed_tokens(default_model.encoder, tokens, lengths, dtype="bf16", **kw)
    assert got.dtype == np.float32  # pooling is fp32
    assert not np.array_equal(got, ref)  # bf16 really ran
    assert _cosine(got, ref).min() >= 0.999


def test_bf16_perturbation_shifts_rank_like_fp32(default_model, pbmc_full):
    adata = pbmc_full[:8].copy()
    mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    tokens, lengths = adata.obsm["mixgf_tokens"], adata.obs["mixgf_tokens_n_tokens"].to_numpy()
    present = np.concatenate([tokens[i, : lengths[i]] for i in range(adata.n_obs)]).astype(np.int64)
    counts = np.bincount(present, minlength=len(default_model.vocab.tokens))
    counts[default_model.vocab.special_ids] = 0
    top = np.argsort(-counts, kind="stable")[:6]  # the genes in the most of these cells' token lists
    genes = [str(default_model.vocab.tokens[t]) for t in top]
    shifts = {}
    for dtype in ("float32", "bf16"):
        b = adata.copy()
        mgf.tl.perturb(b, genes=genes, test="none", model=default_model, device="cpu", dtype=dtype)
        assert b.uns["mixgf_perturb"]["params"]["dtype"] == ("float32" if dtype == "float32" else "bfloat16")
        shifts[dtype] = b.obsm["mixgf_perturb_shift"].to_numpy(np.float64).ravel()
    both = ~np.isnan(shifts["float32"])
    assert np.array_equal(both, ~np.isnan(shifts["bf16"]))
    assert both.sum() >= 20
    rho = stats.spearmanr(shifts["float32"][both], shifts["bf16"][both]).statistic
    assert rho >= 0.99

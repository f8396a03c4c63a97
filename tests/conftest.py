from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pytest

import mixgf as mgf

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_settings():
    with mgf.settings.override(progress_bar=False, verbosity="warning"):
        yield


@pytest.fixture(scope="session")
def pbmc_full() -> ad.AnnData:
    return mgf.datasets.pbmc3k()


@pytest.fixture
def pbmc(pbmc_full) -> ad.AnnData:
    """300 real human PBMCs (raw counts, symbols as var names, Ensembl IDs in var['gene_id'])."""
    return pbmc_full[:300].copy()


@pytest.fixture(scope="session")
def baron_full() -> ad.AnnData:
    return mgf.datasets.baron_mouse_pancreas()


@pytest.fixture
def baron(baron_full) -> ad.AnnData:
    """200 real mouse pancreas cells (raw counts, mouse symbols as var names)."""
    return baron_full[:200].copy()


@pytest.fixture
def oligo() -> ad.AnnData:
    """40 real human tumour cells holding TPM-like, non-count values."""
    return ad.read_h5ad(DATA / "oligodendroglioma_tpm_40cells.h5ad")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# Small random Hugging Face BERT checkpoints and token matrices for the model-core and engine tests.
VOCAB = 300
HIDDEN = 64
HEADS = 4
FFN = 128
MAX_POS = 128


def _hf_config(act: str, n_layers: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        hidden_act=act,
        max_position_embeddings=MAX_POS,
        pad_token_id=0,
        attn_implementation="eager",
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Give LayerNorms and biases non-trivial values so that every weight matters for parity."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                base = 1.0 if ("LayerNorm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, torch.nn.Module]]:
    """Factory: ``(act, n_layers, fmt, kind)`` -> (checkpoint dir, transformers model in eval mode).

    ``fmt`` is ``"safetensors"`` (``save_pretrained``) or ``"bin"`` (``torch.save`` of the full state dict next to
    the same ``config.json``, i.e. the legacy ``pytorch_model.bin`` layout, tied decoder weights included).
    ``kind`` is ``"mlm"`` (BertForMaskedLM) or ``"base"`` (BertModel, with pooler, no ``bert.`` prefix).
    """
    cache: dict[tuple[str, int, str, str], tuple[Path, torch.nn.Module]] = {}

    def make(act: str = "relu", n_layers: int = 2, fmt: str = "safetensors", kind: str = "mlm"):
        key = (act, n_layers, fmt, kind)
        if key in cache:
            return cache[key]
        import torch
        from transformers import BertForMaskedLM, BertModel

        torch.manual_seed(1234 + n_layers)
        cls = BertForMaskedLM if kind == "mlm" else BertModel
        model = cls(_hf_config(act, n_layers)).eval()
        _randomise(model, seed=n_layers)
        out = tmp_path_factory.mktemp(f"hf-{act}-{n_layers}-{fmt}-{kind}")
        model.save_pretrained(out)
        if fmt == "bin":
            (out / "model.safetensors").unlink()
            torch.save(model.state_dict(), out / "pytorch_model.bin")
        cache[key] = (out, model)
        return cache[key]

    return make


def make_tokens(
    lengths: list[int] | np.ndarray, *, l_max: int | None = None, seed: int = 0, cls_id: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Random right-padded uint16 token matrix with ids in [3, VOCAB) (0 = pad, 1/2 = specials)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    l_max = int(lengths.max()) if l_max is None else l_max
    rng = np.random.default_rng(seed)
    tokens = np.zeros((lengths.shape[0], l_max), dtype=np.uint16)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, VOCAB, size=n)
        if cls_id is not None:
            tokens[i, 0] = cls_id
    return tokens, lengths


@pytest.fixture
def tokens_factory() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return make_tokens


@pytest.fixture
def mixgf_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog wired to the ``mixgf`` logger (which may not propagate to the root logger)."""
    logger = logging.getLogger("mixgf")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)

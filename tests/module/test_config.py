"""EncoderConfig serialisation/validation and the import hygiene of mixgf.model."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from mixgf.model import EncoderConfig

MODEL_DIR = Path(__file__).resolve().parents[2] / "src" / "mixgf" / "module"

GENEFORMER_V1 = {
    "architectures": ["BertForMaskedLM"],
    "attention_probs_dropout_prob": 0.02,
    "gradient_checkpointing": False,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.02,
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 2048,
    "model_type": "bert",
    "num_attention_heads": 4,
    "num_hidden_layers": 6,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "transformers_version": "4.6.0",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 25426,
}


def test_defaults_are_geneformer_v1():
    assert EncoderConfig.from_hf_dict(GENEFORMER_V1) == EncoderConfig(vocab_size=25426)


def test_json_round_trip(tmp_path: Path):
    cfg = EncoderConfig(vocab_size=1000, hidden_act="silu", has_mlm_head=False)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save_json(tmp_path / "c.json")
    assert EncoderConfig.load_json(tmp_path / "c.json") == cfg
    assert cfg.head_dim == 64


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"hidden_size": 100, "num_attention_heads": 3}, "divisible"),
        ({"hidden_act": "tanh"}, "hidden_act"),
        ({"num_hidden_layers": 0}, "positive"),
        ({"pad_token_id": 10}, "pad_token_id"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ],
)
def test_invalid_configs(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        EncoderConfig(**{"vocab_size": 10, **kwargs})


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="Unknown EncoderConfig field"):
        EncoderConfig.from_dict({"vocab_size": 5, "rotary": True})
    with pytest.raises(ValueError, match="vocab_size"):
        EncoderConfig.from_dict({"hidden_size": 8})


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"model_type": "roberta"}, "model_type"),
        ({"model_type": None}, "model_type"),
        ({"position_embedding_type": "relative_key_query"}, "absolute"),
        ({"is_decoder": True}, "Decoder"),
        ({"hidden_act": "gelu_new"}, "hidden_act"),
    ],
)
def test_from_hf_dict_refusals(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        EncoderConfig.from_hf_dict({**GENEFORMER_V1, **change})


def test_from_hf_dict_aliases():
    assert EncoderConfig.from_hf_dict({**GENEFORMER_V1, "hidden_act": "swish"}).hidden_act == "silu"
    cfg = EncoderConfig.from_hf_dict({**GENEFORMER_V1, "tie_word_embeddings": False})
    assert cfg.tie_word_embeddings is False


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_module_package_imports_only_torch_numpy_safetensors():
    allowed = {"torch", "numpy", "safetensors", "tqdm", "__future__"} | set(sys.stdlib_module_names)
    files = sorted(MODEL_DIR.glob("*.py"))
    assert files
    for file in files:
        roots = _imported_roots(file)
        assert "mixgf" not in roots, f"{file.name} imports from mixgf outside mixgf.module"
        assert roots <= allowed, f"{file.name} imports {sorted(roots - allowed)}"
        text = file.read_text(encoding="utf-8")
        assert "pickle.load" not in text
        for call in ("torch.load(",):
            for line in text.splitlines():
                if call in line and not line.lstrip().startswith(("#", '"', "``")):
                    assert "weights_only=True" in line, f"{file.name}: {line.strip()}"

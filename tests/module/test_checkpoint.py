"""mixgf model directories and the Hugging Face importer's safety checks."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mixgf.model import (
    FORMAT_VERSION,
    BertEncoderModel,
    EncoderConfig,
    embed_tokens,
    import_hf_bert,
    load_model_dir,
    save_model_dir,
    verify_model_dir,
)


def _small_config(**kw) -> EncoderConfig:
    base = {
        "vocab_size": 300,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    base.update(kw)
    return EncoderConfig(**base)


@pytest.fixture
def model() -> BertEncoderModel:
    torch.manual_seed(3)
    return BertEncoderModel(_small_config()).eval()


@pytest.fixture
def saved(tmp_path: Path, model: BertEncoderModel) -> Path:
    return save_model_dir(
        tmp_path / "m",
        model,
        extra_files={"vocab.json": b'{"<pad>": 0}', "medians.npy": b"\x00\x01\x02"},
        metadata={"source": "unit-test", "species": ["human", "mouse"]},
    )


def test_round_trip_gives_identical_outputs(saved: Path, model: BertEncoderModel, tokens_factory):
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json",
        "manifest.json",
        "medians.npy",
        "model.safetensors",
        "vocab.json",
    ]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    for name, entry in manifest["files"].items():
        assert entry["size"] == (saved / name).stat().st_size
        assert len(entry["sha256"]) == 64

    loaded, config, extras, metadata = load_model_dir(saved)
    assert config == model.config
    assert metadata == {"source": "unit-test", "species": ["human", "mouse"]}
    assert extras["vocab.json"].read_bytes() == b'{"<pad>": 0}'
    assert set(extras) == {"vocab.json", "medians.npy"}
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    tokens, lengths = tokens_factory([20, 7, 13], seed=0)
    np.testing.assert_array_equal(embed_tokens(model, tokens, lengths), embed_tokens(loaded, tokens, lengths))
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(model.mlm_logits(model(ids)), loaded.mlm_logits(loaded(ids)), rtol=0, atol=0)


def test_untied_and_headless_models_round_trip(tmp_path: Path):
    for kw in ({"tie_word_embeddings": False}, {"has_mlm_head": False}):
        torch.manual_seed(0)
        m = BertEncoderModel(_small_config(**kw))
        loaded = load_model_dir(save_model_dir(tmp_path / str(kw), m)).model
        for k, v in m.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k])


def test_flipped_byte_is_detected(saved: Path):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt.*model\.safetensors|model\.safetensors.*corrupt"):
        load_model_dir(saved)
    with pytest.raises(ValueError, match="corrupt"):
        verify_model_dir(saved)


def test_modified_extra_file_and_truncation_are_detected(saved: Path):
    (saved / "vocab.json").write_bytes(b'{"<pad>": 1}')
    with pytest.raises(ValueError, match=r"corrupt.*vocab\.json"):
        load_model_dir(saved)
    (saved / "vocab.json").unlink()
    with pytest.raises(ValueError, match=r"vocab\.json.*missing"):
        load_model_dir(saved)


def test_wrong_shapes_give_clear_error(tmp_path: Path, model: BertEncoderModel):
    # weights of a hidden-64 model under a config that says hidden 32, manifest made consistent
    other = BertEncoderModel(_small_config(hidden_size=64, intermediate_size=128))
    path = save_model_dir(tmp_path / "m", other)
    model.config.save_json(path / "config.json")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["config.json"]["size"] = (path / "config.json").stat().st_size
    import hashlib

    manifest["files"]["config.json"]["sha256"] = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shape mismatches.*embeddings\.word\.weight: checkpoint \(300, 64\)"):
        load_model_dir(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, model: BertEncoderModel):
    path = save_model_dir(tmp_path / "m", model)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("layers.1.")}
    state["extra.thing"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \[layers\.1\.") as info:
        load_model_dir(path, verify=False)
    assert "unexpected keys [extra.thing]" in str(info.value)


def test_overwrite_rules(tmp_path: Path, model: BertEncoderModel, saved: Path):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model_dir(saved, model)
    save_model_dir(saved, model, overwrite=True, metadata={"v": 2})
    assert load_model_dir(saved).metadata == {"v": 2}
    assert not (saved / "vocab.json").exists()  # replaced as a whole
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="not a mixgf model directory"):
        save_model_dir(precious, model, overwrite=True)
    assert (precious / "thesis.tex").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_failed_save_leaves_nothing_behind(tmp_path: Path, model: BertEncoderModel, monkeypatch):
    import mixgf.module._checkpoint as ckpt

    def fail(*args, **kwargs):
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(ckpt, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(tmp_path / "m", model)
    assert list(tmp_path.iterdir()) == []


def test_invalid_extra_files_and_metadata(tmp_path: Path, model: BertEncoderModel):
    for name in ("../evil", "sub/dir.json", "config.json", "manifest.json", ""):
        with pytest.raises(ValueError, match="name"):
            save_model_dir(tmp_path / "m", model, extra_files={name: b"x"})
    with pytest.raises(ValueError, match="JSON"):
        save_model_dir(tmp_path / "m", model, metadata={"x": object()})
    assert not (tmp_path / "m").exists()


def test_not_a_model_dir(tmp_path: Path, hf_checkpoint):
    hf_path, _ = hf_checkpoint("relu", 2)
    with pytest.raises(ValueError, match="import_hf_bert"):
        load_model_dir(hf_path)
    with pytest.raises(FileNotFoundError):
        load_model_dir(tmp_path / "nope")


def test_newer_format_is_refused(saved: Path):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="upgrade mixgf"):
        load_model_dir(saved)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_is_refused(tmp_path: Path, hf_checkpoint, writer):
    hf_path, _ = hf_checkpoint("relu", 2)
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    shutil.copy(hf_path / "config.json", ckpt / "config.json")
    marker = tmp_path / "pwned"
    payload = {"bert.embeddings.word_embeddings.weight": _Evil(marker)}
    if writer == "pickle":
        with (ckpt / "pytorch_model.bin").open("wb") as fh:
            pickle.dump(payload, fh)
    else:
        torch.save(payload, ckpt / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only"):
        import_hf_bert(ckpt)
    assert not marker.exists()


def test_hf_import_errors(tmp_path: Path, hf_checkpoint):
    hf_path, hf_model = hf_checkpoint("relu", 2, "bin")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(hf_path, ckpt)
    state = hf_model.state_dict()

    # missing, unexpected and mis-shaped tensors are all listed (HF names)
    broken = {k: v for k, v in state.items() if "layer.1.output.dense" not in k}
    broken["bert.encoder.layer.7.output.dense.weight"] = torch.zeros(3)
    broken["bert.embeddings.position_embeddings.weight"] = torch.zeros(99, 64)
    torch.save(broken, ckpt / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing keys") as info:
        import_hf_bert(ckpt)
    text = str(info.value)
    assert "encoder.layer.1.output.dense.weight" in text
    assert "unexpected keys [encoder.layer.7.output.dense.weight]" in text
    assert "embeddings.position_embeddings.weight: checkpoint (99, 64) vs config (128, 64)" in text

    # a state dict that is not {name: tensor}
    torch.save([1, 2, 3], ckpt / "pytorch_model.bin")
    with pytest.raises(ValueError, match="state dict"):
        import_hf_bert(ckpt)

    # no weights at all
    (ckpt / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="No weights"):
        import_hf_bert(ckpt)

    # unsupported configs
    config = json.loads((hf_path / "config.json").read_text())
    for change, pattern in (
        ({"model_type": "roberta"}, "model_type"),
        ({"position_embedding_type": "relative_key"}, "absolute"),
        ({"hidden_act": "gelu_new"}, "hidden_act"),
    ):
        (ckpt / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=pattern):
            import_hf_bert(ckpt)


def test_hf_import_then_save_round_trip(tmp_path: Path, hf_checkpoint, tokens_factory):
    hf_path, _ = hf_checkpoint("silu", 3)
    model, config = import_hf_bert(hf_path)
    path = save_model_dir(tmp_path / "converted", model, metadata={"imported_from": "hf"})
    loaded = load_model_dir(path)
    assert loaded.config == config
    tokens, lengths = tokens_factory([40, 3, 22], seed=4)
    np.testing.assert_array_equal(embed_tokens(model, tokens, lengths), embed_tokens(loaded.model, tokens, lengths))

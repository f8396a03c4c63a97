"""The dtype choice: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

import mixgf as mgf
from mixgf.engine import _device
from mixgf.model import cpu_supports_bf16, resolve_dtype

CPU = torch.device("cpu")


@pytest.fixture
def cpu_features(monkeypatch):
    """Set what the CPU reports: torch's cpuinfo answer and the /proc/cpuinfo flags."""

    def set_features(torch_says: bool = False, flags: tuple[str, ...] = ()) -> None:
        monkeypatch.setattr(_device, "_torch_cpu_bf16", lambda: torch_says)
        monkeypatch.setattr(_device, "_cpu_flags", lambda: frozenset(flags))

    return set_features


@pytest.mark.parametrize(
    ("torch_says", "flags", "native"),
    [
        (False, ("avx2", "fma"), False),  # AVX2 only (the CPU CI runs on)
        (False, ("avx512f", "avx512bw", "avx512_vnni"), False),  # AVX-512 without bf16
        (False, ("avx512f", "avx512_bf16"), True),  # Cooper Lake, Zen 4
        (False, ("amx_tile", "amx_bf16"), True),  # Sapphire Rapids
        (True, (), True),  # torch's cpuinfo alone (no /proc/cpuinfo, e.g. not Linux)
    ],
)
def test_auto_dtype_on_cpu_follows_native_bf16(cpu_features, torch_says, flags, native):
    cpu_features(torch_says, flags)
    assert cpu_supports_bf16() is native
    want = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", CPU) == want
    assert resolve_dtype(None, CPU) == want
    # an explicit dtype is always used as given
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype(torch.float32, CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16


def test_cpu_flags_and_torch_detection_agree_with_this_machine():
    _device._cpu_flags.cache_clear()
    flags = _device._cpu_flags()
    assert isinstance(flags, frozenset)
    by_flags = any(f in flags for f in _device.CPU_BF16_FLAGS)
    assert cpu_supports_bf16() == (by_flags or _device._torch_cpu_bf16())


def test_torch_detection_survives_missing_or_failing_helpers(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)

    def broken() -> bool:
        msg = "no cpuinfo"
        raise RuntimeError(msg)

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert _device._torch_cpu_bf16() is False


def test_tools_record_the_chosen_dtype(cpu_features, pbmc_full):
    adata = pbmc_full[:3].copy()
    mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=32)
    cpu_features(True)
    mgf.tl.embed(adata, device="cpu")
    assert adata.uns["mixgf"]["params"]["dtype"] == "bfloat16"
    cpu_features(False, ("avx2",))
    mgf.tl.embed(adata, device="cpu")
    assert adata.uns["mixgf"]["params"]["dtype"] == "float32"
    cpu_features(True)
    mgf.tl.embed(adata, device="cpu", dtype="float32")  # explicit fp32 always works
    assert adata.uns["mixgf"]["params"]["dtype"] == "float32"

from __future__ import annotations

import inspect
import subprocess
import sys

import mixgf as mgf


def test_import_is_light():
    code = (
        "import sys, mixgf\n"
        "heavy = [m for m in ('torch', 'matplotlib.pyplot', 'umap', 'statsmodels', 'scanpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_namespaces_and_version():
    for name in ("pp", "tl", "pl", "get", "genes", "datasets", "settings"):
        assert hasattr(mgf, name)
    assert mgf.__version__.count(".") >= 2


def _public_functions():
    for mod in (mgf.pp, mgf.tl, mgf.pl, mgf.get):
        for name in getattr(mod, "__all__", []):
            yield f"{mod.__name__}.{name}", getattr(mod, name)


def test_signature_conventions():
    """scanpy's rules: adata first, at most 3 positional parameters, copy keyword-only."""
    checked = 0
    for qual, fn in _public_functions():
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(positional) <= 3, qual
        if "copy" in inspect.signature(fn).parameters:
            assert inspect.signature(fn).parameters["copy"].kind == inspect.Parameter.KEYWORD_ONLY, qual
            assert params[0].name == "adata", qual
        assert fn.__doc__ and "Parameters" in fn.__doc__, f"{qual} lacks a numpydoc docstring"
        checked += 1
    assert checked >= 3


def test_settings_validate_and_override():
    import pytest

    with pytest.raises(ValueError, match="chunk_size"):
        mgf.settings.chunk_size = 0
    with pytest.raises(AttributeError, match="no setting"):
        mgf.settings.chunksize = 5
    before = mgf.settings.chunk_size
    with mgf.settings.override(chunk_size=7):
        assert mgf.settings.chunk_size == 7
    assert mgf.settings.chunk_size == before


def test_no_unsafe_deserialisation_in_package():
    from pathlib import Path

    src = Path(mgf.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"

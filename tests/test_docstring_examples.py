"""Every public object listed in docs/api/index.md has a numpydoc ``Examples`` section, and its examples run.

The objects are read from the ``autosummary`` directives of the API page, so an object added there is checked
without changing this file. Each object is one test case: its docstring (for a class, also those of the methods it
defines) is collected with :class:`doctest.DocTestFinder` and run with :class:`doctest.DocTestRunner`.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import tempfile
from pathlib import Path

import matplotlib as mpl
import pytest

import mixgf as mgf

mpl.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api" / "index.md"
SOURCE = ROOT / "src" / "mixgf"
# The autosummary template that documents an instance (mgf.settings) with its class's docstring.
INSTANCE_TEMPLATE = "autosummary/settings.rst"
# No option flags: an example that needs ``...`` in its output says so with ``# doctest: +ELLIPSIS``, so that it
# passes under ``python -m doctest`` and ``pytest --doctest-modules`` too.
OPTIONFLAGS = 0

_BLOCK = re.compile(r"```\{eval-rst\}\n(.*?)```", re.S)
_CURRENTMODULE = re.compile(r"^\.\. currentmodule:: (\S+)\s*$", re.M)
_TEMPLATE = re.compile(r"^\s+:template: (\S+)\s*$", re.M)
_EXAMPLES = re.compile(r"^Examples\n--------\n", re.M)


def _api_entries() -> list[tuple[str, str | None]]:
    """``(full name, autosummary template)`` of every entry of the API page's autosummary directives, in order."""
    entries = []
    for block in _BLOCK.findall(API_PAGE.read_text(encoding="utf-8")):
        if ".. autosummary::" not in block:
            continue
        module = _CURRENTMODULE.search(block)
        assert module is not None, f"an autosummary block of {API_PAGE} has no currentmodule:\n{block}"
        body = block.split(".. autosummary::", 1)[1]
        template = _TEMPLATE.search(body)
        for line in body.splitlines()[1:]:
            entry = line.strip()
            if not entry or entry.startswith(":"):
                continue
            if not line.startswith(" "):  # the directive's indented content ended
                break
            entries.append((f"{module[1]}.{entry.lstrip('~')}", template[1] if template else None))
    return entries


def _resolve(name: str) -> object:
    module, *attrs = name.split(".")
    obj = importlib.import_module(module)
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def _documented(obj: object, template: str | None) -> object | None:
    """What carries the docstring of an API entry, or `None` for a constant.

    Functions and classes carry their own; an instance listed with the settings template is documented with its
    class's. Constants (ints, tuples, dicts, rule presets) cannot have a docstring: the API page shows their ``#:``
    comment instead (see :func:`test_constants_have_doc_comments`).
    """
    if inspect.isclass(obj) or inspect.isroutine(obj) or hasattr(obj, "__wrapped__"):
        return obj
    if template == INSTANCE_TEMPLATE:
        return type(obj)
    return None


def _own_public_methods(cls: type) -> dict[str, object]:
    """Public methods a class defines itself (not properties, not inherited), as functions."""
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if inspect.isfunction(member):
            methods[name] = member
    return methods


def _has_examples(doc: str | None) -> bool:
    """A numpydoc ``Examples`` section with at least one ``>>>`` line."""
    parts = _EXAMPLES.split(inspect.cleandoc(doc or ""), maxsplit=1)
    return len(parts) == 2 and ">>> " in parts[1]


ENTRIES = _api_entries()
DOCUMENTED = {name: _documented(_resolve(name), template) for name, template in ENTRIES}
CASES = [name for name, target in DOCUMENTED.items() if target is not None]
CONSTANTS = [name for name, target in DOCUMENTED.items() if target is None]


def test_api_page_is_parsed():
    assert len(ENTRIES) > 50
    assert {"mixgf.tl.embed", "mixgf.MixGeneformer", "mixgf.model.embed_tokens", "mixgf.settings"} <= set(CASES)
    assert "mixgf.model.FORMAT_VERSION" in CONSTANTS
    assert not _has_examples("Summary.\n\nExamples\n--------\nText only.\n")
    assert _has_examples("Summary.\n\nExamples\n--------\n>>> 1 + 1\n2\n")


def test_constants_have_doc_comments():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in SOURCE.rglob("*.py"))
    for name in CONSTANTS:
        attr = name.rsplit(".", 1)[-1]
        assert re.search(rf"^#: .+\n(?:#:.*\n)*{attr}\b", sources, re.M), (
            f"{name} is listed in {API_PAGE.name} but has no '#:' comment above its assignment to document it."
        )


@pytest.fixture
def _doctest_environment(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    # tempfile.mkdtemp() / TemporaryDirectory() in the examples write under pytest's tmp_path, which pytest cleans
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with mgf.settings.override(progress_bar=False, verbosity="warning"):
        yield
    plt.close("all")


@pytest.mark.usefixtures("_doctest_environment")
@pytest.mark.parametrize("name", CASES)
def test_docstring_examples(name: str):
    target = DOCUMENTED[name]
    assert _has_examples(inspect.getdoc(target)), (
        f"{name}: the docstring has no numpydoc 'Examples' section with a '>>>' line."
    )
    # The user-facing classes of the top-level namespace (mgf.MixGeneformer, mgf.CellClassifier) show every public
    # method with an example too.
    if inspect.isclass(target) and name.count(".") == 1:
        for method_name, method in _own_public_methods(target).items():
            assert _has_examples(inspect.getdoc(method)), (
                f"{name}.{method_name}: the docstring has no 'Examples' section with a '>>>' line."
            )

    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    tests = [t for t in finder.find(target, name, module=inspect.getmodule(target), globs={}) if t.examples]
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    for test in sorted(tests, key=lambda t: t.name):
        report: list[str] = []
        result = runner.run(test, out=report.append, clear_globs=True)
        assert result.failed == 0, f"{test.name} failed:\n" + "".join(report)

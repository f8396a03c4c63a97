"""The package's layers, checked on the source (ast): no import runs back up, and the heavy parts stay out of the way.

Top to bottom: the user API (pp, tl, pl, get, datasets, the model classes, the CLI, the public ``mixgf.model``
namespace) -> engines that know nothing of AnnData -> torch modules and model I/O -> genes and vocabularies -> the
package's base modules (settings, keys, logging, version, file and docstring helpers). See docs/contributing.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mixgf"

BASE = {"mixgf._settings", "mixgf._keys", "mixgf._logging", "mixgf._version", "mixgf._utils"}
LEVELS = {
    **dict.fromkeys(BASE, 0),
    "mixgf.genes": 1,
    "mixgf.module": 2,
    "mixgf.engine": 3,
    **dict.fromkeys(["mixgf.pp", "mixgf.tl", "mixgf.pl", "mixgf.get", "mixgf.datasets", "mixgf._models"], 4),
    "mixgf.model": 4,  # public re-export of the model core
    "mixgf": 5,  # the package's face: re-exports only
    "mixgf.__main__": 5,
    "mixgf.cli": 5,  # the command line is a client of the public face
}
# Inside the user API: what each room may use besides the layers below it.
API_USES = {
    "mixgf.pp": set(),
    "mixgf.get": set(),
    "mixgf.pl": {"mixgf.get"},
    "mixgf.datasets": set(),
    "mixgf._models": {"mixgf.pp"},
    "mixgf.tl": {"mixgf.pp", "mixgf._models", "mixgf.get"},
    "mixgf.model": set(),
}
ROOT_FILES = {"__init__.py", "__main__.py", "_settings.py", "_keys.py", "_logging.py", "_version.py"}
NO_TORCH_AT_IMPORT = ("mixgf.pp", "mixgf.pl", "mixgf.genes", "mixgf.get", "mixgf.datasets", "mixgf.engine._tokenize")
MAX_FILE_LINES = 650
MAX_TOOL_LINES = 120


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    """The layer entry a module belongs to (longest matching prefix of LEVELS)."""
    best = ""
    for key in LEVELS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, f"{module} is in no layer: add its folder to LEVELS in tests/test_layers.py"
    return best


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, imported at import time) for every import in a file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            at_import = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if _is_type_checking(child):
                at_import = False
            if isinstance(child, ast.Import):
                out.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if child.module is None:  # from .. import name: a submodule or a name of the package
                    out.extend((f"{target}.{alias.name}", top) for alias in child.names)
                else:
                    out.append((target, top))
            visit(child, at_import)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return out


FILES = sorted(SRC.rglob("*.py"))
INTERNAL = {_module_name(p) for p in FILES}


def _resolve(target: str) -> str:
    """``mixgf.pp.rank_tokenize`` (a name) -> ``mixgf.pp`` (its module)."""
    while target not in INTERNAL and "." in target:
        target = target.rpartition(".")[0]
    return target


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up(path: Path):
    module = _module_name(path)
    room = _room(module)
    for target, _ in _imports(path):
        if not (target == "mixgf" or target.startswith("mixgf.")):
            continue
        target_room = _room(_resolve(target))
        if target_room == room or LEVELS[target_room] == LEVELS[room] == 0:
            continue
        if LEVELS[room] == 5:
            continue
        assert target_room != "mixgf", f"{module} imports from the package root ({target}); import the module instead"
        if LEVELS[target_room] == 4 and LEVELS[room] == 4:
            assert target_room in API_USES[room], f"{module} ({room}) may not use {target_room}"
            continue
        assert LEVELS[target_room] < LEVELS[room], f"{module} (layer {room}) imports {target} from above it"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_engines_and_modules_know_nothing_of_anndata(path: Path):
    if _room(_module_name(path)) not in ("mixgf.engine", "mixgf.module", "mixgf.genes", "mixgf._utils"):
        return
    for target, _ in _imports(path):
        assert target.split(".")[0] not in ("anndata", "scanpy", "matplotlib"), f"{path.name} imports {target}"


def test_plots_never_run_a_model():
    for path in (SRC / "pl").rglob("*.py"):
        for target, _ in _imports(path):
            room = _room(_resolve(target)) if target.startswith("mixgf") else ""
            assert room not in ("mixgf.engine", "mixgf.module", "mixgf._models", "mixgf.tl"), f"{path.name}: {target}"
            assert target.split(".")[0] != "torch", f"{path.name} imports torch"


def test_no_torch_at_import_time():
    """pp, pl, genes, get and datasets import torch only inside the functions that need it (transitively)."""
    graph = {_module_name(p): [t for t, top in _imports(p) if top] for p in FILES}

    def pulls_torch(module: str, seen: set[str]) -> bool:
        if module in seen:
            return False
        seen.add(module)
        for target in graph.get(module, []):
            if target.split(".")[0] == "torch":
                return True
            if target.startswith("mixgf") and pulls_torch(_resolve(target), seen):
                return True
        return False

    for module in graph:
        if module.startswith(NO_TORCH_AT_IMPORT):
            assert not pulls_torch(module, set()), f"importing {module} imports torch"


def test_package_root_holds_only_its_face():
    files = {p.name for p in SRC.glob("*.py")}
    assert files <= ROOT_FILES, f"move {sorted(files - ROOT_FILES)} into a layer's folder"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_readable(path: Path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_FILE_LINES, f"{path.relative_to(SRC)} has {n} lines; split it (limit {MAX_FILE_LINES})"


def _code_lines(fn: ast.FunctionDef) -> int:
    """Lines of a function body without its docstring."""
    body = (
        fn.body[1:]
        if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant)
        else fn.body
    )
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_tools_are_thin():
    """Every public function in tl reads like scanpy's: validate -> one engine call -> write -> log."""
    import mixgf as mgf

    for name in mgf.tl.__all__:
        fn = getattr(mgf.tl, name)
        path = Path(fn.__code__.co_filename)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn.__name__)
        assert _code_lines(node) <= MAX_TOOL_LINES, f"tl.{name} has {_code_lines(node)} lines of code"

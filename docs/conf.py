"""Sphinx configuration of the mixgf documentation."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from datetime import date
from pathlib import Path

from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))


def _copy_tutorials() -> None:
    """Copy the notebooks of ``../tutorials`` into ``docs/tutorials/`` (git-ignored), where Sphinx can read them.

    The tutorials live outside ``docs/`` so that they are easy to find and open from a clone, and are stored with
    their outputs (rendered as they are, ``nb_execution_mode = "off"``; CI executes them separately). Links from a
    notebook into the docs are written ``../docs/page.md`` so that they work in Jupyter and on GitHub; in the copy
    they become ``../page.md``, their place in the built docs. A copy is rewritten only when its content changed
    (so incremental builds stay incremental), and copies of removed notebooks are deleted.
    """
    source, target = HERE.parent / "tutorials", HERE / "tutorials"
    if not source.is_dir():
        return
    target.mkdir(exist_ok=True)
    wanted = set()
    for nb in sorted(source.glob("*.ipynb")):
        text = nb.read_text(encoding="utf-8").replace("](../docs/", "](../")
        out = target / nb.name
        wanted.add(out.name)
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            out.write_text(text, encoding="utf-8")
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


_copy_tutorials()

project = "mixgf"
author = "mixgf developers"
copyright = f"{date.today().year}, {author}"  # noqa: A001
# Do not import ``importlib.metadata.version`` by name: Sphinx reads a module-level ``version`` as its own
# (string) config value.
release = importlib.metadata.version("mixgf")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
# docs/_templates/autosummary/class.rst lists and documents only a class's own members (not torch.nn.Module's)
templates_path = ["_templates"]
autodoc_member_order = "groupwise"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "braces"
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath"]
# ".rst" must come first: autosummary writes its generated stubs (reStructuredText) with the first suffix
# here that it takes for reStructuredText, and it takes ".md" for one, so with ".md" first the stubs were
# parsed as Markdown and the API pages came out empty.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
# Intersphinx is opt-in: links into other projects' documentation are resolved only when the environment
# variable MIXGF_DOCS_INTERSPHINX=1 is set (for a build that publishes the docs). By default the mapping is
# empty, so the build never touches the network and ``sphinx -W`` passes offline. (Sphinx reports an
# unreachable inventory as a warning without a type, which ``suppress_warnings`` cannot filter, and a timeout
# only makes the failure faster.) References to those projects then render as plain text instead of links.
intersphinx_mapping = {}
if os.environ.get("MIXGF_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }
    intersphinx_timeout = 30

# Every cross-reference must resolve (``-n``), so a broken :func:`...` in a docstring fails ``sphinx -W``.
nitpicky = True
# ... except references into other projects: offline (the default, see above) there is no inventory to resolve
# them against, and even with intersphinx some cannot resolve, because type hints name the defining private
# module (``anndata._core.anndata.AnnData``, ``matplotlib.axes._axes.Axes``) or the project is not mapped.
_EXTERNAL = r"(anndata|numpy|pandas|scipy|torch|matplotlib|scanpy|typing|collections\.abc|pathlib|os)"
nitpick_ignore_regex = [(r"py:.*", _EXTERNAL + r"(\..+)?")]
nitpick_ignore = [
    # ``pathlib.Path`` as a bare string annotation (``dict[str, Path]``) that napoleon cannot evaluate.
    ("py:class", "Path"),
    # The class of ``mixgf.settings`` (return type of ``settings.override``): private, documented as the instance.
    ("py:class", "mixgf._settings.MixgfSettings"),
]

html_theme = "sphinx_book_theme"
html_title = "mixgf"


def _data_doc_comments(app, what, name, obj, options, lines):
    """Document a re-exported constant with its ``#:`` comment instead of its type's docstring.

    autodoc looks for ``#:`` comments only in the module it documents (``mixgf.model``), not in the private
    module that assigns the constant (``mixgf.engine._inference``), and falls back to ``type(obj).__doc__``
    (the docstring of ``int``, ``dict``, ...).
    """
    if what != "data":
        return
    package, _, attr = name.rpartition(".")
    for modname, module in list(sys.modules.items()):
        if modname.startswith(package + ".") and getattr(module, attr, None) is obj:
            try:
                comment = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", attr))
            except PycodeError:
                continue
            if comment:
                lines[:] = list(comment)
                return
    if type(obj).__module__ == "builtins":
        lines[:] = []


_DIRECTIVE_ATTRIBUTE = re.compile(r"^(\s*)\.\. attribute:: (\w+)$")


def _instance_attributes(app, what, name, obj, options, lines):
    """Name the attributes of a documented instance after it: ``mixgf.settings.device``, not ``mixgf.device``.

    ``mixgf.settings`` is documented with its class's docstring, whose "Attributes" section napoleon turns into
    ``.. attribute:: device``. Nested in a ``py:data`` entry, which (unlike a class) sets no prefix, these would be
    registered as ``mixgf.device``, and ``:attr:`mixgf.settings.device``` would not resolve.
    """
    if what != "data":
        return
    short = name.rsplit(".", 1)[-1]
    for i, line in enumerate(lines):
        if m := _DIRECTIVE_ATTRIBUTE.match(line):
            lines[i] = f"{m[1]}.. attribute:: {short}.{m[2]}"


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out the "Alias for field number N" entries of NamedTuple fields.

    The class docstring's "Attributes" section already describes the fields; documenting them twice would
    register each one twice ("duplicate object description").
    """
    if what == "class" and (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    """Connect the docstring fix-ups around napoleon (which runs at the default priority, 500)."""
    app.connect("autodoc-process-docstring", _data_doc_comments, priority=400)
    app.connect("autodoc-process-docstring", _instance_attributes, priority=600)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)

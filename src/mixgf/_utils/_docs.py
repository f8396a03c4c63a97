"""Parameter blocks that several docstrings share, filled in by :func:`doc_params` (as scanpy's ``_doc_params``).

A docstring names a block as ``{doc_show}`` on a line of its own, indented like the parameter names around it; the
block's lines after the first carry the indentation of a function docstring (4 spaces for names, 8 for text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["doc_params"]

F = TypeVar("F", bound=Callable)

SNIPPETS: dict[str, str] = {
    "doc_show": """\
ax
        Axes to draw into.
    show
        Show the plot; `None` follows scanpy's ``settings.autoshow``.
    return_fig
        Return the Figure.""",
    "doc_plot_returns": """\
matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The Axes when not shown, the Figure with ``return_fig=True``, else `None`.""",
    "doc_model": """\
model
        A :class:`mixgf.MixGeneformer`, a model directory, or `None` for the bundled default model.""",
    "doc_tokens_key": """\
tokens_key
        ``obsm`` key of the tokens.""",
    "doc_device": """\
device
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …); `None` uses :attr:`mixgf.settings.device`.""",
    "doc_counts": """\
layer
        AnnData layer with the raw counts, used only when the cells are tokenized on the fly (as in
        :func:`mixgf.pp.rank_tokenize`; e.g. ``"counts"``); `None` reads ``adata.X``.
    use_raw
        Tokenize on the fly from ``adata.raw`` (see :func:`mixgf.pp.rank_tokenize`).""",
    "doc_pool_ids": """\
special_ids
        Token ids excluded from the mean (``<cls>``, ``<eos>``, …).
    pad_token_id
        Padding id, also excluded from the mean.
    cls_id
        With ``method="cls"``, check that every sequence starts with this id.""",
    "doc_copy": """\
copy
        Return a modified copy instead of writing into ``adata``.""",
}


def doc_params(*names: str) -> Callable[[F], F]:
    """Replace ``{name}`` in the decorated object's docstring by the shared block of that name."""
    unknown = set(names) - set(SNIPPETS)
    if unknown:
        msg = f"unknown docstring blocks {sorted(unknown)}; known: {sorted(SNIPPETS)}"
        raise KeyError(msg)

    def decorate(obj: F) -> F:
        doc = obj.__doc__ or ""
        for name in names:
            placeholder = "{" + name + "}"
            if placeholder not in doc:
                msg = f"{obj.__qualname__}'s docstring has no {placeholder}"
                raise ValueError(msg)
            doc = doc.replace(placeholder, SNIPPETS[name])
        obj.__doc__ = doc
        return obj

    return decorate

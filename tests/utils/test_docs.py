import pytest

import mixgf as mgf
from mixgf._utils._docs import SNIPPETS, doc_params


def test_shared_blocks_fill_the_docstrings():
    doc = mgf.pl.perturb_volcano.__doc__
    assert "{doc_" not in doc and SNIPPETS["doc_show"] in doc and SNIPPETS["doc_plot_returns"] in doc
    for fn in (mgf.pl.confusion_matrix, mgf.pl.classify_scores, mgf.pl.perturb_shift):
        assert "{doc_" not in fn.__doc__


def test_unknown_or_missing_block_is_an_error():
    with pytest.raises(KeyError, match="unknown docstring blocks"):
        doc_params("doc_nothing")

    def f():
        """No placeholder here."""

    with pytest.raises(ValueError, match=r"has no \{doc_show\}"):
        doc_params("doc_show")(f)


def test_plot_keys_are_keyword_only():
    import inspect

    for fn in (mgf.pl.perturb_volcano, mgf.pl.perturb_shift, mgf.pl.confusion_matrix, mgf.pl.classify_scores):
        assert inspect.signature(fn).parameters["key"].kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__

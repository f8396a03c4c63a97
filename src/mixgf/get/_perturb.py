"""`mixgf.get.perturb_df`: the results table of :func:`mixgf.tl.perturb`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._keys import PERTURB_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData


def perturb_df(
    adata: AnnData,
    key: str = PERTURB_KEY,
    *,
    genes: Sequence[str] | None = None,
    p_adj_max: float | None = None,
    min_abs_shift: float | None = None,
    min_cells: int = 1,
    sort_by: str = "p_value",
    ascending: bool = True,
) -> pd.DataFrame:
    """The per-gene results of :func:`mixgf.tl.perturb` as a DataFrame, optionally filtered.

    Parameters
    ----------
    adata
        AnnData holding the results.
    key
        ``key_added`` of :func:`mixgf.tl.perturb`.
    genes
        Keep only these genes (labels of the ``gene`` column, e.g. symbols or ``"A+B"`` for a set).
    p_adj_max
        Keep rows with ``p_adj <= p_adj_max``.
    min_abs_shift
        Keep rows with ``|shift_mean| >= min_abs_shift``.
    min_cells
        Keep rows with at least this many perturbed cells (default 1: drop genes expressed in no selected cell).
    sort_by, ascending
        Sort column and order (NaN last).

    Returns
    -------
    pandas.DataFrame
        A copy of the results table.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:300].copy()
    >>> mgf.pp.rank_tokenize(adata, gene_id_key="gene_id", max_len=256)
    >>> mgf.tl.perturb(adata, genes=["CD74", "LYZ", "NKG7"], max_cells=20, n_controls=5)
    >>> df = mgf.get.perturb_df(adata, sort_by="shift_mean", ascending=False)
    >>> sorted(df["gene"]), bool(df["shift_mean"].is_monotonic_decreasing)
    (['CD74', 'LYZ', 'NKG7'], True)
    >>> mgf.get.perturb_df(adata, genes=["LYZ"])[["gene", "n_cells"]].shape
    (1, 2)
    >>> significant = mgf.get.perturb_df(adata, p_adj_max=0.05)  # rows with p_adj <= 0.05
    >>> bool((significant["p_adj"] <= 0.05).all())
    True
    """
    if key not in adata.uns or "results" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] holds no perturbation results; run mgf.tl.perturb(adata, ..., key_added={key!r})."
        raise KeyError(msg)
    df = adata.uns[key]["results"].copy()
    if sort_by not in df.columns:
        msg = f"sort_by={sort_by!r} is not a column of the results ({list(df.columns)})."
        raise KeyError(msg)
    keep = df["n_cells"] >= min_cells
    if genes is not None:
        missing = sorted(set(genes) - set(df["gene"]))
        if missing:
            msg = f"genes {missing} are not in the results of adata.uns[{key!r}]."
            raise KeyError(msg)
        keep &= df["gene"].isin(list(genes))
    if p_adj_max is not None:
        keep &= df["p_adj"] <= p_adj_max
    if min_abs_shift is not None:
        keep &= df["shift_mean"].abs() >= min_abs_shift
    return df[keep].sort_values(sort_by, ascending=ascending, na_position="last")

"""`mixgf.pp.gene_medians`: each gene's non-zero median of normalized counts over a corpus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._settings import settings
from ..engine._tokenize import check_values
from ..genes import map_to_ensembl
from ._input import get_matrix, iter_csr_chunks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

# histogram method: log10 bins over [1e-6, 1e7]; a bin spans 0.1 % in value
_H_LO, _H_HI, _H_BINS = -6.0, 7.0, 30_000


def gene_medians(
    adatas: AnnData | Sequence[AnnData],
    *,
    layer: str | None = None,
    gene_id_key: str | Sequence[str | None] | None = None,
    species: Literal["auto", "human", "mouse"] = "auto",
    normalization: Literal["total_counts", "none"] = "total_counts",
    target_sum: float = 10_000.0,
    method: Literal["exact", "histogram"] = "exact",
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Non-zero median of each gene's normalized counts over a corpus of AnnData objects.

    For every cell, ``x = count / total_counts * target_sum`` (Geneformer's definition; ``total_counts`` over all
    genes of the cell). A gene's median is taken over the cells where it is non-zero, pooled across all inputs.

    Parameters
    ----------
    adatas
        One AnnData or several (in memory or backed), each of one species, with raw counts.
    layer
        Layer with the counts; `None` uses ``X``.
    gene_id_key
        Var column with Ensembl IDs or symbols (`None`: var names); a list gives one per input.
    species
        ``"auto"`` detects each input's species.
    normalization
        ``"total_counts"`` as above, or ``"none"`` for the raw counts.
    target_sum
        Scale after division by the total.
    method
        ``"exact"`` keeps every non-zero value (memory ≈ 12 bytes per non-zero entry); ``"histogram"`` streams
        chunks into per-gene histograms of 30,000 log-spaced bins (memory ≈ 240 kB per gene, relative error of
        the median ≤ 0.1 %) for corpora larger than memory.
    chunk_size
        Cells per chunk; `None` uses :attr:`mixgf.settings.chunk_size`.

    Returns
    -------
    pandas.DataFrame
        DataFrame indexed by Ensembl ID with columns ``median``, ``n_cells`` (cells where the gene is non-zero),
        ``species``; genes never detected are left out.

    Examples
    --------
    >>> import mixgf as mgf
    >>> med = mgf.pp.gene_medians(mgf.datasets.baron_mouse_pancreas())
    >>> bool((med["median"] > 0).all())
    True
    """
    from anndata import AnnData

    if isinstance(adatas, AnnData):
        adatas = [adatas]
    if method not in ("exact", "histogram"):
        msg = f"method must be 'exact' or 'histogram', got {method!r}."
        raise ValueError(msg)
    chunk_size = settings.chunk_size if chunk_size is None else int(chunk_size)
    t0 = logg.info(f"gene medians over {len(adatas)} dataset(s)")
    gene_index: dict[str, int] = {}
    gene_species: list[str] = []
    values: list[np.ndarray] = []
    genes: list[np.ndarray] = []
    hist: dict[int, np.ndarray] = {}
    nz = np.zeros(0, dtype=np.int64)
    keys = list(gene_id_key) if isinstance(gene_id_key, list | tuple) else [gene_id_key] * len(adatas)
    if len(keys) != len(adatas):
        msg = "gene_id_key needs one entry per AnnData."
        raise ValueError(msg)
    for adata, key in zip(adatas, keys):
        names = adata.var_names if key is None else pd.Index(adata.var[key].to_numpy(dtype=object))
        m = map_to_ensembl(names.to_numpy(dtype=object), species)
        col = np.full(adata.n_vars, -1, dtype=np.int64)
        for j, g in enumerate(m.ensembl_ids):
            if g is None:
                continue
            if g not in gene_index:
                gene_index[g] = len(gene_index)
                gene_species.append(m.species)
            col[j] = gene_index[g]
        nz = np.concatenate([nz, np.zeros(len(gene_index) - len(nz), dtype=np.int64)])
        X = get_matrix(adata, layer)
        for _, _, block in iter_csr_chunks(X, chunk_size):
            nonfinite, negative, _, _ = check_values(block.data, check_integer=False)
            if nonfinite >= 0 or negative >= 0:
                msg = "gene_medians needs finite, non-negative counts; the input holds NaN/inf or negative values."
                raise ValueError(msg)
            totals = np.asarray(block.sum(axis=1)).ravel()
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            g = col[block.indices]
            keep = (g >= 0) & (block.data > 0)
            x = block.data[keep].astype(np.float64)
            if normalization == "total_counts":
                x = x / totals[rows[keep]] * target_sum
            gk = g[keep]
            nz += np.bincount(gk, minlength=len(nz))
            if method == "exact":
                values.append(x)
                genes.append(gk)
            else:
                b = np.clip(((np.log10(x) - _H_LO) / (_H_HI - _H_LO) * _H_BINS).astype(np.int64), 0, _H_BINS - 1)
                for gi in np.unique(gk):
                    h = hist.setdefault(int(gi), np.zeros(_H_BINS, dtype=np.int64))
                    np.add.at(h, b[gk == gi], 1)
    ids = np.array(list(gene_index), dtype=object)
    med = np.full(len(ids), np.nan)
    if method == "exact" and values:
        v = np.concatenate(values)
        gg = np.concatenate(genes)
        order = np.lexsort((v, gg))
        v, gg = v[order], gg[order]
        bounds = np.searchsorted(gg, np.arange(len(ids) + 1))
        for i in range(len(ids)):
            a, b = bounds[i], bounds[i + 1]
            if b > a:
                med[i] = np.median(v[a:b])
    elif method == "histogram":
        edges = 10 ** (_H_LO + (_H_HI - _H_LO) * np.arange(_H_BINS + 1) / _H_BINS)
        for i, h in hist.items():
            c = np.cumsum(h)
            k = int(np.searchsorted(c, c[-1] / 2))
            med[i] = np.sqrt(edges[k] * edges[k + 1])
    out = pd.DataFrame({"median": med, "n_cells": nz, "species": gene_species}, index=pd.Index(ids, name="ensembl_id"))
    out = out[out["n_cells"] > 0].sort_index()
    logg.info(f"    medians of {len(out):,} genes", start=t0)
    return out

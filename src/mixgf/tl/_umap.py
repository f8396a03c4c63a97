"""`mixgf.tl.umap`: neighbours + UMAP of the mixgf embedding under mixgf's own keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _logging as logg
from .._keys import EMBEDDING_KEY, NEIGHBORS_KEY, UMAP_KEY
from .._utils._docs import doc_params
from ._utils import prepare_target

if TYPE_CHECKING:
    from anndata import AnnData


@doc_params("doc_copy")
def umap(
    adata: AnnData,
    *,
    use_rep: str = EMBEDDING_KEY,
    n_neighbors: int = 15,
    metric: str = "cosine",
    neighbors_key: str = NEIGHBORS_KEY,
    key_added: str = UMAP_KEY,
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Neighbours graph and UMAP of the cell embedding, through scanpy.

    The user's own ``neighbors`` / ``X_umap`` are never touched: the graph goes to ``neighbors_key`` and the
    coordinates to ``obsm[key_added]``.

    Parameters
    ----------
    adata
        With an embedding from :func:`mixgf.tl.embed`.
    use_rep
        ``obsm`` key of the embedding.
    n_neighbors
        Neighbours per cell.
    metric
        Distance of the neighbours graph.
    neighbors_key
        Where scanpy stores the graph (``uns[neighbors_key]``, ``obsp[neighbors_key + "_distances" | "_connectivities"]``).
    key_added
        ``obsm`` key of the UMAP coordinates (``uns[key_added]`` gets scanpy's UMAP parameters).
    random_state
        Seed of the neighbours search and UMAP.
    {doc_copy}

    Returns
    -------
    anndata.AnnData or None
        `None`, or a copy when ``copy=True``, with ``adata.obsm[key_added]`` (cells × 2) and the neighbours graph.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()[:200].copy()
    >>> mgf.tl.embed(adata)  # tokenizes on the fly
    >>> mgf.tl.umap(adata)
    >>> adata.obsm["X_mixgf_umap"].shape
    (200, 2)
    >>> "X_umap" in adata.obsm, "mixgf_neighbors" in adata.uns  # scanpy's own keys are left alone
    (False, True)
    """
    import numpy as np
    import scanpy as sc

    if use_rep not in adata.obsm:
        msg = f"adata.obsm[{use_rep!r}] not found; run `mgf.tl.embed(adata)` first."
        raise KeyError(msg)
    target = prepare_target(adata, copy=copy)
    rep = np.asarray(target.obsm[use_rep])
    if np.isnan(rep).any():
        bad = target.obs_names[np.isnan(rep).any(axis=1)][:5].tolist()
        msg = (
            f"adata.obsm[{use_rep!r}] has NaN rows (cells without gene tokens, e.g. {bad}); subset them out first, "
            "e.g. `adata = adata[~adata.obs['mixgf_tokens_empty']].copy()`."
        )
        raise ValueError(msg)
    t0 = logg.info(f"neighbours + UMAP of {use_rep!r}")
    sc.pp.neighbors(
        target, n_neighbors=n_neighbors, use_rep=use_rep, metric=metric, key_added=neighbors_key,
        random_state=random_state,
    )  # fmt: skip
    sc.tl.umap(target, neighbors_key=neighbors_key, key_added=key_added, random_state=random_state)
    logg.info(f"    added {key_added!r} (adata.obsm), {neighbors_key!r} (adata.uns, adata.obsp)", start=t0)
    return target if copy else None

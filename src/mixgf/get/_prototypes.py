"""`mixgf.get.prototypes`: the prototypes stored by :func:`mixgf.tl.prototypes` as a `Prototypes` object."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._keys import PROTOTYPES_KEY

if TYPE_CHECKING:
    from anndata import AnnData

    from ..engine.deconvolution import Prototypes


def prototypes(adata: AnnData, key: str = PROTOTYPES_KEY) -> Prototypes:
    """The cell-type prototypes of :func:`mixgf.tl.prototypes` as a :class:`~mixgf.engine.deconvolution.Prototypes`.

    The object holds what a deconvolution needs without the reference cells, and can be saved as a model
    directory (:meth:`~mixgf.engine.deconvolution.Prototypes.save`).

    Parameters
    ----------
    adata
        The reference AnnData.
    key
        ``key_added`` of :func:`mixgf.tl.prototypes`.

    Returns
    -------
    mixgf.engine.deconvolution.Prototypes
        A copy of the prototypes.

    Examples
    --------
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.baron_mouse_pancreas()
    >>> adata = adata[adata.obs["cell_type"].isin(["beta", "ductal", "delta", "endothelial"])].copy()
    >>> mgf.tl.prototypes(adata, groupby="cell_type")
    >>> protos = mgf.get.prototypes(adata)
    >>> protos
    Prototypes(4 mouse cell types x 14,359 genes)
    >>> protos.to_df().loc["Ins1"].idxmax()
    'beta'
    """
    from ..engine.deconvolution import Prototypes

    if key not in adata.varm or key not in adata.uns or "types" not in adata.uns[key]:
        msg = (
            f"adata.varm[{key!r}] holds no prototypes; run `mgf.tl.prototypes(adata, groupby=..., key_added={key!r})`."
        )
        raise KeyError(msg)
    info = adata.uns[key]
    batch_effects = info.get("batch_effects")
    return Prototypes(
        means=np.array(adata.varm[key], dtype=np.float64),
        dispersion=adata.var[f"{key}_dispersion"].to_numpy(dtype=np.float64),
        genes=adata.var_names.tolist(),
        gene_ids=adata.var[f"{key}_gene_id"].astype(str).tolist(),
        types=list(info["types"]),
        species=str(info["species"]),
        n_cells=np.asarray(info["n_cells"]),
        cell_size=np.asarray(info["cell_size"]),
        batch_effects=None if batch_effects is None else np.array(batch_effects, dtype=np.float64),
        batches=[str(b) for b in info.get("batches", [])],
        params={k: v for k, v in dict(info.get("params", {})).items() if v is not None},
    )

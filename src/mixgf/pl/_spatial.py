"""`mixgf.pl.spatial_prediction`: measured and predicted expression side by side on the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._keys import PREDICTED_KEY
from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure


def _image(adata: AnnData, library_id: str | None, img_key: str | None) -> tuple[Any, float, float | None]:
    """The ``uns["spatial"]`` image (scanpy / squidpy convention), its scale factor and spot diameter, or None."""
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        return None, 1.0, None
    if library_id is None:
        if len(spatial) > 1:
            msg = f"adata.uns['spatial'] holds several libraries {list(spatial)}; pass library_id=."
            raise ValueError(msg)
        library_id = next(iter(spatial))
    lib = spatial[library_id]
    images = lib.get("images", {})
    img_key = img_key or ("hires" if "hires" in images else next(iter(images), None))
    if img_key is None:
        return None, 1.0, lib.get("scalefactors", {}).get("spot_diameter_fullres")
    sf = lib.get("scalefactors", {})
    return images[img_key], float(sf.get(f"tissue_{img_key}_scalef", 1.0)), sf.get("spot_diameter_fullres")


def spatial_prediction(
    adata: AnnData,
    genes: Sequence[str],
    *,
    key: str = PREDICTED_KEY,
    layer: str | None = None,
    library_id: str | None = None,
    img_key: str | None = None,
    spatial_key: str = "spatial",
    spot_diameter: float | None = None,
    cmap: str = "viridis",
    panel_size: float = 3.2,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Any] | Figure | None:
    """Measured (left) and predicted (right) expression of genes on the tissue, with each gene's Pearson r.

    The image and its scale factor come from ``adata.uns["spatial"]`` as scanpy / squidpy store them (library,
    ``images[img_key]``, ``scalefactors["tissue_{img_key}_scalef"]`` and ``["spot_diameter_fullres"]``); without
    one the spots are drawn on a blank background. Measured expression is ``log1p`` of counts per 10,000, the scale
    of :func:`mixgf.tl.predict_expression`; both panels of a gene share one colour scale.

    Parameters
    ----------
    adata
        Spots with predictions from :func:`mixgf.tl.predict_expression` and raw counts.
    genes
        Genes to show (one row each); they must be among the predicted genes.
    key
        ``key_added`` of :func:`mixgf.tl.predict_expression`.
    layer
        Layer with the raw counts (`None`: ``X``).
    library_id, img_key
        Which ``uns["spatial"]`` library and image (default: the only library, ``"hires"`` if present).
    spatial_key
        ``obsm`` key of the spot coordinates.
    spot_diameter
        Spot diameter in coordinate units (default: ``spot_diameter_fullres``, else the median spacing of the spots
        over 2).
    cmap
        Colour map.
    panel_size
        Size of a panel in inches.
    show
        Show the plot; `None` follows scanpy's ``settings.autoshow``.
    return_fig
        Return the Figure.

    Returns
    -------
    list of matplotlib.axes.Axes, matplotlib.figure.Figure or None
        The Axes (measured, predicted per gene) when not shown, the Figure with ``return_fig=True``, else `None`.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> import mixgf as mgf
    >>> rng = np.random.default_rng(0)
    >>> grid = np.array([[x, y] for x in range(5) for y in range(5)], dtype=float) * 20 + 10
    >>> adata = ad.AnnData(rng.poisson(5, (25, 3)).astype(np.float32), obsm={"spatial": grid})
    >>> adata.var_names = ["ERBB2", "KRT19", "MGP"]
    >>> pred = np.log1p(1e4 * adata.X / adata.X.sum(1, keepdims=True)) + rng.normal(0, 0.1, (25, 3))
    >>> adata.obsm["mixgf_predicted"] = pd.DataFrame(pred, index=adata.obs_names, columns=adata.var_names)
    >>> axs = mgf.pl.spatial_prediction(adata, ["ERBB2"], show=False)
    >>> axs[1].get_title().startswith("ERBB2 predicted (r = ")
    True
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    if key not in adata.obsm:
        msg = f"adata.obsm[{key!r}] not found; run mgf.tl.predict_expression first (or pass key=)."
        raise KeyError(msg)
    pred = adata.obsm[key]
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in getattr(pred, "columns", ())]
    if missing:
        msg = f"genes {missing} were not predicted; predicted genes include {list(pred.columns[:10])}."
        raise KeyError(msg)
    absent = [g for g in genes if g not in adata.var_names]
    if absent:
        msg = f"genes {absent} are not in adata.var_names, so there is no measurement to compare with."
        raise KeyError(msg)
    X = adata.layers[layer] if layer is not None else adata.X
    X = sp.csr_matrix(X, dtype=np.float64)
    tot = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1e-12)
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    img, scale, diam = _image(adata, library_id, img_key)
    if spot_diameter is not None:
        diam = spot_diameter
    if diam is None:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(coords).query(coords, k=2)
        diam = float(np.median(d[:, 1])) / 2
    xy = coords * scale
    radius = float(diam) * scale / 2
    fig, axs = plt.subplots(
        len(genes), 2, figsize=(2 * panel_size + 1, panel_size * len(genes)), squeeze=False, layout="constrained"
    )
    for row, g in zip(axs, genes):
        meas = np.log1p(1e4 * np.asarray(X[:, adata.var_names.get_loc(g)].todense()).ravel() / tot)
        p = np.asarray(pred[g], dtype=np.float64)
        r = np.corrcoef(meas, p)[0, 1] if meas.std() > 0 and p.std() > 0 else np.nan
        for ax, values, title in ((row[0], meas, f"{g} measured"), (row[1], p, f"{g} predicted (r = {r:.2f})")):
            if img is not None:
                ax.imshow(np.asarray(img))
            coll = PatchCollection([Circle((x, y), radius) for x, y in xy], cmap=cmap, linewidth=0)
            coll.set_array(values)
            coll.set_clim(min(meas.min(), p.min()), max(meas.max(), p.max()))
            ax.add_collection(coll)
            pad = 2 * radius
            ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
            ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)  # rows grow downwards, as in the image
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
        fig.colorbar(coll, ax=list(row), shrink=0.8, label="log1p counts / 10k")
    return finish(fig, list(axs.ravel()), show=show, return_fig=return_fig)

"""`mixgf.tl.image_features`, `train_histology_model`, `predict_expression`: expression from H&E histology."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _logging as logg
from .._keys import IMAGE_FEATURES_KEY, PREDICTED_KEY
from .._utils._docs import doc_params
from .._version import __version__
from ..engine.histology import (
    HistologyModel,
    SpotImage,
    channel_stats,
    module_features,
    spot_clusters,
    stain_normalize,
    summary_feature_names,
    summary_features,
    train_composition,
    train_retrieval,
)
from ..engine.histology._model import zscore
from ._deconvolve import _read_checked
from ._utils import prepare_target

if TYPE_CHECKING:
    from anndata import AnnData

TARGET_SUM = 1e4
_N_HEG, _N_HVG = 50, 250
_DECONV_ITER = 60  # L-BFGS iterations of the deconvolution that gives the composition targets


def _spot_image(
    adata: AnnData, image: Any, scale_factor: float | None, library_id: str | None, img_key: str | None
) -> tuple[SpotImage, str, float | None]:
    """The image of the spots, a description of it, and the spot diameter scanpy's ``uns["spatial"]`` records."""
    if image is not None:
        desc = str(image) if isinstance(image, str | Path) else "array"
        return SpotImage(image, scale=1.0 if scale_factor is None else float(scale_factor)), desc, None
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        msg = (
            "no image: pass image= (a file path or an array) with scale_factor= (image pixels per obsm['spatial'] "
            "unit), or store it the scanpy way in adata.uns['spatial'][library_id]['images']."
        )
        raise ValueError(msg)
    if library_id is None:
        if len(spatial) > 1:
            msg = f"adata.uns['spatial'] holds several libraries {list(spatial)}; pass library_id=."
            raise ValueError(msg)
        library_id = next(iter(spatial))
    lib = spatial[library_id]
    images = lib.get("images", {})
    img_key = img_key or ("hires" if "hires" in images else next(iter(images), None))
    if img_key not in images:
        msg = f"adata.uns['spatial'][{library_id!r}]['images'] has no {img_key!r} image; it has {list(images)}."
        raise KeyError(msg)
    sf = lib.get("scalefactors", {})
    scale = sf.get(f"tissue_{img_key}_scalef", 1.0) if scale_factor is None else scale_factor
    return (
        SpotImage(images[img_key], scale=float(scale)),
        f"uns:{library_id}:{img_key}",
        sf.get("spot_diameter_fullres"),
    )


def _cut_patches(adata: AnnData, geometry: dict[str, Any], image: Any = None) -> np.ndarray:
    """Patches of the spots of ``adata`` with the geometry recorded by :func:`image_features`."""
    src = geometry["image"]
    if image is None and src != "array" and not src.startswith("uns:"):
        image = src
    if image is None and src == "array":
        msg = "the image features were computed from an array; pass the same image again (image= / images=)."
        raise ValueError(msg)
    lib, key = src.split(":")[1:] if src.startswith("uns:") and image is None else (None, None)
    img, _, _ = _spot_image(adata, image, geometry["scale_factor"], lib, key)
    coords = np.asarray(adata.obsm[geometry["spatial_key"]], dtype=np.float64)
    side = geometry["context"] * geometry["spot_diameter"]
    return img.patches(coords, side=side, patch_px=geometry["patch_px"], names=adata.obs_names)


@doc_params("doc_device", "doc_copy")
def image_features(
    adata: AnnData,
    *,
    image: Any = None,
    scale_factor: float | None = None,
    spot_diameter: float | None = None,
    method: Literal["summary", "cnn"] | Callable = "summary",
    context: float = 1.5,
    patch_px: int = 64,
    model: HistologyModel | None = None,
    weights: str | Path | None = None,
    library_id: str | None = None,
    img_key: str | None = None,
    spatial_key: str = "spatial",
    batch_size: int = 64,
    device: Any = None,
    key_added: str = IMAGE_FEATURES_KEY,
    copy: bool = False,
) -> AnnData | None:
    """One feature vector per spot from the H&E patch around it.

    A square patch of ``context`` spot diameters is cut around every spot centre (``obsm[spatial_key]``) and
    resized to ``patch_px`` pixels; large JPEGs are decoded at a reduced scale and nothing is held at full
    resolution per spot. A spot outside the image is an error that names it.

    Parameters
    ----------
    adata
        Spots with coordinates in ``obsm[spatial_key]`` (x = column, y = row).
    image
        A file path or an array (height x width x channels); `None`: the scanpy / squidpy image in
        ``adata.uns["spatial"][library_id]["images"][img_key]`` with its ``tissue_{img_key}_scalef``.
    scale_factor
        Image pixels per coordinate unit (default 1, or the scalefactor stored with the ``uns["spatial"]`` image).
    spot_diameter
        Spot diameter in coordinate units; `None`: ``spot_diameter_fullres`` of ``uns["spatial"]``.
    method
        ``"summary"``: stain, colour and texture statistics (scikit-image;
        :func:`mixgf.engine.histology.summary_features`). ``"cnn"``: the image branch of a trained retrieval
        ``model`` (its CNN's pooled features). A torch ``nn.Module`` (e.g. a torchvision or timm model whose
        weights you have locally): its output on ImageNet-normalised patches, after loading ``weights`` into it
        if given. Any other callable: ``method(patches)`` on uint8 patches (spots x h x w x 3).
    context
        Patch side in spot diameters.
    patch_px
        Patch side in pixels after resizing (224 for most ImageNet encoders).
    model
        Trained retrieval model, for ``method="cnn"``.
    weights
        A local safetensors file of weights for a module passed as ``method`` (loaded with ``strict=True``).
    library_id, img_key
        Which ``uns["spatial"]`` library and image (default: the only library, ``"hires"`` if present).
    spatial_key
        ``obsm`` key of the spot coordinates.
    batch_size
        Patches per forward pass of an encoder.
    {doc_device}
    key_added
        ``obsm`` key of the features; ``uns[key_added]`` holds their names and how the patches were cut.
    {doc_copy}

    Returns
    -------
    anndata.AnnData or None
        ``adata`` (a copy) when ``copy=True``; otherwise `None`, with ``obsm[key_added]`` and ``uns[key_added]`` set.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> rng = np.random.default_rng(0)
    >>> img = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    >>> adata = ad.AnnData(np.ones((4, 2)), obsm={"spatial": np.array([[50, 50], [150, 50], [50, 150], [150, 150.0]])})
    >>> mgf.tl.image_features(adata, image=img, spot_diameter=40, patch_px=32)
    >>> adata.obsm["X_image"].shape
    (4, 77)
    """
    if spatial_key not in adata.obsm:
        msg = f"adata.obsm has no {spatial_key!r} (spot centres x, y); pass spatial_key= or add the coordinates."
        raise KeyError(msg)
    img, desc, uns_diam = _spot_image(adata, image, scale_factor, library_id, img_key)
    diam = spot_diameter if spot_diameter is not None else uns_diam
    if diam is None or not float(diam) > 0:
        msg = "spot_diameter is needed (in obsm['spatial'] units), or spot_diameter_fullres in uns['spatial']."
        raise ValueError(msg)
    geometry = {"image": desc, "scale_factor": img.scale, "spot_diameter": float(diam), "context": float(context),
                "patch_px": int(patch_px), "spatial_key": spatial_key}  # fmt: skip
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    t0 = logg.info(f"cutting {adata.n_obs:,} patches of {context} spot diameters from a {img.size} px image")
    patches = img.patches(coords, side=context * float(diam), patch_px=patch_px, names=adata.obs_names)
    name = method if isinstance(method, str) else type(method).__name__
    from ..engine._device import resolve_device

    if method == "summary":
        feats, names = summary_features(patches), summary_feature_names()
    elif method == "cnn":
        if model is None or not model.uses_patches:
            msg = "method='cnn' needs model= a retrieval HistologyModel trained with use_patches=True."
            raise ValueError(msg)
        feats = model.image_embedding(patches, batch_size=batch_size, device=resolve_device(device))
        names = [f"cnn_{i}" for i in range(feats.shape[1])]
    elif callable(method):
        feats = module_features(method, patches, weights=weights, batch_size=batch_size, device=resolve_device(device))
        names = [f"{name}_{i}" for i in range(feats.shape[1])]
    else:
        msg = f"method must be 'summary', 'cnn', a torch module or a callable; got {method!r}."
        raise ValueError(msg)
    target = prepare_target(adata, copy=copy)
    target.obsm[key_added] = np.asarray(feats, dtype=np.float32)
    target.uns[key_added] = {
        "feature_names": names,
        "params": {**geometry, "method": name, "mixgf_version": __version__},
    }
    logg.info(f"    added {key_added!r} (adata.obsm, {feats.shape[1]} features), {key_added!r} (adata.uns)", start=t0)
    return target if copy else None


def _lognorm(X: sp.csr_matrix, totals: np.ndarray) -> sp.csr_matrix:
    """``log1p`` of counts per ``TARGET_SUM`` (rows scaled by their totals over all genes)."""
    Y = sp.diags(TARGET_SUM / np.maximum(totals, 1e-12)) @ X
    return sp.csr_matrix(Y).log1p()


def _positions(coords: np.ndarray) -> np.ndarray:
    """Integer grid positions of spots: coordinates over the median nearest-neighbour spacing, from 0."""
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.float64)
    if len(coords) < 2:
        return np.zeros((len(coords), 2), dtype=np.int64)
    d, _ = cKDTree(coords).query(coords, k=2)
    spacing = float(np.median(d[:, 1])) or 1.0
    return np.rint((coords - coords.min(axis=0)) / spacing).astype(np.int64)


def select_genes(lognorm: sp.csr_matrix, var_names: Sequence[str], *, n_heg: int = _N_HEG,
                 n_hvg: int = _N_HVG) -> tuple[list[str], list[str], list[str]]:  # fmt: skip
    """Genes to predict: the most variable (scanpy's ``seurat`` flavour) and most expressed training genes.

    Returns the union (variable genes first), the highly expressed and the highly variable genes.
    """
    import anndata as ad
    import scanpy as sc

    names = np.asarray(var_names, dtype=object)
    mean = np.asarray(lognorm.mean(axis=0)).ravel()
    heg = names[np.argsort(-mean, kind="stable")[:n_heg]].tolist()
    tmp = ad.AnnData(lognorm, var=pd.DataFrame(index=pd.Index(names.astype(str))))
    sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_hvg)
    disp = tmp.var["dispersions_norm"].fillna(-np.inf).to_numpy()
    hvg = names[np.argsort(-disp, kind="stable")[:n_hvg]].tolist()
    return list(dict.fromkeys(hvg + heg)), heg, hvg


def _gather(adatas: Sequence[AnnData], layer: str | None, use_rep: str | None, use_patches: bool,
            images: Sequence[Any] | None, per_section: bool, spot_rep: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Counts, features, patches, grid positions and spot representations of the training spots (shared genes)."""
    common = adatas[0].var_names
    for a in adatas[1:]:
        common = common.intersection(a.var_names, sort=False)
    if len(common) == 0:
        msg = "the training AnnDatas share no var_names; use the same gene names in all of them."
        raise ValueError(msg)
    counts, totals, feats, patches, pos, section, reps = [], [], [], [], [], [], []
    for i, a in enumerate(adatas):
        if spot_rep is not None:
            if spot_rep not in a.obsm:
                msg = (f"training input {i} has no obsm[{spot_rep!r}]; tokenize and embed its spots first "
                       "(mgf.pp.rank_tokenize, mgf.tl.embed) or pass spot_rep=None.")  # fmt: skip
                raise KeyError(msg)
            r = np.asarray(a.obsm[spot_rep], dtype=np.float64)
            if r.ndim != 2 or len(r) != a.n_obs or not np.isfinite(r).all():
                msg = f"obsm[{spot_rep!r}] of training input {i} must be a finite spots x dimensions matrix."
                raise ValueError(msg)
            reps.append(zscore(r) if per_section else r)
        X = _read_checked(a, layer, counts="raw", what=f"the count matrix of training input {i}")
        counts.append(X[:, a.var_names.get_indexer(common)])
        totals.append(np.asarray(X.sum(axis=1)).ravel())
        if use_rep is not None:
            if use_rep not in a.obsm:
                msg = f"training input {i} has no obsm[{use_rep!r}]; run mgf.tl.image_features on it first."
                raise KeyError(msg)
            f = np.asarray(a.obsm[use_rep], dtype=np.float64)
            feats.append(zscore(f) if per_section else f)
        geometry = a.uns.get(use_rep or IMAGE_FEATURES_KEY, {}).get("params")
        if use_patches:
            if geometry is None:
                msg = f"training input {i}: run mgf.tl.image_features first (it records how patches are cut)."
                raise KeyError(msg)
            patches.append(_cut_patches(a, geometry, None if images is None else images[i]))
        pos.append(_positions(a.obsm[geometry["spatial_key"] if geometry else "spatial"]))
        section.append(np.full(a.n_obs, i))
    stain = None
    if patches and per_section:  # every section's patches matched to the mean colour statistics of all of them
        stats = [channel_stats(p) for p in patches]
        stain = (np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0))
        patches = [stain_normalize(p, *stain) for p in patches]
    return {"counts": sp.vstack(counts, format="csr"), "totals": np.concatenate(totals), "genes": common,
            "stain": stain, "geometry": geometry,
            "features": np.vstack(feats) if feats else None, "patches": np.concatenate(patches) if patches else None,
            "positions": np.vstack(pos), "section": np.concatenate(section),
            "spot_rep": np.vstack(reps) if reps else None}  # fmt: skip


def train_histology_model(
    adatas: AnnData | Sequence[AnnData],
    *,
    method: Literal["retrieval", "prototypes"] = "retrieval",
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    use_rep: str | None = IMAGE_FEATURES_KEY,
    use_patches: bool = True,
    images: Sequence[Any] | None = None,
    spot_rep: str | None = None,
    spot_expression: bool = True,
    standardize: Literal["section", "all"] = "section",
    n_prototypes: int = 8,
    groupby: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    temperature: float = 0.1,
    seed: int = 0,
    device: Any = None,
) -> HistologyModel:
    """Train a model that predicts spot expression from H&E patches (one or more sections with raw counts).

    ``method="retrieval"`` (mclSTExp): an image encoder (a small CNN on the patches and / or an MLP head on the
    patch features ``obsm[use_rep]``) and a spot encoder (the spots' log-normalised expression plus learned x / y
    grid-position embeddings through two pre-norm attention blocks) are aligned by a CLIP loss; prediction averages
    the measured expression of the ``k`` training spots whose keys are nearest to a query patch.
    ``method="prototypes"`` (CPNN): prototypes are the NB mean expression of clusters of the training spots
    (k-means, or the ``groupby`` labels), the spots' compositions come from
    :func:`mixgf.engine.deconvolution.fit_deconvolution`, and an MLP on the patch features learns the composition under the deconvolution
    observation model (gene sensitivity, ambient term, NB likelihood, composition and prototype-drift penalties).
    See :doc:`/histology`.

    Parameters
    ----------
    adatas
        Training sections: raw counts, coordinates and (for ``use_rep``) :func:`image_features`.
    method
        ``"retrieval"`` or ``"prototypes"``.
    genes
        Genes to predict; `None`: the 250 most variable and 50 most expressed genes of the training spots.
    layer
        Layer holding the raw counts (`None`: ``X``).
    use_rep
        ``obsm`` key of patch features (`None`: none; retrieval then needs ``use_patches``).
    use_patches
        Retrieval only: train the small CNN on the patches (cut again as :func:`image_features` recorded).
    images
        One image per input, when the features were computed from arrays (not needed for paths / ``uns``).
    spot_rep
        Retrieval only: ``obsm`` key of a representation of the training spots given to the spot encoder with their
        expression, e.g. ``"X_mixgf"`` after :func:`mixgf.pp.rank_tokenize` and :func:`mixgf.tl.embed` on the spots
        (mixgf's transformer as the spot encoder's first stage); standardised like the patch features. Only the
        training spots need it: a query is embedded from its image alone.
    spot_expression
        Retrieval only: give the spots' expression to the spot encoder (`False`: ``spot_rep`` alone). The expression
        averaged for a prediction is always the measured one.
    standardize
        ``"section"``: z-score the features of every section over its own spots and match the colour statistics of
        every section's patches to the training sections' mean (a Reinhard-style stain normalisation), in training
        and prediction alike; this removes staining and scanning differences between sections (Pearson r within a
        section does not depend on a section-wide offset). ``"all"``: standardise with the pooled training spots.
    n_prototypes
        Clusters of training spots (prototypes method, without ``groupby``).
    groupby
        ``obs`` column with labels to use as prototypes instead of clusters (e.g. pathology annotations).
    epochs, batch_size
        Training schedule (default 30 epochs / 128 spots for retrieval, 200 / 256 for prototypes).
    lr
        Adam learning rate.
    temperature
        CLIP softmax temperature (retrieval).
    seed
        Seed of clustering, initialisation and batches.
    device
        Torch device (`None`: :attr:`mixgf.settings.device`).

    Returns
    -------
    mixgf.engine.histology.HistologyModel
        The trained model (with the training spots as references for retrieval).

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import mixgf as mgf
    >>> rng = np.random.default_rng(0)
    >>> grid = np.array([[x, y] for x in range(6) for y in range(6)], dtype=float) * 40 + 30
    >>> adata = ad.AnnData(sp.csr_matrix(rng.poisson(3, (36, 20)).astype(np.float32)), obsm={"spatial": grid})
    >>> adata.var_names = [f"g{i}" for i in range(20)]
    >>> img = rng.integers(0, 255, (260, 260, 3), dtype=np.uint8)
    >>> mgf.tl.image_features(adata, image=img, spot_diameter=20, patch_px=16)
    >>> model = mgf.tl.train_histology_model(adata, method="prototypes", n_prototypes=2, epochs=2)
    >>> model.method, len(model.genes)
    ('prototypes', 20)
    """
    from ..engine._device import resolve_device

    adatas = [adatas] if not isinstance(adatas, Sequence) else list(adatas)
    if method not in ("retrieval", "prototypes"):
        msg = f"method must be 'retrieval' or 'prototypes'; got {method!r}."
        raise ValueError(msg)
    use_patches = use_patches and method == "retrieval"
    if use_rep is None and not use_patches:
        msg = "nothing to learn from: pass use_rep= (patch features) or, for retrieval, use_patches=True."
        raise ValueError(msg)
    if spot_rep is not None and method != "retrieval":
        msg = "spot_rep= feeds the retrieval spot encoder; the prototypes method has none (pass spot_rep=None)."
        raise ValueError(msg)
    if not spot_expression and spot_rep is None:
        msg = "spot_expression=False leaves the spot encoder no input; pass spot_rep= (e.g. 'X_mixgf')."
        raise ValueError(msg)
    if standardize not in ("section", "all"):
        msg = f"standardize must be 'section' or 'all'; got {standardize!r}."
        raise ValueError(msg)
    data = _gather(adatas, layer, use_rep, use_patches, images, standardize == "section", spot_rep)
    lognorm = _lognorm(data["counts"], data["totals"])
    heg, hvg = [], []
    if genes is None:
        genes, heg, hvg = select_genes(lognorm, data["genes"])
    missing = [g for g in genes if g not in data["genes"]]
    if missing:
        msg = f"{len(missing)} genes are not in every training input, e.g. {missing[:5]}; pass shared genes."
        raise ValueError(msg)
    gidx = data["genes"].get_indexer(list(genes))
    feats, fmean, fstd = data["features"], None, None
    if feats is not None:
        fmean, fstd = feats.mean(axis=0), feats.std(axis=0)
        fstd = np.where(fstd > 0, fstd, 1.0)
        feats = ((feats - fmean) / fstd).astype(np.float32)
    dev = resolve_device(device)
    t0 = logg.info(f"training a {method} histology model on {len(data['section']):,} spots of {len(adatas)} "
                   f"section(s), {len(genes)} genes, on {dev}")  # fmt: skip
    if method == "retrieval":
        config, weights, history = _fit_retrieval(data, lognorm, gidx, feats, epochs, batch_size, lr,
                                                  temperature, seed, dev, spot_expression)  # fmt: skip
    else:
        config, weights, history = _fit_prototypes(data, lognorm, gidx, feats, n_prototypes, groupby, adatas,
                                                   epochs, batch_size, lr, seed, dev)  # fmt: skip
    geometry = data["geometry"] or {}
    stain = data["stain"]
    config |= {"standardize": standardize, "stain_mean": None if stain is None else stain[0].tolist(),
               "stain_std": None if stain is None else stain[1].tolist()}  # fmt: skip
    config |= {"feature_source": use_rep or "", "feature_mean": [] if fmean is None else fmean.tolist(),
               "feature_std": [] if fstd is None else fstd.tolist(), "target_sum": TARGET_SUM,
               "context": geometry.get("context"), "patch_px": geometry.get("patch_px")}  # fmt: skip
    params = {"method": method, "use_rep": use_rep or "", "use_patches": use_patches, "layer": layer or "",
              "spot_rep": spot_rep or "", "spot_expression": spot_expression, "n_train_spots": len(data["section"]),
              "n_sections": len(adatas), "highly_expressed": heg, "highly_variable": hvg, "seed": seed, "lr": lr,
              "device": str(dev), "mixgf_version": __version__}  # fmt: skip
    model = HistologyModel(method, list(map(str, genes)), config, weights, params=params, history=history)
    logg.info(f"    trained {model!r} in {history['train_seconds']:.1f} s", start=t0)
    return model


def _fit_retrieval(data: dict[str, Any], lognorm: sp.csr_matrix, gidx: np.ndarray, feats: np.ndarray | None,
                   epochs: int | None, batch_size: int | None, lr: float, temperature: float, seed: int,
                   dev: Any, spot_expression: bool,
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:  # fmt: skip
    from ..engine.histology import spot_keys

    expr = np.asarray(lognorm[:, gidx].todense(), dtype=np.float32)
    spot_in = [expr] if spot_expression else []
    if data["spot_rep"] is not None:  # standardised over the pooled spots (already per section by default)
        spot_in.append(zscore(data["spot_rep"]).astype(np.float32))
    spot_in = np.hstack(spot_in)
    config, weights, history = train_retrieval(
        spot_in, data["positions"], patches=data["patches"], features=feats, temperature=temperature,
        epochs=30 if epochs is None else epochs, batch_size=128 if batch_size is None else batch_size, lr=lr,
        seed=seed, device=dev,
    )  # fmt: skip
    weights["ref_keys"] = spot_keys(config, weights, spot_in, data["positions"], device=dev)
    weights["ref_expression"] = expr
    return config, weights, history


def _fit_prototypes(data: dict[str, Any], lognorm: sp.csr_matrix, gidx: np.ndarray, feats: np.ndarray | None,
                    n_prototypes: int, groupby: str | None, adatas: list[AnnData], epochs: int | None,
                    batch_size: int | None, lr: float, seed: int,
                    dev: Any) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:  # fmt: skip
    from ..engine.deconvolution import fit_deconvolution, fit_prototypes

    Y = data["counts"][:, gidx]
    keep = np.asarray(Y.sum(axis=1)).ravel() > 0  # spots without counts on these genes say nothing
    codes = np.zeros(len(keep), dtype=np.int64)
    if groupby is not None:
        labels = np.concatenate([a.obs[groupby].astype(str).to_numpy() for a in adatas])
        types, codes[keep] = np.unique(labels[keep], return_inverse=True)
    else:
        codes[keep] = spot_clusters(np.asarray(lognorm[np.flatnonzero(keep)][:, gidx].todense()), n_prototypes,
                                    seed=seed)  # fmt: skip
        types = np.array([f"cluster_{i}" for i in range(codes[keep].max() + 1)])
    if len(types) < 2:
        msg = "the prototypes method needs at least 2 prototypes; pass more n_prototypes or a groupby with 2+ labels."
        raise ValueError(msg)
    n_sec = int(data["section"].max()) + 1
    protos = fit_prototypes(Y[keep], codes[keep], len(types), batches=data["section"][keep], n_batches=n_sec)
    dense = np.asarray(Y[keep].todense())
    dec = fit_deconvolution(dense, protos.means, max_iter=_DECONV_ITER, seed=seed, device=dev)
    config, weights, history = train_composition(
        feats[keep], dense, protos.means, dec.fractions, alpha=dec.alpha, beta=dec.beta, theta=dec.theta,
        epochs=200 if epochs is None else epochs, batch_size=256 if batch_size is None else batch_size, lr=lr,
        seed=seed, device=dev,
    )  # fmt: skip
    frac = float(np.mean(dense.sum(axis=1) / data["totals"][keep]))
    config |= {"types": types.tolist(), "count_fraction": frac, "deconvolution_r": float(np.nanmean(dec.pearson))}
    return config, weights, history


@doc_params("doc_device", "doc_copy")
def predict_expression(
    adata: AnnData,
    model: HistologyModel | str | Path,
    *,
    k: int = 200,
    image: Any = None,
    device: Any = None,
    key_added: str = PREDICTED_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Predict the log-normalised expression of spots from their H&E patches with a trained model.

    The spots need the same patch features as the training sections (``obsm[use_rep]`` from
    :func:`image_features` with the same method) and, for a model with a CNN branch, an image to cut patches
    from (recorded by :func:`image_features`, or ``image``).

    Parameters
    ----------
    adata
        Spots of a section the model has not seen.
    model
        A :class:`~mixgf.engine.histology.HistologyModel` or the directory it was saved to.
    k
        Reference spots averaged per query (retrieval; mclSTExp used 200).
    image
        The section's image, when the features were computed from an array.
    {doc_device}
    key_added
        ``obsm`` key of the predictions: a DataFrame spots x genes of ``log1p`` counts per 10,000; the prototypes
        method also writes the composition to ``obsm[key_added + "_composition"]``.
    {doc_copy}

    Returns
    -------
    anndata.AnnData or None
        ``adata`` (a copy) when ``copy=True``; otherwise `None`, with ``obsm[key_added]`` and ``uns[key_added]`` set.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import mixgf as mgf
    >>> rng = np.random.default_rng(0)
    >>> grid = np.array([[x, y] for x in range(6) for y in range(6)], dtype=float) * 40 + 30
    >>> adata = ad.AnnData(sp.csr_matrix(rng.poisson(3, (36, 20)).astype(np.float32)), obsm={"spatial": grid})
    >>> adata.var_names = [f"g{i}" for i in range(20)]
    >>> img = rng.integers(0, 255, (260, 260, 3), dtype=np.uint8)
    >>> mgf.tl.image_features(adata, image=img, spot_diameter=20, patch_px=16)
    >>> model = mgf.tl.train_histology_model(adata, use_patches=False, epochs=2)
    >>> mgf.tl.predict_expression(adata, model, k=5)
    >>> adata.obsm["mixgf_predicted"].shape
    (36, 20)
    """
    from ..engine._device import resolve_device

    if not isinstance(model, HistologyModel):
        model = HistologyModel.load(model)
    dev = resolve_device(device)
    rep = model.params.get("use_rep") or model.config.get("feature_source") or None
    feats = None
    if model.uses_features:
        if rep not in adata.obsm:
            msg = f"the model needs obsm[{rep!r}]: run mgf.tl.image_features with the training sections' method."
            raise KeyError(msg)
        feats = np.asarray(adata.obsm[rep], dtype=np.float64)
    patches = None
    if model.uses_patches:
        geometry = adata.uns.get(rep or IMAGE_FEATURES_KEY, {}).get("params")
        if geometry is None:
            msg = "this model cuts patches: run mgf.tl.image_features on adata first (it records the image)."
            raise KeyError(msg)
        geometry = {**geometry, "context": model.config["context"], "patch_px": model.config["patch_px"]}
        patches = _cut_patches(adata, geometry, image)
    t0 = logg.info(f"predicting {len(model.genes)} genes for {adata.n_obs:,} spots with {model!r} on {dev}")
    pred = model.predict(patches=patches, features=feats, k=k, device=dev)
    target = prepare_target(adata, copy=copy)
    target.obsm[key_added] = pd.DataFrame(pred.astype(np.float32), index=target.obs_names.copy(), columns=model.genes)
    added = f"{key_added!r}"
    if model.method == "prototypes":
        comp, _ = model.composition(model.standardize(feats), device=dev)
        target.obsm[f"{key_added}_composition"] = pd.DataFrame(comp, index=target.obs_names.copy(),
                                                               columns=model.config["types"])  # fmt: skip
        added += f", {key_added + '_composition'!r}"
    target.uns[key_added] = {"genes": list(model.genes), "params": {
        "method": model.method, "k": k, "use_rep": rep or "", "device": str(dev), "model": repr(model),
        "model_params": {key: v for key, v in model.params.items() if key not in ("highly_expressed", "highly_variable")},
        "mixgf_version": __version__}}  # fmt: skip
    logg.info(f"    added {added} (adata.obsm), {key_added!r} (adata.uns)", start=t0)
    return target if copy else None

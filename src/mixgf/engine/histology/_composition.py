"""CPNN-style prototype composition: image features -> composition (MLP + softmax) -> expression.

The expression model is the deconvolution engine's observation model (:func:`mixgf.engine.deconvolution.
mixture_mean` and :func:`mixgf.engine.deconvolution.nb_nll`): ``y_sg ~ NB(L_s * r_sg / sum_g r_sg, phi_g)`` with
``r_sg = exp(alpha_g) * sum_k p_sk * exp(T_gk) + exp(beta_g) * mean_k exp(T_gk)``. Here the composition ``p_s`` is
predicted from the spot's image features by an MLP, the prototypes ``exp(T)`` start from the NB prototypes of the
training spots' clusters and may drift, and the loss is CPNN's: NB negative log-likelihood plus
``prop_weight * MSE(p, p_deconvolved)`` plus ``drift_weight * MSE(softmax_g T, softmax_g T0)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

__all__ = ["build_composition_net", "composition_predict", "spot_clusters", "train_composition"]


def build_composition_net(config: dict[str, Any]) -> Any:
    """The MLP (features -> composition logits) of a composition model's config (fresh weights)."""
    from torch import nn

    dims = [config["n_features"], *config["hidden"]]
    layers: list[nn.Module] = []
    for a, b in pairwise(dims):
        layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(config["dropout"])]
    layers.append(nn.Linear(dims[-1], config["n_types"]))
    return nn.Sequential(*layers)


def train_composition(
    features: np.ndarray,
    counts: np.ndarray,
    prototypes: np.ndarray,
    fractions: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    theta: np.ndarray | None = None,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.1,
    prop_weight: float = 1e3,
    drift_weight: float = 1e3,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: Any = "cpu",
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Fit the composition MLP and the observation model's gene parameters; returns (config, weights, history).

    Parameters
    ----------
    features
        Standardised image features of the training spots (spots x f).
    counts
        Their raw counts over the modelled genes (spots x genes).
    prototypes
        Starting prototypes (genes x types), expected counts per spot of each type.
    fractions
        Target composition per spot (spots x types), e.g. the deconvolution of the training spots.
    alpha, beta, theta
        Starting log gene sensitivity, log ambient level and inverse dispersion per gene (from the deconvolution);
        `None`: 0, ``log 1e-3`` and 10.
    hidden, dropout
        MLP hidden sizes and dropout.
    prop_weight, drift_weight
        Weights of the composition and prototype-drift penalties (CPNN's 1e3 each).
    epochs, batch_size, lr, weight_decay
        Adam schedule.
    seed
        Torch seed.
    device
        Torch device.

    Returns
    -------
    tuple
        Config, weights (``mlp.*`` plus ``log_T``, ``log_T0``, ``log_alpha``, ``log_beta``, ``log_phi``), history.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import train_composition
    >>> rng = np.random.default_rng(0)
    >>> M = np.array([[20.0, 1.0], [1.0, 10.0], [5.0, 5.0]])
    >>> P = rng.dirichlet([1, 1], 50)
    >>> Y = rng.poisson(P @ M.T * 10)
    >>> cfg, w, hist = train_composition(P, Y, M, P, epochs=3)
    >>> w["log_T"].shape, cfg["n_types"]
    ((3, 2), 2)
    """
    import torch

    from ..deconvolution import mixture_mean, nb_nll

    n, G = counts.shape
    K = prototypes.shape[1]
    config = {"n_features": int(features.shape[1]), "hidden": [int(h) for h in hidden], "n_types": int(K),
              "n_genes": int(G), "dropout": float(dropout), "prop_weight": float(prop_weight),
              "drift_weight": float(drift_weight)}  # fmt: skip
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    mlp = build_composition_net(config).to(dev)
    log_m0 = np.log(np.maximum(prototypes / prototypes.sum(axis=0).mean(), 1e-12))
    t0_ = torch.as_tensor(log_m0, dtype=torch.float32, device=dev)
    log_T = torch.nn.Parameter(t0_.clone())
    a0 = np.zeros(G) if alpha is None else alpha
    log_alpha = torch.nn.Parameter(torch.as_tensor(a0, dtype=torch.float32, device=dev))
    b0 = np.full(G, np.log(1e-3)) if beta is None else np.where(np.isfinite(beta), beta, np.log(1e-3))
    log_beta = torch.nn.Parameter(torch.as_tensor(b0, dtype=torch.float32, device=dev))
    ph0 = np.full(G, 10.0) if theta is None else np.where(np.isfinite(theta), theta, 1e4)
    log_phi = torch.nn.Parameter(torch.as_tensor(np.log(ph0), dtype=torch.float32, device=dev))
    gene_params = [log_T, log_alpha, log_beta, log_phi]
    opt = torch.optim.Adam([{"params": mlp.parameters(), "weight_decay": weight_decay},
                            {"params": gene_params, "weight_decay": 0.0}], lr=lr)  # fmt: skip
    X = torch.as_tensor(features, dtype=torch.float32)
    Y = torch.as_tensor(np.asarray(counts, dtype=np.float32))
    Pt = torch.as_tensor(fractions, dtype=torch.float32)
    prof0 = torch.softmax(t0_, dim=0)
    losses, t_start = [], time.perf_counter()
    for _ in range(epochs):
        mlp.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            y = Y[idx].to(dev)
            p = torch.softmax(mlp(X[idx].to(dev)), dim=1)
            mu = mixture_mean(p, torch.exp(log_T), log_alpha, log_beta, y.sum(dim=1, keepdim=True))
            nll = nb_nll(y, mu.clamp_min(1e-10), log_phi) / len(idx)
            l_prop = ((p - Pt[idx].to(dev)) ** 2).mean()
            l_drift = ((torch.softmax(log_T, dim=0) - prof0) ** 2).mean()
            loss = nll + prop_weight * l_prop + drift_weight * l_drift
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    weights = {f"mlp.{k}": v.detach().cpu().numpy() for k, v in mlp.state_dict().items()}
    weights |= {"log_T": log_T.detach().cpu().numpy(), "log_T0": log_m0.astype(np.float32),
                "log_alpha": log_alpha.detach().cpu().numpy(), "log_beta": log_beta.detach().cpu().numpy(),
                "log_phi": log_phi.detach().cpu().numpy()}  # fmt: skip
    history = {"loss": losses, "train_seconds": time.perf_counter() - t_start, "n_spots": n, "epochs": epochs,
               "device": str(dev)}  # fmt: skip
    return config, weights, history


def composition_predict(
    config: dict[str, Any], weights: dict[str, np.ndarray], features: np.ndarray, *, device: Any = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted composition (spots x types) and expression profile (spots x genes, rows sum to 1).

    Parameters
    ----------
    config, weights
        From :func:`train_composition`.
    features
        Standardised image features (spots x f).
    device
        Torch device.

    Returns
    -------
    tuple of numpy.ndarray
        Composition and normalised expression profile.
    """
    import torch

    from ..deconvolution import mixture_mean

    mlp = build_composition_net(config)
    mlp.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in weights.items() if k.startswith("mlp.")})
    mlp.to(device).eval()
    w = {k: torch.as_tensor(weights[k], device=device) for k in ("log_T", "log_alpha", "log_beta")}
    with torch.no_grad():
        p = torch.softmax(mlp(torch.as_tensor(features, dtype=torch.float32, device=device)), dim=1)
        q = mixture_mean(
            p, torch.exp(w["log_T"]), w["log_alpha"], w["log_beta"], torch.ones(len(p), 1, device=p.device)
        )
    return p.cpu().numpy().astype(np.float64), q.cpu().numpy().astype(np.float64)


def spot_clusters(
    expression: np.ndarray, n_clusters: int, *, n_pcs: int = 30, min_size: int = 5, seed: int = 0
) -> np.ndarray:
    """k-means clusters of spots on the principal components of their log-normalised expression.

    CPNN's released default builds prototypes from coarse Leiden clusters; k-means with a fixed number of clusters
    plays that part without a graph-clustering dependency. Clusters smaller than ``min_size`` spots (outliers) are
    dissolved into the nearest remaining cluster, so every prototype rests on several spots.

    Parameters
    ----------
    expression
        Log-normalised expression, spots x genes.
    n_clusters
        Number of clusters (at most; fewer remain when small ones are dissolved).
    n_pcs
        Principal components (capped by the data's rank).
    min_size
        Fewest spots a cluster keeps.
    seed
        Seed of PCA and k-means.

    Returns
    -------
    numpy.ndarray
        Cluster code per spot (``0 .. n - 1``; every code used).

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import spot_clusters
    >>> X = np.vstack([np.zeros((5, 4)), np.ones((5, 4)), [[9, 9, 9, 9]]])
    >>> codes = spot_clusters(X, 3, min_size=2)  # the lone outlier joins the nearer cluster
    >>> sorted(np.bincount(codes).tolist())
    [5, 6]
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    X = np.asarray(expression, dtype=np.float64)
    n_pcs = int(max(1, min(n_pcs, X.shape[0] - 1, X.shape[1])))
    Z = PCA(n_pcs, random_state=seed).fit_transform(X - X.mean(axis=0))
    km = KMeans(n_clusters, n_init=10, random_state=seed).fit(Z)
    labels, centres = km.labels_.copy(), km.cluster_centers_
    sizes = np.bincount(labels, minlength=n_clusters)
    big = np.flatnonzero(sizes >= min_size)
    if len(big) == 0:
        return np.zeros(len(X), dtype=np.int64)
    small = ~np.isin(labels, big)
    if small.any():
        d = ((Z[small, None, :] - centres[None, big, :]) ** 2).sum(axis=2)
        labels[small] = big[d.argmin(axis=1)]
    return np.unique(labels, return_inverse=True)[1]

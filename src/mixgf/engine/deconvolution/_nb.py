"""Negative-binomial prototype regression and NB deconvolution (numpy / scipy / torch; no AnnData).

Prototype regression
    ``y_cg ~ NB(s_c * exp(w_{t(c),g} + b_{batch(c),g}), theta_g)`` with ``s_c`` the total counts of cell ``c``. The
    means are fitted by quasi-likelihood (the NB score equations with unit working weights, i.e. the Poisson
    ones), which only need per-(type, batch) sums and are exact for the NB when the cells of a group have similar
    library sizes; without batches they are closed-form ratios, with batches a small torch L-BFGS fit. Batch
    effects are centred (library-weighted mean 0 per gene), so a prototype is the expected expression of the
    average batch. The per-gene dispersion ``theta_g`` is then estimated by the method of moments, pooled over
    the cells given their fitted means (sparse: no cells x genes matrix is formed).

Deconvolution (CPNN's observation model without the image branch)
    ``y_sg ~ NB(L_s * q_sg, phi_g)``, ``q_sg = r_sg / sum_g r_sg``,
    ``r_sg = exp(alpha_g) * sum_k p_sk * m_gk + exp(beta_g) * mbar_g``, ``p_s = softmax(eta_s)``,
    with ``m`` the prototypes (expected counts per cell, so ``p`` are cell fractions), ``alpha_g`` the gene
    sensitivity shared by all samples (prior ``N(0, alpha_sd^2)``), ``beta_g`` the ambient level relative to the
    gene's mean prototype (prior ``N(log 1e-3, beta_sd^2)``) and ``phi_g`` the per-gene inverse dispersion of the
    mixtures. Fitted by torch L-BFGS from an NNLS start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "DeconvolutionResult",
    "PrototypeFit",
    "fit_deconvolution",
    "fit_prototypes",
    "mixture_mean",
    "nb_deviance",
    "nb_nll",
]

_THETA_MIN, _THETA_MAX = 1e-2, 1e6
_BETA_PRIOR_MEAN = float(np.log(1e-3))


@dataclass
class PrototypeFit:
    """Result of :func:`fit_prototypes` (genes x types arrays).

    Attributes
    ----------
    means
        Expected counts per cell of each type (genes x types), batch-corrected to the average batch.
    rates
        Expected share of a cell's counts per gene (genes x types; ``means / cell_size``).
    cell_size
        Mean total counts of a cell of each type.
    n_cells
        Cells per type.
    dispersion
        Per-gene NB inverse dispersion ``theta`` (``inf``: no overdispersion measurable, Poisson).
    batch_effects
        Log batch effect per batch and gene (batches x genes), centred; `None` without batches.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from mixgf.engine.deconvolution import fit_prototypes
    >>> X = sp.csr_matrix(np.array([[9, 1], [11, 1], [1, 10], [1, 12]]))
    >>> fit = fit_prototypes(X, np.array([0, 0, 1, 1]), 2)
    >>> fit.n_cells.tolist(), fit.means.shape
    ([2, 2], (2, 2))
    """

    means: np.ndarray
    rates: np.ndarray
    cell_size: np.ndarray
    n_cells: np.ndarray
    dispersion: np.ndarray
    batch_effects: np.ndarray | None = None


def _group_sums(X: sp.csr_matrix, codes: np.ndarray, n: int) -> np.ndarray:
    """Row sums of ``X`` per group code (groups x genes), dense float64."""
    ind = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n, len(codes)))
    return np.asarray((ind @ X).todense(), dtype=np.float64)


def fit_prototypes(
    X: sp.csr_matrix,
    types: np.ndarray,
    n_types: int,
    *,
    batches: np.ndarray | None = None,
    n_batches: int = 1,
    prior_cells: float = 0.1,
    batch_ridge: float = 1e-3,
    max_iter: int = 200,
) -> PrototypeFit:
    """Fit NB prototypes (mean counts per cell and type, per-gene dispersion) from raw counts.

    Parameters
    ----------
    X
        Raw counts, cells x genes (CSR).
    types
        Type code per cell, ``0 .. n_types-1``.
    n_types
        Number of types.
    batches
        Batch code per cell (`None`: one batch).
    n_batches
        Number of batches.
    prior_cells
        Weight, in cells, of a shrinkage of every type's profile towards the pooled profile (keeps genes never
        seen in a type at a small positive rate instead of zero).
    batch_ridge
        L2 penalty on the log batch effects (identifies them when types and batches are confounded).
    max_iter
        L-BFGS iterations of the batch-effect fit.

    Returns
    -------
    PrototypeFit
        Means, rates, sizes and dispersions.

    Examples
    --------
    >>> import numpy as np
    >>> import mixgf as mgf
    >>> from mixgf.engine.deconvolution import fit_prototypes
    >>> adata = mgf.datasets.pbmc3k()
    >>> adata = adata[adata.obs["cell_type"].isin(["B cells", "NK cells"])]
    >>> types, codes = np.unique(adata.obs["cell_type"].astype(str), return_inverse=True)
    >>> fit = fit_prototypes(adata.X, codes, len(types))
    >>> fit.means.shape, fit.n_cells.tolist()
    ((16634, 2), [342, 154])
    >>> types[fit.means[adata.var_names.get_loc("MS4A1")].argmax()]
    'B cells'
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    types = np.asarray(types, dtype=np.int64)
    lib = np.asarray(X.sum(axis=1)).ravel()
    n_cells = np.bincount(types, minlength=n_types).astype(np.int64)
    cell_size = np.bincount(types, weights=lib, minlength=n_types) / np.maximum(n_cells, 1)
    pooled = np.asarray(X.sum(axis=0)).ravel() / max(lib.sum(), 1.0)
    prior_lib = prior_cells * float(np.median(lib)) if len(lib) else 0.0
    if batches is None or n_batches <= 1:
        Y = _group_sums(X, types, n_types)  # types x genes
        S = np.bincount(types, weights=lib, minlength=n_types)
        rates = (Y + prior_lib * pooled) / (S + prior_lib)[:, None]
        log_b = None
        batches = np.zeros(len(types), dtype=np.int64)
    else:
        batches = np.asarray(batches, dtype=np.int64)
        cell_group = types * n_batches + batches
        Y = _group_sums(X, cell_group, n_types * n_batches).reshape(n_types, n_batches, -1)
        S = np.bincount(cell_group, weights=lib, minlength=n_types * n_batches).reshape(n_types, n_batches)
        rates, log_b = _fit_batch_glm(Y, S, pooled, prior_lib, batch_ridge=batch_ridge, max_iter=max_iter)
    rates = rates / rates.sum(axis=1, keepdims=True)  # a type's profile sums to 1 over the genes
    theta = _moment_dispersion(X, lib, types, batches, rates, log_b)
    means = (rates * cell_size[:, None]).T
    return PrototypeFit(
        means=means, rates=rates.T, cell_size=cell_size, n_cells=n_cells, dispersion=theta, batch_effects=log_b
    )


def _fit_batch_glm(
    Y: np.ndarray, S: np.ndarray, pooled: np.ndarray, prior_lib: float, *, batch_ridge: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Quasi-likelihood fit of ``E[Y_kbg] = S_kb exp(w_kg + b_bg)`` (types x batches x genes); torch L-BFGS."""
    import torch

    _, B, G = Y.shape
    present = torch.as_tensor(S > 0)
    y = torch.as_tensor(Y + (prior_lib / B) * pooled * (S > 0)[:, :, None])
    s = torch.as_tensor(S + (prior_lib / B) * (S > 0))
    tot = y.sum(dim=1)  # types x genes
    w0 = torch.log(tot.clamp_min(1e-300) / s.sum(dim=1, keepdim=True))
    w = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(torch.zeros(B, G, dtype=torch.float64))
    # the problem separates by gene: each gene's loss is scaled by its counts so that every gene converges
    scale = y.sum(dim=(0, 1)) + 1.0
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_change=1e-12)
    logs = torch.log(s.clamp_min(1e-300))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        eta = w[:, None, :] + b[None, :, :] + logs[:, :, None]
        mu = torch.exp(eta)
        nll = (torch.where(present[:, :, None], mu - y * eta, torch.zeros_like(mu)).sum(dim=(0, 1)) / scale).sum()
        loss = nll + batch_ridge * (b**2).sum() / B
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weights = torch.as_tensor(S.sum(axis=0) / max(S.sum(), 1e-300))  # batches' share of the counts
        centre = (weights[:, None] * b).sum(dim=0)
        b_c = (b - centre).numpy()
        w_c = (w + centre).numpy()
    return np.exp(w_c - w_c.max(axis=1, keepdims=True)), b_c


def _moment_dispersion(
    X: sp.csr_matrix,
    lib: np.ndarray,
    types: np.ndarray,
    batches: np.ndarray,
    rates: np.ndarray,
    log_b: np.ndarray | None,
) -> np.ndarray:
    """Pooled method-of-moments ``theta_g = sum mu^2 / sum((y - mu)^2 - mu)`` over all cells (sparse)."""
    fac = rates[types] if log_b is None else rates[types] * np.exp(log_b[batches])  # cells x genes, dense
    # only the sums are needed: sum y^2, sum y*mu, sum mu^2, sum mu
    mu_sum = (lib[:, None] * fac).sum(axis=0)
    mu2_sum = ((lib**2)[:, None] * fac**2).sum(axis=0)
    Xc = X.tocoo()
    mu_nz = lib[Xc.row] * fac[Xc.row, Xc.col]
    G = X.shape[1]
    y2_sum = np.bincount(Xc.col, weights=Xc.data**2, minlength=G)
    ymu_sum = np.bincount(Xc.col, weights=Xc.data * mu_nz, minlength=G)
    excess = y2_sum - 2 * ymu_sum + mu2_sum - mu_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(excess > 0, mu2_sum / excess, np.inf)
    return np.where(np.isfinite(theta), np.clip(theta, _THETA_MIN, _THETA_MAX), np.inf)


def nb_deviance(y: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """NB unit deviances summed per row: ``2 sum_g [y log(y/mu) - (y + theta) log((y + theta)/(mu + theta))]``.

    Parameters
    ----------
    y
        Observations (rows x genes).
    mu
        Fitted means, same shape.
    theta
        Inverse dispersion per gene (``inf``: Poisson).

    Returns
    -------
    numpy.ndarray
        Deviance per row.
    """
    y = np.asarray(y, dtype=np.float64)
    mu = np.maximum(np.asarray(mu, dtype=np.float64), 1e-300)
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), y.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(y > 0, y * np.log(y / mu), 0.0)
        fin = np.isfinite(theta)
        th = np.where(fin, theta, 1.0)
        t2 = np.where(fin, (y + th) * np.log((y + th) / (mu + th)), y - mu)
    return 2 * (t1 - t2).sum(axis=1)


@dataclass
class DeconvolutionResult:
    """Result of :func:`fit_deconvolution`.

    Attributes
    ----------
    fractions
        Cell-type fractions per sample (samples x types, rows sum to 1).
    alpha
        Log gene sensitivity per gene (0 when not fitted).
    beta
        Log ambient level per gene, relative to the gene's mean prototype (``-inf`` when not fitted).
    theta
        Inverse dispersion of the mixtures per gene.
    fitted
        Fitted mean expression (samples x genes, on the scale of the input).
    deviance
        NB deviance per sample.
    pearson
        Pearson correlation of ``log1p`` fitted and measured expression per sample.
    history
        Fit record: iterations, final loss, device.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.deconvolution import fit_deconvolution
    >>> M = np.array([[20.0, 1.0], [1.0, 10.0], [5.0, 5.0]])
    >>> res = fit_deconvolution(np.array([[100, 50, 50]]), M, gene_sensitivity=False, ambient=False)
    >>> res.fractions.shape, bool(np.isclose(res.fractions.sum(), 1.0))
    ((1, 2), True)
    """

    fractions: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    theta: np.ndarray
    fitted: np.ndarray
    deviance: np.ndarray
    pearson: np.ndarray
    history: dict[str, Any] = field(default_factory=dict)


def mixture_mean(p: Any, m: Any, log_alpha: Any, log_beta: Any | None, L: Any) -> Any:
    """CPNN's observation model: expected counts of mixtures of prototypes (torch; differentiable).

    ``mu_sg = L_s * r_sg / sum_g r_sg`` with ``r_sg = exp(alpha_g) * sum_k p_sk * m_gk + exp(beta_g) * mbar_g`` and
    ``mbar_g`` the gene's mean over the prototypes. :func:`fit_deconvolution` fits it with free fractions per sample;
    the composition model of ``mixgf.engine.histology`` predicts the fractions from image features.

    Parameters
    ----------
    p
        Fractions, samples x types (rows on the simplex).
    m
        Prototypes, genes x types.
    log_alpha
        Log gene sensitivity per gene.
    log_beta
        Log ambient level per gene relative to ``mbar_g``; `None`: no ambient term.
    L
        Total counts per sample over these genes (samples x 1).

    Returns
    -------
    torch.Tensor
        Expected counts, samples x genes.

    Examples
    --------
    >>> import torch
    >>> from mixgf.engine.deconvolution import mixture_mean
    >>> m = torch.tensor([[20.0, 1.0], [1.0, 10.0]])
    >>> mu = mixture_mean(torch.tensor([[1.0, 0.0]]), m, torch.zeros(2), None, torch.tensor([[210.0]]))
    >>> mu.round().tolist()
    [[200.0, 10.0]]
    """
    import torch

    r = torch.exp(log_alpha) * (p @ m.T)
    if log_beta is not None:
        r = r + torch.exp(log_beta) * m.mean(dim=1)
    r = r.clamp_min(1e-30)
    return L * r / r.sum(dim=1, keepdim=True)


def nb_nll(y: Any, mu: Any, log_phi: Any, *, lgy: Any = None) -> Any:
    """Negative log-likelihood of counts under ``NB(mu, phi)`` summed over all entries (torch; differentiable).

    Parameters
    ----------
    y
        Counts (samples x genes).
    mu
        Means, same shape.
    log_phi
        Log inverse dispersion per gene (clamped to the range the prototypes' dispersions use).
    lgy
        ``lgamma(y + 1)`` when precomputed.

    Returns
    -------
    torch.Tensor
        The summed negative log-likelihood.

    Examples
    --------
    >>> import torch
    >>> from mixgf.engine.deconvolution import nb_nll
    >>> y = torch.tensor([[3.0, 0.0]])
    >>> bool(
    ...     nb_nll(y, torch.tensor([[3.0, 0.5]]), torch.zeros(2))
    ...     < nb_nll(y, torch.tensor([[0.5, 3.0]]), torch.zeros(2))
    ... )
    True
    """
    import torch

    phi = torch.exp(log_phi.clamp(np.log(_THETA_MIN), np.log(_THETA_MAX)))
    log_pm = torch.log(phi + mu)
    lgy = torch.lgamma(y + 1) if lgy is None else lgy
    ll = (
        torch.lgamma(y + phi) - torch.lgamma(phi) - lgy + phi * (torch.log(phi) - log_pm)
        + y * (torch.log(mu) - log_pm)
    )  # fmt: skip
    return -ll.sum()


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / den, np.nan)


def fit_deconvolution(
    Y: np.ndarray,
    prototypes: np.ndarray,
    *,
    gene_sensitivity: bool = True,
    ambient: bool = True,
    alpha_sd: float = 1.0,
    beta_sd: float = 2.0,
    max_iter: int = 500,
    constraint_weight: float = 0.0,
    init: np.ndarray | None = None,
    seed: int = 0,
    device: Any = "cpu",
    dtype: Any = None,
) -> DeconvolutionResult:
    """Fit cell-type fractions of mixtures under CPNN's NB observation model (see the module docstring).

    Parameters
    ----------
    Y
        Mixtures, samples x genes: counts, or pseudo-counts (e.g. TPM) on the same footing.
    prototypes
        Expected counts per cell of each type, genes x types (same genes as ``Y``).
    gene_sensitivity
        Fit the per-gene sensitivity ``alpha_g`` (platform / protocol effect shared by all samples).
    ambient
        Fit the per-gene ambient term ``beta_g``.
    alpha_sd, beta_sd
        Standard deviations of the Gaussian priors on ``alpha_g`` and ``beta_g`` (log scale).
    max_iter
        L-BFGS iterations.
    constraint_weight
        Weight of an optional penalty that keeps every type's total expression unchanged by ``alpha`` (per
        observation; 0 = off, the default: on NB data simulated with a gene sensitivity it made the fractions worse).
    init
        Starting fractions (samples x types); `None`: NNLS (:func:`mixgf.engine.deconvolution.nnls`).
    seed
        Torch seed (the fit itself is deterministic given the start).
    device
        Torch device.
    dtype
        Torch dtype; `None`: float64 on the CPU, float32 on accelerators.

    Returns
    -------
    DeconvolutionResult
        Fractions, gene parameters and per-sample fit quality.

    Examples
    --------
    Two prototypes over three genes, and NB counts of mixtures drawn from them:

    >>> import numpy as np
    >>> from mixgf.engine.deconvolution import fit_deconvolution
    >>> M = np.array([[20.0, 1.0], [1.0, 10.0], [5.0, 5.0]])
    >>> P = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    >>> Y = np.random.default_rng(0).poisson(1000 * P @ M.T)
    >>> res = fit_deconvolution(Y, M, gene_sensitivity=False, ambient=False)
    >>> res.fractions.round(1)
    array([[0.2, 0.8],
           [0.6, 0.4],
           [0.9, 0.1]])
    """
    import torch

    from ._baselines import nnls

    Y = np.asarray(Y, dtype=np.float64)
    M = np.asarray(prototypes, dtype=np.float64)
    S, G = Y.shape
    if M.shape[0] != G:
        msg = f"prototypes have {M.shape[0]} genes but the mixtures {G}; pass the same genes in the same order."
        raise ValueError(msg)

    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float64 if dev.type == "cpu" else torch.float32
    torch.manual_seed(seed)
    p0 = nnls(Y, M) if init is None else np.asarray(init, dtype=np.float64)
    p0 = (p0 + 1e-3) / (p0 + 1e-3).sum(axis=1, keepdims=True)
    scale_m = M.sum(axis=0).mean()
    m = torch.as_tensor(M / scale_m, dtype=dtype, device=dev)
    y = torch.as_tensor(Y, dtype=dtype, device=dev)
    L = y.sum(dim=1, keepdim=True)
    eta = torch.nn.Parameter(torch.as_tensor(np.log(p0), dtype=dtype, device=dev))
    log_alpha = torch.nn.Parameter(torch.zeros(G, dtype=dtype, device=dev))
    log_beta = torch.nn.Parameter(torch.full((G,), _BETA_PRIOR_MEAN, dtype=dtype, device=dev))
    # start phi from the moments of the NNLS fit
    q0 = (p0 @ (M / scale_m).T) + 1e-12
    mu0 = Y.sum(axis=1, keepdims=True) * q0 / q0.sum(axis=1, keepdims=True)
    excess = ((Y - mu0) ** 2 - mu0).sum(axis=0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        phi0 = np.clip(np.where(excess > 0, (mu0**2).sum(axis=0) / np.maximum(excess, 1e-300), 1e4), 1e-1, 1e4)
    log_phi = torch.nn.Parameter(torch.as_tensor(np.log(phi0), dtype=dtype, device=dev))
    params = [eta, log_phi]
    if gene_sensitivity:
        params.append(log_alpha)
    if ambient:
        params.append(log_beta)
    n_obs = float(S * G)
    lgy = torch.lgamma(y + 1)

    def mean() -> torch.Tensor:
        return mixture_mean(torch.softmax(eta, dim=1), m, log_alpha, log_beta if ambient else None, L)

    def nll(mu: torch.Tensor) -> torch.Tensor:
        return nb_nll(y, mu, log_phi, lgy=lgy)

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip
    n_eval = [0]

    prof = m / m.sum(dim=0, keepdim=True)  # each type's profile over the genes used

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(mean())
        if gene_sensitivity:
            loss = loss + (log_alpha**2).sum() / (2 * alpha_sd**2)
            # alpha may move expression between genes but not change a type's total: otherwise scaling all
            # markers of a type up and its fraction down would fit equally well
            type_total = torch.log((prof * torch.exp(log_alpha)[:, None]).sum(dim=0))
            loss = loss + constraint_weight * n_obs * (type_total**2).sum()
        if ambient:
            loss = loss + ((log_beta - _BETA_PRIOR_MEAN) ** 2).sum() / (2 * beta_sd**2)
        loss = loss / n_obs
        loss.backward()
        n_eval[0] += 1
        return loss

    final = float(opt.step(closure).detach())
    with torch.no_grad():
        mu = mean()
        final = float(closure()) if not np.isfinite(final) else final
        p = torch.softmax(eta, dim=1).cpu().numpy().astype(np.float64)
        fitted = mu.cpu().numpy().astype(np.float64)
        theta = torch.exp(log_phi.clamp(np.log(_THETA_MIN), np.log(_THETA_MAX))).cpu().numpy().astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    alpha = log_alpha.detach().cpu().numpy().astype(np.float64) if gene_sensitivity else np.zeros(G)
    beta = log_beta.detach().cpu().numpy().astype(np.float64) if ambient else np.full(G, -np.inf)
    return DeconvolutionResult(
        fractions=p,
        alpha=alpha,
        beta=beta,
        theta=theta,
        fitted=fitted,
        deviance=nb_deviance(Y, fitted, theta),
        pearson=_rowwise_pearson(np.log1p(fitted), np.log1p(Y)),
        history={"n_evaluations": n_eval[0], "loss": final, "device": str(dev), "n_samples": S, "n_genes": G},
    )

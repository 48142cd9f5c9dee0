r"""Mixture reduction (Runnalls) and maximum-likelihood fitting (EM).

**Runnalls merge.** Merging components ``i`` and ``j`` into one Gaussian preserves weight, mean and covariance:

.. math::
    w_{ij} = w_i + w_j,\quad \mu_{ij} = (w_i\mu_i + w_j\mu_j)/w_{ij},\quad
    \Sigma_{ij} = \frac{w_i\Sigma_i + w_j\Sigma_j}{w_{ij}} + \frac{w_iw_j}{w_{ij}^2}(\mu_i-\mu_j)(\mu_i-\mu_j)^\top,

and the pair with the smallest upper bound on the KL discrimination
:math:`B_{ij} = \tfrac12[w_{ij}\log\det\Sigma_{ij} - w_i\log\det\Sigma_i - w_j\log\det\Sigma_j]` is merged first,
until ``k`` components remain. Every batch element performs the same number of merges, so the loop is batched.

**EM.** With sample weights :math:`a_n` (:math:`\sum_n a_n = 1`; uniform by default), E-step
:math:`r_{nk}\propto w_k\mathcal N(x_n;\mu_k,\Sigma_k)`; M-step
:math:`N_k=\sum_n a_n r_{nk},\ w_k=N_k,\ \mu_k=\sum_n a_n r_{nk}x_n/N_k,\
\Sigma_k=\sum_n a_n r_{nk}(x_n-\mu_k)(x_n-\mu_k)^\top/N_k + \epsilon I`, which maximises the weighted
log-likelihood :math:`\sum_n a_n\log q(x_n)` (importance-weighted samples give a fit to the weighted target).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .linalg import cholesky, symmetrize


def runnalls_reduce(mixture, k: int):
    """Reduce ``mixture`` (a ``GaussianMixture``) to ``k`` components, batched over its batch shape."""
    from .gmm import GaussianMixture

    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Expected the target number of components k to be a positive int, but got {k!r}.")
    K = mixture.num_components
    if k >= K:
        return mixture
    dtype = mixture.dtype
    mixture = mixture.to(torch.float64)  # merged covariances add rank-one terms that float32 can round off
    w = mixture.weights.clone()
    mu = mixture.loc.clone()
    cov = mixture.component_covariance_matrix.clone()
    active = torch.ones_like(w, dtype=torch.bool)
    tiny = torch.finfo(w.dtype).tiny
    upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=w.device), diagonal=1)
    for _ in range(K - k):
        wi, wj = w.unsqueeze(-1), w.unsqueeze(-2)  # (*B, K, 1), (*B, 1, K)
        wij = (wi + wj).clamp_min(tiny)
        mi, mj = mu.unsqueeze(-2), mu.unsqueeze(-3)  # (*B, K, 1, D), (*B, 1, K, D)
        diff = mi - mj
        ci, cj = cov.unsqueeze(-3), cov.unsqueeze(-4)
        a, b = (wi / wij)[..., None, None], (wj / wij)[..., None, None]
        cij = a * ci + b * cj + (a * b) * diff.unsqueeze(-1) * diff.unsqueeze(-2)
        logdet_ij = torch.linalg.slogdet(cij)[1]
        logdet = torch.linalg.slogdet(cov)[1]
        cost = 0.5 * (wij * logdet_ij - wi * logdet.unsqueeze(-1) - wj * logdet.unsqueeze(-2))
        valid = upper & active.unsqueeze(-1) & active.unsqueeze(-2)
        cost = torch.where(valid, cost, torch.full_like(cost, float("inf")))
        flat = cost.flatten(-2).argmin(-1)  # (*B)
        i, j = flat // K, flat % K
        d = mu.shape[-1]
        wa, wb = w.gather(-1, i[..., None]), w.gather(-1, j[..., None])  # (*B, 1)
        mu_i = mu.gather(-2, i[..., None, None].expand(*i.shape, 1, d)).squeeze(-2)
        mu_j = mu.gather(-2, j[..., None, None].expand(*j.shape, 1, d)).squeeze(-2)
        merged_w = wa + wb
        merged_mu = (wa * mu_i + wb * mu_j) / merged_w.clamp_min(tiny)
        idx_ij = (i * K + j)[..., None, None, None].expand(*i.shape, 1, d, d)
        merged_cov = cij.flatten(-4, -3).gather(-3, idx_ij).squeeze(-3)
        onehot_i = torch.nn.functional.one_hot(i, K).bool()
        onehot_j = torch.nn.functional.one_hot(j, K).bool()
        w = torch.where(onehot_i, merged_w.expand_as(w), w)
        w = torch.where(onehot_j, torch.zeros_like(w), w)
        mu = torch.where(onehot_i.unsqueeze(-1), merged_mu.unsqueeze(-2).expand_as(mu), mu)
        cov = torch.where(onehot_i[..., None, None], merged_cov.unsqueeze(-3).expand_as(cov), cov)
        active = active & ~onehot_j
    keep = torch.argsort(active.to(torch.int8), dim=-1, descending=True, stable=True)[..., :k]
    d = mu.shape[-1]
    w = w.gather(-1, keep)
    mu = mu.gather(-2, keep[..., None].expand(*keep.shape, d))
    cov = cov.gather(-3, keep[..., None, None].expand(*keep.shape, d, d))
    w = w / w.sum(-1, keepdim=True)
    return GaussianMixture(logits=w.clamp_min(tiny).log(), loc=mu, scale_tril=cholesky(symmetrize(cov)),
                           validate_args=False).to(dtype)


def fit_em(samples: Tensor, k: int, *, sample_weights: Tensor | None = None, init=None,
           generator: torch.Generator | None = None, max_iterations: int = 200, tol: float = 1e-6):
    """EM fit of a ``k``-component full-covariance mixture to ``samples`` ``(N, *B, D)``.

    ``sample_weights`` ``(N, *B)``: non-negative weights per sample (normalised here); ``init``: a
    ``GaussianMixture`` with batch ``B`` and ``k`` components to start from (default: ``k`` random samples).
    """
    from .gmm import GaussianMixture

    if not isinstance(samples, Tensor) or samples.dim() < 2:
        raise ValueError(f"Expected samples of shape (N, *B, D), but got {getattr(samples, 'shape', type(samples))}.")
    if not isinstance(k, int) or k < 1 or k > samples.shape[0]:
        raise ValueError(f"Expected 1 <= k <= N={samples.shape[0]} components, but got {k!r}.")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("Expected finite samples, but found NaN or inf.")
    x = samples if samples.dtype.is_floating_point else samples.to(torch.get_default_dtype())
    n, d = x.shape[0], x.shape[-1]
    batch = x.shape[1:-1]
    if sample_weights is None:
        a = torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)
    else:
        a = torch.as_tensor(sample_weights, dtype=x.dtype, device=x.device)
        if a.shape != x.shape[:-1]:
            raise ValueError(f"Expected sample_weights of shape {tuple(x.shape[:-1])}, but got {tuple(a.shape)}.")
        if not bool(torch.isfinite(a).all()) or bool((a < 0).any()) or bool((a.sum(0) <= 0).any()):
            raise ValueError("Expected finite, non-negative sample_weights with a positive sum per batch element.")
        a = a / a.sum(0, keepdim=True)
    mean = torch.einsum("n...,n...d->...d", a, x)
    centred = x - mean
    data_cov = symmetrize(torch.einsum("n...,n...d,n...e->...de", a, centred, centred))
    reg = 1e-6 * data_cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    if init is not None:
        if init.batch_shape != batch or init.num_components != k or init.dim != d:
            raise ValueError(f"Expected init with batch shape {tuple(batch)}, k={k} and D={d}, but got {init}.")
        init = init.to(dtype=x.dtype, device=x.device)
        log_w, mu, cov = init.log_weights, init.loc, init.component_covariance_matrix
    else:  # means at k distinct random samples, per batch element
        scores = torch.rand(n, batch.numel(), generator=generator, device=x.device).argsort(0)[:k]  # (k, b)
        flat = x.reshape(n, batch.numel(), d)
        mu = flat.gather(0, scores[..., None].expand(k, batch.numel(), d)).transpose(0, 1).reshape(*batch, k, d)
        cov = (data_cov + reg[..., None, None] * eye).unsqueeze(-3).expand(*batch, k, d, d)
        log_w = torch.full((*batch, k), -math.log(k), dtype=x.dtype, device=x.device)
    previous = -float("inf")
    half_log_2pi = 0.5 * d * math.log(2 * math.pi)
    for _ in range(max_iterations):
        tril = cholesky(cov, "an EM covariance")
        inv = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)  # L^{-1}, (*B, K, D, D)
        white = torch.einsum("...kde,n...ke->n...kd", inv, x.unsqueeze(-2) - mu)
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_joint = log_w - log_det - half_log_2pi - 0.5 * white.pow(2).sum(-1)  # (N, *B, K)
        log_norm = torch.logsumexp(log_joint, -1, keepdim=True)
        resp = (log_joint - log_norm).exp() * a.unsqueeze(-1)
        nk = resp.sum(0)  # (*B, K)
        alive = nk > 1e-10  # a component that lost all its samples keeps its mean and covariance
        safe = torch.where(alive, nk, torch.ones_like(nk))
        log_w = (nk.clamp_min(1e-300) / nk.sum(-1, keepdim=True)).log()
        new_mu = torch.einsum("n...k,n...d->...kd", resp, x) / safe.unsqueeze(-1)
        mu = torch.where(alive.unsqueeze(-1), new_mu, mu)
        diff = x.unsqueeze(-2) - mu
        new_cov = torch.einsum("n...k,n...kd,n...ke->...kde", resp, diff, diff) / safe[..., None, None]
        new_cov = symmetrize(new_cov) + reg[..., None, None, None] * eye
        cov = torch.where(alive[..., None, None], new_cov, cov)
        mean_ll = float((a * log_norm.squeeze(-1)).sum(0).mean())
        if abs(mean_ll - previous) < tol:
            break
        previous = mean_ll
    return GaussianMixture(logits=log_w, loc=mu, scale_tril=cholesky(cov, "an EM covariance"), validate_args=False)

r"""Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry, JMLR 2024).

Given log importance ratios :math:`r_s = \log p(x_s) - \log q(x_s)` for :math:`S` draws :math:`x_s\sim q`, the
:math:`M=\lceil\min(S/5,\,3\sqrt S)\rceil` largest ratios are the tail. Their exceedances over the threshold
:math:`u` (the largest ratio outside the tail), :math:`y = e^{r} - e^{u}`, are fitted with a generalized Pareto
distribution

.. math::
    F(y) = 1 - \left(1 + \xi y/\sigma\right)^{-1/\xi},

by the profile-likelihood estimator of Zhang & Stephens (2009): on a grid of :math:`\theta=-\xi/\sigma`,
:math:`\hat\xi(\theta) = \tfrac1M\sum_i\log(1-\theta y_i)` and the profile log-likelihood is
:math:`\ell(\theta)=M[\log(-\theta/\hat\xi(\theta)) - \hat\xi(\theta) - 1]`; :math:`\hat\theta` is the
:math:`e^{\ell}`-weighted grid mean and :math:`\hat\xi=\hat\xi(\hat\theta)`, :math:`\hat\sigma=-\hat\xi/\hat\theta`.
The estimate is then shrunk toward 0.5 by a weakly informative prior, :math:`\hat k = (M\hat\xi + 5)/(M+10)`.

The tail ratios are replaced, in rank order, by :math:`u`-shifted GPD quantiles at :math:`(i-\tfrac12)/M` and
truncated at the largest raw ratio. :math:`\hat k` is the reliability flag: the estimate is trustworthy when
:math:`\hat k < \min(1 - 1/\log_{10}S,\ 0.7)`; above it the importance-weighted answer can be far off however
many draws are taken, and a different proposal is needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


_LOG_RANGE = 700.0


def khat_threshold(num_samples: int) -> float:
    """Largest ``k̂`` at which ``num_samples`` Pareto-smoothed draws are reliable: ``min(1 - 1/log10 S, 0.7)``."""
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def fit_generalized_pareto(exceedances: Tensor, shrink: bool = True) -> tuple[Tensor, Tensor]:
    """Zhang–Stephens estimate of the GPD shape ``ξ`` and scale ``σ`` from ``exceedances`` ``(*B, M) >= 0``.

    Returns ``(k_hat, sigma)``, each ``(*B)``. With ``shrink`` the shape is pulled toward 0.5 as PSIS does
    (weakly informative prior, worth 10 pseudo-observations). Rows whose exceedances are all zero (a bounded,
    flat tail) return ``k_hat = -inf``.
    """
    x = exceedances.sort(-1).values
    n = x.shape[-1]
    if n < 5:
        raise ValueError(f"Expected at least 5 exceedances to fit a generalized Pareto tail, but got {n}.")
    x_max = x[..., -1:]
    flat = x_max.squeeze(-1) <= 0
    x_max = torch.where(x_max > 0, x_max, torch.ones_like(x_max))
    quartile = x[..., int(n / 4 + 0.5) - 1: int(n / 4 + 0.5)]
    quartile = torch.where(quartile > 0, quartile, x_max)  # a zero quartile: fall back to the maximum's scale
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    theta = 1.0 / x_max + (1.0 - torch.sqrt(m / (j - 0.5))) / (3.0 * quartile)  # (*B, m), all < 1/x_max
    xi = torch.log1p(-theta.unsqueeze(-1) * x.unsqueeze(-2)).mean(-1)  # (*B, m)
    profile = n * (torch.log(-theta / xi) - xi - 1.0)
    weights = torch.softmax(torch.nan_to_num(profile, nan=-math.inf), -1)
    theta_hat = (weights * theta).sum(-1, keepdim=True)
    xi_hat = torch.log1p(-theta_hat * x).mean(-1)
    sigma = -xi_hat / theta_hat.squeeze(-1)
    if shrink:
        xi_hat = (n * xi_hat + 10 * 0.5) / (n + 10)
    xi_hat = torch.where(flat, torch.full_like(xi_hat, -math.inf), xi_hat)
    return xi_hat, torch.where(flat, torch.zeros_like(sigma), sigma)


def pareto_smooth(log_ratios: Tensor) -> tuple[Tensor, Tensor]:
    """Pareto-smoothed log ratios over the first (draw) dimension of ``log_ratios`` ``(S, *B)``.

    Returns ``(smoothed (S, *B), k_hat (*B))``; the smoothed ratios are not normalised.
    """
    S = log_ratios.shape[0]
    if S < 25:
        raise ValueError(f"Expected at least 25 importance draws for Pareto smoothing, but got {S}.")
    r = log_ratios.movedim(0, -1)  # (*B, S)
    shift = r.amax(-1, keepdim=True)
    r = r - shift
    M = math.ceil(min(0.2 * S, 3.0 * math.sqrt(S)))
    order = r.argsort(-1)
    sorted_r = r.gather(-1, order)
    threshold = sorted_r[..., S - M - 1: S - M]  # (*B, 1)
    tail = sorted_r[..., S - M:]  # ascending
    exceed = tail.exp() - threshold.exp()
    k_hat, sigma = fit_generalized_pareto(exceed)
    # a tail spanning more than float64's range (e^-700) is so heavy that its small exceedances underflow to zero;
    # a GPD with ξ = 1 would need ~e^700 draws to span it, so k̂ is infinite for any practical purpose
    underflow = (tail[..., -1] - threshold.squeeze(-1)) > _LOG_RANGE
    k_hat = torch.where(underflow, torch.full_like(k_hat, math.inf), k_hat)
    p = (torch.arange(1, M + 1, dtype=r.dtype, device=r.device) - 0.5) / M
    ks, sg = k_hat.unsqueeze(-1), sigma.unsqueeze(-1)
    small = ks.abs() < 1e-8
    safe_k = torch.where(small, torch.ones_like(ks), ks)
    quantiles = torch.where(small, -sg * torch.log1p(-p), sg / safe_k * torch.expm1(-safe_k * torch.log1p(-p)))
    smoothed_tail = torch.log(threshold.exp() + quantiles).clamp_max(0.0)  # truncate at the largest raw ratio
    usable = torch.isfinite(k_hat).unsqueeze(-1) & torch.isfinite(smoothed_tail)
    smoothed_tail = torch.where(usable, smoothed_tail, tail)
    smoothed_sorted = torch.cat([sorted_r[..., :S - M], smoothed_tail], -1)
    out = torch.empty_like(r).scatter_(-1, order, smoothed_sorted)
    return (out + shift).movedim(-1, 0), k_hat

r"""Bootstrap particle filter, batched in torch, with systematic resampling.

Particles :math:`x^{(j)}_t` propagate through the transition, :math:`x^{(j)}_t = f(x^{(j)}_{t-1}) + w^{(j)}`, are
weighted by the likelihood, :math:`\log\omega_j = \log p(z_t\mid x^{(j)}_t)` (normalised), and are resampled at every
step by systematic resampling: one uniform :math:`u\sim\mathcal U(0,1/J)` and the points :math:`u + (i-1)/J`
select particles through the cumulative weights.

The belief must be a density to score the true state, and a particle set is not one. This filter reports the
weighted particles' **moment-matched Gaussian** :math:`\mathcal N(\sum_j\omega_jx^{(j)},\ \mathrm{Cov}_\omega)` per
step (stated in every benchmark that uses it).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..distributions.linalg import cholesky, symmetrize


def systematic_resample(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``(*B, J)`` of ``J`` particles drawn from normalised ``log_weights`` ``(*B, J)`` (systematic)."""
    J = log_weights.shape[-1]
    cdf = torch.softmax(log_weights, -1).cumsum(-1)
    cdf[..., -1] = 1.0
    u = torch.rand(*log_weights.shape[:-1], 1, generator=generator, dtype=cdf.dtype)
    points = (u + torch.arange(J, dtype=cdf.dtype)) / J
    return torch.searchsorted(cdf, points).clamp_max(J - 1)


class ParticleFilter:
    """Bootstrap filter with ``num_particles`` particles.

    Args:
        transition: ``(x (*B, J, D), generator, t) -> x_next`` sampling the motion model.
        log_likelihood: ``(x (*B, J, D), z (*B, N, E), mask (*B, N)) -> (*B, J)`` log-density of the step's data.
        num_particles: particles per series.
    """

    def __init__(self, transition: Callable, log_likelihood: Callable, num_particles: int):
        if not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"Expected num_particles >= 2 as an int, but got {num_particles!r}.")
        self.transition, self.log_likelihood, self.num_particles = transition, log_likelihood, num_particles

    def run(self, prior: GaussianMixture, z: Tensor, mask: Tensor,
            generator: torch.Generator | None = None) -> GaussianMixture:
        """Moment-matched filtered Gaussians (batch ``(T, *B)``) for data ``z`` ``(T, *B, N, E)``."""
        x = prior.sample((self.num_particles,), generator=generator).movedim(0, -2)  # (*B, J, D)
        means, covs = [], []
        for t in range(z.shape[0]):
            if t > 0:
                x = self.transition(x, generator, t)
            log_w = self.log_likelihood(x, z[t].to(x.dtype), mask[t])
            log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
            w = log_w.exp().unsqueeze(-1)
            mean = (w * x).sum(-2)
            diff = x - mean.unsqueeze(-2)
            cov = symmetrize((w.unsqueeze(-1) * diff.unsqueeze(-1) * diff.unsqueeze(-2)).sum(-3))
            means.append(mean)
            covs.append(cov + 1e-9 * torch.eye(x.shape[-1], dtype=x.dtype))
            index = systematic_resample(log_w, generator)
            x = x.gather(-2, index.unsqueeze(-1).expand_as(x))
        mean, cov = torch.stack(means), torch.stack(covs)
        zero = torch.zeros(*mean.shape[:-1], 1, dtype=mean.dtype)
        return GaussianMixture(logits=zero, loc=mean.unsqueeze(-2),
                               scale_tril=cholesky(cov, "a particle covariance").unsqueeze(-3), validate_args=False)


def gaussian_transition(f: Callable[[Tensor], Tensor], Q: Tensor) -> Callable:
    """Transition sampler ``x -> f(x) + N(0, Q)`` for :class:`ParticleFilter`."""
    L = torch.linalg.cholesky(Q)

    def sample(x: Tensor, generator: torch.Generator | None, t: int) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) @ L.to(x.dtype).transpose(-1, -2)
        return f(x) + noise

    return sample


def gaussian_log_likelihood(h: Callable[[Tensor], Tensor], R: Tensor) -> Callable:
    """``sum_i log N(z_i; h(x), R)`` over present observations, for :class:`ParticleFilter`."""
    L = torch.linalg.cholesky(R)
    L_inv = torch.linalg.inv(L)
    E = R.shape[-1]
    constant = -L.diagonal().log().sum() - 0.5 * E * math.log(2 * math.pi)

    def log_likelihood(x: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        # whiten once per observation and per particle, then expand: ||L^{-1}(z - h(x))||^2
        wz = z @ L_inv.to(x.dtype).T  # (*B, N, E)
        wx = h(x) @ L_inv.to(x.dtype).T  # (*B, J, E)
        sq = (wz.pow(2).sum(-1).unsqueeze(-2) - 2 * wx @ wz.transpose(-1, -2) + wx.pow(2).sum(-1).unsqueeze(-1))
        per = -0.5 * sq + constant.to(x.dtype)  # (*B, J, N)
        return (per * mask.unsqueeze(-2).to(x.dtype)).sum(-1)

    return log_likelihood

r"""Bootstrap particle filter, batched in torch, with systematic resampling, optionally regularised.

Particles :math:`x^{(j)}_t` propagate through the transition, :math:`x^{(j)}_t = f(x^{(j)}_{t-1}) + w^{(j)}`, are
weighted by the likelihood, :math:`\log\omega_j = \log p(z_t\mid x^{(j)}_t)` (normalised), and are resampled at every
step by systematic resampling: one uniform :math:`u\sim\mathcal U(0,1/J)` and the points :math:`u + (i-1)/J`
select particles through the cumulative weights.

A step whose likelihood is sharp (a bearing that pins the position when the target passes the sensor) leaves a few
particles with all the weight; resampling copies them, and the cloud collapses onto points that the transition
noise cannot spread again where that noise is of low rank. The **regularised** filter (Musso, Oudjane and Le Gland,
2001) resamples from a kernel density of the weighted particles instead, shrunk so that it keeps their weighted
mean :math:`m` and covariance :math:`LL^\top` (Liu and West, 2001): a resampled particle :math:`x` becomes

.. math::
    m + a\,(x - m) + h\,L\varepsilon,\qquad \varepsilon\sim\mathcal N(0, I),\qquad a = \sqrt{1-h^2},

with the Gaussian kernel's optimal bandwidth :math:`h = \big(4/(J(D+2))\big)^{1/(D+4)}` (times
``bandwidth_scale``, at most 1). Without the shrinkage each step would add :math:`h^2` of the covariance.

The belief must be a density to score the true state, and a particle set is not one. :meth:`ParticleFilter.run`
reports the weighted particles' **moment-matched Gaussian**
:math:`\mathcal N(\sum_j\omega_jx^{(j)},\ \mathrm{Cov}_\omega)` per step; :meth:`ParticleFilter.log_density`
scores states under a **Gaussian KDE** of the weighted particles instead (each benchmark states which it uses).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..distributions.linalg import cholesky, symmetrize
from ..observations import Observations
from .kalman import gaussian_beliefs


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
        log_likelihood: ``(x (*B, J, D), z (*B, N, E), mask (*B, N)) -> (*B, J)`` log-density of the step's data;
            when the data come as :class:`~distformer.observations.Observations` (several sources), it is called as
            ``(x, observations_t)`` with the step's ``Observations`` (batch ``B``).
        num_particles: particles per series.
        regularised: resample from the weighted particles' Gaussian kernel density (module docstring) instead of
            copying particles.
        bandwidth_scale: multiplies the kernel's optimal bandwidth (regularised filters only).
    """

    def __init__(self, transition: Callable, log_likelihood: Callable, num_particles: int, *,
                 regularised: bool = False, bandwidth_scale: float = 1.0):
        if not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"Expected num_particles >= 2 as an int, but got {num_particles!r}.")
        if not bandwidth_scale > 0:
            raise ValueError(f"Expected bandwidth_scale > 0, but got {bandwidth_scale!r}.")
        self.transition, self.log_likelihood, self.num_particles = transition, log_likelihood, num_particles
        self.regularised, self.bandwidth_scale = bool(regularised), float(bandwidth_scale)

    def bandwidth(self, dim: int) -> float:
        """The regularised filter's kernel bandwidth ``h`` for ``dim`` coordinates (module docstring)."""
        J = self.num_particles
        return min(1.0, self.bandwidth_scale * (4.0 / (J * (dim + 2))) ** (1.0 / (dim + 4)))

    def steps(self, prior: GaussianMixture, z, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield, per step, the particles ``(*B, J, D)`` and their normalised log-weights ``(*B, J)`` (before
        resampling). ``z`` is a tensor ``(T, *B, N, E)`` with ``mask`` ``(T, *B, N)``, or ``Observations`` with batch
        ``(T, *B)``."""
        if isinstance(z, Observations):
            T = z.batch_shape[0]
            data = lambda t: (Observations({s: v[t] for s, v in z.values.items()},  # noqa: E731
                                           {s: m[t] for s, m in z.masks.items()}),)
        else:
            if mask is None:
                raise ValueError("Expected a mask (T, *B, N) with the observation tensor, but got None.")
            T = z.shape[0]
            data = lambda t: (z[t], mask[t])  # noqa: E731
        x = prior.sample((self.num_particles,), generator=generator).movedim(0, -2)  # (*B, J, D)
        for t in range(T):
            if t > 0:
                x = self.transition(x, generator, t)
            step = [d.to(x.dtype) if isinstance(d, Tensor) and d.is_floating_point() else d for d in data(t)]
            if isinstance(step[0], Observations):
                step[0] = step[0].to(x.dtype)
            log_w = self.log_likelihood(x, *step)
            log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
            yield x, log_w
            index = systematic_resample(log_w, generator)
            resampled = x.gather(-2, index.unsqueeze(-1).expand_as(x))
            if self.regularised:
                mean, cov = _weighted_moments(x, log_w)
                L = cholesky(_jittered(cov), "a particle covariance")  # (*B, D, D)
                h = self.bandwidth(x.shape[-1])
                noise = torch.randn(resampled.shape, generator=generator, dtype=x.dtype) @ L.transpose(-1, -2)
                centre = mean.unsqueeze(-2)
                resampled = centre + math.sqrt(1.0 - h * h) * (resampled - centre) + h * noise
            x = resampled

    def run(self, prior: GaussianMixture, z, mask: Tensor | None = None,
            generator: torch.Generator | None = None) -> GaussianMixture:
        """Moment-matched filtered Gaussians (batch ``(T, *B)``) for the data (see :meth:`steps`)."""
        means, covs = [], []
        for x, log_w in self.steps(prior, z, mask, generator):
            mean, cov = _weighted_moments(x, log_w)
            means.append(mean)
            covs.append(_jittered(cov))
        return gaussian_beliefs(means, covs, "a particle covariance")

    def log_density(self, prior: GaussianMixture, z, states: Tensor, mask: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        r"""Log-density ``(T, *B)`` of ``states`` ``(T, *B, D)`` under each step's weighted-particle **Gaussian KDE**:
        :math:`\sum_j\omega_j\mathcal N(x; x^{(j)}, H)` with Scott's bandwidth matrix
        :math:`H = J_{\text{eff}}^{-2/(D+4)}\,\mathrm{Cov}_\omega`, with :math:`J_{\text{eff}}` the effective sample
        size."""
        expected = (z.batch_shape[0] if isinstance(z, Observations) else z.shape[0], *prior.batch_shape, prior.dim)
        if tuple(states.shape) != expected:
            raise ValueError(f"Expected states of shape (T, *B, D)={expected}, but got {tuple(states.shape)}.")
        out = []
        for t, (x, log_w) in enumerate(self.steps(prior, z, mask, generator)):
            D = x.shape[-1]
            _, cov = _weighted_moments(x, log_w)
            ess = torch.exp(-torch.logsumexp(2 * log_w, -1))  # (*B)
            H = _jittered(ess.pow(-2.0 / (D + 4))[..., None, None] * cov)
            L = cholesky(H, "a kernel bandwidth")
            diff = torch.linalg.solve_triangular(L.unsqueeze(-3), (states[t].unsqueeze(-2) - x).unsqueeze(-1),
                                                 upper=False).squeeze(-1)  # (*B, J, D)
            log_kernel = (-0.5 * diff.pow(2).sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1).unsqueeze(-1)
                          - 0.5 * D * math.log(2 * math.pi))
            out.append(torch.logsumexp(log_w + log_kernel, -1))
        return torch.stack(out)


def _jittered(cov: Tensor) -> Tensor:
    """``cov + eps I`` with ``eps`` = 1e-9 plus 100 machine epsilons of the largest variance: a particle cloud that
    resampling collapsed (identical particles, or noise of lower rank) still gets a density."""
    scale = cov.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(0.0)
    eps = 1e-9 + 100 * torch.finfo(cov.dtype).eps * scale
    return cov + eps[..., None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def _weighted_moments(x: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean ``(*B, D)`` and covariance ``(*B, D, D)`` of particles ``(*B, J, D)``."""
    w = log_w.exp().unsqueeze(-1)
    mean = (w * x).sum(-2)
    diff = x - mean.unsqueeze(-2)
    return mean, symmetrize((w * diff).transpose(-1, -2) @ diff)


def problem_log_likelihood(problem) -> Callable:
    """``problem.log_likelihood`` (states ``(*S, *B, D)``) in the particle layout ``(x (*B, J, D), observations_t)
    -> (*B, J)``, for data given as ``Observations`` with several sources."""

    def log_likelihood(x: Tensor, observations: Observations) -> Tensor:
        return problem.log_likelihood(x.movedim(-2, 0), observations).movedim(0, -1)

    return log_likelihood


def gaussian_transition(f: Callable[[Tensor], Tensor], Q: Tensor) -> Callable:
    """Transition sampler ``x -> f(x) + N(0, Q)`` for :class:`ParticleFilter`; ``Q`` may be singular (PSD)."""
    eigenvalues, vectors = torch.linalg.eigh(symmetrize(Q.to(torch.float64)))
    if bool(eigenvalues.min() < -1e-10 * eigenvalues.abs().max().clamp_min(1.0)):
        raise ValueError(f"Expected a positive semi-definite process-noise covariance Q, but its smallest eigenvalue "
                         f"is {float(eigenvalues.min()):.3g}.")
    factor = vectors * eigenvalues.clamp_min(0.0).sqrt().unsqueeze(-2)  # Q = factor factor^T

    def sample(x: Tensor, generator: torch.Generator | None, t: int) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) @ factor.to(x.dtype).transpose(-1, -2)
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


def bootstrap_filter(problem, num_particles: int, regularised: bool = False) -> "ParticleFilter":
    r"""The bootstrap particle filter of a linear-Gaussian-motion problem (``problem.A``, optional ``problem.b``,
    ``problem.Q``: :math:`x_t = A x_{t-1} + b + w_t`, :math:`w_t\sim\mathcal N(0, Q)`) with the problem's exact
    ``log_likelihood`` for the readings, ``num_particles`` particles; ``regularised`` as in :class:`ParticleFilter`."""
    A, b = problem.A, getattr(problem, "b", None)

    def motion(x: Tensor) -> Tensor:
        y = x @ A.to(x.dtype).T
        return y if b is None else y + b.to(x.dtype)

    return ParticleFilter(gaussian_transition(motion, problem.Q), problem_log_likelihood(problem), num_particles,
                          regularised=regularised)

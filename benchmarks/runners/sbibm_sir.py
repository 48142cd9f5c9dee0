r"""sbibm's ``sir`` task written as a user of this library would write it: an ODE simulator, its binomial likelihood,
positive parameters and priors around the task's.

The task (sbibm 1.1.0): :math:`\beta\sim\mathrm{LogNormal}(\log 0.4, 0.5^2)`,
:math:`\gamma\sim\mathrm{LogNormal}(\log 0.125, 0.2^2)`; with :math:`N = 10^6` and :math:`(S, I, R)(0) = (N-1, 1, 0)`,

.. math::
    S' = -\beta S I/N,\qquad I' = \beta S I/N - \gamma I,\qquad R' = \gamma I,

and ten counts :math:`x_k\sim\mathrm{Binomial}(1000, I(t_k)/N)` on days :math:`t_k = 17k`, :math:`k = 0..9`.

The ODE is solved in :math:`(\log s, \log i)` with :math:`s = S/N`, :math:`i = I/N`:
:math:`(\log s)' = -\beta i`, :math:`(\log i)' = \beta s - \gamma`, whose right-hand sides are bounded by
:math:`\beta`, so fixed-step RK4 (``STEP`` days, float64) keeps the relative error of :math:`i` small even where
:math:`i` spans many orders of magnitude; the grid reference's C2ST against sbibm's samples checks it. The model reads
the ten counts divided by 1000 as one observation; NPE reads the raw counts, as sbibm's files give them.

The task's prior is exactly Gaussian on the log-warped space (one component). The changed priors move its mean by
``SHIFT`` prior standard deviations per axis or multiply its standard deviations by ``NARROW``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

import distformer as dfm
from distformer.distributions.gmm import GaussianMixture

POPULATION = 1e6
TRIALS = 1000
DAYS = 160.0
SAVE_EVERY = 17  # days between kept counts: days 0, 17, ..., 153
STEP = 0.1  # days per RK4 step
PRIOR_LOC = (math.log(0.4), math.log(0.125))
PRIOR_SD = (0.5, 0.2)


def log_infected(theta: Tensor) -> Tensor:
    """:math:`\\log(I(t_k)/N)` ``(..., 10)`` for ``theta = (beta, gamma)`` ``(..., 2)`` (module docstring), float64."""
    from .sbibm_tasks import rk4_saves

    shape = theta.shape[:-1]
    flat = theta.reshape(-1, 2).detach().cpu().double().numpy()
    beta, gamma = flat[:, 0], flat[:, 1]
    log_s = np.full(len(flat), math.log1p(-1.0 / POPULATION))
    log_i = np.full(len(flat), -math.log(POPULATION))
    def rate(ls, li):
        return -beta * np.exp(li), beta * np.exp(ls) - gamma

    _, kept = rk4_saves(rate, (log_s, log_i), STEP, round(SAVE_EVERY / STEP), 10)
    log_i_kept = torch.from_numpy(kept)  # (n, 10)
    return log_i_kept.clamp(max=0.0).reshape(*shape, 10).to(theta.device)


def simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """sbibm's SIR simulator, counts divided by 1000: ``theta`` ``(n, 2)`` -> ``(n, 1, 10)``."""
    p = log_infected(theta).exp()
    counts = torch.binomial(torch.full_like(p, float(TRIALS)), p, generator=generator)
    return (counts / TRIALS).to(theta.dtype).unsqueeze(1)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """``log p(x | theta)`` ``(..., N)`` for ``theta`` ``(..., 1, 2)`` and counts/1000 ``x`` ``(..., N, 10)``."""
    log_p = log_infected(theta)  # (..., 1, 10)
    log_q = torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))
    c = (x.double() * TRIALS).round()
    log_choose = (math.lgamma(TRIALS + 1) - torch.lgamma(c + 1) - torch.lgamma(TRIALS - c + 1))
    terms = log_choose + torch.where(c > 0, c * log_p, 0.0) + torch.where(c < TRIALS, (TRIALS - c) * log_q, 0.0)
    return terms.sum(-1).to(x.dtype)


def prior() -> GaussianMixture:
    """The task's prior on the log-warped space: one Gaussian component, exact."""
    from .sbibm_tasks import diagonal_gaussian

    return diagonal_gaussian(PRIOR_LOC, PRIOR_SD)


def meta_prior(nominal: GaussianMixture):
    """Priors the model is trained for, on the log-warped space: around the task's prior (the mean moved by about
    0.4 prior sd, scales 0.3-1.5x), then moved as a whole by about 0.3 on each log axis."""
    from .sbibm_tasks import Moved

    nearby = dfm.meta_priors.around(nominal.to(torch.float32), shift=0.4, scale=(0.3, 1.5), weight_noise=0.0)
    return Moved(nearby, 0.3)


def problem():
    return dfm.problems.from_simulator(simulate, support=["positive", "positive"], meta_prior=meta_prior(prior()),
                                       max_observations=1, observation_dim=10, log_likelihood=log_likelihood,
                                       name="sbibm-sir")


class LogNormalPrior(torch.distributions.Distribution):
    """A mixture on the log-warped space as a prior on the original (positive) space, for sbi."""

    arg_constraints: dict = {}
    support = torch.distributions.constraints.independent(torch.distributions.constraints.positive, 1)

    def __init__(self, base: GaussianMixture) -> None:
        from distformer.distributions.transforms import Warp, WarpedGaussianMixture

        self.warped = WarpedGaussianMixture(base.to(torch.float32), Warp(["log"] * base.dim))
        super().__init__(event_shape=torch.Size([base.dim]), validate_args=False)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.warped.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.warped.log_prob(value)

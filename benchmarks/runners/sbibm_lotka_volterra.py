r"""sbibm's ``lotka_volterra`` task written as a user of this library would write it: a predator-prey ODE, log-normal
observation noise, four positive rates with a log-normal prior, and an importance-sampling reference.

The task (sbibm 1.1.0): :math:`\theta = (\alpha, \beta, \gamma, \delta)`, :math:`\log\theta\sim\mathcal N(\mu, 0.5^2 I)`
with :math:`\mu = (-0.125, -3, -0.125, -3)`; prey :math:`x` and predators :math:`y` from :math:`(x, y)(0) = (30, 1)`,

.. math::
    x' = \alpha x - \beta x y,\qquad y' = -\gamma y + \delta x y,

kept at days :math:`t_k = 2.1k`, :math:`k = 0..9` (sbibm saves every 0.1 day and keeps every 21st), and twenty
readings :math:`\log r \sim \mathcal N(\log \operatorname{clamp}(u(t_k), 10^{-10}, 10^4),\ 0.1^2)`, the ten prey
counts first, then the ten predator counts (sbibm's order).

**What the model reads.** The log of sbibm's twenty readings, as one 20-number observation (the readings are a time
series, not exchangeable). The log-normal density of a reading differs from the normal density of its log by the
Jacobian :math:`1/r`, which does not depend on :math:`\theta`, so the likelihood below gives the same posterior as
sbibm's. NPE reads sbibm's raw readings, as its files give them.

**The ODE** is solved in :math:`(p, q) = (\log x, \log y)`: :math:`p' = \alpha - \beta e^q`,
:math:`q' = -\gamma + \delta e^p`, by fixed-step RK4 with ``STEP`` days (``STEPS_PER_SAVE`` steps between kept days,
float64). Against scipy's DOP853 at a relative tolerance of 1e-11 the largest error of a kept log count was 2e-6 on
draws near sbibm's first posterior and 1.6e-3 on 200 draws of the prior (against a reading noise of 0.1). A draw far
in the prior's tails whose populations leave :math:`[e^{-50}, e^{20}]` is held at that bound, where its readings are
clamped anyway (sbibm's solver returns NaN for some of these).

**Priors.** The task's prior is exactly one Gaussian on the log-warped space; the model is trained on priors around it
(``sbibm_sir.meta_prior``, as for sir), and the changed priors move its mean by half a prior sd per axis or halve its
sds (``sbibm_tasks.changed``).

**Reference under a changed prior.** The posterior is 10-40 times narrower than the prior, so no grid reaches it in
four dimensions. As for slcp, it is importance sampling with the task's likelihood from a Gaussian mixture fitted to
sbibm's samples for the same observation (``sbibm_tasks.fitted_reference``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

import distformer as dfm
from distformer.distributions.gmm import GaussianMixture

DIM = 4
START = (30.0, 1.0)
SAVE_EVERY = 2.1  # days between kept readings: days 0, 2.1, ..., 18.9
SAVES = 10
STEPS_PER_SAVE = 60
STEP = SAVE_EVERY / STEPS_PER_SAVE
NOISE = 0.1
COUNT_RANGE = (1e-10, 1e4)  # sbibm clamps the populations to this before the noise
LOG_STATE_RANGE = (-50.0, 20.0)
PRIOR_LOC = (-0.125, -3.0, -0.125, -3.0)
PRIOR_SD = (0.5, 0.5, 0.5, 0.5)
FIT_COMPONENTS = 4  # of the reference's proposal
WIDEN = 1.5
REFERENCE_DRAWS = 100_000


def log_populations(theta: Tensor) -> Tensor:
    """:math:`\\log\\operatorname{clamp}(u(t_k))` ``(..., 20)`` for ``theta`` ``(..., 4)``: the ten log prey counts,
    then the ten log predator counts (module docstring), float64."""
    from .sbibm_tasks import rk4_saves

    shape = theta.shape[:-1]
    flat = theta.reshape(-1, DIM).detach().cpu().double().numpy()
    alpha, beta, gamma, delta = flat.T
    def rate(p, q):
        return alpha - beta * np.exp(q), delta * np.exp(p) - gamma

    start = (np.full(len(flat), math.log(START[0])), np.full(len(flat), math.log(START[1])))
    out = np.concatenate(rk4_saves(rate, start, STEP, STEPS_PER_SAVE, SAVES, LOG_STATE_RANGE), -1)
    out = np.clip(out, math.log(COUNT_RANGE[0]), math.log(COUNT_RANGE[1]))
    return torch.from_numpy(out).reshape(*shape, 2 * SAVES).to(theta.device)


def simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """sbibm's simulator, the readings' logs: ``theta`` ``(n, 4)`` -> ``(n, 1, 20)``."""
    mean = log_populations(theta)
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    return (mean + NOISE * noise).to(theta.dtype).unsqueeze(1)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """``log p(x | theta)`` ``(..., N)`` for ``theta`` ``(..., 1, 4)`` and log readings ``x`` ``(..., N, 20)``."""
    mean = log_populations(theta)  # (..., 1, 20)
    z = (x.double() - mean) / NOISE
    terms = -0.5 * z**2 - math.log(NOISE * math.sqrt(2 * math.pi))
    return terms.sum(-1).to(x.dtype)


def prior() -> GaussianMixture:
    """The task's prior on the log-warped space: one Gaussian component, exact."""
    from .sbibm_tasks import diagonal_gaussian

    return diagonal_gaussian(PRIOR_LOC, PRIOR_SD)


def problem():
    from .sbibm_sir import meta_prior

    return dfm.problems.from_simulator(simulate, support=["positive"] * DIM, meta_prior=meta_prior(prior()),
                                       max_observations=1, observation_dim=2 * SAVES, log_likelihood=log_likelihood,
                                       name="sbibm-lotka-volterra")

r"""``lti``: a linear time-invariant state-space model, where the exact (Gaussian-sum) Kalman filter is the reference.

.. math::
    x_0\sim p_0 = \text{a } K\text{-component GMM from the linear-gaussian meta-prior},\qquad
    x_t = A x_{t-1} + w_t,\ w_t\sim\mathcal N(0, q^2 I),\qquad z_{t,i} = x_t + v_{t,i},\ v\sim\mathcal N(0, I),

with :math:`A = \rho\,R(\omega)` (a rotation by :math:`\omega` damped by :math:`\rho`) and
:math:`N_t\sim\mathcal U\{1..N_{\max}\}` observations per step, all missing at a step with probability
``p_missing``. Defaults: :math:`D=2`, :math:`\rho=0.95`, :math:`\omega=10^\circ`, :math:`q=0.3`, :math:`N_{\max}=5`,
``p_missing`` 0.1. Each update is the ``linear-gaussian`` problem (unit-noise observations of the state), so the
shipped ``linear-gaussian-2d`` model is the single-step update; the stationary state sd
:math:`q/\sqrt{1-\rho^2}\approx 1` keeps the beliefs inside its training family.

The exact filter is :class:`~distformer.filtering.Filter` with the exact per-component Kalman update: linear
motion and linear-Gaussian updates keep a mixture a mixture with the same ``K``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..observations import Observations
from .linear_gaussian import LinearGaussian


@dataclass(frozen=True)
class Series:
    """Simulated series: prior ``p(x_0)`` (batch ``(n,)``), states ``(T, n, D)``, data with batch ``(T, n)``."""

    prior: GaussianMixture
    states: Tensor
    observations: Observations


class LTI:
    """The ``lti`` state-space model (see the module docstring)."""

    name = "lti"

    def __init__(self, dim: int = 2, damping: float = 0.95, angle_degrees: float = 10.0, process_sd: float = 0.3,
                 max_observations: int = 5, p_missing: float = 0.1) -> None:
        if dim != 2:
            raise ValueError(f"Expected dim=2 (the rotation is planar), but got {dim}.")
        if not 0 < damping < 1 or process_sd <= 0 or max_observations < 1 or not 0 <= p_missing < 1:
            raise ValueError(f"Expected 0 < damping < 1, process_sd > 0, max_observations >= 1 and 0 <= p_missing < 1, "
                             f"but got {damping}, {process_sd}, {max_observations}, {p_missing}.")
        self.dim, self.max_observations, self.p_missing = dim, max_observations, p_missing
        c, s = math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))
        self.A = damping * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        self.Q = process_sd**2 * torch.eye(dim, dtype=torch.float64)
        self.H = torch.eye(dim, dtype=torch.float64)
        self.R = torch.eye(dim, dtype=torch.float64)
        self.initial = LinearGaussian(dim=dim)
        self.sources = {"z": dim}

    def simulate(self, num_series: int, steps: int, generator: torch.Generator | None = None) -> Series:
        """``num_series`` independent series of ``steps`` steps (float64)."""
        prior = self.initial.sample_meta_prior(num_series, generator=generator).to(torch.float64)
        x = prior.sample(generator=generator)
        L = torch.linalg.cholesky(self.Q)
        states, values, masks = [], [], []
        N = self.max_observations
        for t in range(steps):
            if t > 0:
                x = x @ self.A.T + torch.randn(num_series, self.dim, generator=generator, dtype=torch.float64) @ L.T
            count = torch.randint(1, N + 1, (num_series,), generator=generator)
            count = torch.where(torch.rand(num_series, generator=generator) < self.p_missing, 0, count)
            z = x.unsqueeze(-2) + torch.randn(num_series, N, self.dim, generator=generator, dtype=torch.float64)
            states.append(x)
            values.append(z)
            masks.append(torch.arange(N) < count.unsqueeze(-1))
        return Series(prior, torch.stack(states), Observations({"z": torch.stack(values)}, {"z": torch.stack(masks)}))

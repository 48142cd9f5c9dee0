r"""``stochastic-volatility``: factor log-volatilities seen through the covariance of many returns (paper 4.3.2).

Latent :math:`x\in\mathbb R^{10}`: the log-variances of 10 factors, independent discretised OU processes,
and 30 returns per step whose covariance depends on :math:`x`:

.. math::
    x_t = \alpha + \delta\odot x_{t-1} + \sigma\odot\varepsilon_t,\qquad
    r_t \sim \mathcal N\big(0,\ \Sigma(x_t)\big),\qquad \Sigma(x) = F\operatorname{diag}(e^{x})F^\top + I_{30},

with loadings :math:`F\in\mathbb R^{30\times 10}`, entries :math:`\mathcal N(0,1)` drawn once from a fixed seed (known
to every method). Defaults :math:`\delta=0.95`, :math:`\sigma=0.3`, :math:`\alpha=0`, so the stationary law is
:math:`\mathcal N(0, \sigma^2/(1-\delta^2) I)` (sd 0.96). The returns' mean does not depend on :math:`x`, so an EKF
or UKF sees no information in them. The likelihood is evaluated through Woodbury's identity with
:math:`M(x) = \operatorname{diag}(e^{-x}) + F^\top F`:

.. math::
    r^\top\Sigma^{-1}r = r^\top r - (F^\top r)^\top M^{-1}(F^\top r),\qquad
    \log\det\Sigma = \log\det M + \textstyle\sum_k x_k,

a 10 x 10 Cholesky per state instead of 30 x 30. All 30 returns of a step form one observation (source
``returns``, 30 numbers).

Single-step training problem: a prior from the meta-prior, :math:`x` from it, one vector of returns. Meta-prior over
``K``-component priors: weights :math:`\mathrm{Dirichlet}(\mathbf 1)`, means :math:`\mathcal N(0, s_\mu^2 I)`,
covariances :math:`U\operatorname{diag}(s^2)U^\top` with a random rotation and
:math:`\log s\sim\mathcal U(\log s_{\min}, \log s_{\max})`; defaults :math:`K=4`, :math:`s_\mu=1`,
:math:`[s_{\min}, s_{\max}] = [0.25, 1.5]`: a predicted belief has sd at least :math:`\sigma = 0.3` in every
direction, and the stationary sd is 0.96.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..observations import Observations, as_observations
from .base import Problem, replicated_gaussian
from .linear_gaussian import describe_random_gmm_priors, random_gmm_priors
from .lti import Series


class StochasticVolatility(Problem):
    """Factor stochastic volatility (see the module docstring)."""

    name = "stochastic-volatility"

    def __init__(self, factors: int = 10, returns: int = 30, persistence: float = 0.95, volatility_sd: float = 0.3,
                 level: float = 0.0, num_components: int = 4, mean_scale: float = 1.0, min_std: float = 0.25,
                 max_std: float = 1.5, loadings_seed: int = 0) -> None:
        if factors < 1 or returns < 1 or num_components < 1:
            raise ValueError(f"Expected factors, returns and num_components >= 1, but got {factors}, {returns}, "
                             f"{num_components}.")
        if not 0 < persistence < 1 or volatility_sd <= 0 or not 0 < min_std <= max_std or mean_scale < 0:
            raise ValueError(f"Expected 0 < persistence < 1, volatility_sd > 0, 0 < min_std <= max_std and "
                             f"mean_scale >= 0, but got {persistence}, {volatility_sd}, {min_std}, {max_std}, "
                             f"{mean_scale}.")
        self.dim, self.num_returns, self.num_components = factors, returns, num_components
        self.persistence, self.volatility_sd, self.level = persistence, volatility_sd, level
        self.mean_scale, self.min_std, self.max_std, self.loadings_seed = mean_scale, min_std, max_std, loadings_seed
        self.sources = {"returns": returns}
        g = torch.Generator().manual_seed(loadings_seed)
        self.F = torch.randn(returns, factors, generator=g, dtype=torch.float64)
        self.A = persistence * torch.eye(factors, dtype=torch.float64)
        self.b = torch.full((factors,), level * (1 - persistence), dtype=torch.float64)
        self.Q = volatility_sd**2 * torch.eye(factors, dtype=torch.float64)
        self.stationary_variance = volatility_sd**2 / (1 - persistence**2)

    def options(self) -> dict:
        return {"factors": self.dim, "returns": self.num_returns, "persistence": self.persistence,
                "volatility_sd": self.volatility_sd, "level": self.level, "num_components": self.num_components,
                "mean_scale": self.mean_scale, "min_std": self.min_std, "max_std": self.max_std,
                "loadings_seed": self.loadings_seed}

    def describe(self) -> dict:
        return super().describe() | {
            "meta_prior": describe_random_gmm_priors(self.num_components, self.mean_scale, self.min_std,
                                                     self.max_std, mean_offset=self.level),
            "likelihood": (f"{self.num_returns} returns r ~ N(0, F diag(exp x) F^T + I), F ({self.num_returns} x "
                           f"{self.dim}) with N(0, 1) entries from seed {self.loadings_seed}"),
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        return random_gmm_priors(n, self.num_components, self.dim, self.mean_scale, self.min_std, self.max_std,
                                 generator, mean_offset=self.level)

    def draw_returns(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One vector of returns ``(*B, R)`` for log-volatilities ``x`` ``(*B, D)``."""
        F = self.F.to(x.dtype)
        factors = torch.exp(0.5 * x) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        noise = torch.randn(*x.shape[:-1], self.num_returns, generator=generator, dtype=x.dtype)
        return factors @ F.T + noise

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        returns = self.draw_returns(theta, generator).unsqueeze(-2)
        return Observations({"returns": returns}, {"returns": torch.ones(returns.shape[:-1], dtype=torch.bool)})

    def returns_log_likelihood(self, x: Tensor, r: Tensor) -> Tensor:
        """``log N(r; 0, F diag(e^x) F^T + I)`` by Woodbury (module docstring); ``x`` ``(..., D)``, ``r`` ``(..., R)``
        broadcast; returns ``(...)``."""
        F = self.F.to(x.dtype)
        M = torch.diag_embed(torch.exp(-x)) + F.T @ F
        L = torch.linalg.cholesky(M)
        u = (r.to(x.dtype) @ F).unsqueeze(-1)
        u = u.expand(*torch.broadcast_shapes(u.shape[:-2], L.shape[:-2]), *u.shape[-2:])
        v = torch.linalg.solve_triangular(L, u, upper=False).squeeze(-1)
        quad = r.to(x.dtype).pow(2).sum(-1) - v.pow(2).sum(-1)
        log_det = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1) + x.sum(-1)
        return -0.5 * (quad + log_det + self.num_returns * math.log(2 * math.pi))

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        """Sum over present return vectors; ``theta`` ``(*S, *B, D)``, data with batch ``B``; returns ``(*S, *B)``."""
        obs = as_observations(observations, self.sources)
        r, mask = obs.values["returns"], obs.masks["returns"]  # (*B, N, R), (*B, N)
        per = self.returns_log_likelihood(theta.unsqueeze(-2), r)  # (*S, *B, N)
        return torch.where(mask, per, torch.zeros((), dtype=per.dtype)).sum(-1)

    def initial_prior(self, n: int, dtype: torch.dtype = torch.float64) -> GaussianMixture:
        """The stationary law ``N(level, sigma^2 / (1 - delta^2) I)`` as ``K`` components (batch ``(n,)``)."""
        D = self.dim
        return replicated_gaussian(torch.full((D,), self.level, dtype=dtype),
                                   self.stationary_variance * torch.eye(D, dtype=dtype), self.num_components, n)

    def simulate_series(self, num_series: int, steps: int, generator: torch.Generator | None = None) -> Series:
        """``num_series`` series of ``steps`` steps (float64), starting from the stationary law."""
        prior = self.initial_prior(num_series)
        x = self.level + math.sqrt(self.stationary_variance) * torch.randn(num_series, self.dim, generator=generator,
                                                                           dtype=torch.float64)
        states, returns = [], []
        for t in range(steps):
            if t > 0:
                x = self.b + self.persistence * x + self.volatility_sd * torch.randn(
                    num_series, self.dim, generator=generator, dtype=torch.float64)
            states.append(x)
            returns.append(self.draw_returns(x, generator))
        r = torch.stack(returns).unsqueeze(-2)  # (T, n, 1, R)
        return Series(prior, torch.stack(states),
                      Observations({"returns": r}, {"returns": torch.ones(r.shape[:-1], dtype=torch.bool)}))

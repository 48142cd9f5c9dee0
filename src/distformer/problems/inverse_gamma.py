r"""Inverse-gamma prior on a variance, normal observations with known mean: the paper's analytical check (4.1).

Prior and likelihood, for a prior with parameters :math:`\phi = (\alpha, \beta)`:

.. math::
    x = \sigma^2 \sim \mathrm{InvGamma}(\alpha, \beta),\qquad z_i\mid\sigma^2 \sim \mathcal N(0, \sigma^2),\ i=1..N,

with the conjugate posterior in closed form

.. math::
    \sigma^2 \mid z \sim \mathrm{InvGamma}\Big(\alpha + \tfrac N2,\ \beta + \tfrac12\textstyle\sum_i z_i^2\Big).

Meta-priors over :math:`(\alpha, \beta)`, independent: ``wide`` :math:`\mathrm{InvGamma}(4, 6)` for each (mean 2,
standard deviation 1.4), ``narrow`` :math:`\mathrm{InvGamma}(10000, 20000)` for each (the same mean, almost a
point mass), and ``broad``: half the priors from ``wide``, half with :math:`\log\alpha` and :math:`\log\beta`
uniform on :math:`[\log 0.1, \log 500]` and :math:`[\log 0.01, \log 100]`. The problem is scale-equivariant (:math:`\sigma^2\mapsto c\sigma^2` maps
:math:`z\mapsto\sqrt c z` and :math:`\beta\mapsto c\beta`), which anchored models use exactly
(``nn/structure.py``). The prior is parametric: the model reads :math:`(\log\alpha, \log\beta)` through its prior encoder
and works on :math:`\log\sigma^2` (a ``log`` warp); observations are read through :math:`\operatorname{asinh}`
because :math:`z` spans several orders of magnitude under the wide meta-prior.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, InverseGamma

from ..observations import Observations, as_observations
from .base import Problem
from .sampling import inverse_gamma, log_standard_gamma

META_PRIORS = {"wide": (4.0, 6.0), "narrow": (10000.0, 20000.0), "broad": None}
BROAD_ALPHA = (0.1, 500.0)  # the broad meta-prior: log alpha and log beta uniform on these ranges
BROAD_BETA = (0.01, 100.0)


class InverseGammaPosterior(Distribution):
    """``InvGamma(concentration, rate)`` over a 1-vector (event shape ``(1,)``), batch ``concentration.shape``;
    ``sample`` takes an explicit generator, and ``to`` changes dtype, like the library's mixtures."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, concentration: Tensor, rate: Tensor) -> None:
        self.concentration, self.rate = torch.broadcast_tensors(concentration, rate)
        for name, value in (("concentration", self.concentration), ("rate", self.rate)):
            if not bool((torch.isfinite(value) & (value > 0)).all()):
                raise ValueError(f"Expected a finite, positive inverse-gamma {name}, but got "
                                 f"{value[~(torch.isfinite(value) & (value > 0))].flatten()[:3].tolist()} among its values.")
        super().__init__(self.concentration.shape, torch.Size([1]), validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        """``(*S, *B)`` for values ``(*S, *B, 1)``; ``-inf`` at non-positive values."""
        v = x[..., 0]
        safe = torch.where(v > 0, v, torch.ones_like(v))
        lp = InverseGamma(self.concentration, self.rate, validate_args=False).log_prob(safe)
        return torch.where(v > 0, lp, torch.full_like(lp, -torch.inf))

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return inverse_gamma(self.concentration.expand(shape), self.rate.expand(shape), generator).unsqueeze(-1)

    @property
    def mean(self) -> Tensor:
        """``rate / (concentration - 1)`` (``inf`` where ``concentration <= 1``), shape ``(*B, 1)``."""
        m = self.rate / (self.concentration - 1)
        return torch.where(self.concentration > 1, m, torch.full_like(m, torch.inf)).unsqueeze(-1)

    def to(self, *args, **kwargs) -> "InverseGammaPosterior":
        return InverseGammaPosterior(self.concentration.to(*args, **kwargs), self.rate.to(*args, **kwargs))

    def __getitem__(self, index) -> "InverseGammaPosterior":
        return InverseGammaPosterior(self.concentration[index], self.rate[index])


class InverseGammaVariance(Problem):
    """Variance ``sigma^2`` with an inverse-gamma prior, ``N`` zero-mean normal readings (module docstring)."""

    name = "inverse-gamma"
    dim = 1
    warp = ("log",)
    prior_parameters = {"alpha": "log", "beta": "log"}
    source_transforms = {"z": "asinh"}
    scale_source = "z"  # sigma^2 -> c sigma^2 maps z -> sqrt(c) z
    scale_parameter = "beta"  # and InvGamma(alpha, beta) -> InvGamma(alpha, c beta)

    def __init__(self, meta_prior: str = "wide", num_components: int = 5, num_observations: int = 1) -> None:
        if meta_prior not in META_PRIORS:
            raise ValueError(f"Expected meta_prior among {sorted(META_PRIORS)}, but got {meta_prior!r}.")
        if num_components < 1 or num_observations < 1:
            raise ValueError(f"Expected num_components >= 1 and num_observations >= 1, but got {num_components} "
                             f"and {num_observations}.")
        self.meta_prior = meta_prior
        self.num_components = num_components
        self.num_observations = num_observations
        self.sources = {"z": 1}

    def options(self) -> dict:
        return {"meta_prior": self.meta_prior, "num_components": self.num_components,
                "num_observations": self.num_observations}

    def describe(self) -> dict:
        if self.meta_prior == "broad":
            meta = (f"half the priors alpha, beta ~ InvGamma(4, 6) each (the wide meta-prior), half log alpha ~ "
                    f"U(log {BROAD_ALPHA[0]:g}, log {BROAD_ALPHA[1]:g}), log beta ~ U(log {BROAD_BETA[0]:g}, log "
                    f"{BROAD_BETA[1]:g}) (broad)")
        else:
            a, b = META_PRIORS[self.meta_prior]
            meta = f"alpha ~ InvGamma({a:g}, {b:g}), beta ~ InvGamma({a:g}, {b:g}) ({self.meta_prior})"
        return super().describe() | {
            "meta_prior": meta,
            "prior": "sigma^2 ~ InvGamma(alpha, beta); model works on log sigma^2",
            "likelihood": f"N={self.num_observations} readings z_i ~ N(0, sigma^2)",
            "exact_posterior": "InvGamma(alpha + N/2, beta + sum z^2 / 2)",
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Prior parameters ``(n, 2)``: columns ``alpha``, ``beta``."""
        if self.meta_prior == "broad":
            lo = torch.tensor([BROAD_ALPHA[0], BROAD_BETA[0]], dtype=torch.float64).log()
            hi = torch.tensor([BROAD_ALPHA[1], BROAD_BETA[1]], dtype=torch.float64).log()
            spread = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=generator, dtype=torch.float64))
            shape = torch.full((n, 2), META_PRIORS["wide"][0], dtype=torch.float64)
            wide = inverse_gamma(shape, torch.full_like(shape, META_PRIORS["wide"][1]), generator)
            return torch.where(torch.rand(n, 1, generator=generator, dtype=torch.float64) < 0.5, wide, spread).float()
        a, b = META_PRIORS[self.meta_prior]
        shape = torch.full((n, 2), a, dtype=torch.float64)
        return inverse_gamma(shape, torch.full_like(shape, b), generator).float()

    def sample_parameters(self, prior: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``sigma^2`` ``(n, 1)`` from the priors ``(n, 2)``, kept inside ``[1e-30, 1e30]`` (a heavy-tailed prior,
        small ``alpha``, can draw values beyond float32's range)."""
        p = prior.double()
        return inverse_gamma(p[:, :1], p[:, 1:], generator).clamp(1e-30, 1e30).to(prior.dtype)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        n = theta.shape[0]
        eps = torch.randn(n, self.num_observations, 1, generator=generator, dtype=torch.float64)
        z = theta.double().sqrt().unsqueeze(-2) * eps
        return as_observations(z.to(theta.dtype), self.sources)

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        r""":math:`\sum_i m_i\log\mathcal N(z_i; 0, \sigma^2)` for ``theta`` ``(*S, *B, 1)``; returns ``(*S, *B)``."""
        obs = as_observations(observations, self.sources)
        z, mask = obs.values["z"][..., 0].to(theta.dtype), obs.masks["z"]  # (*B, N)
        var = theta[..., :1]  # (*S, *B, 1), broadcasts over N
        per_obs = -0.5 * (z**2 / var + torch.log(var) + math.log(2 * math.pi))
        return torch.where(mask, per_obs, torch.zeros((), dtype=theta.dtype)).sum(-1)

    def warped_target(self, prior: Tensor, observations):
        r"""The prior of :math:`u = \log\sigma^2` (``InvGamma(alpha, beta)`` at :math:`e^u` times :math:`e^u`) and
        the likelihood at :math:`\sigma^2 = e^u`, for ``refine`` and ``check="importance"``."""
        from .base import WarpedPrior

        p = prior.double()
        a, b = p[..., 0], p[..., 1]

        def log_prob(u):
            u = u[..., 0]
            return a * torch.log(b) - torch.lgamma(a) - a * u - b * torch.exp(-u)

        def sample(shape, generator):  # log(b / G_a), exact in the tails where sigma^2 itself would overflow
            return (torch.log(b).expand(shape + b.shape) - log_standard_gamma(a.expand(shape + a.shape), generator)
                    ).unsqueeze(-1)

        return WarpedPrior(log_prob, sample), lambda u, obs: self.log_likelihood(torch.exp(u), obs)

    def exact_posterior(self, prior: Tensor, observations) -> InverseGammaPosterior:
        """``InvGamma(alpha + N/2, beta + sum z^2/2)`` with event shape ``(1,)`` and the prior's batch shape."""
        if not torch.is_tensor(prior) or prior.shape[-1:] != (2,):
            raise ValueError(f"Expected prior parameters (alpha, beta) of shape (*B, 2), but got "
                             f"{tuple(prior.shape) if torch.is_tensor(prior) else type(prior).__name__}.")
        obs = as_observations(observations, self.sources)
        z, mask = obs.values["z"][..., 0].to(prior.dtype), obs.masks["z"]
        n = mask.sum(-1).to(prior.dtype)
        ss = torch.where(mask, z**2, torch.zeros((), dtype=prior.dtype)).sum(-1)
        alpha, beta = prior[..., 0] + 0.5 * n, prior[..., 1] + 0.5 * ss
        return InverseGammaPosterior(alpha, beta)

r"""GMM prior, linear-Gaussian observations: the problem with an exact posterior in closed form.

Meta-prior over ``K``-component priors on :math:`\mathbb R^D` (all draws independent):

.. math::
    w \sim \mathrm{Dirichlet}(\mathbf 1_K),\qquad \mu_k \sim \mathcal N(0, s_\mu^2 I),\qquad
    \Sigma_k = U_k\,\mathrm{diag}(\sigma_{k}^2)\,U_k^\top,\ \ \log\sigma_{kj}\sim\mathcal U(\log\sigma_{\min},\log\sigma_{\max}),

with :math:`U_k` a uniformly random rotation. Defaults: :math:`K=4`, :math:`s_\mu=3`,
:math:`[\sigma_{\min},\sigma_{\max}] = [0.1, 3]`.

Data: :math:`N\sim\mathcal U\{1,\dots,20\}` observations :math:`z_i = x + v_i`, :math:`v_i\sim\mathcal N(0, I)`.
The exact posterior is ``prior.condition_linear_gaussian(I, I, z)``.

With ``meta_prior="broad"`` the priors come from :func:`broad_gmm_priors`, a mixture of the families users write
(wide, narrow, strongly correlated, well separated, mixed scales, small weights), and ``N`` is uniform on
``1..20`` for half the problems and log-uniform on ``1..max_observations`` for the rest. Known noise :math:`R = \mathrm{diag}(r)^2`
of another scale is handled by rescaling with ``affine`` (see ``examples/rescaled_noise.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..observations import Observations, as_observations
from .base import Problem


def random_rotation(n: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniformly distributed rotation matrices ``(n, D, D)`` (QR of a Gaussian matrix, sign-corrected)."""
    return rotation_from_gaussian(torch.randn(n, dim, dim, generator=generator))


def rotation_from_gaussian(a: Tensor) -> Tensor:
    """The Q of ``a = QR`` ``(*, D, D)`` with the signs fixed so that R has a non-negative diagonal: Haar-distributed
    when ``a`` has independent standard normal entries. A zero on R's diagonal (``a`` singular in float32, about
    one 4x4 draw in 10^7) keeps its column's sign, where ``sign(0) = 0`` would zero the column and make a singular
    covariance."""
    q, r = torch.linalg.qr(a)
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * torch.where(diagonal < 0, -1.0, 1.0).to(q.dtype).unsqueeze(-2)


class LinearGaussian(Problem):
    """``z_i = x + v_i``, ``v_i ~ N(0, I)``, under random ``K``-component GMM priors (see module docstring)."""

    name = "linear-gaussian"

    def __init__(self, dim: int = 2, num_components: int = 4, min_observations: int = 1,
                 max_observations: int = 20, mean_scale: float = 3.0, min_std: float = 0.1,
                 max_std: float = 3.0, meta_prior: str = "standard") -> None:
        if meta_prior not in META_PRIORS:
            raise ValueError(f"Expected meta_prior among {META_PRIORS}, but got {meta_prior!r}.")
        if dim < 1 or num_components < 1 or not 0 <= min_observations <= max_observations:
            raise ValueError(f"Expected dim >= 1, num_components >= 1 and 0 <= min_observations <= "
                             f"max_observations, but got {dim}, {num_components}, {min_observations}, "
                             f"{max_observations}.")
        if not 0 < min_std <= max_std or mean_scale < 0:
            raise ValueError(f"Expected 0 < min_std <= max_std and mean_scale >= 0, but got {min_std}, {max_std}, "
                             f"{mean_scale}.")
        self.dim = dim
        self.num_components = num_components
        self.min_observations = min_observations
        self.max_observations = max_observations
        self.mean_scale = mean_scale
        self.min_std = min_std
        self.max_std = max_std
        self.sources = {"z": dim}
        self.meta_prior = meta_prior

    location_source = "z"
    independent_observations = True

    def options(self) -> dict:
        options = {"dim": self.dim, "num_components": self.num_components, "min_observations": self.min_observations,
                   "max_observations": self.max_observations, "mean_scale": self.mean_scale,
                   "min_std": self.min_std, "max_std": self.max_std}
        return options | ({"meta_prior": self.meta_prior} if self.meta_prior != "standard" else {})

    def describe(self) -> dict:
        meta = describe_random_gmm_priors(self.num_components, self.mean_scale, self.min_std, self.max_std)
        if self.meta_prior == "broad":
            meta = BROAD_DESCRIPTION.format(K=self.num_components)
        return super().describe() | {
            "meta_prior": meta,
            "likelihood": (f"N ~ U{{{self.min_observations}..{self.max_observations}}} observations "
                           f"z_i = x + v_i, v_i ~ N(0, I_{self.dim})"),
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        if self.meta_prior == "broad":
            return broad_gmm_priors(n, self.num_components, self.dim, generator)
        return random_gmm_priors(n, self.num_components, self.dim, self.mean_scale, self.min_std, self.max_std,
                                 generator)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        n = theta.shape[0]
        N = self.max_observations
        count = torch.randint(self.min_observations, N + 1, (n,), generator=generator)
        if self.meta_prior == "broad":
            low = max(self.min_observations, 1)
            spread = torch.exp(math.log(low) + (math.log(N + 1) - math.log(low)) * torch.rand(n, generator=generator))
            small = torch.randint(low, min(N, 20) + 1, (n,), generator=generator)
            count = torch.where(torch.rand(n, generator=generator) < 0.5, small, spread.floor().long().clamp(low, N))
        z = theta.unsqueeze(-2) + torch.randn(n, N, self.dim, generator=generator, dtype=theta.dtype)
        mask = torch.arange(N).unsqueeze(0) < count.unsqueeze(-1)
        return as_observations(z, self.sources, mask)

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        r""":math:`\sum_i m_i \log\mathcal N(z_i; \theta, I)` over present observations; ``(*S, *B)``."""
        obs = as_observations(observations, self.sources)
        z, mask = obs.values["z"].to(theta.dtype), obs.masks["z"]  # (*B, N, D), (*B, N)
        sq = (z - theta.unsqueeze(-2)).pow(2).sum(-1)  # (*S, *B, N)
        per_obs = -0.5 * sq - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.where(mask, per_obs, torch.zeros((), dtype=theta.dtype)).sum(-1)

    def exact_posterior(self, prior: GaussianMixture, observations) -> GaussianMixture:
        obs = as_observations(observations, self.sources)
        eye = torch.eye(self.dim, dtype=prior.dtype)
        return prior.condition_linear_gaussian(eye, eye, obs.values["z"].to(prior.dtype), obs.masks["z"])


META_PRIORS = ("standard", "broad")

BROAD_DESCRIPTION = ("K={K} components; a mixture of families: 30% standard (means N(0, 3^2 I), log sd ~ U(log 0.1, "
                     "log 3)), 15% wide (means N(0, 30^2 I), log sd ~ U(log 3, log 300)), 15% narrow (log sd ~ "
                     "U(log 0.005, log 0.1)), 15% correlated (axis sd ratios up to 50, |rho| up to 0.9996), 10% "
                     "separated (means N(0, 8^2 I), sd 0.3-1), 15% mixed scales (log sd ~ U(log 0.01, log 30)); "
                     "covariances rotated at random; weights Dirichlet(1), or Dirichlet(0.2) in 30% of priors")


def broad_gmm_priors(n: int, K: int, D: int, generator: torch.Generator | None = None) -> GaussianMixture:
    """``n`` priors from the broad meta-prior (``BROAD_DESCRIPTION``), batch ``(n,)``."""
    family = torch.multinomial(torch.tensor([0.30, 0.15, 0.15, 0.15, 0.10, 0.15]), n, replacement=True,
                               generator=generator)
    #                     standard  wide   narrow  correlated separated mixed
    mean_scale = torch.tensor([3.0, 30.0, 3.0, 3.0, 8.0, 5.0])[family]
    low = torch.tensor([0.1, 3.0, 0.005, 0.1, 0.3, 0.01])[family].log()
    high = torch.tensor([3.0, 300.0, 0.1, 3.0, 1.0, 30.0])[family].log()
    log_std = low[:, None, None] + (high - low)[:, None, None] * torch.rand(n, K, D, generator=generator)
    correlated = (family == 3)[:, None, None]
    ratio = math.log(50.0) * torch.rand(n, K, D, generator=generator) * (torch.arange(D) > 0)
    log_std = torch.where(correlated, log_std[..., :1] - ratio, log_std)
    loc = mean_scale[:, None, None] * torch.randn(n, K, D, generator=generator)
    U = random_rotation(n * K, D, generator).reshape(n, K, D, D)
    std = log_std.exp()
    cov = U @ torch.diag_embed(std**2) @ U.transpose(-1, -2)
    concentration = torch.where(torch.rand(n, generator=generator) < 0.3, 0.2, 1.0)
    from .sampling import standard_gamma

    g = standard_gamma(concentration[:, None].expand(n, K).contiguous(), generator).clamp_min(1e-30)
    weights = g / g.sum(-1, keepdim=True)
    return GaussianMixture(weights, loc, covariance_matrix=0.5 * (cov + cov.transpose(-1, -2)))


def describe_random_gmm_priors(K: int, mean_scale, min_std: float, max_std: float, mean_offset: float = 0.0) -> str:
    """The meta-prior of :func:`random_gmm_priors` with these arguments, in words (a model card's ``meta_prior``)."""
    return (f"K={K} components; weights ~ Dirichlet(1); means ~ N({mean_offset:g}, {mean_scale}^2 I); covariances "
            f"U diag(s^2) U^T with U a random rotation and log s ~ U(log {min_std}, log {max_std})")


def random_gmm_priors(n: int, K: int, D: int, mean_scale: float | Tensor, min_std: float, max_std: float,
                      generator: torch.Generator | None = None, mean_offset: float = 0.0) -> GaussianMixture:
    """``n`` random ``K``-component priors on R^D (batch ``(n,)``): weights ``Dirichlet(1)``, means
    ``mean_offset + mean_scale * N(0, I)`` (``mean_scale`` a float or per-dimension ``(D,)``), covariances
    ``U diag(s^2) U^T`` with ``U`` a random rotation and ``log s ~ U(log min_std, log max_std)``."""
    weights = _dirichlet_ones(n, K, generator)
    loc = mean_offset + mean_scale * torch.randn(n, K, D, generator=generator)
    lo, hi = math.log(min_std), math.log(max_std)
    std = torch.exp(lo + (hi - lo) * torch.rand(n, K, D, generator=generator))
    U = random_rotation(n * K, D, generator).reshape(n, K, D, D)
    cov = U @ torch.diag_embed(std**2) @ U.transpose(-1, -2)
    return GaussianMixture(weights, loc, covariance_matrix=0.5 * (cov + cov.transpose(-1, -2)))


def _dirichlet_ones(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """``Dirichlet(1_k)`` draws ``(n, k)`` from normalised exponentials, with an explicit generator."""
    e = -torch.log(torch.rand(n, k, generator=generator).clamp_min(1e-30))
    return e / e.sum(-1, keepdim=True)

r"""GP regression with a hyperprior: the joint posterior of a function value and the lengthscale (paper 4.2.1).

A prior :math:`\phi = (m, s, a, b)` sets the GP's constant mean :math:`m` and output scale :math:`s`, and an
inverse-gamma prior on the RBF lengthscale :math:`\ell`:

.. math::
    \ell\sim\mathrm{InvGamma}(a, b),\qquad f\sim\mathcal{GP}\big(m,\ s^2\exp(-\lVert x-x'\rVert^2/2\ell^2)\big),\qquad
    y_i = f(x_i) + \varepsilon_i,\ \varepsilon_i\sim\mathcal N(0, \sigma_n^2),

with inputs :math:`x_{1..N}` and a query :math:`x_\star` uniform on :math:`[0, h]^d`. The latent is
:math:`\theta = (f(x_\star), \ell)`, modelled on :math:`(f(x_\star), \log\ell)`; a priori
:math:`f(x_\star)\sim\mathcal N(m, s^2)` independently of :math:`\ell`. Given :math:`\ell` everything is Gaussian:

.. math::
    p(\ell\mid y) \propto p(\ell)\,\mathcal N(y;\ m\mathbf 1,\ K_\ell + \sigma_n^2 I),\qquad
    f(x_\star)\mid\ell, y \sim \mathcal N\big(m + k_\ell^\top (K_\ell+\sigma_n^2I)^{-1}(y - m\mathbf 1),\
    s^2 - k_\ell^\top(K_\ell+\sigma_n^2I)^{-1}k_\ell\big),

so the reference posterior is a 1-D quadrature over :math:`\log\ell` (``reference_log_prob``): exact up to
quadrature error. Variants: ``5d`` (the paper's Table 2: :math:`d = 5`, :math:`h = 5`, :math:`N = 5`,
:math:`m\sim\mathcal U(-0.1, 0.1)`, :math:`s\sim\mathcal U(0.9, 1.1)`, :math:`a\sim\mathcal U(100, 105)`,
:math:`b\sim\mathcal U(100, 700)`) and ``1d`` (its Figure 4 and code: :math:`d = 1`, :math:`h = 10`,
:math:`N = 5`, :math:`a, b\sim\mathcal U(1, 2)`, the same :math:`m, s`). :math:`\sigma_n^2 = 10^{-3}` in both.

Observations: source ``data`` with one token :math:`[x_i, y_i]` per point, and source ``query`` with the one
token :math:`x_\star`. The kernel depends on :math:`x_i - x_\star` alone, so models trained here embed the data
tokens as :math:`[x_i - x_\star, y_i]` (``relative_sources``); the observations themselves stay absolute.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..observations import Observations, as_observations
from .base import Batch, Problem
from .sampling import inverse_gamma

VARIANTS = {
    "5d": dict(input_dim=5, input_high=5.0, num_points=5, mean=(-0.1, 0.1), scale=(0.9, 1.1), alpha=(100.0, 105.0),
               beta=(100.0, 700.0)),
    "1d": dict(input_dim=1, input_high=10.0, num_points=5, mean=(-0.1, 0.1), scale=(0.9, 1.1), alpha=(1.0, 2.0),
               beta=(1.0, 2.0)),
}
NOISE_VARIANCE = 1e-3


def rbf(x1: Tensor, x2: Tensor, lengthscale: Tensor, scale: Tensor) -> Tensor:
    """``s^2 exp(-|x1 - x2|^2 / 2 l^2)``: ``x1`` ``(..., P, d)``, ``x2`` ``(..., Q, d)``, ``l, s`` ``(...)`` -> ``(..., P, Q)``."""
    sq = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).pow(2).sum(-1)
    return scale[..., None, None] ** 2 * torch.exp(-0.5 * sq / lengthscale[..., None, None] ** 2)


class GPHyperprior(Problem):
    """Joint posterior of ``(f(x*), lengthscale)`` for an RBF GP under a hyperprior (module docstring)."""

    name = "gp-hyperprior"
    dim = 2
    warp = ("identity", "log")
    prior_parameters = {"mean": "identity", "scale": "log", "alpha": "log", "beta": "log"}
    relative_sources = {"data": "query"}  # the RBF kernel is translation invariant: models read x_i - x*

    def __init__(self, variant: str = "5d", num_components: int = 10) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"Expected variant among {sorted(VARIANTS)}, but got {variant!r}.")
        if num_components < 1:
            raise ValueError(f"Expected num_components >= 1, but got {num_components}.")
        self.variant, self.num_components = variant, num_components
        self.settings = VARIANTS[variant]
        d = self.settings["input_dim"]
        self.sources = {"data": d + 1, "query": d}

    def options(self) -> dict:
        return {"variant": self.variant, "num_components": self.num_components}

    def describe(self) -> dict:
        s = self.settings
        return super().describe() | {
            "meta_prior": (f"mean ~ U{s['mean']}, scale ~ U{s['scale']}, alpha ~ U{s['alpha']}, beta ~ U{s['beta']}"),
            "prior": "f(x*) ~ N(mean, scale^2); lengthscale ~ InvGamma(alpha, beta); model works on (f(x*), log l)",
            "likelihood": (f"{s['num_points']} points x ~ U(0, {s['input_high']})^{s['input_dim']}, y = f(x) + "
                           f"N(0, {NOISE_VARIANCE}); RBF GP with the prior's mean and scale; query x* likewise"),
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Prior parameters ``(n, 4)``: ``mean``, ``scale``, ``alpha``, ``beta``, each uniform on its range."""
        ranges = torch.tensor([self.settings[k] for k in ("mean", "scale", "alpha", "beta")], dtype=torch.float64)
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        return (ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])).float()

    def sample_parameters(self, prior: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(f(x*), l)`` ``(n, 2)`` from the prior alone (independent a priori)."""
        p = prior.double()
        f = p[:, 0] + p[:, 1] * torch.randn(len(p), generator=generator, dtype=torch.float64)
        ell = inverse_gamma(p[:, 2], p[:, 3], generator)
        return torch.stack([f, ell], -1).to(prior.dtype)

    def sample_batch(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Prior, then inputs, then ``f`` at the inputs and the query jointly, then noisy outputs."""
        s = self.settings
        prior = self.sample_meta_prior(n, generator)
        p = prior.double()
        ell = inverse_gamma(p[:, 2], p[:, 3], generator)
        N, d = s["num_points"], s["input_dim"]
        x = s["input_high"] * torch.rand(n, N + 1, d, generator=generator, dtype=torch.float64)  # last = query
        K = rbf(x, x, ell, p[:, 1]) + 1e-9 * torch.eye(N + 1, dtype=torch.float64)
        L = torch.linalg.cholesky(K)
        f = p[:, :1] + (L @ torch.randn(n, N + 1, 1, generator=generator, dtype=torch.float64))[..., 0]
        y = f[:, :N] + math.sqrt(NOISE_VARIANCE) * torch.randn(n, N, generator=generator, dtype=torch.float64)
        theta = torch.stack([f[:, N], ell], -1)
        data = torch.cat([x[:, :N], y.unsqueeze(-1)], -1)
        obs = as_observations({"data": data.float(), "query": x[:, N:].float()}, self.sources)
        return Batch(prior, theta.float(), obs)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        raise NotImplementedError("gp-hyperprior simulates prior, parameters and data jointly: use sample_batch.")

    def log_likelihood(self, theta: Tensor, observations, prior: Tensor | None = None) -> Tensor:
        r"""``log p(y | f(x*), l)`` for ``theta = (f(x*), l)`` ``(*S, *B, 2)`` under the priors ``(*B, 4)``
        (required: the GP's mean ``m`` and scale ``s`` enter the likelihood); returns ``(*S, *B)``.

        Given :math:`\ell` and :math:`f_\star = f(x_\star)`, the outputs are Gaussian,
        :math:`y \mid f_\star, \ell \sim \mathcal N\big(m + k_\star (f_\star - m)/s^2,\
        K_\ell + \sigma_n^2 I - k_\star k_\star^\top / s^2\big)` with :math:`k_\star = k_\ell(x, x_\star)`."""
        if prior is None:
            raise ValueError("Expected the prior parameters (mean, scale, alpha, beta) as prior=..., since the GP's "
                             "mean and scale enter this likelihood, but got none.")
        obs = as_observations(observations, self.sources)
        p = prior.to(theta.dtype)
        data = obs.values["data"].to(theta.dtype)
        x, y, mask = data[..., :-1], data[..., -1], obs.masks["data"]
        xq = obs.values["query"].to(theta.dtype)[..., :1, :]
        f, ell = theta[..., 0], theta[..., 1]
        m, s = p[..., 0], p[..., 1]
        K = rbf(x, x, ell, s)  # (*S, *B, N, N)
        kq = rbf(x, xq, ell, s)[..., 0]  # (*S, *B, N)
        cov = K - kq.unsqueeze(-1) * kq.unsqueeze(-2) / (s**2)[..., None, None]
        present = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).to(cov.dtype)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
        cov = cov * present + eye * (NOISE_VARIANCE * present + (1 - present))  # absent points decoupled
        mean = m.unsqueeze(-1) + kq * ((f - m) / s**2).unsqueeze(-1)
        r = torch.where(mask, y - mean, torch.zeros((), dtype=cov.dtype))
        L = torch.linalg.cholesky(cov)
        w = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False)[..., 0]
        n = mask.sum(-1).to(cov.dtype)
        return (-0.5 * w.pow(2).sum(-1) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
                - 0.5 * n * math.log(2 * math.pi))

    def warped_target(self, prior: Tensor, observations):
        r"""``(prior, likelihood)`` on the model's space :math:`(f_\star, \log\ell)` for ``refine``: the prior has
        ``log_prob`` (``N(m, s^2)`` times the inverse gamma of :math:`\ell` with its Jacobian) and ``sample``,
        and the likelihood is :meth:`log_likelihood` at :math:`\ell = e^u`."""
        return _WarpedGPPrior(prior), lambda theta, obs: self.log_likelihood(
            torch.stack([theta[..., 0], theta[..., 1].exp()], -1), obs, prior)

    def _conditionals(self, prior: Tensor, observations, ell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For lengthscales ``ell`` ``(G, *B)``: ``log N(y; m, K + s_n^2 I)``, predictive mean and variance, each
        ``(G, *B)``."""
        obs = as_observations(observations, self.sources)
        p = prior.double()
        data = obs.values["data"].double()
        x, y, mask = data[..., :-1], data[..., -1], obs.masks["data"]
        xq = obs.values["query"].double()[..., 0, :]
        m, s = p[..., 0], p[..., 1]
        K = rbf(x, x, ell, s)  # (G, *B, N, N)
        present = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).to(K.dtype)
        eye = torch.eye(K.shape[-1], dtype=K.dtype)
        # absent points: decoupled unit-variance entries with zero residual, so they add nothing
        K = K * present + eye * (NOISE_VARIANCE * present + (1 - present))
        r = torch.where(mask, y - m.unsqueeze(-1), torch.zeros((), dtype=y.dtype)).expand(K.shape[:-1])
        L = torch.linalg.cholesky(K)
        alpha = torch.cholesky_solve(r.unsqueeze(-1), L)[..., 0]
        n_present = mask.sum(-1).to(K.dtype)
        log_marginal = (-0.5 * (r * alpha).sum(-1) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
                        - 0.5 * n_present * math.log(2 * math.pi))
        kq = rbf(x, xq.unsqueeze(-2), ell, s)[..., 0] * mask.to(K.dtype)  # (G, *B, N)
        v = torch.linalg.solve_triangular(L, kq.unsqueeze(-1), upper=False)[..., 0]
        mean = m + (kq * alpha).sum(-1)
        var = (s**2 - v.pow(2).sum(-1)).clamp_min(1e-12)
        return log_marginal, mean, var

    def _grid(self, prior: Tensor, observations, grid_size: int):
        """Quadrature over ``log l`` for a flat batch: the grid ``(G, n)``, log weights ``(G, n)`` (summing to one),
        the predictive mean and variance of ``f(x*)`` at each node ``(G, n)``, and ``log Z`` ``(n,)``."""
        p = prior.double()
        a, b = p[:, 2], p[:, 3]
        ig = torch.distributions.InverseGamma(a, b)
        centre = torch.log(b) - torch.digamma(a)
        half = 10 * torch.polygamma(1, a).sqrt() + 3
        lo, hi = centre - half, centre + half
        frac = torch.linspace(0, 1, grid_size, dtype=torch.float64).unsqueeze(-1)
        u = lo + frac * (hi - lo)  # (G, n) log lengthscale
        du = (hi - lo) / (grid_size - 1)
        log_marginal, mean, var = self._conditionals(p, observations, u.exp())
        log_post_u = ig.log_prob(u.exp()) + u + log_marginal  # density of log l, unnormalised
        log_z = torch.logsumexp(log_post_u, 0) + torch.log(du)
        return u, log_post_u - log_z + torch.log(du), mean, var, log_z

    def reference_log_prob(self, prior: Tensor, observations, theta: Tensor, grid_size: int = 2001,
                           chunk: int = 128) -> dict[str, Tensor]:
        """Reference log densities at ``theta`` ``(n, 2)`` for a flat batch of ``n`` problems: ``joint`` (on
        ``(f, l)``), ``f`` (marginal of ``f(x*)``) and ``lengthscale`` (marginal of ``l``), each ``(n,)``.

        Under the prior, :math:`\\log\\ell = \\log b - \\log G` with :math:`G\\sim\\mathrm{Gamma}(a)`, of mean
        :math:`\\log b - \\psi(a)` and variance :math:`\\psi'(a)`; the grid spans that mean
        :math:`\\pm(10\\sqrt{\\psi'(a)} + 3)` with ``grid_size`` points (rectangle rule)."""
        out = {"joint": [], "f": [], "lengthscale": []}
        obs = as_observations(observations, self.sources)
        for start in range(0, len(theta), chunk):
            stop = min(start + chunk, len(theta))
            p = prior[start:stop].double()
            part = obs.slice(start, stop)
            t = theta[start:stop].double()
            _, w, mean, var, log_z = self._grid(p, part, grid_size)
            f = t[:, 0]
            normal = -0.5 * ((f - mean) ** 2 / var + torch.log(2 * math.pi * var))
            out["f"].append(torch.logsumexp(w + normal, 0))
            ell = t[:, 1]
            lm, mt, vt = self._conditionals(p, part, ell.unsqueeze(0))
            ig = torch.distributions.InverseGamma(p[:, 2], p[:, 3])
            log_ell = ig.log_prob(ell) + lm[0] - log_z  # density on l: p(l) p(y | l) / Z
            out["lengthscale"].append(log_ell)
            out["joint"].append(log_ell - 0.5 * ((f - mt[0]) ** 2 / vt[0] + torch.log(2 * math.pi * vt[0])))
        return {k: torch.cat(v) for k, v in out.items()}

    def reference_f_moments(self, prior: Tensor, observations, grid_size: int = 2001) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``(n,)`` of the reference marginal of ``f(x*)`` (a mixture over the grid)."""
        _, w, mean, var, _ = self._grid(prior, as_observations(observations, self.sources), grid_size)
        weight = w.exp()
        m = (weight * mean).sum(0)
        return m, ((weight * (var + mean**2)).sum(0) - m**2).clamp_min(0).sqrt()


class _WarpedGPPrior:
    r"""The prior of :math:`(f_\star, u = \log\ell)` for parameters ``(*B, 4)``: ``log_prob`` of points ``(*S, *B, 2)``
    and ``sample`` with an explicit generator."""

    def __init__(self, prior: Tensor) -> None:
        self.p = prior.double()

    def log_prob(self, x: Tensor) -> Tensor:
        m, s, a, b = self.p.unbind(-1)
        f, u = x[..., 0], x[..., 1]
        log_f = -0.5 * ((f - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
        log_u = a * torch.log(b) - torch.lgamma(a) - a * u - b * torch.exp(-u)  # InvGamma density of e^u times e^u
        return log_f + log_u

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape) + self.p.shape[:-1]
        m, s, a, b = (v.expand(shape) for v in self.p.unbind(-1))
        f = m + s * torch.randn(shape, generator=generator, dtype=torch.float64)
        return torch.stack([f, torch.log(inverse_gamma(a, b, generator))], -1)

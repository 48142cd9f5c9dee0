r"""A two-level quantum system: infer :math:`\Delta` in :math:`H = \Delta\sigma_x + (1-\Delta)\sigma_z` from single shots
(the paper's experiment 4.2.2).

Prior and meta-prior: :math:`\Delta\sim\mathrm{Beta}(a, b)`, with :math:`a, b \sim \mathrm{InvGamma}(4, 6)`
independently; ``meta_prior="broad"`` draws half the priors so and the other half with :math:`\log a, \log b`
uniform on :math:`[\log 0.3, \log 300]`, which covers the concentrated priors users write. :math:`\Delta` is used
as stated (no sigmoid; the paper's code squashes it, see the reference).

Ten shots at fixed nominal settings (state, time): :math:`|0\rangle` at :math:`t = 1..5`, :math:`|1\rangle` at
:math:`t = 1, 2`, :math:`(|0\rangle + |1\rangle)/\sqrt2` at :math:`t = 1..3`. Each shot starts from the nominal
state plus :math:`\mathcal N(0, 0.01 I)` noise on its two (real) amplitudes, renormalised, evolves for a time
:math:`t\sim\mathcal N(\hat t, 0.05^2)` under :math:`U(t) = e^{-iHt}` (``torch.linalg.matrix_exp`` in the
simulator), and is measured in the computational basis: the reading is 1 when the system is found in
:math:`|1\rangle`. With :math:`\omega = \sqrt{\Delta^2 + (1-\Delta)^2}`,
:math:`n = (\Delta, 0, 1-\Delta)/\omega` and a real start :math:`(p, q)`, Rodrigues' formula
:math:`U = \cos(\omega t) I - i\sin(\omega t)\,n\cdot\sigma` gives

.. math::
    \Pr(1\mid\Delta, p, q, t) = \cos^2(\omega t)\,q^2 + \sin^2(\omega t)\,(n_x p - n_z q)^2,

and averaging over the time jitter, :math:`\mathbb E\cos^2(\omega t) = \tfrac12(1 + \cos(2\omega\hat t)\,
e^{-2\omega^2 s_t^2})`, and over the state jitter (its second moments :math:`\mathbb E[p^2], \mathbb E[pq],
\mathbb E[q^2]`, constants per nominal state computed once by Gauss-Hermite quadrature) gives the exact
marginal likelihood of a shot, :math:`\pi_j(\Delta)`. The posterior of the scalar :math:`\Delta` is then computed
on a fine grid in :math:`\operatorname{logit}\Delta` that takes in the prior's tails (``reference_posterior``): exact up
to quadrature error.

Observations: one source ``shots`` with one token per shot, ``[reading, p̂, q̂, t̂]`` (the nominal setting rides
along with the reading, so every setting has its own token, as in the paper). The model works on
:math:`\operatorname{logit}\Delta` and reads the Beta prior's :math:`(\log a, \log b)`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..observations import Observations, as_observations
from .base import Problem
from .sampling import beta, inverse_gamma, logit_beta

SQRT_HALF = math.sqrt(0.5)
# nominal settings: (p̂, q̂, t̂) per shot
SETTINGS = torch.tensor([[1.0, 0.0, t] for t in (1, 2, 3, 4, 5)] + [[0.0, 1.0, t] for t in (1, 2)]
                        + [[SQRT_HALF, SQRT_HALF, t] for t in (1, 2, 3)], dtype=torch.float64)
STATE_SD = 0.1  # amplitude noise N(0, 0.01 I)
TIME_SD = 0.05
META_PRIORS = ("inverse-gamma", "broad")
BROAD_RANGE = (0.3, 300.0)  # the broad meta-prior's log-uniform range for a and b
REFERENCE_TAIL = 30.0  # the reference grid leaves out e^{-30} of each tail of logit Delta (reference_posterior)


def state_moments(p: float, q: float, sd: float = STATE_SD, order: int = 60) -> tuple[float, float, float]:
    """``E[p^2], E[pq], E[q^2]`` of ``(p̂ + e1, q̂ + e2) / |.|`` with ``e ~ N(0, sd^2 I)``, by Gauss-Hermite."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(order)  # for the standard normal weight exp(-x^2/2)
    weights = weights / weights.sum()
    a = p + sd * nodes[:, None]
    b = q + sd * nodes[None, :]
    w = weights[:, None] * weights[None, :]
    norm2 = a**2 + b**2
    return float((w * a**2 / norm2).sum()), float((w * a * b / norm2).sum()), float((w * b**2 / norm2).sum())


def shot_probability(delta: Tensor, settings: Tensor, time_sd: float = TIME_SD, moments: Tensor | None = None) -> Tensor:
    r"""Marginal :math:`\Pr(\text{reading}=1\mid\Delta)` per shot (module docstring).

    Args:
        delta: :math:`\Delta` ``(..., 1)`` (broadcasts over shots).
        settings: ``(..., N, 3)`` nominal ``(p̂, q̂, t̂)``.
        moments: ``(..., N, 3)`` state moments ``(E p^2, E pq, E q^2)``; default: computed for each setting.
    """
    if moments is None:
        moments = _moments_for(settings)
    omega = torch.sqrt(delta**2 + (1 - delta) ** 2)
    nx, nz = delta / omega, (1 - delta) / omega
    damp = torch.exp(-2 * omega**2 * time_sd**2)
    cos2 = 0.5 * (1 + torch.cos(2 * omega * settings[..., 2]) * damp)
    pp, pq, qq = moments.unbind(-1)
    rotated = nx**2 * pp - 2 * nx * nz * pq + nz**2 * qq
    return (cos2 * qq + (1 - cos2) * rotated).clamp(1e-12, 1 - 1e-12)


def _moments_for(settings: Tensor) -> Tensor:
    cache: dict[tuple[float, float], tuple[float, float, float]] = {}
    flat = settings.reshape(-1, 3)[:, :2].tolist()
    rows = []
    for p, q in flat:
        key = (round(p, 12), round(q, 12))
        if key not in cache:
            cache[key] = state_moments(p, q)
        rows.append(cache[key])
    return torch.tensor(rows, dtype=settings.dtype).reshape(*settings.shape[:-1], 3)


class TwoLevelSystem(Problem):
    """Single-shot readings of a driven two-level system; the latent is :math:`\\Delta\\in(0, 1)`."""

    name = "quantum"
    dim = 1
    warp = ("logit",)
    prior_parameters = {"a": "log", "b": "log"}

    def __init__(self, num_components: int = 5, meta_shape: float = 4.0, meta_rate: float = 6.0,
                 meta_prior: str = "inverse-gamma") -> None:
        if num_components < 1 or meta_shape <= 0 or meta_rate <= 0 or meta_prior not in META_PRIORS:
            raise ValueError(f"Expected num_components >= 1, a positive meta-prior and meta_prior among "
                             f"{META_PRIORS}, but got {num_components}, {meta_shape}, {meta_rate}, {meta_prior!r}.")
        self.num_components = num_components
        self.meta_shape, self.meta_rate = meta_shape, meta_rate
        self.meta_prior = meta_prior
        self.sources = {"shots": 4}
        self._moments = _moments_for(SETTINGS)

    def options(self) -> dict:
        options = {"num_components": self.num_components, "meta_shape": self.meta_shape, "meta_rate": self.meta_rate}
        return options | ({"meta_prior": self.meta_prior} if self.meta_prior != "inverse-gamma" else {})

    def describe(self) -> dict:
        meta = (f"a ~ InvGamma({self.meta_shape:g}, {self.meta_rate:g}), b ~ InvGamma({self.meta_shape:g}, "
                f"{self.meta_rate:g})")
        if self.meta_prior == "broad":
            meta = (f"half the priors: {meta}; the other half: log a, log b ~ U(log {BROAD_RANGE[0]:g}, "
                    f"log {BROAD_RANGE[1]:g})")
        return super().describe() | {
            "meta_prior": meta,
            "prior": "Delta ~ Beta(a, b); model works on logit Delta",
            "likelihood": ("10 single shots at settings |0> t=1..5, |1> t=1,2, (|0>+|1>)/sqrt2 t=1..3; state noise "
                           f"N(0, {STATE_SD ** 2:g} I) renormalised, time noise sd {TIME_SD}; reading 1 = found in |1>; "
                           "token [reading, p, q, t]"),
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Beta parameters ``(n, 2)``: columns ``a``, ``b``."""
        shape = torch.full((n, 2), self.meta_shape, dtype=torch.float64)
        draws = inverse_gamma(shape, torch.full_like(shape, self.meta_rate), generator)
        if self.meta_prior == "broad":
            lo, hi = math.log(BROAD_RANGE[0]), math.log(BROAD_RANGE[1])
            spread = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=generator, dtype=torch.float64))
            draws = torch.where(torch.rand(n, 1, generator=generator, dtype=torch.float64) < 0.5, draws, spread)
        return draws.float()

    def sample_parameters(self, prior: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = prior.double()
        delta = beta(p[:, :1], p[:, 1:], generator).clamp(1e-7, 1 - 1e-7)
        return delta.to(prior.dtype)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        """Readings from the matrix exponential with jittered starts and times; tokens ``(n, 10, 4)``."""
        n, N = theta.shape[0], SETTINGS.shape[0]
        delta = theta.double()[:, 0].view(n, 1, 1, 1)
        sx = torch.tensor([[0, 1], [1, 0]], dtype=torch.complex128)
        sz = torch.tensor([[1, 0], [0, -1]], dtype=torch.complex128)
        H = delta * sx + (1 - delta) * sz  # (n, 1, 2, 2)
        t = SETTINGS[:, 2] + TIME_SD * torch.randn(n, N, generator=generator, dtype=torch.float64)
        U = torch.linalg.matrix_exp(-1j * H * t.view(n, N, 1, 1))  # (n, N, 2, 2)
        psi = SETTINGS[:, :2] + STATE_SD * torch.randn(n, N, 2, generator=generator, dtype=torch.float64)
        psi = psi / psi.norm(dim=-1, keepdim=True)
        amplitude = (U @ psi.to(torch.complex128).unsqueeze(-1))[..., 1, 0]
        prob_one = amplitude.abs() ** 2
        reading = (torch.rand(n, N, generator=generator, dtype=torch.float64) < prob_one).to(torch.float64)
        tokens = torch.cat([reading.unsqueeze(-1), SETTINGS.expand(n, N, 3)], -1)
        return as_observations(tokens.to(theta.dtype), self.sources)

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        r"""Exact marginal :math:`\sum_j \log\pi_j(\Delta)^{y_j}(1-\pi_j(\Delta))^{1-y_j}`; ``theta`` ``(*S, *B, 1)``."""
        obs = as_observations(observations, self.sources)
        tokens, mask = obs.values["shots"].to(theta.dtype), obs.masks["shots"]
        settings = tokens[..., 1:]
        prob = shot_probability(theta.unsqueeze(-2)[..., 0], settings, moments=_moments_for(settings))
        y = tokens[..., 0]
        per_shot = torch.where(y > 0.5, torch.log(prob), torch.log1p(-prob))
        return torch.where(mask, per_shot, torch.zeros((), dtype=theta.dtype)).sum(-1)

    def warped_target(self, prior: Tensor, observations):
        r"""The prior of :math:`u = \operatorname{logit}\Delta` (``Beta(a, b)`` at :math:`\sigma(u)` times
        :math:`\sigma(u)(1-\sigma(u))`) and the likelihood at :math:`\Delta = \sigma(u)`, for ``refine`` and
        ``check="importance"``."""
        from .base import WarpedPrior

        p = prior.double()
        a, b = p[..., 0], p[..., 1]

        def log_prob(u):
            u = u[..., 0]
            log_d, log_1md = torch.nn.functional.logsigmoid(u), torch.nn.functional.logsigmoid(-u)
            return (a * log_d + b * log_1md - torch.lgamma(a) - torch.lgamma(b) + torch.lgamma(a + b))

        def sample(shape, generator):  # exact in the tails, where Delta rounds to 0 or 1
            return logit_beta(a.expand(shape + a.shape), b.expand(shape + b.shape), generator).unsqueeze(-1)

        return WarpedPrior(log_prob, sample), lambda u, obs: self.log_likelihood(torch.sigmoid(u), obs)

    def reference_posterior(self, prior: Tensor, observations, grid_size: int = 4001, theta: Tensor | None = None):
        """The posterior of :math:`\\Delta` on the grid of :meth:`logit_reference_posterior`: ``(grid (G,), log
        density on Delta (G, *B))``, where :math:`\\Delta` may round to 0 or 1 at the grid's ends (its density there
        is then that of the logit grid point). With ``theta`` ``(*B, 1)`` it returns the log posterior density at
        ``theta`` ``(*B,)`` instead."""
        u, log_joint, log_z = self._logit_grid(prior, observations, grid_size)
        if theta is not None:
            p, t = prior.double(), theta.double()
            log_prior = torch.distributions.Beta(p[..., 0], p[..., 1]).log_prob(t[..., 0])
            return log_prior + self.log_likelihood(t, observations) - log_z
        log_u = log_joint - log_z
        jacobian = torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)  # d u / d Delta, in logs
        return torch.sigmoid(u), log_u - jacobian.view((-1,) + (1,) * (log_u.dim() - 1))

    def logit_reference_posterior(self, prior: Tensor, observations, grid_size: int = 4001) -> tuple[Tensor, Tensor]:
        r"""The posterior of :math:`u = \operatorname{logit}\Delta` on a uniform grid: ``(grid (G,), log density on u
        (G, *B))``, normalised by the rectangle rule. The grid spans :math:`[-18, 18]`, widened to take in the
        prior's tails: the density of :math:`u` falls as :math:`e^{au}` as :math:`u\to-\infty` and as
        :math:`e^{-bu}` as :math:`u\to\infty`, where the likelihood tends to a constant, so for the batch's smallest
        :math:`a` and :math:`b` the grid reaches :math:`-30/a` and :math:`30/b` (:math:`e^{-30}` of the tail left
        out). For a shape near 0 much of the mass lies where :math:`\Delta` rounds to 0 or 1 (for
        :math:`\mathrm{Beta}(0.1, 1)`, 16.5% below :math:`u = -18`); the prior's density is computed from
        :math:`\log\sigma(\pm u)`, so that rounding does no harm."""
        u, log_joint, log_z = self._logit_grid(prior, observations, grid_size)
        return u, log_joint - log_z

    def _logit_grid(self, prior: Tensor, observations, grid_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The grid of :meth:`logit_reference_posterior` ``(G,)``, the log prior times likelihood on it ``(G, *B)``
        and its log normaliser by the rectangle rule ``(*B)``."""
        obs = as_observations(observations, self.sources)
        p = prior.double()
        low = min(-18.0, -REFERENCE_TAIL / float(p[..., 0].min()))
        high = max(18.0, REFERENCE_TAIL / float(p[..., 1].min()))
        u = torch.linspace(low, high, grid_size, dtype=torch.float64)
        log_joint = self._log_joint_logit(u, p, obs)
        return u, log_joint, torch.logsumexp(log_joint, 0) + math.log(float(u[1] - u[0]))

    def _log_joint_logit(self, u: Tensor, prior: Tensor, obs: Observations, chunk: int = 2048) -> Tensor:
        """Log prior density of :math:`u` times likelihood ``(G, *B)`` on grid ``u`` ``(G,)``, in chunks of the
        grid (the likelihood's terms are ``(G, *B, shots)``)."""
        a, b = prior[..., 0], prior[..., 1]
        log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
        parts = []
        for piece in u.split(chunk):
            shape = (piece.shape[0],) + (1,) * a.dim()
            log_d = torch.nn.functional.logsigmoid(piece).view(shape)
            log_1md = torch.nn.functional.logsigmoid(-piece).view(shape)
            delta = torch.sigmoid(piece).view(*shape, 1).expand(piece.shape[0], *a.shape, 1)
            parts.append(a * log_d + b * log_1md + log_norm + self.log_likelihood(delta, obs))
        return torch.cat(parts)

r"""sbibm's tasks written as a user of this library would write them: a simulator, a likelihood, the support of
each parameter and a meta-prior, through ``distformer.problems.from_simulator`` and ``distformer.meta_priors``.

Each task follows sbibm 1.1.0's ``task.py`` (Lueckmann et al., 2021):

* ``two_moons``: :math:`\theta\sim\mathcal U(-1,1)^2`, :math:`a\sim\mathcal U(-\pi/2,\pi/2)`,
  :math:`r\sim\mathcal N(0.1, 0.01^2)`, :math:`x = (r\cos a + 0.25,\ r\sin a) + (-|\theta_1+\theta_2|/\sqrt2,\
  (\theta_2-\theta_1)/\sqrt2)`. Its likelihood is closed-form: with :math:`p = x - m(\theta) - (0.25, 0)`, the
  polar change of variables gives :math:`p(x\mid\theta) = \mathcal N(|p|; 0.1, 0.01^2)\,/\,(\pi |p|)` where
  :math:`p_1 > 0`, and 0 elsewhere.
* ``gaussian_mixture``: :math:`\theta\sim\mathcal U(-10,10)^2`, :math:`x\sim\tfrac12\mathcal N(\theta, I) +
  \tfrac12\mathcal N(\theta, 0.01 I)`.
* ``sir``: ``sbibm_sir.py`` (an ODE simulator, log-normal priors); ``slcp``: ``sbibm_slcp.py`` (5-D, four points
  per data set, an importance-sampling reference); ``lotka_volterra``: ``sbibm_lotka_volterra.py`` (4-D, an ODE
  simulator read in log counts, an importance-sampling reference); ``gaussian_linear``: ``sbibm_linear.py`` (the
  shipped linear-Gaussian model, no training).

**Uniform priors.** A box prior :math:`\mathcal U(a,b)` is exact on the model's warped space: with the support
``(a, b)`` the library trains on :math:`u = \operatorname{logit}((\theta-a)/(b-a))`, where the uniform becomes the
standard logistic density :math:`\sigma(u)(1-\sigma(u))` on each axis. That density is not a Gaussian mixture, so
it enters as a fitted one (:func:`logistic_mixture`, weighted EM on a quadrature grid, float64): the product of
the per-axis fits is the task's prior, and its KL to the true logistic is what the choice costs (reported).

**Changed priors** (the run-time change no retrained method needs): ``shifted``, every component's mean moved by
``SHIFT`` of the logistic's standard deviation along both axes (mass moves toward the upper corner of the box);
``narrowed``, every component's standard deviation times ``NARROW`` (mass toward the centre). Their references
come from the likelihood on a grid (``distformer.evaluation.reference_draws``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

import distformer as dfm
from distformer.distributions.gmm import GaussianMixture

LOGISTIC_SD = math.pi / math.sqrt(3.0)
SHIFT = 0.5  # in units of the logistic's standard deviation
NARROW = 0.5


@functools.lru_cache(maxsize=None)
def logistic_mixture(components: int = 3, iterations: int = 2000) -> GaussianMixture:
    """A ``components``-Gaussian fit (float64) to the standard logistic density, by EM with the density as
    weights on a grid over (-30, 30), started as a zero-mean scale mixture (cached: the fit is deterministic)."""
    u = torch.linspace(-30.0, 30.0, 12001, dtype=torch.float64)
    target = torch.sigmoid(u) * torch.sigmoid(-u)
    target = target / target.sum()
    loc = torch.zeros(components, dtype=torch.float64)  # the logistic is a scale mixture of zero-mean normals
    sd = torch.logspace(-0.2, 0.6, components, dtype=torch.float64) if components > 1 else \
        torch.full((1,), 1.7, dtype=torch.float64)
    logw = torch.full((components,), -math.log(components), dtype=torch.float64)
    for _ in range(iterations):
        log_r = logw - sd.log() - 0.5 * ((u.unsqueeze(-1) - loc) / sd) ** 2
        r = torch.softmax(log_r, -1) * target.unsqueeze(-1)
        mass = r.sum(0)
        loc = (r * u.unsqueeze(-1)).sum(0) / mass
        sd = ((r * (u.unsqueeze(-1) - loc) ** 2).sum(0) / mass).sqrt()
        logw = mass.log()
    return GaussianMixture(logw.exp(), loc.unsqueeze(-1), covariance_matrix=torch.diag_embed(sd.pow(2).unsqueeze(-1)))


def box_prior(dim: int, components: int | tuple[int, ...] = 3) -> GaussianMixture:
    """The uniform box prior on the logit-warped space: the product of ``dim`` per-axis logistic fits of
    ``components`` Gaussians each (one count for every axis, or one per axis), ``prod(components)`` components,
    float64."""
    counts = (components,) * dim if isinstance(components, int) else tuple(components)
    if len(counts) != dim:
        raise ValueError(f"Expected one component count or {dim} of them, but got {components!r}.")
    axes = [logistic_mixture(c) for c in counts]
    grids = torch.meshgrid(*[torch.arange(c) for c in counts], indexing="ij")
    index = [g.reshape(-1) for g in grids]  # per axis, (prod(counts),)
    w = torch.stack([a.weights[i] for a, i in zip(axes, index)], -1).prod(-1)
    loc = torch.stack([a.loc[i, 0] for a, i in zip(axes, index)], -1)
    var = torch.stack([a.component_covariance_matrix[i, 0, 0] for a, i in zip(axes, index)], -1)
    return GaussianMixture(w, loc, covariance_matrix=torch.diag_embed(var))


def logistic_fit_kl(components: int = 3) -> float:
    """KL(standard logistic ‖ its ``components``-Gaussian fit) per axis, by quadrature in float64."""
    u = torch.linspace(-40.0, 40.0, 200001, dtype=torch.float64)
    log_p = torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)
    log_q = logistic_mixture(components).log_prob(u.unsqueeze(-1))
    return float(torch.trapezoid(log_p.exp() * (log_p - log_q), u))


def changed(prior: GaussianMixture, kind: str, unit=LOGISTIC_SD) -> GaussianMixture:
    """The ``shifted`` or ``narrowed`` version of a task prior (module docstring); a shift is ``SHIFT`` times
    ``unit`` (a number, or one per axis)."""
    if kind == "shifted":
        return GaussianMixture(prior.weights, prior.loc + SHIFT * torch.as_tensor(unit, dtype=prior.loc.dtype),
                               covariance_matrix=prior.component_covariance_matrix)
    if kind == "narrowed":
        return GaussianMixture(prior.weights, prior.loc,
                               covariance_matrix=NARROW**2 * prior.component_covariance_matrix)
    raise ValueError(f"Expected a change among ['narrowed', 'shifted'], but got {kind!r}.")


def rk4_saves(rate: Callable, state: tuple, step: float, per_save: int, saves: int,
              bounds: tuple[float, float] | None = None) -> list:
    """Fixed-step RK4 for the ODE tasks (NumPy, vectorised over a batch): ``state`` a tuple of arrays ``(n,)``,
    ``rate(*state)`` their derivatives; ``saves`` states kept, the first and then one every ``per_save`` steps of
    ``step``; with ``bounds``, every state clipped to them after each step. Returns one array ``(n, saves)`` per
    state variable."""
    state = list(state)
    kept = [[s] for s in state]
    for n in range(1, per_save * (saves - 1) + 1):
        k1 = rate(*state)
        k2 = rate(*[s + 0.5 * step * k for s, k in zip(state, k1)])
        k3 = rate(*[s + 0.5 * step * k for s, k in zip(state, k2)])
        k4 = rate(*[s + step * k for s, k in zip(state, k3)])
        state = [s + step / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4)]
        if bounds is not None:
            state = [np.clip(s, *bounds) for s in state]
        if n % per_save == 0:
            for saved, s in zip(kept, state):
                saved.append(s)
    return [np.stack(saved, -1) for saved in kept]


def diagonal_gaussian(loc: tuple[float, ...], sd: tuple[float, ...]) -> GaussianMixture:
    """One Gaussian component with mean ``loc`` and standard deviations ``sd`` per axis, float64: a log-normal
    task prior on its log-warped space, exactly."""
    var = torch.tensor([sd], dtype=torch.float64).pow(2)
    return GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([loc], dtype=torch.float64),
                           covariance_matrix=torch.diag_embed(var))


def fitted_reference(problem, prior: GaussianMixture, observed, known: Tensor, count: int,
                     generator: torch.Generator, components: int, widen: float, draws: int) -> tuple[Tensor, float]:
    """``(draws (count, D), ESS)`` of the posterior under ``prior`` (a mixture on the problem's warped space) for
    ``observed`` (one data set), where no grid reaches: importance sampling with the problem's likelihood
    (``distformer.refine``, ``draws`` draws, a tenth of them from the prior, resampled to ``count``) from a
    ``components``-Gaussian EM fit to ``known`` ``(S, D)``, sbibm's posterior samples for the same observation, on
    the warped space with each covariance widened by ``widen**2``. The proposal does not come from the model, so
    the reference does not lean on it; its effective sample size says how well the fit covers the posterior."""
    from distformer.distributions.transforms import Warp, WarpedGaussianMixture

    warp = Warp(problem.warp)
    u = warp.forward(known.to(torch.float64))
    u = u[torch.isfinite(u).all(-1)]  # a sample on the support's edge has no warped value
    fit = GaussianMixture.fit(u, components, generator=generator, max_iterations=200, tol=1e-8)
    widened = GaussianMixture(fit.weights, fit.loc, covariance_matrix=widen**2 * fit.component_covariance_matrix)
    r = dfm.refine(WarpedGaussianMixture(widened.expand((1,)), warp), problem.as_prior(prior.expand((1,))), problem,
                   observed, n=draws, num_components=1, max_iterations=1, generator=generator)
    return r.resample(count, generator)[:, 0].double(), float(r.ess[0])


# ------------------------------------------------------------------------------------------------- two_moons
def two_moons_simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """sbibm's two-moons simulator: ``theta`` ``(n, 2)`` -> one 2-D point each ``(n, 1, 2)``."""
    n = theta.shape[0]
    a = math.pi * (torch.rand(n, generator=generator, dtype=theta.dtype) - 0.5)
    r = 0.1 + 0.01 * torch.randn(n, generator=generator, dtype=theta.dtype)
    p = torch.stack([r * a.cos() + 0.25, r * a.sin()], -1)
    return (p + _moons_offset(theta)).unsqueeze(1)


def _moons_offset(theta: Tensor) -> Tensor:
    z0 = (theta[..., 0] + theta[..., 1]) / math.sqrt(2.0)
    z1 = (theta[..., 1] - theta[..., 0]) / math.sqrt(2.0)
    return torch.stack([-z0.abs(), z1], -1)


def two_moons_log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """``log p(x | theta)`` ``(..., N)`` for ``theta`` ``(..., 1, 2)`` and points ``x`` ``(..., N, 2)``."""
    p = x - _moons_offset(theta) - torch.tensor([0.25, 0.0], dtype=x.dtype)
    r = p.norm(dim=-1).clamp_min(1e-30)
    log = -0.5 * ((r - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi)) - math.log(math.pi) - r.log()
    return torch.where(p[..., 0] > 0, log, torch.full_like(log, -1e4))


# ------------------------------------------------------------------------------------------ gaussian_mixture
def gaussian_mixture_simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """sbibm's Gaussian-mixture simulator: ``theta`` ``(n, 2)`` -> one point each ``(n, 1, 2)``."""
    n = theta.shape[0]
    scale = torch.where(torch.rand(n, 1, generator=generator) < 0.5, 1.0, 0.1).to(theta.dtype)
    return (theta + scale * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)).unsqueeze(1)


def gaussian_mixture_log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """``log p(x | theta)`` ``(..., N)`` for ``theta`` ``(..., 1, 2)`` and points ``x`` ``(..., N, 2)``."""
    sq = ((x - theta) ** 2).sum(-1)
    wide = -0.5 * sq - math.log(2 * math.pi)
    narrow = -0.5 * sq / 0.01 - math.log(2 * math.pi * 0.01)
    return torch.logaddexp(wide, narrow) - math.log(2.0)


# ---------------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One sbibm task with a uniform box prior: its problem (``from_simulator``), its prior on the model's space,
    the box, ``sbi_prior()`` for NPE, the model's draws and the grid reference's (``LinearGaussianTask`` has the same
    interface)."""

    name: str
    problem: object
    prior: GaussianMixture
    low: float
    high: float
    simulate: Callable
    pretrained: str = ""  # every task here is trained on its simulator
    reference_name: str = "grid"
    shift_unit: float | tuple = LOGISTIC_SD  # what ``SHIFT`` multiplies: the prior's sd on each warped axis
    data_scale: float = 1.0  # sbibm's data are the model's observations times this
    log_data: bool = False  # the model reads the log of sbibm's data (after ``data_scale``)
    sbi_base: Callable | None = None  # prior mixture -> sbi prior on the original space (default: the box)
    grid_size: int | None = None  # the grid reference's points per axis (None: its default, 401)
    points: int = 1  # observations in one of sbibm's data sets (its vector is that many points, flattened)
    reference_sampler: Callable | None = None  # instead of the grid: (problem, prior, observed, known, count,
    # generator) -> (draws, ESS), with ``known`` sbibm's posterior samples for the same observation

    def sbi_prior(self, prior: GaussianMixture | None = None):
        """The task's box prior for sbi, or a changed prior (a mixture on the warped space) pushed through the warp
        as a torch distribution with ``sample`` and ``log_prob`` on the original space."""
        if self.sbi_base is not None:
            return self.sbi_base(self.prior if prior is None else prior)
        if prior is None:
            from torch.distributions import Independent, Uniform

            return Independent(Uniform(torch.full((self.prior.dim,), self.low), torch.full((self.prior.dim,),
                                                                                       self.high)), 1)
        return WarpedPrior(prior.to(torch.float32), self.problem.warp, self.low, self.high)

    def data(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulator output ``(n, E)`` for NPE, as sbibm's files give it (a data set's points flattened)."""
        x = self.simulate(theta, generator).reshape(theta.shape[0], -1)
        return (x.exp() if self.log_data else x) * self.data_scale

    def observed(self, x: Tensor):
        """One of sbibm's data vectors ``x`` ``(E,)`` as the problem's ``Observations`` of batch ``(1,)``."""
        x = x / self.data_scale
        return _observed(x.log() if self.log_data else x, self.points)

    def changed(self, kind: str) -> GaussianMixture:
        return changed(self.prior, kind, self.shift_unit)

    def posterior(self, model, prior: GaussianMixture, x: Tensor):
        """``(posterior, observations)``: the model's posterior (batch ``(1,)``) for one observation ``x`` ``(E,)``
        under ``prior`` (a mixture on the warped space), and that observation as the problem reads it."""
        observed = self.observed(x)
        with torch.inference_mode():
            return model.posterior(self.problem.as_prior(prior.to(torch.float32).expand((1,))), observed,
                                   check=False), observed

    def draws(self, model, prior: GaussianMixture, x: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` draws ``(S, D)`` of the model's posterior on the original space for one observation ``x``
        ``(E,)`` under ``prior`` (a mixture on the warped space)."""
        post, _ = self.posterior(model, prior, x)
        return post.sample((count,), generator=generator)[:, 0].double()

    def reference(self, prior: GaussianMixture, x: Tensor, count: int, generator: torch.Generator,
                  known: Tensor | None = None) -> tuple[Tensor, float | None]:
        """``(draws (S, D), ESS)``: ``count`` reference draws under ``prior`` for one observation ``x`` ``(E,)``, from
        the grid (ESS ``None``) or from ``reference_sampler`` with ``known``, sbibm's samples for ``x``."""
        from distformer.evaluation import reference_draws

        observed = self.observed(x)
        if self.reference_sampler is not None:
            return self.reference_sampler(self.problem, prior.to(torch.float64), observed, known, count, generator)
        return reference_draws(self.problem, prior.expand((1,)), observed, count, grid_size=self.grid_size,
                               generator=generator)[:, 0], None


def _observed(x: Tensor, points: int = 1):
    """One of sbibm's data vectors ``x`` ``(E,)`` as the task problems' ``Observations`` of batch ``(1,)``:
    ``points`` observations of ``E / points`` numbers each."""
    from distformer.observations import Observations

    return Observations({"z": x.float().view(1, points, -1)}, {"z": torch.ones(1, points, dtype=torch.bool)})


class WarpedPrior(torch.distributions.Distribution):
    """A mixture on the warped space as a prior on the original space (Jacobian included), for sbi."""

    arg_constraints: dict = {}

    def __init__(self, base: GaussianMixture, warp, low: float, high: float) -> None:
        from distformer.distributions.transforms import WarpedGaussianMixture

        self.warped = WarpedGaussianMixture(base, warp)
        self.low, self.high = low, high
        super().__init__(event_shape=torch.Size([base.dim]), validate_args=False)

    @property
    def support(self):
        return torch.distributions.constraints.independent(torch.distributions.constraints.interval(self.low,
                                                                                                   self.high), 1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.warped.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.warped.log_prob(value)


class Moved(dfm.meta_priors.MetaPrior):
    r"""Priors of another meta-prior with all their means moved together by one draw of
    :math:`\mathcal N(0, s^2 I)`: a prior moved as a whole, as a user moves one."""

    def __init__(self, base, sd: float) -> None:
        self.base, self.sd, self.dim, self.num_components = base, float(sd), base.dim, base.num_components

    def sample(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        prior = self.base.sample(n, generator)
        offset = self.sd * torch.randn(n, 1, self.dim, generator=generator)
        return GaussianMixture(logits=prior.log_weights, loc=prior.loc + offset, scale_tril=prior.scale_tril)

    def describe(self) -> str:
        return f"{self.base.describe()}, all means moved together by N(0, {self.sd:g}^2 I)"


def meta_prior(prior: GaussianMixture):
    """Priors the task's model is trained for, on the warped space: around the task's prior (each mean moved by
    about 0.4 component sd, scales 0.3-1.5x, weights jittered), moved as a whole by about one logistic sd, nine
    times in ten; random mixtures over the warped box once in ten."""
    nearby = dfm.meta_priors.around(prior.to(torch.float32), shift=0.4, scale=(0.3, 1.5), weight_noise=0.5)
    return dfm.meta_priors.mixture_of([
        Moved(nearby, LOGISTIC_SD),
        dfm.meta_priors.random_mixtures(dim=prior.dim, components=(1, prior.num_components), mean=(-3.0, 3.0),
                                        scale=(0.2, 2.0))], probabilities=[0.9, 0.1])


def _fitted(module) -> Callable:
    """:func:`fitted_reference` with the settings of a task's module (``FIT_COMPONENTS``, ``WIDEN``,
    ``REFERENCE_DRAWS``), as a ``Task.reference_sampler``."""
    return functools.partial(fitted_reference, components=module.FIT_COMPONENTS, widen=module.WIDEN,
                             draws=module.REFERENCE_DRAWS)


def two_moons() -> Task:
    prior = box_prior(2)
    problem = dfm.problems.from_simulator(two_moons_simulate, support=[(-1.0, 1.0)] * 2, meta_prior=meta_prior(prior),
                                          max_observations=1, observation_dim=2,
                                          log_likelihood=two_moons_log_likelihood, name="sbibm-two-moons")
    return Task("two_moons", problem, prior, -1.0, 1.0, two_moons_simulate)


def gaussian_mixture() -> Task:
    prior = box_prior(2)
    problem = dfm.problems.from_simulator(gaussian_mixture_simulate, support=[(-10.0, 10.0)] * 2,
                                          meta_prior=meta_prior(prior), max_observations=1, observation_dim=2,
                                          log_likelihood=gaussian_mixture_log_likelihood,
                                          name="sbibm-gaussian-mixture")
    return Task("gaussian_mixture", problem, prior, -10.0, 10.0, gaussian_mixture_simulate)


def sir() -> Task:
    from . import sbibm_sir

    return Task("sir", sbibm_sir.problem(), sbibm_sir.prior(), 0.0, math.inf, sbibm_sir.simulate,
                shift_unit=sbibm_sir.PRIOR_SD, data_scale=float(sbibm_sir.TRIALS), sbi_base=sbibm_sir.LogNormalPrior,
                grid_size=201)


def slcp() -> Task:
    from . import sbibm_slcp

    return Task("slcp", sbibm_slcp.problem(), box_prior(sbibm_slcp.DIM, sbibm_slcp.COMPONENTS), sbibm_slcp.LOW,
                sbibm_slcp.HIGH, sbibm_slcp.simulate, reference_name="importance sampling",
                points=sbibm_slcp.POINTS, reference_sampler=_fitted(sbibm_slcp))


def lotka_volterra() -> Task:
    from . import sbibm_lotka_volterra as lv
    from .sbibm_sir import LogNormalPrior

    return Task("lotka_volterra", lv.problem(), lv.prior(), 0.0, math.inf, lv.simulate, shift_unit=lv.PRIOR_SD,
                log_data=True, sbi_base=LogNormalPrior, reference_name="importance sampling",
                reference_sampler=_fitted(lv))


def gaussian_linear():
    from .sbibm_linear import LinearGaussianTask

    return LinearGaussianTask()


TASKS = {"two_moons": two_moons, "gaussian_mixture": gaussian_mixture, "gaussian_linear": gaussian_linear, "sir": sir,
         "slcp": slcp, "lotka_volterra": lotka_volterra}

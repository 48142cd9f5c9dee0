r"""Families of priors that users write, for the mixture models (``z_i = x + v_i``, ``v_i ~ N(0, I)``).

Each family draws ``n`` problems ``(prior, theta, observations)`` with an explicit generator; ``theta`` comes
from the prior unless the family is about data that contradict the prior. The families differ from the training
meta-prior (:func:`~distformer.problems.linear_gaussian.random_gmm_priors`, ``K = 4``, means ``N(0, 3^2 I)``,
component sds ``[0.1, 3]``, 1..20 observations) in one respect each:

* ``meta``: the training meta-prior itself (the false-alarm baseline);
* ``translated``: the whole problem moved by ``t``, :math:`\|t\|\sim\mathcal U(5, 25)`;
* ``wide`` / ``narrow``: component sds 5-30 / 0.01-0.05 times the noise sd;
* ``correlated``: every component's correlation :math:`|\rho|` up to 0.999 (``1-|\rho|`` log-uniform on
  :math:`[10^{-3}, 1]`);
* ``separated``: four components on a square (a line in 1-D) of half-side 4-10, sds 0.3-1;
* ``tiny-weights``: one or two components of weight :math:`10^{-8}` to :math:`10^{-2}`; theta from a tiny
  component in half the problems;
* ``zero-weights``: one or two components of weight exactly 0;
* ``components``: ``K`` uniform on 1..16;
* ``observations``: ``N`` log-uniform on 1..200;
* ``conflict``: theta 6-12 prior sds from the prior mean (along a random direction of the prior covariance);
* ``far-conflict``: the same at 20-50 prior sds;
* ``very-narrow``: component sds 10^-4 to 10^-2 times the noise sd (log-uniform), below training's;
* ``anisotropic``: each component's sds along random orthogonal axes log-uniform on :math:`[10^{-3}, 10^3]` times
  the noise sd (one coordinate known to a thousandth, another vague), condition numbers up to :math:`10^{12}`;
* ``uniform-in-range``: every chart coordinate uniform inside the training ranges a range check would accept.

A second group, each one way users write priors that neither the training meta-prior nor the first group covers:

* ``mixed-scales``: four isotropic components whose sds are each log-uniform on 0.01-100 times the noise sd;
* ``many-components``: ``K`` from 24 to 64;
* ``far-translated``: the whole problem moved by :math:`10^3`-:math:`10^5`;
* ``one-wide-reading``: one observation under components 10-100 times the noise sd, means spread by 30;
* ``duplicated``: one Gaussian written as four identical components of weight 1/4;
* ``many-observations``: 200-2,000 observations (read in parts of the trained count);
* ``scale-mixture``: five components sharing one mean, sds 0.1-10 (a heavy-tailed prior), Dirichlet(1) weights;
* ``dirichlet-weights``: six components with Dirichlet(0.1) weights (most mass on one or two);
* ``gridded-box``: a uniform box of side 1-20 written as a grid of equal overlapping Gaussians (5 in 1-D, 4 x 4
  in 2-D; in 10-D 2 x 2 on the first two axes);
* ``outlier``: data from the prior, but one observation moved 5-30 noise sds along a random direction;
* ``partial-masks``: 20 slots per data set, each present with probability 0.3 (one always);
* ``near-singular``: three components whose first two coordinates have correlation :math:`1-\varepsilon`,
  :math:`\varepsilon` log-uniform on :math:`[10^{-6}, 10^{-3}]` (1-D: the meta-prior);
* ``float64``: the meta-prior's problems in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from distformer.distributions.gmm import GaussianMixture
from distformer.observations import Observations, as_observations
from distformer.problems.linear_gaussian import random_gmm_priors, random_rotation


@dataclass(frozen=True)
class Problems:
    """``n`` problems: a prior with batch ``(n,)``, parameters ``(n, D)`` and observations with batch ``(n,)``."""

    prior: GaussianMixture
    theta: Tensor
    observations: Observations


def _log_uniform(shape, low: float, high: float, g: torch.Generator) -> Tensor:
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * torch.rand(shape, generator=g))


def _observe(theta: Tensor, counts: Tensor, g: torch.Generator) -> Observations:
    """``counts[i]`` observations ``theta_i + N(0, I)`` per problem, padded to the largest count and masked."""
    n, D = theta.shape
    N = int(counts.max())
    z = theta.unsqueeze(-2) + torch.randn(n, N, D, generator=g)
    mask = torch.arange(N).unsqueeze(0) < counts.unsqueeze(-1)
    return as_observations(z, {"z": D}, mask)


def _counts(n: int, g: torch.Generator, low: int = 1, high: int = 20) -> Tensor:
    return torch.randint(low, high + 1, (n,), generator=g)


def _priors(n: int, K: int, D: int, g: torch.Generator, mean_scale: float = 3.0, low: float = 0.1,
            high: float = 3.0) -> GaussianMixture:
    return random_gmm_priors(n, K, D, mean_scale, low, high, g)


def _from_prior(prior: GaussianMixture, g: torch.Generator, counts: Tensor | None = None) -> Problems:
    theta = prior.sample(generator=g)
    counts = _counts(theta.shape[0], g) if counts is None else counts
    return Problems(prior, theta, _observe(theta, counts, g))


def meta(n, D, g):
    return _from_prior(_priors(n, 4, D, g), g)


def translated(n, D, g):
    prior = _priors(n, 4, D, g)
    direction = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    shift = direction * (5 + 20 * torch.rand(n, 1, generator=g))
    prior = GaussianMixture(prior.weights, prior.loc + shift.unsqueeze(-2), scale_tril=prior.scale_tril)
    return _from_prior(prior, g)


def wide(n, D, g):
    return _from_prior(_priors(n, int(torch.randint(1, 5, (), generator=g)), D, g, 10.0, 5.0, 30.0), g)


def narrow(n, D, g):
    return _from_prior(_priors(n, int(torch.randint(1, 5, (), generator=g)), D, g, 3.0, 0.01, 0.05), g)


def correlated(n, D, g):
    K = 4
    prior = _priors(n, K, D, g)
    if D == 1:
        return _from_prior(prior, g)
    std = _log_uniform((n, K, D), 0.1, 3.0, g)
    rho = (1 - _log_uniform((n, K), 1e-3, 1.0, g)) * torch.where(torch.rand(n, K, generator=g) < 0.5, -1.0, 1.0)
    corr = torch.eye(D).expand(n, K, D, D).clone()
    corr[..., 0, 1] = corr[..., 1, 0] = rho  # first two coordinates; a random rotation spreads it
    U = random_rotation(n * K, D, g).reshape(n, K, D, D) if D > 2 else torch.eye(D).expand(n, K, D, D)
    cov = std.unsqueeze(-1) * corr * std.unsqueeze(-2)
    cov = U @ cov @ U.transpose(-1, -2)
    return _from_prior(GaussianMixture(prior.weights, prior.loc, covariance_matrix=0.5 * (cov + cov.mT)), g)


def separated(n, D, g):
    half = 4 + 6 * torch.rand(n, 1, 1, generator=g)
    if D == 1:
        corners = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]]) / 3
    else:
        signs = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        corners = torch.cat([signs, torch.zeros(4, D - 2)], -1)
    loc = half * corners
    std = 0.3 + 0.7 * torch.rand(n, 4, D, generator=g)
    prior = GaussianMixture(torch.full((n, 4), 0.25), loc, scale_tril=torch.diag_embed(std))
    return _from_prior(prior, g)


def _reweighted(prior: GaussianMixture, weights: Tensor) -> GaussianMixture:
    return GaussianMixture(weights / weights.sum(-1, keepdim=True), prior.loc, scale_tril=prior.scale_tril)


def tiny_weights(n, D, g):
    prior = _priors(n, 4, D, g)
    w = prior.weights.clone()
    tiny = _log_uniform((n,), 1e-8, 1e-2, g)
    w[:, 0] = tiny
    two = torch.rand(n, generator=g) < 0.5
    w[:, 1] = torch.where(two, _log_uniform((n,), 1e-8, 1e-2, g), w[:, 1])
    w[:, 2:] = w[:, 2:] * ((1 - w[:, :2].sum(-1)) / w[:, 2:].sum(-1)).unsqueeze(-1)
    prior = _reweighted(prior, w)
    theta = prior.sample(generator=g)
    from_tiny = torch.rand(n, generator=g) < 0.5
    tiny_draw = prior.loc[:, 0] + (prior.scale_tril[:, 0] @ torch.randn(n, D, 1, generator=g)).squeeze(-1)
    theta = torch.where(from_tiny.unsqueeze(-1), tiny_draw, theta)
    return Problems(prior, theta, _observe(theta, _counts(n, g), g))


def zero_weights(n, D, g):
    prior = _priors(n, 4, D, g)
    w = prior.weights.clone()
    w[:, 0] = 0.0
    w[:, 1] = torch.where(torch.rand(n, generator=g) < 0.5, 0.0, w[:, 1])
    return _from_prior(_reweighted(prior, w), g)


def components(n, D, g):
    K = torch.randint(1, 17, (n,), generator=g)
    prior = _priors(n, 16, D, g)
    # a K-component prior written with K components: problems are grouped by K and stacked back below
    groups = [(k, (K == k).nonzero().squeeze(-1)) for k in range(1, 17)]
    out = []
    for k, rows in groups:
        if rows.numel():
            w = prior.weights[rows, :k]
            sub = GaussianMixture(w / w.sum(-1, keepdim=True), prior.loc[rows, :k],
                                  scale_tril=prior.scale_tril[rows, :k])
            out.append(_from_prior(sub, g))
    return out  # a list of Problems, one per K


def observations(n, D, g):
    counts = torch.exp(math.log(200) * torch.rand(n, generator=g)).round().long().clamp(1, 200)
    return _from_prior(_priors(n, 4, D, g), g, counts)


def conflict(n, D, g, low: float = 6.0, high: float = 12.0):
    prior = _priors(n, 4, D, g)
    cov = prior.covariance_matrix
    direction = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    L = torch.linalg.cholesky(cov)
    distance = low + (high - low) * torch.rand(n, 1, generator=g)
    theta = prior.mean + distance * (L @ direction.unsqueeze(-1)).squeeze(-1)
    return Problems(prior, theta, _observe(theta, _counts(n, g), g))


def far_conflict(n, D, g):
    return conflict(n, D, g, 20.0, 50.0)


def very_narrow(n, D, g):
    K = int(torch.randint(1, 5, (), generator=g))
    prior = _priors(n, K, D, g)
    std = _log_uniform((n, K, 1, 1), 1e-4, 1e-2, g)
    return _from_prior(GaussianMixture(prior.weights, prior.loc, scale_tril=std * torch.eye(D)), g)


def anisotropic(n, D, g):
    K = int(torch.randint(1, 5, (), generator=g))
    prior = _priors(n, K, D, g)
    std = _log_uniform((n, K, D), 1e-3, 1e3, g).double()
    U = random_rotation(n * K, D, g).reshape(n, K, D, D).double()
    cov = U @ torch.diag_embed(std ** 2) @ U.transpose(-1, -2)
    scale_tril = torch.linalg.cholesky(0.5 * (cov + cov.mT)).float()  # factored in float64: exact to float32
    return _from_prior(GaussianMixture(prior.weights, prior.loc, scale_tril=scale_tril), g)


def uniform_in_range(n, D, g):
    """Chart coordinates uniform inside the per-coordinate ranges of 20,000 training-meta-prior draws."""
    from distformer.nn.tokens import chart_to_gmm, gmm_to_chart

    seen = gmm_to_chart(_priors(20000, 4, D, torch.Generator().manual_seed(7))).reshape(-1, 1 + D + D * (D + 1) // 2)
    low, high = seen.amin(0), seen.amax(0)
    chart = low + (high - low) * torch.rand(n, 4, low.numel(), generator=g)
    return _from_prior(chart_to_gmm(chart, D), g)


def mixed_scales(n, D, g):
    prior = _priors(n, 4, D, g)
    sd = _log_uniform((n, 4, 1, 1), 1e-2, 1e2, g)
    return _from_prior(GaussianMixture(prior.weights, prior.loc, scale_tril=sd * torch.eye(D)), g)


def many_components(n, D, g):
    sizes = [n // 4 + (i < n % 4) for i in range(4)]
    return [_from_prior(_priors(size, K, D, g), g) for K, size in zip((24, 32, 48, 64), sizes) if size]


def far_translated(n, D, g):
    p = _from_prior(_priors(n, 4, D, g), g)
    t = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1) * _log_uniform((n, 1), 1e3, 1e5, g)
    moved = GaussianMixture(p.prior.weights, p.prior.loc + t.unsqueeze(1), scale_tril=p.prior.scale_tril)
    return Problems(moved, p.theta + t, Observations({"z": p.observations.values["z"] + t.unsqueeze(1)},
                                                     p.observations.masks))


def one_wide_reading(n, D, g):
    return _from_prior(_priors(n, 4, D, g, mean_scale=30.0, low=10.0, high=100.0), g, torch.ones(n, dtype=torch.long))


def duplicated(n, D, g):
    one = _priors(n, 1, D, g)
    return _from_prior(GaussianMixture(torch.full((n, 4), 0.25), one.loc.expand(n, 4, D).clone(),
                                       scale_tril=one.scale_tril.expand(n, 4, D, D).clone()), g)


def many_observations(n, D, g):
    return _from_prior(_priors(n, 4, D, g), g, _log_uniform((n,), 200, 2000, g).round().long())


def scale_mixture(n, D, g):
    K = 5
    centre = 3 * torch.randn(n, 1, D, generator=g)
    sd = torch.logspace(-1, 1, K).reshape(1, K, 1, 1).expand(n, K, 1, 1)
    weights = -torch.log(torch.rand(n, K, generator=g))  # Dirichlet(1): normalised standard exponentials
    return _from_prior(GaussianMixture(weights / weights.sum(-1, keepdim=True), centre.expand(n, K, D).clone(),
                                       scale_tril=sd * torch.eye(D)), g)


def dirichlet_weights(n, D, g):
    from distformer.problems.sampling import standard_gamma

    prior = _priors(n, 6, D, g)
    weights = standard_gamma(torch.full((n, 6), 0.1, dtype=torch.float64), g).float().clamp_min(1e-30)
    return _from_prior(_reweighted(prior, weights), g)


def gridded_box(n, D, g):
    per, axes = {1: (5, 1), 2: (4, 2)}.get(D, (2, 2))
    side = _log_uniform((n, 1, 1), 1.0, 20.0, g)
    line = torch.linspace(-0.5, 0.5, per)
    grid = torch.stack(torch.meshgrid(*[line] * axes, indexing="ij"), -1).reshape(-1, axes)  # (K, axes)
    K = grid.shape[0]
    offsets = torch.cat([grid, torch.zeros(K, D - axes)], -1) if D > axes else grid
    loc = 3 * torch.randn(n, 1, D, generator=g) + side * offsets
    sd = (side / per).unsqueeze(-1).expand(n, K, 1, 1)
    return _from_prior(GaussianMixture(torch.full((n, K), 1.0 / K), loc, scale_tril=sd * torch.eye(D)), g)


def outlier(n, D, g):
    p = _from_prior(_priors(n, 4, D, g), g)
    direction = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    values = p.observations.values["z"].clone()
    values[:, 0] = values[:, 0] + _log_uniform((n, 1), 5.0, 30.0, g) * direction
    return Problems(p.prior, p.theta, Observations({"z": values}, p.observations.masks))


def partial_masks(n, D, g):
    p = _from_prior(_priors(n, 4, D, g), g, torch.full((n,), 20))
    mask = torch.rand(n, 20, generator=g) < 0.3
    mask[:, 0] = True
    return Problems(p.prior, p.theta, as_observations(p.observations.values["z"], {"z": D}, mask))


def near_singular(n, D, g):
    prior = _priors(n, 3, D, g)
    if D == 1:
        return _from_prior(prior, g)
    rho = 1 - _log_uniform((n, 3), 1e-6, 1e-3, g).double()
    sd = _log_uniform((n, 3, D), 0.1, 3.0, g).double()
    cov = torch.diag_embed(sd ** 2)
    cov[..., 0, 1] = cov[..., 1, 0] = rho * sd[..., 0] * sd[..., 1]
    scale_tril = torch.linalg.cholesky(cov).float()  # factored in float64: exact to float32
    return _from_prior(GaussianMixture(prior.weights, prior.loc, scale_tril=scale_tril), g)


def in_float64(n, D, g):
    p = _from_prior(_priors(n, 4, D, g), g)
    return Problems(p.prior.to(torch.float64), p.theta.double(), p.observations.to(torch.float64))


FAMILIES: dict[str, Callable] = {
    "meta": meta, "translated": translated, "wide": wide, "narrow": narrow, "correlated": correlated,
    "separated": separated, "tiny-weights": tiny_weights, "zero-weights": zero_weights, "components": components,
    "observations": observations, "conflict": conflict, "far-conflict": far_conflict, "very-narrow": very_narrow,
    "anisotropic": anisotropic, "uniform-in-range": uniform_in_range,
    "mixed-scales": mixed_scales, "many-components": many_components, "far-translated": far_translated,
    "one-wide-reading": one_wide_reading, "duplicated": duplicated, "many-observations": many_observations,
    "scale-mixture": scale_mixture, "dirichlet-weights": dirichlet_weights, "gridded-box": gridded_box,
    "outlier": outlier, "partial-masks": partial_masks, "near-singular": near_singular, "float64": in_float64,
}

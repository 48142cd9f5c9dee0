r"""Stress families for the filter models (``sensor-fusion``, ``stochastic-volatility``): one update each, from
priors a filter meets or a user writes, against a per-problem reference.

Reference: the exact posterior's density by self-normalised importance sampling from the defensive mixture
:math:`r = 0.9\,q + 0.1\,p` of the model's posterior :math:`q` and the prior :math:`p` (``DRAWS`` draws), with
weights :math:`w_s \propto p(x_s)\,p(z\mid x_s)/r(x_s)` and evidence :math:`\hat p(z) = \tfrac1S\sum_s
p(x_s)\,p(z\mid x_s)/r(x_s)`; then :math:`\mathrm{KL}(p(\cdot\mid z)\,\|\,q) \approx \sum_s w_s \big(\log
p(x_s)p(z\mid x_s) - \log\hat p(z) - \log q(x_s)\big)`. Drawing mostly from :math:`q` keeps the effective sample
size in the thousands where the model is close, where the estimate must separate 0.02 from 0 (from the prior alone
it was a few hundred, and per-problem errors reached 0.05); the prior's share finds mass :math:`q` misses. It is
trusted where the effective sample size is at least ``MIN_ESS``; other problems are left out of the row, and the
row says how many were kept.

* ``sensor-fusion`` (state :math:`(p_x, v_x, p_y, v_y)`, range and bearing from a sensor at the origin): its
  training meta-prior; the filter's start as in ``bench sensor-fusion`` (one Gaussian with unit sds, as four
  equal-shape components, positions 0-4 from the sensor); a target near the sensor (0.1-1 away, sds 0.1-1); far
  (15-19 away, within the rangefinder's 20); and narrow priors (sds 0.003-0.03).
* ``stochastic-volatility`` (10 log-volatility factors, 30 returns): its training meta-prior; sds 1.5-3 (wider
  than training's 0.25-1.5); sds 0.1-0.25 (narrower); means moved by 1-3 per factor.
"""

from __future__ import annotations

import math

import torch

from distformer.distributions.gmm import GaussianMixture
from distformer.problems import get
from distformer.problems.linear_gaussian import random_rotation
from .report import stage
from .stress_families import _log_uniform

DRAWS = 20_000
DEFENSIVE = 0.1
MIN_ESS = 200


def _replicated(loc: torch.Tensor, sd: torch.Tensor, g: torch.Generator, K: int = 4, rotate: bool = True):
    """One Gaussian per problem, mean ``loc`` ``(n, D)``, sds ``sd`` ``(n, D)`` along random axes (or the
    coordinate axes), as ``K`` components with weights proportional to 1..K (a filter's replicated start)."""
    n, D = loc.shape
    U = random_rotation(n, D, g).double() if rotate else torch.eye(D, dtype=torch.float64).expand(n, D, D)
    L = torch.linalg.cholesky(U @ torch.diag_embed(sd.double() ** 2) @ U.mT)
    weights = torch.arange(1, K + 1, dtype=torch.float64)
    return GaussianMixture((weights / weights.sum()).expand(n, K), loc.double().unsqueeze(1).expand(n, K, D),
                           scale_tril=L.unsqueeze(1).expand(n, K, D, D))


def _around_sensor(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """Means ``(n, 4)``: positions ``low``-``high`` from the sensor in a random direction, velocities N(0, 0.5^2)."""
    radius = low + (high - low) * torch.rand(n, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    velocity = 0.5 * torch.randn(n, 2, generator=g)
    return torch.stack([radius * angle.cos(), velocity[:, 0], radius * angle.sin(), velocity[:, 1]], -1)


def families(name: str, problem, n: int, g: torch.Generator) -> dict:
    out = {"meta": lambda: problem.sample_meta_prior(n, g).to(torch.float64)}
    if name == "sensor-fusion":
        out |= {
            "the filter's start, unit sds": lambda: _replicated(_around_sensor(n, 0.0, 4.0, g), torch.ones(n, 4), g,
                                                                rotate=False),
            "near the sensor (0.1-1)": lambda: _replicated(_around_sensor(n, 0.1, 1.0, g),
                                                           _log_uniform((n, 4), 0.1, 1.0, g), g),
            "far (15-19)": lambda: _replicated(_around_sensor(n, 15.0, 19.0, g), _log_uniform((n, 4), 0.1, 1.0, g), g),
            "narrow (sds 0.003-0.03)": lambda: _replicated(_around_sensor(n, 1.0, 10.0, g),
                                                           _log_uniform((n, 4), 0.003, 0.03, g), g),
        }
    else:
        D = problem.dim
        out |= {
            "wider (sds 1.5-3)": lambda: _replicated(torch.randn(n, D, generator=g), _log_uniform((n, D), 1.5, 3.0, g),
                                                     g),
            "narrower (sds 0.1-0.25)": lambda: _replicated(torch.randn(n, D, generator=g),
                                                           _log_uniform((n, D), 0.1, 0.25, g), g),
            "moved by 1-3": lambda: _replicated(
                (1 + 2 * torch.rand(n, D, generator=g)) * torch.where(torch.rand(n, D, generator=g) < 0.5, -1.0, 1.0),
                _log_uniform((n, D), 0.25, 1.0, g), g),
        }
    return out


def reference_kl(problem, prior: GaussianMixture, observations, posterior, g: torch.Generator, draws: int = DRAWS,
                 chunk: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem ``KL(exact ‖ posterior)`` and the importance weights' ESS ``(n,)`` (module docstring), float64,
    ``chunk`` problems at a time."""
    kls, esss = [], []
    base = getattr(posterior, "base", posterior).to(torch.float64)
    from_prior = round(DEFENSIVE * draws)
    for start in range(0, prior.batch_shape[0], chunk):
        rows = slice(start, start + chunk)
        part, q, obs = prior[rows], base[rows], observations.slice(start, min(start + chunk, prior.batch_shape[0]))
        x = torch.cat([q.sample((draws - from_prior,), generator=g), part.sample((from_prior,), generator=g)])
        log_prior, log_q = part.log_prob(x), q.log_prob(x)
        log_target = log_prior + problem.log_likelihood(x, obs)  # unnormalised exact posterior
        log_ratio = log_target - torch.logaddexp(log_q + math.log1p(-DEFENSIVE), log_prior + math.log(DEFENSIVE))
        w = torch.softmax(log_ratio, 0)
        log_evidence = torch.logsumexp(log_ratio, 0) - math.log(draws)
        kls.append((w * (log_target - log_evidence - log_q)).sum(0))
        esss.append(1.0 / (w ** 2).sum(0))
    return torch.cat(kls), torch.cat(esss)


def filter_model_rows(name: str, n: int, generator: torch.Generator) -> list[dict]:
    """Every family of filter model ``name``: per-problem KL to the reference and the flags, for the problems whose
    reference holds (ESS >= ``MIN_ESS``)."""
    import distformer

    from .stress import importance_flags, posterior_quietly, summarise

    model = distformer.pretrained(name)
    problem = get(model.card["problem"]["name"], **model.card["problem"]["options"])
    rows = []
    for family, draw in families(name, problem, n, generator).items():
        stage("stress", f"{name}: {family}")
        prior = draw()
        observations = problem.simulate(prior.sample(generator=generator), generator)
        prior32, obs32 = prior.to(torch.float32), observations.to(torch.float32)
        with torch.inference_mode():
            post = posterior_quietly(model, prior32, obs32)
        kl, ess = reference_kl(problem, prior, observations, post, generator)
        kept = ess >= MIN_ESS
        row = summarise(name, family, kl[kept], ~post.reliable[kept],
                        importance_flags(model, prior32, obs32, generator)[kept])
        rows.append(row | {"family": f"{family} ({int(kept.sum())} of {n})"})
    return rows

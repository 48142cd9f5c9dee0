r"""Stress families for the parametric-prior models, each with its exact or reference posterior.

* ``inverse-gamma`` (:math:`\sigma^2\sim\mathrm{InvGamma}(\alpha,\beta)`, one reading): ``wide`` and ``narrow``
  (the paper's meta-priors, :math:`\mathrm{InvGamma}(4, 6)` and :math:`\mathrm{InvGamma}(10^4, 2\cdot10^4)` for each
  parameter), ``C.2`` (the paper's appendix C.2 shift, :math:`\mathrm{InvGamma}(24, 6)` for each), ``up-to-100``
  (:math:`\alpha, \beta` log-uniform on :math:`[0.5, 100]`), ``equal-100`` (:math:`\alpha = \beta = 100`),
  ``below-0.5`` and ``100-1000`` (log-uniform on :math:`[0.1, 0.5]` and :math:`[100, 1000]`); and prior-data
  conflict: :math:`\alpha, \beta` log-uniform on :math:`[0.5, 100]` with one reading :math:`10` to :math:`1000`
  times, or :math:`10^{-8}` to :math:`10^{-3}` times, the prior's scale :math:`\sqrt{\beta/\alpha}`; and
  ``2-10 readings`` (the same priors, 2 to 10 readings where training had one); and :math:`\alpha` and
  :math:`\beta` far apart (:math:`\beta` log-uniform on :math:`[10^{-6}, 10^3]`), :math:`\alpha` on
  :math:`[0.01, 0.1]`, both on :math:`[10^3, 10^5]`, and a reading of exactly 0 (rounded data). KL by Monte Carlo
  with draws from the closed-form posterior.
* ``quantum`` (:math:`\Delta\sim\mathrm{Beta}(a, b)`, ten shots): ``meta`` (its training meta-prior) and
  ``a, b`` log-uniform on :math:`[0.5, 100]`, :math:`[0.1, 0.5]` (U-shaped priors) and :math:`[100, 1000]`.
  KL by quadrature on the reference grid in logit space, which takes in the prior's tails (for a shape near 0 they
  reach far beyond where :math:`\Delta` rounds to 0 or 1).
* ``gp-hyperprior-5d`` and ``gp-hyperprior-1d``: each one's meta-prior, and each prior parameter moved outside its
  training interval (one at a time, to 1.5-3 interval widths beyond an end). KL of the joint posterior of
  :math:`(f(x_\star), \log\ell)` by quadrature: the reference's grid over :math:`\log\ell` times Gauss-Hermite
  nodes in :math:`f`.
"""

from __future__ import annotations

import math

import torch

from distformer.problems import get
from distformer.problems.sampling import inverse_gamma
from .report import stage


def _log_uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * torch.rand(n, 2, generator=g,
                                                                                    dtype=torch.float64))


def _simulated(model, problem, prior: torch.Tensor, generator: torch.Generator):
    """``(prior, observations, model posterior)`` for parameters drawn from ``prior`` and data simulated from them."""
    from .stress import posterior_quietly

    obs = problem.simulate(problem.sample_parameters(prior, generator), generator)
    return prior, obs, posterior_quietly(model, prior, obs)


def _scaled_reading(model, prior: torch.Tensor, low: float, high: float, generator: torch.Generator):
    """``(prior, observations, model posterior)`` with one reading :math:`z = \pm\sqrt{\beta/\alpha}\,10^u`,
    :math:`u\sim\mathcal U(\text{low}, \text{high})`: data far larger (``u > 0``) or smaller than the prior's scale
    :math:`\sqrt{\beta/\alpha}` allows, the inverse-gamma model's prior-data conflict; ``low = -inf``: a reading of
    exactly 0 (rounded data, whose log mean square, the scale anchor, is -inf)."""
    from distformer.observations import as_observations

    from .stress import posterior_quietly

    u = low + (high - low) * torch.rand(prior.shape[0], generator=generator, dtype=torch.float64) \
        if math.isfinite(low) else torch.full((prior.shape[0],), low, dtype=torch.float64)  # 10^-inf: a reading of 0
    sign = torch.where(torch.rand(prior.shape[0], generator=generator) < 0.5, -1.0, 1.0).double()
    z = (sign * (prior[:, 1].double() / prior[:, 0].double()).sqrt() * 10 ** u).float()
    obs = as_observations(z.view(-1, 1, 1), model.config.sources)
    return prior, obs, posterior_quietly(model, prior, obs)


def _several_readings(model, problem, prior: torch.Tensor, low: int, high: int, generator: torch.Generator):
    """``(prior, observations, model posterior)`` with ``low`` to ``high`` readings per problem (masked), where
    the model was trained on one: the ranges flag them all (``count``), the importance check judges each."""
    from distformer.observations import Observations

    from .stress import posterior_quietly

    several = get("inverse-gamma", **(problem.options() | {"num_observations": high}))
    obs = several.simulate(several.sample_parameters(prior, generator), generator)
    count = torch.randint(low, high + 1, (prior.shape[0], 1), generator=generator)
    obs = Observations(obs.values, {"z": torch.arange(high) < count})
    return prior, obs, posterior_quietly(model, prior, obs)


def inverse_gamma_rows(n: int, kl_samples: int, generator: torch.Generator) -> list[dict]:
    import distformer

    from .inverse_gamma import _kl
    from .stress import importance_flags, summarise

    model = distformer.pretrained("inverse-gamma")
    problem = get("inverse-gamma", **model.card["problem"]["options"])
    families = {
        "wide": lambda: inverse_gamma(torch.full((n, 2), 4.0, dtype=torch.float64),
                                      torch.full((n, 2), 6.0, dtype=torch.float64), generator),
        "narrow": lambda: inverse_gamma(torch.full((n, 2), 1e4, dtype=torch.float64),
                                        torch.full((n, 2), 2e4, dtype=torch.float64), generator),
        "C.2": lambda: inverse_gamma(torch.full((n, 2), 24.0, dtype=torch.float64),
                                     torch.full((n, 2), 6.0, dtype=torch.float64), generator),
        "up-to-100": lambda: _log_uniform(n, 0.5, 100.0, generator),
        "equal-100": lambda: torch.full((n, 2), 100.0, dtype=torch.float64),
        "below-0.5": lambda: _log_uniform(n, 0.1, 0.5, generator),
        "100-1000": lambda: _log_uniform(n, 100.0, 1000.0, generator),
        "data 10-1000x the prior's scale": lambda: _log_uniform(n, 0.5, 100.0, generator),
        "data 1e-8-1e-3x the prior's scale": lambda: _log_uniform(n, 0.5, 100.0, generator),
        "2-10 readings": lambda: _log_uniform(n, 0.5, 100.0, generator),
        "alpha 0.5-100, beta 1e-6-1e3": lambda: torch.stack([_log_uniform(n, 0.5, 100.0, generator)[:, 0],
                                                              _log_uniform(n, 1e-6, 1e3, generator)[:, 0]], -1),
        "alpha 0.01-0.1": lambda: torch.stack([_log_uniform(n, 0.01, 0.1, generator)[:, 0],
                                                _log_uniform(n, 0.5, 100.0, generator)[:, 0]], -1),
        "alpha, beta 1e3-1e5": lambda: _log_uniform(n, 1e3, 1e5, generator),
        "a reading of exactly 0": lambda: _log_uniform(n, 0.5, 100.0, generator),
    }
    conflicts = {"data 10-1000x the prior's scale": (1.0, 3.0), "data 1e-8-1e-3x the prior's scale": (-8.0, -3.0)}
    rows = []
    for family, draw in families.items():
        stage("stress", f"inverse-gamma: {family}")
        if family in conflicts:
            prior, obs, post = _scaled_reading(model, draw().float(), *conflicts[family], generator)
        elif family == "2-10 readings":
            prior, obs, post = _several_readings(model, problem, draw().float(), 2, 10, generator)
        elif family == "a reading of exactly 0":
            prior, obs, post = _scaled_reading(model, draw().float(), -math.inf, -math.inf, generator)
        else:
            prior, obs, post = _simulated(model, problem, draw().float(), generator)
        exact = problem.exact_posterior(prior.double(), obs)
        kl = _kl(exact.concentration, exact.rate, lambda x: post.log_prob(x.to(torch.float64)), kl_samples,
                 generator)
        rows.append(summarise("inverse-gamma", family, kl, ~post.reliable,
                              importance_flags(model, prior, obs, generator)))
    return rows


def quantum_rows(n: int, generator: torch.Generator) -> list[dict]:
    import distformer

    from .stress import importance_flags, summarise

    model = distformer.pretrained("quantum")
    problem = get("quantum", **model.card["problem"]["options"])
    families = {"meta": lambda: problem.sample_meta_prior(n, generator).double(),
                "a, b in [0.5, 100]": lambda: _log_uniform(n, 0.5, 100.0, generator),
                "a, b in [0.1, 0.5]": lambda: _log_uniform(n, 0.1, 0.5, generator),
                "a, b in [100, 1000]": lambda: _log_uniform(n, 100.0, 1000.0, generator)}
    rows = []
    for family, draw in families.items():
        stage("stress", f"quantum: {family}")
        prior, obs, post = _simulated(model, problem, draw().float(), generator)
        u, log_p_u = problem.logit_reference_posterior(prior, obs, grid_size=20001)  # (G,), (G, n): logit Delta
        log_q_u = post.base.to(torch.float64).log_prob(u.view(-1, 1, 1).expand(-1, n, 1))
        p_u = log_p_u.exp()
        kl = (p_u * (log_p_u - log_q_u)).nan_to_num(0.0).sum(0) * float(u[1] - u[0])
        rows.append(summarise("quantum", family, kl, ~post.reliable, importance_flags(model, prior, obs, generator)))
    return rows


def gp_rows(name: str, n: int, generator: torch.Generator, grid_size: int = 401, nodes: int = 24) -> list[dict]:
    """The GP-hyperprior model ``name`` on its meta-prior and with each prior parameter outside its training
    interval: KL to the quadrature reference over (f(x*), log l)."""
    import distformer

    from .stress import importance_flags, posterior_quietly, summarise

    model = distformer.pretrained(name)
    problem = get("gp-hyperprior", **model.card["problem"]["options"])
    names = ("mean", "scale", "alpha", "beta")
    ranges = {k: problem.settings[k] for k in names}
    families = {"meta": None} | {f"{k} outside": k for k in names}
    x_gh, w_gh = _hermite(nodes)
    rows = []
    for family, moved in families.items():
        stage("stress", f"{name}: {family}")
        batch = problem.sample_batch(n, generator)
        prior = batch.prior.clone()
        if moved is not None:
            lo, hi = ranges[moved]
            width = hi - lo
            beyond = width * (1.5 + 1.5 * torch.rand(n, generator=generator))
            up = torch.rand(n, generator=generator) < 0.5
            value = torch.where(up, hi + beyond, lo - beyond)
            if moved != "mean":
                value = torch.where(value > 0, value, hi + beyond)  # positive parameters stay positive
            prior[:, names.index(moved)] = value.float()
            batch = _resimulated(problem, prior, batch, generator)
        post = posterior_quietly(model, batch.prior, batch.observations)
        u, log_w, mean, var, _ = problem._grid(batch.prior.double(), batch.observations, grid_size)  # (G, n)
        f = mean.unsqueeze(-1) + var.sqrt().unsqueeze(-1) * x_gh  # (G, n, H)
        du = (u[1] - u[0])  # (n,)
        log_ref = log_w.unsqueeze(-1) - torch.log(du).unsqueeze(-1) - 0.5 * (
            (f - mean.unsqueeze(-1)) ** 2 / var.unsqueeze(-1) + torch.log(2 * math.pi * var.unsqueeze(-1)))
        points = torch.stack([f, u.unsqueeze(-1).expand_as(f)], -1)  # (f, log l)
        log_q = post.base.to(torch.float64).log_prob(points.permute(0, 2, 1, 3))  # (G, H, n)
        weight = log_w.exp().unsqueeze(1) * w_gh.view(1, -1, 1)
        kl = (weight * (log_ref.permute(0, 2, 1) - log_q)).sum((0, 1))
        rows.append(summarise(name, family, kl, ~post.reliable,
                              importance_flags(model, batch.prior, batch.observations, generator)))
    return rows


def _hermite(nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of Gauss-Hermite quadrature for a standard normal (probabilists' form)."""
    import numpy as np

    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return torch.tensor(x), torch.tensor(w / w.sum())


def _resimulated(problem, prior, batch, generator):
    """The batch's inputs with ``f`` and ``y`` drawn anew under ``prior`` (``(n, 4)``)."""
    from distformer.observations import as_observations
    from distformer.problems.base import Batch
    from distformer.problems.gp_hyperprior import NOISE_VARIANCE, rbf

    p = prior.double()
    ell = inverse_gamma(p[:, 2], p[:, 3], generator)
    data, query = batch.observations.values["data"].double(), batch.observations.values["query"].double()
    x = torch.cat([data[..., :-1], query], 1)
    N = data.shape[1]
    K = rbf(x, x, ell, p[:, 1]) + 1e-9 * torch.eye(N + 1, dtype=torch.float64)
    f = p[:, :1] + (torch.linalg.cholesky(K) @ torch.randn(len(p), N + 1, 1, generator=generator,
                                                            dtype=torch.float64))[..., 0]
    y = f[:, :N] + math.sqrt(NOISE_VARIANCE) * torch.randn(len(p), N, generator=generator, dtype=torch.float64)
    obs = as_observations({"data": torch.cat([x[:, :N], y.unsqueeze(-1)], -1).float(), "query": query.float()},
                          problem.sources)
    return Batch(prior, torch.stack([f[:, N], ell], -1).float(), obs)


def parametric_rows(n: int, kl_samples: int, generator: torch.Generator) -> list[dict]:
    return (inverse_gamma_rows(n, kl_samples, generator) + quantum_rows(n, generator)
            + gp_rows("gp-hyperprior-5d", n, generator) + gp_rows("gp-hyperprior-1d", n, generator))


def gp_refinement(n: int, draws: int, generator: torch.Generator) -> dict:
    """``gp-hyperprior-5d`` on ``n`` meta-prior problems: f(x*) NLL of the model, of ``refine`` with the GP
    likelihood, and of the quadrature reference, with each one's time per problem."""
    import time

    import distformer

    from distformer.diagnostics import estimate
    from distformer.refinement import refine

    model = distformer.pretrained("gp-hyperprior-5d")
    problem = get("gp-hyperprior", **model.card["problem"]["options"])
    batch = problem.sample_batch(n, generator)
    f_true = batch.theta[:, :1].double()
    start = time.perf_counter()
    post = model.posterior(batch.prior, batch.observations)
    model_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = problem.reference_log_prob(batch.prior, batch.observations, batch.theta)
    reference_s = time.perf_counter() - start
    prior, likelihood = problem.warped_target(batch.prior, batch.observations)
    start = time.perf_counter()
    r = refine(post.base.to(torch.float64), prior, likelihood, batch.observations, n=draws, generator=generator)
    refine_s = time.perf_counter() - start
    nll_model = -post.base.to(torch.float64).marginal([0]).log_prob(f_true)
    nll_refined = -r.posterior.marginal([0]).log_prob(f_true)
    nll_reference = -ref["f"]
    return {"problems": n, "draws": draws, "nll_model": str(estimate(nll_model)),
            "nll_refined": str(estimate(nll_refined)), "nll_reference": str(estimate(nll_reference)),
            "gap_refined": str(estimate(nll_refined - nll_reference)),
            "gap_refined_mean": float((nll_refined - nll_reference).mean()),
            "model_ms": 1e3 * model_s / n, "refine_ms": 1e3 * refine_s / n, "reference_ms": 1e3 * reference_s / n,
            "flagged": float((~r.reliable).double().mean())}

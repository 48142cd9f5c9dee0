r"""The importance-sampling check behind ``model.posterior(..., check="importance")``.

For each problem, ``S`` draws from the defensive mixture :math:`q = (1-\alpha)\,q_\text{model} + \alpha\,p` of the
model's posterior and the prior (``refinement.importance_ratios``, :math:`\alpha = 0.1`) give the log ratios
:math:`r_s = \log p(x_s) + \log p(z\mid x_s) - \log q(x_s)` against the unnormalised exact posterior. Their Pareto
:math:`\hat k` (``psis.py``) measures how far the model's posterior is from the exact one where it matters: for
a posterior close to the exact one the ratios are nearly constant and :math:`\hat k` is low; where the model misses
or misplaces mass, the largest ratios form a heavy tail. A problem is flagged (reason ``importance``) when
:math:`\hat k` exceeds :func:`~distformer.psis.khat_threshold` for ``S`` draws (0.58 for ``S = 256``).

It needs the likelihood (a problem with ``log_likelihood``, or a callable; by default the problem in the model's
card) and GMM priors on the model's own space (no warp). It is opt-in: it costs ``S`` likelihood evaluations per
problem, measured in ``benchmarks/stress.md``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .distributions.gmm import GaussianMixture
from .psis import khat_threshold, pareto_smooth
from .refinement import _as_log_likelihood, importance_ratios

DEFENSIVE_SHARE = 0.1


def card_likelihood(model):
    """The problem recorded in ``model.card`` (``problems.get(name, **options)``), cached on the model."""
    cached = model.__dict__.get("_card_problem")
    if cached is None:
        from .problems import get

        problem = model.card.get("problem", {})
        if "name" not in problem:
            raise ValueError("Expected a likelihood for check='importance', but got none and the model's card names "
                             "no problem to take it from; pass likelihood=problem or a callable.")
        cached = get(problem["name"], **problem.get("options", {}))
        model.__dict__["_card_problem"] = cached
    return cached


def importance_check(model, posterior, prior: GaussianMixture, observations, reliability, likelihood=None,
                     draws: int = 256, generator: torch.Generator | None = None):
    """``reliability`` (a :class:`~distformer.support.Reliability` or ``None``) with the ``importance`` reason and
    the Pareto ``k̂`` ``(*B)`` of each problem added (module docstring)."""
    from .support import Reliability

    if not isinstance(posterior, GaussianMixture) or model.is_parametric:
        raise ValueError("Expected a model with GMM priors and no latent warp for check='importance', but this "
                         f"model has {'parametric priors' if model.is_parametric else 'a latent warp'}.")
    if not isinstance(draws, int) or draws < 25:
        raise ValueError(f"Expected at least 25 importance draws as an int, but got {draws!r}.")
    log_likelihood = _as_log_likelihood(likelihood if likelihood is not None else card_likelihood(model))
    with torch.inference_mode():
        batch = posterior.batch_shape
        _, log_ratio = importance_ratios(posterior.to(torch.float64), prior.expand(batch).to(torch.float64),
                                         log_likelihood, observations, draws, DEFENSIVE_SHARE, generator)
        _, k_hat = pareto_smooth(log_ratio)
    flagged = k_hat > khat_threshold(draws)
    if reliability is None:
        reasons = {"importance": flagged}
        return Reliability(~flagged, reasons, pareto_k=k_hat)
    reasons = dict(reliability.reasons) | {"importance": flagged}
    return replace(reliability, reliable=reliability.reliable & ~flagged, reasons=reasons, pareto_k=k_hat)

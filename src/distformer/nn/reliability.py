r"""The importance-sampling check behind ``model.posterior(..., check="importance")``.

For each problem, ``S`` draws from the defensive mixture :math:`q = (1-\alpha)\,q_\text{model} + \alpha\,p` of the
model's posterior and the prior (``refinement.importance_ratios``, :math:`\alpha = 0.1`) give the log ratios
:math:`r_s = \log p(x_s) + \log p(z\mid x_s) - \log q(x_s)` against the unnormalised exact posterior. Their Pareto
:math:`\hat k` (``psis.py``) measures how far the model's posterior is from the exact one where it matters: for
a posterior close to the exact one the ratios are nearly constant and :math:`\hat k` is low; where the model misses
or misplaces mass, the largest ratios form a heavy tail. A problem is flagged (reason ``importance``) when either

* the ratios of the model's own draws are uneven,
  :math:`\log\big(\tfrac1n\sum_s e^{r_s}\big) - \tfrac1n\sum_s r_s > 0.05` (Jensen's gap, a Monte-Carlo estimate
  of :math:`\mathrm{KL}(q\,\|\,p(\cdot\mid z))` that is zero when the ratios are constant; 0.04 with four times
  the draws for a problem outside the training ranges), and their self-normalised estimate of
  :math:`\mathrm{KL}(p(\cdot\mid z)\,\|\,q)`, :math:`\sum_s \tilde w_s r_s - \log\big(\tfrac1n\sum_s e^{r_s}\big)`
  with :math:`\tilde w = \operatorname{softmax}(r)`, exceeds 0.03: the posterior differs from the exact one where
  it puts its mass, and where the exact one does; or
* :math:`\hat k` exceeds :func:`~distformer.psis.khat_threshold` for ``S`` draws (0.58 for ``S = 256``) and some draw
  weighs ten times the median one: mass the model missed, which only the prior's draws find;

and, for a problem outside the training ranges, where the **tail probe** finds mass the model misses: with
:math:`S` more draws from the prior alone, the self-normalised estimate from all :math:`2S` draws of
:math:`\mathrm{KL}(p(\cdot\mid z)\,\|\,q_\text{model})`, against the model's own density rather than the
defensive mixture's, exceeds 0.05. The model's own draws never reach a far tail of the exact posterior that the
model lacks (a Beta prior with a shape near 0 has one in logit space), and within the defensive mixture the prior's
share bounds the ratios there, so the statistics above stay quiet while the model's density, decaying like a
Gaussian, makes the KL large. And also where the ratios cannot be formed: NaN or +inf (a prior density or
likelihood that overflows at the model's draws, as for Beta priors with a, b near 0.001) or no draw with positive
target density. ``refine`` refuses such problems; the check flags them one by one instead of refusing the batch.

The second condition's spike guard matters: when the posterior is nearly exact the ratios vary by a few hundredths
of a nat, the generalized Pareto fit to such a narrow tail is ill-posed and returns a large :math:`\hat k` by chance,
while weights that even cannot make the answer wrong.

Where it runs, its verdict is ``post.reliable``: it measures the posterior of this very problem, which the
training ranges (``support.py``) can only vouch for in general; their reasons stay in ``post.reliability.reasons``.
It needs the likelihood (a problem with ``log_likelihood``, or a callable; by default the problem in the model's
card). The ratios are taken on the model's space: for a model with a latent warp the likelihood is read at
:math:`f^{-1}(u)`, and for a parametric prior the problem gives the prior's density and the likelihood there
(``Problem.warped_target``). For every problem it is opt-in, except for models whose card makes it their
default (the ``gp-hyperprior`` models, ``quantum`` and the filter models): it costs ``S`` likelihood evaluations
per problem in range and ``2 * OUTSIDE_DRAWS * S`` per problem outside (the tail probe's included), measured in
``benchmarks/stress.md``. With the default range check it judges only the problems the ranges flag
(``inference.py``), so each of those costs the latter.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..distributions.gmm import GaussianMixture
from ..psis import khat_threshold, pareto_smooth
from ..refinement import _as_log_likelihood, raw_importance_ratios, unusable_ratios
from .support import REASONS, Reliability

DEFENSIVE_SHARE = 0.1
KL_TOLERANCE = 0.05  # nats of the Jensen gap of the model's own draws' ratios, an estimate of KL(q || posterior)
# The gap runs a little below KL(posterior || q), the error that matters. Where the training ranges say the model
# was never measured (a range reason fired, or the data conflict with the prior beyond training), a tighter
# tolerance with four times the draws (less noise, so fewer false alarms at the tighter bound) catches the
# borderline misses: on `bench stress`'s gp-hyperprior "scale outside" family this took the silent share from
# 0.9% to 0.0% of 1,000 problems, with no false alarm there or in the other families' 300 each.
KL_TOLERANCE_OUTSIDE = 0.04
OUTSIDE_DRAWS = 4
# The gap estimates KL(model || exact); a posterior can be off where the exact one has little mass and still be
# accurate in KL(exact || model), the error the flag is about. The same draws' self-normalised estimate of that
# KL must exceed this too: on quantum's U-shaped priors (a, b in [0.1, 0.5], 600 problems) false alarms fell from
# 20 to 2 of 102 accurate problems, silent failures from 4 to 3; in `bench stress` no row lost a flagged
# inaccurate problem, and the false alarms there fell from 7 to 1 (quantum) and from 1 to 0 (gp scale outside).
INCLUSIVE_FLOOR = 0.03
SPIKE = math.log(10.0)  # a heavy tail counts when some draw weighs ten times the median one (as in refine)
# Both estimates are noisy at a few hundred draws: for U-shaped Beta priors (quantum, a, b in [0.1, 0.5]) accurate
# posteriors (KL < 0.02) had a gap above 0.05 one time in ten and 6% of them were flagged (16 of 254, 1,500
# problems). A flag raised by the uneven ratios alone with both estimates under twice their bounds is decided again
# by a fresh sample four times as large; clear failures (gap and inclusive KL beyond twice the bounds, or a tail)
# are not sampled again.
BORDERLINE = 2.0
# Beyond the training ranges the model's posterior may miss a far tail of the exact one that its own draws never
# reach: for Beta(a, b) priors with a < 0.3 (quantum), a long exponential tail of logit Delta, 1-4% of the mass,
# with KL(exact || model) 0.1-0.8, which the statistics above missed in 1 problem in 5. The tail probe adds as
# many draws again from the prior alone and estimates KL(exact || model) against the model's own density from all
# of them (``_tail_kl``); above this bound the problem is flagged (under twice it, after a second, larger sample).
TAIL_KL = 0.05
RECHECK_DRAWS = 4
# Problems are checked in chunks of at most this many draws in all (256 problems at 256 draws), so that a large
# batch's draws and likelihood terms stay within a few hundred MB.
CHUNK_DRAWS = 1 << 16


def card_likelihood(model):
    """The model's problem, for its likelihood: the one ``distformer.train`` or ``model_from_checkpoint`` was given
    in this session, else the one ``model.card`` describes (``problems.registry.from_card``), cached on the model."""
    cached = model.__dict__.get("_card_problem")
    if cached is None:
        from ..problems.registry import from_card

        try:
            cached = from_card(model.card)
        except ValueError as e:
            raise ValueError(f"Expected a likelihood for check='importance' or refine, but got none: {e}") from None
        model.__dict__["_card_problem"] = cached
    return cached


def importance_check(model, posterior, prior: GaussianMixture, observations, reliability, likelihood=None,
                     draws: int = 256, generator: torch.Generator | None = None, parameters=None,
                     outside: torch.Tensor | None = None):
    """``reliability`` (a :class:`~distformer.support.Reliability` or ``None``) with the ``importance`` reason and
    the Pareto ``k̂`` ``(*B)`` of each problem added (module docstring). ``parameters``: a parametric prior's
    parameters, whose density and likelihood on the model's space come from ``problem.warped_target``.
    ``outside`` ``(*B)``: problems beyond the training ranges (default: those with a range or conflict reason in
    ``reliability``), checked with ``OUTSIDE_DRAWS`` times the draws against ``KL_TOLERANCE_OUTSIDE``.
    ``generator`` ``None``: a fixed seed, so that a call's verdict repeats."""

    if not isinstance(draws, int) or draws < 25:
        raise ValueError(f"Expected at least 25 importance draws as an int, but got {draws!r}.")
    proposal = getattr(posterior, "base", posterior)  # the mixture on the model's (warped) space
    batch, device = proposal.batch_shape, proposal.loc.device
    n = batch.numel()
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    if outside is None:
        outside = torch.zeros(batch, dtype=torch.bool, device=device)
        for reason in REASONS if reliability is not None else ():
            if reason in reliability.reasons:
                outside = outside | reliability.reasons[reason].to(device)
    flat = _FlatBatch(model, proposal, prior, observations, parameters, batch)
    flagged = torch.zeros(n, dtype=torch.bool, device=device)
    k_hat = torch.zeros(n, dtype=torch.float64, device=device)
    outside = outside.reshape(n)
    for rows, count, tolerance, probe in (((~outside).nonzero().squeeze(-1), draws, KL_TOLERANCE, False),
                                        (outside.nonzero().squeeze(-1), OUTSIDE_DRAWS * draws, KL_TOLERANCE_OUTSIDE,
                                         True)):
        per_chunk = max(1, CHUNK_DRAWS // (count * (2 if probe else 1)))
        for chunk in rows.split(per_chunk) if rows.numel() else ():  # bounded memory
            flagged[chunk], k_hat[chunk], borderline = _flags(model, *flat.rows(chunk), likelihood, count, tolerance,
                                                              generator, probe)
            again = chunk[borderline]
            if again.numel():  # a second, four times larger sample decides the borderline flags
                flagged[again], k_hat[again], _ = _flags(model, *flat.rows(again), likelihood, RECHECK_DRAWS * count,
                                                         tolerance, generator, probe)
    flagged, k_hat = flagged.reshape(batch), k_hat.reshape(batch)
    if reliability is None:
        return Reliability(~flagged, {"importance": flagged}, pareto_k=k_hat)
    reasons = dict(reliability.reasons) | {"importance": flagged}
    # the check measures this very problem's posterior, so its verdict replaces the ranges', which only say where
    # accuracy was measured in general; their reasons stay in ``reasons`` for information
    return replace(reliability, reliable=~flagged, reasons=reasons, pareto_k=k_hat)


class _FlatBatch:
    """A batch ``B`` of (posterior, prior, data, parameters) flattened to ``n`` problems, to take rows from."""

    def __init__(self, model, proposal: GaussianMixture, prior, observations, parameters, batch) -> None:
        n = batch.numel()
        self.model = model
        self.proposal = flat_mixture(proposal, n)
        self.prior = flat_mixture(prior.expand(batch), n) if isinstance(prior, GaussianMixture) else prior
        self.observations = observations.expand(batch).reshape((n,))
        self.parameters = None if parameters is None else \
            parameters.expand(*batch, parameters.shape[-1]).reshape(n, parameters.shape[-1])

    def rows(self, rows):
        return (self.model._wrap(self.proposal[rows]), self.prior[rows] if isinstance(self.prior, GaussianMixture)
                else self.prior, self.observations.index(rows),
                None if self.parameters is None else self.parameters[rows])


def flat_mixture(mixture: GaussianMixture, n: int) -> GaussianMixture:
    """``mixture`` with its batch shape flattened to ``(n,)``."""
    K, D = mixture.num_components, mixture.dim
    return GaussianMixture._from_parts(mixture.log_weights.reshape(n, K), mixture.loc.reshape(n, K, D),
                                       mixture.scale_tril.reshape(n, K, D, D))


def _flags(model, posterior, prior, observations, parameters, likelihood, draws: int, tolerance: float,
           generator: torch.Generator, probe: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flags, Pareto ``k̂`` and borderline flags ``(n,)`` of a flat batch (module docstring), ``draws`` draws
    each: a flag is borderline when only the uneven ratios raised it, with both estimates within ``BORDERLINE``
    times their bounds. With ``probe``, also the tail probe (:func:`_tail_kl`)."""
    target, log_likelihood = _target(model, posterior, prior, observations, likelihood, parameters)
    proposal = getattr(posterior, "base", posterior).to(torch.float64)
    with torch.inference_mode():
        x, log_ratio = raw_importance_ratios(proposal, target, log_likelihood, observations, draws, DEFENSIVE_SHARE,
                                             generator)
        tail_kl = _tail_kl(proposal, target, log_likelihood, observations, x, log_ratio, generator) if probe else None
        # NaN or +inf ratios (a prior density or likelihood that overflows at the model's draws) or no draw with
        # positive target density: the check cannot vouch for the problem, so it is flagged, not the call refused
        unusable = unusable_ratios(log_ratio)
        log_ratio = torch.where(unusable, torch.zeros((), dtype=log_ratio.dtype), log_ratio)
        _, k_hat = pareto_smooth(log_ratio)
        own = log_ratio[:draws - round(DEFENSIVE_SHARE * draws)]  # the model's own draws come first
        log_mean = torch.logsumexp(own, 0) - math.log(own.shape[0])
        inclusive = (torch.softmax(own, 0) * own).sum(0) - log_mean  # self-normalised KL(exact || model)
        uneven = (log_mean - own.mean(0) > tolerance) & (inclusive > INCLUSIVE_FLOOR)
        spike = log_ratio.amax(0) - log_ratio.median(0).values > SPIKE
        k_hat = torch.where(unusable, torch.full((), math.inf, dtype=k_hat.dtype), k_hat)
        tail = (k_hat > khat_threshold(draws)) & spike
        borderline = uneven & ~tail & (log_mean - own.mean(0) < BORDERLINE * tolerance) \
            & (inclusive < BORDERLINE * INCLUSIVE_FLOOR)
        flagged = uneven | tail | unusable
        if tail_kl is not None:  # a flag of the tail probe alone, under twice its bound, is borderline too
            missed = ~(tail_kl <= TAIL_KL)  # NaN (no usable draw) counts as missed
            borderline = (borderline & ~missed) | (missed & ~flagged & (tail_kl < BORDERLINE * TAIL_KL))
            flagged = flagged | missed
        return flagged, k_hat.to(torch.float64), borderline


def _tail_kl(proposal: GaussianMixture, prior, log_likelihood, observations, x: torch.Tensor,
             log_ratio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""The tail probe (module docstring): the self-normalised estimate ``(n,)`` of
    :math:`\mathrm{KL}(p(\cdot\mid z)\,\|\,q_\text{model})` from the check's draws ``x`` ``(S, n, D)`` (log ratios
    ``log_ratio`` ``(S, n)`` against the defensive mixture) and as many again from the prior alone, which reach the
    tails that the model's own draws never do; NaN where no draw is usable."""
    from ..refinement import _log_density, _sample

    count = x.shape[0]
    extra = _sample(prior, count, generator).to(torch.float64).expand(count, *x.shape[1:])
    log_q = torch.cat([proposal.log_prob(x), proposal.log_prob(extra)])  # the model's density, (2S, n)
    log_p = torch.cat([_log_density(prior, x, x.shape[:-1]), _log_density(prior, extra, extra.shape[:-1])])
    own = count - round(DEFENSIVE_SHARE * count)
    log_l = log_likelihood(extra, observations).to(torch.float64)
    # prior x likelihood at the check's draws, from their ratios against the defensive mixture
    log_defensive = torch.logaddexp(log_q[:count] + math.log1p(-(count - own) / count),
                                    log_p[:count] + math.log((count - own) / count))
    log_target = torch.cat([log_ratio + log_defensive, log_p[count:] + log_l])
    share = (2 * count - own) / (2 * count)  # the prior's share of all 2S draws
    log_sampled = torch.logaddexp(log_q + math.log1p(-share), log_p + math.log(share))
    ratio = log_target - log_sampled
    weight = torch.softmax(ratio, 0)
    log_z = torch.logsumexp(ratio, 0) - math.log(2 * count)
    terms = torch.where(weight > 0, weight * (log_target - log_q), torch.zeros((), dtype=weight.dtype))
    return terms.sum(0) - log_z


def _target(model, posterior, prior, observations, likelihood, parameters):
    """The prior density and the log-likelihood on the model's space (where the posterior mixture lives)."""
    batch = getattr(posterior, "base", posterior).batch_shape
    if parameters is not None:  # a parametric prior: the problem knows its density on the model's space
        problem = likelihood if likelihood is not None else card_likelihood(model)
        if not hasattr(problem, "warped_target"):
            raise ValueError("Expected a problem with warped_target(prior, observations) for check='importance' on "
                             f"a parametric prior, but got {type(problem).__name__}.")
        try:
            return problem.warped_target(parameters.expand(*batch, parameters.shape[-1]), observations)
        except NotImplementedError:
            raise ValueError(f"Expected problem {problem.name!r} to give its prior density and likelihood on the "
                             "model's space (warped_target) for check='importance', but it does not.") from None
    log_likelihood = _as_log_likelihood(likelihood if likelihood is not None else card_likelihood(model))
    warp = model.warp
    if warp is not None:  # the mixture lives on the warped space; the likelihood reads the original one
        original = log_likelihood
        log_likelihood = lambda theta, obs: original(warp.inverse(theta), obs)  # noqa: E731
    return prior.expand(batch).to(torch.float64), log_likelihood

r"""Importance-sampling correction of an amortized posterior, with a reliability flag.

The proposal for the exact posterior :math:`p(x\mid z)\propto p(x)\,p(z\mid x)` is the defensive mixture
(Hesterberg 1995) of the model's posterior :math:`q_\text{model}` and the prior,
:math:`q = (1-\alpha)\,q_\text{model} + \alpha\,p`, drawn with the fixed counts :math:`(1-\alpha)S` and
:math:`\alpha S` (balance heuristic). The prior share bounds every weight by :math:`p(z\mid x)/\alpha` and puts draws
in prior modes the model may have dropped. For draws :math:`x_s`, :math:`s=1..S`,

.. math::
    r_s = \log p(x_s) + \log p(z\mid x_s) - \log q(x_s),\qquad
    \tilde w_s = \frac{e^{\tilde r_s}}{\sum_t e^{\tilde r_t}},

where :math:`\tilde r` are the Pareto-smoothed ratios (:mod:`distformer.psis`). The self-normalised estimate
:math:`\sum_s\tilde w_s f(x_s)` of :math:`\mathbb E[f(x)\mid z]` is consistent whenever :math:`q` covers the posterior;
its effective sample size is :math:`1/\sum_s\tilde w_s^2`, and :math:`\frac1S\sum_s e^{r_s}` estimates the evidence
:math:`p(z)`. The refitted posterior is the weighted maximum-likelihood ``GaussianMixture`` (EM started at the
proposal). The Pareto :math:`\hat k` of the ratios says whether to believe any of it: above
:func:`~distformer.psis.khat_threshold` (0.7 for :math:`S\ge 2200`) the proposal misses mass the posterior has,
and the correction cannot be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .distributions.gmm import GaussianMixture
from .psis import khat_threshold, pareto_smooth


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine` for a batch ``B`` of problems.

    Attributes:
        samples: draws from the proposal, ``(S, *B, D)`` (on the original space for a warped proposal).
        log_weights: normalised Pareto-smoothed log weights, ``(S, *B)`` (``logsumexp`` over draws is 0).
        ess: effective sample size ``1 / sum w^2``, ``(*B)``.
        pareto_k: Pareto ``k̂`` of the importance ratios, ``(*B)``.
        threshold: ``k̂`` above which the result is flagged unreliable.
        log_evidence: ``log (1/S) sum_s exp(r_s)``, an estimate of ``log p(z)``, ``(*B)``.
        posterior: the weighted EM refit, a ``GaussianMixture`` with batch ``B`` (a ``WarpedGaussianMixture`` for a
            warped proposal).
        ratio_spike: largest minus median log ratio, ``(*B)``: below ``log 10`` every draw weighs less than ten
            times the median one, and ``k̂`` is not read (a generalized Pareto fit to so narrow a tail is ill-posed
            and can return a large ``k̂`` by chance when the proposal is nearly exact).
    """

    samples: Tensor
    log_weights: Tensor
    ess: Tensor
    pareto_k: Tensor
    threshold: float
    log_evidence: Tensor
    posterior: GaussianMixture
    ratio_spike: Tensor | None = None

    @property
    def weights(self) -> Tensor:
        """Normalised importance weights ``(S, *B)``."""
        return self.log_weights.exp()

    @property
    def reliable(self) -> Tensor:
        """``pareto_k < threshold`` or no draw ten times the median one, ``(*B)``: where the correction can be
        trusted."""
        tail_ok = self.pareto_k < self.threshold
        return tail_ok if self.ratio_spike is None else tail_ok | (self.ratio_spike <= math.log(10.0))

    @property
    def mean(self) -> Tensor:
        """Importance-weighted posterior mean ``(*B, D)``."""
        return (self.weights.unsqueeze(-1) * self.samples).sum(0)

    def resample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` unweighted draws ``(count, *B, D)`` of the corrected posterior: the weighted draws resampled
        with replacement in proportion to their weights, independently for each problem (sampling-importance
        resampling). Draws repeat where the weights are uneven; the effective sample size ``ess`` says how many
        distinct draws they are worth."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"Expected a positive int count of draws, but got {count!r}.")
        S, *batch, D = self.samples.shape
        flat = self.weights.reshape(S, -1).T  # (problems, S)
        pick = torch.multinomial(flat, count, replacement=True, generator=generator)  # (problems, count)
        draws = self.samples.reshape(S, -1, D).gather(0, pick.T.unsqueeze(-1).expand(count, -1, D))
        return draws.reshape(count, *batch, D)


def refine(posterior: GaussianMixture, prior, likelihood, observations, n: int = 4096, *,
           defensive: float = 0.1, num_components: int | None = None,
           generator: torch.Generator | None = None, max_iterations: int = 100) -> Refinement:
    """Correct ``posterior`` by importance sampling against ``prior × likelihood``.

    Args:
        posterior: the proposal, a ``GaussianMixture`` with batch shape ``B`` (typically ``model.posterior(...)``),
            or a ``WarpedGaussianMixture`` (a model with a warp): the draws are then made and weighted on the warped
            space and returned on the original one, and the refit is warped too.
        prior: the prior the posterior was computed under: anything with ``log_prob(x)`` that maps
            ``(S, *B, D)`` to ``(S, *B)`` (a ``GaussianMixture`` or a ``torch.distributions`` object). For a warped
            posterior: the same prior as ``model.posterior`` took (a ``GaussianMixture`` on the warped space or a
            ``WarpedGaussianMixture``), or a distribution on the original space.
        likelihood: a problem (``distformer.problems``) with ``log_likelihood``, or a callable
            ``(theta (S, *B, D), observations) -> log p(observations | theta) (S, *B)``.
        observations: the data, as passed to ``model.posterior`` (handed to ``likelihood`` unchanged).
        n: number of importance draws per problem (at least 100).
        defensive: share ``α`` of the draws taken from the prior (needs ``prior.sample``; 0 turns it off).
        num_components: components of the refitted mixture (default: the proposal's).
        generator: random-number generator for the draws.
        max_iterations: EM iterations for the refit.

    Returns:
        :class:`Refinement` (weighted samples, ESS, Pareto ``k̂`` and flag, evidence, refitted mixture), in float64.
    """
    from .distributions.transforms import WarpedGaussianMixture

    if not isinstance(posterior, (GaussianMixture, WarpedGaussianMixture)):
        raise TypeError("Expected posterior to be a distformer.GaussianMixture or WarpedGaussianMixture, but got "
                        f"{type(posterior).__name__}.")
    if not hasattr(prior, "log_prob"):
        raise TypeError(f"Expected a prior with a log_prob method, but got {type(prior).__name__}.")
    log_likelihood = _as_log_likelihood(likelihood)
    if not isinstance(n, int) or isinstance(n, bool) or n < 100:
        raise ValueError(f"Expected n >= 100 importance draws as an int, but got {n!r}.")
    if not 0.0 <= defensive < 1.0:
        raise ValueError(f"Expected the defensive share in [0, 1), but got {defensive!r}.")
    if defensive > 0 and not hasattr(prior, "sample"):
        raise TypeError(f"Expected a prior with a sample method for defensive > 0, but got {type(prior).__name__}; "
                        "pass defensive=0 to draw from the posterior only.")
    k = posterior.num_components if num_components is None else num_components
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"Expected num_components to be a positive int, but got {k!r}.")
    warp = None
    if isinstance(posterior, WarpedGaussianMixture):  # work on the warped space, where the mixture lives
        warp, posterior = posterior.warp, posterior.base
        prior, log_likelihood = _on_warped_space(prior, log_likelihood, warp)
    with torch.no_grad():
        proposal = posterior.to(torch.float64)
        x, log_ratio = importance_ratios(proposal, prior, log_likelihood, observations, n, defensive, generator)
        log_evidence = torch.logsumexp(log_ratio, 0) - math.log(n)
        smoothed, k_hat = pareto_smooth(log_ratio)
        log_w = smoothed - torch.logsumexp(smoothed, 0, keepdim=True)
        ess = 1.0 / log_w.mul(2).exp().sum(0)
        init = proposal.reduce(k) if k <= proposal.num_components else None
        refit = GaussianMixture.fit(x, k, sample_weights=log_w.exp(), init=init, generator=generator,
                                    max_iterations=max_iterations, tol=1e-8)
    spike = log_ratio.amax(0) - log_ratio.median(0).values
    if warp is not None:
        x, refit = warp.inverse(x), WarpedGaussianMixture(refit, warp)
    return Refinement(x, log_w, ess, k_hat, khat_threshold(n), log_evidence, refit, spike)


def _on_warped_space(prior, log_likelihood, warp):
    r"""The prior density and the log-likelihood as functions of the warped point :math:`u = f(x)`, for a posterior
    that is a mixture on the warped space: a ``WarpedGaussianMixture`` prior with the same warp gives its base, a
    ``GaussianMixture`` is taken to live on the warped space already (as ``model.posterior`` takes it), and any
    other prior on the original space gets the change of variables
    :math:`\log p_u(u) = \log p_x(f^{-1}(u)) - \log|f'(f^{-1}(u))|`. The likelihood reads :math:`f^{-1}(u)`. Both
    the proposal and the target are then densities on the warped space, so the weights are the same as on the
    original one."""
    from .distributions.transforms import WarpedGaussianMixture
    from .problems.base import WarpedPrior

    if isinstance(prior, WarpedGaussianMixture):
        if prior.warp != warp:
            raise ValueError(f"Expected a prior with the posterior's warp {warp!r}, but got {prior.warp!r}.")
        prior = prior.base
    elif not isinstance(prior, GaussianMixture):
        original = prior

        def log_prob(u: Tensor) -> Tensor:
            x = warp.inverse(u)
            return original.log_prob(x) - warp.log_abs_det_jacobian(x)

        def sample(shape: torch.Size, generator: torch.Generator | None) -> Tensor:
            x = _sample(original, shape.numel(), generator)
            return warp.forward(x).reshape(*shape, *x.shape[1:])

        prior = WarpedPrior(log_prob, sample)  # sample is called only with defensive > 0, which needs original's
    return prior, lambda u, observations: log_likelihood(warp.inverse(u), observations)


def importance_ratios(proposal: GaussianMixture, prior, log_likelihood, observations, n: int, defensive: float,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draws ``x`` ``(S, *B, D)`` from the defensive mixture of ``proposal`` (float64) and ``prior`` (module
    docstring) and their log ratios :math:`r_s` ``(S, *B)``; raises where a ratio is NaN or +inf, or where every
    draw of a problem has zero target density."""
    x, log_ratio = raw_importance_ratios(proposal, prior, log_likelihood, observations, n, defensive, generator)
    if bool(torch.isnan(log_ratio).any()) or bool((log_ratio == math.inf).any()):
        raise ValueError("Expected finite log prior and log-likelihood values at the proposal's draws, but got "
                         "NaN or +inf.")
    impossible = ~torch.isfinite(log_ratio).any(0)
    if bool(impossible.any()):
        raise ValueError(f"Expected the proposal to put some draws where prior × likelihood is positive, but in "
                         f"{int(impossible.sum())} problem(s) every draw has zero target density.")
    return x, log_ratio


def unusable_ratios(log_ratio: Tensor) -> Tensor:
    """Booleans ``(*B)``: problems whose log ratios ``(S, *B)`` hold NaN or +inf, or are all -inf (no draw where
    prior × likelihood is positive), which :func:`importance_ratios` refuses."""
    return torch.isnan(log_ratio).any(0) | (log_ratio == math.inf).any(0) | ~torch.isfinite(log_ratio).any(0)


def raw_importance_ratios(proposal: GaussianMixture, prior, log_likelihood, observations, n: int, defensive: float,
                          generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """:func:`importance_ratios` without its checks: the caller judges :func:`unusable_ratios` problem by
    problem."""
    n_prior = round(defensive * n)
    x = proposal.sample((n - n_prior,), generator=generator)  # (S, *B, D)
    if n_prior:
        from_prior = _sample(prior, n_prior, generator).to(torch.float64)
        x = torch.cat([x, from_prior.expand(n_prior, *x.shape[1:])])
    shape = x.shape[:-1]
    log_q = proposal.log_prob(x)
    log_p = _log_density(prior, x, shape)
    if n_prior:
        log_q = torch.logaddexp(log_q + math.log1p(-n_prior / n), log_p + math.log(n_prior / n))
    log_l = log_likelihood(x, observations)
    _check_shape(log_l, shape, "the log-likelihood")
    return x, log_p + log_l.to(torch.float64) - log_q


def _as_log_likelihood(likelihood) -> Callable[[Tensor, object], Tensor]:
    from .problems.base import Problem

    if isinstance(likelihood, Problem):
        return likelihood.log_likelihood
    if callable(likelihood):
        return likelihood
    raise TypeError(f"Expected likelihood to be a distformer problem or a callable (theta, observations) -> "
                    f"log-likelihood, but got {type(likelihood).__name__}.")


def _sample(prior, n: int, generator: torch.Generator | None) -> Tensor:
    from .distributions.transforms import WarpedGaussianMixture
    from .problems.base import WarpedPrior

    if isinstance(prior, (GaussianMixture, WarpedGaussianMixture, WarpedPrior)):
        return prior.sample((n,), generator=generator)
    return prior.sample((n,))  # torch.distributions take no generator; they use the global one


def _log_density(prior, x: Tensor, shape: torch.Size) -> Tensor:
    if isinstance(prior, GaussianMixture):
        prior = prior.to(torch.float64)
    log_p = prior.log_prob(x)
    _check_shape(log_p, shape, "the prior's log_prob")
    return log_p.to(torch.float64).expand(shape)


def _check_shape(values, shape: torch.Size, what: str) -> None:
    """``values`` must be a tensor that broadcasts to ``shape`` without growing it."""
    try:
        ok = isinstance(values, Tensor) and torch.broadcast_shapes(values.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"Expected {what} to have shape {tuple(shape)} (draws, *batch), but got "
                         f"{tuple(getattr(values, 'shape', ()))}; give the prior the posterior's batch shape.")

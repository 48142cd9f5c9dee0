r"""``model.posterior``: prepare the prior and data, judge each problem, run the network, finish the mixture.

Steps, for a batch ``B`` of (prior, data) problems:

1. **prepare**: a parametric prior goes through the prior encoder; the GMM prior becomes its chart (``tokens.py``);
   prior and data are broadcast to ``B`` and flattened.
2. **judge** (``check``): each problem against the training support (``support.py``), and with
   ``check="importance"`` also the Pareto :math:`\hat k` of importance ratios against the prior times the
   likelihood (``reliability.py``); the verdict is ``post.reliable`` and ``post.reliability``. With the default
   range check, a problem the ranges flag is one the model was never measured on, not one it must get wrong: where
   a likelihood is at hand (the card's problem, or ``likelihood``), each such problem is judged by the importance
   check after step 4 and keeps its reasons only where that check fails. The problems in range cost nothing more;
   those outside cost about 4 ms each, the importance check's tail probe included (``check="ranges"``: the ranges'
   verdict alone).
3. **run**: data sets with an observation go through the network (``engine.decode`` chooses the
   traced, chunked or eager forward); one without any keeps its prior, :math:`p(x\mid\{\}) = p(x)`. A small
   batch of a GMM prior with data in every data set runs steps 1-4 as one traced graph instead
   (``engine.small_batch_update``, the same function and verdict): at batch size 1 the operator calls from Python
   otherwise cost about as much as the network.
4. **finish**: Bayes' rule for the weights that the chart floors (:math:`\log w < -16`): the network's weight
   change is added to the true log weight, so a component of prior weight 0 keeps weight 0.

**Data sets larger than the training counts** (``ModelConfig.split_observations``, one source, conditionally
independent observations): :math:`p(x\mid A\cup B) \propto p(x\mid A)\,p(B\mid x)`, so the observations are taken
in consecutive parts of at most the trained count, each part's posterior the next part's prior. This is exact
Bayes; the model's error adds up over the parts.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..distributions.linalg import broadcast_shapes
from ..distributions.transforms import WarpedGaussianMixture
from ..observations import Observations, as_observations
from .engine import decode, not_finite, small_batch_update
from .support import REASONS, Reliability, flagged_by, warn_flagged
from .tokens import LOG_WEIGHT_FLOOR, chart_to_gmm, gmm_to_chart

CHECKS = (True, False, "importance", "ranges")


def posterior(model, prior, observations, mask=None, *, grad: bool = False, strict: bool = False, check=None,
              likelihood=None, importance_draws: int = 256, generator: torch.Generator | None = None):
    """See ``DistributionTransformer.posterior``."""
    if check is None:
        check = model.card.get("check", True)
    if check not in CHECKS:
        raise ValueError(f"Expected check among {CHECKS}, but got {check!r}.")
    check = CHECKS[CHECKS.index(check)]  # 1, 0 or numpy booleans as the True or False they equal
    raw_prior = prior
    prior, encoded, parameters = prepared_prior(model, prior, grad)
    obs = as_observations(observations, model.config.sources, mask)
    for source, anchor in model.config.relative_sources.items():
        present = obs.masks[anchor][..., :1]
        if present.shape[-1] == 0 or not bool(present.all()):
            raise ValueError(f"Expected the first {anchor!r} observation to be present in every data set (this "
                             f"model reads {source!r} relative to it), but it is missing or masked in some.")
    try:
        batch = broadcast_shapes(prior.batch_shape, obs.batch_shape)
    except RuntimeError:
        raise ValueError(f"Expected the prior's batch shape {tuple(prior.batch_shape)} to broadcast with the "
                         f"observations' {tuple(obs.batch_shape)}.") from None
    parts = _parts(model, obs, batch)
    if len(parts) > 1:
        result, reliability = _in_parts(model, prior, parts, batch, grad, check)
    else:
        result, reliability = _posterior(model, prior, encoded, parameters, obs, batch, grad, check)
    parameters = raw_prior if model.is_parametric and torch.is_tensor(raw_prior) else None
    trusted = reliability is None or bool(reliability.reliable.all())
    if check is True and not trusted:
        reliability = _range_checked(model, result, prior, obs.expand(batch), reliability, likelihood,
                                     importance_draws, generator, parameters)
        trusted = bool(reliability.reliable.all())
    if check == "importance":
        from .reliability import importance_check

        reliability = importance_check(model, result, prior, obs, reliability, likelihood, importance_draws,
                                       generator, parameters)
        trusted = bool(reliability.reliable.all())
    if not trusted:
        _warn(model, reliability, strict, check)
    result.reliability = reliability
    result.reliable = None if reliability is None else reliability.reliable
    return result


def prepared_prior(model, prior, grad: bool):
    """``(mixture, encoded chart or None, warped parameters or None)`` of a user's prior: a parametric prior's
    encoder chart is what the network reads (training's input), and its decoded mixture is the prior."""
    encoded = parameters = None
    if model.is_parametric and torch.is_tensor(prior) and not prior.dtype.is_floating_point:
        prior = prior.to(model.prior_encoder.last.weight.dtype)  # integer alpha and beta: exact as floats
    if model.is_parametric and torch.is_tensor(prior):
        with torch.enable_grad() if grad else torch.inference_mode():
            encoded = model._encoded_prior_chart(prior)
            parameters = model._parameter_warp.forward(prior.detach().to(encoded.dtype))
            prior = chart_to_gmm(encoded.to(prior.dtype), model.dim)
    if isinstance(prior, WarpedGaussianMixture):
        if model.warp is None or prior.warp != model.warp:
            raise ValueError(f"Expected a prior with this model's warp {model.warp!r}, but got {prior.warp!r}.")
        prior = prior.base
    if not isinstance(prior, GaussianMixture):
        kind = " or its prior parameters as a tensor" if model.is_parametric else ""
        raise TypeError(f"Expected prior to be a distformer.GaussianMixture{kind}, but got {type(prior).__name__}.")
    if prior.dim != model.dim:
        raise ValueError(f"Expected a prior over D={model.dim} dimensions for this model, but got D={prior.dim}.")
    return prior, encoded, parameters


def _posterior(model, prior: GaussianMixture, encoded, parameters, obs: Observations, batch, grad: bool, check):
    """Steps 1-4 of the module docstring for one part of the data: ``(posterior, Reliability or None)``."""
    weight = model.prior_embedding.last.weight
    with torch.enable_grad() if grad else torch.inference_mode():
        if not grad and encoded is None and batch.numel() <= model.traced_batch_size and not model.is_parametric \
                and prior.dtype == weight.dtype and prior.loc.device == weight.device:
            flat_obs = obs if obs.batch_shape == batch else obs.expand(batch)
            if len(batch) != 1:
                flat_obs = flat_obs.reshape((batch.numel(),))
            if any(v.dtype != weight.dtype or v.device != weight.device for v in flat_obs.values.values()):
                flat_obs = flat_obs.to(dtype=weight.dtype, device=weight.device)
            if flat_obs.any_present() is None:
                update = small_batch_update(model, bool(check))
                if update is not None:
                    return _updated(model, update, prior, flat_obs, batch)
        chart = gmm_to_chart(prior) if encoded is None else encoded
        K, C = chart.shape[-2:]
        if chart.shape[:-2] != batch:
            chart = chart.expand(*batch, K, C)
            obs = obs.expand(batch)
        chart = chart.reshape(-1, K, C)
        flat_obs = obs.reshape((chart.shape[0],))
        if chart.dtype != weight.dtype or chart.device != weight.device:
            chart = chart.to(dtype=weight.dtype, device=weight.device)
        flat_obs = flat_obs.to(dtype=weight.dtype, device=weight.device)
        reliability = _judged(model, chart, flat_obs, parameters, batch) if check else None
        present = flat_obs.any_present()
        if present is None:  # every data set has observations: the common, fast path
            out = decode(model, chart, flat_obs, grad)
        else:  # only data sets with observations go through the network
            rows = present.nonzero().squeeze(-1)
            out = chart.clone()
            if rows.numel():
                out[rows] = decode(model, chart[rows], flat_obs.index(rows), grad)
        out = out.reshape(*batch, K, C)
        if encoded is None:  # Bayes' rule for the weights the chart floors: 0 stays 0, tiny stays tiny
            log_w = prior.log_weights.expand(*batch, K).to(out.dtype)
            floored = log_w < LOG_WEIGHT_FLOOR
            if bool(floored.any()):
                change = torch.where(floored, log_w - LOG_WEIGHT_FLOOR, torch.zeros((), dtype=out.dtype))
                out = torch.cat([out[..., :1] + change.unsqueeze(-1), out[..., 1:]], -1)
        result = chart_to_gmm(out if out.dtype == prior.dtype else out.to(prior.dtype), model.dim)
        if present is not None:  # a data set without any observation keeps its prior exactly: p(x | {}) = p(x)
            keep = present.reshape(batch).to(result.device)
            prior = prior.expand(batch)
            result = GaussianMixture(
                logits=torch.where(keep[..., None], result.log_weights, prior.log_weights),
                loc=torch.where(keep[..., None, None], result.loc, prior.loc),
                scale_tril=torch.where(keep[..., None, None, None], result.scale_tril, prior.scale_tril),
                validate_args=False)
        return model._wrap(result), reliability


def _updated(model, update, prior: GaussianMixture, obs: Observations, batch):
    """:func:`_posterior` by the small-batch trace (``engine.small_batch_update``) for a flat batch of data
    ``obs``: the same posterior and verdict, one traced graph instead of some forty operator calls from Python."""
    n, K = batch.numel(), prior.num_components
    parts = (prior.log_weights, prior.loc, prior.scale_tril)
    if prior.batch_shape != (n,):
        event = len(prior.batch_shape) + 1  # where each part's per-component shape starts
        parts = tuple(t.expand(*batch, K, *t.shape[event:]).reshape(n, K, *t.shape[event:]) for t in parts)
    outputs = update(*parts, *obs.values.values(), *obs.masks.values())
    if not bool(outputs[3]):
        raise not_finite(model)
    posterior = outputs[:3] if batch == (n,) else [t.reshape(*batch, *t.shape[1:]) for t in outputs[:3]]
    result = model._wrap(GaussianMixture._from_parts(*posterior))
    if len(outputs) == 4:
        return result, None
    reliable, *reasons = outputs[4:] if batch == (n,) else [t.reshape(batch) for t in outputs[4:]]
    reliability = Reliability(reliable, dict(zip(REASONS, reasons)))
    if bool(reliable.all()):
        return result, reliability
    return result, _described(model, reliability, obs, prior=GaussianMixture._from_parts(*parts))


def _range_checked(model, result, prior: GaussianMixture, obs: Observations, reliability, likelihood, draws: int,
                   generator, parameters: Tensor | None):
    """The verdict on the problems the ranges flag (module docstring, step 2): each is judged by the importance
    check of ``reliability.py`` (the card's likelihood unless ``likelihood`` is given; ``draws`` draws, four times
    as many for a problem outside; a fixed seed unless ``generator`` is given, so that a call's verdict repeats)
    and keeps its reasons only where that check fails; ``pareto_k`` is that check's, NaN for problems it did not
    judge. ``parameters``: a parametric prior's, whose exact density the check then uses. Where no likelihood is
    at hand, or the check cannot use it, the reasons stand and ``pareto_k`` stays ``None``."""
    from .reliability import card_likelihood, flat_mixture, importance_check

    try:
        likelihood = likelihood if likelihood is not None else card_likelihood(model)
    except ValueError:
        return reliability
    base = getattr(result, "base", result)
    batch = base.batch_shape
    n = batch.numel()
    flagged = (~reliability.reliable).reshape(n).to(base.loc.device)
    rows = flagged.nonzero().squeeze(-1)
    flat_prior, flat_obs = flat_mixture(prior.expand(batch), n), obs.reshape((n,))
    if parameters is not None:
        parameters = parameters.expand(*batch, parameters.shape[-1]).reshape(n, parameters.shape[-1])[rows]
    try:
        verdict = importance_check(model, flat_mixture(base, n)[rows], flat_prior[rows], flat_obs.index(rows), None,
                                   likelihood, draws, generator, parameters,
                                   outside=torch.ones_like(rows, dtype=torch.bool))
    except (ValueError, NotImplementedError):  # a likelihood the check cannot use: the reasons stand
        return reliability
    kept = torch.zeros_like(flagged)
    kept[rows] = verdict.reasons["importance"].to(kept.device)
    k_hat = torch.full((n,), float("nan"), dtype=torch.float64, device=kept.device)
    k_hat[rows] = verdict.pareto_k.to(k_hat.device)
    kept = kept.reshape(batch)
    reasons = {k: v & kept.to(v.device) for k, v in reliability.reasons.items()}
    return _described(model, replace(reliability, reliable=~flagged_by(reasons), reasons=reasons,
                                     pareto_k=k_hat.reshape(batch)), flat_obs, prior=flat_prior)


def _judged(model, chart: Tensor, obs: Observations, parameters: Tensor | None, batch):
    """The per-problem :class:`~distformer.support.Reliability` of a flat batch, shaped ``batch``, with the flat
    batch kept for describing a flagged problem."""

    support = model.support
    if support is None:
        return None
    flat_parameters = None
    if parameters is not None and support.parameter_names:  # else (an older card) the encoder's chart is checked
        flat_parameters = parameters.expand(*batch, parameters.shape[-1]).reshape(-1, parameters.shape[-1])
    reasons = support.outside(chart, obs, flat_parameters)  # a parametric prior's chart: for its conflict check
    flagged = flagged_by(reasons)
    if flagged.shape != batch:
        flagged = flagged.reshape(batch)
        reasons = {k: v.reshape(batch) for k, v in reasons.items()}
    return _described(model, Reliability(~flagged, reasons), obs, chart, flat_parameters)


def _described(model, reliability, obs: Observations, chart: Tensor | None = None, parameters: Tensor | None = None,
               prior: GaussianMixture | None = None):
    """``reliability`` with ``detail``, what lies outside for its first flagged problem (flat index), from the flat
    batch's data ``obs`` and charts ``(n, K, C)`` or parameters ``(n, P)``, or its prior mixture ``(n,)`` (of which
    only that problem's chart is made); no detail when nothing is flagged."""
    flagged = (~reliability.reliable).reshape(-1)
    if not bool(flagged.any()):
        return replace(reliability, detail="")
    row = where = int(flagged.nonzero()[0])
    if prior is not None:
        chart = gmm_to_chart(prior[row:row + 1])
        obs, where = obs.slice(row, row + 1).to(dtype=chart.dtype), 0
    return replace(reliability, detail=f"e.g. problem {row} (flat index): "
                   f"{model.support.describe(chart, obs, parameters, where)}")


def _warn(model, reliability, strict: bool, check) -> None:

    why = []
    judged = ", and importance sampling against prior times likelihood finds the posterior off there" \
        if reliability.pareto_k is not None else ""
    if check != "importance" and any(bool(reliability.reasons[k].any()) for k in ("prior", "data", "count")):
        why.append("prior, data and count are numbers outside the ranges the model was trained and measured on"
                   + judged)
    if check != "importance" and bool(reliability.reasons["conflict"].any()):
        why.append("conflict means the data lie further from every prior component than in training" + judged)
    if why and reliability.detail:
        why[-1] += f" ({reliability.detail})"
    if "importance" in reliability.reasons and bool(reliability.reasons["importance"].any()):
        why.append("importance means the posterior differs measurably from prior times likelihood: the importance "
                   "ratios of its draws are uneven, or have a heavy tail that shows mass it missed")
    warn_flagged(f"Expected posteriors the model can vouch for, but {reliability.summary()}: " + "; ".join(why)
                 + ". See post.reliable.", strict, stacklevel=4)


def _parts(model, obs: Observations, batch) -> list[Observations]:
    """The data, broadcast to ``batch``, in consecutive parts of at most the trained count (module docstring), or
    ``[obs]`` as given."""
    support = model.support
    if not model.config.split_observations or support is None:
        return [obs]
    (name,) = model.config.sources
    size = support.count_high[name]
    # the first test needs no pass over the data
    if obs.masks[name].shape[-1] <= size or int(obs.masks[name].sum(-1).max()) <= size:
        return [obs]
    obs = obs.expand(batch)
    values, masks = obs.values[name], obs.masks[name]
    # present observations first, in their order, so that every part but the last of a data set is full
    order = torch.sort((~masks).to(torch.int8), dim=-1, stable=True).indices
    values = values.gather(-2, order.unsqueeze(-1).expand(*order.shape, values.shape[-1]))
    masks = masks.gather(-1, order)
    count = int(masks.sum(-1).max())
    return [Observations({name: values[..., start:start + size, :]}, {name: masks[..., start:start + size]})
            for start in range(0, count, size)]


def _in_parts(model, prior, parts: list[Observations], batch, grad: bool, check):
    """The posterior after every part in turn (module docstring), and the union of the parts' flags."""

    belief = prior.expand(batch)
    verdicts = []
    for part in parts:
        result, reliability = _posterior(model, belief, None, None, part.expand(batch), batch, grad, check)
        verdicts.append(reliability)
        belief = result.base if isinstance(result, WarpedGaussianMixture) else result
    if verdicts[0] is None:
        return result, None
    reasons = {k: torch.stack([v.reasons[k] for v in verdicts]).any(0) for k in verdicts[0].reasons}
    detail = next((v.detail for v in verdicts if v.detail), "")
    return result, Reliability(torch.stack([v.reliable for v in verdicts]).all(0), reasons, detail=detail)

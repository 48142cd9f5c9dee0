r"""The training support of a model, and the per-problem typicality check behind ``post.reliable``.

Each problem of a batch, a (prior, data) pair, is judged on its own, in the frame the network reads it in: for an
anchored model (``ModelConfig.anchor``) every mean and observation of the anchor source is taken relative to the
data mean, so a translated problem is judged as the model sees it. The support holds, from ``n`` draws of the
training meta-prior, the range of

* every component coordinate but the weight, :math:`[\mu,\ \log\operatorname{diag}L,\ \operatorname{offdiag}L]`,
  as the network reads it (``component_features``: for bounded features, asinh of the means and off-diagonal
  entries, and log scales above the features' ceiling at the ceiling), or for a parametric-prior model every warped
  prior parameter. The weights need no range: components of weight exactly 0 are left out, and for a model with
  ``site_evidence`` the weights follow Bayes' rule;
* every observation coordinate per source, and the number of observations per source;

each widened by ``margin`` of its width on either side, :math:`[a - \rho(b-a),\ b + \rho(b-a)]`. A problem is
*atypical* when any of its numbers lies outside; the reasons are kept per problem (``prior``, ``data``,
``count``). For a model whose site multiplies each prior component exactly (no chart residual), log scales are
accepted down to ``NARROW_LIMIT`` of the noise sd, below training's, where accuracy was measured.

Per-coordinate ranges cannot see a prior and data that are each ordinary but far apart. For an anchored model the
support also holds the largest **prior-data conflict** of training, the distance of the data mean from the
nearest live component in prior-predictive sds (:meth:`TrainingSupport.conflict_distance`, widened by ``margin``);
a problem beyond it gets the reason ``conflict``. Beyond any range the model's accuracy varies from problem to
problem, so where a likelihood is at hand ``inference.py`` judges each flagged problem by the importance check of
``reliability.py`` and keeps its reasons only where that check fails. For a scale-anchored model
(``ModelConfig.scale_source``) the same role falls to the data's scale against the prior (:func:`scale_conflict`,
signed, with the central 99.8% of training as its range): the prior's scale parameter itself needs no range, since
the prior encoder is exactly equivariant in it, but data far larger or smaller than the prior allows are what the
network never read. The number of components ``K`` is not
checked: the decoder has no positional encoding over components, and ``bench components`` measures any ``K``.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from ..distributions.small_linalg import (MAX_UNROLLED_DIM, entries, entry_sum, mahalanobis,
                                          squared_mahalanobis_entries)
from ..distributions.transforms import Warp
from ..observations import Observations
from .structure import FEATURE_LOG_SCALE_RANGE, framed_observations, moved, scale_anchor_of
from .tokens import gmm_to_chart, tril_from_parts

SUPPORT_FORMAT = 2
# For an anchored model whose site multiplies the prior component exactly with no chart residual
# (``ModelConfig.site_residual`` off), a component narrower than any in training only sharpens an exact product:
# its log scales are accepted down to this share of the noise sd, where float32 posteriors were measured as
# accurate as in training (``bench stress``, very-narrow family); below it float32 rounding of the means shows.
NARROW_LIMIT = 1e-4
REASONS = ("prior", "data", "count", "conflict")


def flagged_by(reasons: Mapping[str, Tensor]) -> Tensor:
    """Where any of the range and conflict reasons (``REASONS``) fired: the problems the check flags."""
    flagged = reasons[REASONS[0]]
    for reason in REASONS[1:]:
        flagged = flagged | reasons[reason]
    return flagged


class OutOfFamilyWarning(UserWarning):
    """Some problems of a batch lie outside the family the model was trained on, or failed its diagnostic."""


@dataclass(frozen=True)
class Reliability:
    """The verdict on each problem of a batch ``B``: ``reliable`` ``(*B)`` (``False`` where the model should not be
    trusted) and ``reasons``, reason -> booleans ``(*B)`` (``True`` where that reason fired): ``prior``, ``data``
    and ``count`` for a number outside the training ranges, ``conflict`` for data further from the prior than in
    training (with the range check and a likelihood at hand, each only where the importance check confirms it),
    ``importance`` for the importance check's flag (``pareto_k`` ``(*B)``, NaN for problems it did not judge, or
    ``None`` when it did not run);
    ``detail``: what lies outside for the first flagged problem, in words."""

    reliable: Tensor
    reasons: Mapping[str, Tensor]
    pareto_k: Tensor | None = None
    detail: str = ""

    def summary(self) -> str:
        """``"3 of 10 problems flagged (prior: 2, count: 1)"``; with the importance check, its count alone."""
        total = self.reliable.numel()
        bad = int((~self.reliable).sum())
        reasons = {"importance": self.reasons["importance"]} if "importance" in self.reasons else self.reasons
        parts = ", ".join(f"{k}: {int(v.sum())}" for k, v in reasons.items() if bool(v.any()))
        return f"{bad} of {total} problem{'s' if total != 1 else ''} flagged ({parts})"


_CONFLICT_FIELDS = {"anchor_noise": 0.0, "conflict_high": math.inf, "conflict_low": -math.inf, "scale_offset": 0.0,
                    "scale_noise": ()}


@dataclass(frozen=True)
class TrainingSupport:
    """Ranges seen in training (module docstring). ``component_*``: per component coordinate but the weight (empty
    for a parametric-prior model); ``parameter_*``: per warped prior parameter (empty for a GMM-prior model);
    ``observation_*``: per source and dimension; ``count_*``: observations per source; ``anchor``: the source whose
    data mean the ranges are relative to (``""`` for none); ``num_components``: ``K`` in training (for reference);
    ``anchor_noise``, ``conflict_low``/``conflict_high``, ``scale_offset`` and ``scale_noise``: the prior-data
    conflict check's constants (module docstring; absent from cards written before it, which then skip it)."""

    component_names: tuple[str, ...]
    component_low: tuple[float, ...]
    component_high: tuple[float, ...]
    parameter_names: tuple[str, ...]
    parameter_low: tuple[float, ...]
    parameter_high: tuple[float, ...]
    observation_low: Mapping[str, tuple[float, ...]]
    observation_high: Mapping[str, tuple[float, ...]]
    count_low: Mapping[str, int]
    count_high: Mapping[str, int]
    anchor: str
    num_components: int
    bounded: bool = False
    scale_source: str = ""
    scale_power: float = 0.5
    anchor_noise: float = 0.0
    conflict_high: float = math.inf
    conflict_low: float = -math.inf
    scale_offset: float = 0.0
    scale_noise: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # not the caches kept in __dict__
        def plain(v):
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return list(v) if isinstance(v, tuple) else v

        # the conflict fields at their defaults (no conflict check; JSON has no infinity) are left out, so that a
        # card written before them reads and writes back the same
        return {"format": SUPPORT_FORMAT} | {k: plain(v) for k, v in values.items()
                                             if not (k in _CONFLICT_FIELDS and v == _CONFLICT_FIELDS[k])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSupport":
        if "format" not in data and "chart_low" in data:  # written before per-problem checks: ranges of the chart
            return cls(component_names=tuple(data["chart_names"][1:]), component_low=tuple(data["chart_low"][1:]),
                       component_high=tuple(data["chart_high"][1:]), parameter_names=(), parameter_low=(),
                       parameter_high=(), observation_low={k: tuple(v) for k, v in data["observation_low"].items()},
                       observation_high={k: tuple(v) for k, v in data["observation_high"].items()},
                       count_low=dict(data["count_low"]), count_high=dict(data["count_high"]), anchor="",
                       num_components=int(data["num_components"]))
        if data.get("format") != SUPPORT_FORMAT:
            raise ValueError(f"Expected a training support of format {SUPPORT_FORMAT} in the model card, but got "
                             f"format {data.get('format')!r}; re-estimate it with distformer.support.estimate_support.")
        return cls(component_names=tuple(data["component_names"]), component_low=tuple(data["component_low"]),
                   component_high=tuple(data["component_high"]), parameter_names=tuple(data["parameter_names"]),
                   parameter_low=tuple(data["parameter_low"]), parameter_high=tuple(data["parameter_high"]),
                   observation_low={k: tuple(v) for k, v in data["observation_low"].items()},
                   observation_high={k: tuple(v) for k, v in data["observation_high"].items()},
                   count_low=dict(data["count_low"]), count_high=dict(data["count_high"]),
                   anchor=str(data["anchor"]), num_components=int(data["num_components"]),
                   bounded=bool(data.get("bounded", False)), scale_source=str(data.get("scale_source", "")),
                   scale_power=float(data.get("scale_power", 0.5)),
                   anchor_noise=float(data.get("anchor_noise", 0.0)),
                   conflict_high=float(data.get("conflict_high", math.inf)),
                   conflict_low=float(data.get("conflict_low", -math.inf)),
                   scale_offset=float(data.get("scale_offset", 0.0)),
                   scale_noise=tuple(data.get("scale_noise", ())))

    def _check_lengths(self, dim: int, sources: Mapping[str, int]) -> None:
        """Raise ``ValueError`` unless every range has the length the model needs (``dim``, ``sources``)."""
        if len(self.component_low) != len(self.component_high) or len(self.component_low) not in (0, len(
                component_coordinate_names(dim))):
            raise ValueError(f"component ranges of length {len(self.component_low)}/{len(self.component_high)} "
                             f"for D={dim}, which needs {len(component_coordinate_names(dim))}")
        for name, width in sources.items():
            lo, hi = self.observation_low.get(name, ()), self.observation_high.get(name, ())
            if len(lo) != width or len(hi) != width:
                raise ValueError(f"observation ranges of source {name!r} of length {len(lo)}/{len(hi)}, which "
                                 f"needs {width}")

    def cache_bounds(self, sources: Mapping[str, int], device) -> None:
        """Make the bound tensors of the component coordinates and of each source on ``device`` now, so that a
        trace of :meth:`_outside_torch` or :meth:`outside_framed` records them as constants rather than their
        making."""
        for what in ("component", *[s for s in sources if s in self.observation_low]):
            self._raw_bounds_torch(what, device)

    def frames_like(self, config) -> bool:
        """Whether this support's frame is the network's of a model with ``config`` (``ModelConfig``), so that
        :meth:`outside_framed` may judge the problems as the network reads them: the same anchor over the latent's
        ``D`` coordinates, or none, and no scale anchoring."""
        if self.scale_source or config.scale_source or self.anchor != config.anchor:
            return False
        return not self.anchor or len(self.observation_low[self.anchor]) == config.dim

    def outside_framed(self, chart: Tensor, observations: Observations, scale_tril: Tensor) -> dict[str, Tensor]:
        r""":meth:`outside` for the small-batch trace (``engine.SmallBatchUpdate``) of a GMM-prior model whose frame
        this support shares (:meth:`frames_like`): ``chart`` ``(B, K, C)`` and ``observations`` (batch ``(B,)``)
        already framed as the network reads them (``structure.framed``: means and the anchor's data relative to its
        data mean :math:`\bar z`), and the prior's factors ``scale_tril`` ``(B, K, D, D)``. The reasons of
        :meth:`_outside_numpy`: the raw values compared with the bounds mapped back through the features
        (``_raw_bounds``, in float64), and the conflict gap :math:`\bar z - \mu_k` minus the framed mean, written
        out entry by entry. :meth:`_outside_torch` frames a mixture prior and comes here too."""
        live = chart[..., 0] > -15.99  # zero-weight components (floored at -16) change nothing
        prior = self._prior_reason(chart, live)
        data, count, counts = self._observation_reasons(observations)
        conflict = torch.zeros_like(prior)
        if self.anchor and math.isfinite(self.conflict_high):
            n = counts[self.anchor]
            spread = (self.anchor_noise / n.clamp_min(1).to(chart.dtype)).unsqueeze(-1)
            dim = scale_tril.shape[-1]
            if dim <= MAX_UNROLLED_DIM:  # entry by entry: a few operations where a batched product costs more
                L = entries(scale_tril)
                predictive = [[entry_sum([L[i][k] * L[j][k] for k in range(j + 1)] + ([spread] if i == j else []))
                               for j in range(i + 1)] for i in range(dim)]
                squared = squared_mahalanobis_entries(predictive, chart[..., 1:1 + dim])
            else:
                eye = torch.eye(dim, dtype=chart.dtype, device=chart.device)
                squared = mahalanobis(scale_tril @ scale_tril.mT + spread[..., None, None] * eye,
                                      chart[..., 1:1 + dim]) ** 2
            # the gap is minus the framed mean, with the same distance; squared against the squared threshold
            nearest = squared.masked_fill(~live, math.inf).amin(-1)
            conflict = (n > 0) & (nearest > self.conflict_high ** 2)
        return {"prior": prior, "data": data, "count": count, "conflict": conflict}

    def _prior_reason(self, chart: Tensor, live: Tensor) -> Tensor:
        """``prior`` ``(B,)``: a live component (``live`` ``(B, K)``) of charts ``(B, K, C)``, means relative to the
        frame's shift, with a coordinate outside its range: the raw values against the bounds mapped back through
        the features (``_raw_bounds``, float64), as :meth:`_outside_numpy` compares them."""
        mid, half = self._raw_bounds_torch("component", chart.device)
        return (((chart[..., 1:] - mid).abs() > half).any(-1) & live).any(-1)

    def _observation_reasons(self, observations: Observations) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(data, count, counts)``: per problem ``(B,)``, a present observation (framed) outside its source's range,
        and a number of observations outside the trained counts; and each source's count ``(B,)``."""
        data = count = None
        counts = {}
        for name in self.observation_low:
            v, m = observations.values[name], observations.masks[name]
            mid, half = self._raw_bounds_torch(name, v.device)
            outside = (((v - mid).abs() > half).any(-1) & m).any(-1)
            n = counts[name] = m.sum(-1)  # a data set without observations gets its prior back exactly: never flagged
            wrong = ((n > 0) & (n < self.count_low[name])) | (n > self.count_high[name])
            data, count = (outside, wrong) if data is None else (data | outside, count | wrong)
        return data, count, counts

    def _framed(self, observations: Observations) -> tuple[Observations, Tensor | None]:

        dim = len(self.observation_low[self.anchor]) if self.anchor else 0
        return framed_observations(observations, self.anchor, dim, self.scale_source, self.scale_power)

    def outside(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Per-problem reasons ``reason -> booleans (B,)`` (``True`` = outside) for charts ``(B, K, C)`` of GMM
        priors (``None`` for a parametric model), observations with batch ``(B,)`` and, for a parametric model,
        its warped prior parameters ``(B, P)``. On the CPU it runs in NumPy on zero-copy views (``_outside_numpy``):
        at batch size 1 its cost is operator dispatch, which NumPy does several times faster than torch."""
        tensors = [t for t in (chart, parameters, *observations.values.values()) if t is not None]
        if all(t.device.type == "cpu" for t in tensors):
            return self._outside_numpy(chart, observations, parameters)
        return self._outside_torch(chart, observations, parameters)

    def _outside_torch(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None
                       ) -> dict[str, Tensor]:
        """:meth:`outside` in torch, for tensors on any device: the comparisons of :meth:`_outside_numpy`; a
        mixture prior of a model without scale anchoring is judged by :meth:`outside_framed` in its frame."""
        raw = observations
        observations, shift = self._framed(observations)
        if parameters is None:
            framed = chart if shift is None else moved(chart, -shift, shift.shape[-1])
            if not self.scale_source:
                dim = _dim_of_chart(chart.shape[-1])
                scale_tril = tril_from_parts(chart[..., 1 + dim:1 + 2 * dim].exp(), chart[..., 1 + 2 * dim:], dim)
                return self.outside_framed(framed, observations, scale_tril)
            prior = self._prior_reason(framed, chart[..., 0] > -15.99)
        else:
            mid, half = self._raw_bounds_torch("parameter", parameters.device)
            prior = ((parameters - mid).abs() > half).any(-1)
        data, count, _ = self._observation_reasons(observations)
        conflict = self._conflict(chart, raw, None, shift if self.anchor else None,
                                  raw.masks[self.anchor].sum(-1) if self.anchor else None)
        return {"prior": prior, "data": data, "count": count, "conflict": conflict}

    def _outside_numpy(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None
                       ) -> dict[str, Tensor]:
        """:meth:`outside` in NumPy (tested to agree). The bounded features are monotone in each coordinate, so
        the chart is compared with the bounds mapped back to chart values (``_raw_bounds``) instead of being
        transformed: a few comparisons per call."""
        import numpy as np

        values = {k: v.detach().numpy() for k, v in observations.values.items()}
        masks = {k: m.numpy() for k, m in observations.masks.items()}
        full = {k: bool(m.all()) for k, m in masks.items()}  # every observation present: the common case
        shift = None
        if self.anchor:
            d = len(self.observation_low[self.anchor])
            z, m = values[self.anchor], masks[self.anchor]
            if full[self.anchor] and m.shape[-1]:
                shift = z[..., :d].sum(-2) / m.shape[-1]
            else:
                shift = np.where(m[..., None], z[..., :d], 0).sum(-2) / np.maximum(m.sum(-1), 1)[..., None]
            values[self.anchor] = z[..., :d] - shift[..., None, :] if z.shape[-1] == d else \
                np.concatenate([z[..., :d] - shift[..., None, :], z[..., d:]], -1)
        elif self.scale_source:
            z, m, p = values[self.scale_source], masks[self.scale_source], self.scale_power
            mean = np.where(m[..., None], z * z, 0).sum((-2, -1)) / (np.maximum(m.sum(-1), 1) * z.shape[-1])
            mean = np.where(m.any(-1), np.maximum(mean, 1e-30), 1.0)  # a = log(mean) / 2p; z e^{-pa} = z / sqrt(mean)
            values[self.scale_source] = z / np.sqrt(mean)[..., None, None]
            shift = np.log(mean)[..., None] / (2 * p)
        if parameters is not None:
            x = parameters.detach().numpy()
            mid, half = self._raw_bounds("parameter")
            prior = (np.abs(x - mid) > half).any(-1)
        else:
            c = chart.detach().numpy()
            coords = c[..., 1:]
            mid, half = self._raw_bounds("component")
            if shift is not None:  # means relative to the anchor
                dim = shift.shape[-1]
                coords = np.concatenate([coords[..., :dim] - shift[..., None, :], coords[..., dim:]], -1)
            prior = ((np.abs(coords - mid) > half).any(-1) & (c[..., 0] > -15.99)).any(-1)
        data = count = False
        for name in self.observation_low:
            v, m = values[name], masks[name]
            mid, half = self._raw_bounds(name)
            outside = (np.abs(v - mid) > half).any(-1)
            data = data | (outside.any(-1) if full[name] else (outside & m).any(-1))
            if full[name]:
                n = m.shape[-1]
                count = count | bool((n > 0 and n < self.count_low[name]) or n > self.count_high[name])
            else:
                n = m.sum(-1)
                count = count | ((n > 0) & (n < self.count_low[name])) | (n > self.count_high[name])
        flags = {"prior": prior, "data": data, "count": count}
        out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) and v.shape == prior.shape
               else torch.full(prior.shape, bool(v)) for k, v in flags.items()}
        anchored = self.anchor and shift is not None
        return out | {"conflict": self._conflict(
            chart, observations, out["prior"], torch.from_numpy(shift) if anchored else None,
            torch.from_numpy(np.asarray(masks[self.anchor].sum(-1))) if anchored else None)}

    def conflict_distance(self, chart: Tensor, observations: Observations, mean: Tensor | None = None,
                          count: Tensor | None = None) -> Tensor:
        r"""The prior-data conflict statistic ``(B,)`` of charts ``(B, K, C)`` and observations with batch ``(B,)``:
        the anchor source's present mean :math:`\bar z` (first ``D`` coordinates, ``n`` readings) measured against
        each live component's prior predictive for it,
        :math:`m = \min_k \big\|(\Sigma_k + \tfrac{\sigma^2}{n} I)^{-1/2}(\bar z - \mu_k)\big\|`, with
        :math:`\sigma^2` the anchor's within-data-set variance in training (``anchor_noise``); 0 without data.
        ``mean`` ``(B, D)`` and ``count`` ``(B,)``: :math:`\bar z` and ``n`` where the caller has them."""
        return predictive_distance(chart, observations, self.anchor, len(self.observation_low[self.anchor]),
                                   self.anchor_noise, mean, count)

    def scale_conflict(self, chart: Tensor, observations: Observations) -> Tensor:
        """:func:`scale_conflict` ``(B,)`` of charts ``(B, K, C)`` (1-D, in the problem's frame) and observations
        with batch ``(B,)``, with the training offset and spreads of the data's scale (``scale_offset``,
        ``scale_noise``)."""
        shift = scale_anchor_of(observations, self.scale_source, self.scale_power)
        present = observations.masks[self.scale_source].any(-1)
        return scale_conflict(chart, shift, present, self.scale_offset, *self.scale_noise)

    def _conflict(self, chart: Tensor | None, observations: Observations, like: Tensor | None = None,
                  mean: Tensor | None = None, count: Tensor | None = None) -> Tensor:
        """``True`` where :meth:`conflict_distance` exceeds ``conflict_high`` (anchored GMM-prior models whose
        card records it), or where the data's scale lies outside ``[conflict_low, conflict_high]`` of
        :func:`scale_conflict` (scale-anchored models whose card records it); else all ``False``."""
        if chart is not None and self.scale_source and self.scale_noise:
            stat = self.scale_conflict(chart, observations)
            return (stat > self.conflict_high) | (stat < self.conflict_low)
        if chart is None or not self.anchor or not math.isfinite(self.conflict_high):
            mask = next(iter(observations.masks.values()))
            return torch.zeros(mask.shape[:-1], dtype=torch.bool, device=mask.device) if like is None \
                else torch.zeros_like(like)
        return self.conflict_distance(chart, observations, mean, count) > self.conflict_high

    def _raw_bounds(self, what: str):
        """NumPy midpoints and half-widths of the bounds of ``what`` on the raw values (outside means
        :math:`|x - m| > h`): for a model with bounded features the component bounds are mapped back through the
        features (``sinh`` of the asinh bounds, and no upper bound on log scales whose features stop at the
        ceiling), so that comparing raw values is comparing features."""
        cache = self.__dict__.setdefault("_cache", {})
        found = cache.get(("numpy", what))
        if found is None:
            found = cache[("numpy", what)] = self._raw_bounds_of(what)
        return found

    def _raw_bounds_torch(self, what: str, device) -> tuple[Tensor, Tensor]:
        """:meth:`_raw_bounds` as float64 tensors on ``device``, cached."""
        cache = self.__dict__.setdefault("_cache", {})
        key = ("raw", what, str(device))
        if key not in cache:
            cache[key] = tuple(torch.from_numpy(b).to(device) for b in self._raw_bounds(what))
        return cache[key]

    def _raw_bounds_of(self, what: str):
        import numpy as np

        if what in ("component", "parameter"):
            low, high = getattr(self, f"{what}_low"), getattr(self, f"{what}_high")
        else:
            low, high = self.observation_low[what], self.observation_high[what]
        low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        if what == "component" and self.bounded:
            dim = _dim_of_chart(low.size + 1)
            asinh = np.r_[0:dim, 2 * dim:low.size]
            low[asinh], high[asinh] = np.sinh(low[asinh]), np.sinh(high[asinh])
            scales = slice(dim, 2 * dim)
            high[scales] = np.where(high[scales] >= FEATURE_LOG_SCALE_RANGE[1], 700.0, high[scales])  # e^700: none
        return (low + high) / 2, (high - low) / 2

    def describe(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None, row: int) -> str:
        """What lies outside for problem ``row`` of a flat batch, in words."""
        obs, shift = self._framed(observations.index(torch.tensor([row])))
        found = []
        conflict = chart is not None and self.anchor and math.isfinite(self.conflict_high)
        distance = float(self.conflict_distance(chart[row:row + 1], observations.index(torch.tensor([row])))) \
            if conflict else 0.0
        if distance > self.conflict_high:
            found.append(f"the data mean lies {distance:.3g} prior-predictive sds from every prior component "
                         f"(at most {self.conflict_high:.3g} in training)")
        if chart is not None and self.scale_source and self.scale_noise:
            scale = float(self.scale_conflict(chart[row:row + 1], observations.index(torch.tensor([row]))))
            if not self.conflict_low <= scale <= self.conflict_high:
                found.append(f"the data's scale lies {scale:.3g} prior-predictive sds from the nearest prior "
                             f"component (training: {self.conflict_low:.3g} to {self.conflict_high:.3g})")
        if parameters is not None:
            found += _outside(self.parameter_names, parameters[row], parameters[row], self.parameter_low,
                              self.parameter_high, "prior")
        else:
            c = chart[row]
            dim = _dim_of_chart(chart.shape[-1])
            c = component_features(c[c[:, 0] > -15.99].unsqueeze(0), dim, shift, self.bounded)[0]
            if c.shape[0]:
                found += _outside(self.component_names, c.amin(0), c.amax(0), self.component_low,
                                  self.component_high, "prior")
        for name in self.observation_low:
            v, m = obs.values[name][0], obs.masks[name][0]
            n = int(m.sum())
            if n and not self.count_low[name] <= n <= self.count_high[name]:
                found.append(f"{n} {name!r} observations (trained with "
                             f"{self.count_low[name]}..{self.count_high[name]})")
            if n:
                present = v[m]
                dims = [f"{name}[{i}]" for i in range(v.shape[-1])]
                found += _outside(dims, present.amin(0), present.amax(0), self.observation_low[name],
                                  self.observation_high[name], "observation")
        frame = f" (means and data relative to the mean of {self.anchor!r})" if self.anchor else \
            f" ({self.scale_source!r} at unit mean square)" if self.scale_source else ""
        return "; ".join(found) + frame if found else "inside every range"


def _dim_of_chart(size: int) -> int:
    """``D`` from a chart's size ``1 + D + D(D+1)/2``."""
    dim = 1
    while 1 + dim + dim * (dim + 1) // 2 < size:
        dim += 1
    return dim


def _outside(names, low: Tensor, high: Tensor, lo_ref, hi_ref, what: str) -> list[str]:
    out = []
    for i, name in enumerate(names):
        lo, hi = float(low[i]), float(high[i])
        if lo < lo_ref[i] or hi > hi_ref[i]:
            value = lo if lo < lo_ref[i] else hi
            out.append(f"{what} {name} reaches {value:.3g} (trained range [{lo_ref[i]:.3g}, {hi_ref[i]:.3g}])")
    return out


def warn_flagged(message: str, strict: bool, stacklevel: int) -> None:
    """Raise ``ValueError`` (``strict``) or issue an :class:`OutOfFamilyWarning` at the caller ``stacklevel``
    frames up, on every call: with a registry of its own, Python's default filter shows each call's warning
    rather than only the first per line."""
    if strict:
        raise ValueError(message)
    frame = sys._getframe(stacklevel)
    warnings.warn_explicit(message, OutOfFamilyWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry={})


def component_coordinate_names(dim: int, bounded: bool = False) -> tuple[str, ...]:
    """Names of the checked component coordinates: ``mean[i]``, ``log scale[i]``, ``scale[i,j]`` (j < i), with
    ``asinh`` before the means and off-diagonal entries of a model with bounded features."""
    f = "asinh " if bounded else ""
    names = [f"{f}mean[{i}]" for i in range(dim)] + [f"log scale[{i}]" for i in range(dim)]
    names += [f"{f}scale[{i},{j}]" for i in range(dim) for j in range(i)]
    return tuple(names)


def component_features(chart: Tensor, dim: int, shift: Tensor | None, bounded: bool) -> Tensor:
    """The component coordinates the check compares ``(B, K, C - 1)``, from a chart ``(B, K, C)``: the chart but the
    weight, means relative to ``shift`` ``(B, D)`` (the anchor, or ``None``). For a model with bounded features,
    what the network reads (``structure.prior_features``) except that log scales below the features' floor keep
    their value: above the ceiling a wider prior only flattens further against the likelihood (measured in
    ``benchmarks/stress.md``), but below the floor the chart residual is not scaled to the component and the
    model's error grows as the prior narrows."""

    coords = chart[..., 1:]
    if shift is not None:
        coords = torch.cat([coords[..., :dim] - shift.unsqueeze(-2), coords[..., dim:]], -1)
    if not bounded:
        return coords
    return torch.cat([torch.asinh(coords[..., :dim]), coords[..., dim:2 * dim].clamp_max(FEATURE_LOG_SCALE_RANGE[1]),
                      torch.asinh(coords[..., 2 * dim:])], -1)


def estimate_support(problem, num_problems: int = 20000, margin: float = 0.1,
                     generator: torch.Generator | None = None, model=None,
                     parameter_margin: float | None = None) -> TrainingSupport:
    """Ranges of the training meta-prior (module docstring) from ``num_problems`` draws, in the frame of
    ``model`` (anchored or not; default: the problem's own frame, unanchored). ``parameter_margin``: the margin of
    a parametric prior's parameters (default ``margin``). A tighter range there costs time, not false alarms, for
    a model whose default check is the importance check: it only decides which problems that check judges with
    more draws, a tighter tolerance and the tail probe (``reliability.py``)."""

    generator = generator or torch.Generator().manual_seed(7)
    batch = problem.sample_batch(num_problems, generator=generator)
    config = model.config if model is not None else None
    anchor = config.anchor if config is not None else ""
    scale_source = config.scale_source if config is not None else ""
    power = config.scale_power if config is not None else 0.5
    bounded = bool(config is not None and config.bounded_prior_features)
    obs, shift = framed_observations(batch.observations.to(torch.float64), anchor, problem.dim, scale_source, power)

    def widen(lo: Tensor, hi: Tensor, by: float = margin) -> tuple[tuple[float, ...], tuple[float, ...]]:
        w = (hi - lo) * by
        return tuple((lo - w).tolist()), tuple((hi + w).tolist())

    parameter_low = parameter_high = parameter_names = ()
    if torch.is_tensor(batch.prior):

        if model is None:
            raise ValueError(f"Expected the model whose prior encoder charts the parametric priors of problem "
                             f"{problem.name!r}, but got none.")
        parameter_names = tuple(problem.prior_parameters)
        warped = Warp(list(problem.prior_parameters.values())).forward(batch.prior.double())
        parameter_low, parameter_high = widen(warped.amin(0), warped.amax(0),
                                              margin if parameter_margin is None else parameter_margin)
        if config.scale_parameter:  # any value: the encoder is exactly equivariant in it; where it puts the prior
            i = parameter_names.index(config.scale_parameter)  # against the data is the scale conflict's to judge
            parameter_low = parameter_low[:i] + (-1e300,) + parameter_low[i + 1:]
            parameter_high = parameter_high[:i] + (1e300,) + parameter_high[i + 1:]
        with torch.no_grad():  # the encoder's chart: what the network reads when given the prior's mixture instead
            chart = model.encode_prior(batch.prior.to(model.prior_encoder.last.weight.dtype)).double()
    else:
        chart = gmm_to_chart(batch.prior).double()
    coords = component_features(chart, problem.dim, shift, bounded)[chart[..., 0] > -15.99]
    component_names = component_coordinate_names(problem.dim, bounded)
    component_low, component_high = widen(coords.amin(0), coords.amax(0))
    obs_low, obs_high, count_low, count_high = {}, {}, {}, {}
    for name, values in obs.values.items():
        mask = obs.masks[name]
        present = values[mask]
        obs_low[name], obs_high[name] = widen(present.amin(0), present.amax(0))
        counts = mask.sum(-1)
        count_low[name], count_high[name] = int(counts.min()), int(counts.max())
    support = TrainingSupport(component_names, component_low, component_high, parameter_names, parameter_low,
                              parameter_high, obs_low, obs_high, count_low, count_high, anchor, problem.num_components,
                              bounded, scale_source, power)
    if scale_source and problem.dim == 1:
        x = batch.theta.double() if not problem.warp else Warp(list(problem.warp)).forward(batch.theta.double())
        offset, spread, low, high = scale_conflict_range(chart, shift, x, obs.masks[scale_source].any(-1))
        support = replace(support, scale_offset=offset, scale_noise=spread, conflict_low=low, conflict_high=high)
    if anchor and not torch.is_tensor(batch.prior):
        noise, high = conflict_range(chart, batch.observations.to(torch.float64), anchor, problem.dim, margin)
        support = replace(support, anchor_noise=noise, conflict_high=high)
        if bounded and not config.site_residual:  # exact product with the prior component, no chart residual
            floor = math.log(NARROW_LIMIT * math.sqrt(noise))
            low = list(support.component_low)
            low[problem.dim:2 * problem.dim] = [min(v, floor) for v in low[problem.dim:2 * problem.dim]]
            support = replace(support, component_low=tuple(low))
    return support


def conflict_range(chart: Tensor, observations: Observations, anchor: str, dim: int, margin: float
                   ) -> tuple[float, float]:
    """``(anchor_noise, conflict_high)`` of training draws: the mean within-data-set variance of the anchor
    source's first ``dim`` coordinates (data sets of two or more readings), and the largest
    :meth:`TrainingSupport.conflict_distance` of the draws, widened by ``margin`` of itself."""
    z, m = observations.values[anchor][..., :dim], observations.masks[anchor]
    n = m.sum(-1)
    mean = torch.where(m.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype)).sum(-2) / n.clamp_min(1).unsqueeze(-1)
    square = torch.where(m.unsqueeze(-1), (z - mean.unsqueeze(-2)) ** 2, torch.zeros((), dtype=z.dtype))
    several = n >= 2
    noise = float((square.sum((-2, -1))[several] / ((n[several] - 1) * dim)).mean())
    distance = predictive_distance(chart, observations, anchor, dim, noise, mean, n)
    return noise, float(distance.max()) * (1 + margin)


def scale_conflict_range(chart: Tensor, shift: Tensor, x: Tensor, present: Tensor
                         ) -> tuple[float, tuple[float, float], float, float]:
    """``(scale_offset, scale_noise, conflict_low, conflict_high)`` of training draws: the mean and the
    semivariances below and above it of the data's scale ``shift`` ``(B, 1)`` about the true latent ``x`` ``(B, 1)``,
    and the central 99.8% of :func:`scale_conflict` over the draws with data (``present`` ``(B,)``). Not its
    extremes: a problem beyond is judged by the importance check, so a tighter range costs time on a few problems,
    never a false alarm, while the extremes (priors whose mixture fit leaves a tail uncovered) let inaccurate
    posteriors of tight priors through."""
    residual = (shift - x)[present]
    mean = float(residual.mean())
    spread = tuple(float(((residual - mean)[side] ** 2).sum() / side.sum().clamp_min(1))
                   for side in (residual < mean, residual > mean))
    stat = scale_conflict(chart, shift, present, mean, *spread)[present]
    low, high = (float(v) for v in stat.quantile(torch.tensor([0.001, 0.999], dtype=stat.dtype)))
    return mean, spread, low, high


def scale_conflict(chart: Tensor, shift: Tensor, present: Tensor, offset: float, below: float, above: float
                   ) -> Tensor:
    r"""Prior-data conflict of a scale-anchored model (1-D latent :math:`x`, ``ModelConfig.scale_source``): the data's
    scale :math:`a` ``(B, 1)`` (the frame's shift, ``structure.scale_anchor_of``) is :math:`x` plus a noise
    :math:`\varepsilon` of fixed law (for readings :math:`z \sim \mathcal N(0, e^x)`, :math:`\log(\chi^2_n/n)`),
    so against prior component :math:`\mathcal N(\mu_k, s_k^2)` of charts ``(B, K, 3)`` the residual
    :math:`r_k = a - \mu_k - m` is :math:`d_k = r_k/\sqrt{s_k^2 + v_\pm}` predictive sds, with :math:`m` the mean
    of :math:`\varepsilon` in training and :math:`v_\pm` its semivariances above and below it (``below``,
    ``above``): :math:`\log\chi^2_1` has a long lower tail and a short upper one, so data far larger than the
    prior allows stand out only against the upper spread. Returns the signed :math:`d_k` of least :math:`|d_k|`
    over live components ``(B,)``; 0 where ``present`` ``(B,)`` is False."""
    r = shift.to(chart.dtype) - chart[..., 1] - offset
    spread = torch.where(r > 0, torch.full((), above, dtype=r.dtype), torch.full((), below, dtype=r.dtype))
    d = (r / torch.sqrt(torch.exp(2 * chart[..., 2]) + spread)).masked_fill(chart[..., 0] <= -15.99, math.inf)
    nearest = d.gather(-1, d.abs().argmin(-1, keepdim=True)).squeeze(-1)  # weight 0: never the nearest
    return torch.where(present, nearest, torch.zeros((), dtype=d.dtype, device=d.device))


def predictive_distance(chart: Tensor, observations: Observations, anchor: str, dim: int, noise: float,
                        mean: Tensor | None = None, count: Tensor | None = None) -> Tensor:
    """:meth:`TrainingSupport.conflict_distance` ``(B,)`` for source ``anchor`` (its first ``dim`` coordinates)
    with within-data-set variance ``noise``; ``mean`` ``(B, D)`` and ``count`` ``(B,)`` where the caller has them."""
    m = observations.masks[anchor]
    n = (m.sum(-1) if count is None else count).unsqueeze(-1).to(chart.dtype)
    if mean is None:
        z = observations.values[anchor][..., :dim]
        mean = (z * m.unsqueeze(-1)).sum(-2) / n.clamp_min(1)  # padded values are finite (as_observations)
    L = tril_from_parts(chart[..., 1 + dim:1 + 2 * dim].exp(), chart[..., 1 + 2 * dim:], dim)
    spread = (noise / n.clamp_min(1)).unsqueeze(-1).unsqueeze(-1)
    predictive = L @ L.mT + spread * torch.eye(dim, dtype=chart.dtype, device=chart.device)
    distance = mahalanobis(predictive, mean.to(chart.dtype).unsqueeze(-2) - chart[..., 1:1 + dim])
    distance = distance.masked_fill(chart[..., 0] <= -15.99, math.inf)  # weight 0: never the nearest
    return torch.where(n.squeeze(-1) > 0, distance.amin(-1), torch.zeros((), dtype=distance.dtype,
                                                                         device=distance.device))

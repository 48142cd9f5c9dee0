r"""The training support of a model, and the per-problem typicality check behind ``post.reliable``.

Each problem of a batch, a (prior, data) pair, is judged on its own, in the frame the network reads it in: for an
anchored model (``ModelConfig.anchor``) every mean and observation of the anchor source is taken relative to the
data mean, so a translated problem is judged as the model sees it. The support holds, from ``n`` draws of the
training meta-prior, the range of

* every component coordinate but the weight, :math:`[\mu,\ \log\operatorname{diag}L,\ \operatorname{offdiag}L]`
  (the weights need no range: components of weight exactly 0 are left out, and for a model with
  ``site_evidence`` the weights follow Bayes' rule), or for a parametric-prior model every warped prior parameter;
* every observation coordinate per source, and the number of observations per source;

each widened by ``margin`` of its width on either side, :math:`[a - \rho(b-a),\ b + \rho(b-a)]`. A problem is
*atypical* when any of its numbers lies outside; the reasons are kept per problem (``prior``, ``data``,
``count``). The number of components ``K`` is not checked: the decoder has no positional encoding over
components, and ``bench components`` measures any ``K``.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import Tensor

from .observations import Observations

SUPPORT_FORMAT = 2
REASONS = ("prior", "data", "count")


class OutOfFamilyWarning(UserWarning):
    """Some problems of a batch lie outside the family the model was trained on, or failed its diagnostic."""


@dataclass(frozen=True)
class Reliability:
    """The verdict on each problem of a batch ``B``: ``reliable`` ``(*B)`` (``False`` where the model should not be
    trusted) and ``reasons``, reason -> booleans ``(*B)`` (``True`` where that reason fired): ``prior``, ``data``
    and ``count`` for a number outside the training ranges, ``importance`` for a Pareto ``k̂`` of the
    importance ratios above its threshold (``pareto_k`` ``(*B)``, or ``None`` when that diagnostic did not run);
    ``detail``: what lies outside for the first flagged problem, in words."""

    reliable: Tensor
    reasons: Mapping[str, Tensor]
    pareto_k: Tensor | None = None
    detail: str = ""

    def summary(self) -> str:
        """``"3 of 10 problems flagged (prior: 2, count: 1)"``."""
        total = self.reliable.numel()
        bad = int((~self.reliable).sum())
        parts = ", ".join(f"{k}: {int(v.sum())}" for k, v in self.reasons.items() if bool(v.any()))
        return f"{bad} of {total} problem{'s' if total != 1 else ''} flagged ({parts})"


@dataclass(frozen=True)
class TrainingSupport:
    """Ranges seen in training (module docstring). ``component_*``: per component coordinate but the weight (empty
    for a parametric-prior model); ``parameter_*``: per warped prior parameter (empty for a GMM-prior model);
    ``observation_*``: per source and dimension; ``count_*``: observations per source; ``anchor``: the source whose
    data mean the ranges are relative to (``""`` for none); ``num_components``: ``K`` in training (for reference)."""

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

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # not the caches kept in __dict__
        return {"format": SUPPORT_FORMAT} | {
            k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
            for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSupport":
        if data.get("format") != SUPPORT_FORMAT:
            raise ValueError(f"Expected a training support of format {SUPPORT_FORMAT} in the model card, but got "
                             f"format {data.get('format', 1)}; re-estimate it with distformer.support.estimate_support.")
        return cls(component_names=tuple(data["component_names"]), component_low=tuple(data["component_low"]),
                   component_high=tuple(data["component_high"]), parameter_names=tuple(data["parameter_names"]),
                   parameter_low=tuple(data["parameter_low"]), parameter_high=tuple(data["parameter_high"]),
                   observation_low={k: tuple(v) for k, v in data["observation_low"].items()},
                   observation_high={k: tuple(v) for k, v in data["observation_high"].items()},
                   count_low=dict(data["count_low"]), count_high=dict(data["count_high"]),
                   anchor=str(data["anchor"]), num_components=int(data["num_components"]))

    def _bounds(self, what: str, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds of ``what`` (``component``, ``parameter`` or a source name) as tensors, cached."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (what, dtype, str(device))
        if key not in cache:
            if what in ("component", "parameter"):
                low, high = getattr(self, f"{what}_low"), getattr(self, f"{what}_high")
            else:
                low, high = self.observation_low[what], self.observation_high[what]
            cache[key] = (torch.tensor(low, dtype=dtype, device=device), torch.tensor(high, dtype=dtype, device=device))
        return cache[key]

    def outside(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Per-problem reasons ``reason -> booleans (B,)`` (``True`` = outside) for charts ``(B, K, C)`` of GMM
        priors (``None`` for a parametric model), observations with batch ``(B,)`` and, for a parametric model,
        its warped prior parameters ``(B, P)``."""
        values, masks = observations.values, observations.masks
        shift = None
        if self.anchor:
            from .nn.structure import anchor_of

            dim = len(self.observation_low[self.anchor])
            shift = anchor_of(observations, self.anchor, dim)
        if parameters is not None:
            low, high = self._bounds("parameter", parameters.dtype, parameters.device)
            prior = ((parameters < low) | (parameters > high)).any(-1)
        else:
            low, high = self._bounds("component", chart.dtype, chart.device)
            dim = _dim_of_chart(chart.shape[-1])
            coords = chart[..., 1:]
            if shift is not None:
                coords = torch.cat([coords[..., :dim] - shift.unsqueeze(-2), coords[..., dim:]], -1)
            live = chart[..., 0] > -15.99  # zero-weight components (floored at -16) change nothing
            prior = (((coords < low) | (coords > high)).any(-1) & live).any(-1)
        data = torch.zeros_like(prior)
        count = torch.zeros_like(prior)
        for name in self.observation_low:
            v, m = values[name], masks[name]
            if shift is not None and name == self.anchor:
                d = shift.shape[-1]
                v = torch.cat([v[..., :d] - shift.unsqueeze(-2), v[..., d:]], -1)
            low, high = self._bounds(name, v.dtype, v.device)
            data = data | (((v < low) | (v > high)).any(-1) & m).any(-1)
            n = m.sum(-1)  # a data set without observations gets its prior back exactly: never flagged
            count = count | ((n > 0) & (n < self.count_low[name])) | (n > self.count_high[name])
        return {"prior": prior, "data": data, "count": count}

    def describe(self, chart: Tensor | None, observations: Observations, parameters: Tensor | None, row: int) -> str:
        """What lies outside for problem ``row`` of a flat batch, in words."""
        obs = observations.index(torch.tensor([row]))
        found = []
        shift = None
        if self.anchor:
            from .nn.structure import anchor_of

            shift = anchor_of(obs, self.anchor, len(self.observation_low[self.anchor]))
        if parameters is not None:
            found += _outside(self.parameter_names, parameters[row], parameters[row], self.parameter_low,
                              self.parameter_high, "prior")
        else:
            c = chart[row]
            c = c[c[:, 0] > -15.99, 1:]
            dim = _dim_of_chart(chart.shape[-1])
            if shift is not None:
                c = torch.cat([c[:, :dim] - shift, c[:, dim:]], -1)
            if c.shape[0]:
                found += _outside(self.component_names, c.amin(0), c.amax(0), self.component_low,
                                  self.component_high, "prior")
        for name in self.observation_low:
            v, m = obs.values[name][0], obs.masks[name][0]
            n = int(m.sum())
            if n and not self.count_low[name] <= n <= self.count_high[name]:
                found.append(f"{n} {name!r} observations (trained with {self.count_low[name]}..{self.count_high[name]})")
            if n:
                present = v[m]
                if shift is not None and name == self.anchor:
                    d = shift.shape[-1]
                    present = torch.cat([present[:, :d] - shift, present[:, d:]], -1)
                dims = [f"{name}[{i}]" for i in range(v.shape[-1])]
                found += _outside(dims, present.amin(0), present.amax(0), self.observation_low[name],
                                  self.observation_high[name], "observation")
        frame = f" (relative to the mean of {self.anchor!r})" if self.anchor else ""
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


def component_coordinate_names(dim: int) -> tuple[str, ...]:
    """Names of the chart coordinates but the weight: ``mean[i]``, ``log scale[i]``, ``scale[i,j]`` (j < i)."""
    names = [f"mean[{i}]" for i in range(dim)] + [f"log scale[{i}]" for i in range(dim)]
    names += [f"scale[{i},{j}]" for i in range(dim) for j in range(i)]
    return tuple(names)


def estimate_support(problem, num_problems: int = 20000, margin: float = 0.1,
                     generator: torch.Generator | None = None, model=None) -> TrainingSupport:
    """Ranges of the training meta-prior (module docstring) from ``num_problems`` draws, in the frame of
    ``model`` (anchored or not; default: the problem's own frame, unanchored)."""
    from .nn.structure import anchor_of
    from .nn.tokens import gmm_to_chart

    generator = generator or torch.Generator().manual_seed(7)
    batch = problem.sample_batch(num_problems, generator=generator)
    anchor = model.config.anchor if model is not None else ""
    obs = batch.observations
    shift = anchor_of(obs, anchor, problem.dim).double() if anchor else None

    def widen(lo: Tensor, hi: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        w = (hi - lo) * margin
        return tuple((lo - w).tolist()), tuple((hi + w).tolist())

    component_low = component_high = parameter_low = parameter_high = ()
    component_names = parameter_names = ()
    if torch.is_tensor(batch.prior):
        from .distributions.transforms import Warp

        parameter_names = tuple(problem.prior_parameters)
        warped = Warp(list(problem.prior_parameters.values())).forward(batch.prior.double())
        parameter_low, parameter_high = widen(warped.amin(0), warped.amax(0))
    else:
        chart = gmm_to_chart(batch.prior).double()
        coords = chart[..., 1:]
        if shift is not None:
            coords = torch.cat([coords[..., :problem.dim] - shift.unsqueeze(-2), coords[..., problem.dim:]], -1)
        coords = coords[chart[..., 0] > -15.99]
        component_names = component_coordinate_names(problem.dim)
        component_low, component_high = widen(coords.amin(0), coords.amax(0))
    obs_low, obs_high, count_low, count_high = {}, {}, {}, {}
    for name, values in obs.values.items():
        mask = obs.masks[name]
        values = values.double()
        if shift is not None and name == anchor:
            values = torch.cat([values[..., :problem.dim] - shift.unsqueeze(-2), values[..., problem.dim:]], -1)
        present = values[mask]
        obs_low[name], obs_high[name] = widen(present.amin(0), present.amax(0))
        counts = mask.sum(-1)
        count_low[name], count_high[name] = int(counts.min()), int(counts.max())
    return TrainingSupport(component_names, component_low, component_high, parameter_names, parameter_low,
                           parameter_high, obs_low, obs_high, count_low, count_high, anchor, problem.num_components)

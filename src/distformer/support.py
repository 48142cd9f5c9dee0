r"""The training support of a model, and the out-of-family check that ``model.posterior`` runs against it.

The support is estimated by sampling the training meta-prior: for every coordinate of the component chart
:math:`c = [\log w, \mu, \log\operatorname{diag}L, \operatorname{offdiag}L]` and every observation dimension, the
range seen in ``n`` draws, widened by ``margin`` of its width on each side:

.. math::
    [\,a - \rho(b-a),\ b + \rho(b-a)\,], \qquad a = \min_i v_i,\ b = \max_i v_i,

plus the range of observation counts per source and the number of components ``K``. With :math:`\rho = 0.1`
and ``n = 20000`` problems, a fresh in-family draw falls outside with negligible probability (the
test checks 1,000 in-family problems stay silent). A prior or data set outside the support gets a warning
that says which coordinate is outside and by how much, because the model's accuracy there is not measured.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import Tensor

from .observations import Observations


class OutOfFamilyWarning(UserWarning):
    """A prior or data set lies outside the family the model was trained on."""


@dataclass(frozen=True)
class TrainingSupport:
    """Ranges seen in training. ``chart_low/high``: per chart coordinate; ``observation_low/high``: per source and
    dimension; ``count_low/high``: observations per source; ``num_components``: ``K`` in training."""

    chart_names: tuple[str, ...]
    chart_low: tuple[float, ...]
    chart_high: tuple[float, ...]
    observation_low: Mapping[str, tuple[float, ...]]
    observation_high: Mapping[str, tuple[float, ...]]
    count_low: Mapping[str, int]
    count_high: Mapping[str, int]
    num_components: int

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # not the caches kept in __dict__
        return {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
                for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSupport":
        return cls(chart_names=tuple(data["chart_names"]), chart_low=tuple(data["chart_low"]),
                   chart_high=tuple(data["chart_high"]),
                   observation_low={k: tuple(v) for k, v in data["observation_low"].items()},
                   observation_high={k: tuple(v) for k, v in data["observation_high"].items()},
                   count_low=dict(data["count_low"]), count_high=dict(data["count_high"]),
                   num_components=int(data["num_components"]))

    def _references(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """All lower and upper bounds as two flat tensors (chart, then each source's dimensions), cached."""
        cache = self.__dict__.setdefault("_cache", {})
        if dtype not in cache:
            low = list(self.chart_low) + [v for name in self.observation_low for v in self.observation_low[name]]
            high = list(self.chart_high) + [v for name in self.observation_high for v in self.observation_high[name]]
            cache[dtype] = (torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype))
        return cache[dtype]

    def _outside_flag(self, chart: Tensor, *tensors: Tensor) -> Tensor:
        """Boolean scalar tensor: anything outside; ``tensors`` are each source's values, then each mask."""
        names = list(self.observation_low)
        values, masks = tensors[:len(names)], tensors[len(names):]
        low, high = torch.aminmax(chart.reshape(-1, chart.shape[-1]), dim=0)
        lows, highs, counts = [low], [high], []
        for name, v, mask in zip(names, values, masks):
            flat = v.reshape(-1, v.shape[-1])
            present = mask.reshape(-1, 1)
            lows.append(torch.where(present, flat, torch.inf).amin(0))
            highs.append(torch.where(present, flat, -torch.inf).amax(0))
            n = mask.sum(-1).reshape(-1)
            counts.append(((n < self.count_low[name]) | (n > self.count_high[name])).any().reshape(1))
        ref_low, ref_high = self._references(low.dtype)
        outside = (torch.cat(lows) < ref_low) | (torch.cat(highs) > ref_high)
        return torch.cat([outside, *counts]).any()

    def any_violation(self, chart: Tensor, observations: Observations) -> bool:
        """Whether anything lies outside: the cheap test run on every ``posterior`` call.

        On the CPU it runs in NumPy on zero-copy views: at batch size 1 the cost of a check is operator dispatch,
        and NumPy dispatches tiny reductions about five times faster than torch does.
        """
        if chart.shape[-2] != self.num_components:
            return True
        if chart.numel() == 0:
            return False
        names = list(self.observation_low)
        tensors = [observations.values[n] for n in names] + [observations.masks[n] for n in names]
        if chart.device.type != "cpu":
            return bool(self._outside_flag(chart, *tensors))
        import numpy as np

        low, high = self._references_numpy()
        c = chart.detach().numpy().reshape(-1, chart.shape[-1])
        parts_low, parts_high = [c.min(0)], [c.max(0)]
        for name in names:
            v = observations.values[name].detach().numpy()
            m = observations.masks[name].numpy()
            if m.all():  # every data set has all N observations: the count check is one comparison
                if not self.count_low[name] <= m.shape[-1] <= self.count_high[name]:
                    return True
                present = v.reshape(-1, v.shape[-1])
            else:
                n = m.sum(-1)
                if n.min() < self.count_low[name] or n.max() > self.count_high[name]:
                    return True
                present = v[m]
            if present.size:
                parts_low.append(present.min(0))
                parts_high.append(present.max(0))
            else:
                parts_low.append(np.full(v.shape[-1], np.inf))
                parts_high.append(np.full(v.shape[-1], -np.inf))
        return bool((np.concatenate(parts_low) < low).any() | (np.concatenate(parts_high) > high).any())

    def _references_numpy(self):
        import numpy as np

        cache = self.__dict__.setdefault("_cache", {})
        if "numpy" not in cache:
            low, high = self._references(torch.float64)
            cache["numpy"] = (np.asarray(low.numpy()), np.asarray(high.numpy()))
        return cache["numpy"]

    def violations(self, chart: Tensor, observations: Observations) -> list[tuple[str, str]]:
        """``(what, description)`` for each thing outside: ``chart`` ``(B, K, C)``, ``observations`` batch ``(B,)``."""
        found = []
        if chart.shape[-2] != self.num_components:
            found.append(("K", f"the prior has K={chart.shape[-2]} components (trained with K={self.num_components})"))
        flat = chart.reshape(-1, chart.shape[-1])
        found += _outside(self.chart_names, flat.amin(0), flat.amax(0), self.chart_low, self.chart_high, "prior")
        for name, values in observations.values.items():
            mask = observations.masks[name]
            counts = mask.sum(-1)
            lo_n, hi_n = int(counts.min()), int(counts.max())
            if lo_n < self.count_low[name] or hi_n > self.count_high[name]:
                found.append((f"count {name}", f"{name!r} has {lo_n}..{hi_n} observations per data set (trained "
                                                f"with {self.count_low[name]}..{self.count_high[name]})"))
            if bool(mask.any()):
                present = values[mask]
                dims = [f"{name}[{i}]" for i in range(values.shape[-1])]
                found += _outside(dims, present.amin(0), present.amax(0), self.observation_low[name],
                                  self.observation_high[name], "observation")
        return found

    def check(self, chart: Tensor, observations: Observations, strict: bool, warned: set) -> None:
        """Warn once per kind of violation (``warned`` remembers them), or raise when ``strict``."""
        if not self.any_violation(chart, observations):
            return
        found = self.violations(chart, observations)
        message = ("Expected a prior and data inside the model's training family, but "
                   + "; ".join(text for _, text in found)
                   + ". The posterior there is not covered by the model's measured accuracy.")
        if strict:
            raise ValueError(message)
        key = tuple(sorted(what for what, _ in found))
        if key not in warned:
            warned.add(key)
            warnings.warn(message, OutOfFamilyWarning, stacklevel=4)  # user -> posterior -> _decode -> check


def _outside(names, low: Tensor, high: Tensor, lo_ref, hi_ref, what: str) -> list[tuple[str, str]]:
    out = []
    lo_ref = torch.tensor(lo_ref, dtype=low.dtype)
    hi_ref = torch.tensor(hi_ref, dtype=high.dtype)
    below, above = low < lo_ref, high > hi_ref
    if not bool((below | above).any()):
        return out
    for i, name in enumerate(names):
        if below[i] or above[i]:
            value = float(low[i]) if below[i] else float(high[i])
            out.append((f"{what} {name}", f"{what} {name} reaches {value:.3g} (trained range "
                                          f"[{float(lo_ref[i]):.3g}, {float(hi_ref[i]):.3g}])"))
    return out


def chart_coordinate_names(dim: int) -> tuple[str, ...]:
    """Names of the chart coordinates: ``log w``, ``mean[i]``, ``log scale[i]``, ``scale[i,j]`` (j < i)."""
    names = ["log weight"] + [f"mean[{i}]" for i in range(dim)] + [f"log scale[{i}]" for i in range(dim)]
    names += [f"scale[{i},{j}]" for i in range(dim) for j in range(i)]
    return tuple(names)


def estimate_support(problem, num_problems: int = 20000, margin: float = 0.1,
                     generator: torch.Generator | None = None, model=None) -> TrainingSupport:
    """Ranges of the training meta-prior (see the module docstring) from ``num_problems`` draws. For a
    parametric-prior problem the chart is that of ``model``'s prior approximation (``model.encode_prior``)."""
    from .nn.tokens import gmm_to_chart

    generator = generator or torch.Generator().manual_seed(7)
    batch = problem.sample_batch(num_problems, generator=generator)
    if torch.is_tensor(batch.prior):
        if model is None:
            raise ValueError(f"Expected the model whose prior encoder charts the parametric priors of problem "
                             f"{problem.name!r}, but got none.")
        with torch.no_grad():  # the encoder's chart, which is what ``posterior`` feeds the network
            chart = model.encode_prior(batch.prior.to(model.prior_encoder.last.weight.dtype)).double()
    else:
        chart = gmm_to_chart(batch.prior).double()
    chart = chart.reshape(-1, chart.shape[-1])

    def widen(lo: Tensor, hi: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        w = (hi - lo) * margin
        return tuple((lo - w).tolist()), tuple((hi + w).tolist())

    chart_low, chart_high = widen(chart.amin(0), chart.amax(0))
    obs_low, obs_high, count_low, count_high = {}, {}, {}, {}
    for name, values in batch.observations.values.items():
        mask = batch.observations.masks[name]
        present = values[mask].double()
        obs_low[name], obs_high[name] = widen(present.amin(0), present.amax(0))
        counts = mask.sum(-1)
        count_low[name], count_high[name] = int(counts.min()), int(counts.max())
    return TrainingSupport(chart_coordinate_names(problem.dim), chart_low, chart_high, obs_low, obs_high,
                           count_low, count_high, problem.num_components)

r"""Observation sets from named sources, with masks for missing or padded entries.

A data set is a mapping ``source name -> values (*B, N_s, E_s)`` plus a boolean mask ``(*B, N_s)`` that is ``True``
where an observation is present. Different data sets in a batch may hold different numbers of observations:
pad ``values`` with any finite number and set the mask to ``False`` there (masking, never zero-filling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from .distributions.linalg import broadcast_shapes


@dataclass(frozen=True)
class Observations:
    """Named observation tensors ``values[s]`` ``(*B, N_s, E_s)`` with masks ``masks[s]`` ``(*B, N_s)``."""

    values: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [m.shape[:-1] for m in self.masks.values()]
        return broadcast_shapes(*shapes) if shapes else torch.Size()

    def count(self, source: str) -> Tensor:
        """Number of present observations of ``source``, ``(*B)``."""
        return self.masks[source].sum(-1)

    def expand(self, batch_shape: torch.Size) -> "Observations":
        values = {s: v.expand(*batch_shape, *v.shape[-2:]) for s, v in self.values.items()}
        masks = {s: m.expand(*batch_shape, m.shape[-1]) for s, m in self.masks.items()}
        return Observations(values, masks)

    def reshape(self, batch_shape: tuple[int, ...]) -> "Observations":
        values = {s: v.reshape(*batch_shape, *v.shape[-2:]) for s, v in self.values.items()}
        masks = {s: m.reshape(*batch_shape, m.shape[-1]) for s, m in self.masks.items()}
        return Observations(values, masks)

    def any_present(self) -> Tensor | None:
        """``None`` when every data set holds at least one observation, else booleans ``(*B)`` saying which do."""
        present = None
        for m in self.masks.values():
            row = m.any(-1) if m.shape[-1] else torch.zeros(m.shape[:-1], dtype=torch.bool, device=m.device)
            present = row if present is None else present | row
        if present is None or bool(present.all()):
            return None
        return present

    def index(self, rows: Tensor) -> "Observations":
        """Data sets ``rows`` (an index tensor) of a flat batch (batch shape ``(n,)``)."""
        return Observations({s: v[rows] for s, v in self.values.items()}, {s: m[rows] for s, m in self.masks.items()})

    def slice(self, start: int, stop: int) -> "Observations":
        """Problems ``start:stop`` of a flat batch (batch shape ``(n,)``)."""
        return Observations({s: v[start:stop] for s, v in self.values.items()},
                            {s: m[start:stop] for s, m in self.masks.items()})

    def to(self, dtype: torch.dtype | None = None, device: torch.device | None = None) -> "Observations":
        return Observations({s: v.to(device=device, dtype=dtype) for s, v in self.values.items()},
                            {s: m.to(device=device) for s, m in self.masks.items()})


def as_observations(observations, sources: Mapping[str, int], mask=None) -> Observations:
    """Check and convert user input into :class:`Observations` for a model with ``sources`` (name -> E_s).

    Accepts an ``Observations``, a tensor ``(*B, N, E)`` (single-source models only) or a dict of tensors, where
    nested lists or a NumPy array may stand for a tensor; ``mask``
    is a tensor ``(*B, N)`` or a dict of them (``None``: everything present).
    """
    if isinstance(observations, Observations):
        values, masks = dict(observations.values), dict(observations.masks)
    else:
        if not isinstance(observations, (Tensor, Mapping)):  # nested lists or a NumPy array, as for a dict's values
            try:
                observations = torch.as_tensor(observations)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"Expected observations as a tensor (*B, N, E) or a dict of them, but got "
                                f"{type(observations).__name__}.") from None
        if isinstance(observations, Tensor):
            if len(sources) != 1:
                raise ValueError(f"Expected a dict of observations with keys {sorted(sources)}, but got one tensor.")
            name = next(iter(sources))
            values = {name: observations}
            if mask is not None and not isinstance(mask, Mapping):
                mask = {name: mask}
        else:
            values = dict(observations)
        masks = dict(mask) if mask is not None else {}
    unknown = set(values) - set(sources)
    if unknown:
        raise ValueError(f"Expected observation sources among {sorted(sources)}, but got unknown {sorted(unknown)}.")
    batch_shapes = []
    for name, dim in sources.items():
        if name not in values:
            raise ValueError(f"Expected observations for source {name!r}, but none were given (pass a mask of "
                             "False to mark it missing).")
        v = values[name]
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v)
        if not v.dtype.is_floating_point:
            v = v.to(torch.get_default_dtype())
        if v.dim() < 2 or v.shape[-1] != dim:
            raise ValueError(f"Expected observations {name!r} of shape (*B, N, E={dim}), but got a tensor of shape "
                             f"{tuple(v.shape)}.")
        m = masks.get(name)
        if m is None:  # everything present: one finiteness test
            m = torch.ones(v.shape[:-1], dtype=torch.bool, device=v.device)
            finite_where_present = all_finite = _all_finite(v)
        else:
            m = torch.as_tensor(m, device=v.device)
            if m.dtype != torch.bool:
                raise ValueError(f"Expected a boolean mask for {name!r}, but got dtype {m.dtype}.")
            if m.shape != v.shape[:-1]:
                raise ValueError(f"Expected the mask for {name!r} to have shape {tuple(v.shape[:-1])}, but got "
                                 f"{tuple(m.shape)}.")
            finite = torch.isfinite(v).all(-1)
            finite_where_present = bool((finite | ~m).all())
            all_finite = finite_where_present and bool(finite.all())
        if not finite_where_present:
            raise ValueError(f"Expected finite observations {name!r}, but found NaN or inf where the mask is True.")
        if not all_finite:  # padded entries may hold anything; keep NaN out of the arithmetic
            v = torch.where(m.unsqueeze(-1), v, torch.zeros((), dtype=v.dtype, device=v.device))
        values[name], masks[name] = v, m
        batch_shapes.append(m.shape[:-1])
    try:
        broadcast_shapes(*batch_shapes)
    except RuntimeError:
        raise ValueError(f"Expected observation batch shapes to broadcast, but got {batch_shapes}.") from None
    return Observations({s: values[s] for s in sources}, {s: masks[s] for s in sources})


def _all_finite(values: Tensor) -> bool:
    """Whether every entry of ``values`` is finite. A finite float64 sum proves it (NaN and inf propagate through
    a sum), at batch size 1 for a third of the elementwise test's cost; a non-finite sum, which huge finite float64
    entries can give by overflow, is confirmed entry by entry."""
    if math.isfinite(float(values.detach().sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(values).all())

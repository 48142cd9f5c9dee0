r"""Structure that the network is given exactly instead of learning it: anchoring and bounded prior features.

**Anchoring** (``ModelConfig.anchor = s``) is for location problems, whose likelihood moves with the latent: if
:math:`x \mapsto x + t` maps source ``s``'s observations :math:`z \mapsto z + t`, then the exact posterior satisfies

.. math::
    p(x \mid z + t,\ \text{prior} + t) = p(x - t \mid z,\ \text{prior}),

so the network may read every problem centred on an anchor :math:`a` that moves with it, and add :math:`a` back:
:math:`f(\text{prior}, z) = f(\text{prior} - a, z - a) + a`. The anchor is the mean of source ``s``'s present
observations, :math:`a = \tfrac1n\sum_i m_i z_i`, where the posterior concentrates as the data grow; a data set with
no observation of ``s`` has :math:`a = 0`. Translating a problem then changes no number the network reads: the
model is translation-equivariant by construction, wherever the problem is.

**Scale anchoring** (``ModelConfig.scale_source = s``, one latent coordinate with a log warp) is the same for
scale problems: if :math:`x = \log\sigma^2 \mapsto x + t` maps source ``s``'s values :math:`z \mapsto e^{pt}z`
(``scale_power`` :math:`p`; :math:`p = \tfrac12` for readings of standard deviation :math:`\sigma`), the network
reads the problem shifted by :math:`a = \log(\overline{z^2})/(2p)` (the mean over present values, so the values it
reads have unit mean square) and :math:`a` is added back. With ``scale_parameter`` the parametric prior's encoder
is scale-equivariant too: it encodes the prior with that parameter set to 1 and moves the result by its log.

**Bounded prior features** (``ModelConfig.bounded_prior_features``): the component embedding reads

.. math::
    \phi(c_k) = \big[\max(\log w_k, -7),\ \operatorname{asinh}\mu_k,\ \operatorname{clamp}(\log\operatorname{diag}L_k,
    -5, 4),\ \operatorname{asinh}\operatorname{offdiag}L_k\big]

instead of the chart :math:`c_k`, so that priors far wider, narrower or further away than any seen in training
give the network inputs near those it was trained on, not extrapolations. The site update (``site.py``) still
multiplies the *exact* chart :math:`c_k` by the site, and with ``ModelConfig.site_evidence`` the weights follow
Bayes' rule through the site's evidence, so the features only steer the learned site.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..observations import Observations

FEATURE_LOG_WEIGHT_FLOOR = -7.0
FEATURE_LOG_SCALE_RANGE = (-5.0, 4.0)


def anchor_of(observations: Observations, source: str, dim: int) -> Tensor:
    """Mean ``(B, D)`` of the present observations of ``source`` (values ``(B, N, D)``); 0 where none is present."""
    values, mask = observations.values[source][..., :dim], observations.masks[source].unsqueeze(-1)
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-2)
    return total / mask.sum(-2).clamp_min(1).to(values.dtype)


def framed_observations(observations: Observations, anchor: str, dim: int, scale_source: str, power: float
                        ) -> tuple[Observations, Tensor | None]:
    """The observations in the network's frame (module docstring) and the shift of the chart's means into it:
    relative to ``anchor``'s mean in its first ``dim`` coordinates (shift ``(B, D)``), or ``scale_source`` at unit
    mean square (shift ``(B, 1)``), or as given (shift ``None``)."""
    values = dict(observations.values)
    if anchor:
        shift = anchor_of(observations, anchor, dim)
        z = values[anchor]
        values[anchor] = torch.cat([z[..., :dim] - shift.unsqueeze(-2), z[..., dim:]], -1) if z.shape[-1] > dim \
            else z - shift.unsqueeze(-2)
    elif scale_source:
        shift = scale_anchor_of(observations, scale_source, power)
        values[scale_source] = values[scale_source] * torch.exp(-power * shift).unsqueeze(-1)
    else:
        return observations, None
    return Observations(values, dict(observations.masks)), shift


def framed(config, chart: Tensor, observations: Observations) -> tuple[Tensor, Observations, Tensor | None]:
    """The problem in the frame the network reads (module docstring): ``(chart, observations, shift)``, with
    ``shift`` to add back to the posterior's means (``None`` for a model without anchoring)."""
    observations, shift = framed_observations(observations, config.anchor, config.dim, config.scale_source,
                                              config.scale_power)
    return (chart, observations, None) if shift is None else (moved(chart, -shift, shift.shape[-1]), observations,
                                                               shift)


def scale_anchor_of(observations: Observations, source: str, power: float) -> Tensor:
    r"""The shift :math:`a = \log(\overline{z^2})/(2p)` ``(B, 1)`` of source ``source``'s present values (module
    docstring); 0 where none is present."""
    values, mask = observations.values[source], observations.masks[source].unsqueeze(-1)
    square = torch.where(mask, values.pow(2), torch.zeros((), dtype=values.dtype, device=values.device))
    mean = square.sum((-2, -1)) / (mask.sum((-2, -1)).clamp_min(1) * values.shape[-1]).to(values.dtype)
    shift = torch.log(mean.clamp_min(1e-30)) / (2 * power)
    return torch.where(mask.any(-2).squeeze(-1), shift, torch.zeros_like(shift)).unsqueeze(-1)


def moved(chart: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Chart ``(B, K, C)`` with every component mean moved by ``shift`` ``(B, D)``."""
    return torch.cat([chart[..., :1], chart[..., 1:1 + dim] + shift.unsqueeze(-2), chart[..., 1 + dim:]], -1)


def prior_features(chart: Tensor, dim: int) -> Tensor:
    """The bounded features :math:`\\phi(c)` ``(B, K, C)`` of a chart ``(B, K, C)`` (module docstring)."""
    return torch.cat([chart[..., :1].clamp_min(FEATURE_LOG_WEIGHT_FLOOR),
                      torch.asinh(chart[..., 1:1 + dim]),
                      chart[..., 1 + dim:1 + 2 * dim].clamp(*FEATURE_LOG_SCALE_RANGE),
                      torch.asinh(chart[..., 1 + 2 * dim:])], -1)

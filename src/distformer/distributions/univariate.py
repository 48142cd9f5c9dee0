r"""Distribution function and quantiles of a one-dimensional Gaussian mixture.

.. math::
    F(x) = \sum_k w_k\,\Phi\!\Big(\frac{x - \mu_k}{\sigma_k}\Big),\qquad F^{-1}(q) = x \text{ with } F(x) = q.

:math:`F` is continuous and strictly increasing, so the quantile is found by bisection on a bracket that holds every
quantile in :math:`(0, 1)`: :math:`[\min_k(\mu_k - 40\sigma_k), \max_k(\mu_k + 40\sigma_k)]`, which each component
leaves with probability below :math:`10^{-300}`. 200 halvings reach the float64 resolution of any such bracket,
and a final Newton step :math:`x \leftarrow x - (F(x) - q)/f(x)` polishes it. Computed in float64, returned in the
mixture's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

BISECTIONS = 200


def _one_dimensional(mixture, what: str) -> None:
    if mixture.dim != 1:
        raise NotImplementedError(f"Expected a one-dimensional mixture for {what}, but it has D={mixture.dim}; "
                                  "use marginal(i) for a coordinate's.")


def cdf(mixture, x: Tensor) -> Tensor:
    """:math:`F(x)` ``sample_shape + batch_shape`` for values ``sample_shape + batch_shape + (1,)``."""
    _one_dimensional(mixture, "cdf")
    mixture._check_value(x)
    return _cdf(mixture, x[..., 0].to(torch.float64)).to(mixture.dtype)


def icdf(mixture, q: Tensor) -> Tensor:
    """The quantile ``sample_shape + batch_shape + (1,)`` of probabilities ``q`` ``sample_shape + batch_shape`` in
    ``[0, 1]`` (``-inf`` at 0, ``inf`` at 1)."""
    _one_dimensional(mixture, "icdf")
    q = torch.as_tensor(q, dtype=torch.float64, device=mixture.device)
    if not bool(((q >= 0) & (q <= 1)).all()):
        raise ValueError(f"Expected probabilities in [0, 1], but got values such as {q[~((q >= 0) & (q <= 1))][:3].tolist()}.")
    loc, scale = mixture.loc[..., 0].to(torch.float64), mixture.scale_tril[..., 0, 0].to(torch.float64)
    shape = torch.broadcast_shapes(q.shape, mixture.batch_shape)
    low = (loc - 40 * scale).min(-1).values.expand(shape).clone()
    high = (loc + 40 * scale).max(-1).values.expand(shape).clone()
    target = q.expand(shape)
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        below = _cdf(mixture, middle) < target
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    x = 0.5 * (low + high)
    density = _log_density(mixture, x).exp()
    x = torch.where(density > 0, x - (_cdf(mixture, x) - target) / density.clamp_min(1e-300), x).clamp(low, high)
    x = torch.where(target <= 0, -torch.inf, torch.where(target >= 1, torch.inf, x))
    return x.to(mixture.dtype).unsqueeze(-1)


def _cdf(mixture, x: Tensor) -> Tensor:
    loc, scale = mixture.loc[..., 0].to(torch.float64), mixture.scale_tril[..., 0, 0].to(torch.float64)
    weights = mixture.weights.to(torch.float64)
    return (weights * torch.special.ndtr((x.unsqueeze(-1) - loc) / scale)).sum(-1)


def _log_density(mixture, x: Tensor) -> Tensor:
    return mixture.to(torch.float64).log_prob(x.unsqueeze(-1))

r"""Gamma, inverse-gamma and beta draws with an explicit ``torch.Generator`` (``torch.distributions`` has none).

Gamma(:math:`a`, 1) by Marsaglia and Tsang's squeeze-free rejection for :math:`a\ge1`: with
:math:`d = a - 1/3`, :math:`c = 1/\sqrt{9d}`, propose :math:`v = (1 + c\,\varepsilon)^3`,
:math:`\varepsilon\sim\mathcal N(0,1)`, and accept :math:`dv` when :math:`v>0` and

.. math::
    \log u < \tfrac12\varepsilon^2 + d - dv + d\log v,\qquad u\sim\mathcal U(0,1)

(acceptance above 95% for every :math:`a\ge1`). For :math:`a<1`, :math:`G_a = G_{a+1}U^{1/a}`. In float32 a shape
well below 1 puts real mass below the smallest float (:math:`P(G_{0.1} < 10^{-38}) \approx 10^{-4}`), where draws
underflow to 0; draw in float64 where that matters, or draw :math:`\log G_a = \log G_{a+1} + \log U/a`
(``log_standard_gamma``). Then
:math:`\mathrm{Gamma}(a, \text{rate } b) = G_a/b`, :math:`\mathrm{InvGamma}(a, b) = b/G_a` and
:math:`\mathrm{Beta}(a, b) = G_a/(G_a + G_b)`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def standard_gamma(shape: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draws of Gamma(``shape``, 1), one per entry of ``shape`` (any shape, positive, floating)."""
    out, boost, u = _at_least_one(shape, generator)
    return out if u is None else torch.where(boost, out * u ** (1.0 / shape), out)


def log_standard_gamma(shape: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r""":math:`\log G` for draws :math:`G` of Gamma(``shape``, 1), the same draws as :func:`standard_gamma` from the
    same generator state, but for a shape below 1 as :math:`\log G_{a+1} + \log U / a`, which does not underflow:
    the far left tail of a shape near 0 is drawn as it is."""
    out, boost, u = _at_least_one(shape, generator)
    return out.log() if u is None else torch.where(boost, out.log() + u.log() / shape, out.log())


def _at_least_one(shape: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Marsaglia and Tsang draws of Gamma(``shape``, 1) where ``shape >= 1``, else of Gamma(``shape + 1``, 1); where
    the shape was raised; and, if it was anywhere, the uniforms :math:`U` of :math:`G_a = G_{a+1}U^{1/a}` (module
    docstring; clamped above 0, which one draw in 2^24 would be in float32), else ``None``."""
    if not bool((shape > 0).all()):
        raise ValueError("Expected positive gamma shapes, but got some <= 0.")
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while bool(todo.any()):
        idx = todo.nonzero(as_tuple=True)
        eps = torch.randn(idx[0].shape, generator=generator, dtype=a.dtype)
        u = torch.rand(idx[0].shape, generator=generator, dtype=a.dtype)
        v = (1 + c[idx] * eps) ** 3
        ok = v > 0
        accept = ok & (torch.log(u) < 0.5 * eps**2 + d[idx] - d[idx] * v + d[idx] * torch.log(v.clamp_min(1e-300)))
        out[tuple(i[accept] for i in idx)] = (d[idx] * v)[accept]
        todo[tuple(i[accept] for i in idx)] = False
    if not bool(boost.any()):
        return out, boost, None
    return out, boost, torch.rand(shape.shape, generator=generator, dtype=a.dtype).clamp_min(torch.finfo(a.dtype).tiny)


def gamma(concentration: Tensor, rate: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gamma(concentration, rate) draws, broadcast shape of the two."""
    concentration, rate = torch.broadcast_tensors(concentration, rate)
    return standard_gamma(concentration, generator) / rate


def inverse_gamma(concentration: Tensor, rate: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """InvGamma(concentration, rate) draws (density :math:`\\propto x^{-a-1}e^{-b/x}`), broadcast shape."""
    concentration, rate = torch.broadcast_tensors(concentration, rate)
    return rate / standard_gamma(concentration, generator)


def beta(a: Tensor, b: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Beta(a, b) draws, broadcast shape of the two."""
    a, b = torch.broadcast_tensors(a, b)
    ga, gb = standard_gamma(a, generator), standard_gamma(b, generator)
    return ga / (ga + gb)


def logit_beta(a: Tensor, b: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r""":math:`\operatorname{logit} X` for draws :math:`X` of Beta(a, b) (the same draws as :func:`beta` from the
    same generator state), as :math:`\log G_a - \log G_b`: exact in both tails, where :math:`X` itself rounds to 0
    or 1 (for a shape near 0 a good share of the mass lies beyond any float's reach of 0)."""
    a, b = torch.broadcast_tensors(a, b)
    return log_standard_gamma(a, generator) - log_standard_gamma(b, generator)

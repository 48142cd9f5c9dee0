r"""Gaussian-mixture fits to the log of an inverse-gamma variable, tabulated once: a parametric prior made exact
where the mathematics allows, instead of learned.

If :math:`\sigma^2\sim\mathrm{InvGamma}(\alpha,\beta)`, then :math:`y=\log\sigma^2=\log\beta-\log G` with
:math:`G\sim\mathrm{Gamma}(\alpha,1)`, so

.. math::
    p(y) = \frac{\exp\big(\alpha(\log\beta - y) - \beta e^{-y}\big)}{\Gamma(\alpha)},\qquad
    \mathbb E[y] = \log\beta - \psi(\alpha),\qquad \mathrm{Var}[y] = \psi'(\alpha).

The standardised :math:`u = (y - \log\beta + \psi(\alpha))/\sqrt{\psi'(\alpha)}` has a density that depends on
:math:`\alpha` alone,

.. math::
    p_\alpha(u) = \sqrt{\psi'(\alpha)}\,\frac{\exp(-\alpha y_0 - e^{-y_0})}{\Gamma(\alpha)},\qquad
    y_0 = -\psi(\alpha) + \sqrt{\psi'(\alpha)}\,u,

so one table over :math:`\alpha` serves every :math:`\beta` exactly. For each :math:`\alpha` on a log-spaced grid, a
``K``-component mixture :math:`q_\alpha(u)` minimises :math:`\mathrm{KL}(p_\alpha\,\|\,q_\alpha)` on a quadrature
grid (float64, L-BFGS; each fit starts from its neighbour's, so the table is smooth in :math:`\log\alpha`). Between
grid points the means, log scales and logits are interpolated linearly in :math:`\log\alpha`. Outside the table
:math:`\alpha` is clamped to its ends: above it the shape is Gaussian to within the last fit's error; below
:math:`\alpha = 0.05` the prior is heavier-tailed than any shipped model was trained on, and the model's range check
flags it. The fit for :math:`(\alpha,\beta)` is :math:`q_\alpha` pushed through
:math:`y = \log\beta - \psi(\alpha) + \sqrt{\psi'(\alpha)}\,u`.

The shipped table (``log_inverse_gamma_8.json``, 8 components) is written by ``scripts/fit_log_inverse_gamma.py``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .gmm import GaussianMixture

TABLE_FILE = Path(__file__).with_name("log_inverse_gamma_8.json")
QUADRATURE = (-12.0, 30.0, 8401)  # u from, to, points: covers the standardised density for alpha >= 0.05


def standardised_log_density(alpha: float, u: Tensor) -> Tensor:
    r""":math:`\log p_\alpha(u)` (module docstring) at ``u`` ``(n,)``, float64."""
    a = torch.tensor(alpha, dtype=torch.float64)
    sd = torch.polygamma(1, a).sqrt()
    y0 = -torch.digamma(a) + sd * u
    return -torch.lgamma(a) - a * y0 - torch.exp(-y0) + sd.log()


def mixture_log_density(params: Tensor, u: Tensor) -> Tensor:
    """Log density at ``u`` ``(n,)`` of the mixture with ``params`` ``(3K,)``: means, log scales, logits."""
    m, log_s, logits = params.view(3, -1)
    z = (u.unsqueeze(-1) - m) / log_s.exp()
    return torch.logsumexp(torch.log_softmax(logits, -1) - 0.5 * z**2 - log_s - 0.5 * math.log(2 * math.pi), -1)


def fit(alpha: float, start: Tensor, rounds: int = 4) -> tuple[float, Tensor]:
    r"""``(KL, params)``: the mixture minimising :math:`\mathrm{KL}(p_\alpha\|q)` from ``start`` ``(3K,)``."""
    u = torch.linspace(*QUADRATURE[:2], QUADRATURE[2], dtype=torch.float64)
    log_p = standardised_log_density(alpha, u)
    p = log_p.exp() * (u[1] - u[0])
    params = start.detach().clone().double().requires_grad_(True)
    opt = torch.optim.LBFGS([params], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-13,
                            tolerance_change=1e-16)

    def kl() -> Tensor:
        return (p * (log_p - mixture_log_density(params, u))).sum()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = kl()
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    with torch.no_grad():
        return float(kl()), params.detach()


def build_table(alphas: Tensor, components: int = 8,
                progress: Callable[[int, float, float], None] | None = None) -> dict:
    """Fits at increasing ``alphas`` ``(G,)``, each started from the previous one (the first from evenly spaced
    means): the table as JSON-ready lists."""
    start = torch.cat([torch.linspace(-1.5, 1.5, components, dtype=torch.float64),
                       torch.full((components,), -0.7, dtype=torch.float64),
                       torch.zeros(components, dtype=torch.float64)])
    rows, kls = [], []
    for i, alpha in enumerate(alphas.tolist()):
        kl, start = fit(alpha, start)
        rows.append(start.tolist())
        kls.append(kl)
        if progress is not None:
            progress(i, alpha, kl)
    return {"components": components, "quadrature": list(QUADRATURE), "alpha": alphas.tolist(), "kl": kls,
            "params": rows}


@functools.lru_cache(maxsize=None)
def _table() -> tuple[Tensor, Tensor]:
    data = json.loads(TABLE_FILE.read_text())
    return (torch.tensor(data["alpha"], dtype=torch.float64).log(),
            torch.tensor(data["params"], dtype=torch.float64))


def table_range() -> tuple[float, float]:
    """The smallest and largest ``alpha`` of the shipped table."""
    log_alpha, _ = _table()
    return math.exp(float(log_alpha[0])), math.exp(float(log_alpha[-1]))


def log_inverse_gamma_mixture(alpha: Tensor, beta: Tensor) -> GaussianMixture:
    r"""The tabulated fit to the law of :math:`\log\sigma^2`, :math:`\sigma^2\sim\mathrm{InvGamma}(\alpha,\beta)`:
    ``alpha``, ``beta`` ``(*B)`` -> a float64 mixture of batch ``B`` over one coordinate (module docstring)."""
    alpha, beta = torch.broadcast_tensors(torch.as_tensor(alpha, dtype=torch.float64),
                                          torch.as_tensor(beta, dtype=torch.float64))
    if not bool((alpha > 0).all() & (beta > 0).all() & torch.isfinite(alpha).all() & torch.isfinite(beta).all()):
        raise ValueError("Expected positive, finite inverse-gamma parameters alpha and beta, but some are not.")
    log_alpha, params = _table()
    x = alpha.log().clamp(float(log_alpha[0]), float(log_alpha[-1]))
    right = torch.searchsorted(log_alpha, x.contiguous()).clamp(1, len(log_alpha) - 1)
    t = ((x - log_alpha[right - 1]) / (log_alpha[right] - log_alpha[right - 1])).unsqueeze(-1)
    m, log_s, logits = ((1 - t) * params[right - 1] + t * params[right]).unflatten(-1, (3, -1)).unbind(-2)
    sd = torch.polygamma(1, alpha).sqrt().unsqueeze(-1)  # the shape may be clamped; the moments never are
    centre = (beta.log() - torch.digamma(alpha)).unsqueeze(-1)
    return GaussianMixture(logits=torch.log_softmax(logits, -1), loc=(centre + sd * m).unsqueeze(-1),
                           scale_tril=(sd * log_s.exp()).unsqueeze(-1).unsqueeze(-1))

r"""Posterior head: each component token emits a Gaussian *site* that multiplies its prior component.

For a prior component :math:`\mathcal N(\mu_k, \Sigma_k)` with precision :math:`\Lambda_k = \Sigma_k^{-1}`, the
head emits a site mean :math:`m_k`, a site precision :math:`P_k = M_kM_k^\top` (lower-triangular :math:`M_k`,
positive diagonal) and a log-weight change :math:`\delta_k`. The updated component is the product

.. math::
    \Lambda_k' = \Lambda_k + P_k,\qquad
    \mu_k' = \mu_k + \Lambda_k'^{-1} P_k (m_k - \mu_k),\qquad
    \log w_k' = \log w_k + \delta_k \ (\text{then softmax over } k),

the natural-parameter (information-form) update: additive in :math:`(\Lambda, \Lambda\mu)`. For a linear-Gaussian
likelihood this is exact with :math:`P_k = nH^\top R^{-1}H`, :math:`m_k` the least-squares point of the data, and
:math:`\delta_k` the log evidence; for other likelihoods it is the Laplace/EP form of a likelihood term. A further
chart residual (``c' \leftarrow c' + r_k``, starting at zero) keeps the head fully general, e.g. for components that
must widen; a model whose likelihood the site can represent exactly drops it (``ModelConfig.site_residual``), so
that every component of its posterior is exactly the prior component times the site. The site starts at unit
precision centred at the origin (:math:`\log\operatorname{diag}M = 0`): starting near zero precision instead makes
training several times slower, because Adam moves the log-precision by about one learning rate per step.

With ``evidence`` (``ModelConfig.site_evidence``) the weight change also holds the site's Gaussian evidence under
the prior component, :math:`\log w_k' = \log w_k + \delta_k + \log\mathcal N(m_k;\ \mu_k,\ \Sigma_k + P_k^{-1})`,
Bayes' rule for a likelihood of the site's form, so that the network learns only a correction to it. With
:math:`g = m_k - \mu_k` and :math:`f = P_k g`, Woodbury and the determinant lemma give it from quantities the update
already has (dropping :math:`-\tfrac D2\log 2\pi`, which the softmax over components removes):

.. math::
    \log\mathcal N(m_k; \mu_k, \Sigma_k + P_k^{-1}) = -\tfrac12\big(g^\top f - f^\top(\mu_k' - \mu_k)\big)
    - \textstyle\sum\log\operatorname{diag}L_k + \sum\log\operatorname{diag}M_k + \sum\log\operatorname{diag}L_k',

with :math:`L_k' L_k'^\top = \Lambda_k'^{-1}`. For a linear-Gaussian likelihood whose site the network gets right,
the posterior weights are then exact for any prior weight, however small, and any distance between prior and data.

For inference (no autograd) with ``D <= 4`` on large batches (and in traces recorded for them,
``small_linalg.unrolled``) the update runs entry by entry on the lower triangles, each entry one operation over the whole batch, instead of assembling
``D x D`` matrices and multiplying them, which saves the small-matrix operators' per-call overhead. Both forms are
the same function (tested in float64).

Conditioning. The update inverts the prior covariance :math:`\Sigma_k = L_kL_k^\top`, whose condition number is
that of :math:`L_k` squared. Priors users write reach condition numbers beyond float32's
:math:`1/\varepsilon \approx 10^7`: a 2-D component with standard deviations 0.001 and 300 along rotated axes
(:math:`10^{11}`), or a 10-D factor whose off-diagonal entries are several times its diagonal ones, each entry
inside the training ranges (:math:`10^9`-:math:`10^{10}`). In float32 :math:`\Lambda_k` is then numerically
singular: the factorisation fails or the posterior is far off (KL 0.6-1.5 to the exact posterior, measured). So at
inference the update runs in float64 on float32 inputs, either form; the network before it stays in float32. At
batch size 1 this adds three casts to the trace; on large batches the site update is a small part of the forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..distributions.linalg import symmetrize
from ..distributions.small_linalg import (Entries, cholesky_entries, cholesky_factor, entry_sum, gram_entries,
                                          inverse_entries, inverse_from_factor, unrolled)
from .tokens import chart_from_parts, chart_size, tril_from_parts

SITE_LOG_DIAG_INIT = 0.0


def head_size(dim: int, residual: bool = True) -> int:
    """Outputs per token: weight change 1, site mean D, site factor D(D+1)/2, and the chart residual unless
    ``residual`` is off (``ModelConfig.site_residual``)."""
    return 1 + dim + dim * (dim + 1) // 2 + (chart_size(dim) if residual else 0)


def apply_site(chart: Tensor, head: Tensor, dim: int, evidence: bool = False) -> Tensor:
    """Posterior chart from prior chart ``(B, K, C)`` and head outputs ``(B, K, head_size(D))``; ``evidence`` adds
    the site's evidence to the weight change (module docstring)."""
    if torch.is_grad_enabled():
        return _apply_site_matrices(chart, head, dim, evidence)
    update = _apply_site_entrywise if unrolled(dim, chart[..., 0].numel()) else _apply_site_matrices
    if chart.dtype == torch.float32:  # module docstring: conditioning
        return update(chart.double(), head.double(), dim, evidence).to(chart.dtype)
    return update(chart, head, dim, evidence)


def _apply_site_matrices(chart: Tensor, head: Tensor, dim: int, evidence: bool) -> Tensor:
    n_tril = dim * (dim + 1) // 2
    log_w, loc = chart[..., 0], chart[..., 1:1 + dim]
    L = tril_from_parts(chart[..., 1 + dim:1 + 2 * dim].exp(), chart[..., 1 + 2 * dim:], dim)
    d_log_w, site_mean = head[..., 0], head[..., 1:1 + dim]
    m_log_diag = _site_log_diag(head[..., 1 + dim:1 + 2 * dim])
    M = tril_from_parts(m_log_diag.exp(), head[..., 1 + 2 * dim:1 + dim + n_tril], dim)
    residual = head[..., 1 + dim + n_tril:] if head.shape[-1] > 1 + dim + n_tril else None
    precision = symmetrize(inverse_from_factor(L) + M @ M.transpose(-1, -2))  # SPD by construction
    cov = symmetrize(inverse_from_factor(cholesky_factor(precision)))
    site_force = M @ (M.transpose(-1, -2) @ (site_mean - loc).unsqueeze(-1))
    step = (cov @ site_force).squeeze(-1)
    new_L = cholesky_factor(cov)
    if evidence:
        force = site_force.squeeze(-1)
        quadratic = ((site_mean - loc) * force).sum(-1) - (force * step).sum(-1)
        log_det = (m_log_diag.sum(-1) - chart[..., 1 + dim:1 + 2 * dim].sum(-1)
                   + new_L.diagonal(dim1=-2, dim2=-1).log().sum(-1))
        d_log_w = d_log_w - 0.5 * quadratic + log_det
    out = chart_from_parts(log_w + d_log_w, loc + step, new_L, dim)
    return out if residual is None else out + residual


def _site_log_diag(raw: Tensor) -> Tensor:
    r""":math:`\log\operatorname{diag}M` ``(..., D)`` from the head's outputs ``(..., D)``: offset by
    ``SITE_LOG_DIAG_INIT`` (no operation at 0, so that a trace records none) and clamped."""
    return (raw + SITE_LOG_DIAG_INIT if SITE_LOG_DIAG_INIT else raw).clamp(-20.0, 10.0)


def _lower(diagonal: Tensor, off: Tensor, dim: int) -> Entries:
    """Lower-triangle entries from the diagonal ``(..., D)`` and the strictly-lower entries ``(..., D(D-1)/2)`` in
    row-major order (the chart's layout)."""
    rows: Entries = []
    k = 0
    for i in range(dim):
        rows.append([off[..., k + j] for j in range(i)] + [diagonal[..., i]])
        k += i
    return rows


def _apply_site_entrywise(chart: Tensor, head: Tensor, dim: int, evidence: bool = False) -> Tensor:
    """:func:`apply_site` entry by entry (module docstring): the same equations on lower triangles."""
    D, n_tril = dim, dim * (dim + 1) // 2
    log_scale, m_log_diag = chart[..., 1 + D:1 + 2 * D], _site_log_diag(head[..., 1 + D:1 + 2 * D])
    L = _lower(log_scale.exp(), chart[..., 1 + 2 * D:], D)
    M = _lower(m_log_diag.exp(), head[..., 1 + 2 * D:1 + D + n_tril], D)
    prior_precision = gram_entries(inverse_entries(L))                                   # (L L^T)^{-1}
    precision = [[entry_sum([prior_precision[i][j]] + [M[i][k] * M[j][k] for k in range(j + 1)]) for j in range(i + 1)]
                 for i in range(D)]                                                       # + M M^T
    cov = gram_entries(inverse_entries(cholesky_entries(precision)))
    gap = [head[..., 1 + i] - chart[..., 1 + i] for i in range(D)]                       # site mean - loc
    pulled = [entry_sum([M[i][k] * gap[i] for i in range(k, D)]) for k in range(D)]       # M^T gap
    force = [entry_sum([M[i][k] * pulled[k] for k in range(i + 1)]) for i in range(D)]    # M M^T gap
    step = [entry_sum([(cov[i][j] if j <= i else cov[j][i]) * force[j] for j in range(D)]) for i in range(D)]
    loc = [chart[..., 1 + i] + step[i] for i in range(D)]                                 # loc + cov M M^T gap
    factor = cholesky_entries(cov)
    log_factor = [factor[i][i].log() for i in range(D)]
    log_w = chart[..., 0] + head[..., 0]
    if evidence:
        quadratic = entry_sum([gap[i] * force[i] - force[i] * step[i] for i in range(D)])
        log_det = entry_sum([(m_log_diag - log_scale).sum(-1)] + log_factor)
        log_w = log_w - 0.5 * quadratic + log_det
    columns = [log_w] + loc + log_factor + [factor[i][j] for i in range(D) for j in range(i)]
    out = torch.stack(columns, -1)
    return out + head[..., 1 + D + n_tril:] if head.shape[-1] > 1 + D + n_tril else out

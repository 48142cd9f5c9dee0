r"""The log-Cholesky chart: one unconstrained vector per mixture component.

A component :math:`(w_k, \mu_k, L_k)` with :math:`\Sigma_k = L_kL_k^\top` is written as

.. math::
    c_k = \big[\log w_k,\ \mu_k,\ \log\operatorname{diag}L_k,\ \operatorname{offdiag}(L_k)\big]
    \in \mathbb R^{1 + D + D(D+1)/2},

with the strictly-lower entries of :math:`L_k` in row-major order. The inverse map takes
:math:`w = \operatorname{softmax}_k(c_{k,0})`, :math:`\operatorname{diag}L = \exp(\operatorname{clamp}(\cdot,-11,14))`,
so every chart vector decodes to a valid mixture (positive-definite covariances, weights summing to one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture

LOG_WEIGHT_FLOOR = -16.0
LOG_DIAG_RANGE = (-11.0, 14.0)


def chart_size(dim: int) -> int:
    """Length of one component's chart vector: ``1 + D + D(D+1)/2``."""
    return 1 + dim + dim * (dim + 1) // 2


_TRIL_INDEX: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _tril_index(dim: int, device: str) -> tuple[Tensor, Tensor]:
    """``(gather, lower)``: for each of the ``D*D`` flat positions of a matrix, its entry in
    ``[0, diag, strictly-lower]`` (0 above the diagonal); and the flat positions of the strictly-lower entries
    (row-major). Cached; call it once before tracing, so that a trace records constants, not their computation."""
    key = (dim, device)
    if torch.compiler.is_compiling():  # a compiled graph folds these constants itself; no guard on the cache
        return _tril_positions(dim, device)
    if key not in _TRIL_INDEX:
        with torch.inference_mode(False):  # cached: must stay usable outside inference mode too
            _TRIL_INDEX[key] = _tril_positions(dim, device)
    return _TRIL_INDEX[key]


def _tril_positions(dim: int, device: str) -> tuple[Tensor, Tensor]:
    rows, cols = torch.tril_indices(dim, dim, offset=-1)
    lower = rows * dim + cols
    gather = torch.zeros(dim * dim, dtype=torch.long)
    gather[torch.arange(dim) * (dim + 1)] = 1 + torch.arange(dim)
    gather[lower] = 1 + dim + torch.arange(lower.numel())
    return gather.to(device), lower.to(device)


def tril_from_parts(diag: Tensor, off: Tensor, dim: int | None = None) -> Tensor:
    """Lower-triangular ``(..., D, D)`` from its diagonal ``(..., D)`` and strictly-lower entries ``(..., D(D-1)/2)``
    (``dim``: ``D`` as a Python int, which a trace keeps as a constant; default: read from ``diag``)."""
    dim = diag.shape[-1] if dim is None else dim
    gather, _ = _tril_index(dim, str(diag.device))
    parts = torch.cat([torch.zeros_like(diag[..., :1]), diag, off], -1)
    return parts.index_select(-1, gather).unflatten(-1, (dim, dim))


def offdiag(L: Tensor, dim: int | None = None) -> Tensor:
    """Strictly-lower entries ``(..., D(D-1)/2)`` of ``L`` ``(..., D, D)`` in row-major order."""
    dim = L.shape[-1] if dim is None else dim
    _, lower = _tril_index(dim, str(L.device))
    return L.flatten(-2).index_select(-1, lower)


def gmm_to_chart(mixture: GaussianMixture) -> Tensor:
    """``(*B, K, 1 + D + D(D+1)/2)`` chart of ``mixture``; zero weights are floored at ``log w = -16``."""
    return chart_from_parts(mixture.log_weights.clamp_min(LOG_WEIGHT_FLOOR), mixture.loc, mixture.scale_tril)


def chart_from_parts(log_weights: Tensor, loc: Tensor, scale_tril: Tensor, dim: int | None = None) -> Tensor:
    """Chart from log-weights ``(*B, K)``, means ``(*B, K, D)`` and Cholesky factors ``(*B, K, D, D)`` (``dim`` as
    in :func:`tril_from_parts`)."""
    return torch.cat([log_weights.unsqueeze(-1), loc, scale_tril.diagonal(dim1=-2, dim2=-1).log(),
                      offdiag(scale_tril, dim)], dim=-1)


def chart_to_gmm(chart: Tensor, dim: int) -> GaussianMixture:
    """Inverse of :func:`gmm_to_chart`: ``(*B, K, 1 + D + D(D+1)/2)`` -> valid ``GaussianMixture``."""
    if chart.shape[-1] != chart_size(dim):
        raise ValueError(f"Expected a chart of size {chart_size(dim)} for D={dim}, but got {chart.shape[-1]}.")
    return GaussianMixture._from_parts(*parts_from_chart(chart, dim))


def parts_from_chart(chart: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The mixture of a chart ``(*B, K, C)`` as normalised log-weights ``(*B, K)``, means ``(*B, K, D)`` and
    Cholesky factors ``(*B, K, D, D)``: :func:`chart_to_gmm` without the object (for a trace)."""
    log_diag = chart[..., 1 + dim:1 + 2 * dim].clamp(*LOG_DIAG_RANGE)
    L = tril_from_parts(log_diag.exp(), chart[..., 1 + 2 * dim:], dim)
    return torch.log_softmax(chart[..., 0], dim=-1), chart[..., 1:1 + dim], L

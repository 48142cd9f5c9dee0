r"""Cholesky helpers shared by the Gaussian-mixture code.

For a covariance :math:`\Sigma = L L^\top` with lower-triangular :math:`L` and positive diagonal,

.. math::
    \log\det\Sigma = 2\sum_i \log L_{ii}, \qquad
    (x-\mu)^\top\Sigma^{-1}(x-\mu) = \lVert L^{-1}(x-\mu)\rVert^2 ,

and the Gaussian log-density is
:math:`\log\mathcal N(x;\mu,\Sigma) = -\tfrac12\lVert L^{-1}(x-\mu)\rVert^2 - \sum_i\log L_{ii} - \tfrac D2\log 2\pi`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


def cholesky(matrix: Tensor, what: str = "covariance_matrix") -> Tensor:
    """Lower Cholesky factor of symmetric positive-definite ``matrix`` ``(..., D, D)``.

    Raises ``ValueError`` naming ``what`` when any matrix in the batch is not positive definite. Lower precisions
    are factorised in float64 and cast back: a covariance with large means folded in (a merge, a push-forward)
    can be positive definite yet lose that property to float32 rounding inside the factorisation.
    """
    if matrix.dtype != torch.float64 and matrix.dtype.is_floating_point:
        return cholesky(matrix.double(), what).to(matrix.dtype)
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info > 0).any()):
        bad = int((info > 0).sum())
        raise ValueError(
            f"Expected {what} to be symmetric positive definite, but {bad} of "
            f"{info.numel()} matrices of shape {tuple(matrix.shape[-2:])} are not."
        )
    return factor


def gaussian_log_prob(x: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """Log-density of ``N(loc, L L^T)`` at ``x``; ``x``/``loc`` ``(..., D)`` broadcast, ``L`` ``(..., D, D)``.

    Leading dimensions of ``x`` that ``L`` lacks (sample dimensions) become columns of one triangular solve per
    factor, so ``L`` is never copied once per sample."""
    diff = x - loc
    dim = diff.shape[-1]
    extra = diff.dim() - (scale_tril.dim() - 1)
    if extra > 0:
        lead = diff.shape[:extra]
        batch = torch.broadcast_shapes(diff.shape[extra:-1], scale_tril.shape[:-2])
        columns = diff.expand(*lead, *batch, dim).reshape(-1, *batch, dim).movedim(0, -1)  # (*batch, D, M)
        tril = scale_tril.expand(*batch, dim, dim)
        white = torch.linalg.solve_triangular(tril, columns, upper=False).movedim(-1, 0).reshape(*lead, *batch, dim)
    else:
        shape = torch.broadcast_shapes(diff.shape[:-1], scale_tril.shape[:-2])
        diff = diff.expand(*shape, dim)
        tril = scale_tril.expand(*shape, *scale_tril.shape[-2:])
        white = torch.linalg.solve_triangular(tril, diff.unsqueeze(-1), upper=False).squeeze(-1)
    half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * white.pow(2).sum(-1) - half_log_det - 0.5 * dim * _LOG_2PI


def symmetrize(matrix: Tensor) -> Tensor:
    """``(M + M^T) / 2`` over the last two dimensions."""
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes``, answering the common all-equal case without its Python-level work."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    return torch.broadcast_shapes(*shapes)

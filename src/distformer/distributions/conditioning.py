r"""Exact conditioning of a Gaussian mixture on linear-Gaussian observations :math:`z_i = H x + v_i`,
:math:`v_i\sim\mathcal N(0,R)` i.i.d.

Conditioning on ``n`` observations :math:`z_i = H x + v_i,\ v_i\sim\mathcal N(0,R)` uses the sufficient statistic
:math:`\bar z = \tfrac1n\sum_i z_i \sim \mathcal N(Hx, R/n)`; per component (Kalman update, Joseph form)

.. math::
    S_k = H\Sigma_k H^\top + R/n,\quad G_k = \Sigma_k H^\top S_k^{-1},\quad
    \mu_k' = \mu_k + G_k(\bar z - H\mu_k),\quad
    \Sigma_k' = (I - G_kH)\Sigma_k(I-G_kH)^\top + G_k (R/n) G_k^\top,

and :math:`w_k' \propto w_k\,\mathcal N(\bar z; H\mu_k, S_k)` (the remaining factor of the likelihood does not
depend on ``k``).

Observations under a ``False`` mask are left out (they may hold anything, NaN included), and a data set with none
present keeps its prior.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import describe as _describe
from .linalg import cholesky, gaussian_log_prob, symmetrize


def condition_linear_gaussian(mixture, H: Tensor, R: Tensor, z: Tensor, mask: Tensor | None = None):
    """The exact posterior :class:`~distformer.GaussianMixture` of ``mixture`` (batch ``B``) after observing ``z``
    ``(*B, N, E)`` with observation matrix ``H`` ``(*B, E, D)``, noise covariance ``R`` ``(*B, E, E)`` and
    optional ``mask`` ``(*B, N)`` (``True`` where an observation is present); module docstring."""
    H = torch.as_tensor(H, dtype=mixture.dtype, device=mixture.device)
    R = torch.as_tensor(R, dtype=mixture.dtype, device=mixture.device)
    if H.dim() < 2 or H.shape[-1] != mixture.dim:
        raise ValueError(f"Expected H of shape (*B, E, D={mixture.dim}), but got a {_describe(H)}.")
    e = H.shape[-2]
    if R.dim() < 2 or R.shape[-2:] != (e, e):
        raise ValueError(f"Expected R of shape (*B, E, E)=({e}, {e}), but got a {_describe(R)}.")
    z = torch.as_tensor(z, dtype=mixture.dtype, device=mixture.device)
    if z.dim() < 2 or z.shape[-1] != e:
        raise ValueError(f"Expected z of shape (*B, N, E={e}) (use z.unsqueeze(-2) for one observation), "
                         f"but got a {_describe(z)}.")
    if mask is None:
        mask = torch.ones(z.shape[:-1], dtype=torch.bool, device=mixture.device)
    elif not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"Expected mask to be a boolean tensor (True where an observation is present), but got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}.")
    elif mask.shape != z.shape[:-1]:
        raise ValueError(f"Expected mask of shape {tuple(z.shape[:-1])} (z without its last dim), but got "
                         f"{tuple(mask.shape)}.")
    if not bool(torch.isfinite(z[mask]).all()):  # padding under the mask may hold anything, as in posterior
        raise ValueError("Expected finite observations z where the mask is True, but found NaN or inf.")
    z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
    cholesky(R, "R")
    m = mask.to(mixture.dtype)
    n = m.sum(-1)  # (*B)
    n_safe = n.clamp_min(1.0)
    zbar = (z * m.unsqueeze(-1)).sum(-2) / n_safe.unsqueeze(-1)  # (*B, E)
    Rn = R / n_safe[..., None, None]
    Hk = H.unsqueeze(-3)
    Sigma = mixture.component_covariance_matrix
    SHt = Sigma @ Hk.transpose(-1, -2)  # (*B, K, D, E)
    S = symmetrize(Hk @ SHt + Rn.unsqueeze(-3))
    S_tril = cholesky(S, "the innovation covariance H Sigma H^T + R/n")
    G = torch.cholesky_solve(SHt.transpose(-1, -2), S_tril).transpose(-1, -2)  # (*B, K, D, E)
    pred = (Hk @ mixture.loc.unsqueeze(-1)).squeeze(-1)  # (*B, K, E)
    innov = zbar.unsqueeze(-2) - pred
    loc = mixture.loc + (G @ innov.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(mixture.dim, dtype=mixture.dtype, device=mixture.device)
    IGH = eye - G @ Hk
    cov = IGH @ Sigma @ IGH.transpose(-1, -2) + G @ Rn.unsqueeze(-3) @ G.transpose(-1, -2)
    log_w = mixture.log_weights + gaussian_log_prob(zbar.unsqueeze(-2), pred, S_tril)
    log_w = torch.log_softmax(log_w, dim=-1)
    tril = cholesky(symmetrize(cov), "the posterior covariance")
    present = (n > 0)
    log_w = torch.where(present.unsqueeze(-1), log_w, mixture.log_weights.expand_as(log_w))
    loc = torch.where(present[..., None, None], loc, mixture.loc.expand_as(loc))
    tril = torch.where(present[..., None, None, None], tril, mixture.scale_tril.expand_as(tril))
    return mixture._new(log_w, loc, tril)

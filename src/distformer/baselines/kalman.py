r"""Gaussian filters, batched in torch: Kalman (linear), extended (EKF) and unscented (UKF).

State-space model: :math:`x_t = f(x_{t-1}) + w_t`, :math:`w_t\sim\mathcal N(0,Q)`; at each step
:math:`N_t\ge 0` observations :math:`z_{t,i} = h(x_t) + v_{t,i}`, :math:`v\sim\mathcal N(0,R)` i.i.d. These share
:math:`h`, so they enter through their mean :math:`\bar z_t` with noise :math:`R/N_t` (exact for linear :math:`h`).

Predict / update for a Gaussian belief :math:`(m, P)`:

* KF and EKF: :math:`m^- = f(m)`, :math:`P^- = F P F^\top + Q` with :math:`F=\partial f/\partial x` at :math:`m`;
  :math:`S = H P^- H^\top + R/N`, :math:`G = P^-H^\top S^{-1}`, :math:`m = m^- + G(\bar z - h(m^-))`,
  :math:`P = P^- - G S G^\top`, with :math:`H=\partial h/\partial x` at :math:`m^-`.
* UKF: the same with the moments of :math:`f` and :math:`h` taken at the unscented sigma points
  (:func:`distformer.filtering.unscented_points`), cross-covariance :math:`C = \sum_j w_j(\chi_j-m^-)(h(\chi_j)-\hat z)^\top`
  and :math:`G = C S^{-1}`.

A step with no observation (:math:`N_t = 0`) only predicts. All filters start from a Gaussian; a mixture prior is
moment-matched first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..distributions.linalg import cholesky, symmetrize
from ..filtering import unscented_points


@dataclass(frozen=True)
class GaussianStateSpace:
    """``x_t = f(x_{t-1}) + N(0, Q)``, ``z = h(x_t) + N(0, R)``; ``f``, ``h`` act row-wise on ``(..., D)``.

    ``R`` may be a callable ``x (*B, D) -> (*B, E, E)`` for state-dependent noise; the filters evaluate it at the
    predicted mean (the usual linearisation, e.g. a sensor whose noise grows with range)."""

    f: Callable[[Tensor], Tensor]
    Q: Tensor
    h: Callable[[Tensor], Tensor]
    R: Tensor | Callable[[Tensor], Tensor]

    def noise(self, mean: Tensor) -> Tensor:
        """Observation-noise covariance at the belief mean ``(*B, D)``: ``(*B, E, E)`` or ``(E, E)``."""
        return self.R(mean) if callable(self.R) else self.R

    @classmethod
    def linear(cls, A: Tensor, Q: Tensor, H: Tensor, R: Tensor, b: Tensor | None = None) -> "GaussianStateSpace":
        bias = torch.zeros(A.shape[-1], dtype=A.dtype) if b is None else b
        return cls(lambda x: x @ A.transpose(-1, -2) + bias, Q, lambda x: x @ H.transpose(-1, -2), R)


def _observation_mean(z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the present observations ``(*B, E)`` and their count ``(*B)``."""
    m = mask.to(z.dtype)
    n = m.sum(-1)
    return (z * m.unsqueeze(-1)).sum(-2) / n.clamp_min(1.0).unsqueeze(-1), n


def _gain_update(mean, cov, z_hat, S, C, zbar, noise, n):
    """Kalman-gain update given predicted observation ``z_hat``, innovation cov ``S`` and cross-cov ``C``."""
    S = symmetrize(S + noise)
    G = torch.cholesky_solve(C.transpose(-1, -2), cholesky(S, "the innovation covariance")).transpose(-1, -2)
    new_mean = mean + (G @ (zbar - z_hat).unsqueeze(-1)).squeeze(-1)
    new_cov = symmetrize(cov - G @ S @ G.transpose(-1, -2))
    present = (n > 0)
    return (torch.where(present[..., None], new_mean, mean), torch.where(present[..., None, None], new_cov, cov))


def _jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Row-wise Jacobian of ``fn`` at ``x`` ``(*B, D)``: ``(*B, E, D)``."""
    flat = x.reshape(-1, x.shape[-1])
    jac = torch.func.vmap(torch.func.jacrev(lambda v: fn(v.unsqueeze(0)).squeeze(0)))(flat)
    return jac.reshape(*x.shape[:-1], *jac.shape[-2:])


class ExtendedKalmanFilter:
    """EKF (and, for affine ``f`` and ``h``, the exact Kalman filter) on a :class:`GaussianStateSpace`."""

    def __init__(self, model: GaussianStateSpace):
        self.model = model

    def predict(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        F = _jacobian(self.model.f, mean)
        return self.model.f(mean), symmetrize(F @ cov @ F.transpose(-1, -2) + self.model.Q)

    def update(self, mean: Tensor, cov: Tensor, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        zbar, n = _observation_mean(z, mask)
        H = _jacobian(self.model.h, mean)
        noise = self.model.noise(mean) / n.clamp_min(1.0)[..., None, None]
        return _gain_update(mean, cov, self.model.h(mean), H @ cov @ H.transpose(-1, -2), cov @ H.transpose(-1, -2),
                            zbar, noise, n)

    def run(self, prior: GaussianMixture, z: Tensor, mask: Tensor) -> GaussianMixture:
        """Filtered Gaussians (a one-component mixture, batch ``(T, *B)``) for data ``z`` ``(T, *B, N, E)``."""
        return _run(self, prior, z, mask)


class KalmanFilter(ExtendedKalmanFilter):
    """The Kalman filter: the EKF of a linear model, whose Jacobians are its matrices."""


class UnscentedKalmanFilter(ExtendedKalmanFilter):
    """UKF with sigma-point spread ``kappa`` (default ``3 - D``, clamped at 0)."""

    def __init__(self, model: GaussianStateSpace, kappa: float | None = None):
        super().__init__(model)
        self.kappa = kappa

    def _points(self, mean: Tensor, cov: Tensor):
        D = mean.shape[-1]
        kappa = max(3.0 - D, 0.0) if self.kappa is None else self.kappa
        return unscented_points(mean, cholesky(symmetrize(cov), "the UKF covariance"), kappa)

    def predict(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        points, w = self._points(mean, cov)
        images = self.model.f(points)
        m = torch.einsum("j,j...d->...d", w, images)
        d = images - m
        return m, symmetrize(torch.einsum("j,j...d,j...e->...de", w, d, d) + self.model.Q)

    def update(self, mean: Tensor, cov: Tensor, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        zbar, n = _observation_mean(z, mask)
        points, w = self._points(mean, cov)
        images = self.model.h(points)
        z_hat = torch.einsum("j,j...e->...e", w, images)
        dz, dx = images - z_hat, points - mean
        S = torch.einsum("j,j...e,j...f->...ef", w, dz, dz)
        C = torch.einsum("j,j...d,j...e->...de", w, dx, dz)
        noise = self.model.noise(mean) / n.clamp_min(1.0)[..., None, None]
        return _gain_update(mean, cov, z_hat, S, C, zbar, noise, n)


def _run(filt, prior: GaussianMixture, z: Tensor, mask: Tensor) -> GaussianMixture:
    mean, cov = prior.mean, prior.covariance_matrix  # a mixture prior is moment-matched
    means, covs = [], []
    for t in range(z.shape[0]):
        if t > 0:
            mean, cov = filt.predict(mean, cov)
        mean, cov = filt.update(mean, cov, z[t].to(mean.dtype), mask[t])
        means.append(mean)
        covs.append(cov)
    return gaussian_beliefs(means, covs)


def gaussian_beliefs(means: list[Tensor], covs: list[Tensor], what: str = "a filtered covariance") -> GaussianMixture:
    """Per-step Gaussian beliefs (``T`` means ``(*B, D)`` and covariances ``(*B, D, D)``) as one-component mixtures
    with batch ``(T, *B)``."""
    mean, cov = torch.stack(means), torch.stack(covs)
    zero = torch.zeros(*mean.shape[:-1], 1, dtype=mean.dtype)
    return GaussianMixture(logits=zero, loc=mean.unsqueeze(-2), scale_tril=cholesky(cov, what).unsqueeze(-3),
                           validate_args=False)

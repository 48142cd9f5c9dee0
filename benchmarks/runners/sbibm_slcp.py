r"""sbibm's ``slcp`` task ("simple likelihood, complex posterior"), written as a user of this library would write it.

The task (sbibm 1.1.0): :math:`\theta\sim\mathcal U(-3,3)^5`, and four points :math:`x_j\sim\mathcal N(m, S)`,
:math:`j=1..4`, i.i.d. given :math:`\theta`, with

.. math::
    m = (\theta_1, \theta_2),\quad s_1 = \theta_3^2,\ s_2 = \theta_4^2,\ \rho = \tanh\theta_5,\quad
    S = \begin{pmatrix} s_1^2 + \epsilon & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 + \epsilon\end{pmatrix},
    \ \epsilon = 10^{-6}.

sbibm's observation is the four points flattened, :math:`(x_{1,1}, x_{1,2}, x_{2,1}, \dots)`; the model reads them
as a set of four 2-D observations, which is what they are. The likelihood is the product of the four Gaussian
densities. The posterior has up to four modes (the data fix only :math:`\theta_3^2` and :math:`\theta_4^2`).

**Prior on the model's space.** As for the other box tasks (``sbibm_tasks.py``), the uniform prior is the product of
per-axis Gaussian fits to the logistic density on the logit-warped axes, here ``COMPONENTS``: one Gaussian on the
axes of the two means, which the four points pin down, and two on the scales, whose sign the data cannot see, and on
the correlation, which four points leave broad (8 components; two on every axis, 32 components, made a training
step about three times slower in a short timing, batch 256 on 2 threads). The fit's KL to the uniform is about
0.03 nats in all, which the bench's ``our reference`` row prices against sbibm's samples.

**Reference under a changed prior.** A grid does not reach five dimensions. The reference is importance sampling
with the task's likelihood (``distformer.refine``): the proposal is a Gaussian mixture fitted by EM to sbibm's
published posterior samples for the same observation (on the warped space, each covariance widened by
``WIDEN**2``), a tenth of the draws come from the prior, and ``REFERENCE_DRAWS`` weighted draws are resampled to the
count asked for. The proposal does not come from the model, so the reference does not lean on it; the
effective sample size is reported with the results (``sbibm_tasks.fitted_reference``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import distformer as dfm

DIM = 5
POINTS = 4
LOW, HIGH = -3.0, 3.0
EPS = 1e-6
COMPONENTS = (1, 1, 2, 2, 2)  # per axis of the box prior's fit: two where the posterior is broad or two-signed
FIT_COMPONENTS = 16  # of the reference's proposal
WIDEN = 1.5
REFERENCE_DRAWS = 200_000


def _moments(theta: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(..., 2)`` and covariance ``(..., 2, 2)`` of one point given ``theta`` ``(..., 5)``."""
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
    off = rho * s1 * s2
    cov = torch.stack([torch.stack([s1**2 + EPS, off], -1), torch.stack([off, s2**2 + EPS], -1)], -2)
    return theta[..., :2], cov


def simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """sbibm's simulator: ``theta`` ``(n, 5)`` -> four 2-D points each, ``(n, 4, 2)``."""
    mean, cov = _moments(theta.double())
    chol = torch.linalg.cholesky(cov)  # (n, 2, 2)
    noise = torch.randn(theta.shape[0], POINTS, 2, generator=generator, dtype=torch.float64)
    return (mean.unsqueeze(1) + (chol.unsqueeze(1) @ noise.unsqueeze(-1)).squeeze(-1)).to(theta.dtype)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """``log p(x_j | theta)`` ``(..., N)`` for ``theta`` ``(..., 1, 5)`` and points ``x`` ``(..., N, 2)``."""
    mean, cov = _moments(theta.to(torch.float64))
    diff = x.to(torch.float64) - mean
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    quad = (cov[..., 1, 1] * diff[..., 0] ** 2 - 2 * cov[..., 0, 1] * diff[..., 0] * diff[..., 1]
            + cov[..., 0, 0] * diff[..., 1] ** 2) / det
    return -0.5 * quad - 0.5 * det.log() - math.log(2 * math.pi)


def problem():
    from .sbibm_tasks import box_prior, meta_prior

    return dfm.problems.from_simulator(simulate, support=[(LOW, HIGH)] * DIM,
                                       meta_prior=meta_prior(box_prior(DIM, COMPONENTS)), max_observations=POINTS,
                                       observation_dim=2, log_likelihood=log_likelihood, name="sbibm-slcp")

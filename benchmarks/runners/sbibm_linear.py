r"""sbibm's ``gaussian_linear`` task, answered by the shipped ``linear-gaussian-10d`` model with no training.

The task (sbibm 1.1.0): :math:`\theta\sim\mathcal N(0, v I_{10})`, one observation
:math:`x\sim\mathcal N(\theta, v I_{10})`, :math:`v = 0.1`. The shipped model was trained for unit noise,
:math:`z = y + \mathcal N(0, I)`, so it works in the coordinates :math:`y = \theta/\sqrt v`: the prior is pushed there
with ``affine``, the data are :math:`x/\sqrt v`, and the posterior is mapped back with ``affine`` (the recipe of
``examples/rescaled_noise.py``). Under any Gaussian-mixture prior the posterior is exact in closed form,
``prior.condition_linear_gaussian(I, v I, x)``: that is the reference under the changed priors, and a check of the
task's definition against sbibm's published samples at the task's prior.

Changed priors: ``shifted`` moves the prior mean by ``SHIFT`` prior standard deviations along every axis;
``narrowed`` multiplies its standard deviation by ``NARROW``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from distformer.distributions.gmm import GaussianMixture

VARIANCE = 0.1
DIM = 10
SHIFT = 0.5  # prior standard deviations
NARROW = 0.5


class MixturePrior(torch.distributions.Distribution):
    """A ``GaussianMixture`` as the torch distribution sbi takes as a prior (``sample``, ``log_prob``, and the
    mixture's mean and standard deviation, which sbi uses to standardise)."""

    arg_constraints: dict = {}
    support = torch.distributions.constraints.real_vector

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        super().__init__(event_shape=torch.Size([mixture.dim]), validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.mixture.mean

    @property
    def stddev(self) -> Tensor:
        return self.mixture.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.mixture.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.mixture.log_prob(value)


@dataclass(frozen=True)
class LinearGaussianTask:
    """``gaussian_linear`` (module docstring). ``pretrained`` names the shipped model that answers it."""

    name: str = "gaussian_linear"
    pretrained: str = "linear-gaussian-10d"
    reference_name: str = "closed form"

    @property
    def prior(self) -> GaussianMixture:
        return GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, DIM, dtype=torch.float64),
                               covariance_matrix=VARIANCE * torch.eye(DIM, dtype=torch.float64).unsqueeze(0))

    def changed(self, kind: str) -> GaussianMixture:
        prior = self.prior
        if kind == "shifted":
            return GaussianMixture(prior.weights, prior.loc + SHIFT * math.sqrt(VARIANCE),
                                   covariance_matrix=prior.component_covariance_matrix)
        if kind == "narrowed":
            return GaussianMixture(prior.weights, prior.loc,
                                   covariance_matrix=NARROW**2 * prior.component_covariance_matrix)
        raise ValueError(f"Expected a change among ['narrowed', 'shifted'], but got {kind!r}.")

    def sbi_prior(self, prior: GaussianMixture | None = None) -> MixturePrior:
        return MixturePrior((self.prior if prior is None else prior).to(torch.float32))

    def data(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """sbibm's simulator: ``theta`` ``(n, 10)`` -> ``x`` ``(n, 10)``."""
        return theta + math.sqrt(VARIANCE) * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    def draws(self, model, prior: GaussianMixture, x: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` draws ``(S, 10)`` of the model's posterior for one observation ``x`` ``(10,)``."""
        s = math.sqrt(VARIANCE)
        prior_y = prior.to(torch.float32).affine(torch.eye(DIM) / s).expand((1,))
        with torch.inference_mode():
            post_y = model.posterior(prior_y, (x.float() / s).view(1, 1, DIM))
        return post_y.affine(s * torch.eye(DIM)).sample((count,), generator=generator)[:, 0].double()

    def reference(self, prior: GaussianMixture, x: Tensor, count: int, generator: torch.Generator,
                  known: Tensor | None = None) -> tuple[Tensor, None]:
        """``(draws (S, 10), None)``: ``count`` draws of the exact posterior under ``prior`` for one observation
        ``x`` ``(10,)`` (closed form: ``known`` is not needed, and there is no ESS)."""
        eye = torch.eye(DIM, dtype=torch.float64)
        exact = prior.to(torch.float64).condition_linear_gaussian(eye, VARIANCE * eye, x.double().view(1, DIM))
        return exact.sample((count,), generator=generator).double(), None

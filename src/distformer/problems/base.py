r"""The problem interface: a meta-prior over priors, a simulator, and (where one exists) the exact posterior.

Training draws the joint :math:`p(\phi)\,p(x\mid\phi)\,p(z\mid x)`: a prior :math:`\phi` from the meta-prior, the
true parameter :math:`x` from that prior, and observations :math:`z` from the simulator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..observations import Observations


@dataclass(frozen=True)
class Batch:
    """One simulated batch: prior (batch ``(n,)``; a ``GaussianMixture``, or parameters ``(n, P)`` for a
    parametric-prior problem), true parameters ``(n, D)`` on the original space, observations (batch ``(n,)``)."""

    prior: GaussianMixture | Tensor
    theta: Tensor
    observations: Observations

    @staticmethod
    def concat(batches: "list[Batch]") -> "Batch":
        """One batch from several with batch shapes ``(n_i,)``, in order (the shards of a training step)."""
        if len(batches) == 1:
            return batches[0]
        if torch.is_tensor(batches[0].prior):  # parametric priors: parameters (n_i, P)
            prior = torch.cat([b.prior for b in batches])
        else:
            prior = GaussianMixture(logits=torch.cat([b.prior.log_weights for b in batches]),
                                    loc=torch.cat([b.prior.loc for b in batches]),
                                    scale_tril=torch.cat([b.prior.scale_tril for b in batches]), validate_args=False)
        names = list(batches[0].observations.values)
        observations = Observations({s: torch.cat([b.observations.values[s] for b in batches]) for s in names},
                                    {s: torch.cat([b.observations.masks[s] for b in batches]) for s in names})
        return Batch(prior, torch.cat([b.theta for b in batches]), observations)


class Problem(ABC):
    """A Bayesian inference problem the model is trained on.

    Subclasses set ``name``, ``dim`` (latent dimension) and ``sources`` (observation source -> dimension), and
    implement the meta-prior and the simulator. A problem whose latents live on a constrained space sets ``warp``
    (one of ``"identity"``, ``"log"``, ``"logit"`` per coordinate; the model works on the warped space). A problem
    whose priors are parametric (not GMMs) sets ``prior_parameters`` (name -> warp of that parameter); its
    ``sample_meta_prior`` returns parameters ``(n, P)`` and its ``sample_parameters`` takes them.
    """

    name: str
    dim: int
    sources: Mapping[str, int]
    num_components: int
    warp: tuple[str, ...] = ()
    prior_parameters: Mapping[str, str] = {}
    source_transforms: Mapping[str, str] = {}
    relative_sources: Mapping[str, str] = {}  # source -> anchor source (ModelConfig.relative_sources)
    location_source: str = ""  # a source that moves with the latent, z = x + noise (ModelConfig.anchor)
    independent_observations: bool = False  # one source, conditionally independent given the latent
    scale_source: str = ""  # a source scaling as sqrt of the (log-warped, 1-D) latent (ModelConfig.scale_source)
    scale_parameter: str = ""  # a prior parameter that scales the latent (ModelConfig.scale_parameter)

    @abstractmethod
    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture | Tensor:
        """``n`` priors drawn from the meta-prior: a ``GaussianMixture`` with batch shape ``(n,)`` (parameters
        ``(n, P)`` for a parametric-prior problem)."""

    def sample_parameters(self, prior: GaussianMixture, generator: torch.Generator | None = None) -> Tensor:
        """One true parameter per prior: ``prior.batch_shape + (D,)``."""
        return prior.sample(generator=generator)

    @abstractmethod
    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        """Observations for parameters ``theta`` ``(n, D)`` (batch ``(n,)``)."""

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        """``log p(observations | theta)`` for parameters ``theta`` ``(*S, *B, D)`` and data with batch ``B``;
        returns ``(*S, *B)``. Problems whose likelihood can be evaluated implement it (used by ``refine``)."""
        raise NotImplementedError(f"Problem {self.name!r} has no likelihood to evaluate.")

    def warped_target(self, prior, observations):
        """``(prior density, log-likelihood)`` on the model's space (the warped latent) for a parametric prior
        ``(*B, P)``: an object with ``log_prob`` of points ``(*S, *B, D)`` (with the warp's Jacobian) and
        ``sample(sample_shape, generator)``, and a callable ``(theta (*S, *B, D), observations) -> (*S, *B)``.
        Used by ``refine`` and ``check="importance"``; problems with parametric priors implement it."""
        raise NotImplementedError(f"Problem {self.name!r} gives no prior density on the model's space.")

    def exact_posterior(self, prior: GaussianMixture, observations) -> GaussianMixture:
        """The exact posterior, where one exists."""
        raise NotImplementedError(f"Problem {self.name!r} has no exact posterior.")

    @property
    def has_exact_posterior(self) -> bool:
        return type(self).exact_posterior is not Problem.exact_posterior

    def sample_batch(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Draw ``n`` joint samples (prior, theta, observations)."""
        prior = self.sample_meta_prior(n, generator=generator)
        theta = self.sample_parameters(prior, generator=generator)
        return Batch(prior, theta, self.simulate(theta, generator=generator))

    def as_prior(self, prior):
        """A simulated prior as ``model.posterior`` takes it: a mixture on the warped space wrapped with the
        problem's warp (a ``WarpedGaussianMixture``), other priors as they are."""
        if isinstance(prior, GaussianMixture) and self.warp and any(k != "identity" for k in self.warp):
            from ..distributions.transforms import WarpedGaussianMixture

            return WarpedGaussianMixture(prior, self.warp)
        return prior

    def options(self) -> dict[str, Any]:
        """Constructor options, so that ``problems.get(name, **options)`` rebuilds this problem."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the meta-prior and simulator for model cards."""
        return {"name": self.name, "options": self.options()}


def replicated_gaussian(mean: Tensor, covariance: Tensor, num_components: int, n: int) -> GaussianMixture:
    """``N(mean, covariance)`` (``(D,)``, ``(D, D)``) written as ``num_components`` equal components with weights
    proportional to ``1..K``, batch ``(n,)``: the paper's start of a filter, so the belief can split later."""
    K, D = num_components, mean.shape[-1]
    weights = rank_weights(K, mean.dtype).expand(n, K)
    return GaussianMixture(weights, mean.expand(n, K, D), covariance_matrix=covariance.expand(n, K, D, D))


def rank_weights(num_components: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Weights ``(K,)`` proportional to ``1..K``: the paper's split of one Gaussian into a filter's ``K`` components."""
    K = num_components
    return torch.arange(1, K + 1, dtype=dtype) / (K * (K + 1) / 2)


class WarpedPrior:
    """A parametric prior on the model's space for ``warped_target``: ``log_prob(u)`` of points ``(*S, *B, D)`` and
    ``sample(sample_shape, generator)``, from the two functions given."""

    def __init__(self, log_prob, sample) -> None:
        self._log_prob, self._sample = log_prob, sample

    def log_prob(self, u: Tensor) -> Tensor:
        return self._log_prob(u)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        return self._sample(torch.Size(sample_shape), generator)

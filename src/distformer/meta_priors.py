r"""Meta-priors: distributions over the Gaussian-mixture priors a model is trained to accept.

A model adapts at run time to any prior near those it was trained on, so the meta-prior says which priors a user
will write. Each meta-prior here draws ``n`` priors on the model's (warped) space as one
:class:`~distformer.GaussianMixture` with batch ``(n,)`` and ``num_components`` components; a prior with fewer
components carries the rest at weight exactly 0 (the model keeps them at 0).

* :func:`random_mixtures` — :math:`K \sim \mathcal U\{k_0..k_1\}` components with weights
  :math:`\mathrm{Dirichlet}(1_K)`, means :math:`\mu_k \sim \mathcal U[m_0, m_1]^D`, and covariances
  :math:`U\operatorname{diag}(s^2)U^\top` with :math:`U` a random rotation and :math:`\log s \sim
  \mathcal U[\log s_0, \log s_1]` per axis.
* :func:`around` — priors near a nominal prior of the user's, for prior-sensitivity analysis and sequential
  updating: each component's mean moves by :math:`L_k\varepsilon`, :math:`\varepsilon\sim\mathcal N(0, \delta^2 I)`
  (``shift`` :math:`\delta`, in the component's own standard deviations), its covariance scales by :math:`c^2`
  with :math:`\log c \sim \mathcal U[\log c_0, \log c_1]`, and its log weight moves by
  :math:`\mathcal N(0, \omega^2)`.
* :func:`mixture_of` — each prior from one of several meta-priors, chosen with given probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .distributions.gmm import GaussianMixture
from .problems.linear_gaussian import random_rotation


class MetaPrior:
    """A distribution over mixture priors: ``sample(n, generator)`` gives a :class:`GaussianMixture` of batch
    ``(n,)`` with ``num_components`` components on ``dim`` coordinates; ``describe()`` says it in words for a model
    card."""

    dim: int
    num_components: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _padded(weights: Tensor, count: Tensor) -> Tensor:
    """Weights ``(n, K)`` with components ``>= count`` (``(n,)``) set to exactly 0 and the rest renormalised."""
    keep = torch.arange(weights.shape[-1]) < count.unsqueeze(-1)
    weights = torch.where(keep, weights, torch.zeros_like(weights))
    return weights / weights.sum(-1, keepdim=True)


def _pair(value, name: str, positive: bool = False) -> tuple[float, float]:
    try:
        low, high = (float(value), float(value)) if isinstance(value, (int, float)) else (float(value[0]),
                                                                                          float(value[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"Expected {name} to be a number or a (low, high) pair, but got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high and (not positive or low > 0)):
        raise ValueError(f"Expected {name} = (low, high) finite with low <= high{' and low > 0' if positive else ''}, "
                         f"but got {value!r}.")
    return low, high


@dataclass(frozen=True)
class RandomMixtures(MetaPrior):
    """See :func:`random_mixtures`."""

    dim: int
    components: tuple[int, int]
    mean: tuple[float, float]
    scale: tuple[float, float]

    @property
    def num_components(self) -> int:
        return self.components[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        K, D = self.components[1], self.dim
        count = torch.randint(self.components[0], K + 1, (n,), generator=generator)
        e = -torch.log(torch.rand(n, K, generator=generator).clamp_min(1e-30))
        weights = _padded(e / e.sum(-1, keepdim=True), count)
        loc = self.mean[0] + (self.mean[1] - self.mean[0]) * torch.rand(n, K, D, generator=generator)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        std = torch.exp(lo + (hi - lo) * torch.rand(n, K, D, generator=generator))
        U = random_rotation(n * K, D, generator).reshape(n, K, D, D)
        cov = U @ torch.diag_embed(std**2) @ U.transpose(-1, -2)
        return GaussianMixture(weights, loc, covariance_matrix=0.5 * (cov + cov.transpose(-1, -2)))

    def describe(self) -> str:
        return (f"K ~ U{{{self.components[0]}..{self.components[1]}}} components, weights Dirichlet(1), means "
                f"U[{self.mean[0]:g}, {self.mean[1]:g}] per axis, covariances U diag(s^2) U^T with U a random "
                f"rotation and log s ~ U(log {self.scale[0]:g}, log {self.scale[1]:g})")


def random_mixtures(dim: int, components: int | Sequence[int] = (1, 4), mean: float | Sequence[float] = (-3.0, 3.0),
                    scale: float | Sequence[float] = (0.1, 3.0)) -> RandomMixtures:
    """Random mixtures on ``dim`` coordinates of the model's space (module docstring): ``components`` a count or
    a ``(low, high)`` range, ``mean`` the range of every mean coordinate, ``scale`` that of the standard deviations
    along each component's axes."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"Expected dim to be a whole number >= 1, but got {dim!r}.")
    k = _pair(components, "components")
    if k[0] < 1 or k[0] != int(k[0]) or k[1] != int(k[1]):
        raise ValueError(f"Expected components to be whole numbers >= 1, but got {components!r}.")
    return RandomMixtures(dim, (int(k[0]), int(k[1])), _pair(mean, "mean"), _pair(scale, "scale", positive=True))


@dataclass(frozen=True)
class Around(MetaPrior):
    """See :func:`around`."""

    nominal: GaussianMixture
    shift: float
    scale: tuple[float, float]
    weight_noise: float

    @property
    def dim(self) -> int:
        return self.nominal.dim

    @property
    def num_components(self) -> int:
        return self.nominal.num_components

    def sample(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        nominal = self.nominal.to(torch.float32)
        K, D = self.num_components, self.dim
        tril = nominal.scale_tril.expand(n, K, D, D)
        eps = self.shift * torch.randn(n, K, D, 1, generator=generator)
        loc = nominal.loc + (tril @ eps).squeeze(-1)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        c = torch.exp(lo + (hi - lo) * torch.rand(n, K, 1, 1, generator=generator))
        logits = nominal.log_weights + self.weight_noise * torch.randn(n, K, generator=generator)
        return GaussianMixture(logits=logits, loc=loc, scale_tril=c * tril)

    def describe(self) -> str:
        return (f"around a nominal {self.num_components}-component prior: means moved by N(0, {self.shift:g}^2) "
                f"component standard deviations, covariances scaled by c^2 with log c ~ U(log {self.scale[0]:g}, "
                f"log {self.scale[1]:g}), log weights moved by N(0, {self.weight_noise:g}^2)")


def around(nominal: GaussianMixture, shift: float = 1.0, scale: float | Sequence[float] = (0.5, 2.0),
           weight_noise: float = 0.5) -> Around:
    """Priors near ``nominal`` (a :class:`GaussianMixture` without batch dimensions, on the model's space, or a
    ``WarpedGaussianMixture`` whose base is that): module docstring. Zero-weight components of the nominal prior
    stay at zero."""
    from .distributions.transforms import WarpedGaussianMixture

    if isinstance(nominal, WarpedGaussianMixture):  # priors on a warped parameter are mixtures on its working scale
        nominal = nominal.base
    if not isinstance(nominal, GaussianMixture) or nominal.batch_shape != torch.Size():
        raise ValueError(f"Expected the nominal prior to be one GaussianMixture (batch shape ()), but got "
                         f"{type(nominal).__name__} {tuple(getattr(nominal, 'batch_shape', ()))}.")
    if not (shift >= 0 and weight_noise >= 0):
        raise ValueError(f"Expected shift >= 0 and weight_noise >= 0, but got {shift!r} and {weight_noise!r}.")
    return Around(nominal, float(shift), _pair(scale, "scale", positive=True), float(weight_noise))


@dataclass(frozen=True)
class MixtureOf(MetaPrior):
    """See :func:`mixture_of`."""

    parts: tuple[MetaPrior, ...]
    probabilities: tuple[float, ...]

    @property
    def dim(self) -> int:
        return self.parts[0].dim

    @property
    def num_components(self) -> int:
        return max(p.num_components for p in self.parts)

    def sample(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        which = torch.multinomial(torch.tensor(self.probabilities), n, replacement=True, generator=generator)
        K, D = self.num_components, self.dim
        logits, loc = torch.full((n, K), -torch.inf), torch.zeros(n, K, D)
        tril = torch.eye(D).expand(n, K, D, D).clone()
        for i, part in enumerate(self.parts):
            rows = (which == i).nonzero().squeeze(-1)
            if len(rows):
                drawn, k = part.sample(len(rows), generator), part.num_components
                logits[rows, :k], loc[rows, :k], tril[rows, :k] = drawn.log_weights, drawn.loc, drawn.scale_tril
        return GaussianMixture(logits=logits, loc=loc, scale_tril=tril)

    def describe(self) -> str:
        return "; or ".join(f"with probability {p:g}: {part.describe()}" for p, part in zip(self.probabilities,
                                                                                           self.parts))


def mixture_of(parts: Sequence[MetaPrior], probabilities: Sequence[float] | None = None) -> MixtureOf:
    """Each prior from one of ``parts`` (same ``dim``), chosen with ``probabilities`` (default equal); priors
    with fewer components than the largest part carry the rest at weight 0."""
    parts = tuple(parts)
    if not parts or any(not isinstance(p, MetaPrior) for p in parts) or len({p.dim for p in parts}) != 1:
        raise ValueError(f"Expected meta-priors of one dimension, but got {[type(p).__name__ for p in parts]}.")
    p = torch.tensor(probabilities if probabilities is not None else [1.0] * len(parts), dtype=torch.float64)
    if p.shape != (len(parts),) or bool((p < 0).any()) or not float(p.sum()) > 0:
        raise ValueError(f"Expected one non-negative probability per part, but got {probabilities!r}.")
    return MixtureOf(parts, tuple((p / p.sum()).tolist()))


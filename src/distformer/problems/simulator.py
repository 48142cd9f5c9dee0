r"""A problem from plain functions: a simulator, an optional likelihood, the support of each latent coordinate
and a meta-prior (``distformer.meta_priors``).

The user writes the model on the original space :math:`\theta`; the library trains on the warped space
:math:`u = f(\theta)` that the support gives (``"real"``: identity, ``"positive"``: log, ``"unit"``: logit,
``(a, b)``: logit of :math:`(\theta-a)/(b-a)`), where the meta-prior's mixtures live. Training draws

.. math::
    \phi \sim \text{meta-prior},\qquad u \sim q_\phi,\qquad \theta = f^{-1}(u),\qquad
    z_{1..N} = \text{simulate}(\theta),

and pads each data set of :math:`N \le` ``max_observations`` observations with a mask. A per-observation
``log_likelihood`` :math:`\log p(z_i\mid\theta)` (observations conditionally independent given :math:`\theta`)
gives :math:`\log p(z\mid\theta) = \sum_i m_i \log p(z_i\mid\theta)`, which ``refine``, ``check="importance"``
and :func:`~distformer.evaluate` use.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..distributions.transforms import Warp
from ..observations import Observations, as_observations
from .base import Problem

SUPPORTS = {"real": "identity", "positive": "log", "unit": "logit"}


def _warp_kind(support, index: int) -> str:
    if isinstance(support, str) and support in SUPPORTS:
        return SUPPORTS[support]
    if isinstance(support, (tuple, list)) and len(support) == 2:
        kind = f"logit[{float(support[0])!r},{float(support[1])!r}]"
        Warp([kind])  # checks a < b, finite
        return kind
    raise ValueError(f"Expected the support of coordinate {index} to be one of {sorted(SUPPORTS)} or an interval "
                     f"(a, b), but got {support!r}.")


def _name_of(fn: Callable | None) -> str | None:
    return None if fn is None else f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class SimulatorProblem(Problem):
    """A problem from plain functions; build it with :func:`from_simulator` (its arguments are documented there)."""

    def __init__(self, simulate: Callable, support: Sequence, meta_prior, max_observations: int,
                 observation_dim: int = 1, log_likelihood: Callable | None = None, name: str = "simulator",
                 source: str = "z") -> None:
        if not callable(simulate) or (log_likelihood is not None and not callable(log_likelihood)):
            raise ValueError("Expected simulate (and log_likelihood, if given) to be functions, but got "
                             f"{type(simulate).__name__} and {type(log_likelihood).__name__}.")
        support = [support] if isinstance(support, str) else list(support)
        if not support:
            raise ValueError("Expected one support per latent coordinate, but got none.")
        if isinstance(max_observations, bool) or not isinstance(max_observations, int) or max_observations < 1:
            raise ValueError(f"Expected max_observations to be a whole number >= 1, but got {max_observations!r}.")
        if isinstance(observation_dim, bool) or not isinstance(observation_dim, int) or observation_dim < 1:
            raise ValueError(f"Expected observation_dim to be a whole number >= 1, but got {observation_dim!r}.")
        if getattr(meta_prior, "dim", None) != len(support) or not hasattr(meta_prior, "sample"):
            raise ValueError(f"Expected a meta-prior (distformer.meta_priors) over {len(support)} coordinates, but "
                             f"got {type(meta_prior).__name__} with dim {getattr(meta_prior, 'dim', None)}.")
        self.name, self.dim, self.sources = name, len(support), {source: observation_dim}
        self.source = source
        self.support = [s if isinstance(s, str) else (float(s[0]), float(s[1])) for s in support]
        self.warp = tuple(_warp_kind(s, i) for i, s in enumerate(support))
        self._warp = Warp(self.warp)
        self.meta_prior, self.num_components = meta_prior, meta_prior.num_components
        self.max_observations, self.observation_dim = max_observations, observation_dim
        self._simulate, self._log_likelihood = simulate, log_likelihood
        self.independent_observations = True

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        return self.meta_prior.sample(n, generator)

    def sample_parameters(self, prior: GaussianMixture, generator: torch.Generator | None = None) -> Tensor:
        """``theta`` on the original space, drawn from the prior on the warped space, and kept strictly inside the
        support in its own precision: a draw far out on the warped space (beyond about 16 for a float32 interval)
        would otherwise land on the interval's end, or on 0 or inf for a positive coordinate, whose warped value,
        the training target, is infinite."""
        return self._inside(self._warp.inverse(prior.sample(generator=generator)))

    def _inside(self, theta: Tensor) -> Tensor:
        """``theta`` ``(..., D)`` with each bounded coordinate moved toward the interior, one representable step at a
        time, until its warped value is finite."""
        tiny, huge = torch.finfo(theta.dtype).tiny, torch.finfo(theta.dtype).max
        columns = []
        for d, kind in enumerate(self.warp):
            x = theta[..., d]
            if kind == "log":
                x = x.clamp(tiny, huge)
            elif kind != "identity":
                low, high = (0.0, 1.0) if kind == "logit" else self.support[d]
                centre = torch.tensor(0.5 * (float(low) + float(high)), dtype=theta.dtype)
                one = Warp([kind])
                for _ in range(64):  # a few steps suffice: the ends are one or two representable steps away
                    bad = ~torch.isfinite(one.forward(x.unsqueeze(-1)))[..., 0]
                    if not bool(bad.any()):
                        break
                    x = torch.where(bad, torch.nextafter(x, centre.expand_as(x)), x)
            columns.append(x)
        return torch.stack(columns, -1)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        """The user's simulator on ``theta`` ``(n, D)``, padded to ``max_observations`` with a mask."""
        out = self._simulate(theta, generator)
        n, N, E = theta.shape[0], self.max_observations, self.observation_dim
        rows = list(out) if not torch.is_tensor(out) else list(out.unbind(0))
        if len(rows) != n:
            raise ValueError(f"Expected simulate to return one data set per parameter ({n}), but got {len(rows)}.")
        for i, z in enumerate(rows):
            z = torch.as_tensor(z, dtype=theta.dtype)
            rows[i] = z = z.reshape(-1, 1) if E == 1 and z.dim() <= 1 else z
            if z.dim() != 2 or z.shape[-1] != E or z.shape[0] > N:
                raise ValueError(f"Expected simulate's data set {i} to be (N, {E}) with N <= max_observations={N} "
                                 f"(or (N,) for one-dimensional observations), but got shape {tuple(z.shape)}.")
        lengths = torch.tensor([z.shape[0] for z in rows])
        values = torch.zeros(n, N, E, dtype=theta.dtype)
        if n:  # one padded copy instead of a copy per data set
            padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
            values[:, :padded.shape[1]] = padded
        mask = torch.arange(N) < lengths.unsqueeze(-1)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("Expected simulate to return finite observations, but got NaN or inf.")
        return Observations({self.source: values}, {self.source: mask})

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        r""":math:`\sum_i m_i \log p(z_i\mid\theta)` ``(*S, *B)`` for ``theta`` ``(*S, *B, D)`` on the original space
        and observations of batch ``B``."""
        if self._log_likelihood is None:
            raise NotImplementedError(f"Problem {self.name!r} was built without a log_likelihood.")
        obs = as_observations(observations, self.sources)  # as model.posterior takes them: a tensor, a dict, ...
        z, mask = obs.values[self.source], obs.masks[self.source]  # (*B, N, E), (*B, N)
        each = self._log_likelihood(theta.unsqueeze(-2), z)  # (*S, *B, N)
        return torch.where(mask, each, torch.zeros((), dtype=each.dtype)).sum(-1)

    def options(self) -> dict[str, Any]:
        return {"simulate": _name_of(self._simulate), "log_likelihood": _name_of(self._log_likelihood),
                "support": [s if isinstance(s, str) else list(s) for s in self.support],
                "max_observations": self.max_observations, "observation_dim": self.observation_dim}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options(), "user_problem": True,
                "meta_prior": self.meta_prior.describe() if hasattr(self.meta_prior, "describe") else
                type(self.meta_prior).__name__,
                "warp": list(self.warp)}


def from_simulator(simulate: Callable, support: Sequence | str, meta_prior, *, max_observations: int,
                   observation_dim: int = 1, log_likelihood: Callable | None = None,
                   name: str = "simulator") -> SimulatorProblem:
    r"""A problem from plain functions (module docstring).

    Args:
        simulate: ``simulate(theta, generator)`` for parameters ``theta`` ``(n, D)`` on the original space: a list
            of ``n`` data sets, each ``(N_i, E)`` (or ``(N_i,)`` when ``E = 1``) with ``N_i <= max_observations``,
            or one tensor ``(n, N, E)``. Draw every random number from ``generator``.
        support: per latent coordinate ``"real"``, ``"positive"``, ``"unit"`` or an interval ``(a, b)``.
        meta_prior: the priors to train for, on the warped space (``distformer.meta_priors``).
        max_observations: the most observations a data set has (larger ones at inference go in parts).
        observation_dim: ``E``, the size of one observation.
        log_likelihood: optional ``log_likelihood(theta, z)``, ``log p(z_i | theta)`` for ``theta`` ``(..., 1, D)``
            and observations ``z`` ``(..., N, E)``, broadcasting to ``(..., N)``.
        name: the problem's name in the model card.
    """
    return SimulatorProblem(simulate, support, meta_prior, max_observations, observation_dim, log_likelihood, name)

r"""Accuracy diagnostics against exact posteriors.

* KL by Monte Carlo: :math:`\mathrm{KL}(p\,\|\,q) \approx \frac1S\sum_s[\log p(x_s) - \log q(x_s)]`,
  :math:`x_s\sim p`, unbiased for each problem; averaged over problems with its standard error.
* Expected NLL of the true parameter: :math:`\mathbb E[-\log q(x^\star\mid z,\phi)]`; the difference between a
  model's and the exact posterior's expected NLL is the expected KL(exact ‖ model) (paper, Prop. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .distributions.gmm import GaussianMixture


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo mean with its standard error and a normal 95% interval."""

    mean: float
    stderr: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        return (self.mean - 1.96 * self.stderr, self.mean + 1.96 * self.stderr)

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "stderr": self.stderr, "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {1.96 * self.stderr:.2g}"


def estimate(values: Tensor) -> Estimate:
    """Mean and standard error of a 1-D tensor of per-problem values."""
    values = values.detach().double().flatten()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return Estimate(float(values.mean()), se, n)


def kl_divergence(p: GaussianMixture, q: GaussianMixture, num_samples: int = 256,
                  generator: torch.Generator | None = None) -> Tensor:
    """Per-problem Monte-Carlo ``KL(p || q)`` with ``num_samples`` draws from ``p``; shape ``p.batch_shape``."""
    if p.batch_shape != q.batch_shape or p.dim != q.dim:
        raise ValueError(f"Expected p and q with equal batch shape and dimension, but got {p} and {q}.")
    x = p.sample((num_samples,), generator=generator)
    q64 = q.to(torch.float64)
    p64 = p.to(torch.float64)
    x = x.to(torch.float64)
    return (p64.log_prob(x) - q64.log_prob(x)).mean(0)


def negative_log_likelihood(posterior: GaussianMixture, theta: Tensor) -> Tensor:
    """Per-problem ``-log q(theta)``; ``theta`` ``batch_shape + (D,)``."""
    return -posterior.to(torch.float64).log_prob(theta.to(torch.float64))

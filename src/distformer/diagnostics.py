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


# ---------------------------------------------------------------------------------------------- calibration
r"""Calibration over the meta-prior.

* HPD level of the truth: :math:`u = \Pr_{x\sim q}[\log q(x) > \log q(x^\star)]`, estimated with ``S`` samples. The
  truth lies in the central (highest-density) :math:`\alpha` region iff :math:`u\le\alpha`; for a calibrated
  posterior :math:`u\sim\mathcal U(0,1)` over :math:`p(\phi,x,z)`, so coverage at level :math:`\alpha` is
  :math:`\Pr[u\le\alpha] = \alpha`.
* SBC ranks (Talts et al. 2018): the rank of :math:`x^\star_d` among ``S`` posterior draws of coordinate ``d``;
  uniform on :math:`\{0..S\}` when calibrated.
"""


def hpd_level(posterior: GaussianMixture, theta: Tensor, num_samples: int = 1000,
              generator: torch.Generator | None = None) -> Tensor:
    """Per-problem HPD level of ``theta`` ``batch_shape + (D,)`` under ``posterior``; shape ``batch_shape``."""
    q = posterior.to(torch.float64)
    x = q.sample((num_samples,), generator=generator)
    return (q.log_prob(x) > q.log_prob(theta.to(torch.float64))).double().mean(0)


def coverage(levels_of_truth: Tensor, nominal=(0.5, 0.8, 0.95)) -> dict[float, Estimate]:
    """Empirical coverage at each nominal level, with its binomial standard error."""
    return {a: estimate((levels_of_truth <= a).double()) for a in nominal}


def sbc_ranks(posterior: GaussianMixture, theta: Tensor, num_samples: int = 99,
              generator: torch.Generator | None = None) -> Tensor:
    """Rank of each coordinate of ``theta`` among ``num_samples`` posterior draws: ``batch_shape + (D,)``, int."""
    x = posterior.sample((num_samples,), generator=generator).to(torch.float64)
    return (x < theta.to(torch.float64)).sum(0)


def calibration_summary(model, problem, num_problems: int = 1000, generator: torch.Generator | None = None,
                        hpd_samples: int = 1000, sbc_samples: int = 99, bins: int = 20) -> dict:
    """Coverage at 50/80/95% (with binomial standard errors) and, per coordinate, the p-value of a chi-square test
    of SBC rank uniformity over ``bins`` bins, on ``num_problems`` fresh simulations of ``problem``: what a model
    card records after training."""
    batch = problem.sample_batch(num_problems, generator=generator)
    with torch.inference_mode():
        post = model.posterior(problem.as_prior(batch.prior), batch.observations, check=False)
    levels = hpd_level(post, batch.theta, hpd_samples, generator)
    ranks = sbc_ranks(post, batch.theta, sbc_samples, generator)  # (n, D) in 0..S
    counts = torch.stack([torch.bincount((ranks[:, d] * bins) // (sbc_samples + 1), minlength=bins)
                          for d in range(ranks.shape[-1])]).double()  # (D, bins)
    expected = num_problems / bins
    statistic = ((counts - expected) ** 2 / expected).sum(-1)
    p_values = torch.special.gammaincc(torch.tensor((bins - 1) / 2, dtype=torch.float64), statistic / 2)
    cover = coverage(levels)
    return {"problems": num_problems, "coverage": {f"{a:g}": round(e.mean, 4) for a, e in cover.items()},
            "coverage_stderr": {f"{a:g}": round(e.stderr, 4) for a, e in cover.items()},
            "sbc_uniformity_p": [round(float(p), 4) for p in p_values]}


def plot_calibration(results: dict[str, dict], num_samples: int, path) -> None:
    """Coverage curves (empirical vs nominal) and SBC rank histograms per method; ``results[name]`` holds
    ``levels`` (N,) and ``ranks`` (N, D)."""
    from .plotting import pyplot

    plt = pyplot()
    from scipy import stats

    dims = next(iter(results.values()))["ranks"].shape[-1]
    fig, axes = plt.subplots(1, 1 + dims, figsize=(4.2 * (1 + dims), 3.8))
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name, r in results.items():
        emp = [(r["levels"] <= a).double().mean().item() for a in grid.tolist()]
        axes[0].plot(grid, emp, label=name)
    n = next(iter(results.values()))["levels"].numel()
    band = 1.96 * torch.sqrt(grid * (1 - grid) / n)
    axes[0].fill_between(grid, grid - band, grid + band, color="0.85", label="95% band (calibrated)")
    axes[0].plot([0, 1], [0, 1], color="0.4", ls=":")
    axes[0].set_xlabel("nominal HPD level")
    axes[0].set_ylabel("coverage of the true parameter")
    axes[0].legend(fontsize=8)
    bins = 20
    lo, hi = stats.binom.interval(0.99, n, 1 / bins)
    for d in range(dims):
        ax = axes[1 + d]
        for name, r in results.items():
            ax.hist(r["ranks"][:, d].numpy(), bins=bins, range=(0, num_samples + 1), histtype="step", label=name)
        ax.axhspan(lo, hi, color="0.85", label="99% band per bin")
        ax.set_title(f"SBC ranks, coordinate {d}")
        ax.set_xlabel(f"rank among {num_samples} draws")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""NumPyro NUTS and SVI baselines (extra ``baselines``; skipped cleanly without it): both recover an exact posterior."""

import pytest
import torch

pytest.importorskip("numpyro")
pytest.importorskip("jax")

from distformer import GaussianMixture, problems  # noqa: E402
from distformer.baselines.numpyro_linear_gaussian import NUTSBaseline, SVIBaseline  # noqa: E402


def _gaussian_problem():
    """A one-component prior on R^2 and 6 observations: the exact posterior is one Gaussian."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixture(torch.ones(1, 1, dtype=torch.float64), torch.tensor([[[1.0, -1.0]]], dtype=torch.float64),
                            covariance_matrix=torch.tensor([[[[2.0, 0.5], [0.5, 1.0]]]], dtype=torch.float64))
    z = torch.tensor([0.5, 0.0], dtype=torch.float64) + torch.randn(1, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    exact = problems.get("linear-gaussian", dim=2).exact_posterior(prior, z)
    return prior, z, mask, exact[0], g


def test_nuts_draws_match_the_exact_posterior():
    prior, z, mask, exact, _ = _gaussian_problem()
    draws = NUTSBaseline(num_warmup=300, num_samples=2000, seed=1).draws(prior, z, mask, 0)
    sd = exact.covariance_matrix.diagonal().sqrt()
    # NUTS draws are autocorrelated; with an effective size above ~500 the mean's error is < sd / 22, and the bound
    # below (sd / 5) is more than 4 such errors
    assert bool(((draws.mean(0) - exact.mean).abs() < sd / 5).all())
    assert bool(((draws.std(0) / sd - 1).abs() < 0.15).all())


def test_svi_gaussian_matches_the_exact_gaussian():
    prior, z, mask, exact, _ = _gaussian_problem()
    q = SVIBaseline(num_steps=2000, seed=2).posterior(prior, z, mask, 0)
    sd = exact.covariance_matrix.diagonal().sqrt()
    assert bool(((q.mean - exact.mean).abs() < sd / 5).all())
    assert bool(((q.covariance_matrix.diagonal().sqrt() / sd - 1).abs() < 0.2).all())

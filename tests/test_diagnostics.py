"""Diagnostics: the Monte-Carlo KL estimator against the closed form for Gaussians."""

import torch

from distformer import GaussianMixture
from distformer.diagnostics import estimate, kl_divergence


def _gauss_kl(m0, S0, m1, S1):
    d = m0.shape[-1]
    S1inv = torch.linalg.inv(S1)
    diff = (m1 - m0).unsqueeze(-1)
    return 0.5 * (torch.diagonal(S1inv @ S0, dim1=-2, dim2=-1).sum(-1) + (diff.mT @ S1inv @ diff)[..., 0, 0] - d
                  + torch.logdet(S1) - torch.logdet(S0))


def test_kl_of_one_component_mixtures_matches_closed_form(rng):
    """Mean over 200 problems of an unbiased estimator: within 4 standard errors (false alarm ~6e-5)."""
    n = 200
    m0 = torch.randn(n, 1, 2, generator=rng, dtype=torch.float64)
    m1 = m0 + 0.3 * torch.randn(n, 1, 2, generator=rng, dtype=torch.float64)
    A = torch.randn(n, 1, 2, 2, generator=rng, dtype=torch.float64)
    S0 = A @ A.mT + 0.5 * torch.eye(2, dtype=torch.float64)
    S1 = S0 * 1.3
    p = GaussianMixture(torch.ones(n, 1, dtype=torch.float64), m0, covariance_matrix=S0)
    q = GaussianMixture(torch.ones(n, 1, dtype=torch.float64), m1, covariance_matrix=S1)
    mc = estimate(kl_divergence(p, q, 512, generator=rng))
    exact = float(_gauss_kl(m0[:, 0], S0[:, 0], m1[:, 0], S1[:, 0]).mean())
    assert abs(mc.mean - exact) < 4 * mc.stderr + 1e-3, (mc, exact)


def test_kl_of_a_distribution_with_itself_is_zero(rng):
    p = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[0.0], [2.0]]),
                        covariance_matrix=torch.ones(2, 1, 1))
    assert float(kl_divergence(p, p, 100, generator=rng).abs()) < 1e-12


def _linear_gaussian_batch(n, seed):
    from distformer.problems import get

    problem = get("linear-gaussian", dim=2)
    batch = problem.sample_batch(n, generator=torch.Generator().manual_seed(seed))
    return batch, problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)


def test_exact_posterior_coverage_is_nominal():
    """Coverage of the exact posterior within 4 binomial standard errors at each level (false alarm ~6e-5 each)."""
    from distformer.diagnostics import coverage, hpd_level

    batch, exact = _linear_gaussian_batch(1000, 11)
    g = torch.Generator().manual_seed(12)
    for level, e in coverage(hpd_level(exact, batch.theta, 500, g)).items():
        assert abs(e.mean - level) < 4 * (level * (1 - level) / e.n) ** 0.5 + 0.01, (level, e)


def test_overconfident_posterior_is_caught():
    from distformer.diagnostics import coverage, hpd_level

    batch, exact = _linear_gaussian_batch(1000, 13)
    narrow = GaussianMixture(logits=exact.log_weights, loc=exact.loc, scale_tril=0.5 * exact.scale_tril)
    cov = coverage(hpd_level(narrow, batch.theta, 500, torch.Generator().manual_seed(14)))
    assert cov[0.8].mean < 0.6  # a 2x too narrow posterior covers far less than nominal


def test_exact_posterior_sbc_ranks_are_uniform():
    """Chi-square test of rank uniformity (10 bins) per coordinate; rejects at p < 1e-3."""
    from scipy import stats

    from distformer.diagnostics import sbc_ranks

    batch, exact = _linear_gaussian_batch(2000, 15)
    ranks = sbc_ranks(exact, batch.theta, 99, torch.Generator().manual_seed(16))
    assert ranks.shape == (2000, 2) and int(ranks.min()) >= 0 and int(ranks.max()) <= 99
    for d in range(2):
        counts = torch.bincount(ranks[:, d] // 10, minlength=10).double()
        assert stats.chisquare(counts.numpy()).pvalue > 1e-3

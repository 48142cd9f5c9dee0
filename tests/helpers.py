"""Shared builders for tests."""

import torch

from distformer import GaussianMixture


def random_mixture(batch_shape, k, d, generator, dtype=torch.float64, spread=2.0):
    """A random mixture with well-conditioned full covariances."""
    w = torch.softmax(torch.randn(*batch_shape, k, generator=generator, dtype=dtype), -1)
    loc = spread * torch.randn(*batch_shape, k, d, generator=generator, dtype=dtype)
    A = torch.randn(*batch_shape, k, d, d, generator=generator, dtype=dtype)
    cov = A @ A.transpose(-1, -2) / d + 0.2 * torch.eye(d, dtype=dtype)
    return GaussianMixture(w, loc, covariance_matrix=cov)

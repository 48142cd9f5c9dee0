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


def perturbed_model(dim=2, sources=None, seed=0, encoder_layers=0, noise=0.05, dtype=torch.float32):
    """A small model whose zero-initialised branches are filled with noise of scale ``noise``, so that its output
    depends on every weight and every input (a trained model's function is not needed to test identities)."""
    from distformer import DistributionTransformer, ModelConfig

    torch.manual_seed(seed)
    model = DistributionTransformer(ModelConfig(dim=dim, sources=sources or {"z": dim}, d_model=32, num_heads=4,
                                                num_layers=2, ff_dim=64, hidden=32, encoder_layers=encoder_layers))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.to(dtype).eval()

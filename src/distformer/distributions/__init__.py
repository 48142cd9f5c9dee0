"""Distributions: batched Gaussian mixtures, their linear algebra, and log/logit warps."""

from .gmm import GaussianMixture
from .transforms import Warp, WarpedGaussianMixture

__all__ = ["GaussianMixture", "Warp", "WarpedGaussianMixture"]

"""Distributions: batched Gaussian mixtures and their linear algebra."""

from .gmm import GaussianMixture

__all__ = ["GaussianMixture"]

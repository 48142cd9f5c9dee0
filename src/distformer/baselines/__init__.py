"""Baselines measured beside the model: Kalman-family filters, the bootstrap particle filter, and the PFN.

NumPyro SVI and NUTS (``svi.py``, ``nuts.py``, ``numpyro_models.py``) need the optional ``baselines`` extra and are
imported from their modules."""

from .kalman import ExtendedKalmanFilter, GaussianStateSpace, KalmanFilter, UnscentedKalmanFilter, gaussian_beliefs
from .pfn import PFN, BarDistribution, PFNConfig, train_pfn
from .particle import (ParticleFilter, bootstrap_filter, gaussian_log_likelihood, gaussian_transition,
                       problem_log_likelihood, systematic_resample)

__all__ = ["GaussianStateSpace", "KalmanFilter", "ExtendedKalmanFilter", "UnscentedKalmanFilter", "ParticleFilter",
           "bootstrap_filter", "gaussian_transition", "gaussian_log_likelihood", "problem_log_likelihood", "systematic_resample",
           "gaussian_beliefs", "PFN", "PFNConfig", "BarDistribution", "train_pfn"]

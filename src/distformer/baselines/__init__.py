"""Baselines measured beside the model: Kalman-family filters and the bootstrap particle filter."""

from .kalman import ExtendedKalmanFilter, GaussianStateSpace, KalmanFilter, UnscentedKalmanFilter, gaussian_beliefs
from .particle import (ParticleFilter, gaussian_log_likelihood, gaussian_transition, problem_log_likelihood,
                       systematic_resample)

__all__ = ["GaussianStateSpace", "KalmanFilter", "ExtendedKalmanFilter", "UnscentedKalmanFilter", "ParticleFilter",
           "gaussian_transition", "gaussian_log_likelihood", "problem_log_likelihood", "systematic_resample",
           "gaussian_beliefs"]

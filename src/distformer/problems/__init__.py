"""Problems: meta-prior, simulator and exact posterior for each experiment."""

from .base import Batch, Problem
from .linear_gaussian import LinearGaussian
from .registry import get, names, register

__all__ = ["Batch", "Problem", "LinearGaussian", "get", "names", "register"]

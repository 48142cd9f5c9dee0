"""Problems: meta-prior, simulator and exact (or reference) posterior for each experiment."""

from .base import Batch, Problem
from .inverse_gamma import InverseGammaVariance
from .linear_gaussian import LinearGaussian
from .quantum import TwoLevelSystem
from .registry import get, names, register
from .simulator import SimulatorProblem, from_simulator

__all__ = ["Batch", "Problem", "LinearGaussian", "InverseGammaVariance", "TwoLevelSystem", "get", "names",
           "register", "from_simulator", "SimulatorProblem"]

"""distformer: millisecond Bayesian posteriors under priors you can change at run time.

Distribution Transformers (Whittle et al., ICML 2026): a transformer maps a Gaussian-mixture prior and a set of
observations to a Gaussian-mixture posterior, which can be fed back as the next prior.
"""

from . import meta_priors, problems
from .evaluation import evaluate, mixture_floor, reference_draws
from .distributions import GaussianMixture, Warp, WarpedGaussianMixture
from .nn import DistributionTransformer, ModelConfig
from .filtering import Filter, LinearGaussianMotion, NonlinearMotion
from .observations import Observations
from .refinement import Refinement, refine
from .training import ArchitectureConfig, ProblemConfig, TrainConfig, model_from_checkpoint, train
from .nn.serialization import load_model as load

__version__ = "0.1.0"


def pretrained(name: str) -> DistributionTransformer:
    """Load a model shipped inside the package (offline); see :func:`pretrained_names`."""
    from .zoo import load_pretrained

    return load_pretrained(name)


def pretrained_names() -> list[str]:
    """Names of the models shipped inside the package."""
    from .zoo import pretrained_names as names

    return names()


__all__ = ["GaussianMixture", "WarpedGaussianMixture", "Warp", "DistributionTransformer", "ModelConfig", "Observations", "TrainConfig",
           "ProblemConfig", "ArchitectureConfig", "train", "model_from_checkpoint", "load", "pretrained", "pretrained_names", "problems", "meta_priors", "evaluate", "mixture_floor", "reference_draws", "refine", "Refinement",
           "Filter", "LinearGaussianMotion", "NonlinearMotion"]

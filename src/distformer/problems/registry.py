"""Problem registry: ``distformer.problems.get(name, **options)``."""

from __future__ import annotations

from typing import Callable

from .base import Problem
from .gp_hyperprior import GPHyperprior
from .inverse_gamma import InverseGammaVariance
from .linear_gaussian import LinearGaussian
from .quantum import TwoLevelSystem
from .sensor_fusion import SensorFusion
from .stochastic_volatility import StochasticVolatility

_REGISTRY: dict[str, Callable[..., Problem]] = {
    GPHyperprior.name: GPHyperprior,
    InverseGammaVariance.name: InverseGammaVariance,
    LinearGaussian.name: LinearGaussian,
    TwoLevelSystem.name: TwoLevelSystem,
    SensorFusion.name: SensorFusion,
    StochasticVolatility.name: StochasticVolatility,
}


def register(name: str, factory: Callable[..., Problem]) -> None:
    """Make ``get(name, **options)`` build ``factory(**options)``."""
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options) -> Problem:
    """Build the problem registered as ``name`` with ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"Expected a problem name among {names()}, but got {name!r}.")
    return _REGISTRY[name](**options)


def from_factory(factory: str, **options) -> Problem:
    """The problem that ``factory`` (``"package.module:function"``) returns for ``**options``; the module is imported
    by name, so it must be importable where this runs (installed, or on ``PYTHONPATH``)."""
    import importlib

    module, _, attribute = str(factory).partition(":")
    if not module or not attribute:
        raise ValueError(f"Expected a problem factory as 'package.module:function', but got {factory!r}.")
    try:
        target = importlib.import_module(module)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"Expected the problem factory {factory!r} to be importable, but: {e}.") from None
    problem = target(**options) if callable(target) and not isinstance(target, Problem) else target
    if not isinstance(problem, Problem):
        raise ValueError(f"Expected {factory!r} to give a distformer Problem, but it gave {type(problem).__name__}.")
    return problem


def from_card(card) -> Problem:
    """The problem a model card describes: the user's factory it was trained from (``problem: {factory: ...}``),
    else the registered problem it names. A user's problem built in a script (``from_simulator``, no factory) cannot
    be rebuilt from JSON, and the error says what to pass instead."""
    trained_on = card.get("training", {}).get("config", {}).get("problem", {})
    if trained_on.get("factory"):
        return from_factory(trained_on["factory"], **dict(trained_on.get("options", {})))
    problem = card.get("problem", {})
    if "name" not in problem:
        raise ValueError("Expected the model's card to name its problem, but it names none; pass the problem.")
    if problem.get("user_problem"):
        raise ValueError(f"Expected a problem the card can rebuild, but {problem['name']!r} is a user's problem built "
                         "in code without a factory; pass it (likelihood=problem), or train from a factory "
                         "(problem: {factory: 'package.module:function'}) so that the card records how to build it.")
    return get(problem["name"], **problem.get("options", {}))

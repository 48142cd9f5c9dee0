"""The benchmark runners: one per experiment, each writing ``benchmarks/NAME.md`` (with the command that made it)
and a figure. They live beside their results, outside the installed package: ``distformer bench NAME`` runs them
from a source checkout, and ``import distformer`` never imports them."""

from __future__ import annotations

from pathlib import Path


MODULES = {"components": "components", "dimensions": "dimensions", "gp-hyperprior": "gp_hyperprior",
           "inverse-gamma": "inverse_gamma", "linear-gaussian": "linear_gaussian", "lti": "lti", "quantum": "quantum",
           "refine": "refine", "sbibm": "sbibm", "sensor-fusion": "sensor_fusion", "speed": "speed", "stress": "stress",
           "stochastic-volatility": "stochastic_volatility", "time-to-accuracy": "time_to_accuracy"}


def experiment(name: str):
    """The :class:`~benchmarks.runners.harness.Experiment` declared for benchmark ``name``."""
    from importlib import import_module

    if name not in MODULES:
        raise ValueError(f"Expected a benchmark name among {sorted(MODULES)}, but got {name!r}.")
    return import_module(f".{MODULES[name]}", __name__).EXPERIMENT


def run_benchmark(name: str, quick: bool = False, out_dir: str | Path = "benchmarks") -> Path:
    """Run benchmark ``name`` through the harness; returns the path of the markdown report."""
    from .harness import run_experiment

    return run_experiment(experiment(name), quick=quick, out_dir=Path(out_dir))

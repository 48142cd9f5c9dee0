"""The benchmark runners: one per experiment, each writing ``benchmarks/NAME.md`` (with the command that made it)
and a figure. They live beside their results, outside the installed package: ``distformer bench NAME`` runs them
from a source checkout, and ``import distformer`` never imports them."""

from __future__ import annotations

from pathlib import Path


def _runners():
    from . import components, dimensions, gp_hyperprior, inverse_gamma, linear_gaussian, lti, quantum, refine, sensor_fusion, speed, stochastic_volatility, stress, time_to_accuracy

    return {"components": components.run, "dimensions": dimensions.run, "gp-hyperprior": gp_hyperprior.run, "inverse-gamma": inverse_gamma.run, "linear-gaussian": linear_gaussian.run, "lti": lti.run, "quantum": quantum.run,
            "refine": refine.run,
            "sensor-fusion": sensor_fusion.run, "speed": speed.run, "stress": stress.run,
            "stochastic-volatility": stochastic_volatility.run, "time-to-accuracy": time_to_accuracy.run}


def run_benchmark(name: str, quick: bool = False, out_dir: str | Path = "benchmarks") -> Path:
    """Run benchmark ``name``; returns the path of the markdown report."""
    runners = _runners()
    if name not in runners:
        raise ValueError(f"Expected a benchmark name among {sorted(runners)}, but got {name!r}.")
    return runners[name](quick=quick, out_dir=Path(out_dir))

"""The measuring blocks the benchmarks share: batched timing, and the SVI, NUTS and PFN baselines, each run the
same way wherever it appears (compiled outside the clock, timed over the whole batch, the same progress line).

Times are seconds for the whole batch of ``n`` problems; :func:`per_thousand` turns them into the reports' "time
per 1000 problems" and its ratio to the model's.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from .report import stage


def baselines_available() -> bool:
    """Whether NumPyro and JAX import (the ``baselines`` extra); SVI and NUTS rows are skipped without them."""
    from distformer.baselines.numpyro_linear_gaussian import available

    return available()


def batched_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall-clock seconds of each ``fns[name]()`` over ``repeats`` rounds (after ``warmup``), the calls
    interleaved so that every method sees the same machine load, torch's thread count held throughout."""
    from distformer.timing import interleaved_median_seconds, threads

    with threads(torch.get_num_threads()):
        return interleaved_median_seconds(fns, repeats, warmup)


def batched_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """:func:`batched_times` of one function."""
    return batched_times({"fn": fn}, repeats, warmup)["fn"]


def per_thousand(times: dict[str, float], n: int, reference: str = "model") -> tuple[dict, dict]:
    """``(seconds per 1000 problems, ratio to the reference's)`` from batch times over ``n`` problems."""
    per_1000 = {k: 1000 * v / n for k, v in times.items()}
    return per_1000, {k: v / per_1000[reference] for k, v in per_1000.items()}


def numpyro_svi(bench: str, model: Callable, warp: Sequence[str], args: Sequence, steps: int, **options):
    """Full-covariance Gaussian SVI (NumPyro, vmapped over problems, ``options`` as ``BatchedSVI``'s) on the
    stacked model arguments ``args``: ``(posterior, seconds)``, compiled for the batch's shape outside the clock."""
    from distformer.baselines.svi import BatchedSVI

    stage(bench, f"SVI, {steps} steps, vmapped over {len(args[0])} problems")
    svi = BatchedSVI(model, warp, num_steps=steps, **options)
    svi.posterior(*args)
    start = time.perf_counter()
    q = svi.posterior(*args)
    return q, time.perf_counter() - start


def numpyro_nuts(bench: str, model: Callable, warp: Sequence[str] | None, args: Sequence, problems: int,
                 generator: torch.Generator):
    """NUTS (NumPyro, one problem at a time) on the first ``problems`` of the stacked ``args``, scored through an
    EM fit to its draws: ``(posterior over those problems, seconds per problem)``, compiled outside the clock."""
    from distformer.baselines.nuts import SequentialNUTS

    stage(bench, f"NUTS on {problems} problems, one at a time")
    nuts = SequentialNUTS(model, warp)
    nuts.draws(*[a[0] for a in args])
    start = time.perf_counter()
    draws = torch.stack([nuts.draws(*[a[i] for a in args]) for i in range(problems)], 1)  # (S, m, D)
    seconds = (time.perf_counter() - start) / problems
    return nuts.posterior(draws, generator), seconds


def trained_pfn(bench: str, problem, observations, repeats: int, **config):
    """A PFN trained in this run on ``problem``'s simulator (``config`` as ``PFNConfig``'s fields) and the batched
    time of its posterior on ``observations``: ``(pfn, seconds)``."""
    from distformer.baselines.pfn import PFNConfig, train_pfn

    stage(bench, f"training PFN-{config.get('num_buckets')} ({config.get('steps')} steps)")
    pfn = train_pfn(problem, PFNConfig(**config), progress=False)
    return pfn, batched_seconds(lambda: pfn.posterior(observations), repeats)

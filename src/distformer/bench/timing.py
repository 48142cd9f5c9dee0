"""Wall-clock timing helpers for benchmarks: medians over repeated calls, thread count pinned per measurement."""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager

import torch


@contextmanager
def threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(fn, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def machine() -> str:
    from ..training.trainer import hardware

    h = hardware()
    return f"{h['cpu']}, {h['cores']} cores, torch {h['torch']}, Python {h['python']}, {platform.system()}"

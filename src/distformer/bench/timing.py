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


def interleaved_median_seconds(fns: dict, repeats: int, warmup: int = 5) -> dict:
    """Median wall time of each ``fns[name]()``, calling them in turn so that all see the same machine load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def machine() -> str:
    from ..training.trainer import hardware

    h = hardware()
    return f"{h['cpu']}, {h['cores']} cores, torch {h['torch']}, Python {h['python']}, {platform.system()}"

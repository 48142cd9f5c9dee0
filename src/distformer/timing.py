"""The machine a run happens on, and wall-clock medians over repeated calls with the thread count pinned per
measurement: for model cards (training), ``make demo`` and the benchmarks."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def hardware() -> dict[str, Any]:
    """The machine the run happened on."""
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "gpu": None}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU, cores, torch, Python and OS."""
    h = hardware()
    return f"{h['cpu']}, {h['cores']} cores, torch {h['torch']}, Python {h['python']}, {platform.system()}"

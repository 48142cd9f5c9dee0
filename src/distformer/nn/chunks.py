r"""Large inference batches in chunks, run side by side on the available threads.

A batch of :math:`n` problems is cut into :math:`\lceil n / c\rceil` chunks of :math:`c` problems. A chunk's
activations (``c`` problems of ``K`` component tokens and up to ``N`` observation tokens) stay in the CPU's cache,
which a single forward pass over all :math:`n` problems does not. The forward passes of this model are many small
operators, which split poorly over threads: with :math:`T` threads (``torch.get_num_threads()``), ``T`` Python
worker threads each run whole chunks on one thread (the operators' kernels release the GIL). Each worker's
forward is a TorchScript trace where one is available (``DistributionTransformer._inference_forward(chunks=True)``):
run eagerly, the Python code between a chunk's few hundred operators holds the interpreter lock and leaves the
other worker waiting. ``DistributionTransformer.chunk_size`` sets :math:`c`; ``benchmarks/speed.md`` measures the
result against one forward over the whole batch. torch's intra-op thread count is process-wide, so while the
workers run it is one for the whole process, and it is restored afterwards (concurrent calls take turns); a
program that runs other torch work on other threads at the same time can set ``model.chunk_workers = 1`` to run the
chunks in turn and leave the count alone. Chunks are independent, so the result is the concatenation
of the chunks' results in order, whatever thread ran them. On an accelerator the chunks run in turn on the calling
thread.

The worker threads are kept between calls (one pool per process and thread count), so that a batch of a few
thousand problems does not pay for starting them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor

from ..observations import Observations

_THREAD_COUNT = threading.Lock()  # held while the intra-op thread count is lowered for the workers
_POOL: dict[str, object] = {}  # the kept workers: "key" (process id, thread count) and "pool"


def _workers(threads: int) -> ThreadPoolExecutor:
    """The kept pool of ``threads`` workers, made anew in a forked child (whose copy has no threads) or when the
    thread count changed; called with ``_THREAD_COUNT`` held."""
    key = (os.getpid(), threads)
    if _POOL.get("key") != key:
        old = _POOL.get("pool")
        if old is not None and _POOL["key"][0] == key[0]:
            old.shutdown(wait=False)
        _POOL.update(key=key, pool=ThreadPoolExecutor(threads, thread_name_prefix="distformer-chunk"))
    return _POOL["pool"]


def map_chunks(forward: Callable[[Tensor, Observations], Tensor], chart: Tensor, observations: Observations,
               chunk_size: int, workers: int | None = None) -> Tensor:
    """``forward`` over ``chart`` ``(n, K, C)`` and ``observations`` (batch ``(n,)``) in chunks of ``chunk_size``
    problems, under ``torch.inference_mode``, on ``workers`` threads side by side (``None``: torch's intra-op
    thread count; 1: in turn on the calling thread, leaving the thread count alone); returns the chunks' outputs
    concatenated along the batch."""
    if chunk_size < 1:
        raise ValueError(f"Expected a positive chunk_size, but got {chunk_size}.")
    starts = range(0, chart.shape[0], chunk_size)

    def run(start: int) -> Tensor:
        with torch.inference_mode():  # grad mode is per thread: a worker does not inherit the caller's
            return forward(chart[start:start + chunk_size], observations.slice(start, start + chunk_size))

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"Expected chunk_workers to be a whole number >= 1 or None, but got {workers!r}.")
    workers = min(torch.get_num_threads() if workers is None else workers, len(starts)) \
        if chart.device.type == "cpu" else 1
    if workers < 2:
        return torch.cat([run(start) for start in starts])
    with _THREAD_COUNT:  # concurrent callers take turns, so that each restores the count it found
        threads = torch.get_num_threads()
        pool = _workers(workers)
        torch.set_num_threads(1)
        try:
            return torch.cat(list(pool.map(run, starts)))
        finally:
            torch.set_num_threads(threads)

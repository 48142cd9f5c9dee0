"""The launcher behind ``distformer train``: train from a config, then write the model with its card, in one
process or in ``N`` local processes joined in a process group (gloo on CPU, NCCL on GPU).

:func:`train_and_save` is the one place that turns a finished run into a saved model (the card's command line and
process count, rank 0 writes), whether ``distformer train`` runs it directly, under ``torchrun``, or in each
process that :func:`spawn_training` starts.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist

from .training.config import TrainConfig
from .training.distributed import world_size_and_rank
from .training.trainer import train


def train_and_save(config: TrainConfig, out: str, checkpoint: str | None, resume: bool, quiet: bool,
                   command: str | None = None, every_rank: bool = False, time_budget: float | None = None):
    """Train ``config``'s problem and, on rank 0, save the model at ``out`` with ``command`` (the command line that
    trained it) and the number of processes in its card; returns the model. With ``every_rank`` each rank also
    saves ``out.rank{r}`` (tests use it to check that the replicas agree)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    problem = config.problem.build()
    model = train(problem, config, checkpoint=checkpoint, resume=resume, progress=not quiet, time_budget=time_budget)
    world, rank = world_size_and_rank()
    if every_rank:
        model.save(f"{out}.rank{rank}")
    if rank == 0:
        if world > 1:
            model.card["training"]["processes"] = world
        if command is not None:
            model.card["training"]["command"] = command
        model.save(out)
    return model


def train_worker(rank: int, config_dict: dict, out: str, checkpoint: str | None, resume: bool, quiet: bool,
                 every_rank: bool = False, command: str | None = None, time_budget: float | None = None) -> None:
    """One process of ``distformer train --nproc N`` (:func:`train_and_save` in process ``rank``)."""
    train_and_save(TrainConfig.from_dict(config_dict), out, checkpoint, resume, quiet, command, every_rank,
                   time_budget)


def spawn_training(nproc: int, worker: Callable, *args) -> None:
    """Run ``worker(rank, *args)`` in ``nproc`` local processes joined in one gloo/NCCL process group."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"Expected nproc >= 1 processes, but got {nproc!r}.")
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(nproc, _free_port(), worker, args), nprocs=nproc, join=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, nproc: int, port: int, worker: Callable, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank)})
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=nproc)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()

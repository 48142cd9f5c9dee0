r"""Multi-process data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

With :math:`W` processes and :math:`S` data shards (:math:`W \mid S`), process :math:`r` simulates shards
:math:`rS/W,\dots,(r+1)S/W-1` of every step's global batch. Each shard has the same size, so the mean of the
per-process mean losses is the global mean loss, and ``DistributedDataParallel``'s gradient average is the
gradient of the global batch: a run gives the same weights for any :math:`W` dividing :math:`S` (up to the order
of floating-point sums).

``distformer train CONFIG --nproc N`` starts ``N`` local processes with :func:`spawn_training`; ``torchrun
--nproc-per-node N -m distformer.cli train CONFIG --out OUT`` works too (``train`` joins the process group that
``torchrun``'s environment describes).
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist

from ..distributions.gmm import GaussianMixture
from ..observations import Observations


def world_size_and_rank() -> tuple[int, int]:
    """``(W, r)``: from an initialised process group, else from ``torchrun``'s environment (joining it), else (1, 0)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` (parameters are broadcast from rank 0 on construction)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def gather_rng_states(local: dict[int, torch.Tensor], world: int) -> dict[int, torch.Tensor]:
    """Every shard's generator state on every process (each process holds only its own shards')."""
    if world == 1:
        return local
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return {i: state for part in parts for i, state in part.items()}


def concat_batches(batches: list):
    """One :class:`~distformer.problems.base.Batch` from several with batch shape ``(n_i,)``."""
    from ..problems.base import Batch

    if len(batches) == 1:
        return batches[0]
    if torch.is_tensor(batches[0].prior):  # parametric priors: parameters (n_i, P)
        prior = torch.cat([b.prior for b in batches])
    else:
        prior = GaussianMixture(logits=torch.cat([b.prior.log_weights for b in batches]),
                                loc=torch.cat([b.prior.loc for b in batches]),
                                scale_tril=torch.cat([b.prior.scale_tril for b in batches]), validate_args=False)
    names = list(batches[0].observations.values)
    observations = Observations({s: torch.cat([b.observations.values[s] for b in batches]) for s in names},
                                {s: torch.cat([b.observations.masks[s] for b in batches]) for s in names})
    return Batch(prior, torch.cat([b.theta for b in batches]), observations)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_training(nproc: int, worker: Callable, *args) -> None:
    """Run ``worker(rank, *args)`` in ``nproc`` local processes joined in one gloo/NCCL process group."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"Expected nproc >= 1 processes, but got {nproc!r}.")
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_entry, args=(nproc, port, worker, args), nprocs=nproc, join=True)


def _entry(rank: int, nproc: int, port: int, worker: Callable, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank)})
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=nproc)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def train_worker(rank: int, config_dict: dict, out: str, checkpoint: str | None, resume: bool, quiet: bool,
                 every_rank: bool = False, command: str | None = None) -> None:
    """One process of ``distformer train --nproc N``: train, then rank 0 saves ``out`` with ``command`` (the
    command line that trained it) in its card (with ``every_rank``, each rank also saves ``out.rank{r}``, which
    tests use to check that the replicas agree)."""
    from ..problems import get
    from .config import TrainConfig
    from .trainer import train

    config = TrainConfig.from_dict(config_dict)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    problem = get(config.problem.name, **dict(config.problem.options))
    model = train(problem, config, checkpoint=checkpoint, resume=resume, progress=not quiet)
    if every_rank:
        model.save(f"{out}.rank{rank}")
    if rank == 0:
        model.card["training"]["processes"] = dist.get_world_size()
        if command is not None:
            model.card["training"]["command"] = command
        model.save(out)

r"""Multi-process data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

With :math:`W` processes and :math:`S` data shards (:math:`W \mid S`), process :math:`r` simulates shards
:math:`rS/W,\dots,(r+1)S/W-1` of every step's global batch. Each shard has the same size, so the mean of the
per-process mean losses is the global mean loss, and ``DistributedDataParallel``'s gradient average is the
gradient of the global batch: a run gives the same weights for any :math:`W` dividing :math:`S` (up to the order
of floating-point sums).

``distformer train CONFIG --nproc N`` starts ``N`` local processes (``distformer/launch.py``); ``torchrun
--nproc-per-node N -m distformer.cli train CONFIG --out OUT`` works too (``train`` joins the process group that
``torchrun``'s environment describes).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def rank_zero_decides(flag: bool, world: int) -> bool:
    """Rank 0's ``flag`` on every process (each process's clock differs, but all must stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(value, 0)
    return bool(value.item())

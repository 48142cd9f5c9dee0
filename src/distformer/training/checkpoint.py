"""Training checkpoints: one ``.safetensors`` file holding ``model.*``, ``optim.*``, ``rng.*`` and (for a run that
averages its weights) ``average.*`` tensors, with the training config, step and history as JSON in its metadata.

Nothing here unpickles, and the file is written atomically (``distformer.io``), so a crash mid-write leaves the
previous checkpoint intact. Model files are ``nn/serialization.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from ..io import atomic_write, contiguous_cpu

CHECKPOINT_FORMAT = "distformer-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model, optimizer: torch.optim.Optimizer, rng_states,
                    meta: dict[str, Any], average: dict[str, torch.Tensor] | None = None) -> None:
    """One-file training checkpoint: weights, optimizer state, data RNG states (one per data shard; a generator or
    a list of ``get_state()`` tensors), ``meta`` (JSON), and the weight average's state dict if there is one."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"average.{k}": v for k, v in (average or {}).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    states = [rng_states.get_state()] if isinstance(rng_states, torch.Generator) else list(rng_states)
    for i, state in enumerate(states):
        tensors["rng.data" if i == 0 else f"rng.data.{i}"] = state
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict()),
        "param_groups": json.dumps(opt["param_groups"]),
        "meta": json.dumps(meta),
    }
    atomic_write(path, save_bytes(contiguous_cpu(tensors), metadata=metadata))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a checkpoint at {path}, but there is none.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"Expected {path} to be a distformer checkpoint, but it could not be read ({e}).") from None
    if metadata.get("format") != CHECKPOINT_FORMAT or metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"Expected a {CHECKPOINT_FORMAT} version {FORMAT_VERSION} at {path}, but found "
                         f"{metadata.get('format')!r} version {metadata.get('format_version')!r}.")
    return tensors, metadata


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
    """Load optimizer state saved by :func:`save_checkpoint` into ``optimizer``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def model_from_checkpoint(path: str | Path, problem=None):
    """The model a checkpoint holds, as :func:`distformer.train` would have returned it at that step: the weight
    average where the run keeps one, else the weights; its card gives the training config, step, time and history,
    and, where ``problem`` is given (or the config names a registered problem), calibration and the training
    support that ``post.reliable`` needs. For a run that was stopped (a crash, a killed job) without writing its model."""
    from ..nn.transformer import DistributionTransformer, ModelConfig
    from .config import TrainConfig
    from .trainer import model_card

    tensors, metadata = load_checkpoint(path)
    meta = json.loads(metadata["meta"])
    config = TrainConfig.from_dict(meta["config"])
    prefix = "average." if any(k.startswith("average.") for k in tensors) else "model."
    model = DistributionTransformer(ModelConfig.from_dict(json.loads(metadata["model_config"])))
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    model.eval()
    if problem is None:
        try:
            problem = config.problem.build()
        except (KeyError, ValueError, TypeError):
            problem = None
    model.card = model_card(model, problem, config, meta["step"], meta["elapsed_s"], meta["history"])
    model.card["training"]["from_checkpoint"] = str(path)
    if problem is not None:
        model.__dict__["_card_problem"] = problem  # as distformer.train leaves it
    return model

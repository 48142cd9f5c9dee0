"""Model files: ``PATH.safetensors`` (weights) and ``PATH.json``
(``{"format": "distformer-model", "format_version": 1, "config": ..., "card": ..., "weights_sha256": ...}``).

Nothing here unpickles: weights are ``safetensors`` (tensors only), everything else is JSON, so loading a model
runs no code. A save over an existing model is all or nothing (:func:`save_model`), and a load checks the weights'
checksum, shapes and finiteness and the card against the configuration, each failure one ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..io import atomic_write, contiguous_cpu

MODEL_FORMAT = "distformer-model"
FORMAT_VERSION = 1


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, json)`` paths for a model stem, or for either of its two files."""
    path = Path(path)
    if path.suffix in {".safetensors", ".json"}:
        path = path.with_suffix("")
    # append, never replace: a stem such as "run.v2" must not lose its ".v2"
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _pending(json_path: Path) -> Path:
    return json_path.with_name(json_path.name + ".pending")


def save_model(model, path: str | Path) -> None:
    """Write ``model`` (a ``DistributionTransformer``) as ``path.safetensors`` + ``path.json``, all or nothing.

    The new JSON is written first beside the old one (``path.json.pending``), then the weights replace the old
    weights, then the JSON replaces the old JSON, each step atomic. Stopped after the first step, the old model
    loads as before; after the second, :func:`load_model` finds that the weights match the pending JSON and
    finishes the save. So an interrupted save over an existing model never leaves neither model loadable."""
    weights_path, json_path = model_paths(path)
    blob = save_bytes(contiguous_cpu(model.state_dict()), metadata={"format": MODEL_FORMAT})
    meta = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
            "card": model.card, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    pending = _pending(json_path)
    atomic_write(pending, (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode())
    atomic_write(weights_path, blob)
    os.replace(pending, json_path)


def load_model(path: str | Path):
    """Load a model written by :func:`save_model`; raises ``ValueError`` for a missing, truncated or altered file."""
    from .transformer import DistributionTransformer, ModelConfig  # the model module saves through this one

    weights_path, json_path = model_paths(path)
    for p in (weights_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"Expected model file {p}, but it does not exist.")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Expected {json_path} to be JSON written by distformer, but it does not parse ({e}).") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"Expected {json_path} to describe a {MODEL_FORMAT}, but its format is "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"Expected model format version {FORMAT_VERSION}, but {json_path} has version "
                         f"{meta.get('format_version')!r}; re-save it with a matching distformer.")
    if "card" not in meta or "config" not in meta:
        raise ValueError(f"Expected {json_path} to hold 'config' and 'card', but it has {sorted(meta)}.")
    blob = weights_path.read_bytes()
    digest = meta.get("weights_sha256")
    actual = hashlib.sha256(blob).hexdigest()
    if digest is not None and actual != digest:
        meta = _finished_save(json_path, actual)
        if meta is None:
            raise ValueError(f"Expected {weights_path} to match the checksum in {json_path.name}, but it differs "
                             "(truncated or altered file).")
    try:
        state = load_bytes(blob)
    except (SafetensorError, Exception) as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"Expected {weights_path} to be a safetensors file, but it could not be read ({e}).") from None
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"Expected a valid model configuration in {json_path}, but: {e}") from None
    model = DistributionTransformer(config, card=meta["card"])
    expected = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
             if k in expected and v.shape != expected[k].shape}
    if wrong:
        name, (got, want) = next(iter(wrong.items()))
        raise ValueError(f"Expected weights of the shapes {json_path.name} configures, but {len(wrong)} differ, e.g. "
                         f"{name}: {want} configured, {got} stored.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Expected weights for the configured model, but {weights_path} is missing {missing[:3]} "
                         f"and has unexpected {unexpected[:3]}.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"Expected finite weights, but {weights_path} has NaN or inf in {bad[:3]}.")
    if "support" in model.card:  # read now, so that a bad card fails at load rather than at the first posterior
        try:
            model.support._check_lengths(model.dim, dict(config.sources))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Expected the training support in {json_path} to match the model, but: {e}") from None
    return model.eval()


def _finished_save(json_path: Path, digest: str) -> dict | None:
    """The pending JSON of a save stopped between its last two steps (:func:`save_model`) when it matches the
    weights' checksum ``digest``, moved into place where the folder allows; else ``None``."""
    pending = _pending(json_path)
    try:
        meta = json.loads(pending.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("weights_sha256") != digest or "card" not in meta:
        return None
    try:
        os.replace(pending, json_path)
    except OSError:  # a read-only folder: load from the pending file without finishing the save
        pass
    return meta

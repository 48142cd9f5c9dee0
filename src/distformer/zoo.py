"""The model zoo: models shipped in ``distformer/pretrained/`` as ``NAME.safetensors`` (weights) + ``NAME.json``
(config and model card)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder() -> Path:
    return Path(str(resources.files("distformer"))) / "pretrained"


def pretrained_names() -> list[str]:
    """Names of the shipped models (those with both files present)."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.json") if p.with_suffix(".safetensors").is_file())


def pretrained_path(name: str) -> Path:
    if name not in pretrained_names():
        raise ValueError(f"Expected a pretrained model name among {pretrained_names()}, but got {name!r}.")
    return _folder() / name


def load_pretrained(name: str):
    """Load the shipped model ``name`` (no network)."""
    from .nn.serialization import load_model

    return load_model(pretrained_path(name))


def load_named_or_path(name_or_path: str):
    """A shipped model by name, otherwise a model saved at ``name_or_path`` (``distformer.load``)."""
    from .nn.serialization import load_model

    if name_or_path in pretrained_names():
        return load_pretrained(name_or_path)
    return load_model(name_or_path)


def describe(name: str) -> str:
    """One line: name, size, training time, and where in the repository its accuracy is measured (the card's
    ``results``: benchmark reports, never numbers copied into the card, which would go stale)."""
    import json

    meta = json.loads((_folder() / f"{name}.json").read_text())
    card, config = meta["card"], meta["config"]
    parts = [f"{name:24s}", f"D={config['dim']}", f"K={config['num_components']}",
             f"{card.get('num_parameters', 0) / 1e3:.0f}k params",
             f"trained {_training_seconds(card.get('training', {})) / 60:.1f} min"]
    if card.get("results"):
        parts.append("measured in " + ", ".join(card["results"]))
    return "  ".join(parts)


def _training_seconds(training: dict) -> float:
    """All training time of a card, a fine-tuned model's base run included (``total_time_s``)."""
    return training.get("total_time_s", training.get("time_s", float("nan")))

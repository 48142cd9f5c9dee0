"""Training: configuration, loop, checkpoints."""

from ..nn.serialization import load_model, save_model
from .config import ArchitectureConfig, ProblemConfig, TrainConfig
from .trainer import train

__all__ = ["ArchitectureConfig", "ProblemConfig", "TrainConfig", "train", "load_model", "save_model"]

"""Training: configuration, loop, checkpoints."""

from ..nn.serialization import load_model, save_model
from .checkpoint import model_from_checkpoint
from .config import ArchitectureConfig, ProblemConfig, TrainConfig
from .trainer import train

__all__ = ["ArchitectureConfig", "ProblemConfig", "TrainConfig", "train", "load_model", "save_model",
           "model_from_checkpoint"]

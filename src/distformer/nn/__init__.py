"""Neural network: chart tokens, embeddings, decoder, the Distribution Transformer."""

from .transformer import DistributionTransformer, ModelConfig

__all__ = ["DistributionTransformer", "ModelConfig"]

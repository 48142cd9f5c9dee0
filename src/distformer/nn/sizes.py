"""The transformer's sizes, declared once: :class:`~distformer.nn.ModelConfig` (a saved model's configuration),
:class:`~distformer.training.ArchitectureConfig` (what a training run builds) and the PFN baseline's config all
inherit them, so a default or a check changes in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields

SIZE_NAMES = ("d_model", "num_heads", "num_layers", "ff_dim", "hidden")


@dataclass(frozen=True, kw_only=True)
class NetworkSizes:
    """Token width ``d_model``, attention heads, decoder blocks, feed-forward width and the embedding MLPs' hidden
    width (keyword-only, so subclasses may add positional fields)."""

    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    ff_dim: int = 256
    hidden: int = 64

    def __post_init__(self) -> None:
        bad = {k: getattr(self, k) for k in SIZE_NAMES
               if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)}
        if bad:
            raise ValueError(f"Expected whole numbers for the network sizes {list(SIZE_NAMES)}, but got {bad}.")
        if min(self.d_model, self.num_heads, self.ff_dim, self.hidden) < 1 or self.num_layers < 0:
            raise ValueError(f"Expected d_model, num_heads, ff_dim, hidden >= 1 and num_layers >= 0, but got "
                             f"{self.network_sizes()}.")
        if self.d_model % self.num_heads:
            raise ValueError(f"Expected d_model divisible by num_heads, but got {self.d_model} and {self.num_heads}.")

    def network_sizes(self) -> dict[str, int]:
        """``{name: value}`` of the sizes alone, to build another config with the same network."""
        return {f.name: getattr(self, f.name) for f in fields(NetworkSizes)}

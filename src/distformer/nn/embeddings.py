r"""Token embeddings: mixture components, observations, and observation counts.

* Component token: :math:`t_k = \mathrm{MLP}_{\text{prior}}(c_k)` for the chart vector :math:`c_k` (``tokens.py``).
* Observation token of source ``s``: :math:`u_{s,i} = \mathrm{MLP}_s(z_{s,i})`, one token per data point; there
  are no positional encodings, so the model is invariant to the order of observations.
* Count token of source ``s``: :math:`\mathrm{MLP}^{\#}_s([\log(1+n_s),\ 1/(1+n_s)])`. Softmax attention
  averages over tokens and cannot count them; the count token tells the decoder how many observations are
  present (and gives it a memory token to attend to when a source has none).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .kernels import dense, gelu_tanh


Layers = Sequence[tuple[Tensor, Tensor]]  # an MLP's (weight (out, in), bias (out,)) pairs, first layer first


def mlp(x: Tensor, layers: Layers) -> Tensor:
    """``Linear -> GELU(tanh) -> ... -> Linear`` with the given weights: ``(..., in)`` -> ``(..., out)``."""
    for i, (weight, bias) in enumerate(layers):
        if i:
            x = gelu_tanh(x)
        x = dense(x, weight, bias)
    return x


class MLP(nn.Module):
    """``Linear -> GELU(tanh) -> ... -> Linear`` through ``sizes``; ``(..., sizes[0])`` -> ``(..., sizes[-1])``."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    @property
    def last(self) -> nn.Linear:
        return self.layers[-1]

    def weights(self) -> list[tuple[Tensor, Tensor]]:
        """The layers' ``(weight, bias)`` pairs, for :func:`mlp`."""
        return [(layer.weight, layer.bias) for layer in self.layers]

    def forward(self, x: Tensor) -> Tensor:
        return mlp(x, self.weights())


SOURCE_TRANSFORMS = ("identity", "asinh")


class SourceEmbedding(nn.Module):
    """Observation and count tokens for one source: values ``(B, N, E)`` -> ``(B, 1 + N, d_model)``."""

    def __init__(self, obs_dim: int, d_model: int, hidden: int, transform: str = "identity") -> None:
        super().__init__()
        self.values = MLP([obs_dim, hidden, hidden, d_model])
        self.count = MLP([2, hidden, d_model])
        self.asinh = transform == "asinh"

    def forward(self, values: Tensor, mask: Tensor,
                layers: tuple[Layers, Layers] | None = None) -> tuple[Tensor, Tensor]:
        """Returns tokens ``(B, 1 + N, d)`` and their key mask ``(B, 1 + N)`` (``True`` = attend); ``layers``
        replaces the weights of the value and count MLPs (``folded.py`` passes versions derived from them)."""
        value_layers, count_layers = layers or (self.values.weights(), self.count.weights())
        n = mask.sum(-1, keepdim=True).to(values.dtype)
        count_token = mlp(torch.cat([torch.log1p(n), 1.0 / (1.0 + n)], -1), count_layers).unsqueeze(-2)
        tokens = torch.cat([count_token, mlp(torch.asinh(values) if self.asinh else values, value_layers)], dim=-2)
        key_mask = torch.cat([torch.ones_like(mask[..., :1]), mask], dim=-1)
        return tokens, key_mask


def relative_values(values: Tensor, anchor: Tensor) -> Tensor:
    """``values`` ``(B, N, E)`` with their first ``W`` coordinates taken relative to the anchor source's first
    token ``anchor`` ``(B, M, W)``, ``W <= E``: :math:`v_{i,:W} - a_{1}` (for a translation-invariant likelihood,
    such as a stationary kernel's inputs against its query point)."""
    w = anchor.shape[-1]
    return torch.cat([values[..., :w] - anchor[..., :1, :], values[..., w:]], dim=-1)


def observation_tokens(sources: nn.ModuleDict, observations, relative_sources: dict[str, str] | None = None,
                       layers: Mapping[str, tuple[Layers, Layers]] | None = None) -> tuple[Tensor, Tensor]:
    """All sources' tokens ``(B, M, d)`` side by side, with their key mask ``(B, M)`` (``True`` = attend).
    ``relative_sources`` maps a source to the anchor source its leading coordinates are read relative to
    (:func:`relative_values`); the anchor itself is read relative to its own first token, so that moving both
    together changes no token. ``layers`` (source -> value and count MLP weights) replaces the sources' own."""
    tokens, masks = [], []
    relative = dict(relative_sources or {})
    relative |= {anchor: anchor for anchor in relative.values()}
    for name, embed in sources.items():
        values = observations.values[name]
        if name in relative:
            values = relative_values(values, observations.values[relative[name]])
        t, m = embed(values, observations.masks[name], None if layers is None else layers[name])
        tokens.append(t)
        masks.append(m)
    return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

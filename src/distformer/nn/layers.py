r"""Pre-norm transformer blocks: the decoder block over component tokens, and an optional encoder block over
observation tokens.

.. math::
    h \leftarrow h + \mathrm{SelfAttn}(\mathrm{LN}(h)),\quad
    h \leftarrow h + \mathrm{CrossAttn}(\mathrm{LN}(h), m),\quad
    h \leftarrow h + \mathrm{FF}(\mathrm{LN}(h)),

with :math:`\mathrm{Attn}(q, m) = \mathrm{softmax}(QK^\top/\sqrt{d_h} + \text{mask})V` per head. The self-attention
output projection and the last feed-forward layer start at zero (as in the paper), so each block starts as the
identity. Self-attention has no mask and no positions, so the block is equivariant to permuting components.

The encoder block (off by default, as in the paper's base model) lets observation tokens attend to each other
before the decoder reads them, :math:`m \leftarrow m + \mathrm{SelfAttn}(\mathrm{LN}(m))` with absent tokens
masked as keys, then :math:`m \leftarrow m + \mathrm{FF}(\mathrm{LN}(m))`: it can form pairwise features such
as the distance between two GP inputs, which per-token embeddings read by cross-attention cannot. It is
equivariant to permuting observations, so the posterior stays invariant to their order.

At batch size 1 the cost is dominated by per-operator dispatch, not arithmetic, so the forward passes call
``torch.nn.functional`` on the submodules' parameters (one fused QKV projection for self-attention) rather than
going through ``nn.Module.__call__`` for every linear layer.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .kernels import attention, dense, gelu_tanh


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return dense(x, layer.weight, layer.bias)


def layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _build(block: nn.Module, d_model: int, num_heads: int, ff_dim: int, cross: bool) -> None:
    """Give ``block`` its layers: self-attention, cross-attention if ``cross``, feed-forward (created in this order,
    so a seed gives the same initial weights as before the encoder existed); the self-attention output and the
    last feed-forward layer start at zero."""
    if d_model % num_heads:
        raise ValueError(f"Expected d_model divisible by num_heads, but got {d_model} and {num_heads}.")
    block.num_heads = num_heads
    block.norm_self = nn.LayerNorm(d_model)
    block.self_qkv = nn.Linear(d_model, 3 * d_model)
    block.self_out = nn.Linear(d_model, d_model)
    if cross:
        block.norm_cross = nn.LayerNorm(d_model)
        block.cross_q = nn.Linear(d_model, d_model)
        block.cross_kv = nn.Linear(d_model, 2 * d_model)
        block.cross_out = nn.Linear(d_model, d_model)
    block.norm_ff = nn.LayerNorm(d_model)
    block.ff_in = nn.Linear(d_model, ff_dim)
    block.ff_out = nn.Linear(ff_dim, d_model)
    for layer in (block.self_out, block.ff_out):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def _self_attention(block: nn.Module, h: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Residual pre-norm self-attention of ``block`` (``norm_self``, ``self_qkv``, ``self_out``) over ``h``
    ``(B, T, d)``; ``key_mask`` ``(B, T)`` (``True`` = attend) or ``None`` for all tokens."""
    nh = block.num_heads
    q, k, v = linear(block.self_qkv, layer_norm(block.norm_self, h)).chunk(3, dim=-1)
    return h + linear(block.self_out, attention(q, k, v, nh, key_mask))


def feed_forward(block: nn.Module, h: Tensor) -> Tensor:
    """Residual pre-norm feed-forward of ``block`` (``norm_ff``, ``ff_in``, ``ff_out``) on ``h`` ``(B, T, d)``."""
    return h + linear(block.ff_out, gelu_tanh(linear(block.ff_in, layer_norm(block.norm_ff, h))))


class DecoderBlock(nn.Module):
    """Self-attention among components, cross-attention to observations, feed-forward; all residual."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        _build(self, d_model, num_heads, ff_dim, cross=True)

    def forward(self, h: Tensor, memory: Tensor, key_mask: Tensor) -> Tensor:
        """``h`` ``(B, K, d)``, ``memory`` ``(B, M, d)``, ``key_mask`` ``(B, M)`` (``True`` = attend) -> ``(B, K, d)``."""
        nh = self.num_heads
        h = _self_attention(self, h)
        q = linear(self.cross_q, layer_norm(self.norm_cross, h))
        k, v = linear(self.cross_kv, memory).chunk(2, dim=-1)
        h = h + linear(self.cross_out, attention(q, k, v, nh, key_mask))
        return feed_forward(self, h)


class EncoderBlock(nn.Module):
    """Masked self-attention among observation tokens, then feed-forward; both residual, both starting at zero."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        _build(self, d_model, num_heads, ff_dim, cross=False)

    def forward(self, m: Tensor, key_mask: Tensor) -> Tensor:
        """``m`` ``(B, M, d)`` with ``key_mask`` ``(B, M)`` (``True`` = present; every row has one) -> ``(B, M, d)``."""
        return feed_forward(self, _self_attention(self, m, key_mask))

r"""The inference forward pass with each attention's projections folded into two matrices.

For one attention with ``H`` heads of width :math:`d_h = d/H`, query projection :math:`W_Q^h, b_Q^h`, key and value
projections :math:`W_K^h, b_K^h, W_V^h, b_V^h` (each :math:`d_h\times d`) and output
:math:`W_O = [W_O^1\,\cdots\,W_O^H]`, the score of query :math:`x` against memory token :math:`m_j` is

.. math::
    \frac{(W_Q^h x + b_Q^h)^\top (W_K^h m_j + b_K^h)}{\sqrt{d_h}}
    = m_j^\top \underbrace{(A_h x + c_h)}_{\tilde q_h} + \text{(terms constant in } j),\qquad
    A_h = \frac{W_K^{h\top} W_Q^h}{\sqrt{d_h}},\ c_h = \frac{W_K^{h\top} b_Q^h}{\sqrt{d_h}},

and terms constant in :math:`j` cancel in the softmax. With :math:`a_{hj}` the softmax weights (they sum to one),

.. math::
    \mathrm{out} = \sum_h W_O^h \sum_j a_{hj} (W_V^h m_j + b_V^h) + b_O
    = \sum_h B_h \bar m_h + (W_O b_V + b_O),\qquad B_h = W_O^h W_V^h,\ \bar m_h = \sum_j a_{hj} m_j .

So an attention is one ``(d -> H d)`` projection of the queries, two batched products with the memory and one
``(H d -> d)`` projection; the memory tokens are never projected. For the decoder's cross-attention that removes
the key/value projection of every observation token in every block, the largest matrix product of the forward
pass. The result is the same function as ``DistributionTransformer.forward`` (tested to 1e-10 in float64); it
differs only in float rounding. It is used under ``torch.inference_mode`` only: training and ``grad=True`` use the
unfolded forward, whose parameters the optimiser updates.

Folding trades the memory's key/value projections (:math:`2d^2` per memory token) for queries of width :math:`Hd`
instead of :math:`d`: per query, :math:`2Hd^2 + 2HdN` multiply-adds against :math:`2d^2 + 2dN` plus
:math:`2d^2` per memory token, for :math:`N` memory tokens. :func:`folding_pays` sums this over the model's
attentions. Batched inference folds only when the folded count is at most three times the unfolded one: fewer,
larger operators were worth that much at these sizes. Measured on the 2-core CPU, batch 2,000, chunks side by
side, folded / unfolded time (ratio of counts in brackets): ``linear-gaussian-2d`` 0.76 (1.1-1.6), ``quantum``
0.81 (1.7), ``gp-hyperprior-5d`` 0.90 (2.3), ``stochastic-volatility`` 0.98 (2.5), all width 64 with 4 heads;
``sensor-fusion`` (its 4-layer form, before the 2-layer one shipped), width 128 with 8 heads and 2 observation
tokens, 1.39 (4.6); the ratio of counts is the same for any depth.

The folded matrices are derived from the parameters; :func:`folded_weights` rebuilds them whenever a parameter
changed in place (an optimiser step, ``load_state_dict``), which the parameters' version counters record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .embeddings import observation_tokens
from .kernels import dense
from .layers import feed_forward, layer_norm
from .site import apply_site


@dataclass(frozen=True)
class FoldedAttention:
    """``query`` ``(H d, d)`` and ``query_bias`` ``(H d,)`` give :math:`\\tilde q`; ``output`` ``(d, H d)`` and
    ``output_bias`` ``(d,)`` map the head averages :math:`\\bar m` to the attention's output. ``heads`` (``H``) and
    ``width`` (``d``) are kept as ints, so that a trace holds them as constants rather than reading shapes."""

    query: Tensor
    query_bias: Tensor
    output: Tensor
    output_bias: Tensor
    heads: int
    width: int


def fold_attention(w_q: Tensor, b_q: Tensor, w_k: Tensor, w_v: Tensor, b_v: Tensor, out: nn.Linear,
                   num_heads: int) -> FoldedAttention:
    """Fold one attention's projections (module docstring); ``w_*`` are ``(d, d)``, ``b_*`` ``(d,)``."""
    d = w_q.shape[1]
    dh = d // num_heads
    scale = dh ** -0.5
    heads = [slice(h * dh, (h + 1) * dh) for h in range(num_heads)]
    query = torch.cat([w_k[s].T @ w_q[s] for s in heads]) * scale            # rows h*d..(h+1)*d hold A_h
    query_bias = torch.cat([w_k[s].T @ b_q[s] for s in heads]) * scale
    output = torch.cat([out.weight[:, s] @ w_v[s] for s in heads], dim=1)    # columns h*d..(h+1)*d hold B_h
    output_bias = out.weight @ b_v + out.bias
    return FoldedAttention(query.contiguous(), query_bias.contiguous(), output.contiguous(), output_bias,
                           num_heads, d)


def _fold_self(block: nn.Module) -> FoldedAttention:
    w, b = block.self_qkv.weight.chunk(3), block.self_qkv.bias.chunk(3)
    return fold_attention(w[0], b[0], w[1], w[2], b[2], block.self_out, block.num_heads)


def _fold_cross(block: nn.Module) -> FoldedAttention:
    w, b = block.cross_kv.weight.chunk(2), block.cross_kv.bias.chunk(2)
    return fold_attention(block.cross_q.weight, block.cross_q.bias, w[0], w[1], b[1], block.cross_out,
                          block.num_heads)


_ATTENTION_LAYERS = ("self_qkv", "self_out", "cross_q", "cross_kv", "cross_out")


def _attention_key(model: nn.Module) -> tuple:
    """Identity and version of every attention parameter, and their dtype and device: changes whenever a folded
    matrix would (reading ``_modules`` directly keeps this cheap enough for every batch-1 call)."""
    params = [layer._parameters[name] for block in (*model.encoder, *model.blocks)
              for layer in (block._modules.get(n) for n in _ATTENTION_LAYERS) if layer is not None
              for name in ("weight", "bias")]
    head = (params[0].dtype, params[0].device) if params else ()
    return (*head, *[(id(p), p._version) for p in params])


def folded_weights(model: nn.Module) -> tuple[list[FoldedAttention], list[tuple[FoldedAttention, FoldedAttention]]]:
    """The folded self-attention of each encoder block and (self, cross) of each decoder block, cached on the model
    and rebuilt when an attention parameter was replaced or changed in place, or moved to another dtype or
    device. The same object is returned until then, so callers can key their own caches on its identity."""
    key = _attention_key(model)
    cached = model.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in and out of inference mode
            folded = ([_fold_self(b) for b in model.encoder], [(_fold_self(b), _fold_cross(b)) for b in model.blocks])
        cached = (key, folded)
        model.__dict__["_folded"] = cached  # kept out of the module tree and the state dict
    return cached[1]


def folded_attend(x: Tensor, memory: Tensor, w: FoldedAttention, bias: Tensor | None) -> Tensor:
    """Attention of queries ``x`` ``(B, T, d)`` over ``memory`` ``(B, M, d)`` with additive ``bias`` ``(B, M, 1)``
    (``-inf`` where a token is absent) or ``None``; returns the output projection ``(B, T, d)``.

    Scores are laid out keys-first, ``(B, M, T H)``: the softmax then runs over a strided dimension with the
    queries contiguous, which CPU kernels vectorise far better than a softmax over a last dimension of a few keys
    (measured 3x faster for the 4 component tokens)."""
    q = dense(x, w.query, w.query_bias).unflatten(-1, (w.heads, w.width)).flatten(1, 2)  # (B, T H, d)
    scores = torch.bmm(memory, q.transpose(1, 2))                                        # (B, M, T H)
    if bias is not None:
        scores = scores + bias
    averages = torch.bmm(torch.softmax(scores, 1).transpose(1, 2), memory)              # (B, T H, d)
    return dense(averages.unflatten(1, (-1, w.heads)).flatten(2), w.output, w.output_bias)


def attention_multiply_adds(model: nn.Module, num_components: int, num_memory: int, folded: bool) -> int:
    """Multiply-adds per problem of the model's attentions (projections, scores and averages; feed-forward
    layers cost the same either way) for ``num_components`` component tokens and ``num_memory`` observation tokens,
    folded or not (module docstring)."""
    d, H = model.config.d_model, model.config.num_heads

    def attention(queries: int, memory: int) -> int:
        if folded:
            return queries * (2 * H * d * d + 2 * H * d * memory)
        return 2 * d * d * (queries + memory) + 2 * d * queries * memory

    K, N = num_components, num_memory
    return (model.config.encoder_layers * attention(N, N)
            + model.config.num_layers * (attention(K, K) + attention(K, N)))


def folding_pays(model: nn.Module, num_components: int, num_memory: int) -> bool:
    """Whether batched inference should run :func:`folded_forward`: its attention multiply-adds are at most three
    times the unfolded forward's (module docstring)."""
    return (attention_multiply_adds(model, num_components, num_memory, True)
            <= 3 * attention_multiply_adds(model, num_components, num_memory, False))


def folded_forward(model: nn.Module, chart: Tensor, observations) -> Tensor:
    """``DistributionTransformer.forward`` with folded attention: posterior chart ``(B, K, C)`` from prior chart
    ``(B, K, C)`` and observations with batch ``(B,)``."""
    encoder, decoder = folded_weights(model)
    tokens, key_mask = observation_tokens(model.sources, observations, model.config.relative_sources)
    bias = torch.zeros(key_mask.shape, dtype=tokens.dtype, device=tokens.device).masked_fill_(
        ~key_mask, -torch.inf).unsqueeze(-1)
    for block, w in zip(model.encoder, encoder):
        x = layer_norm(block.norm_self, tokens)
        tokens = feed_forward(block, tokens + folded_attend(x, x, w, bias))
    memory = layer_norm(model.memory_norm, tokens)
    h = model.prior_embedding(chart)
    for block, (w_self, w_cross) in zip(model.blocks, decoder):
        x = layer_norm(block.norm_self, h)
        h = h + folded_attend(x, x, w_self, None)
        h = h + folded_attend(layer_norm(block.norm_cross, h), memory, w_cross, bias)
        h = feed_forward(block, h)
    return apply_site(chart, model.head(layer_norm(model.final_norm, h)), model.dim)

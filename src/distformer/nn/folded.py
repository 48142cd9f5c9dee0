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

Layer norms on a centred residual stream. Every token stream (the component tokens, and the observation tokens
before the memory norm) is read only through layer norms, :math:`\mathrm{LN}(h) = \gamma\odot(h - \bar h)/
\sqrt{\mathrm{var}(h) + \epsilon} + \beta`, which ignore the stream's mean :math:`\bar h`. So each write into a stream
(an embedding's last layer, an attention's or feed-forward's output) may have its mean removed,
:math:`W \leftarrow (I - \tfrac1d\mathbf 1\mathbf 1^\top)W`, :math:`b \leftarrow b - \bar b`, without changing the
function; the streams then stay centred and each layer norm is an RMS normalisation
:math:`n = h/\sqrt{\overline{h^2} + \epsilon}`. Its affine folds into what reads it:

.. math::
    W(\gamma\odot n + \beta) + b = (W\operatorname{diag}\gamma)\,n + (W\beta + b),

for a linear layer or a query projection; for attention over a memory :math:`\gamma_m\odot n_j + \beta_m`, the
scores :math:`(\gamma_m\odot n_j)^\top\tilde q + \beta_m^\top\tilde q` lose the second term (constant in :math:`j`),
so :math:`\gamma_m` scales the rows of each :math:`A_h`; and since the softmax weights sum to one the averages are
:math:`\gamma_m\odot\bar n_h + \beta_m`, so :math:`\gamma_m` scales the columns of each :math:`B_h` and
:math:`\sum_h B_h\beta_m` joins the output bias. Tested to 1e-10 in float64 against the training forward. Why:
an RMS normalisation written out avoids torch's layer-norm CPU kernel, which is slow for rows as short as the
model's width (``kernels.normalised`` keeps the single operator where per-operator dispatch dominates).

The folded matrices are derived from the parameters; :func:`folded_weights` rebuilds them whenever a parameter
changed in place (an optimiser step, ``load_state_dict``), which the parameters' version counters record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .embeddings import Layers, mlp, observation_tokens
from .kernels import dense, gelu_tanh, normalised
from .site import apply_site
from .structure import framed, moved, prior_features


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


@dataclass(frozen=True)
class FoldedBlock:
    """A block on a centred stream (module docstring): ``attention`` reads the RMS-normalised stream (eps
    ``eps[0]``) as queries and memory; ``cross`` (decoder blocks) reads it (eps ``eps[1]``) against the
    normalised observation memory; the feed-forward ``ff_in`` reads it (eps ``eps[2]``). Outputs are centred."""

    attention: FoldedAttention
    cross: FoldedAttention | None
    ff_in: tuple[Tensor, Tensor]
    ff_out: tuple[Tensor, Tensor]
    eps: tuple[float, float, float]


@dataclass(frozen=True)
class FoldedModel:
    """Everything :func:`folded_forward` reads: per source the value and count MLPs (last layers centred), the prior
    embedding (last layer centred), the encoder and decoder blocks, the memory norm's eps, and the head (first
    layer with the final norm folded in, eps ``final_eps``)."""

    embeddings: dict[str, tuple[Layers, Layers]]
    prior_embedding: Layers
    encoder: list[FoldedBlock]
    decoder: list[FoldedBlock]
    memory_eps: float
    head: Layers
    final_eps: float


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


def _centred(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A linear layer ``(out, in)``, ``(out,)`` whose outputs have their mean over ``out`` removed."""
    return (weight - weight.mean(0, keepdim=True)).contiguous(), bias - bias.mean()


def _reading(norm: nn.LayerNorm, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A linear layer ``(out, d)`` applied to ``norm``'s output, as one applied to the normalised input."""
    return (weight * norm.weight).contiguous(), bias + weight @ norm.bias


def _normalised_attention(w: FoldedAttention, query_norm: nn.LayerNorm, memory_norm: nn.LayerNorm) -> FoldedAttention:
    """``w`` with queries ``query_norm(h)`` and memory ``memory_norm(m)`` as an attention over the normalised
    ``h`` and ``m`` with a centred output (module docstring)."""
    H, d = w.heads, w.width
    g, b = memory_norm.weight, memory_norm.bias
    query, query_bias = _reading(query_norm, (w.query.view(H, d, d) * g[:, None]).reshape(H * d, d),
                                 (w.query_bias.view(H, d) * g).reshape(H * d))
    output, output_bias = _centred((w.output.view(d, H, d) * g).reshape(d, H * d),
                                   w.output_bias + w.output.view(d, H, d).sum(1) @ b)
    return replace(w, query=query, query_bias=query_bias, output=output, output_bias=output_bias)


def _fold_block(block: nn.Module, memory_norm: nn.LayerNorm | None) -> FoldedBlock:
    w, b = block.self_qkv.weight.chunk(3), block.self_qkv.bias.chunk(3)
    attention = fold_attention(w[0], b[0], w[1], w[2], b[2], block.self_out, block.num_heads)
    cross, cross_eps = None, 0.0
    if memory_norm is not None:
        w, b = block.cross_kv.weight.chunk(2), block.cross_kv.bias.chunk(2)
        cross = _normalised_attention(fold_attention(block.cross_q.weight, block.cross_q.bias, w[0], w[1], b[1],
                                                     block.cross_out, block.num_heads), block.norm_cross, memory_norm)
        cross_eps = block.norm_cross.eps
    return FoldedBlock(_normalised_attention(attention, block.norm_self, block.norm_self), cross,
                       _reading(block.norm_ff, block.ff_in.weight, block.ff_in.bias),
                       _centred(block.ff_out.weight, block.ff_out.bias),
                       (block.norm_self.eps, cross_eps, block.norm_ff.eps))


def _centred_last(layers: Layers) -> Layers:
    return [*layers[:-1], _centred(*layers[-1])]


_FOLDED_FROM = ("prior_embedding", "sources", "memory_norm", "final_norm", "head", "encoder", "blocks")


def _parameter_slots(model: nn.Module) -> tuple[tuple, list[tuple[dict, str]]]:
    """The identities of the submodules the folded model derives from, and each of their parameters as a
    ``(module._parameters, name)`` slot, cached on the model until a submodule is replaced."""
    tops = tuple(id(model._modules[name]) for name in _FOLDED_FROM)
    cached = model.__dict__.get("_parameter_slots")
    if cached is None or cached[0] != tops:
        slots = [(m._parameters, n) for name in _FOLDED_FROM for m in model._modules[name].modules()
                 for n, p in m._parameters.items() if p is not None]
        cached = (tops, slots)
        model.__dict__["_parameter_slots"] = cached
    return cached


def _parameters_key(model: nn.Module) -> tuple:
    """Identity and version of every parameter the folded model derives from, and their dtype and device: changes
    whenever a folded matrix would (a parameter replaced or changed in place, a submodule replaced; cheap enough
    for every batch-1 call)."""
    tops, slots = _parameter_slots(model)
    params = [parameters[name] for parameters, name in slots]
    return (tops, params[0].dtype, params[0].device, tuple(map(id, params)), [p._version for p in params])


def folded_weights(model: nn.Module) -> FoldedModel:
    """The model's weights as :func:`folded_forward` reads them, cached on the model and rebuilt when a parameter
    was replaced or changed in place, or moved to another dtype or device. The same object is returned until
    then, so callers can key their own caches on its identity."""
    key = _parameters_key(model)
    cached = model.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in and out of inference mode
            head = model.head.weights()
            folded = FoldedModel(
                embeddings={name: (_centred_last(s.values.weights()), _centred_last(s.count.weights()))
                            for name, s in model.sources.items()},
                prior_embedding=_centred_last(model.prior_embedding.weights()),
                encoder=[_fold_block(b, None) for b in model.encoder],
                decoder=[_fold_block(b, model.memory_norm) for b in model.blocks],
                memory_eps=model.memory_norm.eps,
                head=[_reading(model.final_norm, *head[0]), *head[1:]],
                final_eps=model.final_norm.eps)
        cached = (key, folded)
        model.__dict__["_folded"] = cached  # kept out of the module tree and the state dict
    return cached[1]


def folded_attend(x: Tensor, memory: Tensor, w: FoldedAttention, bias: Tensor | None) -> Tensor:
    """Attention of queries ``x`` ``(B, T, d)`` over ``memory`` ``(B, M, d)`` with additive ``bias`` ``(B, M, 1)``
    (``-inf`` where a token is absent) or ``None``; returns the output projection ``(B, T, d)``.

    Scores are laid out keys-first, ``(B, M, T H)``: the softmax then runs over a strided dimension with the
    queries contiguous, which CPU kernels vectorise far better than a softmax over a last dimension of a few
    keys. The bias is added inside the score product (``baddbmm``),
    which costs no pass of its own."""
    q = dense(x, w.query, w.query_bias).unflatten(-1, (w.heads, w.width)).flatten(1, 2)  # (B, T H, d)
    keys_first = q.transpose(1, 2)
    scores = torch.bmm(memory, keys_first) if bias is None else torch.baddbmm(bias, memory, keys_first)  # (B, M, T H)
    averages = torch.bmm(torch.softmax(scores, 1).transpose(1, 2), memory)              # (B, T H, d)
    return dense(averages.unflatten(1, (-1, w.heads)).flatten(2), w.output, w.output_bias)


def _feed_forward(w: FoldedBlock, h: Tensor) -> Tensor:
    return h + dense(gelu_tanh(dense(normalised(h, w.eps[2]), *w.ff_in)), *w.ff_out)


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


def folded_forward(model: nn.Module, chart: Tensor, observations, frame: tuple | None = None) -> Tensor:
    """``DistributionTransformer.forward`` with folded attention on centred streams: posterior chart ``(B, K, C)``
    from prior chart ``(B, K, C)`` and observations with batch ``(B,)``; ``frame``: ``structure.framed`` of them
    where the caller has it."""
    w = folded_weights(model)
    config = model.config
    chart, observations, shift = framed(config, chart, observations) if frame is None else frame
    tokens, key_mask = observation_tokens(model.sources, observations, config.relative_sources, w.embeddings)
    bias = torch.zeros(key_mask.shape, dtype=tokens.dtype, device=tokens.device).masked_fill_(
        ~key_mask, -torch.inf).unsqueeze(-1)
    for block in w.encoder:
        x = normalised(tokens, block.eps[0])
        tokens = _feed_forward(block, tokens + folded_attend(x, x, block.attention, bias))
    memory = normalised(tokens, w.memory_eps)
    h = mlp(prior_features(chart, model.dim) if config.bounded_prior_features else chart, w.prior_embedding)
    for block in w.decoder:
        x = normalised(h, block.eps[0])
        h = h + folded_attend(x, x, block.attention, None)
        h = h + folded_attend(normalised(h, block.eps[1]), memory, block.cross, bias)
        h = _feed_forward(block, h)
    out = apply_site(chart, mlp(normalised(h, w.final_eps), w.head), model.dim, config.site_evidence)
    return out if shift is None else moved(out, shift, model.dim)

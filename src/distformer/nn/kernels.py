r"""Four exact shortcuts for inference on a CPU, each with its plain form for training and tracing.

* Tanh-approximated GELU, :math:`\tfrac12 x\,(1 + \tanh(u))` with :math:`u = \sqrt{2/\pi}\,(x + 0.044715x^3)`,
  evaluated as the equal :math:`x\,\sigma(2u)` (:math:`\tfrac12(1+\tanh u) = \sigma(2u)`) in place, fewer
  passes over memory than ``F.gelu(approximate="tanh")``.
* A linear layer :math:`xW^\top + b` as a matrix product followed by an in-place bias add: ``F.linear`` first
  copies the bias into every output row and then accumulates the product onto it. Which of the two is faster
  depends on the CPU and the shapes, so :func:`bias_add_pays` times both once per process and :func:`dense` takes
  the faster; both add the same bias to the same product.
* Normalisation of a centred ``x`` (mean zero over the last dimension, as on ``folded.py``'s streams),
  :math:`x/\sqrt{\overline{x^2} + \epsilon}`: written out as its four elementwise operators, where
  ``F.layer_norm`` (without affine, the same function for a centred ``x``) is one operator whose CPU kernel is slow
  for rows as short as the model's width.

* Multi-head attention over a short memory, :math:`\mathrm{softmax}_j(q_{h}^\top k_{hj}/\sqrt{d_h} + b_j)\,v_{hj}`,
  for at most ``MAX_SHORT_MEMORY`` keys (the ``K`` component tokens, or a few sensor tokens): the scores of a
  query against each key are an elementwise product summed over the head width, laid out keys-first
  ``(B, M, T, H)`` so that the softmax runs over a strided axis with the queries contiguous. On one thread, for 2 to
  8 keys, 4 queries, 4 or 8 heads of width 16 and batches of 32 to 512, it took 0.28-0.87 of the time of
  ``F.scaled_dot_product_attention``, whose CPU kernel and last-axis softmax are built for long sequences; on two
  threads, batch 100 and 4 keys, 0.41. Its broadcast product ``(B, M, T, H, d_h)`` is what it costs: above
  ``MAX_SHORT_PRODUCT`` entries (batch 2,048 with 6 keys on two threads took 1.6x the time) torch's kernel is used.

The first two and the normalisation take the shortcut only without autograd, for tensors of at least 4,096
entries; the attention shortcut only without autograd, for at most ``MAX_SHORT_MEMORY`` keys and
``MAX_SHORT_PRODUCT`` product entries;
all four only outside tracing and compiling (a trace keeps the branch it saw; small tensors are dominated by
dispatch, where one operator beats several; a compiler fuses the plain forms). The exception is a trace recorded
under ``shortcuts_in_trace`` (``distributions/small_linalg.py``), which keeps those three whatever the example's
size: it is for large chunks only, and each shortcut computes the same function at any size.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor
from torch.nn import functional as F

from ..distributions.small_linalg import tracing_with_shortcuts

_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715 * _GELU_K
MIN_SHORTCUT_SIZE = 4096
MAX_SHORT_MEMORY = 8
MAX_SHORT_PRODUCT = 2**20


def _capturing() -> bool:
    """Whether a graph is being recorded: a TorchScript trace, or ``torch.compile`` / ``torch.export`` (whose graph
    must not branch on a batch size it keeps symbolic; their compiler fuses the plain forms itself)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _shortcut(x: Tensor) -> bool:
    if torch.is_grad_enabled():
        return False
    if tracing_with_shortcuts():
        return True
    return not _capturing() and x.numel() >= MIN_SHORTCUT_SIZE


def gelu_tanh(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")`` (module docstring)."""
    if not _shortcut(x):
        return F.gelu(x, approximate="tanh")
    k = torch.full((), _GELU_K, dtype=x.dtype, device=x.device)
    return torch.addcmul(k, x, x, value=_GELU_A).mul_(x).sigmoid_().mul_(x)


_BIAS_ADD_PAYS: dict[str, bool] = {}  # "cpu" -> bias_add_pays()'s answer, measured once per process


def bias_add_pays() -> bool:
    """Whether a matrix product followed by an in-place bias add is faster than ``F.linear`` on this CPU: timed
    once per process on a ``(2048, 32) x (32, 128)`` product with its bias (the shape of a chunk's largest products),
    interleaved, median of 15 calls each. Not measured while a graph is recorded (the timing would be recorded with
    it): there the answer so far, or the product and add, is used; ``DistributionTransformer`` asks before it
    traces."""
    answer = _BIAS_ADD_PAYS.get("cpu")
    if answer is not None:
        return answer
    if _capturing():
        return True
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2048, 32), (128, 32), (128,)))
    forms = (lambda: torch.matmul(x, weight.t()).add_(bias), lambda: F.linear(x, weight, bias))
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for repeat in range(18):
            for form, record in zip(forms, times):
                start = time.perf_counter()
                form()
                if repeat >= 3:  # the first calls warm up
                    record.append(time.perf_counter() - start)
    answer = statistics.median(times[0]) < statistics.median(times[1])
    _BIAS_ADD_PAYS["cpu"] = answer
    return answer


def dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``(..., in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)`` (module
    docstring)."""
    if bias is None or not _shortcut(x) or x.device.type != "cpu" or not bias_add_pays():
        return F.linear(x, weight, bias)
    return torch.matmul(x, weight.t()).add_(bias)


def normalised(x: Tensor, eps: float) -> Tensor:
    """:math:`x/\\sqrt{\\overline{x^2} + \\epsilon}` over the last dimension of a centred ``x`` (module docstring)."""
    if not _shortcut(x):
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, T, d)`` -> ``(B, h, T, d / h)``."""
    B, T, d = x.shape
    return x.view(B, T, num_heads, d // num_heads).transpose(1, 2)


def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, key_mask: Tensor | None = None) -> Tensor:
    """Multi-head attention of queries ``q`` ``(B, T, d)`` over keys ``k`` and values ``v`` ``(B, M, d)``, heads
    merged back: ``(B, T, d)``. ``key_mask`` ``(B, M)`` is ``True`` where a key is present (every row needs one)
    or ``None`` for all keys (module docstring)."""
    B, T, d = q.shape
    M = k.shape[1]
    if (torch.is_grad_enabled() or _capturing() or M > MAX_SHORT_MEMORY
            or q.numel() * M > MAX_SHORT_PRODUCT):
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                                           _split_heads(v, num_heads), attn_mask=mask)
        return y.transpose(1, 2).reshape(B, T, d)
    width = d // num_heads
    scores = (q.view(B, 1, T, num_heads, width) * k.view(B, M, 1, num_heads, width)).sum(-1)   # (B, M, T, H)
    scores = scores.mul_(1.0 / math.sqrt(width))
    if key_mask is not None:
        scores = scores.masked_fill_(~key_mask.view(B, M, 1, 1), -torch.inf)
    weights = torch.softmax(scores, 1).unsqueeze(-1)                                          # (B, M, T, H, 1)
    return (weights * v.view(B, M, 1, num_heads, width)).sum(1).view(B, T, d)

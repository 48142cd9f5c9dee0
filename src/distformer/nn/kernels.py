r"""Two elementwise-exact shortcuts for inference on a CPU, each with its plain form for training and tracing.

* Tanh-approximated GELU, :math:`\tfrac12 x\,(1 + \tanh(u))` with :math:`u = \sqrt{2/\pi}\,(x + 0.044715x^3)`,
  evaluated as the equal :math:`x\,\sigma(2u)` (:math:`\tfrac12(1+\tanh u) = \sigma(2u)`) in place: about twice
  as fast as ``F.gelu(approximate="tanh")`` on this project's CPUs.
* A linear layer :math:`xW^\top + b` as a matrix product followed by an in-place bias add: ``F.linear`` first
  copies the bias into every output row and then accumulates the product onto it, which for the model's
  ``(n, 64) x (64, 256)`` shapes measured 1.8x the time of the product and add.

Both take the shortcut only without autograd, for tensors of at least 4,096 entries, and outside tracing (a trace
keeps the branch it saw; small tensors are dominated by dispatch, where one operator beats several).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715 * _GELU_K
MIN_SHORTCUT_SIZE = 4096


def _shortcut(x: Tensor) -> bool:
    return x.numel() >= MIN_SHORTCUT_SIZE and not torch.is_grad_enabled() and not torch.jit.is_tracing()


def gelu_tanh(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")`` (module docstring)."""
    if not _shortcut(x):
        return F.gelu(x, approximate="tanh")
    k = torch.full((), _GELU_K, dtype=x.dtype, device=x.device)
    return torch.addcmul(k, x, x, value=_GELU_A).mul_(x).sigmoid_().mul_(x)


def dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``(..., in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)`` (module
    docstring)."""
    if bias is None or not _shortcut(x):
        return F.linear(x, weight, bias)
    return torch.matmul(x, weight.t()).add_(bias)

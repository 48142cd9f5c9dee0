r"""The inference engine: which forward pass computes a posterior chart, with what, and when.

Every path computes the one function of :meth:`DistributionTransformer.forward
<distformer.nn.transformer.DistributionTransformer.forward>` (``transformer.py`` with the blocks of ``layers.py``,
the exact structure of ``structure.py`` and the head of ``site.py``), the *reference forward*. :func:`decode` picks:

====================================  ===============================================================================
condition                             path
====================================  ===============================================================================
autograd wanted (``grad=True``)       the reference forward
``n <= model.traced_batch_size``      the folded forward (``folded.py``) as one TorchScript trace
larger batches, folding pays          chunks of ``model.chunk_size`` (``chunks.py``) of the folded forward traced with
(``folded.folding_pays``)             the large-batch forms (``kernels.py``, ``distributions/small_linalg.py``)
larger batches otherwise              chunks of the reference forward
====================================  ===============================================================================

Where TorchScript is unavailable or fails to trace (it is deprecated in recent torch), and under
:func:`without_torchscript`, the folded forward runs eagerly instead: slower, the same function. The exported update
(``export.py``) is the folded forward too, with the same rule for empty data sets as ``inference.py``.

Thresholds and where they live: ``traced_batch_size``, ``chunk_size`` and ``chunk_workers`` (attributes of the
model, ``transformer.py``); ``folding_pays`` (an operation count, ``folded.py``); ``MIN_SHORTCUT_SIZE``,
``MAX_SHORT_MEMORY``, ``MAX_SHORT_PRODUCT`` and the once-per-process timing ``bias_add_pays`` (``kernels.py``);
``MAX_UNROLLED_DIM`` and ``MIN_UNROLLED_BATCH`` (``distributions/small_linalg.py``, whose written-out factors serve
any caller). None changes the function, only its speed.

**A change to the model's function** is made in the reference forward, then in ``folded.py`` (which folds the
same weights into fewer operators) and, for the site head, in ``site.py``'s two forms. The float64 identity tests
(``tests/test_transformer.py``, ``tests/test_inference_paths.py``) hold every path here to the reference forward
and name the module that disagrees.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, nn

from ..distributions.small_linalg import ThreadFlag, shortcuts_in_trace
from ..observations import Observations
from .chunks import map_chunks
from .folded import folded_forward, folded_weights, folding_pays
from .kernels import bias_add_pays
from .tokens import _tril_index, chart_size

# Within ``with without_torchscript():`` (in this thread) the engine runs the folded forward eagerly, as where
# TorchScript is gone: for tests of that path and for comparing speed.
without_torchscript = ThreadFlag()


def decode(model, chart: Tensor, obs: Observations, grad: bool) -> Tensor:
    """The network's posterior chart ``(n, K, C)`` for charts ``(n, K, C)`` and a flat batch of ``n`` data sets,
    by the path of the module docstring's table."""
    if grad:
        out = model.forward(chart, obs)
    elif chart.shape[0] <= model.traced_batch_size:
        out = inference_forward(model)(chart, obs)
    else:  # chunks keep the activations in cache; with several threads, chunks run side by side
        memory = sum(v.shape[-2] for v in obs.values.values())
        forward = inference_forward(model, chunks=True) if folding_pays(model, chart.shape[1], memory) \
            else model.forward
        out = map_chunks(forward, chart, obs, model.chunk_size, model.chunk_workers)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("Expected the model to produce a finite posterior, but it produced NaN or "
                                 "inf; the prior or the data are probably far outside its training family "
                                 f"({model.card.get('problem', {}).get('meta_prior', 'see model.card')}).")
    return out


def inference_forward(model, chunks: bool = False):
    """The folded forward as ``f(chart, observations)``: traced with TorchScript where that works, else eager.

    At batch size 1 the eager forward spends most of its time in Python dispatch; the traced graph runs the same
    operators (shapes stay symbolic, so any batch size, ``K`` and ``N`` work) with less overhead. With ``chunks``
    the trace records the forms meant for large batches (the in-place GELU and bias add of ``kernels.py``, the
    written-out Cholesky factors of ``small_linalg.py``), for the chunks that ``map_chunks`` runs side by side: a
    traced graph runs without holding Python's interpreter lock, so the workers wait on each other less.
    The trace holds the folded attention matrices as constants, so it is made again whenever they are rebuilt (a
    parameter changed in place, or its dtype or device changed). It is cached on the model, outside its module
    tree and state dict.
    """
    if without_torchscript.on:
        return lambda chart, obs: folded_forward(model, chart, obs)
    folded = folded_weights(model)
    key = "_traced_chunks" if chunks else "_traced"
    cached = model.__dict__.get(key)
    if cached is None or cached[0] is not folded:
        weight = model.prior_embedding.last.weight
        _tril_index(model.dim, str(weight.device))  # cached first: the trace then holds it as a constant
        bias_add_pays()  # measured before tracing, which records the faster form of the linear layers
        with shortcuts_in_trace() if chunks else contextlib.nullcontext():
            cached = (folded, trace(model, weight))
        model.__dict__[key] = cached
    traced = cached[1]
    if traced is None:
        return lambda chart, obs: folded_forward(model, chart, obs)
    names = list(model.config.sources)
    return lambda chart, obs: traced(chart, *[obs.values[n] for n in names], *[obs.masks[n] for n in names])


def trace(model, weight: Tensor, forward=None):
    """TorchScript trace of ``forward(chart, observations)`` (default: the model's folded forward) taking
    ``(chart, *values, *masks)``, on example tensors of ``weight``'s dtype and device; ``None`` where tracing
    fails."""
    names = list(model.config.sources)
    forward = forward or (lambda chart, obs: folded_forward(model, chart, obs))

    class _Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, chart, *tensors):
            values, masks = tensors[:len(names)], tensors[len(names):]
            return forward(chart, Observations(dict(zip(names, values)), dict(zip(names, masks))))

    chart = torch.zeros(2, 3, chart_size(model.dim), dtype=weight.dtype, device=weight.device)
    values = [torch.zeros(2, 5, e, dtype=weight.dtype, device=weight.device) for e in model.config.sources.values()]
    masks = [torch.ones(2, 5, dtype=torch.bool, device=weight.device) for _ in names]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(_Flat(), (chart, *values, *masks), check_trace=False)
    except Exception:  # tracing is an optimisation only; the eager forward is always correct
        return None

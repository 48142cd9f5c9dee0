r"""The inference engine: which forward pass computes a posterior chart, with what, and when.

Every path computes the one function of :meth:`DistributionTransformer.forward
<distformer.nn.transformer.DistributionTransformer.forward>` (``transformer.py`` with the blocks of ``layers.py``,
the exact structure of ``structure.py`` and the head of ``site.py``), the *reference forward*. :func:`decode` picks:

====================================  ===============================================================================
condition                             path
====================================  ===============================================================================
autograd wanted (``grad=True``)       the reference forward
``n <= model.traced_batch_size``      the folded forward (``folded.py``) as one TorchScript trace; for
                                      ``posterior`` with a GMM prior and data in every data set, the whole
                                      update (chart in and out, the check) as one trace
                                      (:func:`small_batch_update`)
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

from ..distributions.small_linalg import ThreadFlag, factors_in_trace, shortcuts_in_trace
from ..observations import Observations
from .chunks import map_chunks
from .folded import folded_forward, folded_weights, folding_pays
from .kernels import bias_add_pays
from .structure import framed
from .support import REASONS, flagged_by
from .tokens import LOG_WEIGHT_FLOOR, _tril_index, chart_from_parts, chart_size, parts_from_chart

# Within ``with without_torchscript():`` (in this thread) the engine runs the folded forward eagerly, as where
# TorchScript is gone: for tests of that path and for comparing speed.
without_torchscript = ThreadFlag()


def not_finite(model) -> FloatingPointError:
    """The error for a network chart with NaN or inf, naming the model's training family."""
    family = model.card.get("problem", {}).get("meta_prior", "see model.card")
    return FloatingPointError(f"Expected the model to produce a finite posterior, but it produced NaN or inf; the "
                              f"prior or the data are probably far outside its training family ({family}).")


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
        raise not_finite(model)
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


class SmallBatchUpdate(nn.Module):
    """The whole update of a small batch as one function of tensors, for one trace: the chart encoding, the folded
    forward, Bayes' rule for the weights the chart floors, the chart decoding and, with a ``support``, its
    per-problem check, so that a batch-1 ``posterior`` runs one traced graph between its input checks and the
    mixture it returns. The check judges the problem in the frame the forward computed
    (``TrainingSupport.outside_framed``) where the support shares the network's frame, else by ``support.py``'s
    torch form. The trace records the written-out small factors
    (``small_linalg.factors_in_trace``) and is frozen and optimised for inference (``torch.jit.freeze``): at batch
    size 1 each saves about a tenth of the graph's time.

    ``forward(log_weights (n, K), loc (n, K, D), scale_tril (n, K, D, D), *values, *masks)`` gives the posterior's
    ``(log_weights, loc, scale_tril)``, ``finite`` (a boolean scalar: the network's chart had no NaN or inf) and,
    with a support, ``reliable`` ``(n,)`` and the reasons of ``support.REASONS`` ``(n,)`` each (``True`` where
    that reason fired; reliable where none did). Every data set must hold an observation (``inference.py`` sends
    the others elsewhere)."""

    def __init__(self, model, support) -> None:
        super().__init__()
        self.model = model
        self.support = support

    def forward(self, log_weights: Tensor, loc: Tensor, scale_tril: Tensor, *tensors: Tensor):
        model = self.model
        names = list(model.config.sources)
        obs = Observations(dict(zip(names, tensors[:len(names)])), dict(zip(names, tensors[len(names):])))
        chart = chart_from_parts(log_weights.clamp_min(LOG_WEIGHT_FLOOR), loc, scale_tril, model.dim)
        frame = framed(model.config, chart, obs)
        out = folded_forward(model, chart, obs, frame)
        finite = torch.isfinite(out).all()
        floored = (log_weights - LOG_WEIGHT_FLOOR).clamp_max(0)  # 0 unless the chart floored the weight
        out = torch.cat([out[..., :1] + floored.unsqueeze(-1), out[..., 1:]], -1)
        parts = parts_from_chart(out, model.dim)
        if self.support is None:
            return (*parts, finite)
        if self.support.frames_like(model.config):  # judged as the network reads the problem, in fewer operations
            reasons = self.support.outside_framed(frame[0], frame[1], scale_tril)
        else:
            reasons = self.support._outside_torch(chart, obs, None)
        return (*parts, finite, ~flagged_by(reasons), *[reasons[k] for k in REASONS])


def small_batch_update(model, checked: bool):
    """:class:`SmallBatchUpdate` traced with TorchScript, with the card's support when ``checked`` (and the model
    has one), cached on the model like :func:`inference_forward`'s trace and made again when the folded weights or
    the support change; ``None`` under :func:`without_torchscript` or where tracing fails (the caller then takes
    the step-by-step path, the same function)."""
    if without_torchscript.on:
        return None
    folded = folded_weights(model)
    support = model.support if checked else None
    checked = support is not None
    key = "_traced_update_checked" if checked else "_traced_update"
    cached = model.__dict__.get(key)
    if cached is None or cached[0] is not folded or cached[1] is not support:
        weight = model.prior_embedding.last.weight
        _tril_index(model.dim, str(weight.device))  # cached first: the trace then holds them as constants
        if support is not None:
            with torch.inference_mode(False):
                support.cache_bounds(model.config.sources, weight.device)
        cached = (folded, support, _trace_update(SmallBatchUpdate(model, support), model, weight))
        model.__dict__[key] = cached
    return cached[2]


def _trace_update(update: SmallBatchUpdate, model, weight: Tensor):
    K, D, n = 3, model.dim, 2
    example = (torch.full((n, K), -1.0986, dtype=weight.dtype, device=weight.device),
               torch.zeros(n, K, D, dtype=weight.dtype, device=weight.device),
               torch.eye(D, dtype=weight.dtype, device=weight.device).expand(n, K, D, D).contiguous(),
               *[torch.zeros(n, 5, e, dtype=weight.dtype, device=weight.device)
                 for e in model.config.sources.values()],
               *[torch.ones(n, 5, dtype=torch.bool, device=weight.device) for _ in model.config.sources])
    try:
        with warnings.catch_warnings(), factors_in_trace():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(update, example, check_trace=False)
    except Exception:  # tracing is an optimisation only; the step-by-step path is always correct
        return None
    try:  # frozen and optimised for inference (products and bias adds split, fewer nodes): about 8% off batch 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    except Exception:
        return traced


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

r"""Export the posterior update as a self-contained TorchScript program for real-time use.

The exported function maps raw mixture parameters and padded observations to raw posterior parameters,

.. math::
    (\log w,\ \mu,\ L)_{\text{prior}},\ (z_s, m_s)_{s\in\text{sources}}
    \ \longmapsto\ (\log w,\ \mu,\ L)_{\text{posterior}},

with shapes ``(B, K)``, ``(B, K, D)``, ``(B, K, D, D)`` and, per source in ``model.config.sources`` order,
``z_s`` ``(B, N_s, E_s)`` and boolean masks ``m_s`` ``(B, N_s)``. It includes the chart encoding and decoding, so
running it needs only ``torch`` (``torch.jit.load``), not distformer. It performs no input validation and no
out-of-family check: validate once where the data enter the system. A data set with no present observation
returns its prior, as ``model.posterior`` does.

The exported program runs the folded attention (``folded.py``), holding its matrices as constants: a snapshot of
the weights. :func:`compile_update` gives the same function, with the same inputs and outputs, compiled in-process
with ``torch.compile`` (Inductor, C++ wrapper) from the module's own forward, so it reads the live weights; it
compiles once per input shape (tens of seconds on a small CPU) and on this project's CPU measured no faster than
the exported program (``distformer bench speed``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..observations import Observations
from .folded import folded_forward, folded_weights
from .tokens import LOG_WEIGHT_FLOOR, _tril_index, chart_from_parts, chart_to_gmm


class ExportedUpdate(nn.Module):
    """``forward(log_weights, loc, scale_tril, *values, *masks) -> (log_weights, loc, scale_tril)``; with
    ``folded`` through ``folded.py``'s forward (the exported program, a snapshot of the weights), else through
    the module's own forward (the compiled update, which reads the weights at every call)."""

    def __init__(self, model, folded: bool = False) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.config.sources)
        self.dim = model.dim
        self.folded = folded

    def forward(self, log_weights: Tensor, loc: Tensor, scale_tril: Tensor, *tensors: Tensor):
        values, masks = tensors[:len(self.names)], tensors[len(self.names):]
        chart = chart_from_parts(log_weights.clamp_min(LOG_WEIGHT_FLOOR), loc, scale_tril, self.dim)
        obs = Observations(dict(zip(self.names, values)), dict(zip(self.names, masks)))
        out = folded_forward(self.model, chart, obs) if self.folded else self.model(chart, obs)
        post = chart_to_gmm(out, self.dim)
        present = torch.stack([m.any(-1) for m in masks]).any(0)  # (B,)
        keep = present.unsqueeze(-1)
        return (torch.where(keep, post.log_weights, torch.log_softmax(log_weights, -1)),
                torch.where(keep.unsqueeze(-1), post.loc, loc),
                torch.where(keep.unsqueeze(-1).unsqueeze(-1), post.scale_tril, scale_tril))


def export_update(model, path, format: str = "torchscript", num_components: int | None = None,
                  max_observations: int = 20) -> Path:
    """Write the update to ``path`` (TorchScript archive) and ``path + '.json'`` (the input contract).

    ``num_components`` (default: the trained ``K``) and ``max_observations`` fix the example shapes the program
    is traced with; other batch sizes, ``K`` and ``N`` run too, and these are the ones tested against eager.
    """
    if format != "torchscript":
        raise ValueError(f"Expected format='torchscript' (ONNX export needs the onnx and onnxscript packages, which "
                         f"this install does not ship), but got {format!r}.")
    K = num_components or model.card.get("support", {}).get("num_components") or 4
    if not isinstance(K, int) or K < 1 or not isinstance(max_observations, int) or max_observations < 1:
        raise ValueError(f"Expected positive int num_components and max_observations, but got {K!r} and "
                         f"{max_observations!r}.")
    weight = model.prior_embedding.last.weight
    dtype, D = weight.dtype, model.dim
    example = (torch.full((2, K), -float(torch.log(torch.tensor(float(K)))), dtype=dtype),
               torch.zeros(2, K, D, dtype=dtype),
               torch.eye(D, dtype=dtype).expand(2, K, D, D).contiguous(),
               *[torch.zeros(2, max_observations, e, dtype=dtype) for e in model.config.sources.values()],
               *[torch.ones(2, max_observations, dtype=torch.bool) for _ in model.config.sources])
    was_training = model.training
    model.eval()
    folded_weights(model)  # computed now, so that the trace records the folded matrices, not their computation
    _tril_index(D, str(weight.device))  # likewise the triangle positions
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.jit.trace(ExportedUpdate(model, folded=True), example, check_trace=False)
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(program, str(tmp))
    os.replace(tmp, path)
    contract = {"format": "torchscript", "dtype": str(dtype).replace("torch.", ""), "dim": D,
                "num_components": K, "max_observations": max_observations,
                "inputs": ["log_weights (B, K)", "loc (B, K, D)", "scale_tril (B, K, D, D)"]
                + [f"{s} values (B, N, {e})" for s, e in model.config.sources.items()]
                + [f"{s} mask (B, N) bool" for s in model.config.sources],
                "outputs": ["log_weights (B, K)", "loc (B, K, D)", "scale_tril (B, K, D, D)"],
                "model": model.card.get("name")}
    Path(str(path) + ".json").write_text(json.dumps(contract, indent=2) + "\n")
    return path


def compile_update(model, cpp_wrapper: bool = True):
    """``ExportedUpdate(model)`` compiled with ``torch.compile`` (``dynamic=False``: each new input shape compiles
    once, on its first call). The weights are read on every call, so later changes to them are seen."""
    return torch.compile(ExportedUpdate(model), dynamic=False, options={"cpp_wrapper": bool(cpp_wrapper)})

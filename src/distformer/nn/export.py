r"""Export the posterior update as a self-contained program for real-time use: TorchScript, a compiled
AOTInductor package, or an ONNX graph.

The exported function maps raw mixture parameters and padded observations to raw posterior parameters,

.. math::
    (\log w,\ \mu,\ L)_{\text{prior}},\ (z_s, m_s)_{s\in\text{sources}}
    \ \longmapsto\ (\log w,\ \mu,\ L)_{\text{posterior}},

with shapes ``(B, K)``, ``(B, K, D)``, ``(B, K, D, D)`` and, per source in ``model.config.sources`` order,
``z_s`` ``(B, N_s, E_s)`` and boolean masks ``m_s`` ``(B, N_s)``. It includes the chart encoding and decoding, so
running it needs only ``torch`` (or, for ONNX, any ONNX runtime), not distformer. It performs no input validation
and no out-of-family check: validate once where the data enter the system. A data set with no present observation
returns its prior, as ``model.posterior`` does.

Both formats run the folded attention (``folded.py``), holding its matrices as constants: a snapshot of the
weights.

* ``"torchscript"``: a TorchScript trace (``torch.jit.load``); any batch size, ``K`` and ``N``.
* ``"aoti"``: ``torch.export`` of the same function, compiled ahead of time by AOTInductor into a ``.pt2`` package
  holding a shared library (``torch._inductor.aoti_load_package``). It needs a C++ compiler where it is exported,
  not where it runs, and is compiled for the vector instructions of the exporting CPU (AVX2, AVX-512): export it on
  the kind of machine that runs it. ``K`` and ``N`` are fixed at the export's values and the batch size is free.
  The compiler fuses the elementwise operators between the matrix products into loops, and the small Cholesky
  factors and inverses are written out entry by entry (``small_linalg.py``), so at batch size 1 it runs far fewer
  operators than the TorchScript program. Its inputs must be contiguous: the compiled code reads them with the
  strides it was traced with and does not check them (a transposed ``scale_tril``, say, gives a wrong posterior
  silently). Call the package's ``loader.run([tensors])`` for the lowest latency: the package's ``__call__``
  re-parses its input specification at every call.
* ``"onnx"``: ``torch.onnx.export`` (its ``torch.export``-based exporter, opset 18 or later) of the same function, for
  runtimes outside PyTorch: ONNX Runtime from Python, C, C++, C#, Java or JavaScript, with no torch installed.
  Exporting needs the ``onnx`` and ``onnxscript`` packages (extra ``onnx``, which also installs ``onnxruntime``).
  ``K`` and ``N`` are fixed and the batch size is free, as for ``"aoti"``. Its graph inputs are named
  ``log_weights``, ``loc``, ``scale_tril``, then ``{source}_values`` and ``{source}_mask`` per source; its outputs
  ``posterior_log_weights``, ``posterior_loc``, ``posterior_scale_tril`` (the contract lists them). Choose it for
  where it runs rather than for speed. ``distformer bench speed`` measures the exports against ``posterior``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..observations import Observations
from ..io import atomic_write
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


FORMATS = ("torchscript", "aoti", "onnx")


def export_update(model, path, format: str = "torchscript", num_components: int | None = None,
                  max_observations: int | None = None, autotune: bool = True) -> Path:
    """Write the update to ``path`` (a TorchScript archive; for ``format="aoti"`` an AOTInductor ``.pt2`` package;
    for ``format="onnx"`` an ONNX file) and ``path + '.json'`` (the input contract), each replaced atomically.

    ``num_components`` (default: the trained ``K``) and ``max_observations`` (default: the most observations of a
    source in training, from the card's support, else 20) fix the example shapes the program is traced with; the
    TorchScript program runs other batch sizes, ``K`` and ``N`` too, the AOTInductor package and the ONNX graph
    other batch sizes only. ``autotune`` (``"aoti"`` only): Inductor times its own C++
    micro-kernels against ATen's for each matrix product and keeps the faster (``AUTOTUNE_CONFIG``); on this
    project's 2-core CPU that took the export from about 1 to 3 minutes and the 2-D model's batch-1 update to 0.77
    of its time untuned.
    """
    if format not in FORMATS:
        raise ValueError(f"Expected format among {FORMATS}, but got {format!r}.")
    K = model.config.num_components if num_components is None else num_components
    if max_observations is None:
        support = model.support
        max_observations = max(support.count_high.values()) if support is not None and support.count_high else 20
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
    path = Path(path)
    if format == "aoti" and path.suffix != ".pt2":
        raise ValueError(f"Expected a path ending in .pt2 for format='aoti' (AOTInductor's package), but got "
                         f"{str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)  # AOTInductor wants the suffix kept
    was_training = model.training
    model.eval()
    folded_weights(model)  # computed now, so that the program records the folded matrices, not their computation
    _tril_index(D, str(weight.device))  # likewise the triangle positions
    try:
        if format == "torchscript":
            _write_torchscript(ExportedUpdate(model, folded=True), example, tmp)
        elif format == "onnx":
            _write_onnx(model, example, tmp)
        else:
            _write_aoti(model, example, tmp, AUTOTUNE_CONFIG if autotune else {})
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed export leaves the previous file, if any, and no partial one
        raise
    finally:
        model.train(was_training)
    os.replace(tmp, path)
    contract = {"format": format, "dtype": str(dtype).replace("torch.", ""), "dim": D,
                "num_components": K, "max_observations": max_observations,
                "inputs": ["log_weights (B, K)", "loc (B, K, D)", "scale_tril (B, K, D, D)"]
                + [f"{s} values (B, N, {e})" for s, e in model.config.sources.items()]
                + [f"{s} mask (B, N) bool" for s in model.config.sources],
                "outputs": ["log_weights (B, K)", "loc (B, K, D)", "scale_tril (B, K, D, D)"],
                "load": LOADERS[format], "model": model.card.get("name"),
                "problem": model.card.get("problem", {}).get("name"),
                # the mixture in and out lives on the warped space: x = f^-1(y) coordinate by coordinate
                "warp": list(model.warp.kinds) if model.warp is not None else None}
    if format == "aoti":
        contract["autotune"] = bool(autotune)
    if format == "onnx":
        contract["input_names"] = onnx_input_names(list(model.config.sources))
        contract["output_names"] = list(ONNX_OUTPUT_NAMES)
    atomic_write(Path(str(path) + ".json"), (json.dumps(contract, indent=2) + "\n").encode())
    return path


LOADERS = {"torchscript": "torch.jit.load(path)",
           "aoti": "torch._inductor.aoti_load_package(path), then .loader.run([inputs]); inputs must be contiguous "
                   "(not checked)",
           "onnx": "onnxruntime.InferenceSession(path).run(None, {input_name: array}) (or any ONNX runtime)"}
ONNX_OUTPUT_NAMES = ("posterior_log_weights", "posterior_loc", "posterior_scale_tril")
ONNX_PACKAGES = ("onnx", "onnxscript")


def onnx_input_names(sources: list[str]) -> list[str]:
    """The ONNX graph's input names, in the update's argument order, for the model's ``sources``."""
    return ["log_weights", "loc", "scale_tril", *[f"{s}_values" for s in sources], *[f"{s}_mask" for s in sources]]


def _write_torchscript(update: ExportedUpdate, example: tuple[Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.jit.trace(update, example, check_trace=False)
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(program, str(path))


# Inductor's options for autotune=True; the last two keep it from printing its timings of every candidate
AUTOTUNE_CONFIG = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                   "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def cpp_compiler() -> str | None:
    """The C++ compiler ``format="aoti"`` would use (``$CXX``, else ``c++``), or ``None`` if it is not on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _batch_free(model) -> tuple:
    """``dynamic_shapes`` for ``torch.export`` of :class:`ExportedUpdate`: the batch dimension of every input free."""
    batch = torch.export.Dim("batch", min=1)
    return ({0: batch}, {0: batch}, {0: batch}, tuple({0: batch} for _ in range(2 * len(model.config.sources))))


@contextlib.contextmanager
def _without_grad(model):
    """Parameters that do not require grad while exporting (else the exporters trace a backward graph too), and no
    warnings from the exporters; restored afterwards."""
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)


def _write_aoti(model, example: tuple[Tensor, ...], path: Path, options: dict) -> None:
    """``torch.export`` of the folded update with a free batch size, compiled by AOTInductor into ``path`` with
    Inductor ``options``."""
    if cpp_compiler() is None:
        raise RuntimeError(f"Expected a C++ compiler ({os.environ.get('CXX', 'c++')!r}, or set CXX) for "
                           f"format='aoti', but found none on PATH; format='torchscript' needs none.")
    with _without_grad(model):
        program = torch.export.export(ExportedUpdate(model, folded=True), example, dynamic_shapes=_batch_free(model))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)


def _write_onnx(model, example: tuple[Tensor, ...], path: Path) -> None:
    """``torch.onnx.export`` of the folded update with a free batch size into the ONNX file ``path``."""
    import importlib
    import logging

    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise RuntimeError(f"Expected the packages {' and '.join(ONNX_PACKAGES)} for format='onnx' (pip install "
                               f"'distformer[onnx]'), but {name!r} is not installed; format='torchscript' needs "
                               "neither.") from None
    # onnxscript warns of each multi-output node it does not fold, onnx_ir of each empty list attribute it types as
    # ints (the right type here), torch.onnx of each torchvision operator it cannot register: harmless, many lines
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with _without_grad(model):
            program = torch.onnx.export(ExportedUpdate(model, folded=True), example, dynamo=True, optimize=True,
                                        verbose=False, dynamic_shapes=_batch_free(model),
                                        input_names=onnx_input_names(list(model.config.sources)),
                                        output_names=list(ONNX_OUTPUT_NAMES))
            program.save(str(path))
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)

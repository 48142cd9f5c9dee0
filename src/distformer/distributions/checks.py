"""Checks of a Gaussian mixture's parameters, each failure one ``ValueError`` sentence that says what was expected
and what was given."""

from __future__ import annotations

import torch
from torch import Tensor

from .linalg import broadcast_shapes


def describe(t: Tensor) -> str:
    """``"tensor of shape (2, 3)"``, for error messages."""
    return f"tensor of shape {tuple(t.shape)}"


def check_shapes(mix: Tensor, loc: Tensor, matrix: Tensor, mix_name: str, matrix_name: str) -> None:
    """Shapes ``(*B, K)``, ``(*B, K, D)``, ``(*B, K, D, D)`` with broadcastable batches, finite entries (logits may
    hold ``-inf``), each failure one sentence naming the argument."""
    if mix.dim() < 1:
        raise ValueError(f"Expected {mix_name} of shape (*B, K), but got a {describe(mix)}.")
    if loc.dim() < 2:
        raise ValueError(f"Expected loc of shape (*B, K, D), but got a {describe(loc)}.")
    if matrix.dim() < 3:
        raise ValueError(f"Expected {matrix_name} of shape (*B, K, D, D), but got a {describe(matrix)}.")
    k, d = loc.shape[-2], loc.shape[-1]
    if k < 1 or d < 1:
        raise ValueError(f"Expected at least one component and one dimension, but loc has shape {tuple(loc.shape)}.")
    if mix.shape[-1] != k:
        raise ValueError(f"Expected {mix_name} to have K={k} entries in its last dimension (from loc "
                         f"{tuple(loc.shape)}), but got {describe(mix)}.")
    if matrix.shape[-3:] != (k, d, d):
        raise ValueError(f"Expected {matrix_name} to end in (K, D, D)=({k}, {d}, {d}) (from loc "
                         f"{tuple(loc.shape)}), but got a {describe(matrix)}.")
    try:
        broadcast_shapes(mix.shape[:-1], loc.shape[:-2], matrix.shape[:-3])
    except RuntimeError:
        raise ValueError(f"Expected broadcastable batch shapes, but got {mix_name} {tuple(mix.shape)}, loc "
                         f"{tuple(loc.shape)} and {matrix_name} {tuple(matrix.shape)}.") from None
    for name, t in ((mix_name, mix), ("loc", loc), (matrix_name, matrix)):
        if name == "logits":
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"Expected {name} to be finite, but found NaN or inf.")

def check_weights(weights: Tensor, given: torch.dtype) -> None:
    """Non-negative weights summing to one within the precision of the weights as given (``given``): 1e-4
    for float32 and narrower, 1e-6 for float64 (float32 numbers cast to float64, or typed as decimals of
    float32 precision, sum to one only within about 1e-7)."""
    if bool((weights < 0).any()):
        raise ValueError("Expected non-negative weights, but found negative entries.")
    tol = 1e-6 if given == torch.float64 else 1e-4
    total = weights.sum(-1)
    worst = float((total - 1).abs().max())
    if worst > tol:
        raise ValueError(f"Expected weights to sum to one over the K components, but a sum is off by "
                         f"{worst:.3g} (tolerance {tol:g}); normalise them or pass logits=.")

r"""Cholesky factors and inverses of many small matrices, written out entry by entry.

For :math:`A = LL^\top` (``D x D``, lower :math:`L`), column by column,

.. math::
    L_{jj} = \Big(A_{jj} - \sum_{k<j} L_{jk}^2\Big)^{1/2},\qquad
    L_{ij} = \Big(A_{ij} - \sum_{k<j} L_{ik}L_{jk}\Big) / L_{jj}\quad (i > j),

and :math:`X = L^{-1}` by forward substitution,
:math:`X_{ii} = 1/L_{ii}`, :math:`X_{ij} = -\big(\sum_{j\le k<i} L_{ik}X_{kj}\big)/L_{ii}` for :math:`i > j`;
then :math:`(LL^\top)^{-1} = X^\top X`.

LAPACK (``torch.linalg.cholesky_ex``, ``torch.cholesky_inverse``) factors a batch one matrix at a time, which for
thousands of 2 x 2 or 3 x 3 matrices costs far more than the arithmetic. Written out, each entry is one operation
over the whole batch: :math:`O(D^3)` operations, each vectorised. They are used for ``D <= 4`` and at least 512
matrices, outside TorchScript tracing (a trace keeps the branch it saw), and for ``D <= 4`` at any batch size under
``torch.compile`` / ``torch.export``, whose compiler fuses them into one loop (LAPACK has no fused form there),
and in a trace recorded under :func:`shortcuts_in_trace` (one used on large batches only: the written-out form is
the same function at any size) or :func:`factors_in_trace` (the small-batch update, where at batch size 1 the
written-out factors beat LAPACK's per-call overhead once the trace is frozen); otherwise the LAPACK calls. A
matrix that is not positive definite gets NaN entries here, where ``cholesky_ex`` would return a partial factor:
either way the caller's finiteness check is what reports it.
"""

from __future__ import annotations

import functools
import operator
import threading
from contextlib import contextmanager

import torch
from torch import Tensor

MAX_UNROLLED_DIM = 4
MIN_UNROLLED_BATCH = 512


class ThreadFlag:
    """A switch that is on, in the calling thread only, inside ``with flag():`` blocks (nested blocks restore the
    outer state); ``flag.on`` reads it."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._local, "on", False)

    @contextmanager
    def __call__(self):
        outer = self.on
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = outer


# Within ``with shortcuts_in_trace():`` a TorchScript trace records the forms meant for large batches (the written-out
# factors here, the in-place GELU and bias add of ``nn/kernels.py``) whatever its example's size: for a trace used on
# large batches only, since each computes the same function at any size.
shortcuts_in_trace = ThreadFlag()

# Within ``with factors_in_trace():`` a TorchScript trace records the written-out factors only (not the other
# large-batch forms): the small-batch update of ``nn/engine.py``, where they spare LAPACK's per-call overhead.
factors_in_trace = ThreadFlag()


def tracing_with_shortcuts() -> bool:
    """Whether a TorchScript trace is being recorded under :func:`shortcuts_in_trace` in this thread."""
    return torch.jit.is_tracing() and shortcuts_in_trace.on


def unrolled(dim: int, count: int) -> bool:
    """Whether ``count`` matrices of size ``dim x dim`` take the written-out forms (module docstring)."""
    if dim > MAX_UNROLLED_DIM or torch.jit.is_scripting():
        return False
    if torch.jit.is_tracing():
        return shortcuts_in_trace.on or factors_in_trace.on
    return torch.compiler.is_compiling() or count >= MIN_UNROLLED_BATCH


def _unrolled(matrix: Tensor) -> bool:
    d = matrix.shape[-1]
    return unrolled(d, matrix.numel() // (d * d) if d else 0)


Entries = list[list[Tensor]]  # the lower triangle of a matrix: entries[i][j] (...) for j <= i


def entries(matrix: Tensor) -> Entries:
    """The lower-triangle entries of ``matrix`` ``(..., D, D)``."""
    d = matrix.shape[-1]
    return [[matrix[..., i, j] for j in range(i + 1)] for i in range(d)]


def cholesky_entries(a: Entries) -> Entries:
    """Lower Cholesky factor of the symmetric matrix with lower triangle ``a`` (module docstring), entrywise."""
    d = len(a)
    L: Entries = [[] for _ in range(d)]
    for j in range(d):
        s = a[j][j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        L[j].append(s.sqrt())
        for i in range(j + 1, d):
            s = a[i][j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i].append(s / L[j][j])
    return L


def inverse_entries(factor: Entries) -> Entries:
    """:math:`X = L^{-1}` (lower) of a lower-triangular ``factor``, by forward substitution, entrywise."""
    d = len(factor)
    X: Entries = [[] for _ in range(d)]
    for i in range(d):
        diagonal = 1.0 / factor[i][i]
        for j in range(i):
            s = factor[i][j] * X[j][j]
            for k in range(j + 1, i):
                s = s + factor[i][k] * X[k][j]
            X[i].append(-s * diagonal)
        X[i].append(diagonal)
    return X


def gram_entries(X: Entries) -> Entries:
    """Lower triangle of :math:`X^\\top X` for a lower-triangular ``X``: :math:`\\sum_{k\\ge i} X_{ki}X_{kj}`."""
    d = len(X)
    out: Entries = []
    for i in range(d):
        row = []
        for j in range(i + 1):
            s = X[i][i] * X[i][j]
            for k in range(i + 1, d):
                s = s + X[k][i] * X[k][j]
            row.append(s)
        out.append(row)
    return out


def entry_sum(terms: list[Tensor]) -> Tensor:
    """The sum of a non-empty list of tensors (no integer start, which a trace would record as one more add)."""
    return functools.reduce(operator.add, terms)


def _assemble(entries: Entries, like: Tensor) -> Tensor:
    """Lower-triangular ``(..., D, D)`` from ``entries[i][j]`` ``(...)`` for ``j <= i``."""
    d = len(entries)
    zero = torch.zeros_like(like[..., 0, 0])
    return torch.stack([torch.stack([entries[i][j] if j <= i else zero for j in range(d)], -1)
                        for i in range(d)], -2)


def cholesky_factor(matrix: Tensor) -> Tensor:
    """Lower Cholesky factor of symmetric positive-definite ``matrix`` ``(..., D, D)``, without an error for a
    matrix that is not (see the module docstring)."""
    if not _unrolled(matrix):
        return torch.linalg.cholesky_ex(matrix)[0]
    return _assemble(cholesky_entries(entries(matrix)), matrix)


def mahalanobis(matrix: Tensor, gap: Tensor) -> Tensor:
    r""":math:`\|L^{-1}g\|` ``(...)`` for symmetric positive-definite ``matrix`` :math:`LL^\top` ``(..., D, D)`` and
    ``gap`` :math:`g` ``(..., D)``: written out (Cholesky entries, then forward substitution) for ``D <= 4`` at any
    batch size, since even at batch size 1 the few entrywise operations cost less than LAPACK's calls; else LAPACK."""
    d = matrix.shape[-1]
    if d > MAX_UNROLLED_DIM or torch.jit.is_scripting():
        factor = torch.linalg.cholesky_ex(matrix)[0]
        return torch.linalg.solve_triangular(factor, gap.unsqueeze(-1), upper=False).squeeze(-1).norm(dim=-1)
    return squared_mahalanobis_entries(entries(matrix), gap).sqrt()


def squared_mahalanobis_entries(matrix: Entries, gap: Tensor) -> Tensor:
    r""":math:`\|L^{-1}g\|^2` ``(...)`` for the symmetric positive-definite matrix :math:`LL^\top` with lower
    triangle ``matrix`` (entries ``(...)``) and ``gap`` ``(..., D)``, written out."""
    L = cholesky_entries(matrix)
    x: list[Tensor] = []
    for i in range(len(L)):
        s = gap[..., i]
        for j in range(i):
            s = s - L[i][j] * x[j]
        x.append(s / L[i][i])
    total = x[0] * x[0]
    for v in x[1:]:
        total = total + v * v
    return total


def inverse_from_factor(factor: Tensor) -> Tensor:
    """:math:`(LL^\\top)^{-1}` ``(..., D, D)`` from the lower factor ``L`` ``(..., D, D)``; NaN for a factor with a
    zero or NaN diagonal entry (a failed factorisation), which LAPACK would refuse for the whole batch."""
    if not _unrolled(factor):
        diagonal = factor.diagonal(dim1=-2, dim2=-1)
        valid = ((diagonal != 0) & ~torch.isnan(diagonal)).all(-1)[..., None, None]
        eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
        inverse = torch.cholesky_inverse(torch.where(valid, factor, eye))
        return torch.where(valid, inverse, torch.full((), torch.nan, dtype=factor.dtype, device=factor.device))
    inverse = _assemble(inverse_entries(entries(factor)), factor)
    return inverse.transpose(-1, -2) @ inverse

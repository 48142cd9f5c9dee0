r"""Exponential moving average of the weights (Polyak averaging), the model a run returns when it is switched on.

After optimiser step :math:`t = 1, 2, \dots` with weights :math:`\theta_t`, the average is

.. math::
    \bar\theta_0 = \theta_0,\qquad
    \bar\theta_t = \beta_t\,\bar\theta_{t-1} + (1-\beta_t)\,\theta_t,\qquad
    \beta_t = \min\Big(\beta,\ \frac{1+t}{10+t}\Big),

so early steps, whose weights are far from the final ones, are forgotten quickly (:math:`\beta_1 = 2/11`), and
later the average spans about :math:`1/(1-\beta)` steps. Stochastic gradients leave the weights jittering around
a minimum with a spread set by the learning rate; the average sits nearer its centre, so it reaches the loss of a
run whose learning rate ended lower, at no extra simulation. Buffers (none in this model) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP = 10  # beta_t = min(beta, (1 + t) / (WARMUP + t))


def average_decay(step: int, decay: float) -> float:
    """:math:`\\beta_t` for the (1-based) optimiser step ``step`` and the configured ``decay`` (module docstring)."""
    if step < 1:
        raise ValueError(f"Expected a 1-based optimiser step, but got {step}.")
    return min(decay, (1 + step) / (WARMUP + step))


class WeightAverage:
    """A frozen copy of ``model`` (``self.model``) holding :math:`\\bar\\theta_t`; call :meth:`update` after each
    optimiser step of ``model`` (whose parameters are updated in place, as optimisers and ``load_state_dict`` do)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"Expected a weight-average decay in (0, 1), but got {decay}.")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        self._source = model
        self._mine = list(self.model.parameters())
        self._theirs = [p.detach() for p in model.parameters()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the trained model's current weights after optimiser step ``step`` (1-based)."""
        torch._foreach_lerp_(self._mine, self._theirs, 1.0 - average_decay(step, self.decay))
        for mine, theirs in zip(self.model.buffers(), self._source.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

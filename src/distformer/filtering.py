r"""Sequential inference: a filter whose belief stays a ``K``-component Gaussian mixture.

Each step predicts with a motion model, applied to every component, and then updates with the data:

.. math::
    p(x_t\mid z_{1:t-1}) = \int p(x_t\mid x_{t-1})\,p(x_{t-1}\mid z_{1:t-1})\,dx_{t-1},\qquad
    p(x_t\mid z_{1:t}) \propto p(z_t\mid x_t)\,p(x_t\mid z_{1:t-1}).

* :class:`LinearGaussianMotion` :math:`x_t = A x_{t-1} + b + w`, :math:`w\sim\mathcal N(0,Q)` is exact per
  component: :math:`\mu_k\mapsto A\mu_k+b`, :math:`\Sigma_k\mapsto A\Sigma_kA^\top+Q`, weights unchanged.
* :class:`NonlinearMotion` :math:`x_t = f(x_{t-1}) + w` uses the unscented transform per component: sigma points
  :math:`\mu_k` and :math:`\mu_k\pm\sqrt{D+\kappa}\,L_{k,i}` (columns of the Cholesky factor) with weights
  :math:`\kappa/(D+\kappa)` and :math:`1/(2(D+\kappa))`, mapped through :math:`f`; the weighted mean and
  covariance of the images, plus :math:`Q`, give the predicted component. It is exact when :math:`f` is affine.
* The update is the model's posterior (or any callable ``(belief, observations) -> GaussianMixture``, such as the
  exact :class:`LinearGaussianUpdate`), so each step costs the same however long the series.

Time-varying motion: ``A``, ``b``, ``Q`` and ``f`` may be callables of the step index ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from .distributions.gmm import GaussianMixture
from .distributions.linalg import cholesky, symmetrize
from .observations import Observations, as_observations

TensorOrSchedule = Union[Tensor, Callable[[int], Tensor]]


def _at(value, t: int):
    return value(t) if callable(value) else value


class LinearGaussianMotion:
    """``x_t = A x_{t-1} + b + w``, ``w ~ N(0, Q)``; ``A`` ``(*B, D, D)``, ``b`` ``(*B, D)``, ``Q`` ``(*B, D, D)``.

    Each may be a tensor or a callable ``t -> tensor`` for time-varying motion.
    """

    def __init__(self, A: TensorOrSchedule, b: TensorOrSchedule | None = None, Q: TensorOrSchedule | None = None):
        if Q is None:
            raise ValueError("Expected a process-noise covariance Q (a positive-definite (*B, D, D) tensor), but got "
                             "None.")
        self.A, self.b, self.Q = A, b, Q

    def __call__(self, belief: GaussianMixture, t: int = 0) -> GaussianMixture:
        A, b, Q = _at(self.A, t), _at(self.b, t), _at(self.Q, t)
        A = torch.as_tensor(A, dtype=belief.dtype, device=belief.device)
        if A.dim() < 2 or A.shape[-2:] != (belief.dim, belief.dim):
            raise ValueError(f"Expected A of shape (*B, D, D) with D={belief.dim}, but got {tuple(A.shape)}.")
        return belief.affine(A, b, noise_covariance=Q)


class NonlinearMotion:
    """``x_t = f(x_{t-1}) + w``, ``w ~ N(0, Q)``, predicted per component by the unscented transform.

    ``f`` maps ``(..., D)`` to ``(..., D)`` row-wise (batched); ``f`` and ``Q`` may depend on ``t`` (pass
    ``time_varying=True`` to call ``f(x, t)``). ``kappa`` sets the sigma-point spread (default ``3 - D``, clamped
    at 0, the usual choice that matches fourth moments of a Gaussian in one dimension).
    """

    def __init__(self, f: Callable, Q: TensorOrSchedule, kappa: float | None = None, time_varying: bool = False):
        if not callable(f):
            raise TypeError(f"Expected f to be a callable (..., D) -> (..., D), but got {type(f).__name__}.")
        self.f, self.Q, self.kappa, self.time_varying = f, Q, kappa, time_varying

    def __call__(self, belief: GaussianMixture, t: int = 0) -> GaussianMixture:
        D = belief.dim
        kappa = max(3.0 - D, 0.0) if self.kappa is None else float(self.kappa)
        points, weights = unscented_points(belief.loc, belief.scale_tril, kappa)  # (2D+1, *B, K, D), (2D+1,)
        images = self.f(points, t) if self.time_varying else self.f(points)
        if not isinstance(images, Tensor) or images.shape != points.shape:
            raise ValueError(f"Expected f to map sigma points of shape {tuple(points.shape)} to the same shape, but "
                             f"got {tuple(getattr(images, 'shape', ()))}.")
        w = weights.view(-1, *([1] * (images.dim() - 1)))
        mean = (w * images).sum(0)
        diff = images - mean
        cov = (w.unsqueeze(-1) * diff.unsqueeze(-1) * diff.unsqueeze(-2)).sum(0)
        Q = torch.as_tensor(_at(self.Q, t), dtype=belief.dtype, device=belief.device)
        cov = symmetrize(cov + Q.unsqueeze(-3))
        if not bool(torch.isfinite(cov).all() & torch.isfinite(mean).all()):
            raise ValueError("Expected f to give finite images of the sigma points, but got NaN or inf.")
        return GaussianMixture(logits=belief.log_weights, loc=mean,
                               scale_tril=cholesky(cov, "the unscented predicted covariance"), validate_args=False)


def unscented_points(loc: Tensor, scale_tril: Tensor, kappa: float) -> tuple[Tensor, Tensor]:
    """Sigma points ``(2D+1, *batch, D)`` and weights ``(2D+1,)`` of ``N(loc, L L^T)`` (see module docstring)."""
    D = loc.shape[-1]
    if D + kappa <= 0:
        raise ValueError(f"Expected D + kappa > 0 for the unscented transform, but got D={D}, kappa={kappa}.")
    spread = math.sqrt(D + kappa) * scale_tril.transpose(-1, -2)  # rows: scaled columns of L, (*batch, D, D)
    points = torch.cat([loc.unsqueeze(0), (loc.unsqueeze(-2) + spread).movedim(-2, 0),
                        (loc.unsqueeze(-2) - spread).movedim(-2, 0)])
    w = torch.full((2 * D + 1,), 1.0 / (2 * (D + kappa)), dtype=loc.dtype, device=loc.device)
    w[0] = kappa / (D + kappa)
    return points, w


class LinearGaussianUpdate:
    """The exact update for ``z_i = H x + v_i``, ``v_i ~ N(0, R)`` from one source (the Kalman update per component)."""

    def __init__(self, H: Tensor, R: Tensor, source: str = "z"):
        self.H, self.R, self.sources = H, R, {source: H.shape[-2]}
        self.source = source

    def __call__(self, belief: GaussianMixture, observations: Observations) -> GaussianMixture:
        obs = as_observations(observations, self.sources)
        return belief.condition_linear_gaussian(self.H, self.R, obs.values[self.source], obs.masks[self.source])


@dataclass(frozen=True)
class FilterResult:
    """Filtered beliefs of a run: ``beliefs`` is a ``GaussianMixture`` with batch ``(T, *B)``."""

    beliefs: GaussianMixture

    def __len__(self) -> int:
        return self.beliefs.batch_shape[0]

    def __getitem__(self, t: int) -> GaussianMixture:
        return self.beliefs[t]

    def nll(self, states: Tensor) -> Tensor:
        """``-log p(x_t | z_{1:t})`` of true states ``(T, *B, D)``, shape ``(T, *B)``."""
        return -self.beliefs.log_prob(states.to(self.beliefs.dtype))


class Filter:
    """Predict with ``motion``, update with ``update``, and keep a ``K``-component mixture as the belief.

    Args:
        update: a ``DistributionTransformer`` (its ``posterior`` is the update) or a callable
            ``(belief, observations) -> GaussianMixture``.
        motion: a motion model ``(belief, t) -> belief`` such as :class:`LinearGaussianMotion`.
        check: for a model update, the check each step's ``posterior`` runs: ``True`` the training ranges (cheap;
            a problem outside them is judged by the importance check), ``"ranges"`` the ranges alone,
            ``"importance"`` the importance check (a few hundred likelihood evaluations per problem; the default of
            ``posterior`` for models whose card says so, such as ``sensor-fusion``), ``False`` none.
    """

    def __init__(self, update, motion, check: bool | str = True):
        from .nn.inference import CHECKS
        from .nn.transformer import DistributionTransformer

        if isinstance(check, str) and check not in CHECKS or not isinstance(check, (bool, str)):
            raise ValueError(f"Expected check among {CHECKS}, but got {check!r}.")
        if isinstance(update, DistributionTransformer):
            model = update
            self.sources = dict(model.config.sources)
            self._update = lambda belief, obs: model.posterior(belief, obs, check=check)
        elif callable(update):
            self.sources = dict(getattr(update, "sources", {}))
            self._update = update
        else:
            raise TypeError(f"Expected update to be a DistributionTransformer or a callable (belief, observations) "
                            f"-> GaussianMixture, but got {type(update).__name__}.")
        if not callable(motion):
            raise TypeError(f"Expected a motion model callable as (belief, t), but got {type(motion).__name__}.")
        self.motion = motion

    def predict(self, belief: GaussianMixture, t: int = 0) -> GaussianMixture:
        """``p(x_t | z_{1:t-1})`` from ``p(x_{t-1} | z_{1:t-1})``."""
        return self.motion(belief, t)

    def update(self, belief: GaussianMixture, observations, mask=None) -> GaussianMixture:
        """``p(x_t | z_{1:t})`` from the predicted belief and the data of step ``t``: a tensor ``(*B, N, E)``, a dict
        of them or ``Observations``, with ``mask`` ``(*B, N)`` (or a dict) ``False`` where a sensor is missing."""
        if self.sources:
            observations = as_observations(observations, self.sources, mask)
        elif mask is not None:
            raise ValueError("Expected the mask inside Observations for an update callable without `sources`, but got "
                             "a separate mask.")
        out = self._update(belief, observations)
        if out.num_components != belief.num_components:
            raise ValueError(f"Expected the update to keep K={belief.num_components} components, but it returned "
                             f"{out.num_components}.")
        return out

    def step(self, belief: GaussianMixture, observations, mask=None, t: int = 1) -> GaussianMixture:
        """One predict-then-update step: filtered belief at ``t - 1`` to filtered belief at ``t``."""
        return self.update(self.predict(belief, t), observations, mask)

    def run(self, prior: GaussianMixture, sequence, mask=None) -> FilterResult:
        """Filter a batch of series: ``prior`` is ``p(x_0)`` (batch ``B``); ``sequence`` holds the data of steps
        ``0..T-1`` with a leading time axis: a tensor ``(T, *B, N, E)``, a dict of them, or ``Observations`` with
        batch ``(T, *B)``; ``mask`` ``(T, *B, N)`` marks what is present. Step 0 updates the prior without a
        predict. Returns the filtered beliefs of every step."""
        if not isinstance(prior, GaussianMixture):
            raise TypeError(f"Expected prior to be a distformer.GaussianMixture, but got {type(prior).__name__}.")
        obs = _as_sequence(sequence, self.sources, mask)
        T = obs.batch_shape[0] if obs.batch_shape else 0
        if T == 0:
            raise ValueError("Expected a sequence with a leading time axis of length T >= 1, but got none.")
        beliefs, belief = [], prior
        for t in range(T):
            step_obs = Observations({s: v[t] for s, v in obs.values.items()}, {s: m[t] for s, m in obs.masks.items()})
            belief = self.update(belief if t == 0 else self.predict(belief, t), step_obs)
            beliefs.append(belief)
        return FilterResult(GaussianMixture.stack(beliefs))


def _as_sequence(sequence, sources, mask) -> Observations:
    if sources:
        return as_observations(sequence, sources, mask)
    if isinstance(sequence, Observations):
        return sequence
    raise TypeError("Expected Observations for an update callable without a `sources` attribute, but got "
                    f"{type(sequence).__name__}.")

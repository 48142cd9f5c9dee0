r"""``sensor-fusion``: a 4-D target tracked with a rangefinder and a bearing sensor (the paper's section 4.3.1).

State :math:`x = (p_x, v_x, p_y, v_y)`, motion per axis (damped velocity, one noise draw per axis and step)

.. math::
    \begin{pmatrix}p\\v\end{pmatrix}_{t} = \begin{pmatrix}1 & 1-e^{-1}\\ 0 & e^{-1}\end{pmatrix}
    \begin{pmatrix}p\\v\end{pmatrix}_{t-1} + \begin{pmatrix}0.1\\0.2\end{pmatrix}\varepsilon_t,
    \qquad \varepsilon_t\sim\mathcal N(0,1),

so :math:`Q = LL^\top` is rank one per axis. Sensors, each missing at a step with probability ``p_missing``:

* **range** :math:`r=\sqrt{p_x^2+p_y^2}`, read as a mixture and clipped to :math:`[0, R_{\max}]`:
  with probability 0.7 :math:`\mathcal N(r, (0.1(r+1))^2)`, 0.2 an early return :math:`\mathrm{Exp}(1)`, 0.1 a
  failure :math:`\mathcal U(0, R_{\max})`; :math:`R_{\max}=20`. Its likelihood has atoms at the clip points:
  :math:`p(0\mid r) = 0.7\,\Phi(-r/s)`, :math:`p(R_{\max}\mid r) = 0.7\,\Phi((r-R_{\max})/s) + 0.2e^{-R_{\max}}`,
  and in between the density :math:`0.7\,\mathcal N(z; r, s^2) + 0.2e^{-z} + 0.1/R_{\max}` with :math:`s=0.1(r+1)`.
* **bearing** :math:`\beta=\operatorname{atan2}(p_x, p_y) + \mathcal N(0, 0.1^2)`, wrapped to :math:`(-\pi,\pi]`;
  the likelihood is the wrapped normal :math:`\sum_{k=-1}^{1}\mathcal N(\beta + 2\pi k; \operatorname{atan2}(p_x,p_y),
  0.1^2)`. The reading is given to the model as the unit vector :math:`(\cos\beta, \sin\beta)`, so that angles
  either side of :math:`\pm\pi` look alike (source ``bearing``, two numbers).

Single-step training problem (as in the paper): a prior from the meta-prior, :math:`x` from it, one reading per
sensor. Meta-prior over ``K``-component priors: weights :math:`\mathrm{Dirichlet}(\mathbf 1)`; component means with
positions :math:`\mathcal N(0, s_p^2)` and velocities :math:`\mathcal N(0, s_v^2)`; covariances
:math:`U\operatorname{diag}(\sigma^2)U^\top` with :math:`U` a random rotation and
:math:`\log\sigma\sim\mathcal U(\log\sigma_{\min},\log\sigma_{\max})`. Defaults :math:`K=4`, :math:`s_p=3`,
:math:`s_v=0.5`, :math:`[\sigma_{\min},\sigma_{\max}]=[0.03, 1.5]`, chosen to cover the beliefs a filter meets on
the series of :meth:`SensorFusion.simulate_series` (start :math:`x_0\sim\mathcal N((1,0,1,0), I)`). With probability
``replicated_fraction`` a prior is instead one such Gaussian written as :math:`K` equal components with weights
:math:`\propto 1..K`: the form a filter starts from (:meth:`SensorFusion.initial_prior`), which independent
components almost never produce.
No exact posterior exists; the reference is a large particle filter (``distformer bench sensor-fusion``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributions.gmm import GaussianMixture
from ..observations import Observations, as_observations
from .base import Problem, rank_weights, replicated_gaussian
from .linear_gaussian import random_gmm_priors
from .lti import Series

RANGE_WEIGHTS = (0.7, 0.2, 0.1)  # Gaussian, early return, failure
BEARING_SD = 0.1
DECAY = math.exp(-1.0)


def true_range(x: Tensor) -> Tensor:
    """Distance from the origin ``(...)`` of states ``(..., 4)``."""
    return torch.sqrt(x[..., 0] ** 2 + x[..., 2] ** 2)


def true_bearing(x: Tensor) -> Tensor:
    """Bearing ``atan2(p_x, p_y)`` in ``(-pi, pi]`` of states ``(..., 4)``."""
    return torch.atan2(x[..., 0], x[..., 2])


def wrap_angle(a: Tensor) -> Tensor:
    """``a`` wrapped to ``(-pi, pi]``."""
    return math.pi - torch.remainder(math.pi - a, 2 * math.pi)


def range_log_likelihood(z: Tensor, r: Tensor, max_range: float) -> Tensor:
    """``log p(z | r)`` of clipped rangefinder readings ``z`` at true ranges ``r`` (broadcast); see module docstring."""
    w_gauss, w_early, w_fail = RANGE_WEIGHTS
    s = 0.1 * (r + 1.0)
    u = (z - r) / s
    inside = torch.logsumexp(torch.stack(torch.broadcast_tensors(
        math.log(w_gauss) - 0.5 * u**2 - torch.log(s) - 0.5 * math.log(2 * math.pi),
        math.log(w_early) - z + 0 * u,
        math.log(w_fail / max_range) + 0 * u)), 0)
    at_zero = math.log(w_gauss) + torch.special.log_ndtr(-r / s)
    top_gauss = math.log(w_gauss) + torch.special.log_ndtr((r - max_range) / s)
    at_top = torch.logaddexp(top_gauss, torch.full_like(top_gauss, math.log(w_early) - max_range))
    return torch.where(z <= 0, at_zero, torch.where(z >= max_range, at_top, inside))


def range_reading_moments(r: Tensor, max_range: float) -> tuple[Tensor, Tensor]:
    """Mean and variance of a range reading given the true range ``r`` (clipping ignored): what an EKF or UKF
    linearises the rangefinder through, as in the paper's baseline."""
    w_gauss, w_early, w_fail = RANGE_WEIGHTS
    s2 = (0.1 * (r + 1.0)) ** 2
    mean = w_gauss * r + w_early * 1.0 + w_fail * max_range / 2
    second = w_gauss * (r**2 + s2) + w_early * 2.0 + w_fail * max_range**2 / 3
    return mean, second - mean**2


def bearing_log_likelihood(beta: Tensor, bearing: Tensor) -> Tensor:
    """Wrapped-normal ``log p(beta | bearing)`` for readings and true bearings in ``(-pi, pi]`` (broadcast)."""
    d = wrap_angle(beta - bearing)
    terms = torch.stack([d + 2 * math.pi * k for k in (-1, 0, 1)])
    return torch.logsumexp(-0.5 * (terms / BEARING_SD) ** 2, 0) - math.log(BEARING_SD) - 0.5 * math.log(2 * math.pi)


class SensorFusion(Problem):
    """Rangefinder and bearing sensor on a damped-velocity target (see the module docstring)."""

    name = "sensor-fusion"
    dim = 4
    sources = {"range": 1, "bearing": 2}

    def __init__(self, num_components: int = 4, position_scale: float = 3.0, velocity_scale: float = 0.5,
                 min_std: float = 0.03, max_std: float = 1.5, max_range: float = 20.0, p_missing: float = 0.1,
                 replicated_fraction: float = 0.0) -> None:
        if num_components < 1 or not 0 < min_std <= max_std or position_scale < 0 or velocity_scale < 0:
            raise ValueError(f"Expected num_components >= 1, 0 < min_std <= max_std and non-negative scales, but got "
                             f"{num_components}, {min_std}, {max_std}, {position_scale}, {velocity_scale}.")
        if max_range <= 0 or not 0 <= p_missing < 1:
            raise ValueError(f"Expected max_range > 0 and 0 <= p_missing < 1, but got {max_range}, {p_missing}.")
        if not 0 <= replicated_fraction <= 1:
            raise ValueError(f"Expected 0 <= replicated_fraction <= 1, but got {replicated_fraction}.")
        self.replicated_fraction = replicated_fraction
        self.num_components, self.position_scale, self.velocity_scale = num_components, position_scale, velocity_scale
        self.min_std, self.max_std, self.max_range, self.p_missing = min_std, max_std, max_range, p_missing
        axis = torch.tensor([[1.0, 1.0 - DECAY], [0.0, DECAY]], dtype=torch.float64)
        self.A = torch.block_diag(axis, axis)
        self.L = torch.tensor([[0.1, 0.0], [0.2, 0.0], [0.0, 0.1], [0.0, 0.2]], dtype=torch.float64)
        self.Q = self.L @ self.L.T
        self.initial_mean = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)

    def options(self) -> dict:
        return {"num_components": self.num_components, "position_scale": self.position_scale,
                "velocity_scale": self.velocity_scale, "min_std": self.min_std, "max_std": self.max_std,
                "max_range": self.max_range, "p_missing": self.p_missing,
                "replicated_fraction": self.replicated_fraction}

    def describe(self) -> dict:
        return super().describe() | {
            "state": "(p_x, v_x, p_y, v_y)",
            "meta_prior": (f"K={self.num_components} components; weights ~ Dirichlet(1); mean positions ~ "
                           f"N(0, {self.position_scale}^2), velocities ~ N(0, {self.velocity_scale}^2); covariances "
                           f"U diag(s^2) U^T with U a random 4-D rotation and log s ~ U(log {self.min_std}, "
                           f"log {self.max_std}); with probability {self.replicated_fraction} one such Gaussian as K equal "
                           "components with weights proportional to 1..K"),
            "likelihood": (f"range: clipped to [0, {self.max_range}] mixture 0.7 N(r, (0.1(r+1))^2) + 0.2 Exp(1) + "
                           f"0.1 U(0, {self.max_range}); bearing: atan2(p_x, p_y) + N(0, 0.1^2) wrapped, given as "
                           f"(cos, sin); each sensor missing with probability {self.p_missing}, never both in "
                           "training"),
        }

    def sample_meta_prior(self, n: int, generator: torch.Generator | None = None) -> GaussianMixture:
        scale = torch.tensor([self.position_scale, self.velocity_scale] * 2)
        priors = random_gmm_priors(n, self.num_components, self.dim, scale, self.min_std, self.max_std, generator)
        if self.replicated_fraction == 0:
            return priors
        K = self.num_components
        replicated = torch.rand(n, generator=generator) < self.replicated_fraction
        log_weights = torch.where(replicated[:, None], rank_weights(K, priors.dtype).log(), priors.log_weights)
        loc = torch.where(replicated[:, None, None], priors.loc[:, :1], priors.loc)
        scale_tril = torch.where(replicated[:, None, None, None], priors.scale_tril[:, :1], priors.scale_tril)
        return GaussianMixture(logits=log_weights, loc=loc, scale_tril=scale_tril)

    def read_sensors(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One range reading ``(*B,)`` and one wrapped bearing ``(*B,)`` for states ``x`` ``(*B, 4)``."""
        shape, dtype = x.shape[:-1], x.dtype
        r = true_range(x)
        u = torch.rand(shape, generator=generator, dtype=dtype)
        gauss = r + 0.1 * (r + 1.0) * torch.randn(shape, generator=generator, dtype=dtype)
        early = -torch.log(torch.rand(shape, generator=generator, dtype=dtype).clamp_min(1e-300))
        failure = self.max_range * torch.rand(shape, generator=generator, dtype=dtype)
        w0, w1, _ = RANGE_WEIGHTS
        reading = torch.where(u < w0, gauss, torch.where(u < w0 + w1, early, failure)).clamp(0.0, self.max_range)
        beta = wrap_angle(true_bearing(x) + BEARING_SD * torch.randn(shape, generator=generator, dtype=dtype))
        return reading, beta

    def _missing(self, shape: tuple, generator: torch.Generator | None, allow_both: bool) -> tuple[Tensor, Tensor]:
        range_present = torch.rand(shape, generator=generator) >= self.p_missing
        bearing_present = torch.rand(shape, generator=generator) >= self.p_missing
        if not allow_both:
            bearing_present = bearing_present | ~range_present
        return range_present, bearing_present

    def observations(self, reading: Tensor, beta: Tensor, range_present: Tensor | None = None,
                     bearing_present: Tensor | None = None) -> Observations:
        """Model input from range readings ``(*B,)`` and bearings ``(*B,)`` in radians, with optional masks
        ``(*B,)`` (``True`` where the sensor read)."""
        shape = reading.shape
        if beta.shape != shape:
            raise ValueError(f"Expected one bearing per range reading (shape {tuple(shape)}), but got bearings of shape "
                             f"{tuple(beta.shape)}.")
        ones = torch.ones(shape, dtype=torch.bool)
        masks = {"range": (ones if range_present is None else range_present).unsqueeze(-1),
                 "bearing": (ones if bearing_present is None else bearing_present).unsqueeze(-1)}
        values = {"range": reading.unsqueeze(-1).unsqueeze(-1),
                  "bearing": torch.stack([torch.cos(beta), torch.sin(beta)], -1).unsqueeze(-2)}
        return Observations(values, masks)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Observations:
        reading, beta = self.read_sensors(theta, generator)
        return self.observations(reading, beta, *self._missing(theta.shape[:-1], generator, allow_both=False))

    def log_likelihood(self, theta: Tensor, observations) -> Tensor:
        """``log p(readings | theta)`` over present readings, for ``theta`` ``(*S, *B, 4)`` and data with batch
        ``B``; returns ``(*S, *B)``."""
        obs = as_observations(observations, self.sources)
        reading = obs.values["range"][..., 0, 0].to(theta.dtype)
        b = obs.values["bearing"][..., 0, :].to(theta.dtype)
        beta = torch.atan2(b[..., 1], b[..., 0])
        ll_range = range_log_likelihood(reading, true_range(theta), self.max_range)
        ll_bearing = bearing_log_likelihood(beta, true_bearing(theta))
        zero = torch.zeros((), dtype=theta.dtype)
        return (torch.where(obs.masks["range"][..., 0], ll_range, zero)
                + torch.where(obs.masks["bearing"][..., 0], ll_bearing, zero))

    def initial_prior(self, n: int, dtype: torch.dtype = torch.float64) -> GaussianMixture:
        """``p(x_0) = N((1, 0, 1, 0), I)`` as ``K`` equal components with weights proportional to 1..K (batch ``(n,)``),
        as in the paper, so the filter starts from a ``K``-component belief."""
        return replicated_gaussian(self.initial_mean.to(dtype), torch.eye(4, dtype=dtype), self.num_components, n)

    def simulate_series(self, num_series: int, steps: int, generator: torch.Generator | None = None) -> Series:
        """``num_series`` tracks of ``steps`` steps (float64): states ``(T, n, 4)`` and readings with batch ``(T, n)``;
        each sensor is missing at a step with probability ``p_missing`` (both may be)."""
        prior = self.initial_prior(num_series)
        x = self.initial_mean + torch.randn(num_series, 4, generator=generator, dtype=torch.float64)
        states, readings, betas, masks_r, masks_b = [], [], [], [], []
        for t in range(steps):
            if t > 0:
                x = x @ self.A.T + torch.randn(num_series, 2, generator=generator, dtype=torch.float64) @ self.L.T
            reading, beta = self.read_sensors(x, generator)
            present = self._missing((num_series,), generator, allow_both=True)
            states.append(x)
            readings.append(reading)
            betas.append(beta)
            masks_r.append(present[0])
            masks_b.append(present[1])
        obs = self.observations(torch.stack(readings), torch.stack(betas), torch.stack(masks_r), torch.stack(masks_b))
        return Series(prior, torch.stack(states), obs)

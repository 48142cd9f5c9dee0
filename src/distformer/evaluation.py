r"""Accuracy of a model on fresh problems of its own kind, against a reference posterior computed on a grid.

For a latent of :math:`D \le 2` coordinates and a problem with a likelihood, the reference is prior times
likelihood on a grid over the model's (warped) space :math:`u`,

.. math::
    \log \tilde p(u_j) = \log q_\phi(u_j) + \log p(z \mid f^{-1}(u_j)),
    \qquad p_j = \tilde p(u_j) / \textstyle\sum_l \tilde p(u_l),

and :math:`\mathrm{KL}(p\,\|\,q) = \sum_j p_j(\log p_j - \log q(u_j)\Delta)` with :math:`\Delta` the cell volume and
:math:`q` the model's posterior on :math:`u` (the prior :math:`q_\phi` is a mixture on :math:`u` already, so no
Jacobian enters). Problems go through in chunks that keep the grid's likelihood evaluations near
``MAX_GRID_ENTRIES``. The grid is found in two passes: a first grid spans the prior's and
the model's components (8 standard deviations each way), and a second, of the same size, spans where the first
grid's posterior exceeds :math:`e^{-25}` of its peak, widened by 5% on either side (a third pass repeats this). With the grid refined where the
posterior lives, the reference does not depend on the model being right.

**The mixture floor** (:func:`mixture_floor`). The model's posterior has as many components as the prior, so even a
perfect network is off where the exact posterior is not such a mixture (a curved posterior under a one-component
prior). On the same grid, EM fits the best mixture :math:`q^\star` with the prior's live components, started from
them: responsibilities :math:`r_{jk} \propto w_k\,\mathcal N(u_j;\mu_k,\Sigma_k)`, then
:math:`w_k = \sum_j p_j r_{jk}`, :math:`\mu_k` and :math:`\Sigma_k` the :math:`p_j r_{jk}`-weighted moments, with
each cell's own spread :math:`\operatorname{diag}(\Delta_d^2/12)` added (its mass is spread over the cell, not
held at its centre). :math:`q^\star` is one such mixture, so :math:`\mathrm{KL}(p\,\|\,q^\star)` is an upper bound on
the smallest KL any of them reaches (EM may stop at a local optimum): the part of the model's KL that a better
network could not remove. With one component, EM's first step gives the moment-matched Gaussian, which minimises
the KL over Gaussians (up to the cell spread), and later steps keep it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .diagnostics import Estimate, estimate
from .distributions.gmm import GaussianMixture
from .distributions.transforms import Warp

MAX_GRID_ENTRIES = 2 * 10**7  # grid points x problems x observations per chunk of likelihood evaluations


@dataclass(frozen=True)
class Evaluation:
    """KL(grid reference ‖ ``against``) per problem ``kl`` ``(n,)`` and its mean with a standard error; ``against``
    is ``"model"`` (:func:`evaluate`) or ``"best mixture"`` (:func:`mixture_floor`)."""

    kl: Tensor
    summary: Estimate
    against: str = "model"

    def __str__(self) -> str:
        return f"KL(reference || {self.against}) = {self.summary.mean:.4f} ± {1.96 * self.summary.stderr:.4f} " \
               f"(95%), {len(self.kl)} problems"


def evaluate(model, problem, num_problems: int = 300, grid_size: int | None = None,
             generator: torch.Generator | None = None) -> Evaluation:
    """KL(grid reference ‖ model) on ``num_problems`` fresh problems of ``problem`` (module docstring); ``grid_size``
    points per axis (default 2001 in 1-D, 201 in 2-D)."""
    batch, warp, grid_size, chunk = _fresh_problems(problem, num_problems, grid_size, (2001, 201), generator)
    with torch.inference_mode():
        post = model.posterior(problem.as_prior(batch.prior), batch.observations, check=False)
    q = post.base if hasattr(post, "base") else post
    prior, q = batch.prior.to(torch.float64), q.to(torch.float64)
    kl = torch.cat([_kl_on_grid(problem, warp, prior[i:i + chunk], q[i:i + chunk],
                                batch.observations.slice(i, min(i + chunk, num_problems)), grid_size)
                    for i in range(0, num_problems, chunk)])
    return Evaluation(kl.to(torch.float32), estimate(kl))


def _fresh_problems(problem, num_problems: int, grid_size: int | None, default_sizes: tuple[int, int],
                    generator: torch.Generator | None):
    """``(batch, warp, grid_size, chunk)`` for a grid evaluation: ``num_problems`` fresh problems (a fixed seed
    unless ``generator`` is given), the problem's warp, the grid's points per axis (``default_sizes`` in 1-D and
    2-D unless given) and how many problems go through at a time; bad arguments raise."""
    if isinstance(num_problems, bool) or not isinstance(num_problems, int) or num_problems < 1:
        raise ValueError(f"Expected num_problems to be a whole number >= 1, but got {num_problems!r}.")
    if problem.dim > 2:
        raise ValueError(f"Expected a problem of at most 2 latent coordinates for a grid reference, but it has "
                         f"{problem.dim}.")
    if grid_size is not None and (isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 3):
        raise ValueError(f"Expected grid_size to be a whole number >= 3 points per axis, or None, but got "
                         f"{grid_size!r}.")
    generator = generator or torch.Generator().manual_seed(0)
    grid_size = grid_size or default_sizes[problem.dim - 1]
    batch = problem.sample_batch(num_problems, generator=generator)
    warp = Warp(problem.warp) if problem.warp else Warp(["identity"] * problem.dim)
    count = max(1, sum(v.shape[-2] for v in batch.observations.values.values()))
    return batch, warp, grid_size, max(1, MAX_GRID_ENTRIES // (grid_size ** problem.dim * count))


def mixture_floor(problem, num_problems: int = 300, grid_size: int | None = None, iterations: int = 100,
                  generator: torch.Generator | None = None) -> Evaluation:
    """KL(grid reference ‖ best mixture with the prior's live components) on ``num_problems`` fresh problems of
    ``problem`` (module docstring, the mixture floor), an upper bound on what any model with as many output
    components can reach. The same problems as :func:`evaluate` with the same ``generator`` seed, so the two pair
    problem by problem; ``iterations`` EM steps; ``grid_size`` points per axis (default 1001 in 1-D, 121 in 2-D)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"Expected iterations to be a whole number >= 1, but got {iterations!r}.")
    batch, warp, grid_size, chunk = _fresh_problems(problem, num_problems, grid_size, (1001, 121), generator)
    prior = batch.prior.to(torch.float64)
    kls = []
    for i in range(0, num_problems, chunk):
        part = prior[i:i + chunk]
        u, cell, log_p = _reference_grid(problem, warp, part, batch.observations.slice(i, min(i + chunk, num_problems)),
                                         grid_size, _span(part))
        best = _fitted_on_grid(u, log_p.exp(), part, grid_size, iterations)
        kls.append((log_p.exp() * (log_p - best.log_prob(u) - cell.log())).sum(0))
    kl = torch.cat(kls)
    return Evaluation(kl.to(torch.float32), estimate(kl), "best mixture")


def _fitted_on_grid(u: Tensor, p: Tensor, start: GaussianMixture, grid_size: int, iterations: int
                    ) -> GaussianMixture:
    """EM (module docstring) for the mixture of ``start``'s live components (weight above e^-30) that best fits
    the cell probabilities ``p`` ``(G, n)`` at points ``u`` ``(G, n, D)`` of regular grids, ``grid_size`` points
    per axis."""
    live = start.log_weights > -30  # (n, K)
    spacing = (u.amax(0) - u.amin(0)) / (grid_size - 1)  # (n, D)
    spread = torch.diag_embed(spacing**2 / 12).unsqueeze(1)  # (n, 1, D, D): a cell's own variance
    log_w, loc, cov = start.log_weights, start.loc, start.component_covariance_matrix
    for _ in range(iterations):
        diff = u.unsqueeze(-2) - loc  # (G, n, K, D)
        precision = torch.linalg.inv(cov)
        maha = torch.einsum("gnkd,nkde,gnke->gnk", diff, precision, diff)
        log_r = log_w - 0.5 * (maha + torch.logdet(cov))
        r = torch.softmax(torch.where(live, log_r, -torch.inf), -1) * p.unsqueeze(-1)  # (G, n, K)
        mass = r.sum(0).clamp_min(1e-300)  # (n, K)
        log_w = torch.where(live, mass.log(), -torch.inf)
        loc = torch.einsum("gnk,gnd->nkd", r, u) / mass.unsqueeze(-1)
        diff = u.unsqueeze(-2) - loc
        cov = torch.einsum("gnk,gnkd,gnke->nkde", r, diff, diff) / mass[..., None, None] + spread
    weights = torch.where(live, torch.softmax(log_w, -1), torch.zeros((), dtype=u.dtype))
    return GaussianMixture(weights, loc, covariance_matrix=cov)


def _kl_on_grid(problem, warp: Warp, prior: GaussianMixture, q: GaussianMixture, observations,
                grid_size: int) -> Tensor:
    """KL(grid reference ‖ q) ``(n,)`` for one chunk of problems (module docstring)."""
    u, cell, log_p = _reference_grid(problem, warp, prior, observations, grid_size, _span(prior, q))
    return (log_p.exp() * (log_p - q.log_prob(u) - cell.log())).sum(0)


def _reference_grid(problem, warp: Warp, prior: GaussianMixture, observations, grid_size: int,
                    span: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The refined grid ``u`` ``(G, n, D)``, its cell volumes ``(n,)`` and the normalised log probabilities of its
    cells ``(G, n)`` under prior times likelihood, starting from the bounds ``span`` (module docstring)."""

    def log_target(u: Tensor) -> Tensor:  # u (G, n, D) -> (G, n)
        theta = warp.inverse(u)  # float64, as refine's draws: float32 would round a logit's parameter to 0 or 1
        value = prior.log_prob(u) + problem.log_likelihood(theta, observations).to(torch.float64)
        if bool(torch.isnan(value).any()):
            at = theta[torch.isnan(value)][0].tolist()
            raise ValueError(f"Expected the log-likelihood of problem {problem.name!r} to be a number or -inf on "
                             f"the reference grid, but it is NaN at parameters {at} (a product 0 * log 0, e.g. "
                             "y * log(p) with p = 0, is NaN: write it with torch.xlogy).")
        return value

    low, high = span
    for _ in range(2):
        u, cell = _grid(low, high, grid_size)
        low, high = _where_it_lives(u, log_target(u))
    u, cell = _grid(low, high, grid_size)
    log_p = log_target(u)
    return u, cell, log_p - torch.logsumexp(log_p, 0)


def reference_draws(problem, prior: GaussianMixture, observations, num_draws: int, grid_size: int | None = None,
                    hint: GaussianMixture | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draws ``(num_draws, n, D)`` on the original space from the grid reference posterior of each of ``n``
    problems (prior ``(n,)`` on the model's space, as ``evaluate`` uses): a cell by its probability, then a uniform
    point in it. ``hint``, a mixture of batch ``(n,)`` such as the model's posterior, widens the first grid to
    cover it too. The draws are exact to the grid's resolution; ``grid_size`` points per axis (2001 in 1-D,
    401 in 2-D by default)."""
    if problem.dim > 2:
        raise ValueError(f"Expected a problem of at most 2 latent coordinates for a grid reference, but it has "
                         f"{problem.dim}.")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"Expected num_draws to be a whole number >= 1, but got {num_draws!r}.")
    prior = (prior.base if hasattr(prior, "base") else prior).to(torch.float64)
    batch = {tuple(v.shape[:-2]) for v in observations.values.values()}
    if prior.dim != problem.dim or batch != {tuple(prior.batch_shape)}:
        raise ValueError(f"Expected a prior over {problem.dim} coordinates with the observations' batch shape "
                         f"{sorted(batch)}, but got one over {prior.dim} with batch {tuple(prior.batch_shape)}.")
    grid_size = grid_size or (2001 if problem.dim == 1 else 401)
    warp = Warp(problem.warp) if problem.warp else Warp(["identity"] * problem.dim)
    hint = None if hint is None else (hint.base if hasattr(hint, "base") else hint).to(torch.float64)
    span = _span(prior) if hint is None else _span(prior, hint)
    u, cell, log_p = _reference_grid(problem, warp, prior, observations, grid_size, span)
    index = torch.multinomial(log_p.T.exp(), num_draws, replacement=True, generator=generator).T  # (S, n)
    centre = torch.gather(u, 0, index.unsqueeze(-1).expand(-1, -1, u.shape[-1]))  # (S, n, D)
    width = (u.amax(0) - u.amin(0)) / (grid_size - 1)  # (n, D)
    jitter = torch.rand(centre.shape, generator=generator, dtype=torch.float64) - 0.5
    return warp.inverse(centre + jitter * width)


def _span(*mixtures: GaussianMixture) -> tuple[Tensor, Tensor]:
    """Per problem ``(n, D)`` bounds holding every component of the mixtures to 8 standard deviations."""
    lows, highs = [], []
    for m in mixtures:
        sd = m.component_covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        present = (m.log_weights > -30).unsqueeze(-1)
        lows.append(torch.where(present, m.loc - 8 * sd, torch.inf).amin(-2))
        highs.append(torch.where(present, m.loc + 8 * sd, -torch.inf).amax(-2))
    return torch.stack(lows).amin(0), torch.stack(highs).amax(0)


def _grid(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Points ``(G, n, D)`` of a regular grid per problem and each problem's cell volume ``(n,)``."""
    steps = torch.linspace(0, 1, size, dtype=torch.float64)
    axes = [low[:, d] + (high[:, d] - low[:, d]) * steps.unsqueeze(-1) for d in range(low.shape[-1])]  # (S, n)
    if len(axes) == 1:
        return axes[0].unsqueeze(-1), (high - low)[:, 0] / (size - 1)
    u = torch.stack([axes[0].unsqueeze(1).expand(size, size, -1), axes[1].unsqueeze(0).expand(size, size, -1)], -1)
    return u.reshape(size * size, -1, 2), ((high - low) / (size - 1)).prod(-1)


def _where_it_lives(u: Tensor, log_p: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds ``(n, D)`` of the grid points within ``e^{-25}`` of each problem's peak, widened by 5% each way."""
    keep = (log_p > log_p.amax(0, keepdim=True) - 25).unsqueeze(-1)
    low = torch.where(keep, u, torch.inf).amin(0)
    high = torch.where(keep, u, -torch.inf).amax(0)
    width = (high - low).clamp_min(1e-12)
    return low - 0.05 * width, high + 0.05 * width

r"""NumPyro NUTS and SVI on the ``linear-gaussian`` problem (optional extra ``baselines``: numpyro, jax).

Model: :math:`x\sim\sum_k w_k\mathcal N(\mu_k, L_kL_k^\top)`, :math:`z_i\mid x\sim\mathcal N(x, I)` for the present
:math:`z_i` (absent ones masked out of the likelihood).

* **NUTS** (reference sampler): ``num_warmup`` adaptation steps, ``num_samples`` draws, one chain. A set of draws
  is not a density; to score the true parameter, a ``k``-component mixture is fitted to the draws by EM (stated
  in every report that uses it).
* **SVI**: a full-covariance Gaussian guide (``AutoMultivariateNormal``), Adam whose step size decays
  geometrically from ``lr`` to ``lr / 20`` over ``num_steps`` steps (so the last iterate is not left at the noise
  level of the one-draw ELBO gradient); its Gaussian is the posterior.

Both start at the mean of the present observations, where the posterior of a few informative readings lies, as a
practitioner would start them. From NumPyro's default start (uniform in (-2, 2)) neither reaches posteriors 30 or
more away, as the broad meta-prior's wide family draws them: SVI's steps shrink before it arrives, and NUTS spends
its adaptation in transit (NLL in the thousands on a few of 20 problems, `bench speed`).

Both compile once per shape with ``jax.jit``; :meth:`compile` runs one problem so that compile time is measured
apart from the per-problem time.
"""

from __future__ import annotations

import numpy as np
import torch

from ..distributions.gmm import GaussianMixture
from .nuts import SequentialNUTS


def available() -> bool:
    """Whether numpyro and jax import (the ``baselines`` extra)."""
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def _model(weights, loc, scale_tril, z, mask):
    import numpyro
    import numpyro.distributions as dist

    prior = dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                   dist.MultivariateNormal(loc, scale_tril=scale_tril))
    x = numpyro.sample("x", prior)
    with numpyro.handlers.mask(mask=mask):
        numpyro.sample("z", dist.Normal(x, 1.0).expand(z.shape).to_event(1), obs=z)


def _arrays(prior: GaussianMixture, z: torch.Tensor, mask: torch.Tensor, i: int):
    """The model's arguments for problem ``i`` of a batch, as jax arrays."""
    import jax.numpy as jnp

    return tuple(jnp.asarray(a[0]) for a in svi_arguments(prior[i:i + 1], z[i:i + 1], mask[i:i + 1]))


def svi_arguments(prior: GaussianMixture, z: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The model's arguments stacked over problems, in float64: weights ``(n, K)``, loc ``(n, K, D)``, scale_tril
    ``(n, K, D, D)``, z ``(n, N, D)``, mask ``(n, N)``."""
    return (prior.weights.double().numpy(), prior.loc.double().numpy(), prior.scale_tril.double().numpy(),
            z.double().numpy(), mask.numpy())


def batched_svi(dim: int, num_steps: int = 2000, seed: int = 0):
    """Full-covariance Gaussian SVI on ``dim``-D linear-Gaussian problems, vmapped over a batch (the paper's
    settings: step size 0.1 decaying by 0.999 per step, 10 draws); call ``.posterior(*svi_arguments(...))``."""
    from .svi import BatchedSVI

    return BatchedSVI(_model, ("identity",) * dim, num_steps=num_steps, seed=seed)


def data_mean(z: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The mean ``(D,)`` of one problem's present observations ``z`` ``(N, D)`` (mask ``(N,)``), in float64."""
    present = mask.double().unsqueeze(-1)
    return ((z.double() * present).sum(0) / present.sum(0).clamp_min(1)).numpy()


class NUTSBaseline(SequentialNUTS):
    """NUTS posterior draws per problem of a linear-Gaussian batch, scored through an EM mixture fit."""

    def __init__(self, num_warmup: int = 500, num_samples: int = 1000, fit_components: int = 4, seed: int = 0):
        super().__init__(_model, None, num_warmup, num_samples, fit_components, seed)

    def draws(self, prior: GaussianMixture, z: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        """Posterior draws ``(S, D)`` for problem ``i`` of a batch, the chain started at its data mean."""
        return super().draws(*_arrays(prior, z, mask, i), init=data_mean(z[i], mask[i]))

    def posterior(self, draws: torch.Tensor, generator: torch.Generator) -> GaussianMixture:
        """The EM mixture fitted to one problem's draws ``(S, D)``."""
        return super().posterior(draws.unsqueeze(1), generator)[0]


class SVIBaseline:
    """SVI with a full-rank Gaussian guide; returns that Gaussian per problem."""

    def __init__(self, num_steps: int = 2000, lr: float = 0.02, seed: int = 0):
        import jax
        from numpyro.infer import SVI, Trace_ELBO
        from numpyro.infer.autoguide import AutoMultivariateNormal
        from numpyro.optim import Adam

        jax.config.update("jax_enable_x64", True)
        self.guide = AutoMultivariateNormal(_model)
        decay = (1.0 / 20.0) ** (1.0 / num_steps)
        self.svi = SVI(_model, self.guide, Adam(lambda i: lr * decay**i), Trace_ELBO())
        self.num_steps, self.key = num_steps, jax.random.PRNGKey(seed)

        def fit(state, args):
            return jax.lax.fori_loop(0, num_steps, lambda _, s: self.svi.update(s, *args)[0], state)

        self._fit = jax.jit(fit)

    def posterior(self, prior: GaussianMixture, z: torch.Tensor, mask: torch.Tensor, i: int) -> GaussianMixture:
        import jax

        from numpyro.infer.svi import SVIState

        args = _arrays(prior, z, mask, i)
        self.key, sub = jax.random.split(self.key)
        state = self.svi.init(sub, *args)
        unconstrained = self.svi.optim.get_params(state.optim_state)  # auto_loc's constraint is the identity
        params = unconstrained | {"auto_loc": jax.numpy.asarray(data_mean(z[i], mask[i]))}
        state = SVIState(self.svi.optim.init(params), state.mutable_state, state.rng_key)  # started at the data mean
        state = self._fit(state, args)
        q = self.guide.get_posterior(self.svi.get_params(state))
        loc = torch.from_numpy(np.array(q.loc)).view(1, -1)
        tril = torch.from_numpy(np.array(q.scale_tril)).unsqueeze(0)
        return GaussianMixture(torch.ones(1, dtype=torch.float64), loc, scale_tril=tril)

r"""SVI with a full-covariance Gaussian on the warped (unconstrained) space, batched over problems (NumPyro).

For a NumPyro model :math:`p(x)\,p(z\mid x)` whose latent :math:`x` has a constrained support, NumPyro's
``AutoMultivariateNormal`` guide is :math:`q(u) = \mathcal N(u; m, LL^\top)` on the unconstrained space
:math:`u = f(x)` (log for positive, logit for (0, 1) supports), fitted by maximising the ELBO

.. math::
    \mathcal L(m, L) = \mathbb E_{q(u)}\big[\log p(f^{-1}(u)) + \log p(z\mid f^{-1}(u)) + \log|\det J_{f^{-1}}(u)|\big]
    + \mathbb H[q]

with ``num_particles`` reparameterised draws per step and Adam whose step size decays as
:math:`\eta_t = \eta\,\gamma^t` (the paper's setting: :math:`\eta = 0.1`, :math:`\gamma = 0.999`, 2000 steps, 10
draws). The fit of every problem runs in one ``jax.jit(jax.vmap(...))`` call, so the time per problem is that of a
batched run, like the model's. The result is a one-component :class:`WarpedGaussianMixture` per problem.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..distributions.gmm import GaussianMixture
from ..distributions.transforms import WarpedGaussianMixture


class BatchedSVI:
    """Full-covariance Gaussian SVI for a NumPyro ``model(*args)``, vmapped over a batch of problems.

    Problems go through the vmapped fit ``chunk_size`` at a time: XLA's CPU runtime can stall on one vmapped call
    over a thousand problems (every thread waiting), which a few hundred at a time avoid.
    """

    chunk_size: int = 250

    def __init__(self, model: Callable, warp: Sequence[str], num_steps: int = 2000, lr: float = 0.1,
                 decay: float = 0.999, num_particles: int = 10, seed: int = 0) -> None:
        import jax
        from numpyro.infer import SVI, Trace_ELBO
        from numpyro.infer.autoguide import AutoMultivariateNormal
        from numpyro.optim import Adam

        jax.config.update("jax_enable_x64", True)
        self.warp = tuple(warp)
        guide = AutoMultivariateNormal(model)
        svi = SVI(model, guide, Adam(lambda i: lr * decay**i), Trace_ELBO(num_particles=num_particles))

        def fit(key, *args):
            state = svi.init(key, *args)
            state = jax.lax.fori_loop(0, num_steps, lambda _, s: svi.update(s, *args)[0], state)
            params = svi.get_params(state)
            return params["auto_loc"], params["auto_scale_tril"]

        self._fit = jax.jit(jax.vmap(fit))
        self.key = jax.random.PRNGKey(seed)

    def posterior(self, *args: np.ndarray) -> WarpedGaussianMixture:
        """Fit every problem; ``args`` are the model's arguments stacked over a leading batch axis ``(n, ...)``."""
        import jax
        import jax.numpy as jnp

        n = len(args[0])
        self.key, sub = jax.random.split(self.key)
        keys = jax.random.split(sub, n)  # one key per problem, whatever the chunking
        size = min(self.chunk_size, n)
        fits = []
        for start in range(0, n, size):
            # every chunk has the same shape (the last is padded by repeating its final problem): the guide keeps
            # the shapes it was first traced with, so a second shape would need a second guide
            index = np.minimum(np.arange(start, start + size), n - 1)
            loc, tril = self._fit(keys[index], *[jnp.asarray(a[index]) for a in args])
            fits.append((np.array(loc)[:n - start], np.array(tril)[:n - start]))
        loc = torch.from_numpy(np.concatenate([f[0] for f in fits])).unsqueeze(-2)  # (n, 1, D)
        tril = torch.from_numpy(np.concatenate([f[1] for f in fits])).unsqueeze(-3)  # (n, 1, D, D)
        base = GaussianMixture(torch.ones(n, 1, dtype=loc.dtype), loc, scale_tril=tril, validate_args=False)
        return WarpedGaussianMixture(base, self.warp)

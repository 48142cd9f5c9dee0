r"""NUTS as the reference sampler for any NumPyro model (optional extra ``baselines``), one problem at a time.

NumPyro's NUTS runs on the unconstrained space (the problem's warp), with ``num_warmup`` adaptation steps and
``num_samples`` draws in one chain, compiled once per argument shape (``jit_model_args``). A set of draws is not
a density; to score the true parameter, a ``k``-component mixture is fitted by EM to the draws on the warped
space and pushed back through the warp (stated in every report that uses it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..distributions.gmm import GaussianMixture
from ..distributions.transforms import Warp, WarpedGaussianMixture


class SequentialNUTS:
    """NUTS draws per problem for ``model(*args)`` whose latent site is ``x`` (``warp`` ``None``: unconstrained)."""

    def __init__(self, model: Callable, warp: Sequence[str] | None, num_warmup: int = 500, num_samples: int = 1000,
                 fit_components: int = 3, seed: int = 0) -> None:
        import jax
        from numpyro.infer import MCMC, NUTS

        jax.config.update("jax_enable_x64", True)
        self.warp = Warp(warp) if warp is not None else None
        self.mcmc = MCMC(NUTS(model), num_warmup=num_warmup, num_samples=num_samples, progress_bar=False,
                         jit_model_args=True)
        self.fit_components, self.key = fit_components, jax.random.PRNGKey(seed)

    def draws(self, *args, init=None) -> torch.Tensor:
        """Posterior draws ``(S, D)`` on the original space for one problem; ``init``: where the chain starts on
        the unconstrained space (default NumPyro's, uniform in (-2, 2))."""
        import jax
        import jax.numpy as jnp

        self.key, sub = jax.random.split(self.key)
        start = None if init is None else {"x": jnp.asarray(init)}
        self.mcmc.run(sub, *[jnp.asarray(a) for a in args], init_params=start)
        x = torch.from_numpy(np.array(self.mcmc.get_samples()["x"])).double()
        return x.reshape(x.shape[0], -1)

    def posterior(self, draws: torch.Tensor, generator: torch.Generator) -> WarpedGaussianMixture | GaussianMixture:
        """EM fit of ``fit_components`` Gaussians to warped draws ``(S, *B, D)``, per problem, as a distribution on
        the original space with batch ``B`` (a plain ``GaussianMixture`` without a warp)."""
        if self.warp is None:
            return GaussianMixture.fit(draws, self.fit_components, generator=generator)
        base = GaussianMixture.fit(self.warp.forward(draws), self.fit_components, generator=generator)
        return WarpedGaussianMixture(base, self.warp)

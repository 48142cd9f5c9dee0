r"""NumPyro versions of the static problems, for the SVI and NUTS baselines (optional extra ``baselines``).

Each function is a NumPyro model whose arguments are one problem's prior parameters and data; the latent site is
called ``x`` and has the problem's constrained support, so NumPyro's unconstrained space is the problem's warped
space (log for a variance, logit for :math:`\Delta`).

* ``inverse_gamma_model``: :math:`\sigma^2\sim\mathrm{InvGamma}(\alpha,\beta)`, :math:`z_i\sim\mathcal N(0,\sigma^2)`.
* ``quantum_model``: :math:`\Delta\sim\mathrm{Beta}(a, b)`, readings :math:`y_j\sim\mathrm{Bernoulli}(\pi_j(\Delta))`
  with the exact marginal shot probability of ``problems/quantum.py`` (the paper's SVI estimated it with 10
  draws of the jitter; the exact one makes this baseline stronger, not weaker).
"""

from __future__ import annotations


def inverse_gamma_model(alpha, beta, z, mask):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    var = numpyro.sample("x", dist.InverseGamma(alpha, beta))
    # the mask applies per reading (batch shape (N,)) before the readings are summed into one event
    numpyro.sample("z", dist.Normal(0.0, jnp.sqrt(var)).expand(z.shape).mask(mask).to_event(1), obs=z)


def quantum_model(a, b, settings, moments, y, mask, time_sd):
    """``settings`` ``(N, 3)`` nominal ``(p, q, t)``, ``moments`` ``(N, 3)``, readings ``y`` ``(N,)``."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    delta = numpyro.sample("x", dist.Beta(a, b))
    omega = jnp.sqrt(delta**2 + (1 - delta) ** 2)
    nx, nz = delta / omega, (1 - delta) / omega
    cos2 = 0.5 * (1 + jnp.cos(2 * omega * settings[:, 2]) * jnp.exp(-2 * omega**2 * time_sd**2))
    pp, pq, qq = moments[:, 0], moments[:, 1], moments[:, 2]
    prob = jnp.clip(cos2 * qq + (1 - cos2) * (nx**2 * pp - 2 * nx * nz * pq + nz**2 * qq), 1e-12, 1 - 1e-12)
    numpyro.sample("y", dist.Bernoulli(probs=prob).mask(mask).to_event(1), obs=y)

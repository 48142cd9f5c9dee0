"""A variance under an inverse-gamma prior: a parametric prior, a positive parameter, one reading.

The shipped ``inverse-gamma`` model takes the prior's parameters (alpha, beta) directly, works on log sigma^2,
and returns a ``WarpedGaussianMixture`` on sigma^2 itself: ``log_prob`` includes the Jacobian, ``sample`` draws
variances, ``.base`` is the mixture on log sigma^2. Here it is checked against the closed-form posterior
InvGamma(alpha + 1/2, beta + z^2/2) for four priors typical of the training meta-prior (alpha, beta each
InvGamma(4, 6)), with the mixture fit to each prior that the network reads (tabulated, not learned), and for one
prior from the meta-prior's corner where the model is weakest: a confident prior (alpha = 5, beta = 1, prior
mean 0.25) meeting a reading nine times its mean square. That corner (large z^2 / beta) is where most of the model's mean KL over the meta-prior comes from.

Run: ``python examples/variance_inverse_gamma.py``
"""

import torch
from torch.distributions import InverseGamma

import distformer as dfm
from distformer.problems.sampling import inverse_gamma

torch.set_num_threads(1)
model = dfm.pretrained("inverse-gamma")
priors = torch.tensor([[2.0, 2.0], [1.5, 3.0], [1.2, 4.0], [2.5, 2.5], [5.0, 1.0]])  # (alpha, beta) per row; last: corner
n = len(priors)
z = torch.full((n, 1, 1), 1.5)                                # one reading per prior, shape (n, N=1, 1)

posterior = model.posterior(priors, z)                        # WarpedGaussianMixture, batch (n,)
approx = model.prior_approximation(priors)                    # the 8-component fit to each prior (tabulated)
exact = InverseGamma(priors[:, 0] + 0.5, priors[:, 1] + 0.5 * z[:, 0, 0] ** 2)

generator = torch.Generator().manual_seed(0)
draws = inverse_gamma(exact.concentration.expand(20000, n), exact.rate.expand(20000, n), generator)  # (S, n)
kl = (exact.log_prob(draws) - posterior.log_prob(draws.unsqueeze(-1))).mean(0)
prior_draws = inverse_gamma(priors[:, 0].expand(20000, n), priors[:, 1].expand(20000, n), generator)
prior_kl = (InverseGamma(priors[:, 0], priors[:, 1]).log_prob(prior_draws)
            - approx.log_prob(prior_draws.unsqueeze(-1))).mean(0)
samples = posterior.sample((20000,), generator=generator)[..., 0]

print("alpha  beta   posterior mean (exact / model)   KL(exact||model)   KL(prior||prior fit)")
for i, (a, b) in enumerate(priors.tolist()):
    print(f"{a:5.1f} {b:5.1f}   {float(exact.mean[i]):8.3f} / {float(samples[:, i].mean()):8.3f}"
          f"            {float(kl[i]):9.5f}            {float(prior_kl[i]):9.5f}")
print("last row: the weak corner described in the docstring (a reading far out under a confident prior)")
assert bool((kl[:-1] < 0.01).all()), "the shipped model should be within 0.01 nats of the closed form on typical priors"

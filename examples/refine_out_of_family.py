"""When the prior is outside what the model was trained on: warn, refine, and read the reliability flag.

The shipped ``linear-gaussian-2d`` model was trained on prior components with standard deviations down to 0.005
(the noise has standard deviation 1). Here the prior's components are up to ten times narrower still, so the
model flags the problem (``post.reliable`` is False, and it warns): its accuracy there was never measured.
``distformer.refine`` checks and corrects the answer by importance sampling against the exact likelihood, and its
Pareto k̂ says whether to believe the correction.

Run: ``python examples/refine_out_of_family.py``
"""

import warnings

import torch

import distformer as dfm
from distformer.diagnostics import kl_divergence

g = torch.Generator().manual_seed(0)
model = dfm.pretrained("linear-gaussian-2d")
problem = dfm.problems.get("linear-gaussian", dim=2)  # its likelihood: z_i = x + N(0, I)

# a sharp 4-component prior (sd 0.0005 to 0.002), outside the training family
loc = torch.tensor([[[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0], [0.8, -0.8]]])
sd = torch.tensor([0.0005, 0.001, 0.002, 0.0008]).view(1, 4, 1, 1)
prior = dfm.GaussianMixture(torch.tensor([[0.3, 0.3, 0.2, 0.2]]), loc, covariance_matrix=sd**2 * torch.eye(2))
z = torch.tensor([0.9, 0.4]) + torch.randn(1, 8, 2, generator=g)  # 8 observations

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    posterior = model.posterior(prior, z)
print("reliable:", bool(posterior.reliable), "| warning:", caught[0].message if caught else "none")

refined = dfm.refine(posterior, prior, problem, z, n=4096, generator=g)
print(f"Pareto k-hat = {float(refined.pareto_k):.2f} (reliable below {refined.threshold:.2f}): "
      f"{'reliable' if bool(refined.reliable) else 'do not trust'}; effective sample size {float(refined.ess):.0f}")

exact = problem.exact_posterior(prior.to(torch.float64), z)
print(f"KL(exact || model)   = {float(kl_divergence(exact, posterior, 4096, g)):.4f} nats")
print(f"KL(exact || refined) = {float(kl_divergence(exact, refined.posterior, 4096, g)):.4f} nats")

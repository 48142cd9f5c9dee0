"""Quickstart: a posterior in a millisecond under a prior chosen at run time, then fed back as the next prior.

Run: ``python examples/quickstart.py``
"""

import torch

import distformer as dfm

g = torch.Generator().manual_seed(1)
model = dfm.pretrained("linear-gaussian-2d")
print("trained on:", model.card["problem"]["meta_prior"])

# any 4-component prior over R^2, chosen now, no retraining
prior = dfm.GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1]),
                            torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0], [0.5, 0.5]]),
                            covariance_matrix=0.8 * torch.eye(2).expand(4, 2, 2))
x_true = torch.tensor([1.5, 0.5])

belief, seen = prior, []
for step in range(3):  # three batches of 5 observations: each posterior becomes the next prior
    z = x_true + torch.randn(5, 2, generator=g)
    seen.append(z)
    belief = model.posterior(belief, z)
    print(f"after batch {step + 1}: mean {[round(v, 3) for v in belief.mean.tolist()]}")

exact = prior.condition_linear_gaussian(torch.eye(2), torch.eye(2), torch.cat(seen))  # all 15 points at once
print(f"exact posterior mean   {[round(v, 3) for v in exact.mean.tolist()]}")

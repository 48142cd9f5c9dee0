"""Known observation noise of another scale: rescale, update with the shipped model, map back.

The shipped ``linear-gaussian-2d`` model was trained for z_i = x + v_i with v_i ~ N(0, I). If your sensor has
noise v_i ~ N(0, s^2 I) with known s, work in the coordinates y = x / s: then z_i / s = y + v_i / s with unit noise.
The prior is pushed into y-space with ``affine``, the model updates it, and ``affine`` maps the posterior back.

Run: ``python examples/rescaled_noise.py``
"""

import torch

import distformer as dfm
from distformer.diagnostics import kl_divergence

torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
model = dfm.pretrained("linear-gaussian-2d")

s = 0.5  # known noise standard deviation of the sensor
x_true = torch.tensor([0.8, -0.4])
z = (x_true + s * torch.randn(1, 12, 2, generator=g))  # 12 observations, noise sd 0.5

prior = dfm.GaussianMixture(torch.tensor([[0.5, 0.3, 0.1, 0.1]]),
                            torch.tensor([[[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0], [2.0, 2.0]]]),
                            covariance_matrix=torch.eye(2).expand(1, 4, 2, 2) * torch.tensor([1.0, 0.5, 2.0, 0.8]).view(1, 4, 1, 1))

scale_down = torch.eye(2) / s
prior_y = prior.affine(scale_down)                      # prior over y = x / s
posterior_y = model.posterior(prior_y, z / s)           # unit-noise update in y-space
posterior = posterior_y.affine(s * torch.eye(2))        # back to x-space

exact = prior.to(torch.float64).condition_linear_gaussian(torch.eye(2), s**2 * torch.eye(2), z.double())
print("posterior mean (model):", posterior.mean[0].tolist())
print("posterior mean (exact):", exact.mean[0].tolist())
print(f"KL(exact || model) = {float(kl_divergence(exact, posterior, 4096, generator=g).mean()):.4f} nats")

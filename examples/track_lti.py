"""Track a moving object with the model filter, read top to bottom.

The object moves on a damped rotation, x_t = A x_{t-1} + N(0, 0.3^2 I), and a sensor reports 1-5 noisy readings
z = x_t + N(0, I) per step; sometimes it reports nothing. We start from a 4-component prior (we do not know which
of four places the object starts in), and after every step the belief is again a 4-component mixture, so each
step costs the same. The exact Gaussian-sum Kalman filter runs beside it as the reference.

Run: ``python examples/track_lti.py``
"""

import torch

import distformer as dfm
from distformer.filtering import LinearGaussianUpdate
from distformer.problems.lti import LTI

system = LTI()  # A, Q and the sensor model
series = system.simulate(num_series=1, steps=50, generator=torch.Generator().manual_seed(7))

# 1. The prior over the starting state: four candidate places.
prior = series.prior.to(torch.float32)
print("prior weights:", [round(w, 2) for w in prior.weights[0].tolist()])

# 2. The filter: exact motion per component, the pretrained model as the update.
model = dfm.pretrained("linear-gaussian-2d")
motion = dfm.LinearGaussianMotion(system.A.float(), None, system.Q.float())
filt = dfm.Filter(model, motion=motion, check=False)

# 3. Step through the series; a step with no readings only predicts.
belief = prior
z, present = series.observations.values["z"], series.observations.masks["z"]
for t in range(z.shape[0]):
    belief = filt.update(belief if t == 0 else filt.predict(belief, t), z[t].float(), present[t])
    if t % 10 == 0 or t == z.shape[0] - 1:
        err = (belief.mean[0] - series.states[t, 0].float()).norm()
        sd = belief.covariance_matrix[0].diagonal().sqrt()
        print(f"step {t:2d}: {int(present[t].sum()):d} readings, error {err:.2f}, belief sd {sd[0]:.2f} / {sd[1]:.2f}")

# 4. The same in one call, and the exact filter for comparison.
learned = filt.run(prior, series.observations)
exact = dfm.Filter(LinearGaussianUpdate(system.H, system.R), dfm.LinearGaussianMotion(system.A, None, system.Q))
reference = exact.run(series.prior, series.observations)
gap = (learned.nll(series.states) - reference.nll(series.states)).mean()
print(f"mean NLL of the true state: model {learned.nll(series.states).mean():.3f}, exact "
      f"{reference.nll(series.states).mean():.3f} (gap {gap:.3f} nats per step)")

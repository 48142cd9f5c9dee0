"""Bring your own model, two parameters: exponential decay y = A exp(-k t) + noise, with theta = (log A, log k),
readings at random times. Trained to a time budget, checked against a grid reference, then refined where the flag
asks for it. Read top to bottom.

Run: ``python examples/own_model_decay.py`` (trains for 15 minutes on 2 cores; ``--minutes 0.2`` for a smoke run)
"""

import argparse

import torch

import distformer as dfm

NOISE = 0.1


def simulate(theta, generator):
    """For each theta = (log A, log k) (n, 2): 3 to 20 readings (t, y) with t ~ U(0, 3)."""
    n = theta.shape[0]
    counts = torch.randint(3, 21, (n,), generator=generator).tolist()
    t = 3 * torch.rand(n, 20, generator=generator)
    y = theta[:, :1].exp() * torch.exp(-theta[:, 1:].exp() * t) + NOISE * torch.randn(n, 20, generator=generator)
    data = torch.stack([t, y], -1)
    return [data[i, :counts[i]] for i in range(n)]


def log_likelihood(theta, z):
    """log p((t, y) | theta) for theta (..., 1, 2) and readings z (..., N, 2) -> (..., N)."""
    mean = theta[..., :1].exp() * torch.exp(-theta[..., 1:].exp() * z[..., :1])
    return (-0.5 * ((z[..., 1:] - mean) / NOISE) ** 2 - torch.log(torch.tensor(NOISE * (2 * torch.pi) ** 0.5)))[..., 0]


problem = dfm.problems.from_simulator(
    simulate, support=["real", "real"], log_likelihood=log_likelihood, max_observations=20, observation_dim=2,
    name="exponential-decay",
    meta_prior=dfm.meta_priors.random_mixtures(dim=2, components=(1, 2), mean=(-1.0, 1.0), scale=(0.1, 0.7)))

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--problems", type=int, default=300, help="fresh problems for the grid-reference KL")
    parser.add_argument("--out", default="runs/exponential-decay")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = dfm.TrainConfig(architecture=dfm.ArchitectureConfig(d_model=64, ff_dim=256, hidden=64,
                                                                 site_evidence=True, bounded_prior_features=True),
                             steps=40000, batch_size=256, lr=2e-3, weight_average_decay=0.999)
    model = dfm.train(problem, config, time_budget=60 * args.minutes)
    model.save(args.out)
    print(dfm.evaluate(model, problem, num_problems=args.problems))

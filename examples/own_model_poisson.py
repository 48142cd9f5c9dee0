"""Bring your own model: Poisson counts with an unknown log-rate, trained to a time budget, then used under priors
chosen at run time. Read top to bottom.

Run: ``python examples/own_model_poisson.py`` (trains for 10 minutes on 2 cores; ``--minutes 0.2`` for a smoke run)
"""

import argparse

import torch

import distformer as dfm


def simulate(theta, generator):
    """For each log-rate theta (n, 1): between 1 and 20 counts from Poisson(exp(theta))."""
    n = theta.shape[0]
    counts = torch.randint(1, 21, (n,), generator=generator).tolist()
    y = torch.poisson(theta[:, 0].exp().unsqueeze(-1).expand(n, 20), generator=generator)
    return [y[i, :counts[i]] for i in range(n)]


def log_likelihood(theta, y):
    """log p(y_i | theta) for theta (..., 1, 1) and counts y (..., N, 1): y theta - e^theta - log y!."""
    return (y * theta - theta.exp() - torch.lgamma(y + 1))[..., 0]


problem = dfm.problems.from_simulator(
    simulate, support=["real"], log_likelihood=log_likelihood, max_observations=20, name="poisson-lograte",
    meta_prior=dfm.meta_priors.random_mixtures(dim=1, components=(1, 3), mean=(-2.0, 3.0), scale=(0.1, 1.5)))

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--problems", type=int, default=300, help="fresh problems for the grid-reference KL")
    parser.add_argument("--out", default="runs/poisson-lograte")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = dfm.TrainConfig(architecture=dfm.ArchitectureConfig(d_model=32, ff_dim=128, hidden=32,
                                                                 site_evidence=True, bounded_prior_features=True),
                             steps=20000, batch_size=256, lr=3e-3, weight_average_decay=0.999, posterior_draws=0)
    model = dfm.train(problem, config, time_budget=60 * args.minutes)
    model.save(args.out)
    print(dfm.evaluate(model, problem, num_problems=args.problems))  # KL to a grid reference on fresh problems
    # A prior chosen now: log-rate ~ N(1, 0.5^2), and 5 counts.
    prior = dfm.GaussianMixture(torch.tensor([1.0]), torch.tensor([[1.0]]), covariance_matrix=torch.tensor([[[0.25]]]))
    post = model.posterior(prior, torch.tensor([[3.0], [5.0], [2.0], [4.0], [6.0]]))
    print("posterior mean log-rate", float(post.mean), "sd", float(post.variance.sqrt()), "reliable", bool(post.reliable))

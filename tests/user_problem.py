"""A user's own problem, importable by name (``user_problem:make``), for the CLI tests of problem factories."""

import torch

import distformer as dfm


def simulate(theta, generator):
    n = theta.shape[0]
    counts = torch.randint(1, 6, (n,), generator=generator).tolist()
    y = torch.poisson(theta[:, 0].exp().unsqueeze(-1).expand(n, 5), generator=generator)
    return [y[i, :counts[i]] for i in range(n)]


def log_likelihood(theta, y):
    return (y * theta - theta.exp() - torch.lgamma(y + 1))[..., 0]


def make(max_observations: int = 5):
    return dfm.problems.from_simulator(simulate, ["real"], dfm.meta_priors.random_mixtures(1),
                                       max_observations=max_observations, log_likelihood=log_likelihood,
                                       name="user-poisson")

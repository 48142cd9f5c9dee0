"""NumPyro NUTS and SVI baselines (extra ``baselines``; skipped cleanly without it): both recover an exact posterior."""

import math

import pytest
import torch

pytest.importorskip("numpyro")
pytest.importorskip("jax")

from distformer import GaussianMixture, problems  # noqa: E402
from distformer import Observations as dfm_observations  # noqa: E402
from distformer.baselines.numpyro_linear_gaussian import NUTSBaseline, SVIBaseline  # noqa: E402


def _gaussian_problem():
    """A one-component prior on R^2 and 6 observations: the exact posterior is one Gaussian."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixture(torch.ones(1, 1, dtype=torch.float64), torch.tensor([[[1.0, -1.0]]], dtype=torch.float64),
                            covariance_matrix=torch.tensor([[[[2.0, 0.5], [0.5, 1.0]]]], dtype=torch.float64))
    z = torch.tensor([0.5, 0.0], dtype=torch.float64) + torch.randn(1, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    exact = problems.get("linear-gaussian", dim=2).exact_posterior(prior, z)
    return prior, z, mask, exact[0], g


def test_nuts_draws_match_the_exact_posterior():
    prior, z, mask, exact, _ = _gaussian_problem()
    draws = NUTSBaseline(num_warmup=300, num_samples=2000, seed=1).draws(prior, z, mask, 0)
    sd = exact.covariance_matrix.diagonal().sqrt()
    # NUTS draws are autocorrelated; with an effective size above ~500 the mean's error is < sd / 22, and the bound
    # below (sd / 5) is more than 4 such errors
    assert bool(((draws.mean(0) - exact.mean).abs() < sd / 5).all())
    assert bool(((draws.std(0) / sd - 1).abs() < 0.15).all())


def test_svi_gaussian_matches_the_exact_gaussian():
    prior, z, mask, exact, _ = _gaussian_problem()
    q = SVIBaseline(num_steps=2000, seed=2).posterior(prior, z, mask, 0)
    sd = exact.covariance_matrix.diagonal().sqrt()
    assert bool(((q.mean - exact.mean).abs() < sd / 5).all())
    assert bool(((q.covariance_matrix.diagonal().sqrt() / sd - 1).abs() < 0.2).all())


def test_batched_svi_gaussian_matches_the_exact_gaussian_per_problem():
    """The vmapped SVI fits each problem of a batch to its own data (three data sets under one Gaussian prior)."""
    from distformer.baselines.numpyro_linear_gaussian import batched_svi, svi_arguments

    prior, _, _, _, g = _gaussian_problem()
    prior = prior.expand((3,))
    z = torch.tensor([[0.5, 0.0], [-2.0, 1.0], [3.0, 3.0]], dtype=torch.float64).unsqueeze(1) \
        + torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 3:] = False  # the third problem sees three readings only
    eye = torch.eye(2, dtype=torch.float64)
    exact = prior.condition_linear_gaussian(eye, eye, z, mask)
    q = batched_svi(2, num_steps=2000, seed=4).posterior(*svi_arguments(prior, z, mask)).base
    sd = exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    assert bool(((q.mean - exact.mean).abs() < sd / 5).all())
    assert bool(((q.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() / sd - 1).abs() < 0.2).all())
    chunked = batched_svi(2, num_steps=2000, seed=4)
    chunked.chunk_size = 2  # problems 0-1, then 2: each keeps its own key, so the fit is the same
    qc = chunked.posterior(*svi_arguments(prior, z, mask)).base
    torch.testing.assert_close(qc.loc, q.loc, rtol=0, atol=1e-9)
    torch.testing.assert_close(qc.scale_tril, q.scale_tril, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["inverse-gamma", "quantum"])
def test_numpyro_models_have_the_problems_log_joint(name):
    """The NumPyro model's log joint equals the problem's prior log density plus ``log_likelihood`` in float64, with
    some readings masked out: a mask applied after the readings are summed would count them all N times."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer.util import log_density
    from torch.distributions import Beta, InverseGamma

    from distformer.baselines.numpyro_models import inverse_gamma_model, quantum_model
    from distformer.observations import as_observations
    from distformer.problems.quantum import TIME_SD, TwoLevelSystem

    jax.config.update("jax_enable_x64", True)
    g = torch.Generator().manual_seed(3)
    if name == "quantum":
        problem = TwoLevelSystem()
        batch = problem.sample_batch(4, generator=g)
        prior = batch.prior.double()
        tokens = batch.observations.values["shots"].double()
        mask = torch.rand(4, tokens.shape[1], generator=g) < 0.7
        obs = as_observations({"shots": tokens}, problem.sources, mask={"shots": mask})
        points = torch.tensor([0.1, 0.45, 0.9], dtype=torch.float64)

        def args(i):
            return (prior[i, 0].item(), prior[i, 1].item(), tokens[i, :, 1:].numpy(), problem._moments.numpy(),
                    tokens[i, :, 0].numpy(), mask[i].numpy(), TIME_SD)
        model, log_prior = quantum_model, Beta(prior[:, 0], prior[:, 1])
    else:
        problem = problems.get("inverse-gamma", num_observations=5)
        batch = problem.sample_batch(4, generator=g)
        prior = batch.prior.double()
        z = batch.observations.values["z"].double()
        mask = torch.rand(4, z.shape[1], generator=g) < 0.7
        obs = as_observations({"z": z}, problem.sources, mask={"z": mask})
        points = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)

        def args(i):
            return prior[i, 0].item(), prior[i, 1].item(), z[i, :, 0].numpy(), mask[i].numpy()
        model, log_prior = inverse_gamma_model, InverseGamma(prior[:, 0], prior[:, 1])
    assert not bool(mask.all()) and bool(mask.any())
    theta = points.view(-1, 1, 1).expand(-1, 4, 1)  # (3, 4, 1)
    expected = log_prior.log_prob(theta[..., 0]) + problem.log_likelihood(theta, obs)  # (3, 4)
    got = np.array([[float(log_density(model, args(i), {}, {"x": jnp.array(float(x))})[0]) for i in range(4)]
                    for x in points])
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-9, atol=1e-9)


def test_the_gp_numpyro_model_and_the_torch_likelihood_agree():
    """The benchmark's NumPyro GP model (the marginal over f, ``y ~ N(m, K_l + noise I)``) against the problem's
    torch likelihood, which conditions on f(x*): for any f, log p(y | f, l) + log N(f; m, s^2) - log p(f | y, l) is
    log p(y | l) (float64 to 1e-8), and NumPyro's log density minus its InvGamma prior term is the same number (JAX
    computes in float32 here: to 1e-3 nats) up to a constant: NumPyro's model keeps absent points as unit-variance
    entries with zero residual, each adding log N(0; 0, 1), which does not depend on l and so leaves its posterior
    over l unchanged."""
    import numpy as np
    from numpyro.infer.util import log_density

    from benchmarks.runners.gp_hyperprior import gp_marginal_model

    problem = problems.get("gp-hyperprior", variant="1d")
    batch = problem.sample_batch(3, generator=torch.Generator().manual_seed(4))
    p = batch.prior.double()
    ell = torch.tensor([[0.4, 1.0, 2.5]], dtype=torch.float64)  # (1, n)
    log_marginal, mean, var = problem._conditionals(p, batch.observations, ell)
    f = torch.tensor([[-0.7, 0.2, 1.3]], dtype=torch.float64)
    theta = torch.stack([f, ell], -1)[0]  # (n, 2)
    normal = torch.distributions.Normal
    via_f = (problem.log_likelihood(theta, batch.observations, prior=p) + normal(p[:, 0], p[:, 1]).log_prob(f[0])
             - normal(mean[0], var[0].sqrt()).log_prob(f[0]))
    torch.testing.assert_close(via_f, log_marginal[0], rtol=0, atol=1e-8)
    data, mask = batch.observations.values["data"].double(), batch.observations.masks["data"].clone()
    mask[:, -2:] = False  # two absent points per problem
    observations = dfm_observations({"data": batch.observations.values["data"], "query": batch.observations.values[
        "query"]}, {"data": mask, "query": batch.observations.masks["query"]})
    log_marginal = problem._conditionals(p, observations, ell)[0]
    for i in range(3):
        args = tuple(np.asarray(v) for v in (p[i, 0], p[i, 1], p[i, 2], p[i, 3], data[i, :, :-1], data[i, :, -1]))
        total, _ = log_density(gp_marginal_model, args + (np.asarray(mask[i]),), {}, {"x": float(ell[0, i])})
        prior_term = torch.distributions.InverseGamma(p[i, 2], p[i, 3]).log_prob(ell[0, i])
        absent = -0.5 * math.log(2 * math.pi) * int((~mask[i]).sum())
        assert abs(float(total) - float(prior_term) - absent - float(log_marginal[0, i])) < 1e-3


def test_both_start_at_the_data_mean_and_reach_a_posterior_far_from_the_origin():
    """A narrow prior 40 units out on each axis (as the broad meta-prior's wide family draws them): started at
    NumPyro's default (uniform in (-2, 2)) SVI's decaying steps stop short of it; started at the data mean, SVI's
    Gaussian and NUTS's draws land on the exact posterior (means within sd / 5)."""
    g = torch.Generator().manual_seed(3)
    prior = GaussianMixture(torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1, 2), 40.0, dtype=torch.float64),
                            covariance_matrix=0.01 * torch.eye(2, dtype=torch.float64).expand(1, 1, 2, 2))
    z = 40.0 + torch.randn(1, 20, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 20, dtype=torch.bool)
    exact = problems.get("linear-gaussian", dim=2).exact_posterior(prior, z)[0]
    sd = exact.covariance_matrix.diagonal().sqrt()
    q = SVIBaseline(num_steps=2000, seed=2).posterior(prior, z, mask, 0)
    assert bool(((q.mean - exact.mean).abs() < sd / 5).all())
    draws = NUTSBaseline(num_warmup=300, num_samples=1000, seed=1).draws(prior, z, mask, 0)
    assert bool(((draws.mean(0) - exact.mean).abs() < sd / 5).all())

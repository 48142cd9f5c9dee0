"""Bring your own model: meta-priors, a problem from plain functions, the grid reference of ``dfm.evaluate``."""

import math

import pytest
import torch

import distformer as dfm
from distformer.problems import from_simulator


def _poisson(theta, generator):
    n = theta.shape[0]
    counts = torch.randint(1, 6, (n,), generator=generator).tolist()
    y = torch.poisson(theta[:, 0].exp().unsqueeze(-1).expand(n, 5), generator=generator)
    return [y[i, :counts[i]] for i in range(n)]


def _poisson_log_likelihood(theta, y):
    return (y * theta - theta.exp() - torch.lgamma(y + 1))[..., 0]


def test_random_mixtures_have_the_stated_ranges_and_zero_weights_beyond_their_count(rng):
    meta = dfm.meta_priors.random_mixtures(dim=2, components=(1, 4), mean=(-3.0, 5.0), scale=(0.1, 2.0))
    priors = meta.sample(4000, rng)
    assert priors.batch_shape == (4000,) and priors.num_components == 4
    count = (priors.weights > 0).sum(-1)
    assert set(count.tolist()) == {1, 2, 3, 4}  # each count has probability 1/4: all appear (miss rate 4e-500)
    torch.testing.assert_close(priors.weights.sum(-1), torch.ones(4000), rtol=0, atol=1e-6)
    assert float(priors.loc.min()) >= -3.0 and float(priors.loc.max()) <= 5.0
    eig = torch.linalg.eigvalsh(priors.component_covariance_matrix)
    assert float(eig.min()) >= 0.1**2 * (1 - 1e-4) and float(eig.max()) <= 2.0**2 * (1 + 1e-4)
    with pytest.raises(ValueError, match="scale"):
        dfm.meta_priors.random_mixtures(dim=1, scale=(0.0, 1.0))


def test_priors_around_a_nominal_prior_move_by_the_stated_amounts(rng):
    """Means move by N(0, shift^2) in the component's own standard deviations: the standardised shifts have unit
    variance within 6 standard errors of a variance estimate from 20,000 draws (false-alarm rate 2e-9)."""
    nominal = dfm.GaussianMixture(torch.tensor([0.25, 0.75, 0.0]), torch.tensor([[0.0, 1.0], [5.0, -2.0], [0.0, 0.0]]),
                                  covariance_matrix=torch.tensor([[[4.0, 0.0], [0.0, 1.0]]] * 3))
    priors = dfm.meta_priors.around(nominal, shift=1.0, scale=(0.5, 2.0), weight_noise=0.3).sample(20000, rng)
    z = (priors.loc[:, 0] - nominal.loc[0]) / torch.tensor([2.0, 1.0])
    assert abs(float(z.var()) - 1) < 6 * math.sqrt(2 / 20000)
    assert bool((priors.weights[:, 2] == 0).all())  # a zero-weight component stays at zero
    scale = priors.scale_tril[:, 0, 1, 1]  # c * 1
    assert 0.5 - 1e-6 <= float(scale.min()) and float(scale.max()) <= 2.0 + 1e-6
    warped = dfm.meta_priors.around(dfm.WarpedGaussianMixture(nominal, ["log", "logit"]), shift=1.0)
    assert warped == dfm.meta_priors.around(nominal, shift=1.0)  # priors of a warped parameter: its working scale


def test_mixture_of_meta_priors_pads_with_zero_weights(rng):
    both = dfm.meta_priors.mixture_of([dfm.meta_priors.random_mixtures(1, components=1),
                                       dfm.meta_priors.random_mixtures(1, components=3)], [0.5, 0.5])
    priors = both.sample(1000, rng)
    assert priors.num_components == 3 and {1, 3} == set((priors.weights > 0).sum(-1).tolist())


def test_a_simulator_problem_pads_masks_and_sums_its_likelihood(rng):
    problem = from_simulator(_poisson, ["real"], dfm.meta_priors.random_mixtures(1), max_observations=5,
                             log_likelihood=_poisson_log_likelihood, name="poisson")
    batch = problem.sample_batch(64, generator=rng)
    values, mask = batch.observations.values["z"], batch.observations.masks["z"]
    assert values.shape == (64, 5, 1) and bool(mask[:, 0].all()) and bool((values[~mask] == 0).all())
    by_hand = torch.stack([_poisson_log_likelihood(batch.theta[i].view(1, 1), values[i][mask[i]]).sum()
                           for i in range(64)])
    torch.testing.assert_close(problem.log_likelihood(batch.theta, batch.observations), by_hand)
    card = problem.describe()
    assert card["options"]["simulate"].endswith(":_poisson") and card["user_problem"]
    with pytest.raises(ValueError, match="max_observations=5"):
        from_simulator(lambda t, g: [torch.zeros(6)] * t.shape[0], ["real"], dfm.meta_priors.random_mixtures(1),
                       max_observations=5).sample_batch(2, generator=rng)
    with pytest.raises(ValueError, match="support of coordinate 0"):
        from_simulator(_poisson, ["complex"], dfm.meta_priors.random_mixtures(1), max_observations=5)


def test_a_simulator_output_is_padded_row_by_row_as_given():
    rows = [torch.arange(k, dtype=torch.float64) + 10 * k for k in (0, 3, 5, 1)]  # an empty data set included
    listed = from_simulator(lambda t, g: rows, ["real"], dfm.meta_priors.random_mixtures(1), max_observations=5)
    obs = listed.simulate(torch.zeros(4, 1))
    values, mask = obs.values["z"], obs.masks["z"]
    assert values.shape == (4, 5, 1) and values.dtype == torch.float32
    for i, row in enumerate(rows):
        assert mask[i].tolist() == [j < len(row) for j in range(5)]
        assert values[i, :len(row), 0].tolist() == row.tolist() and bool((values[i, len(row):] == 0).all())
    block = torch.randn(4, 2, 3)  # a tensor of equal-length data sets
    stacked = from_simulator(lambda t, g: block, ["real"], dfm.meta_priors.random_mixtures(1), max_observations=4,
                             observation_dim=3).simulate(torch.zeros(4, 1))
    assert torch.equal(stacked.values["z"][:, :2], block) and bool((stacked.values["z"][:, 2:] == 0).all())
    assert bool(stacked.masks["z"][:, :2].all()) and not bool(stacked.masks["z"][:, 2:].any())


def test_interval_support_samples_inside_and_the_grid_reference_is_exact_for_a_conjugate_case(rng):
    """``evaluate``'s grid reference against the closed form: for z_i ~ N(theta, 1) and a Gaussian prior on the
    real line the exact posterior is Gaussian, so a model that returns it exactly (the exact update in a wrapper)
    must score KL 0 to the grid's accuracy (1e-6); a model that returns the prior must score the known KL."""
    inside = from_simulator(lambda t, g: t + 0.0, [(2.0, 3.0)], dfm.meta_priors.random_mixtures(1),
                            max_observations=1).sample_batch(500, generator=rng).theta
    assert float(inside.min()) > 2.0 and float(inside.max()) < 3.0

    def simulate(theta, generator):
        return theta.unsqueeze(1) + torch.randn(theta.shape[0], 3, 1, generator=generator)

    problem = from_simulator(simulate, ["real"], dfm.meta_priors.random_mixtures(1, components=1, scale=(0.3, 2.0)),
                             max_observations=3, log_likelihood=lambda t, z: -0.5 * ((z - t) ** 2).sum(-1)
                             - 0.5 * math.log(2 * math.pi))

    class Exact:
        def posterior(self, prior, observations, check=False):
            return prior.condition_linear_gaussian(torch.eye(1), torch.eye(1), observations.values["z"],
                                                   observations.masks["z"])

    result = dfm.evaluate(Exact(), problem, num_problems=50, generator=torch.Generator().manual_seed(3))
    assert float(result.kl.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="num_problems"):
        dfm.evaluate(Exact(), problem, num_problems=0)

    class PriorOnly:
        def posterior(self, prior, observations, check=False):
            return prior

    g = torch.Generator().manual_seed(3)
    batch = problem.sample_batch(50, generator=g)
    exact = Exact().posterior(batch.prior.to(torch.float64), batch.observations)
    m1, s1 = exact.loc[:, 0, 0], exact.scale_tril[:, 0, 0, 0]
    m0, s0 = batch.prior.loc[:, 0, 0].double(), batch.prior.scale_tril[:, 0, 0, 0].double()
    closed_form = torch.log(s0 / s1) + (s1**2 + (m1 - m0) ** 2) / (2 * s0**2) - 0.5
    result = dfm.evaluate(PriorOnly(), problem, num_problems=50, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(result.kl.double(), closed_form, rtol=1e-5, atol=1e-6)


def test_evaluate_reads_the_likelihood_in_float64_and_names_a_nan_one(rng):
    """A (0, 1) parameter near its ends: the grid's parameters reach the likelihood in float64 (in float32 a logit of
    17 rounds p to 1, and y * log(p) + (1 - y) * log(1 - p) turns NaN), so a Bernoulli model written that way
    evaluates; a likelihood that is NaN anyway raises an error that says where."""
    def simulate(theta, generator):
        return (torch.rand(theta.shape[0], 12, 1, generator=generator) < theta.unsqueeze(1)).double()

    def naive(theta, y):
        return (y * torch.log(theta) + (1 - y) * torch.log1p(-theta))[..., 0]

    meta = dfm.meta_priors.random_mixtures(1, components=1, mean=(4.0, 6.0), scale=(1.5, 2.0))
    problem = from_simulator(simulate, ["unit"], meta, max_observations=12, log_likelihood=naive)

    class PriorOnly:  # a stand-in model: the point is the reference, which must be finite
        def posterior(self, prior, observations, check=False):
            return prior

    result = dfm.evaluate(PriorOnly(), problem, num_problems=20, generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(result.kl).all()) and float(result.kl.min()) > 0
    broken = from_simulator(simulate, ["unit"], meta, max_observations=12,
                            log_likelihood=lambda t, y: naive(t, y) * torch.nan)
    with pytest.raises(ValueError, match="NaN at parameters"):
        dfm.evaluate(PriorOnly(), broken, num_problems=5)


def test_the_command_line_trains_and_checks_a_users_problem_from_its_factory(tmp_path):
    """``problem: {factory: "module:function"}`` in a YAML config: ``distformer train`` builds the problem from it,
    the card records the user's problem, and ``distformer check`` rebuilds it from the card's training config."""
    from distformer.cli import main

    config = tmp_path / "user.yaml"
    config.write_text("problem: {factory: 'user_problem:make', options: {max_observations: 5}}\n"
                      "architecture: {d_model: 16, num_heads: 2, num_layers: 1, ff_dim: 32, hidden: 16}\n"
                      "steps: 3\nbatch_size: 16\nvalidation_size: 32\nvalidate_every: 3\n")
    assert main(["train", str(config), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    model = dfm.load(tmp_path / "m")
    assert model.card["problem"]["name"] == "user-poisson" and model.card["problem"]["user_problem"]
    assert main(["check", str(tmp_path / "m"), "--problems", "50", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "check-m.md").is_file()
    prior = dfm.GaussianMixture(torch.ones(1), torch.ones(1, 1), covariance_matrix=torch.ones(1, 1, 1))
    post = model.posterior(prior, torch.tensor([[2.0], [4.0]]), check="importance")  # likelihood via the factory
    assert post.reliability.pareto_k is not None
    with pytest.raises(ValueError, match="importable"):
        dfm.ProblemConfig(factory="no_such_module:make").build()


def test_a_model_of_a_problem_built_in_code_finds_its_likelihood_in_the_session_and_asks_for_it_after_loading(
        tmp_path):
    """``check="importance"`` needs the likelihood: a model that ``dfm.train`` returned has its problem at hand; one
    loaded from disk, whose card cannot rebuild a problem built in code, says so and takes ``likelihood=``."""
    import user_problem

    problem = dfm.problems.from_simulator(user_problem.simulate, ["real"], dfm.meta_priors.random_mixtures(1),
                                          max_observations=5, log_likelihood=user_problem.log_likelihood,
                                          name="in-code")
    config = dfm.TrainConfig(architecture=dfm.ArchitectureConfig(d_model=16, num_heads=2, num_layers=1, ff_dim=32,
                                                                 hidden=16), steps=3, batch_size=16,
                             validation_size=32, validate_every=3, calibration_size=0)
    model = dfm.train(problem, config, progress=False)
    prior = dfm.GaussianMixture(torch.ones(1), torch.ones(1, 1), covariance_matrix=torch.ones(1, 1, 1))
    y = torch.tensor([[2.0], [4.0]])
    assert model.posterior(prior, y, check="importance").reliability.pareto_k is not None
    model.save(tmp_path / "m")
    loaded = dfm.load(tmp_path / "m")
    with pytest.raises(ValueError, match="built in code without a factory"):
        loaded.posterior(prior, y, check="importance")
    assert loaded.posterior(prior, y, check="importance", likelihood=problem).reliability.pareto_k is not None


def test_the_calibration_summary_of_an_exact_posterior_is_calibrated():
    """For the exact posterior (a linear-Gaussian problem, the closed form in a wrapper) coverage at each level lies
    within 4.5 binomial standard errors of nominal and no SBC uniformity p-value is below 1e-4 (false-alarm rate
    about 1e-5 per level and 1e-4 per coordinate); a posterior that is too narrow is caught."""
    from distformer.diagnostics import calibration_summary

    problem = dfm.problems.get("linear-gaussian", dim=2)

    class Exact:
        def __init__(self, widen=1.0):
            self.widen = widen

        def posterior(self, prior, observations, check=False):
            exact = problem.exact_posterior(prior.to(torch.float64), observations)
            return dfm.GaussianMixture(logits=exact.log_weights, loc=exact.loc, scale_tril=self.widen * exact.scale_tril)

    summary = calibration_summary(Exact(), problem, 2000, torch.Generator().manual_seed(5))
    for level, value in summary["coverage"].items():
        assert abs(value - float(level)) < 4.5 * math.sqrt(float(level) * (1 - float(level)) / 2000)
    assert min(summary["sbc_uniformity_p"]) > 1e-4
    narrow = calibration_summary(Exact(0.5), problem, 2000, torch.Generator().manual_seed(5))
    assert narrow["coverage"]["0.5"] < 0.4 and max(narrow["sbc_uniformity_p"]) < 1e-4


def test_the_grid_reference_lives_on_the_warped_space():
    """For a positive parameter the prior is a mixture on u = log theta; with readings z_i ~ N(log theta, 1) the
    exact posterior on u is the Gaussian update, so the exact model scores KL 0 (to 1e-6) whatever the Jacobian
    of the warp (a Jacobian wrongly added to the reference would show here)."""
    def simulate(theta, generator):
        return theta.log().unsqueeze(1) + torch.randn(theta.shape[0], 3, 1, generator=generator)

    problem = from_simulator(simulate, ["positive"], dfm.meta_priors.random_mixtures(1, components=1),
                             max_observations=3, log_likelihood=lambda t, z: -0.5 * ((z - t.log()) ** 2).sum(-1)
                             - 0.5 * math.log(2 * math.pi))

    class Exact:
        def posterior(self, prior, observations, check=False):
            base = prior.base.condition_linear_gaussian(torch.eye(1), torch.eye(1), observations.values["z"],
                                                        observations.masks["z"])
            return dfm.WarpedGaussianMixture(base, ["log"])

    result = dfm.evaluate(Exact(), problem, num_problems=40, generator=torch.Generator().manual_seed(2))
    assert float(result.kl.abs().max()) < 1e-6


def test_reference_draws_follow_the_exact_posterior_of_a_conjugate_case():
    """Draws from the grid reference against the closed-form Gaussian posterior of z_i ~ N(theta, I) in 2-D, with a
    2-component prior: the draws' mean and variance per coordinate lie within 4.5 standard errors of the exact ones
    (4 statistics x 2 problems, false-alarm rate about 5e-5), and the draws land on the original space (positive
    support: log warp)."""

    def simulate(theta, generator):
        return theta.log().unsqueeze(1) + torch.randn(theta.shape[0], 4, 2, generator=generator)

    def log_likelihood(t, z):
        return (-0.5 * ((z - t.log()) ** 2) - 0.5 * math.log(2 * math.pi)).sum(-1)

    problem = from_simulator(simulate, ["positive", "positive"],
                             dfm.meta_priors.random_mixtures(2, components=2, scale=(0.5, 1.5)), max_observations=4,
                             observation_dim=2, log_likelihood=log_likelihood)
    g = torch.Generator().manual_seed(8)
    batch = problem.sample_batch(2, generator=g)
    n = 20000
    draws = dfm.reference_draws(problem, batch.prior, batch.observations, n, generator=g)  # (S, 2, 2)
    assert draws.shape == (n, 2, 2) and bool((draws > 0).all())
    exact = batch.prior.to(torch.float64).condition_linear_gaussian(
        torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64),
        batch.observations.values["z"].double(), batch.observations.masks["z"])
    u = draws.log()
    mean, var = exact.mean, exact.covariance_matrix.diagonal(dim1=-2, dim2=-1)
    assert bool(((u.mean(0) - mean).abs() < 4.5 * (var / n).sqrt()).all())
    # the sample variance's standard error, from the fourth central moment of the exact posterior (by its draws)
    fourth = ((exact.sample((200000,), generator=g) - mean) ** 4).mean(0)
    assert bool(((u.var(0) - var).abs() < 4.5 * ((fourth - var**2) / n).sqrt()).all())
    with pytest.raises(ValueError, match="num_draws"):
        dfm.reference_draws(problem, batch.prior, batch.observations, 0)
    with pytest.raises(ValueError, match="observations' batch shape"):
        dfm.reference_draws(problem, batch.prior[:1], batch.observations, 10)


def test_parameters_far_out_on_the_warped_space_stay_inside_the_support():
    """A prior component at u = +-30 (and +-200 on a log axis) puts theta on the interval's end, or on 0 or inf, in
    float32; the drawn theta stays strictly inside, so its warped value (the training target) is finite, while
    ordinary draws are untouched."""
    from distformer.distributions.gmm import GaussianMixture
    from distformer.distributions.transforms import Warp

    loc = torch.tensor([[[30.0, 100.0]], [[-30.0, -200.0]], [[0.0, 0.0]]])
    prior = GaussianMixture(torch.ones(3, 1), loc, covariance_matrix=1e-4 * torch.eye(2).expand(3, 1, 2, 2))
    for support in [(-1.0, 1.0), (1000.0, 1001.0), "unit"]:
        problem = from_simulator(lambda t, g: t.unsqueeze(1), [support, "positive"],
                                 dfm.meta_priors.random_mixtures(2), max_observations=1, observation_dim=2)
        theta = problem.sample_parameters(prior, torch.Generator().manual_seed(0))
        assert bool(torch.isfinite(Warp(problem.warp).forward(theta)).all()), support
        torch.testing.assert_close(Warp(problem.warp).forward(theta)[2], loc[2, 0], atol=0.05, rtol=0)


def test_the_mixture_floor_is_zero_where_the_posterior_is_a_mixture_and_the_moment_match_for_one_component():
    """``mixture_floor``: for the linear-Gaussian problem the exact posterior is a mixture of the prior's K
    components, so EM from them reaches it (mean KL below 1e-4, at most 1e-3 where overlapping components slow
    EM down). For a Poisson log-rate under a
    one-component prior the posterior is skewed: the floor is positive and equals, to 1e-9, the KL to the Gaussian
    with the grid posterior's moments (plus each cell's own variance), computed here directly; EM's first step
    lands there and stays."""
    from distformer.evaluation import _reference_grid, _span
    from distformer.distributions.transforms import Warp

    lg = dfm.problems.get("linear-gaussian", dim=2)
    floor = dfm.mixture_floor(lg, num_problems=20, generator=torch.Generator().manual_seed(4))
    assert float(floor.summary.mean) < 1e-4 and float(floor.kl.abs().max()) < 1e-3 and "best mixture" in str(floor)

    def simulate(theta, generator):
        return torch.poisson(theta.exp().unsqueeze(1).expand(-1, 2, 1), generator=generator)

    poisson = from_simulator(simulate, ["real"], dfm.meta_priors.random_mixtures(1, components=1, scale=(0.5, 1.5)),
                             max_observations=2, log_likelihood=_poisson_log_likelihood)
    floor = dfm.mixture_floor(poisson, num_problems=30, grid_size=801, iterations=5,
                              generator=torch.Generator().manual_seed(5))
    batch = poisson.sample_batch(30, generator=torch.Generator().manual_seed(5))
    prior = batch.prior.to(torch.float64)
    u, cell, log_p = _reference_grid(poisson, Warp(["identity"]), prior, batch.observations, 801, _span(prior))
    p = log_p.exp()
    mean = (p * u[..., 0]).sum(0)
    var = (p * (u[..., 0] - mean) ** 2).sum(0) + cell**2 / 12
    log_q = -0.5 * ((u[..., 0] - mean) ** 2 / var + torch.log(2 * math.pi * var))
    direct = (p * (log_p - log_q - cell.log())).sum(0)
    torch.testing.assert_close(floor.kl.double(), direct, rtol=0, atol=1e-6)
    assert float(direct.min()) > 1e-4
    with pytest.raises(ValueError, match="num_problems"):
        dfm.mixture_floor(poisson, num_problems=0)
    with pytest.raises(ValueError, match="iterations"):
        dfm.mixture_floor(poisson, num_problems=5, iterations=0)
    for size in (1, 2.5):
        with pytest.raises(ValueError, match="grid_size"):
            dfm.mixture_floor(poisson, num_problems=5, grid_size=size)

"""Sensor fusion and stochastic volatility: likelihoods normalise or match closed forms, simulators draw from them,
and the particle and Kalman-family baselines built on them."""

import json
import math

import pytest
import torch

from distformer.baselines import (ExtendedKalmanFilter, GaussianStateSpace, KalmanFilter, ParticleFilter,
                                  gaussian_log_likelihood, gaussian_transition)
from distformer.observations import Observations
from distformer.problems import get
from distformer.problems.sensor_fusion import (SensorFusion, bearing_log_likelihood, range_log_likelihood,
                                               range_reading_moments, true_bearing, wrap_angle)

F64 = torch.float64


@pytest.mark.parametrize("r", [0.0, 0.4, 3.0, 19.7])
def test_range_likelihood_is_a_probability_on_the_clipped_readings(r):
    # density on (0, R_max) by Simpson's rule on a grid much finer than the narrowest sd (0.1), plus the two atoms
    R = 20.0
    z = torch.linspace(0, R, 400_001, dtype=F64)
    dens = range_log_likelihood(z.clamp(1e-12, R - 1e-12), torch.tensor(r, dtype=F64), R).exp()
    h = float(z[1] - z[0])
    inside = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    atoms = sum(range_log_likelihood(torch.tensor(v, dtype=F64), torch.tensor(r, dtype=F64), R).exp() for v in (0, R))
    assert abs(float(inside + atoms) - 1.0) < 1e-6


@pytest.mark.parametrize("bearing", [0.0, 3.1, -3.1, math.pi])
def test_bearing_likelihood_is_a_wrapped_normal_on_the_circle(bearing):
    b = torch.linspace(-math.pi, math.pi, 200_001, dtype=F64)
    dens = bearing_log_likelihood(b, torch.tensor(bearing, dtype=F64)).exp()
    assert abs(float(torch.trapezoid(dens, b)) - 1.0) < 1e-9
    # the same angle written two ways gets the same likelihood
    beta = torch.tensor(0.7, dtype=F64)
    torch.testing.assert_close(bearing_log_likelihood(beta, torch.tensor(bearing, dtype=F64)),
                               bearing_log_likelihood(beta + 2 * math.pi, torch.tensor(bearing, dtype=F64)))
    assert float(wrap_angle(torch.tensor(-math.pi, dtype=F64))) == pytest.approx(math.pi)


def test_simulated_readings_follow_the_likelihood():
    """Chi-square goodness of fit of 40,000 range readings at r = 2 in 25 bins plus the two atoms (false-alarm
    rate 1e-3: the 0.999 quantile of chi2 with 26 dof is 54.1)."""
    problem = SensorFusion()
    n, R = 40_000, problem.max_range
    x = torch.tensor([1.2, 0.0, 1.6, 0.0], dtype=F64).expand(n, 4)  # range 2, bearing atan2(1.2, 1.6)
    reading, beta = problem.read_sensors(x, torch.Generator().manual_seed(0))
    edges = torch.cat([torch.linspace(0, 4, 21, dtype=F64), torch.tensor([6, 9, 12, 16, R], dtype=F64)])
    grid = torch.linspace(0, 1, 2001, dtype=F64)
    r = torch.tensor(2.0, dtype=F64)
    probs, counts = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        z = a + (b - a) * grid
        probs.append(float(torch.trapezoid(range_log_likelihood(z.clamp(1e-12, R - 1e-12), r, R).exp(), z)))
        counts.append(int(((reading > a) & (reading < b)).sum()))
    for v in (0.0, R):
        probs.append(float(range_log_likelihood(torch.tensor(v, dtype=F64), r, R).exp()))
        counts.append(int((reading == v).sum()))
    probs, counts = torch.tensor(probs, dtype=F64), torch.tensor(counts, dtype=F64)
    keep = probs * n >= 5
    chi2 = float(((counts[keep] - n * probs[keep]) ** 2 / (n * probs[keep])).sum())
    assert abs(float(probs.sum()) - 1) < 1e-4 and chi2 < 54.1
    # bearings: wrapped normal around the truth with sd 0.1 (mean and sd to 5 standard errors)
    err = wrap_angle(beta - true_bearing(x))
    assert abs(float(err.mean())) < 5 * 0.1 / math.sqrt(n) and abs(float(err.std()) - 0.1) < 5 * 0.1 / math.sqrt(2 * n)
    # the moments the EKF linearises through agree with the simulated readings (clipping changes them by < 1e-3)
    mean, var = range_reading_moments(r, R)
    assert abs(float(reading.mean() - mean)) < 5 * math.sqrt(float(var) / n)


def test_problem_batches_and_series():
    problem = get("sensor-fusion")
    g = torch.Generator().manual_seed(1)
    batch = problem.sample_batch(2000, g)
    present = batch.observations.masks["range"][:, 0] | batch.observations.masks["bearing"][:, 0]
    assert bool(present.all()), "training data sets always hold at least one reading"
    assert 0.05 < float((~batch.observations.masks["range"]).float().mean()) < 0.15
    cs = batch.observations.values["bearing"][:, 0]
    torch.testing.assert_close(cs.pow(2).sum(-1), torch.ones(2000))
    ll = problem.log_likelihood(batch.theta.double(), batch.observations)
    assert ll.shape == (2000,) and bool(torch.isfinite(ll).all())
    series = problem.simulate_series(5, 30, g)
    assert series.states.shape == (30, 5, 4) and series.observations.batch_shape == (30, 5)
    prior = series.prior
    torch.testing.assert_close(prior.mean, problem.initial_mean.expand(5, 4))
    torch.testing.assert_close(prior.covariance_matrix, torch.eye(4, dtype=F64).expand(5, 4, 4))
    # the motion noise is rank one per axis: position and velocity noise of an axis move together
    steps = series.states[1:] - series.states[:-1] @ problem.A.T
    noise = steps.reshape(-1, 4)
    assert float((noise[:, 1] - 2 * noise[:, 0]).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="max_range > 0"):
        SensorFusion(max_range=0.0)
    with pytest.raises(ValueError, match="one bearing per range reading"):
        problem.observations(torch.ones(3), torch.ones(2))



def test_meta_prior_mixes_in_replicated_gaussians_like_a_filter_start():
    n, K = 4000, 4
    problem = SensorFusion(num_components=K, replicated_fraction=0.25)
    prior = problem.sample_meta_prior(n, torch.Generator().manual_seed(2))
    ranks = torch.arange(1, K + 1, dtype=prior.dtype) / (K * (K + 1) / 2)
    replicated = (prior.weights - ranks).abs().amax(-1) < 1e-6
    # the count is Binomial(n, 0.25): sd 27, so 5 sd bounds give a false-alarm rate below 1e-6
    assert abs(int(replicated.sum()) - n / 4) < 5 * math.sqrt(n * 0.25 * 0.75)
    same = (prior.loc - prior.loc[:, :1]).abs().amax((-1, -2)) + \
        (prior.scale_tril - prior.scale_tril[:, :1]).abs().amax((-1, -2, -3))
    assert bool((same[replicated] == 0).all()), "a replicated prior repeats one Gaussian in every component"
    assert bool((same[~replicated] > 0).all()), "independent components differ"
    # a replicated prior is the same distribution as its one Gaussian (the filter's start)
    x = torch.randn(5, n, 4, generator=torch.Generator().manual_seed(3))
    single = torch.distributions.MultivariateNormal(prior.loc[:, 0], scale_tril=prior.scale_tril[:, 0])
    torch.testing.assert_close(prior.log_prob(x)[:, replicated], single.log_prob(x)[:, replicated])
    assert not bool((SensorFusion().sample_meta_prior(500, torch.Generator().manual_seed(2)).weights
                     - ranks).abs().amax(-1).lt(1e-6).any()), "the default meta-prior has independent components"
    with pytest.raises(ValueError, match="replicated_fraction"):
        SensorFusion(replicated_fraction=1.5)

def test_particle_filter_takes_named_sources_and_scores_by_kde():
    """Observations input gives the same run as the tensor input, and the KDE log-density is close to the exact
    Kalman one on a linear-Gaussian model, at the posterior mean and one sd away. The KDE's covariance is (1 + h^2)
    times the particles', h^2 = ESS^(-1/3) <= 0.1 for an ESS >= 1000 of 20k particles, which lowers the density at
    the mode by <= 0.1 nats in 2-D; with the Monte-Carlo error the bound is 0.25."""
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=F64)
    Q = torch.tensor([[0.3, 0.05], [0.05, 0.2]], dtype=F64)
    H, R = torch.eye(2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)
    model = GaussianStateSpace.linear(A, Q, H, R)
    T, n = 6, 4
    z = torch.randn(T, n, 2, 2, generator=g, dtype=F64)
    mask = torch.rand(T, n, 2, generator=g) < 0.7
    prior = _gaussian_prior(n)
    ll = gaussian_log_likelihood(model.h, R)
    pf = ParticleFilter(gaussian_transition(model.f, Q), ll, 20_000)
    a = pf.run(prior, z, mask, generator=torch.Generator().manual_seed(5))
    named = ParticleFilter(gaussian_transition(model.f, Q), lambda x, obs: ll(x, obs.values["z"], obs.masks["z"]),
                           20_000)
    b = named.run(prior, Observations({"z": z}, {"z": mask}), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.loc, b.loc, rtol=0, atol=0)
    exact = KalmanFilter(model).run(prior, z, mask)
    sd = exact.component_covariance_matrix[..., 0, :, :].diagonal(dim1=-2, dim2=-1).sqrt()
    for states in (exact.loc[..., 0, :], exact.loc[..., 0, :] + sd * torch.tensor([1.0, 0.0], dtype=F64)):
        kde = pf.log_density(prior, z, states, mask, generator=torch.Generator().manual_seed(5))
        assert kde.shape == (T, n) and float((kde - exact.log_prob(states)).abs().max()) < 0.25
    with pytest.raises(ValueError, match="mask"):
        next(pf.steps(prior, z))
    with pytest.raises(ValueError, match="states of shape"):
        pf.log_density(prior, z, states[:, :2], mask)


def _gaussian_prior(n):
    from distformer import GaussianMixture

    return GaussianMixture(torch.ones(n, 1, dtype=F64), torch.zeros(n, 1, 2, dtype=F64),
                           covariance_matrix=torch.eye(2, dtype=F64).expand(n, 1, 2, 2))


def test_singular_process_noise_is_sampled_with_its_covariance():
    """Sample covariance of 200k transitions matches the rank-2 Q of sensor fusion to 5 standard errors."""
    problem = SensorFusion()
    sample = gaussian_transition(lambda x: x, problem.Q)
    x = sample(torch.zeros(200_000, 4, dtype=F64), torch.Generator().manual_seed(0), 1)
    cov = x.T @ x / x.shape[0]
    se = math.sqrt(2 / x.shape[0]) * 0.04  # sd of a sample variance with variance <= 0.04
    assert float((cov - problem.Q).abs().max()) < 5 * se
    with pytest.raises(ValueError, match="positive semi-definite"):
        gaussian_transition(lambda x: x, -torch.eye(2))


def test_state_dependent_noise_callable_matches_the_constant():
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=F64)
    Q, R = 0.2 * torch.eye(2, dtype=F64), torch.tensor([[0.4]], dtype=F64)
    h = lambda x: (x[..., :1] ** 2 + x[..., 1:])  # noqa: E731
    const = GaussianStateSpace(lambda x: x @ A.T, Q, h, R)
    varying = GaussianStateSpace(lambda x: x @ A.T, Q, h, lambda m: R.expand(*m.shape[:-1], 1, 1))
    g = torch.Generator().manual_seed(0)
    z, mask = torch.randn(5, 3, 2, 1, generator=g, dtype=F64), torch.ones(5, 3, 2, dtype=torch.bool)
    prior = _gaussian_prior(3)
    a, b = ExtendedKalmanFilter(const).run(prior, z, mask), ExtendedKalmanFilter(varying).run(prior, z, mask)
    torch.testing.assert_close(a.loc, b.loc, rtol=0, atol=1e-12)


def test_bench_sensor_fusion_quick_writes_a_report(tmp_path, monkeypatch):
    """The quick run's particle filters (100, 1,000) do not reach the model's NLL, so a match is declared here to
    run the repeated timing of the matched filter as well."""
    import benchmarks.runners.sensor_fusion as bench
    from distformer.cli import main

    real = bench.smallest_match
    monkeypatch.setattr(bench, "smallest_match", lambda rows, model_row: real(rows, model_row) | {"matched": True})
    assert main(["bench", "sensor-fusion", "--quick", "--out-dir", str(tmp_path)]) == 0
    report = (tmp_path / "sensor-fusion.md").read_text()
    assert "distformer bench sensor-fusion --quick" in report and "particle filter, 1,000 particles" in report
    assert (tmp_path / "sensor-fusion.png").exists()
    by_batch = json.loads((tmp_path / "sensor-fusion.json").read_text())["match"]["repeated_by_batch"]
    assert sorted(int(n) for n in by_batch) == [1, 8]  # the quick size's timing batches
    for n, again in by_batch.items():
        assert again["repeats"] == 2 and again["model_ms_per_step"] > 0 and f"batch {n}: model" in report
        assert again["speedup"] == pytest.approx(again["particle_ms_per_step"] / again["model_ms_per_step"])
        assert f"**{again['speedup']:,.1f}×** (2 runs each)" in report


def test_repeated_timing_alternates_the_two_runs_and_takes_medians(monkeypatch):
    """The model and the particle filter run in turn (so both meet the same machine state); the reported times are
    medians per step, not means: one slow outlier run does not move them."""
    import benchmarks.runners.filter_runs as fr

    calls, clock = [], iter([0.0, 1.0, 1.0, 31.0, 31.0, 32.0, 32.0, 92.0, 92.0, 102.0, 102.0, 132.0])
    monkeypatch.setattr(fr.time, "perf_counter", lambda: next(clock))
    out = fr.repeated_timing(lambda: calls.append("model"), lambda: calls.append("pf"), repeats=3, steps=10)
    assert calls == ["model", "pf"] * 3
    # model runs took 1, 1 and 10 s (median 1 s), particle runs 30, 60 and 30 s (median 30 s); 10 steps each
    assert out == {"repeats": 3, "model_ms_per_step": 100.0, "particle_ms_per_step": 3000.0, "speedup": 30.0}


def test_score_filter_warms_up_on_the_timed_batch_size_and_times_only_the_full_run():
    """The warm-up call has every series (so batched inference takes the same path as the timed call) and 2 steps;
    the row's time is that of the full run alone, per step."""
    import benchmarks.runners.filter_runs as fr
    from distformer import GaussianMixture

    T, n = 6, 5
    prior = _gaussian_prior(n)
    states = torch.zeros(T, n, prior.dim, dtype=F64)
    obs = Observations({"z": torch.zeros(T, n, 1, 1, dtype=F64)}, {"z": torch.ones(T, n, 1, dtype=torch.bool)})
    seen = []

    def run(p, o):
        seen.append((p.batch_shape[0], o.values["z"].shape[:2]))
        return GaussianMixture(logits=prior.log_weights.expand(o.values["z"].shape[0], n, -1),
                               loc=prior.loc.expand(o.values["z"].shape[0], n, -1, -1),
                               scale_tril=prior.scale_tril.expand(o.values["z"].shape[0], n, -1, -1, -1))

    row, _, nll = fr.score_filter("fake", run, prior, obs, states)
    assert seen == [(n, (2, n)), (n, (T, n))]
    assert nll.shape == (T, n) and row["series"] == n and row["ms_per_step"] > 0


# ---- stochastic volatility (the other non-Gaussian filtering problem) ----

def test_volatility_likelihood_equals_the_dense_gaussian_in_float64():
    problem = get("stochastic-volatility")
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(7, 10, generator=g, dtype=F64)
    r = problem.draw_returns(x, g)
    cov = problem.F @ torch.diag_embed(x.exp()) @ problem.F.T + torch.eye(30, dtype=F64)
    dense = torch.distributions.MultivariateNormal(torch.zeros(30, dtype=F64), cov).log_prob(r)
    torch.testing.assert_close(problem.returns_log_likelihood(x, r), dense, rtol=0, atol=1e-9)
    # (*S, *B) broadcasting through log_likelihood: 3 candidate states for each of 7 data sets
    obs = problem.simulate(x, g)
    ll = problem.log_likelihood(x.expand(3, 7, 10), obs)
    assert ll.shape == (3, 7)
    torch.testing.assert_close(ll[1], problem.returns_log_likelihood(x, obs.values["returns"][:, 0]))


def test_volatility_returns_have_the_stated_covariance():
    """Sample covariance of 100k return vectors at one state against F diag(e^x) F^T + I: each entry within 5
    standard errors (se of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n))."""
    problem = get("stochastic-volatility")
    n = 100_000
    x = torch.linspace(-1, 1, 10, dtype=F64)
    r = problem.draw_returns(x.expand(n, 10), torch.Generator().manual_seed(1))
    S = problem.F @ torch.diag(x.exp()) @ problem.F.T + torch.eye(30, dtype=F64)
    se = ((S.diagonal().outer(S.diagonal()) + S**2) / n).sqrt()
    assert float(((r.T @ r / n - S).abs() / se).max()) < 5


def test_volatility_meta_prior_is_centred_at_the_level_it_describes():
    """The component means of the meta-prior are level + N(0, mean_scale^2): their average over 4,000 priors x 4
    components x 10 factors lies within 5 standard errors of the level, and the card's description says so."""
    from distformer.problems.stochastic_volatility import StochasticVolatility

    problem = StochasticVolatility(level=-1.0)
    loc = problem.sample_meta_prior(4000, torch.Generator().manual_seed(3)).loc
    assert abs(float(loc.mean()) + 1.0) < 5 * problem.mean_scale / math.sqrt(loc.numel())
    assert "means ~ N(-1, 1.0^2 I)" in problem.describe()["meta_prior"]
    assert "means ~ N(0, 1.0^2 I)" in StochasticVolatility().describe()["meta_prior"]


def test_volatility_series_start_stationary_and_follow_the_ou_motion():
    problem = get("stochastic-volatility")
    series = problem.simulate_series(4000, 3, torch.Generator().manual_seed(2))
    x = series.states  # (T, n, 10)
    sd = math.sqrt(problem.stationary_variance)
    # each step keeps the stationary variance (to 5 se of a sample variance of 40,000 values)
    for t in range(3):
        assert abs(float(x[t].var()) - sd**2) < 5 * sd**2 * math.sqrt(2 / x[t].numel())
    residual = x[1:] - (problem.b + problem.persistence * x[:-1])
    se = problem.volatility_sd / math.sqrt(2 * residual.numel())
    assert abs(float(residual.std()) - problem.volatility_sd) < 5 * se
    torch.testing.assert_close(series.prior.covariance_matrix[0], problem.stationary_variance * torch.eye(10, dtype=F64))


def test_bench_stochastic_volatility_quick_writes_a_report(tmp_path):
    from distformer.cli import main

    assert main(["bench", "stochastic-volatility", "--quick", "--out-dir", str(tmp_path)]) == 0
    report = (tmp_path / "stochastic-volatility.md").read_text()
    assert "distformer bench stochastic-volatility --quick" in report and "predict only" in report
    assert (tmp_path / "stochastic-volatility.png").exists()


class _OneReading:
    """x ~ prior on R, one reading z = x + N(0, 1): the exact posterior is closed form."""

    def simulate(self, x, generator):
        z = x + torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return Observations({"z": z.unsqueeze(-2)}, {"z": torch.ones(x.shape[:-1] + (1,), dtype=torch.bool)})

    def log_likelihood(self, theta, observations):
        z = observations.values["z"][..., 0, :].to(theta.dtype)
        return torch.distributions.Normal(theta, 1.0).log_prob(z).sum(-1)


class _ExactOrPrior:
    def __init__(self, exact: bool):
        self.exact = exact

    def posterior(self, prior, observations):
        if not self.exact:
            return prior
        return prior.condition_linear_gaussian(torch.ones(1, 1), torch.ones(1, 1), observations.values["z"])


def test_single_step_kl_is_zero_for_the_exact_update_and_the_information_for_the_prior():
    from distformer import GaussianMixture
    from benchmarks.runners.filter_runs import single_step_kl

    n, s0 = 1000, 2.0
    prior = GaussianMixture(torch.ones(n, 1, dtype=F64), torch.zeros(n, 1, 1, dtype=F64),
                            covariance_matrix=torch.full((n, 1, 1, 1), s0**2, dtype=F64))
    g = torch.Generator().manual_seed(5)
    exact = single_step_kl(_ExactOrPrior(True), _OneReading(), prior, g, draws=5000, chunk=500)
    # the model is exact, so each term is log p(z) - log p_hat(z): importance-sampling error only (ESS about 5,000/3)
    assert abs(exact["kl"]["mean"]) < 5e-3 and exact["median_ess"] > 1000 and exact["problems"] == n
    # the prior as the posterior: the expected KL is the mutual information 0.5 log(1 + s0^2) of x and z
    none = single_step_kl(_ExactOrPrior(False), _OneReading(), prior, g, draws=5000, chunk=500)
    kl = none["kl"]
    assert abs(kl["mean"] - 0.5 * math.log(1 + s0**2)) < 4 * kl["stderr"] + 5e-3  # 4 sd: false alarms below 1e-4


def test_random_rotations_stay_orthogonal_when_the_gaussian_draw_is_singular():
    from distformer.problems.linear_gaussian import random_rotation, rotation_from_gaussian

    # a singular draw (last column a combination of the others) puts an exact zero on R's diagonal in float32; the
    # sign fix used to multiply that column by sign(0) = 0, and one meta-prior covariance in ~10^7 came out singular
    # (it stopped a training run with a NaN loss at step 7,597)
    a = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    a[..., 3] = a[..., 0] - 2 * a[..., 1]
    for U in (rotation_from_gaussian(a), random_rotation(10_000, 4, torch.Generator().manual_seed(1))):
        torch.testing.assert_close(U.transpose(-1, -2) @ U, torch.eye(4).expand_as(U), atol=1e-5, rtol=0)
    # R's diagonal is made non-negative, so Q R' = a for the sign-fixed pair (the column signs are Q's only freedom)
    q, r = torch.linalg.qr(a[:1].double().add(torch.eye(4, dtype=F64)))
    U = rotation_from_gaussian(a[:1].double().add(torch.eye(4, dtype=F64)))
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(F64)
    torch.testing.assert_close(U @ (signs.unsqueeze(-1) * r), a[:1].double().add(torch.eye(4, dtype=F64)))

"""sbibm's tasks as this library's users write them: simulators that agree with their likelihoods, the box prior as
a mixture on the warped space, the C2ST metric, and the reading of sbibm's published files."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.runners import sbibm_tasks as tasks

F64 = torch.float64


def test_the_box_prior_is_the_logistic_density_to_within_its_stated_kl():
    """The 3-Gaussian fit to the standard logistic (a uniform on the logit-warped axis) costs under 5e-5 nats per
    axis, and the 2-D box prior is the product of the two fits: its marginal is the 1-D fit."""
    assert tasks.logistic_fit_kl(3) < 5e-5 < tasks.logistic_fit_kl(2)
    prior = tasks.box_prior(2)
    assert prior.num_components == 9
    torch.testing.assert_close(prior.weights.sum(), torch.tensor(1.0, dtype=F64))
    u = torch.linspace(-8, 8, 33, dtype=F64).unsqueeze(-1)
    torch.testing.assert_close(prior.marginal([1]).log_prob(u), tasks.logistic_mixture(3).log_prob(u))


@pytest.mark.parametrize("name", ["two_moons", "gaussian_mixture"])
def test_each_likelihood_is_a_density_and_the_simulator_draws_from_it(name):
    """For one theta: the likelihood integrates to 1 over x (midpoint rule; the two-moons crescent is 0.01 thick,
    so its grid is fine and the tolerance 0.3%), and 200,000 simulated points have the likelihood's mean within 4.5
    standard errors per coordinate (false-alarm rate about 1e-5)."""
    make = {"two_moons": (tasks.two_moons_simulate, tasks.two_moons_log_likelihood, 1.5, 3001),
            "gaussian_mixture": (tasks.gaussian_mixture_simulate, tasks.gaussian_mixture_log_likelihood, 8.0, 1601)}
    simulate, log_likelihood, half, size = make[name]
    theta = torch.tensor([[0.3, -0.2]], dtype=F64)
    step = 2 * half / size
    axis = -half + step * (torch.arange(size, dtype=F64) + 0.5)
    x = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2) + torch.tensor([0.0, -0.2],
                                                                                                   dtype=F64)
    density = log_likelihood(theta.unsqueeze(1), x).exp()[0] * step**2  # (G,)
    assert abs(float(density.sum()) - 1.0) < 3e-3
    mean = (density.unsqueeze(-1) * x[0]).sum(0) / density.sum()
    n = 200_000
    draws = simulate(theta.expand(n, 2), torch.Generator().manual_seed(4))[:, 0]
    assert bool(((draws.mean(0) - mean).abs() < 4.5 * draws.std(0) / math.sqrt(n)).all())


def test_changed_priors_move_or_narrow_every_component_and_refuse_other_kinds():
    prior = tasks.box_prior(2)
    shifted, narrowed = tasks.changed(prior, "shifted"), tasks.changed(prior, "narrowed")
    torch.testing.assert_close(shifted.loc - prior.loc, torch.full_like(prior.loc, tasks.SHIFT * tasks.LOGISTIC_SD))
    torch.testing.assert_close(narrowed.component_covariance_matrix,
                               tasks.NARROW**2 * prior.component_covariance_matrix)
    with pytest.raises(ValueError, match="Expected a change among"):
        tasks.changed(prior, "wider")


def test_c2st_is_near_one_half_for_one_distribution_and_high_for_two():
    """2,000 + 2,000 draws: the same Gaussian scores within 0.05 of 0.5 (the accuracy's sd over 4,000 labels is
    about 0.008, so about 6 sd); a shift of two sds along one axis, whose Bayes accuracy is Phi(1) = 0.84, scores
    above 0.75."""
    pytest.importorskip("sklearn")
    from benchmarks.runners.c2st import c2st

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    assert abs(c2st(a, b) - 0.5) < 0.05
    assert c2st(a, b + torch.tensor([2.0, 0.0])) > 0.75
    with pytest.raises(ValueError, match="Expected two sample sets"):
        c2st(a, b[:, :1])


def test_sbibm_files_say_how_to_get_the_wheel_when_it_is_missing(tmp_path, monkeypatch):
    from benchmarks.runners import sbibm_files

    monkeypatch.setenv("SBIBM_WHEEL", str(tmp_path / "absent.whl"))
    with pytest.raises(FileNotFoundError, match="make sbibm-files"):
        sbibm_files.files("two_moons", 1)


def test_sbibm_files_give_the_observation_and_10000_reference_samples():
    from benchmarks.runners import sbibm_files

    try:
        sbibm_files.wheel_path()
    except FileNotFoundError:
        pytest.skip("sbibm's wheel is not in .cache/sbibm (make sbibm-files)")
    f = sbibm_files.files("two_moons", 1)
    assert f["observation"].shape == (1, 2) and f["reference_samples"].shape == (10000, 2)
    assert bool((f["reference_samples"].abs() <= 1).all())  # inside the task's box prior
    with pytest.raises(ValueError, match="observation number in 1..10"):
        sbibm_files.files("two_moons", 11)


def test_sir_ode_steps_are_converged_and_the_likelihood_is_the_binomial_of_the_simulated_fraction(monkeypatch):
    """The RK4 solution at the task's step against one at a quarter of it, over the prior's range of beta and gamma:
    within 1e-3 in log I(t)/N wherever I/N > 1e-8 (below, the counts are 0 either way). The likelihood is the sum of
    the ten Binomial(1000, I(t_k)/N) log masses, and 20,000 simulated counts have the binomial means within 4.5
    standard errors (false-alarm rate about 1e-5 per count)."""
    from benchmarks.runners import sbibm_sir as sir

    g = torch.Generator().manual_seed(6)
    theta = torch.exp(torch.tensor(sir.PRIOR_LOC, dtype=F64) + 2.5 * torch.tensor(sir.PRIOR_SD, dtype=F64)
                      * (2 * torch.rand(64, 2, generator=g, dtype=F64) - 1))
    coarse = sir.log_infected(theta)
    monkeypatch.setattr(sir, "STEP", sir.STEP / 4)
    fine = sir.log_infected(theta)
    monkeypatch.undo()
    seen = fine > math.log(1e-8)
    assert float((coarse - fine)[seen].abs().max()) < 1e-3

    one = torch.tensor([[0.45, 0.13]], dtype=F64)
    x = sir.simulate(one.expand(20_000, 2), g)[:, 0]  # (n, 10) counts / 1000
    p = sir.log_infected(one)[0].exp()
    assert bool(((x.mean(0) * sir.TRIALS - sir.TRIALS * p).abs()
                 <= 4.5 * (sir.TRIALS * p * (1 - p) / 20_000).sqrt() + 1e-9).all())
    expected = torch.distributions.Binomial(sir.TRIALS, probs=p).log_prob(x[:5] * sir.TRIALS).sum(-1)
    torch.testing.assert_close(sir.log_likelihood(one.unsqueeze(1).expand(5, 1, 2), x[:5].unsqueeze(1))[:, 0],
                               expected, rtol=1e-9, atol=1e-6)


def test_npe_rows_are_kept_when_only_the_model_changes(tmp_path, monkeypatch):
    """Retraining a task's model (another budget or thread count) keeps the earlier NPE and grid-reference rows
    measured at the same observation and simulation counts; other counts measure them again."""
    import json

    from benchmarks.runners import sbibm

    monkeypatch.setattr(sbibm, "CACHE", tmp_path)
    full = sbibm.EXPERIMENT.sizes["full"]
    earlier = dict(sbibm.task_size("two_moons", full), train_minutes=1.0, train_threads=1)
    (tmp_path / "two_moons.result.json").write_text(json.dumps({"size": earlier, "measured": "2026-01-02"}))
    assert sbibm._kept_result("two_moons", full) is None  # the model changed: the task is measured again
    assert sbibm._kept_peers("two_moons", full)["peers_measured"] == "2026-01-02"  # but not its NPE rows
    fewer = dict(full, simulations=(10_000,))
    assert sbibm._kept_peers("two_moons", fewer) is None


def test_a_box_prior_can_have_its_own_component_count_on_each_axis():
    """``box_prior(5, (1, 1, 2, 2, 2))`` is the product of a 1-Gaussian fit on the first two axes and 2-Gaussian fits
    on the others: 8 components, each axis's marginal its own fit; a count list of the wrong length is refused."""
    prior = tasks.box_prior(5, (1, 1, 2, 2, 2))
    assert prior.num_components == 8
    torch.testing.assert_close(prior.weights.sum(), torch.tensor(1.0, dtype=F64))
    u = torch.linspace(-8, 8, 33, dtype=F64).unsqueeze(-1)
    for axis, count in enumerate((1, 1, 2, 2, 2)):
        torch.testing.assert_close(prior.marginal([axis]).log_prob(u), tasks.logistic_mixture(count).log_prob(u))
    with pytest.raises(ValueError, match="Expected one component count or 5"):
        tasks.box_prior(5, (1, 2))


def test_slcp_likelihood_is_the_four_point_gaussian_and_the_simulator_draws_from_it():
    """The likelihood is sbibm's bivariate normal per point (against torch's ``MultivariateNormal``, float64), and
    200,000 simulated points have its mean and covariance within 4.5 standard errors per entry (false-alarm rate
    about 1e-5 each). sbibm's data vector is the four points flattened point by point, and the task reads it back
    as four 2-D observations."""
    from benchmarks.runners import sbibm_slcp as slcp

    g = torch.Generator().manual_seed(7)
    theta = 6 * torch.rand(64, 5, generator=g, dtype=F64) - 3
    x = 4 * torch.randn(64, 4, 2, generator=g, dtype=F64)
    s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
    cov = torch.stack([torch.stack([s1**2 + slcp.EPS, rho * s1 * s2], -1),
                       torch.stack([rho * s1 * s2, s2**2 + slcp.EPS], -1)], -2)
    expected = torch.distributions.MultivariateNormal(theta[:, None, :2], cov[:, None]).log_prob(x)
    torch.testing.assert_close(slcp.log_likelihood(theta.unsqueeze(1), x), expected, rtol=1e-9, atol=1e-9)

    one = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=F64)
    n = 50_000
    points = slcp.simulate(one.expand(n, 5), g).reshape(-1, 2)  # 200,000 points
    mean, c = points.mean(0), torch.cov(points.T)
    true_mean, true_cov = one[0, :2], cov.new_tensor([[1.2**4 + slcp.EPS, math.tanh(0.7) * 1.44 * 0.64],
                                                      [math.tanh(0.7) * 1.44 * 0.64, 0.8**4 + slcp.EPS]])
    m = points.shape[0]
    assert bool(((mean - true_mean).abs() <= 4.5 * (true_cov.diagonal() / m).sqrt()).all())
    var = true_cov.diagonal()
    se = ((var.unsqueeze(0) * var.unsqueeze(1) + true_cov**2) / m).sqrt()
    assert bool(((c - true_cov).abs() <= 4.5 * se).all())

    task = tasks.TASKS["slcp"]()
    data = task.data(one.expand(3, 5), torch.Generator().manual_seed(1))
    points = slcp.simulate(one.expand(3, 5), torch.Generator().manual_seed(1))
    assert data.shape == (3, 8)
    torch.testing.assert_close(tasks._observed(data[0], task.points).values["z"][0], points[0].float())


def test_a_task_without_npe_rows_renders_dashes_beside_tasks_with_them():
    """The full run can leave a task's NPE rows out (``LEFT_OUT_NPE``): its cells read "–", the others' numbers are
    unchanged, and the protocol says why."""
    from benchmarks.runners import sbibm
    from benchmarks.runners.harness import render

    def result(name, npe):
        rows = {"model": [0.6, 0.62], **({"NPE 10": [0.7, 0.72]} if npe else {})}
        changed = {"model (no retraining)": [0.6], **({"NPE 10, task's prior": [0.8]} if npe else {})}
        return {"task": name, "measured": "2026-01-02", "c2st": rows, "changed": {
                    k: {"c2st": changed, "retrain_s": 60.0 if npe else None} for k in ("shifted", "narrowed")},
                "training_s": {"model": 1800.0, **({"NPE 10": 120.0} if npe else {})}, "model_training_steps": 5}

    size = dict(sbibm.EXPERIMENT.sizes["full"], tasks=("two_moons", "slcp"))
    r = {"skipped": None, "tasks": [result("two_moons", True), result("slcp", False)]}
    text = "\n".join(render(sbibm.body(r, size)))
    assert "| two_moons | 0.610 ± 0.020 | 0.710 ± 0.020 | 30.0 | 5 | 2.0 |" in text
    assert "| slcp | 0.610 ± 0.020 | – | 30.0 | 5 | – |" in text
    assert "| slcp | 0.600 | – | – |" in text  # under each changed prior
    assert "`slcp` has no NPE rows" in sbibm.protocol(size, r)


def test_lotka_volterra_ode_matches_a_tight_reference_solver_and_the_readings_are_log_normal():
    """The RK4 log populations against scipy's DOP853 at a relative tolerance of 1e-11: within 1e-4 in log count
    on draws near sbibm's posteriors and within 1e-2 over the prior (its tails are where the populations swing over
    decades; the readings' noise sd is 0.1). The simulator's log readings are the ODE's plus N(0, 0.1^2): over
    20,000 draws each mean lies within 4.5 standard errors (false-alarm rate about 1e-5 each) and each sd within
    5%; the likelihood is the sum of the twenty normal densities; sbibm's readings (``task.data``) are their
    exponentials, and the task reads them back as the model's log readings."""
    from scipy.integrate import solve_ivp

    from benchmarks.runners import sbibm_lotka_volterra as lv

    g = torch.Generator().manual_seed(8)
    near = torch.tensor([[0.68, 0.105, 0.90, 0.118]], dtype=F64) * torch.exp(0.05 * torch.randn(4, 4, generator=g,
                                                                                                  dtype=F64))
    prior = torch.exp(torch.tensor(lv.PRIOR_LOC, dtype=F64) + 0.5 * torch.randn(12, 4, generator=g, dtype=F64))
    times = [lv.SAVE_EVERY * k for k in range(lv.SAVES)]
    for theta, tolerance in ((near, 1e-4), (prior, 1e-2)):
        for row, ours in zip(theta.tolist(), lv.log_populations(theta)):
            a, b, c, d = row
            sol = solve_ivp(lambda _, u: [a * u[0] - b * u[0] * u[1], -c * u[1] + d * u[0] * u[1]], (0.0, 19.0),
                            list(lv.START), method="DOP853", rtol=1e-11, atol=1e-12, t_eval=times)
            exact = torch.from_numpy(sol.y).clamp(*lv.COUNT_RANGE).log().reshape(-1)  # prey, then predators
            assert float((ours - exact).abs().max()) < tolerance

    one = near[:1]
    n = 20_000
    x = lv.simulate(one.expand(n, 4), g)[:, 0]  # (n, 20) log readings
    mean = lv.log_populations(one)[0]
    assert bool(((x.mean(0) - mean).abs() <= 4.5 * lv.NOISE / n**0.5).all())
    assert bool(((x.std(0) / lv.NOISE - 1).abs() < 0.05).all())
    expected = torch.distributions.Normal(mean, lv.NOISE).log_prob(x[:5]).sum(-1)
    torch.testing.assert_close(lv.log_likelihood(one.unsqueeze(1).expand(5, 1, 4), x[:5].unsqueeze(1))[:, 0],
                               expected, rtol=1e-9, atol=1e-9)

    task = tasks.TASKS["lotka_volterra"]()
    data = task.data(one.expand(3, 4), torch.Generator().manual_seed(1))
    assert data.shape == (3, 20) and bool((data > 0).all())
    torch.testing.assert_close(task.observed(data[0]).values["z"][0, 0],
                               lv.simulate(one.expand(3, 4), torch.Generator().manual_seed(1))[0, 0].float())
    assert task.sbi_prior().sample((5,)).shape == (5, 4)

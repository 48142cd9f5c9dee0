"""Filter, motion models and filtering baselines: exact identities in float64, agreement, missing data, stability."""

import pytest
import torch

import distformer
from distformer.baselines import (ExtendedKalmanFilter, GaussianStateSpace, KalmanFilter, ParticleFilter,
                                  UnscentedKalmanFilter, gaussian_log_likelihood, gaussian_transition)
from distformer.filtering import Filter, LinearGaussianMotion, LinearGaussianUpdate, NonlinearMotion
from distformer.problems.lti import LTI
from helpers import random_mixture

F64 = torch.float64


def _series(T=12, n=3, seed=0, k=1):
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=F64)
    Q = torch.tensor([[0.3, 0.05], [0.05, 0.2]], dtype=F64)
    H = torch.tensor([[1.0, 0.5]], dtype=F64)  # one scalar sensor: the state is only partly observed
    R = torch.tensor([[0.4]], dtype=F64)
    prior = random_mixture((n,), k, 2, g)
    z = torch.randn(T, n, 3, 1, generator=g, dtype=F64)
    mask = torch.rand(T, n, 3, generator=g) < 0.6
    mask[4] = False  # a step where every sensor is missing
    return A, Q, H, R, prior, z, mask


def _textbook_kalman(A, Q, H, R, m, P, z, mask):
    """Predict, then one scalar-observation update per present observation (no shortcut through the mean)."""
    means, covs = [], []
    for t in range(z.shape[0]):
        if t > 0:
            m, P = A @ m, A @ P @ A.T + Q
        for i in range(z.shape[1]):
            if mask[t, i]:
                S = H @ P @ H.T + R
                G = P @ H.T @ torch.linalg.inv(S)
                m = m + G @ (z[t, i] - H @ m)
                P = (torch.eye(2, dtype=F64) - G @ H) @ P
        means.append(m)
        covs.append(P)
    return torch.stack(means), torch.stack(covs)


def test_exact_filter_matches_a_textbook_kalman_filter_to_1e_10():
    A, Q, H, R, prior, z, mask = _series()
    filt = Filter(LinearGaussianUpdate(H, R), LinearGaussianMotion(A, None, Q))
    result = filt.run(prior, z, mask)
    kf = KalmanFilter(GaussianStateSpace.linear(A, Q, H, R)).run(prior, z, mask)
    for b in range(prior.batch_shape[0]):
        m, P = _textbook_kalman(A, Q, H, R, prior.loc[b, 0], prior.component_covariance_matrix[b, 0], z[:, b],
                                mask[:, b])
        torch.testing.assert_close(result.beliefs.loc[:, b, 0], m, rtol=0, atol=1e-10)
        torch.testing.assert_close(result.beliefs.component_covariance_matrix[:, b, 0], P, rtol=0, atol=1e-10)
        torch.testing.assert_close(kf.loc[:, b, 0], m, rtol=0, atol=1e-10)
        torch.testing.assert_close(kf.component_covariance_matrix[:, b, 0], P, rtol=0, atol=1e-10)


def test_a_step_with_every_sensor_missing_only_predicts():
    A, Q, H, R, prior, z, mask = _series(k=3)
    filt = Filter(LinearGaussianUpdate(H, R), LinearGaussianMotion(A, None, Q))
    result = filt.run(prior, z, mask)
    predicted = filt.predict(result[3], 4)
    torch.testing.assert_close(result[4].loc, predicted.loc, rtol=0, atol=1e-12)
    torch.testing.assert_close(result[4].weights, predicted.weights, rtol=0, atol=1e-12)
    model = distformer.pretrained("linear-gaussian-2d")  # the model filter passes the prediction through exactly
    belief = problem_prior()
    empty = torch.zeros(2, 5, 2)
    out = Filter(model, LinearGaussianMotion(torch.eye(2), None, 0.1 * torch.eye(2))).step(
        belief, empty, torch.zeros(2, 5, dtype=torch.bool))
    moved = belief.affine(torch.eye(2), None, 0.1 * torch.eye(2))
    torch.testing.assert_close(out.loc, moved.loc, rtol=0, atol=0)


def problem_prior():
    return distformer.problems.get("linear-gaussian", dim=2).sample_meta_prior(2, torch.Generator().manual_seed(3))


def test_unscented_predict_is_exact_for_linear_motion(rng):
    belief = random_mixture((4,), 3, 3, rng)
    A = torch.randn(3, 3, generator=rng, dtype=F64)
    b = torch.randn(3, generator=rng, dtype=F64)
    Q = 0.1 * torch.eye(3, dtype=F64)
    for kappa in (None, 0.0, 2.0):
        ut = NonlinearMotion(lambda x: x @ A.T + b, Q, kappa=kappa)(belief)
        exact = LinearGaussianMotion(A, b, Q)(belief)
        torch.testing.assert_close(ut.loc, exact.loc, rtol=0, atol=1e-12)
        torch.testing.assert_close(ut.component_covariance_matrix, exact.component_covariance_matrix, rtol=0,
                                   atol=1e-12)
        torch.testing.assert_close(ut.weights, exact.weights, rtol=0, atol=0)


def test_baselines_agree_on_a_linear_gaussian_model():
    A, Q, H, R, prior, z, mask = _series(T=8, n=2, seed=1)
    model = GaussianStateSpace.linear(A, Q, H, R)
    kf = KalmanFilter(model).run(prior, z, mask)
    for other in (ExtendedKalmanFilter(model), UnscentedKalmanFilter(model), UnscentedKalmanFilter(model, 0.5)):
        out = other.run(prior, z, mask)
        torch.testing.assert_close(out.loc, kf.loc, rtol=0, atol=1e-10)
        torch.testing.assert_close(out.component_covariance_matrix, kf.component_covariance_matrix, rtol=0, atol=1e-10)
    J = 20000
    pf = ParticleFilter(gaussian_transition(model.f, Q), gaussian_log_likelihood(model.h, R), J).run(
        prior, z, mask, generator=torch.Generator().manual_seed(2))
    # the particle estimate's error is O(posterior sd / sqrt(J)) ~ 0.005 per step here; 0.06 is > 10 of those
    assert float((pf.loc - kf.loc).abs().max()) < 0.06
    sd = kf.component_covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    pf_sd = pf.component_covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    assert float(((pf_sd - sd) / sd).abs().max()) < 0.1


def test_model_filter_on_lti_is_within_0_05_nats_of_the_exact_filter():
    lti = LTI()
    series = lti.simulate(40, 60, torch.Generator().manual_seed(4))
    exact = Filter(LinearGaussianUpdate(lti.H, lti.R), LinearGaussianMotion(lti.A, None, lti.Q)).run(
        series.prior, series.observations)
    model = distformer.pretrained("linear-gaussian-2d")
    learned = Filter(model, LinearGaussianMotion(lti.A.float(), None, lti.Q.float()), check=False).run(
        series.prior.to(torch.float32), series.observations)
    gap = learned.nll(series.states) - exact.nll(series.states)  # (T, n)
    assert abs(float(gap.mean())) < 0.05


@pytest.mark.slow
def test_ten_thousand_model_filter_steps_stay_finite_and_valid():
    lti = LTI()
    series = lti.simulate(2, 10_000, torch.Generator().manual_seed(5))
    model = distformer.pretrained("linear-gaussian-2d")
    result = Filter(model, LinearGaussianMotion(lti.A.float(), None, lti.Q.float()), check=False).run(
        series.prior.to(torch.float32), series.observations)
    beliefs = result.beliefs
    assert beliefs.batch_shape == (10_000, 2)
    assert bool(torch.isfinite(beliefs.loc).all()) and bool(torch.isfinite(beliefs.scale_tril).all())
    torch.testing.assert_close(beliefs.weights.sum(-1), torch.ones(10_000, 2), rtol=0, atol=1e-5)
    assert bool((beliefs.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all())
    nll = result.nll(series.states)
    assert bool(torch.isfinite(nll).all()) and float(nll[-1000:].mean()) < float(nll[:1000].mean()) + 0.5


def test_bad_filter_arguments_get_one_clear_sentence():
    with pytest.raises(TypeError, match="Expected update"):
        Filter("kalman", LinearGaussianMotion(torch.eye(2), None, torch.eye(2)))
    with pytest.raises(ValueError, match="process-noise covariance"):
        LinearGaussianMotion(torch.eye(2))
    belief = problem_prior()
    with pytest.raises(ValueError, match="Expected f to map sigma points"):
        NonlinearMotion(lambda x: x[..., :1], torch.eye(2))(belief)
    with pytest.raises(ValueError, match="Expected A of shape"):
        LinearGaussianMotion(torch.eye(3), None, torch.eye(2))(belief)
    filt = Filter(LinearGaussianUpdate(torch.eye(2), torch.eye(2)), LinearGaussianMotion(torch.eye(2), None,
                                                                                          torch.eye(2)))
    with pytest.raises(ValueError, match="leading time axis"):
        filt.run(belief, torch.zeros(0, 2, 3, 2))
    for check in ("importance-sampling", None, 1.0):
        with pytest.raises(ValueError, match="Expected check among"):
            Filter(LinearGaussianUpdate(torch.eye(2), torch.eye(2)), LinearGaussianMotion(torch.eye(2), None,
                                                                                          torch.eye(2)), check=check)


def test_bench_lti_quick_writes_a_report(tmp_path):
    from distformer.cli import main

    assert main(["bench", "lti", "--quick", "--out-dir", str(tmp_path)]) == 0
    report = (tmp_path / "lti.md").read_text()
    assert "distformer bench lti --quick" in report and (tmp_path / "lti.png").exists()
    assert "| model (linear-gaussian-2d) |" in report and "particle filter, 1,000 particles" in report


def test_a_regularised_particle_filter_survives_sharp_readings_that_collapse_the_bootstrap_filter():
    """A static 2-D state (no process noise) read every step with noise sd 1, except coordinate 2 at steps 0 and 5,
    read with sd 0.01 and 0.001. The bootstrap filter's resampling leaves a few distinct values of that coordinate,
    which nothing spreads again, and the second sharp reading picks among them: its spread there ends far from the
    Kalman filter's. The regularised filter draws from a kernel density of the weighted cloud: every particle stays
    distinct, and its sd is within 25% of the exact one and its mean within 3 exact sds, in each of 4 series."""
    T, n, J = 8, 4, 4000
    sharp = {0: 0.01, 5: 0.001}
    noise_sd = torch.ones(T, 2, dtype=F64)
    for t, sd in sharp.items():
        noise_sd[t, 1] = sd
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    z = (x + noise_sd.unsqueeze(1) * torch.randn(T, n, 2, generator=g, dtype=F64)).unsqueeze(-2)  # (T, n, 1, 2)
    prior = distformer.GaussianMixture(torch.ones(n, 1, dtype=F64), torch.zeros(n, 1, 2, dtype=F64),
                                       covariance_matrix=torch.eye(2, dtype=F64).expand(n, 1, 2, 2))
    mean, var = torch.zeros(n, 2, dtype=F64), torch.ones(2, dtype=F64)  # the exact (Kalman) filter, per coordinate
    for t in range(T):
        gain = var / (var + noise_sd[t] ** 2)
        mean, var = mean + gain * (z[t, :, 0] - mean), (1 - gain) * var
    exact_sd = float(var[1].sqrt())
    data = torch.cat([z, noise_sd.view(T, 1, 1, 2).expand(T, n, 1, 2)], -1)  # each reading carries its noise sd

    def log_likelihood(particles, zt, mt):
        reading, sd = zt[..., :2], zt[..., 2:]
        return (-0.5 * ((reading - particles) / sd).pow(2) - sd.log()).sum(-1) * mt.to(F64)

    motion = gaussian_transition(lambda s: s, torch.zeros(2, 2, dtype=F64))
    mask = torch.ones(T, n, 1, dtype=torch.bool)
    last = {}
    for regularised in (False, True):
        pf = ParticleFilter(motion, log_likelihood, J, regularised=regularised)
        *_, last[regularised] = pf.steps(prior, data, mask, generator=torch.Generator().manual_seed(5))
    for regularised, (particles, log_w) in last.items():
        distinct = min(len(torch.unique(particles[i, :, 1])) for i in range(n))
        w = log_w.exp()
        m = (w * particles[..., 1]).sum(-1)
        sd = (w * (particles[..., 1] - m.unsqueeze(-1)) ** 2).sum(-1).sqrt()
        close = bool(((sd - exact_sd).abs() < 0.25 * exact_sd).all() & ((m - mean[:, 1]).abs() < 3 * exact_sd).all())
        if regularised:
            assert distinct == J and close
        else:
            assert distinct < J // 20 and not close


def test_regularised_particle_filter_agrees_with_kalman_and_refuses_a_bad_bandwidth():
    A, Q, H, R, prior, z, mask = _series(T=8, n=2, seed=1)
    model = GaussianStateSpace.linear(A, Q, H, R)
    kf = KalmanFilter(model).run(prior, z, mask)
    pf = ParticleFilter(gaussian_transition(model.f, Q), gaussian_log_likelihood(model.h, R), 20000,
                        regularised=True).run(prior, z, mask, generator=torch.Generator().manual_seed(2))
    assert float((pf.loc - kf.loc).abs().max()) < 0.06  # as the bootstrap filter's test, and for the same reason
    sd = kf.component_covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    pf_sd = pf.component_covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    assert float(((pf_sd - sd) / sd).abs().max()) < 0.1
    with pytest.raises(ValueError, match="Expected bandwidth_scale > 0"):
        ParticleFilter(gaussian_transition(model.f, Q), gaussian_log_likelihood(model.h, R), 100, regularised=True,
                       bandwidth_scale=0.0)

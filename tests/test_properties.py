"""Property tests (hypothesis): random valid input gives finite, valid output; random invalid input gives the
documented one-sentence error (``ValueError``/``TypeError`` starting with "Expected"), never a crash or a silent NaN.

Every test runs ``PROPERTY_EXAMPLES`` (500) derandomized examples, so ``make test`` is reproducible.
"""

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distformer
import distformer.support
from distformer import GaussianMixture, Observations, problems, refine
from distformer.observations import as_observations

PROPERTY_EXAMPLES = 500
settings.register_profile("distformer", max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("distformer")

DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def mixtures(draw, max_batch=2, max_k=4, max_d=3, dtype=None, d=None):
    """A valid GaussianMixture: weights from Dirichlet-like draws, means up to 1e3, covariances A A^T + eps I."""
    dtype = dtype or draw(DTYPES)
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=max_batch)))
    k = draw(st.integers(1, max_k))
    d = d or draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    log_scale = draw(st.floats(-2.0, 2.0))
    mean_scale = draw(st.sampled_from([0.0, 1.0, 10.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(*batch, k, generator=g, dtype=torch.float64) + 1e-3
    weights = (raw / raw.sum(-1, keepdim=True)).to(dtype)
    loc = (mean_scale * torch.randn(*batch, k, d, generator=g, dtype=torch.float64)).to(dtype)
    A = torch.randn(*batch, k, d, d, generator=g, dtype=torch.float64) * 10**log_scale
    cov = A @ A.transpose(-1, -2) + (10**log_scale) ** 2 * 0.1 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(weights, loc, covariance_matrix=cov.to(dtype))


def assert_valid(gm: GaussianMixture) -> None:
    """Weights sum to one, every tensor is finite, every component covariance is positive definite (as stored: by
    a Cholesky factor, whose product is formed in float64 since float32 rounding of L L^T can lose definiteness)."""
    tol = 1e-9 if gm.dtype == torch.float64 else 1e-4
    assert bool(torch.isfinite(gm.log_weights.exp()).all())
    torch.testing.assert_close(gm.weights.sum(-1), torch.ones(gm.batch_shape, dtype=gm.dtype), rtol=0, atol=tol)
    assert bool(torch.isfinite(gm.loc).all()) and bool(torch.isfinite(gm.scale_tril).all())
    assert bool((gm.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all())
    L = gm.scale_tril.double()
    _, info = torch.linalg.cholesky_ex(L @ L.transpose(-1, -2))
    assert bool((info == 0).all())


def expect_error(fn, *args, **kwargs) -> str:
    with pytest.raises((ValueError, TypeError)) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert message.startswith("Expected"), message
    return message


# ---------------------------------------------------------------------------------------------- GaussianMixture
@given(mixtures(), st.integers(0, 2**31 - 1))
def test_mixture_samples_log_prob_and_moments_are_finite(gm, seed):
    assert_valid(gm)
    x = gm.sample((3,), generator=torch.Generator().manual_seed(seed))
    assert x.shape == (3, *gm.batch_shape, gm.dim) and bool(torch.isfinite(x).all())
    assert bool(torch.isfinite(gm.log_prob(x)).all())
    assert bool(torch.isfinite(gm.mean).all())
    cov = gm.covariance_matrix.double()
    assert bool((torch.linalg.eigvalsh(cov) > -1e-6 * cov.diagonal(dim1=-2, dim2=-1).abs().amax(-1, True)).all())


@given(mixtures(), st.data())
def test_marginal_affine_and_reduce_stay_valid(gm, data):
    dims = data.draw(st.lists(st.integers(0, gm.dim - 1), min_size=1, max_size=gm.dim, unique=True))
    assert_valid(gm.marginal(dims))
    e = data.draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    A = torch.randn(e, gm.dim, generator=g, dtype=gm.dtype)
    b = torch.randn(e, generator=g, dtype=gm.dtype)
    assert_valid(gm.affine(A, b, noise_covariance=torch.eye(e, dtype=gm.dtype)))
    k = data.draw(st.integers(1, gm.num_components))
    reduced = gm.reduce(k)
    assert reduced.num_components == k
    assert_valid(reduced)


@given(mixtures(), st.data())
def test_conditioning_stays_valid_for_any_mask(gm, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    n = data.draw(st.integers(1, 6))
    e = data.draw(st.integers(1, 2))
    H = torch.randn(e, gm.dim, generator=g, dtype=gm.dtype)
    R = (0.1 + torch.rand((), generator=g, dtype=gm.dtype)) * torch.eye(e, dtype=gm.dtype)
    z = gm.mean.unsqueeze(-2)[..., :1].expand(*gm.batch_shape, n, 1) * 0 + \
        torch.randn(*gm.batch_shape, n, e, generator=g, dtype=gm.dtype)
    mask = torch.rand(*gm.batch_shape, n, generator=g) < data.draw(st.floats(0.0, 1.0))
    post = gm.condition_linear_gaussian(H, R, z, mask)
    assert post.batch_shape == gm.batch_shape
    assert_valid(post)


@given(st.data())
def test_em_fit_stays_valid(data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    n, d = data.draw(st.integers(4, 40)), data.draw(st.integers(1, 3))
    k = data.draw(st.integers(1, min(n, 4)))
    scale = data.draw(st.sampled_from([1e-2, 1.0, 1e2]))
    x = scale * torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    if data.draw(st.booleans()):
        x[: n // 2] = x[0]  # repeated samples
    weights = torch.rand(n, 2, generator=g, dtype=torch.float64) if data.draw(st.booleans()) else None
    fit = GaussianMixture.fit(x, k, sample_weights=weights, generator=g, max_iterations=5)
    assert_valid(fit)


CORRUPTIONS = ["nan loc", "inf cov", "negative weight", "unnormalised", "asymmetric", "not pd", "shape k",
               "shape d", "batch", "nan weight", "tril upper", "tril diagonal"]


@given(mixtures(max_d=3), st.sampled_from(CORRUPTIONS))
def test_invalid_mixture_parameters_get_the_documented_error(gm, corruption):
    w, loc, cov = gm.weights.clone(), gm.loc.clone(), gm.component_covariance_matrix.clone()
    tril = gm.scale_tril.clone()
    use_tril = corruption.startswith("tril")
    if corruption == "nan loc":
        loc[..., 0, 0] = math.nan
    elif corruption == "inf cov":
        cov[..., 0, 0, 0] = math.inf
    elif corruption == "negative weight":
        w[..., 0] = -0.5
    elif corruption == "unnormalised":
        w = w * 1.5
    elif corruption == "asymmetric":
        if gm.dim == 1:
            cov = -cov
        else:
            cov[..., 0, 1, 0] += 1.0 + cov.abs().amax()
    elif corruption == "not pd":
        cov = -cov
    elif corruption == "shape k":
        w = torch.cat([w, w[..., :1]], -1)
    elif corruption == "shape d":
        cov = cov[..., :1, :1] if gm.dim > 1 else torch.cat([cov, cov], -1)
    elif corruption == "batch":
        loc = loc.expand(5, 4, *loc.shape)
        w = w.expand(3, *w.shape)
    elif corruption == "nan weight":
        w[..., 0] = math.nan
    elif corruption == "tril upper":
        if gm.dim == 1:
            tril = tril * 0
        else:
            tril[..., 0, 0, 1] = 1.0
    elif corruption == "tril diagonal":
        tril[..., 0, 0, 0] = -1.0
    if use_tril:
        expect_error(GaussianMixture, w, loc, scale_tril=tril)
    else:
        expect_error(GaussianMixture, w, loc, covariance_matrix=cov)


@given(mixtures(), st.sampled_from(["A shape", "b shape", "noise shape", "H shape", "R shape", "z shape",
                                    "z nan", "mask shape", "mask dtype", "marginal", "reduce", "nan A"]))
def test_invalid_arguments_to_mixture_methods_get_the_documented_error(gm, case):
    d, t = gm.dim, gm.dtype
    eye = torch.eye(d, dtype=t)
    z = torch.zeros(*gm.batch_shape, 2, d, dtype=t)
    call = {
        "A shape": lambda: gm.affine(torch.ones(2, d + 1, dtype=t)),
        "b shape": lambda: gm.affine(eye, torch.ones(d + 1, dtype=t)),
        "noise shape": lambda: gm.affine(eye, None, torch.eye(d + 1, dtype=t)),
        "nan A": lambda: gm.affine(eye * math.nan),
        "H shape": lambda: gm.condition_linear_gaussian(torch.ones(1, d + 1, dtype=t), eye, z),
        "R shape": lambda: gm.condition_linear_gaussian(eye, torch.eye(d + 1, dtype=t), z),
        "z shape": lambda: gm.condition_linear_gaussian(eye, eye, torch.zeros(2, d + 1, dtype=t)),
        "z nan": lambda: gm.condition_linear_gaussian(eye, eye, z * math.nan),
        "mask shape": lambda: gm.condition_linear_gaussian(eye, eye, z, torch.ones(7, dtype=torch.bool)),
        "mask dtype": lambda: gm.condition_linear_gaussian(eye, eye, z, torch.ones(z.shape[:-1])),
        "marginal": lambda: gm.marginal([d]),
        "reduce": lambda: gm.reduce(0),
    }[case]
    expect_error(call)


# ---------------------------------------------------------------------------------------------- the model
MODEL = {}


def _model():
    if "m" not in MODEL:
        MODEL["m"] = distformer.pretrained("linear-gaussian-2d")
    return MODEL["m"]


@given(mixtures(max_batch=1, d=2), st.data())
def test_posterior_of_any_valid_prior_and_data_is_a_valid_mixture(prior, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    batch = prior.batch_shape
    n = data.draw(st.integers(0, 25))
    scale = data.draw(st.sampled_from([1.0, 10.0, 100.0]))
    z = scale * torch.randn(*batch, n, 2, generator=g, dtype=prior.dtype)
    mask = torch.rand(*batch, n, generator=g) < data.draw(st.floats(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", distformer.support.OutOfFamilyWarning)
        try:
            post = _model().posterior(prior, z, mask)
        except FloatingPointError:  # documented: far outside the family the network may overflow, never silently
            return
    assert post.batch_shape == batch and post.num_components == prior.num_components and post.dtype == prior.dtype
    assert_valid(post)
    empty = ~mask.any(-1)
    if bool(empty.any()):  # no observations: the posterior is the prior
        torch.testing.assert_close(post.weights[empty], prior.weights[empty], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(post.loc[empty], prior.loc[empty], rtol=1e-4, atol=1e-4)


POSTERIOR_CASES = ["nan z", "inf z", "wrong D", "prior D", "mask dtype", "mask shape", "not a prior",
                   "unknown source", "batch", "string z"]


@given(st.sampled_from(POSTERIOR_CASES), st.integers(1, 4), st.integers(1, 8), st.data())
def test_posterior_rejects_invalid_input_with_the_documented_error(case, n, N, data):
    model = _model()
    prior = problems.get("linear-gaussian", dim=2).sample_meta_prior(n, torch.Generator().manual_seed(n * N))
    z = torch.zeros(n, N, 2)
    bad_z = z.clone()
    i, j, d = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, N - 1)), data.draw(st.integers(0, 1))
    bad_z[i, j, d] = math.nan if case == "nan z" else data.draw(st.sampled_from([math.inf, -math.inf]))
    call = {
        "nan z": lambda: model.posterior(prior, bad_z),
        "inf z": lambda: model.posterior(prior, bad_z),
        "wrong D": lambda: model.posterior(prior, torch.zeros(n, N, data.draw(st.sampled_from([1, 3, 4])))),
        "prior D": lambda: model.posterior(prior.marginal([d]), z),
        "mask dtype": lambda: model.posterior(prior, z, torch.ones(n, N, dtype=data.draw(
            st.sampled_from([torch.float32, torch.int64, torch.uint8])))),
        "mask shape": lambda: model.posterior(prior, z, torch.ones(n, N + 1 + j, dtype=torch.bool)),
        "not a prior": lambda: model.posterior(prior.to_torch(), z),
        "unknown source": lambda: model.posterior(prior, {"z": z, "y": z}),
        "batch": lambda: model.posterior(prior.expand((max(n, 2),)), torch.zeros(max(n, 2) + 1 + i, N, 2)),
        "string z": lambda: model.posterior(prior, "z"),
    }[case]
    expect_error(call)


@given(mixtures(max_batch=1, d=1, dtype=torch.float64), st.data())
def test_refine_returns_normalised_weights_and_a_valid_mixture(prior, data):
    problem = problems.get("linear-gaussian", dim=1)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    n = data.draw(st.integers(1, 5))
    z = prior.sample(generator=g).unsqueeze(-2) + torch.randn(*prior.batch_shape, n, 1, generator=g,
                                                              dtype=torch.float64)
    proposal = prior.affine(torch.tensor([[data.draw(st.floats(0.5, 2.0))]], dtype=torch.float64))
    r = refine(proposal, prior, problem, z, n=100, generator=g, max_iterations=10)
    torch.testing.assert_close(r.weights.sum(0), torch.ones(prior.batch_shape, dtype=torch.float64))
    assert bool(torch.isfinite(r.ess).all()) and bool((r.ess >= 1 - 1e-9).all()) and bool((r.ess <= 100 + 1e-9).all())
    assert bool(torch.isfinite(r.log_evidence).all())
    assert_valid(r.posterior)


@given(st.sampled_from(["tensor", "dict missing", "dict extra", "values shape", "mask dtype", "nan"]),
       st.integers(1, 4), st.integers(0, 6), st.integers(1, 6))
def test_as_observations_rejects_invalid_input(case, n, N, M):
    sources = {"a": 2, "b": 1}
    ok = {"a": torch.zeros(n, N, 2), "b": torch.zeros(n, M, 1)}
    bad = {
        "tensor": torch.zeros(n, N, 2),
        "dict missing": {"a": ok["a"]},
        "dict extra": ok | {"c": torch.zeros(n, 1, 1)},
        "values shape": {"a": torch.zeros(n, N, 3), "b": ok["b"]},
        "mask dtype": Observations(ok, {"a": torch.ones(n, N), "b": torch.ones(n, M, dtype=torch.bool)}),
        "nan": {"a": ok["a"], "b": ok["b"] * math.nan},
    }[case]
    expect_error(as_observations, bad, sources)
    assert as_observations(ok, sources).batch_shape == (n,)

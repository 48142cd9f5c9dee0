"""DistributionTransformer: identity at initialisation, permutation symmetries, masking, shapes, bad inputs."""

import json
import sys
import warnings

import pytest
import torch

from distformer import DistributionTransformer, GaussianMixture, ModelConfig
from distformer.nn.export import cpp_compiler
from distformer.nn.tokens import chart_size, chart_to_gmm, gmm_to_chart
from distformer.observations import as_observations
from helpers import perturbed_model, random_mixture


@pytest.mark.parametrize("d", [1, 2, 3])
def test_chart_round_trip_is_exact(d, rng):
    gm = random_mixture((2, 3), 4, d, rng)
    chart = gmm_to_chart(gm)
    assert chart.shape == (2, 3, 4, chart_size(d))
    back = chart_to_gmm(chart, d)
    torch.testing.assert_close(back.loc, gm.loc, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.scale_tril, gm.scale_tril, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.weights, gm.weights, rtol=0, atol=1e-12)


def test_any_chart_decodes_to_a_valid_mixture(rng):
    chart = 3 * torch.randn(100, 5, chart_size(3), generator=rng, dtype=torch.float64)
    gm = chart_to_gmm(chart, 3)
    torch.testing.assert_close(gm.weights.sum(-1), torch.ones(100, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool(torch.isfinite(gm.loc).all())
    assert bool((gm.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all())
    assert bool((torch.linalg.eigvalsh(gm.component_covariance_matrix) > 0).all())


def test_untrained_model_multiplies_each_component_by_a_unit_site_at_the_origin(rng):
    """Zero-initialised branches leave only the site's initial value: precision I, mean 0, no weight change.

    So each component becomes N(mu, Sigma) x N(0; x, I) in closed form: Sigma' = (Sigma^-1 + I)^-1,
    mu' = Sigma' Sigma^-1 mu, with the prior's weights.
    """
    model = DistributionTransformer(ModelConfig(dim=2, sources={"z": 2})).double()
    prior = random_mixture((3,), 4, 2, rng)
    post = model.posterior(prior, torch.randn(3, 5, 2, generator=rng, dtype=torch.float64))
    eye = torch.eye(2, dtype=torch.float64)
    precision = torch.linalg.inv(prior.component_covariance_matrix)
    cov = torch.linalg.inv(precision + eye)
    torch.testing.assert_close(post.component_covariance_matrix, cov, rtol=0, atol=1e-10)
    torch.testing.assert_close(post.loc, (cov @ precision @ prior.loc.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-10)
    torch.testing.assert_close(post.weights, prior.weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_the_entrywise_site_update_is_the_matrix_form_and_the_closed_form_in_float64(d, rng):
    """Large batches of small D take the entrywise site update at inference: it equals the matrix form (LAPACK, small
    batches) on random charts and heads, and with a zero head (a unit site at the origin) it is the closed-form
    product N(mu, Sigma) N(0; x, I): Sigma' = (Sigma^-1 + I)^-1, mu' = Sigma' Sigma^-1 mu."""
    from distformer.distributions.small_linalg import MIN_UNROLLED_BATCH
    from distformer.nn.site import _apply_site_entrywise, apply_site, head_size

    chart = torch.randn(40, 3, chart_size(d), generator=rng, dtype=torch.float64)
    head = 0.5 * torch.randn(40, 3, head_size(d), generator=rng, dtype=torch.float64)
    torch.testing.assert_close(_apply_site_entrywise(chart, head, d), apply_site(chart, head, d), rtol=0, atol=1e-10)
    prior = random_mixture((MIN_UNROLLED_BATCH,), 2, d, rng)
    chart = gmm_to_chart(prior)
    with torch.inference_mode():
        post = chart_to_gmm(apply_site(chart, torch.zeros(*chart.shape[:-1], head_size(d), dtype=torch.float64), d), d)
    precision = torch.linalg.inv(prior.component_covariance_matrix)
    cov = torch.linalg.inv(precision + torch.eye(d, dtype=torch.float64))
    torch.testing.assert_close(post.component_covariance_matrix, cov, rtol=0, atol=1e-10)
    torch.testing.assert_close(post.loc, (cov @ precision @ prior.loc.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-10)
    torch.testing.assert_close(post.weights, prior.weights, rtol=0, atol=1e-12)


def test_the_site_update_of_an_ill_conditioned_float32_prior_is_its_float64_update(rng):
    """A 10-D prior factor with off-diagonal entries several times its diagonal (each entry inside
    linear-gaussian-10d's training ranges) has a covariance of condition number near 1e10, beyond float32: the
    matrix form of the site update runs in float64 at inference, so a float32 chart gets the float64 update rounded
    to float32, not a failed factorisation (closed form: the product with the site, from the float64 update)."""
    from distformer.nn.site import _apply_site_matrices, apply_site, head_size

    d = 10
    L = torch.eye(d, dtype=torch.float64) * 0.3 + torch.tril(2.0 * torch.rand(4, 2, d, d, generator=rng,
                                                                              dtype=torch.float64) - 1.0, -1) * 3
    prior = GaussianMixture(torch.full((4, 2), 0.5, dtype=torch.float64), torch.randn(4, 2, d, generator=rng,
                            dtype=torch.float64), scale_tril=L)
    assert float(torch.linalg.cond(prior.component_covariance_matrix).min()) > 1e8
    chart = gmm_to_chart(prior)
    head = 0.3 * torch.randn(4, 2, head_size(d), generator=rng, dtype=torch.float64)
    with torch.inference_mode():
        exact = chart_to_gmm(apply_site(chart.float().double(), head.float().double(), d), d)  # same inputs
        single = chart_to_gmm(apply_site(chart.float(), head.float(), d), d).to(torch.float64)
        failed = _apply_site_matrices(chart.float(), head.float(), d, False)  # in float32: no factor for some
    assert not bool(torch.isfinite(failed).all())
    torch.testing.assert_close(single.loc, exact.loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single.component_covariance_matrix, exact.component_covariance_matrix,
                               rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(single.weights, exact.weights, rtol=0, atol=1e-5)


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_traced_inference_matches_eager_forward(encoder_layers, rng):
    model = perturbed_model(encoder_layers=encoder_layers)
    for batch, k, n in [((1,), 4, 20), ((5,), 3, 1), ((2, 3), 6, 9)]:
        prior = random_mixture(batch, k, 2, rng, dtype=torch.float32)
        z = torch.randn(*batch, n, 2, generator=rng)
        fast, eager = model.posterior(prior, z), model.posterior(prior, z, grad=True)
        torch.testing.assert_close(fast.loc, eager.loc.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.scale_tril, eager.scale_tril.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.weights, eager.weights.detach(), rtol=0, atol=1e-6)


def test_large_batches_are_chunked_with_the_same_result(rng):
    model = perturbed_model()
    prior = random_mixture((50,), 4, 2, rng, dtype=torch.float32)
    z = torch.randn(50, 6, 2, generator=rng)
    whole = model.posterior(prior, z)
    model.chunk_size = 16
    chunked = model.posterior(prior, z)
    torch.testing.assert_close(chunked.loc, whole.loc, rtol=0, atol=1e-6)


def test_permuting_prior_components_permutes_the_posterior(rng):
    model = perturbed_model()
    prior = random_mixture((2,), 4, 2, rng, dtype=torch.float32)
    z = torch.randn(2, 7, 2, generator=rng)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = GaussianMixture(prior.weights[:, perm], prior.loc[:, perm], scale_tril=prior.scale_tril[:, perm])
    a, b = model.posterior(prior, z), model.posterior(permuted, z)
    assert (a.loc - prior.loc).abs().max() > 1e-3  # the model does something
    torch.testing.assert_close(b.loc, a.loc[:, perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(b.scale_tril, a.scale_tril[:, perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(b.weights, a.weights[:, perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_permuting_observations_leaves_the_posterior_unchanged(encoder_layers, rng):
    model = perturbed_model(encoder_layers=encoder_layers)
    prior = random_mixture((2,), 4, 2, rng, dtype=torch.float32)
    z = torch.randn(2, 9, 2, generator=rng)
    a = model.posterior(prior, z)
    b = model.posterior(prior, z[:, torch.randperm(9, generator=rng)])
    torch.testing.assert_close(b.loc, a.loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.weights, a.weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_masked_observations_equal_dropped_ones(encoder_layers, rng):
    model = perturbed_model(encoder_layers=encoder_layers)
    prior = random_mixture((), 4, 2, rng, dtype=torch.float32).expand((1,))
    z = torch.randn(1, 8, 2, generator=rng)
    mask = torch.tensor([[True, False, True, True, False, False, True, False]])
    padded = torch.where(mask.unsqueeze(-1), z, torch.full_like(z, 123.0))
    a = model.posterior(prior, padded, mask)
    b = model.posterior(prior, z[:, mask[0]])
    torch.testing.assert_close(a.loc, b.loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-6)


def test_the_observation_encoder_starts_as_the_identity_and_mixes_observations_once_trained(rng):
    """With zero-initialised branches an encoder leaves the tokens as they are, so the untrained model equals one
    without it; with its branches perturbed, a token's output depends on the other observations (the encoder's
    point: pairwise features), which the base model's per-token embedding cannot do."""
    from distformer.nn.layers import EncoderBlock

    torch.manual_seed(1)
    base = DistributionTransformer(ModelConfig(dim=2, sources={"z": 2}, d_model=32, hidden=32))
    torch.manual_seed(1)
    with_encoder = DistributionTransformer(ModelConfig(dim=2, sources={"z": 2}, d_model=32, hidden=32, encoder_layers=1))
    with_encoder.load_state_dict(base.state_dict(), strict=False)
    prior = random_mixture((3,), 4, 2, rng, dtype=torch.float32)
    z = torch.randn(3, 6, 2, generator=rng)
    torch.testing.assert_close(with_encoder.posterior(prior, z).loc, base.posterior(prior, z).loc, rtol=0, atol=0)
    block = EncoderBlock(32, 4, 64)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens, mask = torch.randn(1, 5, 32, generator=rng), torch.ones(1, 5, dtype=torch.bool)
    moved = tokens.clone()
    moved[0, 4] += torch.randn(32, generator=rng)  # not a constant shift, which the layer norm removes
    out, out_moved = block(tokens, mask), block(moved, mask)
    assert (out_moved[0, 0] - out[0, 0]).abs().max() > 1e-3
    hidden = mask.clone()
    hidden[0, 4] = False  # an absent token changes no present one
    torch.testing.assert_close(block(moved, hidden)[0, :4], block(tokens, hidden)[0, :4], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="encoder_layers >= 0"):
        ModelConfig(dim=2, encoder_layers=-1)


def test_batch_broadcasting_and_dtype(rng):
    model = perturbed_model()
    prior = random_mixture((), 3, 2, rng)  # float64, K=3 differs from training K
    post = model.posterior(prior, torch.randn(5, 4, 2, generator=rng))
    assert post.batch_shape == (5,) and post.num_components == 3 and post.dtype == torch.float64
    one = model.posterior(prior.expand((5,)), torch.randn(5, 4, 2, generator=rng))
    assert one.batch_shape == (5,)


def test_multiple_sources_with_a_missing_source(rng):
    model = perturbed_model(sources={"gps": 2, "range": 1})
    prior = random_mixture((2,), 4, 2, rng, dtype=torch.float32)
    obs = {"gps": torch.randn(2, 1, 2, generator=rng), "range": torch.randn(2, 3, 1, generator=rng)}
    mask = {"gps": torch.tensor([[True], [False]]), "range": torch.ones(2, 3, dtype=torch.bool)}
    post = model.posterior(prior, obs, mask)
    assert post.batch_shape == (2,)
    with pytest.raises(ValueError, match="Expected observations for source 'range'"):
        model.posterior(prior, {"gps": obs["gps"]})


def test_bad_inputs(rng):
    model = perturbed_model()
    prior = random_mixture((2,), 4, 2, rng, dtype=torch.float32)
    with pytest.raises(ValueError, match="D=2 dimensions for this model, but got D=3"):
        model.posterior(random_mixture((2,), 4, 3, rng), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"shape \(\*B, N, E=2\)"):
        model.posterior(prior, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="finite observations"):
        model.posterior(prior, torch.full((2, 3, 2), float("inf")))
    for bad in (float("nan"), -float("inf")):  # one entry is enough
        z = torch.zeros(2, 3, 2)
        z[1, 2, 0] = bad
        with pytest.raises(ValueError, match="finite observations"):
            model.posterior(prior, z)
    huge = torch.full((1, 3, 2), 1e308, dtype=torch.float64)  # finite, though their sum overflows
    assert bool(as_observations(huge, {"z": 2}).masks["z"].all())
    with pytest.raises(ValueError, match="broadcast"):
        model.posterior(prior, torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="boolean mask"):
        model.posterior(prior, torch.zeros(2, 3, 2), torch.ones(2, 3))
    with pytest.raises(TypeError, match="GaussianMixture"):
        model.posterior(prior.to_torch(), torch.zeros(2, 3, 2))
    with pytest.raises(TypeError, match="a tensor .* or a dict of them, but got str"):
        model.posterior(prior, "z")
    z = torch.randn(2, 3, 2, generator=rng)
    expected = model.posterior(prior, z).mean
    for given in (z.tolist(), z.numpy(), z.clone().requires_grad_()):  # as a dict's values already were
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning about a tensor that requires grad either
            torch.testing.assert_close(model.posterior(prior, given).mean, expected)


def test_non_finite_model_output_is_an_error(rng):
    model = perturbed_model()
    with torch.no_grad():
        model.head.last.bias.fill_(float("nan"))
    prior = random_mixture((1,), 4, 2, rng, dtype=torch.float32)
    with pytest.raises(FloatingPointError, match="finite posterior"):
        model.posterior(prior, torch.zeros(1, 3, 2))


def test_data_sets_without_observations_keep_their_prior_exactly():
    import distformer

    model = distformer.pretrained("linear-gaussian-2d")
    prior = distformer.problems.get("linear-gaussian", dim=2).sample_meta_prior(
        4, torch.Generator().manual_seed(1)).to(torch.float64)
    z = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1] = False
    mask[3, 2:] = False
    post = model.posterior(prior, z, mask)
    for name in ("weights", "loc", "scale_tril"):
        assert torch.equal(getattr(post, name)[1], getattr(prior, name)[1])
    alone = model.posterior(prior[[0, 2, 3]], z[[0, 2, 3]], mask[[0, 2, 3]])  # the others are unaffected
    torch.testing.assert_close(post.loc[[0, 2, 3]], alone.loc, rtol=0, atol=1e-6)
    empty = model.posterior(prior, torch.zeros(4, 0, 2, dtype=torch.float64))  # N = 0: the prior
    assert torch.equal(empty.loc, prior.loc)


def _export_problems():
    """64 priors from the 2-D meta-prior with 0..20 of 20 observations present (some data sets empty)."""
    import distformer

    g = torch.Generator().manual_seed(9)
    prior = distformer.problems.get("linear-gaussian", dim=2).sample_meta_prior(64, g)
    z = torch.randn(64, 20, 2, generator=g) * 3
    mask = torch.arange(20) < torch.randint(0, 21, (64, 1), generator=g)
    return prior, z, mask


def _assert_matches_to_1e_5(raw, eager: GaussianMixture) -> None:
    """An exported update's raw ``(log_weights, loc, scale_tril)`` against the eager posterior, to 1e-5 (weights
    to 3e-5: with the site's evidence in the weights, their logits pass through log-evidence terms of tens of nats,
    whose float32 rounding (an ulp is 4e-6 at 32, over several operations) differs between the eager path's
    entrywise site update and the exported matrix form; 2 of 256 weights differ by 1.2e-5)."""
    log_w, loc, tril = raw
    torch.testing.assert_close(log_w.exp(), eager.weights, rtol=0, atol=3e-5)
    torch.testing.assert_close(loc, eager.loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(tril, eager.scale_tril, rtol=0, atol=1e-5)


def test_exported_update_matches_eager_to_1e_5(tmp_path):
    import distformer

    model = distformer.pretrained("linear-gaussian-2d")
    path = model.export(tmp_path / "update.pt", num_components=4, max_observations=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 steers TorchScript users to torch.export
        program = torch.jit.load(str(path))
    prior, z, mask = _export_problems()
    eager = model.posterior(prior, z, mask)
    with torch.inference_mode():
        _assert_matches_to_1e_5(program(prior.log_weights, prior.loc, prior.scale_tril, z, mask), eager)
    contract = json.loads((tmp_path / "update.pt.json").read_text())
    assert contract["warp"] is None and contract["problem"] == "linear-gaussian"
    with pytest.raises(ValueError, match="format among"):
        model.export(tmp_path / "x.tflite", format="tflite")
    with pytest.raises(ValueError, match="positive int num_components"):  # not silently the trained K
        model.export(tmp_path / "x.pt", num_components=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
        with pytest.raises(RuntimeError, match="Expected the packages onnx and onnxscript"):
            model.export(tmp_path / "x.onnx", format="onnx")
    with pytest.raises(ValueError, match="ending in .pt2"):
        model.export(tmp_path / "x.pt", format="aoti")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXX", "no-such-compiler-here")
        with pytest.raises(RuntimeError, match="Expected a C\\+\\+ compiler"):
            model.export(tmp_path / "x.pt2", format="aoti")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update.pt", "update.pt.json"]  # nothing else written
    default = model.export(tmp_path / "default.pt")  # N from the card: the most observations in training
    assert json.loads((tmp_path / "default.pt.json").read_text())["max_observations"] == \
        model.support.count_high["z"] and default.is_file()


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_and_matches_eager_to_1e_5(tmp_path, capsys):
    """``distformer export --format onnx`` (about 30 s on 2 cores), run by ONNX Runtime on numpy arrays at batch
    sizes 1 and 64 with some data sets empty, against the eager posterior; the graph's input and output names are
    those of the contract."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason="format='onnx' needs the extra onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the ONNX graph needs the extra onnx")
    import distformer
    from distformer.cli import main

    model = distformer.pretrained("linear-gaussian-2d")
    path = tmp_path / "update.onnx"
    assert main(["export", "linear-gaussian-2d", str(path), "--format", "onnx", "--max-observations", "20"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update.onnx", "update.onnx.json"]
    contract = json.loads((tmp_path / "update.onnx.json").read_text())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == contract["input_names"]
    assert [o.name for o in session.get_outputs()] == contract["output_names"]
    prior, z, mask = _export_problems()
    assert not mask.any(-1).all()
    eager = model.posterior(prior, z, mask)
    arrays = [t.float().contiguous().numpy() for t in (prior.log_weights, prior.loc, prior.scale_tril, z)]
    arrays.append(mask.numpy())
    for rows in (slice(0, 1), slice(0, 64)):
        out = session.run(None, dict(zip(contract["input_names"], [a[rows] for a in arrays])))
        _assert_matches_to_1e_5([torch.from_numpy(o) for o in out], eager[rows])


@pytest.mark.slow
@pytest.mark.skipif(cpp_compiler() is None, reason="format='aoti' needs a C++ compiler")
def test_aoti_package_matches_eager_to_1e_5_at_any_batch_size(tmp_path, capsys):
    """``distformer export`` of the autotuned AOTInductor package (compiles once, about 3 minutes on 2 cores), at
    batch sizes 1 and 64 with some data sets empty, against the eager posterior; the package is read back with
    torch alone."""
    import distformer
    from distformer.cli import main

    model = distformer.pretrained("linear-gaussian-2d")
    path = tmp_path / "update.pt2"
    assert main(["export", "linear-gaussian-2d", str(path), "--format", "aoti", "--max-observations", "20"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update.pt2", "update.pt2.json"]  # no partial file left
    contract = json.loads((tmp_path / "update.pt2.json").read_text())
    assert (contract["format"], contract["autotune"], contract["num_components"]) == ("aoti", True, 4)
    package = torch._inductor.aoti_load_package(str(path))
    prior, z, mask = _export_problems()
    assert not mask.any(-1).all()
    eager = model.posterior(prior, z, mask)
    assert not prior.scale_tril.is_contiguous()  # the package reads its inputs with the strides it was traced with
    inputs = [t.contiguous() for t in (prior.log_weights, prior.loc, prior.scale_tril, z, mask)]
    for rows in (slice(0, 1), slice(0, 64)):
        with torch.inference_mode():
            out = package.loader.run([t[rows] for t in inputs])
        _assert_matches_to_1e_5(out, eager[rows])
    with torch.inference_mode():  # the package's own call (pytree inputs) gives the same
        again = package(*inputs)
    torch.testing.assert_close(again[1], out[1], rtol=0, atol=0)

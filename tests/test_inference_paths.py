"""The inference-only forward paths give the training forward's function: folded attention, fast GELU, chunks run
side by side, the engine with and without TorchScript."""

import pytest
import torch
from torch.nn import functional as F

from distformer import DistributionTransformer, GaussianMixture, ModelConfig
from distformer.nn.chunks import map_chunks
from distformer.nn.kernels import MAX_SHORT_MEMORY, attention, dense, gelu_tanh
from distformer.nn.folded import fold_attention, folded_forward
from distformer.nn.tokens import gmm_to_chart
from distformer.observations import Observations, as_observations
from helpers import perturbed_model, random_mixture


def _masked_problems(n, rng, dtype=torch.float64, N=9):
    prior = random_mixture((n,), 4, 2, rng, dtype=dtype)
    z = torch.randn(n, N, 2, generator=rng, dtype=dtype)
    mask = torch.rand(n, N, generator=rng) < 0.7
    mask[:, 0] = True
    return prior, z, mask


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_folded_attention_is_the_same_function_in_float64(encoder_layers, rng):
    """The softmax drops score terms constant over keys and the averaged values pass through W_O W_V exactly,
    so in float64 the folded forward equals the training forward to rounding (1e-10), masks included."""
    model = perturbed_model(noise=0.2, dtype=torch.float64, encoder_layers=encoder_layers)
    prior, z, mask = _masked_problems(40, rng)
    obs = as_observations(z, model.config.sources, mask)
    chart = gmm_to_chart(prior)
    with torch.inference_mode():
        torch.testing.assert_close(folded_forward(model, chart, obs), model(chart, obs), rtol=0, atol=1e-10)


def test_fold_attention_matches_multi_head_attention_with_biases(rng):
    """One attention against torch.nn.MultiheadAttention with random in/out biases (float64)."""
    torch.manual_seed(3)
    d, heads = 16, 4
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x = torch.randn(5, 3, d, generator=rng, dtype=torch.float64)
    m = torch.randn(5, 7, d, generator=rng, dtype=torch.float64)
    absent = torch.zeros(5, 7, dtype=torch.bool)
    absent[:, 4:] = True
    w = mha.in_proj_weight.chunk(3)
    b = mha.in_proj_bias.chunk(3)
    folded = fold_attention(w[0], b[0], w[1], w[2], b[2], mha.out_proj, heads)
    bias = torch.zeros(5, 7, 1, dtype=torch.float64).masked_fill(absent[..., None], -torch.inf)
    from distformer.nn.folded import folded_attend

    with torch.no_grad():
        expected, _ = mha(x, m, m, key_padding_mask=absent, need_weights=False)
        torch.testing.assert_close(folded_attend(x, m, folded, bias), expected, rtol=0, atol=1e-10)


def test_folded_weights_follow_in_place_parameter_changes(rng):
    """An optimiser step and load_state_dict change parameters in place; the folded cache must see both."""
    model = perturbed_model(noise=0.2, dtype=torch.float64)
    prior, z, mask = _masked_problems(40, rng)
    obs = as_observations(z, model.config.sources, mask)
    chart = gmm_to_chart(prior)
    other = perturbed_model(noise=0.2, dtype=torch.float64, seed=1)
    with torch.inference_mode():
        before = folded_forward(model, chart, obs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(chart, obs).square().sum().backward()
    opt.step()
    with torch.inference_mode():
        after_step = folded_forward(model, chart, obs)
        assert (after_step - before).abs().max() > 1e-3
        torch.testing.assert_close(after_step, model(chart, obs), rtol=1e-10, atol=1e-10)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(folded_forward(model, chart, obs), other(chart, obs), rtol=1e-10, atol=1e-10)


def test_the_traced_path_follows_in_place_parameter_changes(rng):
    """The traced forward holds the folded matrices as constants: after an optimiser step it must be traced again."""
    model = perturbed_model(noise=0.2)
    prior, z, mask = _masked_problems(3, rng, dtype=torch.float32)
    before = model.posterior(prior, z, mask, check=False).loc
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.posterior(prior, z, mask, grad=True, check=False).loc.square().sum().backward()
    opt.step()
    after = model.posterior(prior, z, mask, check=False).loc
    assert (after - before).abs().max() > 1e-3
    # float32 paths that may take different dense kernels (kernels.bias_add_pays): a few ulps relative
    torch.testing.assert_close(after, model.posterior(prior, z, mask, grad=True, check=False).loc.detach(),
                               rtol=2e-5, atol=1e-4)


def test_fast_gelu_equals_the_tanh_approximation():
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=0, atol=1e-14)
        x32 = x.float()
        torch.testing.assert_close(gelu_tanh(x32), F.gelu(x32, approximate="tanh"), rtol=0, atol=2e-6)
    x.requires_grad_(True)
    gelu_tanh(x).sum().backward()  # with autograd it is F.gelu itself
    assert torch.isfinite(x.grad).all()


def test_fast_dense_equals_linear_in_either_form(rng):
    """dense takes the product and in-place add or F.linear, whichever bias_add_pays measured faster (once per
    process); both are F.linear's function."""
    from distformer.nn import kernels

    x = torch.randn(300, 20, 64, generator=rng, dtype=torch.float64)
    w = torch.randn(256, 64, generator=rng, dtype=torch.float64)
    b = torch.randn(256, generator=rng, dtype=torch.float64)
    measured = kernels.bias_add_pays()
    assert isinstance(measured, bool) and kernels.bias_add_pays() is measured
    try:
        for form in (True, False):
            kernels._BIAS_ADD_PAYS["cpu"] = form
            with torch.inference_mode():
                torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=0, atol=1e-12)
                torch.testing.assert_close(dense(x[:1, :1], w, None), F.linear(x[:1, :1], w), rtol=0, atol=0)
    finally:
        kernels._BIAS_ADD_PAYS["cpu"] = measured


@pytest.mark.parametrize("keys", [2, 3, MAX_SHORT_MEMORY, MAX_SHORT_MEMORY + 1])
def test_short_memory_attention_equals_scaled_dot_product_attention_in_float64(keys, rng):
    """The keys-first attention of inference (at most MAX_SHORT_MEMORY keys) against torch's own kernel, which
    autograd uses, with and without a key mask; a masked key gets no weight, so changing it changes nothing."""
    q = torch.randn(6, 5, 32, generator=rng, dtype=torch.float64)
    k, v = torch.randn(2, 6, keys, 32, generator=rng, dtype=torch.float64)
    mask = torch.rand(6, keys, generator=rng) < 0.6
    mask[:, 0], mask[0, -1] = True, False
    for key_mask in (None, mask):
        reference = attention(q, k, v, 4, key_mask)  # autograd on: F.scaled_dot_product_attention
        with torch.inference_mode():
            torch.testing.assert_close(attention(q, k, v, 4, key_mask), reference, rtol=0, atol=1e-13)
    with torch.inference_mode():
        moved = torch.where(mask.unsqueeze(-1), v, v + 100.0)
        torch.testing.assert_close(attention(q, k, moved, 4, mask), attention(q, k, v, 4, mask), rtol=0, atol=1e-12)
        assert (attention(q, k, moved, 4, None) - attention(q, k, v, 4, None)).abs().max() > 1.0


@pytest.fixture
def restores_threads():
    """Puts torch's intra-op thread count back as the test found it, whatever the test set it to."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _folded_chunk_inputs(n, rng):
    """Charts and observations of ``n`` masked problems, and a float32 perturbed model's folded forward."""
    model = perturbed_model(noise=0.2)
    prior, z, mask = _masked_problems(n, rng, dtype=torch.float32)
    return (gmm_to_chart(prior), as_observations(z, model.config.sources, mask),
            lambda c, o: folded_forward(model, c, o))


def test_chunks_side_by_side_equal_chunks_in_turn_and_restore_the_thread_count(rng, restores_threads):
    chart, obs, forward = _folded_chunk_inputs(300, rng)
    torch.set_num_threads(1)
    in_turn = map_chunks(forward, chart, obs, 64)
    torch.set_num_threads(2)
    side_by_side = map_chunks(forward, chart, obs, 64)
    assert torch.get_num_threads() == 2
    assert not side_by_side.requires_grad  # the workers ran under inference mode
    torch.testing.assert_close(side_by_side, in_turn, rtol=0, atol=0)
    with pytest.raises(ValueError, match="positive chunk_size"):
        map_chunks(forward, chart, obs, 0)


def test_the_worker_pool_is_kept_between_calls_and_made_anew_for_another_thread_count(rng, restores_threads):
    from distformer.nn import chunks

    chart, obs, forward = _folded_chunk_inputs(100, rng)
    torch.set_num_threads(2)
    first = map_chunks(forward, chart, obs, 16)
    pool = chunks._POOL["pool"]
    torch.testing.assert_close(map_chunks(forward, chart, obs, 16), first, rtol=0, atol=0)
    assert chunks._POOL["pool"] is pool
    torch.set_num_threads(3)
    torch.testing.assert_close(map_chunks(forward, chart, obs, 16), first, rtol=0, atol=0)
    assert chunks._POOL["pool"] is not pool and torch.get_num_threads() == 3


def test_concurrent_callers_leave_the_thread_count_as_they_found_it(rng, restores_threads):
    from concurrent.futures import ThreadPoolExecutor

    model = perturbed_model(noise=0.2)
    prior, z, mask = _masked_problems(200, rng, dtype=torch.float32)
    torch.set_num_threads(2)
    expected = model.posterior(prior, z, mask, check=False).loc
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: model.posterior(prior, z, mask, check=False).loc, range(8)))
    assert torch.get_num_threads() == 2
    for loc in results:  # a caller that found the count lowered by another ran its chunks in turn: same function
        torch.testing.assert_close(loc, expected, rtol=0, atol=1e-5)


def test_a_failing_chunk_raises_and_restores_the_thread_count(rng, restores_threads):
    obs = Observations({"z": torch.zeros(10, 3, 2)}, {"z": torch.ones(10, 3, dtype=torch.bool)})

    def forward(c, o):
        raise RuntimeError("boom")

    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="boom"):
        map_chunks(forward, torch.zeros(10, 4, 6), obs, 3)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("size", [1, 33, 700])
def test_every_batch_size_path_matches_the_training_forward(size, rng):
    """Small batches go through the traced forward, large ones through folded chunks side by side."""
    model = perturbed_model(noise=0.2, encoder_layers=1)
    prior, z, mask = _masked_problems(size, rng, dtype=torch.float32)
    fast = model.posterior(prior, z, mask, check=False)
    eager = model.posterior(prior, z, mask, grad=True, check=False)
    torch.testing.assert_close(fast.loc, eager.loc.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.scale_tril, eager.scale_tril.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.log_weights, eager.log_weights.detach(), rtol=0, atol=1e-4)


def test_the_chunks_trace_records_the_shortcuts_and_keeps_the_function_in_float64(rng):
    """Large batches run a trace that holds the in-place GELU and bias add and the written-out 2 x 2 factors
    (whatever its example's size), the small-batch trace the plain forms and LAPACK; in float64 both give the
    training forward's posterior to 1e-10."""
    model = perturbed_model(noise=0.2, dtype=torch.float64, encoder_layers=1)
    prior, z, mask = _masked_problems(300, rng)
    chunked = model.posterior(prior, z, mask, check=False)           # 300 > traced_batch_size: chunks of 256
    small = model.posterior(prior[:5], z[:5], mask[:5], check=False)  # the small-batch update, one trace
    empty = mask[:6].clone()
    empty[5] = False                                                 # a data set without data: the folded trace
    some_empty = model.posterior(prior[:6], z[:6], empty, check=False)
    eager = model.posterior(prior, z, mask, grad=True, check=False)
    graphs = {key: str(model.__dict__[key][-1].inlined_graph) for key in ("_traced_chunks", "_traced",
                                                                        "_traced_update")}
    assert "aten::sigmoid_" in graphs["_traced_chunks"] and "aten::sigmoid_" not in graphs["_traced"]
    assert "aten::gelu" in graphs["_traced"] and "aten::gelu" not in graphs["_traced_chunks"]
    assert "cholesky_inverse" in graphs["_traced"] and "cholesky_inverse" not in graphs["_traced_chunks"]
    update = graphs["_traced_update"]  # the written-out factors alone: plain GELU, no LAPACK
    assert "aten::gelu" in update and "aten::sigmoid_" not in update and "cholesky_inverse" not in update
    for fast, n in ((chunked, 300), (small, 5), (some_empty[:5], 5)):
        torch.testing.assert_close(fast.loc, eager.loc[:n].detach(), rtol=0, atol=1e-10)
        torch.testing.assert_close(fast.scale_tril, eager.scale_tril[:n].detach(), rtol=0, atol=1e-10)
        torch.testing.assert_close(fast.log_weights, eager.log_weights[:n].detach(), rtol=0, atol=1e-10)


def test_batched_inference_folds_only_where_the_attention_cost_allows():
    from distformer.nn.folded import attention_multiply_adds, folding_pays

    wide = DistributionTransformer(ModelConfig(dim=4, sources={"z": 4}, num_components=4,
                                           d_model=128, num_heads=8, num_layers=2))
    # by hand, per problem, K=4 component tokens and N=2 observation tokens, d=128, H=8, two decoder blocks:
    # folded: per query 2 H d^2 + 2 H d N (self: N=K); unfolded: 2 d^2 per query and per memory token + 2 d Nq Nm
    d, H, K, N = 128, 8, 4, 2
    folded = 2 * (K * (2 * H * d * d + 2 * H * d * K) + K * (2 * H * d * d + 2 * H * d * N))
    unfolded = 2 * (2 * d * d * 2 * K + 2 * d * K * K + 2 * d * d * (K + N) + 2 * d * K * N)
    assert attention_multiply_adds(wide, K, N, True) == folded
    assert attention_multiply_adds(wide, K, N, False) == unfolded
    assert not folding_pays(wide, K, N)           # 4.6 times the unfolded count
    narrow = DistributionTransformer(ModelConfig(dim=2, sources={"z": 2}, num_components=4))
    assert folding_pays(narrow, 4, 20)            # width 64, 4 heads, 20 observations: 1.1 times
    # the unfolded batched path is the training forward's function too
    rng = torch.Generator().manual_seed(4)
    for p in wide.parameters():
        p.data.normal_(0, 0.05, generator=rng)
    loc = torch.randn(300, 4, 4, generator=rng)
    prior = GaussianMixture(torch.full((300, 4), 0.25), loc, scale_tril=0.5 * torch.eye(4).expand(300, 4, 4, 4))
    z = torch.randn(300, 2, 4, generator=rng)
    fast = wide.posterior(prior, z, check=False)
    eager = wide.posterior(prior, z, grad=True, check=False)
    torch.testing.assert_close(fast.loc, eager.loc.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.scale_tril, eager.scale_tril.detach(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("torchscript", [True, False])
def test_every_engine_path_is_the_reference_forward_in_float64(torchscript, rng):
    """``engine.decode``'s paths (one trace up to ``traced_batch_size``, chunks side by side or in turn above it),
    with TorchScript and as where it is gone (``without_torchscript``), equal the reference forward (autograd path)
    to rounding in float64. A failure names the module that no longer computes the model's function."""
    from distformer.nn.engine import without_torchscript

    model = perturbed_model(noise=0.2, dtype=torch.float64, encoder_layers=1)
    model.chunk_size = 16
    for n, workers in ((3, None), (40, None), (40, 1)):
        model.chunk_workers = workers
        prior, z, mask = _masked_problems(n, rng)
        reference = model.posterior(prior, z, mask, grad=True, check=False)
        with without_torchscript() if not torchscript else torch.inference_mode():
            fast = model.posterior(prior, z, mask, check=False)
        for name in ("loc", "scale_tril", "log_weights"):
            torch.testing.assert_close(getattr(fast, name), getattr(reference, name).detach(), rtol=0, atol=1e-10,
                                       msg=lambda m: f"n={n}, workers={workers}, TorchScript {torchscript}: the folded "
                                       f"forward (nn/folded.py) or the site head's entrywise form (nn/site.py) no "
                                       f"longer matches the reference forward (nn/transformer.py, nn/layers.py); a "
                                       f"change to the model's function must be made in each. {m}")


def test_one_chunk_worker_leaves_the_thread_count_alone(rng, monkeypatch):
    """``chunk_workers = 1`` runs the chunks in turn without touching torch's process-wide thread count; other
    values are refused with one sentence."""
    model = perturbed_model(noise=0.2)
    model.chunk_size, model.chunk_workers = 8, 1
    prior, z, mask = _masked_problems(40, rng, dtype=torch.float32)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    model.posterior(prior, z, mask, check=False)
    assert calls == []
    for bad in (0, 1.5, True):
        model.chunk_workers = bad
        with pytest.raises(ValueError, match="chunk_workers"):
            model.posterior(prior, z, mask, check=False)

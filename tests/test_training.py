"""Training engine: config round trips, save/load, exact resume, crash-safe writes, a tiny run that learns."""

import dataclasses
import json
import math
import os

import pytest
import torch

from distformer import ArchitectureConfig, ProblemConfig, TrainConfig, train
from distformer.io import atomic_write
from distformer.nn.serialization import load_model
from distformer.problems import get
from distformer.training.trainer import build_model, evaluate, learning_rate
from helpers import random_mixture

TINY = TrainConfig(problem=ProblemConfig("linear-gaussian", {"dim": 1, "max_observations": 5}),
                   architecture=ArchitectureConfig(d_model=16, num_heads=2, num_layers=1, ff_dim=32, hidden=16),
                   steps=6, batch_size=16, lr=1e-3, warmup_steps=2, validation_size=32, validate_every=1,
                   checkpoint_every=3, seed=5)


def test_config_round_trips_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    TINY.to_yaml(path)
    assert TrainConfig.from_yaml(path) == TINY
    assert TrainConfig.from_dict(TINY.to_dict()) == TINY


def test_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValueError, match="unknown \\['stepz'\\]"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="steps >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr > 0"):
        TrainConfig(lr=-1.0)


def test_learning_rate_schedule_warms_up_then_decays():
    c = TrainConfig(steps=100, warmup_steps=10, lr=1.0, final_lr_ratio=0.1)
    lrs = [learning_rate(s, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_model_save_load_round_trip(tmp_path, rng):
    model = train("linear-gaussian", TINY, progress=False)
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m.json")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.card == json.loads(json.dumps(model.card))
    prior = random_mixture((2,), 4, 1, rng, dtype=torch.float32)
    z = torch.randn(2, 3, 1, generator=rng)
    torch.testing.assert_close(again.posterior(prior, z).loc, model.posterior(prior, z).loc, rtol=0, atol=0)


def test_a_model_stem_with_a_dot_keeps_it(tmp_path):
    model = build_model(get("linear-gaussian", dim=1), TINY)
    model.save(tmp_path / "run.v1")
    model.save(tmp_path / "run.v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.v1.json", "run.v1.safetensors", "run.v2.json",
                                                          "run.v2.safetensors"]
    assert load_model(tmp_path / "run.v1.safetensors").config == model.config


def test_loading_rejects_tampered_truncated_or_foreign_files(tmp_path):
    model = train("linear-gaussian", TINY, progress=False)
    model.save(tmp_path / "m")
    weights = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(weights[:-10])
    with pytest.raises(ValueError, match="checksum"):
        load_model(tmp_path / "m")
    (tmp_path / "m.safetensors").write_bytes(weights)
    meta = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(ValueError, match="format version"):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "card"}))
    with pytest.raises(ValueError, match="'config' and 'card'"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing")


@pytest.mark.parametrize("ahead", [1, 3])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, ahead):
    config = dataclasses.replace(TINY, simulate_ahead=ahead)
    straight = train("linear-gaussian", config, checkpoint=tmp_path / "a.ckpt", progress=False)

    class Crash(Exception):
        pass

    def crash_at_5(step, metrics):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):  # the checkpoint from step 3 survives the crash at step 5
        train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", progress=False, callback=crash_at_5)
    resumed = train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", resume=True, progress=False)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    hist_a = straight.card["training"]["final_validation"]
    hist_b = resumed.card["training"]["final_validation"]
    assert hist_a["val_nll"] == hist_b["val_nll"]


def test_simulating_ahead_calls_the_simulator_once_per_stock_with_the_same_problems():
    calls = []

    def counted(ahead):
        problem = get("linear-gaussian", dim=1, max_observations=5)
        sample_batch = problem.sample_batch
        problem.sample_batch = lambda n, generator=None: calls.append((ahead, n)) or sample_batch(n, generator)
        return problem

    config = dataclasses.replace(TINY, calibration_size=0)
    one = train(counted(1), config, progress=False)
    three = train(counted(3), dataclasses.replace(config, simulate_ahead=3), progress=False)
    training = [(a, n) for a, n in calls if n in (16, 48)]  # not validation (32) or the card's support (20,000)
    assert training == [(1, 16)] * 6 + [(3, 48)] * 2  # six steps: six calls, or two calls of three steps each
    # the same training distribution, other draws: the two runs differ
    nll = [m.card["training"]["final_validation"]["val_nll"] for m in (one, three)]
    assert all(math.isfinite(v) for v in nll) and nll[0] != nll[1]
    with pytest.raises(ValueError, match="multiple of simulate_ahead"):
        dataclasses.replace(TINY, simulate_ahead=2)


def test_resume_refuses_a_different_config(tmp_path):
    train("linear-gaussian", TINY, checkpoint=tmp_path / "c.ckpt", progress=False)
    other = TrainConfig.from_dict(TINY.to_dict() | {"lr": 2e-3})
    with pytest.raises(ValueError, match="same TrainConfig"):
        train("linear-gaussian", other, checkpoint=tmp_path / "c.ckpt", resume=True, progress=False)


def test_a_config_saved_before_a_field_existed_reads_as_that_field_at_its_default():
    """Checkpoints and model cards written before ``architecture.encoder_layers`` existed still resume and match."""
    old = TINY.to_dict()
    del old["architecture"]["encoder_layers"]
    assert TrainConfig.from_dict(old).to_dict() == TINY.to_dict()
    assert TrainConfig.from_dict(old).architecture.encoder_layers == 0


def test_a_crash_during_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old contents")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new contents that never land")
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_a_benchmark_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """``write_report`` writes NAME.md and NAME.json (values JSON cannot encode as their str) and prints the report;
    when the disk fails mid-way the previous report stays as it was."""
    import json

    from benchmarks.runners.report import write_report

    md = write_report(tmp_path, "demo", ["# demo", "| a |"], {"dtype": torch.float32, "rows": [1, 2]})
    assert md == tmp_path / "demo.md" and md.read_text() == "# demo\n| a |\n"
    assert json.loads((tmp_path / "demo.json").read_text()) == {"dtype": "torch.float32", "rows": [1, 2]}
    assert "| a |" in capsys.readouterr().out
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, "demo", ["# new"], {})
    assert md.read_text() == "# demo\n| a |\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.md"]


def test_a_tiny_training_run_learns():
    """A few hundred steps must close most of the gap to the exact posterior on the validation set."""
    config = TrainConfig.from_dict(TINY.to_dict() | {
        "steps": 300, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20, "validation_size": 512,
        "validate_every": 300, "checkpoint_every": 300,
        "architecture": {"d_model": 32, "num_heads": 4, "num_layers": 1, "ff_dim": 64, "hidden": 32}})
    history = []
    model = train("linear-gaussian", config, progress=False, callback=lambda s, m: history.append(m))
    problem = get("linear-gaussian", **config.problem.options)
    validation = problem.sample_batch(512, generator=torch.Generator().manual_seed(config.seed + 2))  # as train()
    initial = evaluate(build_model(problem, config), problem, validation)
    final = history[-1]
    assert final["val_kl"] < 0.25 * initial["val_kl"], (initial, final)
    assert model.card["training"]["samples"] == 300 * 64


def test_non_finite_loss_is_an_error_not_a_silent_skip(monkeypatch):
    from distformer.training import trainer

    monkeypatch.setattr(trainer, "batch_loss", lambda *a, **k: (torch.tensor(float("nan")), torch.tensor(0.0)))
    with pytest.raises(FloatingPointError, match="finite training loss"):
        train("linear-gaussian", TINY, progress=False)


def test_bench_time_to_accuracy_quick_writes_a_report(tmp_path):
    from distformer.cli import main

    assert main(["bench", "time-to-accuracy", "--quick", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "time-to-accuracy.json").read_text())
    assert len(data["runs"]) == 4 and all(r["history"] for r in data["runs"])
    assert (tmp_path / "time-to-accuracy.png").is_file()


def test_weight_average_follows_its_recursion_in_float64():
    """After steps t = 1..T, the average equals the closed form sum_s theta_s (1 - b_s) prod_{r > s} b_r, with
    theta_0's weight prod_r b_r, for b_t = min(beta, (1 + t) / (10 + t))."""
    from distformer.training.averaging import WeightAverage, average_decay

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    average = WeightAverage(model, decay=0.8)
    thetas = [model.weight.detach().clone()]
    for t in range(1, 41):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=gen, dtype=torch.float64))
        thetas.append(model.weight.detach().clone())
        average.update(t)
    betas = [average_decay(t, 0.8) for t in range(1, 41)]
    assert betas[0] == pytest.approx(2 / 11) and betas[-1] == 0.8 and betas[20] < 0.8
    expected = thetas[0] * torch.tensor(betas, dtype=torch.float64).prod()
    for s in range(1, 41):
        expected = expected + thetas[s] * (1 - betas[s - 1]) * torch.tensor(betas[s:], dtype=torch.float64).prod()
    torch.testing.assert_close(average.model.weight, expected, rtol=0, atol=1e-12)
    assert not average.model.weight.requires_grad and model.weight.requires_grad


def test_a_run_with_a_weight_average_returns_it_and_resumes_exactly(tmp_path):
    config = TrainConfig.from_dict(TINY.to_dict() | {"weight_average_decay": 0.5})
    straight = train("linear-gaussian", config, checkpoint=tmp_path / "a.ckpt", progress=False)
    last = train("linear-gaussian", TINY, progress=False)  # same seed and data: the last weights without averaging
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), last.state_dict().values()))

    class Crash(Exception):
        pass

    def crash_at_5(step, metrics):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", progress=False, callback=crash_at_5)
    resumed = train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", resume=True, progress=False)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert straight.card["training"]["final_validation"]["val_nll"] == \
        resumed.card["training"]["final_validation"]["val_nll"]


def test_weight_average_decay_is_validated():
    with pytest.raises(ValueError, match="0 <= weight_average_decay < 1"):
        TrainConfig(weight_average_decay=1.0)
    from distformer.training.averaging import WeightAverage, average_decay

    with pytest.raises(ValueError, match="decay in \\(0, 1\\)"):
        WeightAverage(torch.nn.Linear(1, 1), decay=0.0)
    with pytest.raises(ValueError, match="1-based"):
        average_decay(0, 0.9)


def test_init_starts_a_run_from_saved_weights_and_refuses_another_architecture(tmp_path):
    """Fine-tuning: ``init`` builds the saved model's weights exactly, so a run from them starts at that model's
    validation NLL (same seed, same validation set); a model of another size is refused, as is an empty name."""
    first = train("linear-gaussian", TINY, progress=False)
    first.save(tmp_path / "first")
    config = TrainConfig.from_dict(TINY.to_dict() | {"init": str(tmp_path / "first")})
    problem = get("linear-gaussian", **TINY.problem.options)
    start = build_model(problem, config)
    for (k, a), (_, b) in zip(first.state_dict().items(), start.state_dict().items()):
        assert torch.equal(a, b), k
    validation = problem.sample_batch(TINY.validation_size, generator=torch.Generator().manual_seed(TINY.seed + 2))
    assert evaluate(start, problem, validation)["val_nll"] == first.card["training"]["final_validation"]["val_nll"]
    tuned = train("linear-gaussian", config, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), tuned.state_dict().values()))
    assert tuned.card["training"]["config"]["init"] == str(tmp_path / "first")
    wider = TrainConfig.from_dict(config.to_dict() | {"architecture": {**config.to_dict()["architecture"],
                                                                       "d_model": 32, "hidden": 32}})
    with pytest.raises(ValueError, match="Expected init .* to have the model configuration"):
        build_model(problem, wider)
    with pytest.raises(ValueError, match="Expected init to be a shipped model name"):
        TrainConfig(init="")


def test_init_blocks_starts_a_shallower_model_from_chosen_blocks_of_a_deeper_one(tmp_path):
    """``init_blocks`` keeps the listed decoder blocks of the saved model in that order and every other weight:
    the shallow model computes exactly the deep network with the other blocks skipped; bad lists are refused."""
    from distformer.nn.tokens import gmm_to_chart
    from distformer.nn.transformer import DistributionTransformer, ModelConfig
    from distformer.training.trainer import keep_blocks

    problem = get("linear-gaussian", **TINY.problem.options)
    deep = DistributionTransformer(ModelConfig(dim=1, d_model=16, num_heads=2, num_layers=3, ff_dim=32, hidden=16,
                                               split_observations=True))  # as linear-gaussian builds it
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every weight non-zero, so no block is the identity and each one matters
        for p in deep.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    deep.save(tmp_path / "deep")
    batch = problem.sample_batch(8, generator=torch.Generator().manual_seed(4))
    chart = gmm_to_chart(batch.prior).float()
    shallow = keep_blocks(deep, (2, 0))
    assert shallow.config.num_layers == 2 and shallow.num_parameters() < deep.num_parameters()
    with torch.no_grad():
        reference = DistributionTransformer(deep.config, deep.card)  # the deep network on its blocks 2 then 0
        reference.load_state_dict(deep.state_dict())
        reference.blocks = torch.nn.ModuleList([reference.blocks[2], reference.blocks[0]])
        expected = reference(chart, batch.observations)
        assert torch.equal(shallow(chart, batch.observations), expected)
        assert not torch.allclose(deep(chart, batch.observations), expected)

    config = TrainConfig.from_dict(TINY.to_dict() | {
        "init": str(tmp_path / "deep"), "init_blocks": [2, 0],
        "architecture": {**TINY.to_dict()["architecture"], "num_layers": 2}})
    assert TrainConfig.from_yaml(config.to_yaml()) == config
    start = build_model(problem, config)
    for (k, a), (_, b) in zip(shallow.state_dict().items(), start.state_dict().items()):
        assert torch.equal(a, b), k
    tuned = train("linear-gaussian", config, progress=False)
    assert tuned.card["training"]["config"]["init_blocks"] == [2, 0]
    with pytest.raises(ValueError, match="among the init model's 3 decoder blocks"):
        build_model(problem, TrainConfig.from_dict(config.to_dict() | {"init_blocks": [3, 0]}))
    for bad in ([0], [1, 1], [-1, 0]):
        with pytest.raises(ValueError, match="Expected init_blocks to list architecture.num_layers=2"):
            TrainConfig.from_dict(config.to_dict() | {"init_blocks": bad})
    with pytest.raises(ValueError, match="with init set"):
        TrainConfig.from_dict(config.to_dict() | {"init": None})


@pytest.mark.parametrize("field,value,match", [
    ("grad_clip", 0, "grad_clip > 0"), ("grad_clip", -1, "grad_clip > 0"), ("weight_decay", -0.1, "weight_decay >= 0"),
    ("num_threads", 0, "num_threads >= 1"), ("steps", "lots", "steps to be a whole number"),
    ("batch_size", 256.5, "batch_size to be a whole number"), ("lr", "fast", "lr to be a number"),
    ("prior_loss", "yes", "prior_loss to be true or false"), ("posterior_draws", -1, "posterior_draws >= 0")])
def test_config_fields_are_checked_with_one_sentence(field, value, match):
    """Values that used to train silently to a useless model, or fail deep inside (issue 31, items 3 and 9)."""
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(TINY.to_dict() | {field: value})


def test_yaml_exponents_become_numbers_and_other_suffixes_are_refused(tmp_path):
    config = TrainConfig.from_yaml("lr: 1e-3\nsteps: 10\n")  # PyYAML reads 1e-3 (no dot) as a string
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    path = tmp_path / "config.txt"
    path.write_text("steps: 10\n")
    with pytest.raises(ValueError, match="ending in .yaml or .yml"):
        TrainConfig.from_yaml(path)


def test_train_command_refuses_to_overwrite_a_checkpoint_without_resume_or_overwrite(tmp_path, capsys):
    """A second run after a crash must not silently start from scratch over the saved step (issue 31, item 2)."""
    from distformer.cli import main

    config = tmp_path / "tiny.yaml"
    TINY.to_yaml(config)
    out = tmp_path / "model"
    (tmp_path / "model.ckpt.safetensors").write_bytes(b"a checkpoint from an earlier run")
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 2
    assert "--resume to continue it or --overwrite" in capsys.readouterr().err
    assert (tmp_path / "model.ckpt.safetensors").read_bytes() == b"a checkpoint from an earlier run"


def test_a_save_over_a_model_interrupted_at_any_step_leaves_a_loadable_model(tmp_path):
    """Issue 31, item 1: a save that fails after the weights were replaced used to leave neither model loadable.
    Stopped at each of its three steps, the folder holds the old model or the new one, whole."""
    from distformer.nn.transformer import DistributionTransformer, ModelConfig
    from distformer.nn import serialization as ckpt

    def model(seed):
        torch.manual_seed(seed)
        return DistributionTransformer(ModelConfig(dim=1, d_model=8, num_heads=2, num_layers=1, ff_dim=8, hidden=8),
                                       card={"seed": seed})

    real_replace, real_write = os.replace, ckpt.atomic_write
    for step in (1, 2, 3):
        path = tmp_path / f"m{step}"
        model(0).save(path)
        calls = []

        def failing_write(target, data):
            calls.append("write")
            if len(calls) == step:
                raise OSError("No space left on device")
            real_write(target, data)

        def failing_replace(src, dst):  # step 3: the last rename, of the pending JSON into place
            if step == 3 and str(src).endswith(".pending"):
                raise OSError("No space left on device")
            real_replace(src, dst)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ckpt, "atomic_write", failing_write)
            patch.setattr(ckpt.os, "replace", failing_replace)
            with pytest.raises(OSError):
                model(1).save(path)
        loaded = load_model(path)
        expected = 1 if step == 3 else 0  # steps 1-2: the old model; step 3 stopped after the weights: the new one
        assert loaded.card == {"seed": expected}
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model(expected).state_dict().values()))


def test_load_checks_the_card_against_the_weights(tmp_path):
    """Issue 31, item 12: each of these used to fail late (at the first posterior, or with a torch error)."""
    import json

    from distformer.nn.transformer import DistributionTransformer, ModelConfig

    torch.manual_seed(0)
    model = DistributionTransformer(ModelConfig(dim=2, sources={"z": 2}, d_model=8, num_heads=2, num_layers=1,
                                                ff_dim=8, hidden=8))
    problem = get("linear-gaussian", dim=2)
    from distformer.support import estimate_support

    model.card = {"support": estimate_support(problem, 500, model=model).to_dict()}
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m.json").read_text())

    def broken(change, match):
        data = json.loads(json.dumps(meta))
        change(data)
        (tmp_path / "b.json").write_text(json.dumps(data))
        (tmp_path / "b.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes())
        with pytest.raises(ValueError, match=match):
            load_model(tmp_path / "b")

    broken(lambda d: d["config"].update(d_model=16), "shapes .* configures")
    broken(lambda d: d["config"].update(dim="two"), "whole numbers for the model sizes|whole numbers for the network sizes")
    broken(lambda d: d["card"]["support"].update(component_low=[0.0]), "training support .* component ranges")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.layers.0.weight"][0, 0] = float("nan")
    model.load_state_dict(state)
    model.save(tmp_path / "n")
    data = json.loads((tmp_path / "n.json").read_text())
    data.pop("weights_sha256")  # corrupted weights without a checksum
    (tmp_path / "n.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="finite weights"):
        load_model(tmp_path / "n")


def test_posterior_draws_score_the_same_expected_loss_with_less_noise():
    """Scoring each data set at draws from its exact posterior (``posterior_draws``) estimates the same expected
    NLL as scoring the generating parameter, since that parameter is itself a draw from the exact posterior given
    the data. Paired over 64 chunks of 64 problems, the mean difference must lie within 4 standard errors (two-sided
    false-alarm rate 6e-5 under a normal approximation), and the draws' per-chunk spread must be smaller."""
    from distformer.training.trainer import _shard, batch_loss

    torch.manual_seed(0)
    problem = get("linear-gaussian", dim=1, max_observations=5)
    model = build_model(problem, TINY)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        pairs = []
        for _ in range(64):
            batch, draws = _shard(problem, 64, g, 256)
            pairs.append((float(batch_loss(model, batch, False)[1]), float(batch_loss(model, batch, False, None,
                                                                                      draws)[1])))
    theta, drawn = torch.tensor(pairs).T
    difference = theta - drawn
    assert abs(float(difference.mean())) < 4 * float(difference.std()) / 8
    assert float(drawn.std()) < float(theta.std())


def test_posterior_draws_need_an_exact_posterior():
    with pytest.raises(ValueError, match="exact posterior"):
        train("quantum", TrainConfig.from_dict(TINY.to_dict() | {"problem": {"name": "quantum", "options": {}},
                                                                "posterior_draws": 4}), progress=False)


def test_a_time_budget_stops_cleanly_with_a_checkpoint_and_a_card(tmp_path):
    """A budget far shorter than the steps stops the run early: the model is returned with its card (steps done,
    the budget, a validation at the last step), a checkpoint holds that step, and resuming it with a larger budget
    continues from there. The learning rate's cosine follows the spent share of the budget."""
    config = TrainConfig.from_dict(TINY.to_dict() | {"steps": 100000, "validate_every": 1000, "checkpoint_every": 1000})
    model = train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", progress=False, time_budget=1.0)
    training = model.card["training"]
    assert 0 < training["steps_done"] < config.steps and training["time_budget_s"] == 1.0
    assert training["final_validation"]["step"] == training["steps_done"]
    from distformer.training.checkpoint import load_checkpoint

    assert json.loads(load_checkpoint(tmp_path / "b.ckpt")[1]["meta"])["step"] == training["steps_done"]
    more = train("linear-gaussian", config, checkpoint=tmp_path / "b.ckpt", resume=True, progress=False, time_budget=2.0)
    assert more.card["training"]["steps_done"] > training["steps_done"]
    assert learning_rate(50, config, 1.0) == pytest.approx(config.lr * config.final_lr_ratio)
    assert learning_rate(50, config, 0.5) == pytest.approx(config.lr * (1 + config.final_lr_ratio) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="time_budget"):
        train("linear-gaussian", TINY, progress=False, time_budget=0)


def test_a_stopped_run_becomes_a_model_from_its_checkpoint(tmp_path):
    """``dfm.model_from_checkpoint`` gives the weight average a run would have returned at that step, with a card
    (training config, step, support) that loads back after a save."""
    import distformer as dfm

    config = TrainConfig.from_dict(TINY.to_dict() | {"weight_average_decay": 0.9})
    trained = train("linear-gaussian", config, checkpoint=tmp_path / "c.ckpt", progress=False)
    model = dfm.model_from_checkpoint(tmp_path / "c.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert model.card["training"]["steps_done"] == config.steps and "support" in model.card
    model.save(tmp_path / "m")
    prior = dfm.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 1), scale_tril=torch.ones(1, 1, 1))
    assert load_model(tmp_path / "m").posterior(prior, torch.zeros(2, 1)).reliable is not None

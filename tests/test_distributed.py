"""Data-parallel training: two gloo processes on the CPU keep identical weights and reproduce a one-process run."""

import dataclasses

import torch

from distformer import ArchitectureConfig, ProblemConfig, TrainConfig, train
from distformer.problems import get
from distformer.nn.serialization import load_model
from distformer.launch import spawn_training, train_worker

CONFIG = TrainConfig(problem=ProblemConfig("linear-gaussian", {"dim": 2, "max_observations": 5}),
                     architecture=ArchitectureConfig(d_model=16, num_heads=2, num_layers=1, ff_dim=32, hidden=16),
                     steps=4, batch_size=32, lr=3e-3, warmup_steps=1, validation_size=64, validate_every=2,
                     checkpoint_every=2, seed=11, num_threads=1, data_shards=2)


def test_two_processes_stay_identical_and_match_one_process(tmp_path):
    out = str(tmp_path / "ddp")
    command = "distformer train ddp.yaml --nproc 2 --out ddp"
    spawn_training(2, train_worker, CONFIG.to_dict(), out, str(tmp_path / "ddp.ckpt.safetensors"), False, True, True,
                   command)
    rank0, rank1 = load_model(f"{out}.rank0"), load_model(f"{out}.rank1")
    for (name, a), (_, b) in zip(rank0.state_dict().items(), rank1.state_dict().items()):
        assert torch.equal(a, b), name  # replicas never diverge
    single = train(get("linear-gaussian", dim=2, max_observations=5), CONFIG, progress=False)
    ddp_history = load_model(out).card["training"]["final_validation"]
    one_history = single.card["training"]["final_validation"]
    assert abs(ddp_history["val_nll"] - one_history["val_nll"]) < 1e-5  # same global batch, same loss
    # Same gradients up to float32 summation order. Adam divides each update by the gradient's running RMS, so a
    # parameter whose gradient is ~0 (zero-initialised branches) can move by up to lr per step on rounding alone:
    # allow lr * steps there, and 1e-5 everywhere else.
    loose = CONFIG.lr * CONFIG.steps
    for (name, a), (_, b) in zip(single.state_dict().items(), rank0.state_dict().items()):
        diff = float((a - b).abs().max())
        assert diff < 1e-5 or diff < loose and name.endswith("bias"), (name, diff)
    assert load_model(out).card["training"]["processes"] == 2
    assert load_model(out).card["training"]["command"] == command  # the card says how to train it again


def test_data_shards_must_divide_the_batch_and_the_processes():
    import pytest

    with pytest.raises(ValueError, match="divisible by data_shards"):
        dataclasses.replace(CONFIG, batch_size=33)

"""Benchmark ``time-to-accuracy``: wall-clock training time until the 2-D linear-Gaussian model reaches a mean KL.

Each configuration trains ``configs/time-to-accuracy.yaml`` (the recipe of the width-64 ``linear-gaussian-2d``
shipped before, without a weight average; its full 9,000-step warm-up + cosine schedule) with
another model width and batch size (on one thread; two configurations run side by side on the two cores) and
stops at the first validation whose ``val_kl`` (NLL gap to the exact posterior on a fixed validation set, an
estimate of the mean KL) is at most ``TARGET``, at the end of the schedule, or at a safety time cap. A cap shorter
than the schedule would leave the learning rate high, so the full run is not time-capped in practice. Writes ``benchmarks/time-to-accuracy.{md,json,png}``.
"""

from __future__ import annotations

import dataclasses
from multiprocessing import get_context
from pathlib import Path

from .harness import Experiment, Table

TARGET = 0.01
GRID = [(32, 128), (64, 128), (32, 256), (64, 256)]  # (d_model, batch_size)
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "time-to-accuracy.yaml"


class _Reached(Exception):
    pass


def train_until(args: tuple) -> dict:
    """Train one configuration until ``val_kl <= TARGET`` or ``cap_s`` seconds; returns its validation history."""
    d_model, batch_size, cap_s, validate_every, config_text = args
    import torch

    from distformer.training.config import TrainConfig
    from distformer.training.trainer import build_model, train

    torch.set_num_threads(1)
    base = TrainConfig.from_yaml(config_text)
    config = dataclasses.replace(
        base, batch_size=batch_size, num_threads=1, validate_every=validate_every, validation_size=4096,
        architecture=dataclasses.replace(base.architecture, d_model=d_model, ff_dim=4 * d_model))
    history = []

    def callback(step, metrics):
        history.append({"step": step, "elapsed_s": metrics["elapsed_s"], "val_kl": metrics["val_kl"]})
        if metrics["val_kl"] <= TARGET or metrics["elapsed_s"] >= cap_s:
            raise _Reached

    try:
        train(config.problem.build(), config, progress=False, callback=callback)
    except _Reached:
        pass
    reached = [h for h in history if h["val_kl"] <= TARGET]
    problem = config.problem.build()
    model_parameters = sum(p.numel() for p in build_model(problem, config).parameters())
    return {"d_model": d_model, "batch_size": batch_size, "parameters": model_parameters, "history": history,
            "time_to_target_s": reached[0]["elapsed_s"] if reached else None,
            "steps_to_target": reached[0]["step"] if reached else None, "cap_s": cap_s}


def evaluate(size: dict, generator) -> list[dict]:
    """Every configuration of the grid, two at a time (one thread each); the runs seed themselves from the config."""
    if not CONFIG.is_file():
        raise FileNotFoundError(f"Expected the training config {CONFIG} (run from a source checkout), but it is missing.")
    text = CONFIG.read_text()
    with get_context("spawn").Pool(2) as pool:
        return pool.map(train_until, [(d, b, size["cap_s"], size["validate_every"], text) for d, b in GRID])


def protocol(size: dict, results: list[dict]) -> str:
    return (f"`configs/time-to-accuracy.yaml` (lr 3e-3, warm-up + cosine schedule over 9,000 steps, 3 layers) with "
            f"the width and batch below (ff = 4 × width); stopped at the first validation (every "
            f"{size['validate_every']} steps, 4,096 fixed problems) with KL <= {TARGET}, at the end of the schedule, "
            f"or after {size['cap_s']:.0f} s. Time is wall-clock on one thread. The recipe is that of the width-64 "
            "`linear-gaussian-2d` shipped before, which used two threads and the whole schedule; the one shipped now "
            "(trained with a weight average) is in its model card.")


def _reached(r: dict) -> tuple[str, str]:
    if r["time_to_target_s"] is not None:
        return f"{r['steps_to_target']:,}", f"{r['time_to_target_s']:.0f}"
    end = r["history"][-1] if r["history"] else {"step": 0, "elapsed_s": 0.0}
    return "–", f"not reached in {end['step']:,} steps ({end['elapsed_s']:.0f} s)"


def body(results: list[dict], size: dict) -> list:
    return [Table(results, (
        ("width (d_model)", lambda r: str(r["d_model"])), ("batch", lambda r: str(r["batch_size"])),
        ("parameters", lambda r: f"{r['parameters']:,}"), ("steps to target", lambda r: _reached(r)[0]),
        ("time to target (s)", lambda r: _reached(r)[1]),
        ("last KL", lambda r: f"{r['history'][-1]['val_kl']:.4f}" if r["history"] else "–")))]


def _plot(results: list[dict], path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        h = r["history"]
        ax.plot([x["elapsed_s"] / 60 for x in h], [max(x["val_kl"], 1e-4) for x in h], "o-", ms=3,
                label=f"width {r['d_model']}, batch {r['batch_size']}")
    ax.axhline(TARGET, color="red", ls=":", label=f"target KL {TARGET}")
    ax.set_yscale("log")
    ax.set_xlabel("training time (min, 1 thread)")
    ax.set_ylabel("validation KL (NLL gap to exact)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="time-to-accuracy", title=f"training cost of linear-gaussian-2d to mean KL <= {TARGET}", seed=0,
    sizes={"quick": dict(cap_s=8.0, validate_every=5), "full": dict(cap_s=2400.0, validate_every=250)},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot, caption="validation KL against training time",
    machine_note=lambda results: "each run on 1 thread, two runs at a time", payload=lambda results: {"runs": results})

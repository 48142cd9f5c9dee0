"""Benchmark ``lti``: the model filter against the exact filter, Kalman-family filters and particle filters.

Series from :class:`distformer.problems.lti.LTI`; the update model is the shipped ``linear-gaussian-2d``. Every
filter runs on the same series in one process, so the times compare. Writes ``benchmarks/lti.{md,json,png}``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distformer.baselines import (ExtendedKalmanFilter, GaussianStateSpace, KalmanFilter, ParticleFilter,
                                  UnscentedKalmanFilter, gaussian_log_likelihood, gaussian_transition)
from distformer.diagnostics import estimate
from distformer.filtering import Filter, LinearGaussianMotion, LinearGaussianUpdate
from distformer.problems.lti import LTI, Series
from .filter_runs import first_steps, out_of_family_line, out_of_family_messages, plot_compute_curve, timed
from .harness import Experiment, Table, drop_keys
from .report import fmt_estimate as _fmt

SEED = 31415
MODEL = "linear-gaussian-2d"


def evaluate(size: dict, generator: torch.Generator) -> dict:
    """Every filter on the same series (seeded from ``SEED``; particle filters from ``SEED + 1``, the drift series
    from ``SEED + 2``)."""
    import distformer

    lti = LTI()
    data = lti.simulate(size["series"], size["steps"], generator)
    model = distformer.pretrained(MODEL)
    motion64 = LinearGaussianMotion(lti.A, None, lti.Q)
    motion32 = LinearGaussianMotion(lti.A.float(), None, lti.Q.float())
    space = GaussianStateSpace.linear(lti.A, lti.Q, lti.H, lti.R)
    exact_filter = Filter(LinearGaussianUpdate(lti.H, lti.R), motion64)
    model_filter = Filter(model, motion32, check=False)
    out_of_family = out_of_family_messages(
        lambda: Filter(model, motion32, check=True).run(data.prior.to(torch.float32), data.observations))
    runs = {
        "exact (Gaussian-sum Kalman)": lambda d: exact_filter.run(d.prior, d.observations).beliefs,
        f"model ({MODEL})": lambda d: model_filter.run(d.prior.to(torch.float32), d.observations).beliefs,
        "Kalman (moment-matched prior)": lambda d: KalmanFilter(space).run(d.prior, *_tensors(d)),
        "EKF": lambda d: ExtendedKalmanFilter(space).run(d.prior, *_tensors(d)),
        "UKF": lambda d: UnscentedKalmanFilter(space).run(d.prior, *_tensors(d)),
    }
    particles = {}  # run name -> particle count
    for J in size["particles"]:
        pf = ParticleFilter(gaussian_transition(space.f, lti.Q), gaussian_log_likelihood(space.h, lti.R), J)
        name = f"particle filter, {J:,} particles"
        particles[name] = J
        runs[name] = lambda d, pf=pf: pf.run(d.prior, *_tensors(d), generator=torch.Generator().manual_seed(SEED + 1))
    # the warm-up has every series, so batched inference takes the same path as the timed run (as in score_filter)
    warm = Series(data.prior, data.states[:2], first_steps(data.observations, 2, size["series"]))
    rows = []
    with torch.inference_mode():
        exact_nll = None
        for name, fn in runs.items():
            fn(warm)  # first calls allocate: keep them off the clock
            beliefs, seconds = timed(lambda: fn(data))
            nll = -beliefs.to(torch.float64).log_prob(data.states)  # (T, n)
            exact_nll = nll if exact_nll is None else exact_nll
            rows.append({"filter": name, "nll": estimate(nll.mean(0)).as_dict(),
                         "gap": estimate((nll - exact_nll).mean(0)).as_dict(),
                         "ms_per_step": 1e3 * seconds / size["steps"]}
                        | ({"particles": particles[name]} if name in particles else {}))
        depth = lti.simulate(size["series"], size["depth"], torch.Generator().manual_seed(SEED + 2))
        deep_exact = -exact_filter.run(depth.prior, depth.observations).beliefs.log_prob(depth.states)
        deep_model = -model_filter.run(depth.prior.to(torch.float32), depth.observations).beliefs.to(
            torch.float64).log_prob(depth.states)
    gap = deep_model - deep_exact  # (T, n)
    buckets = [(0, 10), (10, 100), (100, size["depth"])]
    by_depth = [{"steps": f"{a + 1}-{b}", "gap": estimate(gap[a:b].mean(0)).as_dict()} for a, b in buckets if a < b]
    return {"filters": rows, "drift": by_depth, "out_of_family": out_of_family, "gap": gap}


def protocol(size: dict, r: dict) -> str:
    return (f"{size['series']} series of {size['steps']} steps (seed {SEED}) from `distformer.problems.lti.LTI` (2-D "
            "damped rotation, process sd 0.3, 1-5 unit-noise observations per step, 10% of steps without any). The "
            f"model filter predicts each component exactly and updates with the shipped `{MODEL}`. NLL: -log density "
            "of the true state under the filtered belief, averaged over steps, then over series (95% interval over "
            "series). Kalman/EKF/UKF start from the moment-matched Gaussian of the mixture prior; the particle filter "
            "(bootstrap, systematic resampling every step) is scored by its moment-matched Gaussian. Time: wall clock "
            f"per step for the whole batch of {size['series']} series.")


def body(r: dict, size: dict) -> list:
    return [
        Table(r["filters"], (("filter", lambda f: f["filter"]), ("NLL per step", lambda f: _fmt(f["nll"])),
                             ("gap to exact", lambda f: _fmt(f["gap"])),
                             ("ms per step (batch)", lambda f: f"{f['ms_per_step']:.2f}"))),
        "", f"## Drift: model minus exact NLL by depth ({size['series']} series of {size['depth']} steps)", "",
        Table(r["drift"], (("steps", lambda b: b["steps"]), ("NLL gap (nats per step)", lambda b: _fmt(b["gap"])))),
        "", out_of_family_line(r["out_of_family"])]


def _tensors(series) -> tuple[torch.Tensor, torch.Tensor]:
    return series.observations.values["z"], series.observations.masks["z"]


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    rows, gap, series = r["filters"], r["gap"], r["gap"].shape[1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_compute_curve(ax1, rows, series=series)
    steps = torch.arange(1, gap.shape[0] + 1)
    mean = gap.mean(1)
    window = max(1, gap.shape[0] // 50)
    smooth = torch.nn.functional.avg_pool1d(mean.view(1, 1, -1).float(), window, stride=1).flatten()
    ax2.plot(steps[:smooth.numel()].numpy(), smooth.numpy(), label=f"model − exact ({window}-step moving mean)")
    ax2.axhline(0.05, color="red", ls=":", label="target ±0.05")
    ax2.axhline(-0.05, color="red", ls=":")
    ax2.set_xscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("NLL gap (nats)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="lti", title="the model filter against exact, Kalman-family and particle filters", seed=SEED,
    sizes={"quick": dict(series=8, steps=20, depth=40, particles=(100, 1000)),
           "full": dict(series=100, steps=100, depth=1000, particles=(100, 1000, 10_000, 100_000))},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot,
    caption="NLL against time per step, and the gap by depth", payload=drop_keys("gap"))

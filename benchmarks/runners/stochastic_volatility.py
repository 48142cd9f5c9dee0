"""Benchmark ``stochastic-volatility``: the model filter against bootstrap particle filters (the paper's Figure 7).

Series from :meth:`distformer.problems.stochastic_volatility.StochasticVolatility.simulate_series`; the update model
is the shipped ``stochastic-volatility``, the predict step is exact per component. An EKF or UKF cannot use the
returns (their mean does not depend on the state), so the data-free "predict only" filter stands in for them.
Writes ``benchmarks/stochastic-volatility.{md,json,png}``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distformer.baselines import bootstrap_filter
from distformer.filtering import Filter, LinearGaussianMotion
from distformer.problems.stochastic_volatility import StochasticVolatility
from .filter_runs import (describe_match, first_steps, out_of_family_line, out_of_family_messages,
                          plot_compute_curve, row_cells, score_filter, score_particle_filter,
                          smallest_match)
from .harness import Experiment
from .report import fmt_estimate as _fmt

SEED = 16180
MODEL = "stochastic-volatility"


def evaluate(size: dict, generator: torch.Generator) -> dict:
    """The model filter, the predict-only filter and the particle filters on the same series (seeded from
    ``SEED``, the particle filters from ``SEED + 1``)."""
    import distformer

    problem = StochasticVolatility()
    data = problem.simulate_series(size["series"], size["steps"], generator)
    states = data.states
    model = distformer.pretrained(MODEL)
    motion = LinearGaussianMotion(problem.A.float(), problem.b.float(), problem.Q.float())
    model_filter = Filter(model, motion, check=False)
    prior32, obs32 = data.prior.to(torch.float32), data.observations.to(torch.float32)
    out_of_family = out_of_family_messages(lambda: Filter(model, motion, check=True).run(prior32, obs32))
    predict_only = Filter(lambda belief, observations: belief, motion)
    rows = []
    with torch.inference_mode():
        row, model_beliefs, reference = score_filter(f"model ({MODEL})", lambda p, o: model_filter.run(p, o).beliefs,
                                                     prior32, obs32, states)
        rows.append(row)
        rows.append(score_filter("predict only (what an EKF/UKF gets)", lambda p, o: predict_only.run(p, o).beliefs,
                                 prior32, obs32, states, reference)[0])
        for J, n in size["particles"]:
            subset = first_steps(obs32, size["steps"], n)
            rows.append(score_particle_filter(bootstrap_filter(problem, J), prior32[:n], subset, states[:, :n],
                                              SEED + 1, size["series"], reference)[0])
    model_row = rows[0]
    match = smallest_match(rows, model_row)
    return {"filters": rows, "match": match, "out_of_family": out_of_family}


def protocol(size: dict, r: dict) -> str:
    return (f"{size['series']} series of {size['steps']} steps (seed {SEED}) from `StochasticVolatility.simulate_series` "
            "(10 factor log-volatilities, OU with persistence 0.95 and sd 0.3, from the stationary law; 30 returns per "
            "step with covariance F diag(exp x) F^T + I). The model filter predicts each of its 4 components exactly "
            f"and updates with the shipped `{MODEL}`. Particle filters (bootstrap, systematic resampling every step, "
            "exact likelihood by Woodbury, float32 like the model) are scored under the better of a moment-matched "
            "Gaussian and a Gaussian KDE (Scott's bandwidth); the largest run on the first series only (column "
            f"`series`), and their time is scaled to {size['series']} series (their cost is linear in series). NLL: "
            "-log density of the true 10-D state, averaged over steps, then over series (95% interval over series); "
            "`minus model's` is the paired difference on the same series.")


def body(r: dict, size: dict) -> list:
    model_row = r["filters"][0]
    return [
        f"| filter | series | NLL per step | NLL, Gaussian / KDE | minus model's NLL | ms per step (batch of "
        f"{size['series']}) | time / model's |",
        "|---|---|---|---|---|---|---|",
        *[f"| {f['filter']} | {f['series']} | {_fmt(f['nll'], 3)} | {row_cells(f, model_row)} |" for f in r["filters"]],
        "",
        describe_match(r["match"]) + " The paper (Figure 7): the model's NLL is matched only by particle filters with "
        "about 1000× its compute per step.",
        "",
        out_of_family_line(r["out_of_family"])]


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    rows = r["filters"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    plot_compute_curve(ax1, rows)
    for r in rows:
        ax2.plot(range(1, len(r["nll_by_step"]) + 1), r["nll_by_step"], label=f"{r['filter']} ({r['series']} series)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean NLL over series")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="stochastic-volatility", title="the model filter against particle filters", seed=SEED,
    # (particles, series): the largest filters run on fewer series; their time is scaled to the full batch
    sizes={"quick": dict(series=6, steps=8, particles=((100, 6), (1000, 3))),
           "full": dict(series=100, steps=50, particles=((100, 100), (1000, 100), (10_000, 100), (100_000, 10)))},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot, caption="NLL against time per step; NLL by step")

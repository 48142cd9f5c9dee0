"""Benchmark ``refine``: importance-sampling correction and its Pareto-k̂ flag on priors pushed out of family.

For each shipped linear-Gaussian model and each scenario, draw problems, compute the model posterior, refine it
against the exact likelihood, and compare both with the exact posterior:

* ``in family``: the training meta-prior (control: how often the flags fire when nothing is wrong);
* ``scales x10`` / ``scales /10``: every prior standard deviation ten times larger / smaller than in training;
* ``means x10``: prior means spread ten times wider (data follow them);
* ``conflict``: in-family priors, but the true parameter lies 6 prior standard deviations from the prior mean,
  which the range check cannot see.

Writes ``benchmarks/refine.{md,json,png}``.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch

from distformer.diagnostics import estimate, kl_divergence
from distformer.problems import get
from distformer.refinement import refine
from distformer.support import OutOfFamilyWarning
from distformer.timing import interleaved_median_seconds

from .harness import Experiment, Table, drop_keys
from .report import fmt_estimate as _fmt

SEED = 2718
MODELS = ("linear-gaussian-1d", "linear-gaussian-2d")
FAILURE_KL = 0.1  # a refined posterior further than this from the exact one counts as a failed refinement
SCENARIOS = {
    "in family": {},
    "scales x10": {"scale": 10.0},
    "scales /10": {"scale": 0.1},
    "means x10": {"mean": 10.0},
    "conflict": {"conflict": 6.0},
}


def _scenario_batch(problem, spec: dict, n: int, generator: torch.Generator):
    """A batch from ``problem``'s meta-prior, modified as ``spec`` says (see the module docstring)."""
    from distformer.problems.base import Batch

    options = problem.options()
    if "scale" in spec:
        options |= {"min_std": options["min_std"] * spec["scale"], "max_std": options["max_std"] * spec["scale"]}
    if "mean" in spec:
        options |= {"mean_scale": options["mean_scale"] * spec["mean"]}
    shifted = get(problem.name, **options)
    if "conflict" not in spec:
        return shifted.sample_batch(n, generator=generator)
    prior = shifted.sample_meta_prior(n, generator=generator)
    direction = torch.randn(n, problem.dim, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    prior_sd = prior.covariance_matrix.diagonal(dim1=-2, dim2=-1).mean(-1).sqrt()
    theta = prior.mean + spec["conflict"] * prior_sd.unsqueeze(-1) * direction
    return Batch(prior, theta, shifted.simulate(theta, generator=generator))


def evaluate(name: str, scenario: str, num_problems: int, draws: int, kl_samples: int,
             generator: torch.Generator) -> dict:
    import distformer

    model = distformer.pretrained(name)
    problem = get("linear-gaussian", **model.card["problem"]["options"])
    batch = _scenario_batch(problem, SCENARIOS[scenario], num_problems, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfFamilyWarning)
        range_flag = ~model.posterior(batch.prior, batch.observations).reliable  # the per-problem typicality flag
    # the whole batch, so that the path it takes (the chunks' trace above 32 problems) is built outside the clock
    q = model.posterior(batch.prior, batch.observations, check=False)
    model_s = interleaved_median_seconds(
        {"model": lambda: model.posterior(batch.prior, batch.observations, check=False)}, 5, warmup=0)["model"]
    start = time.perf_counter()
    r = refine(q, batch.prior, problem, batch.observations, n=draws, generator=generator)
    refine_s = time.perf_counter() - start
    exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
    kl_model = kl_divergence(exact, q, kl_samples, generator)
    kl_refined = kl_divergence(exact, r.posterior, kl_samples, generator)
    flag = ~r.reliable
    failed = kl_refined > FAILURE_KL
    kept = ~flag
    return {
        "model": name, "scenario": scenario, "problems": num_problems, "draws": draws,
        "range_check_fires": float(range_flag.double().mean()),
        "khat_flag_fires": float(flag.double().mean()),
        "kl_model": estimate(kl_model).as_dict(), "kl_model_median": float(kl_model.median()),
        "kl_refined_median": float(kl_refined.median()),
        "unflagged": int(kept.sum()),
        "kl_model_unflagged": estimate(kl_model[kept]).as_dict() if kept.sum() > 1 else None,
        "kl_refined_unflagged": estimate(kl_refined[kept]).as_dict() if kept.sum() > 1 else None,
        "failures": int(failed.sum()), "failures_flagged": int((failed & flag).sum()),
        "false_alarms": int((flag & ~failed).sum()),
        "ess_median": float(r.ess.median()),
        "model_ms_per_1000": 1e3 * model_s / num_problems * 1000,
        "refine_ms_per_1000": 1e3 * refine_s / num_problems * 1000,
        "pareto_k": r.pareto_k.tolist(), "kl_refined": kl_refined.tolist(),
    }



def evaluate_all(size: dict, generator: torch.Generator) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [evaluate(name, scenario, generator=generator, **size) for name in MODELS for scenario in SCENARIOS]


def protocol(size: dict, results: list[dict]) -> str:
    return (f"{size['num_problems']} problems per row (seed {SEED}); `distformer.refine(posterior, prior, problem, "
            f"observations, n={size['draws']})` with a 10% defensive share of prior draws; KL(exact ‖ ·) by Monte "
            f"Carlo with {size['kl_samples']} exact-posterior samples per problem; intervals are 95%. The flag fires "
            f"when Pareto k̂ ≥ {min(1 - 1 / math.log10(size['draws']), 0.7):.2f}. A refinement *fails* when its KL to "
            f"the exact posterior exceeds {FAILURE_KL}. Scenarios: see `benchmarks/runners/refine.py`.")


def body(results: list[dict], size: dict) -> list:
    return [Table(results, (
        ("model", lambda r: r["model"]), ("scenario", lambda r: r["scenario"]),
        ("range check fires", lambda r: f"{100 * r['range_check_fires']:.0f}%"),
        ("k̂ flag fires", lambda r: f"{100 * r['khat_flag_fires']:.1f}%"),
        ("KL model: mean", lambda r: _fmt(r["kl_model"])), ("median", lambda r: f"{r['kl_model_median']:.4f}"),
        ("KL refined: median", lambda r: f"{r['kl_refined_median']:.4f}"),
        ("unflagged: KL model", lambda r: _fmt(r["kl_model_unflagged"])),
        ("unflagged: KL refined", lambda r: _fmt(r["kl_refined_unflagged"])),
        ("failed refinements flagged", lambda r: f"{r['failures_flagged']}/{r['failures']}"),
        ("false alarms", lambda r: str(r["false_alarms"])),
        ("refine ms / 1000 problems", lambda r: f"{r['refine_ms_per_1000']:,.0f}"))),
        "",
        "Read it as a user would: take the refined posterior where the flag is silent (the *unflagged* columns "
        "compare model and refinement on exactly those problems) and distrust both where it fires. "
        "Model time for comparison (median of 5 calls on the in-family batch, after one outside the clock): "
        + ", ".join(f"{r['model']} {r['model_ms_per_1000']:,.0f} ms / 1000" for r in results
                    if r["scenario"] == "in family") + "."]


def _plot(results: list[dict], path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, len(MODELS), figsize=(6 * len(MODELS), 4.2), sharey=True)
    for ax, name in zip(axes, MODELS):
        for r in (r for r in results if r["model"] == name):
            k = torch.tensor(r["pareto_k"]).clamp(-0.5, 3.0)
            kl = torch.tensor(r["kl_refined"]).clamp(1e-5, 1e6).log10()
            ax.scatter(k.numpy(), kl.numpy(), s=8, alpha=0.6, label=r["scenario"])
        ax.axvline(0.7, color="grey", ls=":", label="flag: k̂ = 0.7")
        ax.axhline(math.log10(FAILURE_KL), color="red", ls=":", label=f"failure: KL = {FAILURE_KL}")
        ax.set_xlabel("Pareto k̂ (clamped to [-0.5, 3])")
        ax.set_title(name)
    axes[0].set_ylabel("log10 KL(exact ‖ refined)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="refine", title="importance-sampling correction and its reliability flag", seed=SEED,
    sizes={"quick": dict(num_problems=16, draws=512, kl_samples=64),
           "full": dict(num_problems=200, draws=4096, kl_samples=512)},
    evaluate=evaluate_all, protocol=protocol, body=body, figure=_plot,
    caption="Pareto k̂ against the refined posterior's KL", payload=drop_keys("pareto_k", "kl_refined"))

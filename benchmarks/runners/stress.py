"""Benchmark ``stress``: every shipped model with an exact or reference posterior, on families of priors that users
write, with the per-problem reliability flag.

For each model and family (``stress_families.py`` for the mixture models, ``stress_parametric.py`` for the
parametric ones), on ``n`` fresh problems: KL(exact or reference ‖ model) per problem (mean, median, 95th
percentile), the share of problems the flag marks unreliable (``post.reliable`` is ``False``), **silent failures**
(KL > 0.1 and not flagged, as a share of all problems) and **false alarms** (flagged among the accurate problems,
KL < 0.02, as a share of those). KL is by Monte Carlo with draws from the exact posterior for the linear-Gaussian
and inverse-gamma models, and by quadrature on the reference grid for ``quantum``.

Command: ``distformer bench stress`` (``--quick`` for a small run).
"""

from __future__ import annotations

import math
import warnings

import torch

from distformer.diagnostics import kl_divergence
from distformer.problems import get
from distformer.support import OutOfFamilyWarning

from .harness import Experiment, Table
from .report import stage

SEED = 2727
SILENT_KL = 0.1
ACCURATE_KL = 0.02


def posterior_quietly(model, prior, observations, **options):
    """``model.posterior`` with its out-of-family warnings silenced (the flag is read from ``post.reliable``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfFamilyWarning)
        return model.posterior(prior, observations, **options)


def mixture_rows(name: str, n: int, kl_samples: int, generator: torch.Generator) -> list[dict]:
    """Every mixture family for the linear-Gaussian model ``name``: per-problem KL and flags."""
    import distformer

    from .stress_families import FAMILIES

    model = distformer.pretrained(name)
    problem = get("linear-gaussian", dim=model.dim)
    rows = []
    for family, draw in FAMILIES.items():
        if family == "correlated" and model.dim == 1:
            continue
        stage("stress", f"{name}: {family}")
        groups = draw(n, model.dim, generator)
        kls, flags, importance = [], [], []
        for p in groups if isinstance(groups, list) else [groups]:
            exact = problem.exact_posterior(p.prior.to(torch.float64), p.observations)
            post = posterior_quietly(model, p.prior, p.observations)
            kls.append(kl_divergence(exact, post, kl_samples, generator))
            flags.append(~post.reliable)
            importance.append(importance_flags(model, p.prior, p.observations, generator))
        rows.append(summarise(name, family, torch.cat(kls), torch.cat(flags), torch.cat(importance)))
    return rows


def importance_flags(model, prior, observations, generator: torch.Generator) -> torch.Tensor:
    """``~post.reliable`` with ``check="importance"`` (256 draws): the typicality flag or the importance check."""
    return ~posterior_quietly(model, prior, observations, check="importance", generator=generator).reliable


def summarise(model: str, family: str, kl: torch.Tensor, flagged: torch.Tensor,
              flagged_importance: torch.Tensor | None = None) -> dict:
    """The row of one (model, family): KL statistics, flagged share, silent failures and false alarms, for the
    default flag and, where given, with the importance check as well."""
    kl = kl.double()
    finite = torch.isfinite(kl)
    accurate = kl < ACCURATE_KL
    extra = {}
    if flagged_importance is not None:
        extra = {"flagged_importance": float(flagged_importance.double().mean()),
                 "silent_importance": float(((kl > SILENT_KL) & ~flagged_importance).double().mean()),
                 "false_alarm_importance": float((flagged_importance & accurate).double().sum()
                                                 / accurate.double().sum().clamp_min(1))}
    return extra | {
        "model": model, "family": family, "n": kl.numel(),
        "kl_mean": float(kl[finite].mean()) if bool(finite.any()) else math.inf,
        "kl_median": float(kl.median()), "kl_p95": float(kl.quantile(0.95)) if bool(finite.all()) else math.inf,
        "flagged": float(flagged.double().mean()),
        "silent": float(((kl > SILENT_KL) & ~flagged).double().mean()),
        "false_alarm": float((flagged & accurate).double().sum() / accurate.double().sum().clamp_min(1)),
        "accurate": int(accurate.sum()),
    }


def flag_cost(repeats: int, batch: int, generator: torch.Generator) -> dict:
    """Time of ``linear-gaussian-2d``'s ``posterior`` with the flag (``check=True``), without it (``check=False``)
    and with the importance check: batch 1 (20 observations) on one thread, and a batch of ``batch`` problems
    on the machine's threads; medians of interleaved calls."""
    import distformer

    from distformer.timing import interleaved_median_seconds, threads

    model = distformer.pretrained("linear-gaussian-2d")
    problem = get("linear-gaussian", **model.card["problem"]["options"])
    data = problem.sample_batch(batch, generator=generator)
    z = data.theta.unsqueeze(-2) + torch.randn(batch, 20, 2, generator=generator)
    one_prior, one_z = data.prior[:1], z[:1]
    if not bool(model.posterior(one_prior, one_z).reliable.all()):  # so that the flag's timing needs no wrapper
        raise RuntimeError("Expected the timed batch-1 problem, drawn from the meta-prior, to be judged reliable.")
    g = torch.Generator().manual_seed(0)
    out = {}
    with threads(1):
        t = interleaved_median_seconds({
            "flag": lambda: model.posterior(one_prior, one_z),
            "no flag": lambda: model.posterior(one_prior, one_z, check=False),
            "importance check": lambda: posterior_quietly(model, one_prior, one_z, check="importance", generator=g),
            "exact update": lambda: one_prior.condition_linear_gaussian(torch.eye(2), torch.eye(2), one_z)},
            repeats, 20)
        out["batch1_ms_1thread"] = {k: 1e3 * v for k, v in t.items()}
    with threads(torch.get_num_threads()):
        t = interleaved_median_seconds({
            "flag": lambda: posterior_quietly(model, data.prior, z),
            "no flag": lambda: model.posterior(data.prior, z, check=False)}, 7, 2)
        out["batched_problems_per_s"] = {k: batch / v for k, v in t.items()}
        out["batch"], out["threads"] = batch, torch.get_num_threads()
    return out


def evaluate(size: dict, generator: torch.Generator) -> dict:
    from .stress_filters import filter_model_rows
    from .stress_parametric import gp_refinement, parametric_rows

    n, kl_samples = size["problems"], size["kl_samples"]
    rows = []
    for name in ("linear-gaussian-2d", "linear-gaussian-1d", "linear-gaussian-10d"):
        rows += mixture_rows(name, n, kl_samples, generator)
    rows += parametric_rows(n, kl_samples, generator)
    for name in ("sensor-fusion", "stochastic-volatility"):
        rows += filter_model_rows(name, size["filter_problems"], generator)
    stage("stress", "cost of the flag")
    cost = flag_cost(size["latency_repeats"], size["batch"], generator)
    stage("stress", "gp-hyperprior-5d: refine with its likelihood")
    gp = gp_refinement(size["gp_problems"], size["gp_draws"], generator)
    return {"rows": rows, "flag_cost": cost, "gp_refinement": gp}


def protocol(size: dict, r: dict) -> str:
    import distformer

    from .stress_filters import MIN_ESS

    carded = sorted(name for name in {row["model"] for row in r["rows"]}
                    if distformer.pretrained(name).card.get("check") == "importance")
    return (f"Problems: {size['problems']} per family (seed {SEED}); KL(exact or reference ‖ model) per problem. "
            "Flagged: `post.reliable` is False with each model's default check (the ranges; the importance check "
            f"for {', '.join(f'`{m}`' for m in carded)}, whose cards set it). Silent: KL > {SILENT_KL} and not "
            "flagged (share of all "
            f"problems). False alarm: flagged with KL < {ACCURATE_KL} (share of those accurate problems). Families "
            "are described in `benchmarks/runners/stress_families.py`, `stress_parametric.py` and "
            "`stress_filters.py`; the filter models' rows are one update each against a self-normalised "
            "importance-sampling reference (20,000 draws, 90% from the model's posterior and 10% from the prior), "
            f"kept where its effective sample size is at least {MIN_ESS} (the family's name says how many).")


def _importance(r: dict) -> list[str]:
    if "flagged_importance" not in r:
        return ["–"] * 3
    return [f"{r['flagged_importance']:.1%}", f"{r['silent_importance']:.1%}", f"{r['false_alarm_importance']:.1%}"]


def body(out: dict, size: dict) -> list:
    rows, cost, gp = out["rows"], out["flag_cost"], out["gp_refinement"]
    worst_silent = max(rows, key=lambda r: r["silent"])
    worst_alarm = max(rows, key=lambda r: r["false_alarm"])
    b1, thr = cost["batch1_ms_1thread"], cost["batched_problems_per_s"]
    return [
        "The last three columns are the same with `check=\"importance\"` (256 draws; the default flag or the "
        "importance check).",
        "",
        Table(rows, (
            ("model", lambda r: r["model"]), ("family", lambda r: r["family"]),
            ("KL mean", lambda r: f"{r['kl_mean']:.4f}"), ("KL median", lambda r: f"{r['kl_median']:.4f}"),
            ("KL p95", lambda r: f"{r['kl_p95']:.4f}"), ("flagged", lambda r: f"{r['flagged']:.1%}"),
            ("silent", lambda r: f"{r['silent']:.1%}"),
            ("false alarms", lambda r: f"{r['false_alarm']:.1%} (of {r['accurate']})"),
            ("with importance check: flagged", lambda r: _importance(r)[0]),
            ("silent", lambda r: _importance(r)[1]), ("false alarms", lambda r: _importance(r)[2]))),
        "", f"Largest silent-failure share: {worst_silent['silent']:.1%} ({worst_silent['model']}, "
            f"{worst_silent['family']}); largest false-alarm share: {worst_alarm['false_alarm']:.1%} "
            f"({worst_alarm['model']}, {worst_alarm['family']}).",
        "", "## Cost of the flag (`linear-gaussian-2d`, 20 observations per problem)", "",
        "| | batch 1, one thread | batched, problems/s |", "|---|---|---|",
        f"| `posterior` with the flag (default) | {b1['flag']:.3f} ms | {thr['flag']:,.0f} |",
        f"| `posterior(check=False)` | {b1['no flag']:.3f} ms | {thr['no flag']:,.0f} |",
        f"| `posterior(check=\"importance\")`, 256 draws | {b1['importance check']:.3f} ms | – |",
        f"| exact update (`condition_linear_gaussian`) | {b1['exact update']:.3f} ms | – |", "",
        f"Batch 1: medians of {size['latency_repeats']} interleaved calls. Batched: {cost['batch']:,} problems, "
        f"{cost['threads']} threads, medians of 7 interleaved calls; with the flag "
        f"{thr['flag'] / thr['no flag']:.0%} of the throughput without it.",
        "", "## gp-hyperprior-5d: refine with its likelihood", "",
        f"{gp['problems']} problems from its meta-prior; NLL of the true f(x*) under the marginal of each "
        f"posterior (mean ± 95%); `refine` with {gp['draws']} draws and the GP likelihood "
        "(`problem.warped_target`).", "",
        "| | f(x*) NLL | time per problem |", "|---|---|---|",
        f"| model | {gp['nll_model']} | {gp['model_ms']:.3f} ms (batched) |",
        f"| model + `refine` | {gp['nll_refined']} | {gp['refine_ms']:.0f} ms |",
        f"| quadrature reference | {gp['nll_reference']} | {gp['reference_ms']:.1f} ms |", "",
        f"Refined minus reference, paired: {gp['gap_refined']}; Pareto k̂ above its threshold on "
        f"{gp['flagged']:.1%} of the problems."]


EXPERIMENT = Experiment(
    name="stress", title="priors users write, and the per-problem reliability flag", seed=SEED,
    sizes={"quick": dict(problems=50, kl_samples=128, latency_repeats=30, batch=1000, gp_problems=20, gp_draws=512,
                         filter_problems=30),
           "full": dict(problems=300, kl_samples=512, latency_repeats=300, batch=10000, gp_problems=200,
                        gp_draws=4096, filter_problems=300)},
    evaluate=evaluate, protocol=protocol, body=body)

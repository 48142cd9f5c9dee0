"""Benchmark ``components`` (the paper's appendix ablation): changing the number of prior components at inference.

The shipped ``linear-gaussian-2d`` model was trained with K=4 components. The decoder has no positional
encoding over components, so it accepts any K; this measures what that costs. For K in (1, 2, 4, 5, 10, 20), on
fresh problems from the same meta-prior with K components (seed 5151), it reports KL(exact ‖ model) by Monte
Carlo (mean ± 95% interval over problems) and the time per 1000 problems of the model and of the exact update,
measured in the same run. The out-of-family check is off here (it flags every K other than 4 by design).

Command: ``distformer bench components`` (``--quick`` for a small run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from distformer.diagnostics import estimate, kl_divergence
from distformer.problems import get

from .harness import Experiment, Table
from .methods import batched_times, per_thousand
from .report import fmt_estimate

MODEL = "linear-gaussian-2d"
COMPONENTS = (1, 2, 4, 5, 10, 20)
SEED = 5151


def evaluate(size: dict, generator: torch.Generator) -> dict:
    import distformer

    n, samples = size["problems"], size["kl_samples"]
    model = distformer.pretrained(MODEL)
    options = dict(model.card["problem"]["options"])
    rows = []
    for k in COMPONENTS:
        problem = get("linear-gaussian", **(options | {"num_components": k}))
        batch = problem.sample_batch(n, generator=generator)
        exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
        post = model.posterior(batch.prior, batch.observations, check=False)
        kl = kl_divergence(exact, post, samples, generator)
        times = batched_times({
            "model": lambda: model.posterior(batch.prior, batch.observations, check=False),
            "exact": lambda: problem.exact_posterior(batch.prior, batch.observations)}, size["repeats"], 1)
        rows.append({"K": k, "kl": estimate(kl).as_dict(), "time_per_1000_s": per_thousand(times, n)[0]})
    return {"trained_K": options["num_components"], "rows": rows}


def protocol(size: dict, r: dict) -> str:
    return (f"Problems: {size['problems']} per K from the training meta-prior with K components (seed {SEED}); KL by "
            f"Monte Carlo with {size['kl_samples']} exact-posterior draws per problem; intervals are 95%. Time: per 1000 "
            f"problems, batched, {torch.get_num_threads()} thread(s), median of {size['repeats']} interleaved calls.")


def body(r: dict, size: dict) -> list:
    return [Table(r["rows"], (
        ("K", lambda row: f"{row['K']}{' (trained)' if row['K'] == r['trained_K'] else ''}"),
        ("KL(exact ‖ model)", lambda row: fmt_estimate(row["kl"], 4)),
        ("model, s / 1000 problems", lambda row: f"{row['time_per_1000_s']['model']:.3f}"),
        ("exact, s / 1000 problems", lambda row: f"{row['time_per_1000_s']['exact']:.3f}")))]


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    rows, trained_k = r["rows"], r["trained_K"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ks = [r["K"] for r in rows]
    ax.errorbar(ks, [r["kl"]["mean"] for r in rows], yerr=[1.96 * r["kl"]["stderr"] for r in rows], marker="o",
                capsize=3)
    ax.axvline(trained_k, color="grey", ls=":", label=f"trained K={trained_k}")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("components K at inference")
    ax.set_ylabel("mean KL(exact ‖ model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="components", title=f"K at inference for `{MODEL}`", seed=SEED,
    sizes={"quick": dict(problems=100, kl_samples=128, repeats=3), "full": dict(problems=1000, kl_samples=1024, repeats=7)},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot, caption="KL against K")

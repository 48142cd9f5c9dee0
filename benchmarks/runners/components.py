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
from .report import fmt_estimate, write_report
from distformer.timing import interleaved_median_seconds, machine, threads

MODEL = "linear-gaussian-2d"
COMPONENTS = (1, 2, 4, 5, 10, 20)
SEED = 5151


def run(quick: bool = False, out_dir: Path = Path("benchmarks")) -> Path:
    """Run the benchmark and write ``out_dir/components.{md,json,png}``."""
    import distformer

    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    n, samples, repeats = (100, 128, 3) if quick else (1000, 1024, 7)
    model = distformer.pretrained(MODEL)
    options = dict(model.card["problem"]["options"])
    trained_k = options["num_components"]
    rows = []
    for k in COMPONENTS:
        problem = get("linear-gaussian", **(options | {"num_components": k}))
        batch = problem.sample_batch(n, generator=generator)
        prior64 = batch.prior.to(torch.float64)
        exact = problem.exact_posterior(prior64, batch.observations)
        post = model.posterior(batch.prior, batch.observations, check=False)
        kl = kl_divergence(exact, post, samples, generator)
        with threads(torch.get_num_threads()):
            times = interleaved_median_seconds({
                "model": lambda: model.posterior(batch.prior, batch.observations, check=False),
                "exact": lambda: problem.exact_posterior(batch.prior, batch.observations)}, repeats, 1)
        rows.append({"K": k, "kl": estimate(kl).as_dict(),
                     "time_per_1000_s": {name: 1000 * t / n for name, t in times.items()}})
    command = "distformer bench components" + (" --quick" if quick else "")
    lines = [
        f"# components: K at inference for `{MODEL}` (trained with K={trained_k})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Problems: {n} per K from the training meta-prior with K components (seed {SEED}); KL by Monte Carlo with "
        f"{samples} exact-posterior draws per problem; intervals are 95%. Time: per 1000 problems, batched, "
        f"{torch.get_num_threads()} thread(s), median of {repeats} interleaved calls.",
        "",
        "| K | KL(exact ‖ model) | model, s / 1000 problems | exact, s / 1000 problems |",
        "|---|---|---|---|",
        *[f"| {r['K']}{' (trained)' if r['K'] == trained_k else ''} | {fmt_estimate(r['kl'], 4)} | "
          f"{r['time_per_1000_s']['model']:.3f} | {r['time_per_1000_s']['exact']:.3f} |" for r in rows],
        "",
        "![KL against K](components.png)",
    ]
    md = write_report(out_dir, "components", lines, {"model": MODEL, "command": command, "rows": rows})
    _plot(rows, trained_k, out_dir / "components.png")
    return md


def _plot(rows: list[dict], trained_k: int, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

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

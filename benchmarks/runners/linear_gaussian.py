"""Benchmark ``linear-gaussian``: shipped models against the exact posterior, accuracy and speed in one run.

For each shipped model ``linear-gaussian-{1,2}d`` on fresh problems from its meta-prior (seed 12345, distinct from
the training seeds):

* KL(exact ‖ model) per problem by Monte Carlo (``diagnostics.kl_divergence``), mean ± 95% interval;
* expected NLL of the true parameter under the model and under the exact posterior, and their paired difference
  (on 20,000 further problems: the difference estimates the same expected KL, with more noise);
* median latency of one ``model.posterior`` call (batch 1, 20 observations, one thread) beside the exact update;
* throughput (problems/s) for a batch of 10,000 problems with 20 observations on all cores, beside the exact update;
* prior-data conflict (2-D model): KL as the data mean moves away from a fixed-shape prior, in prior standard
  deviations. Training draws the parameter from the prior, so large conflicts are outside what the model saw.

Command: ``distformer bench linear-gaussian`` (``--quick`` for a small run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from distformer.distributions.gmm import GaussianMixture
from distformer.diagnostics import estimate, kl_divergence, negative_log_likelihood
from distformer.problems import get
from .report import fmt_estimate as _fmt, write_report
from distformer.timing import interleaved_median_seconds, machine, threads

MODELS = ("linear-gaussian-1d", "linear-gaussian-2d")
SEED = 12345


def evaluate_model(name: str, num_problems: int, nll_problems: int, kl_samples: int, latency_repeats: int,
                   throughput_batch: int, generator: torch.Generator) -> dict:
    """Accuracy and speed of shipped model ``name`` against the exact posterior."""
    import distformer

    model = distformer.pretrained(name)
    problem = get("linear-gaussian", **model.card["problem"]["options"])
    batch = problem.sample_batch(num_problems, generator=generator)
    with threads(torch.get_num_threads()):
        approx = model.posterior(batch.prior, batch.observations)
    exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
    kl = kl_divergence(exact, approx, kl_samples, generator=generator)
    counts = batch.observations.count("z")
    # the NLL gap estimates the same expected KL from one true parameter per problem: noisier, so more problems
    nll_batch = problem.sample_batch(nll_problems, generator=generator)
    nll_model = negative_log_likelihood(model.posterior(nll_batch.prior, nll_batch.observations), nll_batch.theta)
    nll_exact = negative_log_likelihood(
        problem.exact_posterior(nll_batch.prior.to(torch.float64), nll_batch.observations), nll_batch.theta)

    D = problem.dim
    prior1 = batch.prior[:1]
    z1 = batch.theta[:1].unsqueeze(-2) + torch.randn(1, 20, D, generator=generator)
    eye = torch.eye(D)
    with threads(1):
        latency = interleaved_median_seconds({"model": lambda: model.posterior(prior1, z1),
                                              "unchecked": lambda: model.posterior(prior1, z1, check=False),
                                              "exact": lambda: prior1.condition_linear_gaussian(eye, eye, z1)},
                                             latency_repeats, 20)
    big = problem.sample_batch(throughput_batch, generator=generator)
    zb = big.theta.unsqueeze(-2) + torch.randn(throughput_batch, 20, D, generator=generator)
    with threads(torch.get_num_threads()):
        batch_time = interleaved_median_seconds({
            "model": lambda: model.posterior(big.prior, zb),
            "exact": lambda: big.prior.condition_linear_gaussian(eye, eye, zb)}, 5, 1)
    t_model, t_exact = batch_time["model"], batch_time["exact"]
    by_count = {}
    for n in sorted(set(counts.tolist())):
        sel = counts == n
        by_count[int(n)] = estimate(kl[sel]).as_dict()
    return {
        "model": name,
        "problems": num_problems,
        "nll_problems": nll_problems,
        "kl_exact_to_model": estimate(kl).as_dict(),
        "nll_model": estimate(nll_model).as_dict(),
        "nll_exact": estimate(nll_exact).as_dict(),
        "nll_gap": estimate(nll_model - nll_exact).as_dict(),
        "kl_by_observation_count": by_count,
        "latency_ms_batch1_20obs_1thread": {k: 1e3 * v for k, v in latency.items()},
        "throughput_problems_per_s": {"model": throughput_batch / t_model, "exact": throughput_batch / t_exact,
                                      "batch": throughput_batch, "threads": torch.get_num_threads()},
        "kl_values": kl.tolist(),
    }


def conflict_sweep(name: str, kl_samples: int, generator: torch.Generator) -> list[dict]:
    """KL(exact || model) for one data set (10 points around (1, -0.5)) under priors moved ever further away."""
    import distformer

    from distformer.demo import prior_distance

    model = distformer.pretrained(name)
    problem = get("linear-gaussian", **model.card["problem"]["options"])
    dtype = torch.float64
    z = torch.tensor([1.0, -0.5], dtype=dtype) + torch.randn(1, 10, 2, generator=generator, dtype=dtype)
    rows = []
    for centre, sd in [(1.0, 2.0), (4.0, 2.0), (4.0, 1.5), (4.5, 1.2), (5.0, 1.0), (5.0, 0.7), (5.0, 0.5)]:
        loc = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.3, 0.2]], dtype=dtype) + centre
        cov = sd**2 * torch.tensor([1.0, 0.8, 1.2, 0.9], dtype=dtype).view(4, 1, 1) * torch.eye(2, dtype=dtype)
        prior = GaussianMixture(torch.full((4,), 0.25, dtype=dtype), loc, covariance_matrix=cov).expand((1,))
        kl = kl_divergence(problem.exact_posterior(prior, z), model.posterior(prior, z), kl_samples, generator)
        rows.append({"prior_centre": centre, "prior_sd": sd, "distance_sd": prior_distance(prior, z),
                     "kl": float(kl.mean())})
    return rows



def run(quick: bool = False, out_dir: Path = Path("benchmarks")) -> Path:
    """Run the benchmark and write ``out_dir/linear-gaussian.{md,json,png}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    size = dict(num_problems=200, nll_problems=500, kl_samples=64, latency_repeats=30, throughput_batch=1000) \
        if quick else dict(num_problems=2000, nll_problems=20000, kl_samples=1024, latency_repeats=1000,
                           throughput_batch=10000)
    results = [evaluate_model(name, generator=generator, **size) for name in MODELS]
    conflict = conflict_sweep(MODELS[-1], size["kl_samples"] * 4, generator)
    command = "distformer bench linear-gaussian" + (" --quick" if quick else "")
    lines = [
        "# linear-gaussian: shipped models against the exact posterior",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Problems: {size['num_problems']} fresh draws from each model's training meta-prior (seed {SEED}); "
        f"KL by Monte Carlo with {size['kl_samples']} exact-posterior samples per problem. The NLL columns use "
        f"another {size['nll_problems']} problems: their gap estimates the same expected KL from one true parameter "
        "per problem, which is noisier. Intervals are 95% (1.96 standard errors over problems).",
        "",
        "| model | KL(exact ‖ model) | NLL model | NLL exact | NLL gap | latency model (ms) | latency exact (ms) "
        "| latency ratio | latency, check=False (ms) | model problems/s | exact problems/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat, thr = r["latency_ms_batch1_20obs_1thread"], r["throughput_problems_per_s"]
        lines.append(f"| {r['model']} | {_fmt(r['kl_exact_to_model'])} | {_fmt(r['nll_model'])} | "
                     f"{_fmt(r['nll_exact'])} | {_fmt(r['nll_gap'])} | {lat['model']:.3f} | {lat['exact']:.3f} | "
                     f"{lat['model'] / lat['exact']:.2f} | {lat['unchecked']:.3f} | "
                     f"{thr['model']:,.0f} | {thr['exact']:,.0f} |")
    lines += [
        "",
        f"Latency: median of {size['latency_repeats']} `model.posterior(prior, z)` calls for one problem with 20 "
        "observations on one thread (with the out-of-family check; `check=False` skips it), interleaved with the "
        "exact update `prior.condition_linear_gaussian(I, I, z)` "
        "on the same input, so both see the same machine load (this shared machine's speed drifts by up to 2x "
        "between runs; the ratio is steadier than either time). Throughput: median over 5 interleaved calls on a "
        f"batch of {size['throughput_batch']:,} problems with 20 observations each, "
        f"{results[0]['throughput_problems_per_s']['threads']} threads.",
        "",
        "![KL by number of observations](linear-gaussian.png)",
        "",
        f"## Prior-data conflict ({MODELS[-1]})",
        "",
        "One data set (10 points around (1, -0.5)); 4-component priors of the given spread moved away from it. "
        "Distance: data mean from prior mean in prior standard deviations. The training meta-prior draws the "
        "parameter from the prior, so distances beyond about 4 are rarely seen in training.",
        "",
        "| prior centre | prior sd | distance (sd) | KL(exact ‖ model) |",
        "|---|---|---|---|",
        *[f"| ({r['prior_centre']}, {r['prior_centre']}) | {r['prior_sd']} | {r['distance_sd']:.1f} | {r['kl']:.4f} |"
          for r in conflict],
    ]
    slim = [{k: v for k, v in r.items() if k != "kl_values"} | {"command": command} for r in results]
    md = write_report(out_dir, "linear-gaussian", lines, {"models": slim, "prior_data_conflict": conflict})
    _plot(results, out_dir / "linear-gaussian.png")
    return md


def _plot(results: list[dict], path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        counts = sorted(r["kl_by_observation_count"])
        means = [r["kl_by_observation_count"][n]["mean"] for n in counts]
        err = [1.96 * r["kl_by_observation_count"][n]["stderr"] for n in counts]
        ax1.errorbar(counts, means, yerr=err, marker="o", ms=3, capsize=2, label=r["model"])
        kl = torch.tensor(r["kl_values"]).clamp_min(1e-6)
        ax2.hist(kl.log10().numpy(), bins=50, alpha=0.6, label=r["model"])
    ax1.axhline(0.01, color="grey", ls=":", label="target 0.01")
    ax1.set_xlabel("number of observations N")
    ax1.set_ylabel("mean KL(exact ‖ model) (nats)")
    ax1.legend()
    ax2.set_xlabel("log10 KL(exact ‖ model) per problem (clamped at 1e-6)")
    ax2.set_ylabel("problems")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

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
from distformer.timing import interleaved_median_seconds, threads

from .harness import Experiment, Table
from .report import fmt_estimate as _fmt

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



def evaluate_all(size: dict, generator: torch.Generator) -> dict:
    models = [evaluate_model(name, generator=generator, **size) for name in MODELS]
    return {"models": models, "prior_data_conflict": conflict_sweep(MODELS[-1], size["kl_samples"] * 4, generator)}


def protocol(size: dict, r: dict) -> str:
    return (f"Problems: {size['num_problems']} fresh draws from each model's training meta-prior (seed {SEED}); "
            f"KL by Monte Carlo with {size['kl_samples']} exact-posterior samples per problem. The NLL columns use "
            f"another {size['nll_problems']} problems: their gap estimates the same expected KL from one true "
            "parameter per problem, which is noisier. Intervals are 95% (1.96 standard errors over problems).")


def body(r: dict, size: dict) -> list:
    lat = lambda m: m["latency_ms_batch1_20obs_1thread"]
    thr = lambda m: m["throughput_problems_per_s"]
    return [
        Table(r["models"], (
            ("model", lambda m: m["model"]), ("KL(exact ‖ model)", lambda m: _fmt(m["kl_exact_to_model"])),
            ("NLL model", lambda m: _fmt(m["nll_model"])), ("NLL exact", lambda m: _fmt(m["nll_exact"])),
            ("NLL gap", lambda m: _fmt(m["nll_gap"])), ("latency model (ms)", lambda m: f"{lat(m)['model']:.3f}"),
            ("latency exact (ms)", lambda m: f"{lat(m)['exact']:.3f}"),
            ("latency ratio", lambda m: f"{lat(m)['model'] / lat(m)['exact']:.2f}"),
            ("latency, check=False (ms)", lambda m: f"{lat(m)['unchecked']:.3f}"),
            ("model problems/s", lambda m: f"{thr(m)['model']:,.0f}"),
            ("exact problems/s", lambda m: f"{thr(m)['exact']:,.0f}"))),
        "",
        f"Latency: median of {size['latency_repeats']} `model.posterior(prior, z)` calls for one problem with 20 "
        "observations on one thread (with the out-of-family check; `check=False` skips it), interleaved with the "
        "exact update `prior.condition_linear_gaussian(I, I, z)` "
        "on the same input, so both see the same machine load (this shared machine's speed drifts by up to 2x "
        "between runs; the ratio is steadier than either time). Throughput: median over 5 interleaved calls on a "
        f"batch of {size['throughput_batch']:,} problems with 20 observations each, "
        f"{r['models'][0]['throughput_problems_per_s']['threads']} threads.",
        "",
        f"## Prior-data conflict ({MODELS[-1]})",
        "",
        "One data set (10 points around (1, -0.5)); 4-component priors of the given spread moved away from it. "
        "Distance: data mean from prior mean in prior standard deviations. The training meta-prior draws the "
        "parameter from the prior, so distances beyond about 4 are rarely seen in training.",
        "",
        Table(r["prior_data_conflict"], (
            ("prior centre", lambda c: f"({c['prior_centre']}, {c['prior_centre']})"),
            ("prior sd", lambda c: str(c["prior_sd"])), ("distance (sd)", lambda c: f"{c['distance_sd']:.1f}"),
            ("KL(exact ‖ model)", lambda c: f"{c['kl']:.4f}")))]


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    results = r["models"]
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


def _payload(r: dict) -> dict:
    return {"models": [{k: v for k, v in m.items() if k != "kl_values"} for m in r["models"]],
            "prior_data_conflict": r["prior_data_conflict"]}


EXPERIMENT = Experiment(
    name="linear-gaussian", title="shipped models against the exact posterior", seed=SEED,
    sizes={"quick": dict(num_problems=200, nll_problems=500, kl_samples=64, latency_repeats=30, throughput_batch=1000),
           "full": dict(num_problems=2000, nll_problems=20000, kl_samples=1024, latency_repeats=1000,
                        throughput_batch=10000)},
    evaluate=evaluate_all, protocol=protocol, body=body, figure=_plot, caption="KL by number of observations",
    payload=_payload)

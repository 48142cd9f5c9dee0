"""Benchmark ``inverse-gamma`` (the paper's Table 1): the shipped model against the closed-form posterior, SVI and
PFNs, on the wide and the narrow meta-prior, accuracy and time in one run.

For each meta-prior, on fresh problems (seed 4141, distinct from the training seeds):

* KL(exact ‖ method) per problem by Monte Carlo with draws from the closed-form InvGamma posterior (the KL is the
  same on the warped and the original space), mean ± 95% interval over problems;
* the model's prior approximation: KL(prior ‖ ``model.prior_approximation(prior)``), the same way;
* time per 1000 problems of each method on the same machine in the same run (median of repeated batched calls
  for the model, the exact update and the PFNs; one batched, already-compiled call for SVI), and its ratio to
  the model's.

Baselines: the closed form; SVI with a full-covariance Gaussian on log σ² (NumPyro, the paper's settings: Adam
lr 0.1 decaying by 0.999 per step, 2000 steps, 10 draws; vmapped over problems; skipped without the
``baselines`` extra); PFNs with 15 and 5000 buckets trained in this run on the same simulator (each meta-prior
its own), which see the data but not the prior. The shipped model is trained on the wide meta-prior only; the
narrow one tests it on a family it covers but was not tuned to.

Command: ``distformer bench inverse-gamma`` (``--quick`` for a small run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from distformer.diagnostics import estimate
from distformer.problems.inverse_gamma import InverseGammaVariance
from distformer.problems.sampling import inverse_gamma

from .harness import Experiment, Table, drop_keys
from .methods import baselines_available, batched_times, numpyro_svi, per_thousand, trained_pfn
from .report import fmt_estimate, stage

MODEL = "inverse-gamma"
SEED = 4141
PAPER_KL = {  # the paper's Table 1 (expected KL, 1000 problems) and its time per 1000 problems (GPU)
    "SVI": {"narrow": 0.0425, "wide": 0.0558, "time_s": 148},
    "PFN-15": {"narrow": 0.517, "wide": 331.5, "time_s": 0.003},
    "PFN-5000": {"narrow": 0.0038, "wide": 0.2935, "time_s": 0.003},
    "model": {"narrow": 0.0004, "wide": 0.0003, "time_s": 0.016},
}


def _kl(exact_alpha, exact_beta, log_q, num_samples: int, generator: torch.Generator, chunk: int = 500):
    """Per-problem MC ``KL(InvGamma(alpha, beta) || q)``: ``log_q(x)`` takes draws ``(S, n, 1)`` and returns ``(S, n)``."""
    from torch.distributions import InverseGamma

    p = InverseGamma(exact_alpha, exact_beta)
    total = torch.zeros_like(exact_alpha)
    for start in range(0, num_samples, chunk):
        s = min(chunk, num_samples - start)
        x = inverse_gamma(exact_alpha.expand(s, -1), exact_beta.expand(s, -1), generator).unsqueeze(-1)
        total += (p.log_prob(x[..., 0]) - log_q(x)).sum(0)
    return total / num_samples


def evaluate(meta_prior: str, size: dict, generator: torch.Generator) -> dict:
    """Every method on ``size['problems']`` fresh problems from ``meta_prior``."""
    import distformer

    model = distformer.pretrained(MODEL)
    problem = InverseGammaVariance(meta_prior=meta_prior, num_components=model.config.num_components)
    batch = problem.sample_batch(size["problems"], generator=generator)
    prior, obs = batch.prior.double(), batch.observations
    exact = problem.exact_posterior(prior, obs)
    a_post, b_post = exact.concentration, exact.rate
    n = size["problems"]
    rows, times = {}, {}

    stage("inverse-gamma", f"{meta_prior}: model and exact update on {n} problems")
    post, approx = model.posterior(batch.prior, obs), model.prior_approximation(batch.prior)
    times |= batched_times({"model": lambda: model.posterior(batch.prior, obs),
                            "exact": lambda: problem.exact_posterior(prior, obs)}, size["repeats"])
    post64, approx64 = post.to(torch.float64), approx.to(torch.float64)
    rows["model"] = _kl(a_post, b_post, post64.log_prob, size["kl_samples"], generator)
    rows["exact"] = torch.zeros(n, dtype=torch.float64)
    prior_kl = _kl(prior[:, 0], prior[:, 1], approx64.log_prob, size["kl_samples"], generator)

    q = None
    if baselines_available():
        from distformer.baselines.numpyro_models import inverse_gamma_model

        args = (prior[:, 0].numpy(), prior[:, 1].numpy(), obs.values["z"][..., 0].double().numpy(),
                obs.masks["z"].numpy())
        q, times["SVI"] = numpyro_svi(f"inverse-gamma {meta_prior}", inverse_gamma_model, problem.warp, args,
                                      size["svi_steps"])
        rows["SVI"] = _kl(a_post, b_post, q.log_prob, size["kl_samples"], generator)

    pfn_cards = {}
    for buckets in (15, 5000):
        name = f"PFN-{buckets}"
        pfn, times[name] = trained_pfn(f"inverse-gamma {meta_prior}", problem, obs, size["repeats"],
                                       num_buckets=buckets, steps=size["pfn_steps"], seed=SEED)
        pfn_cards[name] = pfn.card
        rows[name] = _kl(a_post, b_post, lambda x: pfn.log_prob(x[..., 0], obs), size["kl_samples"], generator)

    per_1000, vs_model = per_thousand(times, n)
    return {
        "meta_prior": meta_prior,
        "problems": n,
        "kl_samples": size["kl_samples"],
        "kl": {k: estimate(v).as_dict() for k, v in rows.items()},
        "kl_median": {k: float(v.median()) for k, v in rows.items()},
        "kl_top_percent_share": {k: float(v.sort().values[-max(1, n // 100):].sum() / v.sum()) if float(v.sum()) > 0
                                 else 0.0 for k, v in rows.items()},
        "prior_approximation_kl": estimate(prior_kl).as_dict(),
        "time_per_1000_s": per_1000,
        "time_vs_model": vs_model,
        "pfn": pfn_cards,
        "examples": _examples(batch, post, exact, pfn, q),
    }


def _examples(batch, post, exact, pfn, svi_q, count: int = 3) -> list[dict]:
    """Densities over sigma^2 for the first ``count`` problems (for the figure)."""
    from torch.distributions import InverseGamma

    out = []
    for i in range(count):
        a, b = float(exact.concentration[i]), float(exact.rate[i])
        mode = b / (a + 1)
        grid = torch.linspace(mode / 30, mode * 8, 400, dtype=torch.float64)
        x = grid.view(-1, 1, 1)
        row = {"alpha": float(batch.prior[i, 0]), "beta": float(batch.prior[i, 1]),
               "z": float(batch.observations.values["z"][i, 0, 0]), "grid": grid.tolist(),
               "exact": InverseGamma(exact.concentration[i], exact.rate[i]).log_prob(grid).exp().tolist(),
               "model": post[i:i + 1].to(torch.float64).log_prob(x).exp()[:, 0].tolist()}
        obs_i = batch.observations.index(torch.tensor([i]))
        row["PFN-5000"] = pfn.log_prob(x[..., 0], obs_i).exp()[:, 0].tolist()
        if svi_q is not None:
            row["SVI"] = svi_q[i:i + 1].log_prob(x).exp()[:, 0].tolist()
        out.append(row)
    return out


METHODS = ("exact", "model", "SVI", "PFN-15", "PFN-5000")


def evaluate_both(size: dict, generator: torch.Generator) -> list[dict]:
    return [evaluate(meta, size, generator) for meta in ("wide", "narrow")]


def protocol(size: dict, results: list[dict]) -> str:
    return (f"Problems: {size['problems']} fresh draws per meta-prior (seed {SEED}); KL(exact ‖ method) by Monte Carlo "
            f"with {size['kl_samples']} closed-form posterior draws per problem; intervals are 95% (1.96 standard "
            "errors over problems). Time: per 1000 problems, batched, this machine, this run; the paper's times are "
            "on a GPU and not comparable, its KLs are.")


def body(results: list[dict], size: dict) -> list:
    k = _k()
    out = []
    for r in results:
        paper = lambda m, r=r: PAPER_KL.get(m, {}).get(r["meta_prior"])
        out += [f"## {r['meta_prior']} meta-prior", "", Table([m for m in METHODS if m in r["kl"]], (
            ("method", lambda m: f"model ({MODEL}, K={k})" if m == "model" else m),
            ("KL(exact ‖ method)", lambda m, r=r: fmt_estimate(r["kl"][m], 5)),
            ("median KL", lambda m, r=r: f"{r['kl_median'][m]:.5f}"),
            ("paper's KL", lambda m, paper=paper: "–" if paper(m) is None else str(paper(m))),
            ("time / 1000 problems (s)", lambda m, r=r: f"{r['time_per_1000_s'][m]:.4g}"),
            ("time vs model", lambda m, r=r: f"{r['time_vs_model'][m]:.3g}×")))]
        kl_model = r["kl"]["model"]
        tail = (f" The 1% of problems with the largest KL carry {100 * r['kl_top_percent_share']['model']:.0f}% of "
                "the model's total." if kl_model["mean"] > 5 * kl_model["stderr"] else "")
        out += ["", f"The prior mixture the model reads (`prior_approximation`): KL(prior ‖ it) = "
                    f"{fmt_estimate(r['prior_approximation_kl'], 7)}.{tail}", ""]
    if "SVI" not in results[0]["kl"]:
        out += ["SVI was skipped: the `baselines` extra (numpyro, jax) is not installed.", ""]
    out += [f"PFNs: {size['pfn_steps']} steps of batch 256 each (trained in this run; training time not in the table; "
            "see the JSON). The paper's model is DT-5 (6 layers); the shipped one is in its model card."]
    return out


def _k() -> int:
    """Components of the prior mixture the model reads (a tabulated fit's, or its encoder's)."""
    import distformer

    return distformer.pretrained(MODEL).prior_approximation(torch.tensor([2.0, 2.0])).base.num_components


def _plot(results: list[dict], path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

    examples = results[0]["examples"]
    fig, axes = plt.subplots(1, len(examples) + 1, figsize=(4 * (len(examples) + 1), 3.6))
    styles = {"exact": ("k", "-"), "model": ("C0", "--"), "SVI": ("C1", ":"), "PFN-5000": ("C2", "-.")}
    for ax, ex in zip(axes, examples):
        for name, (colour, ls) in styles.items():
            if name in ex:
                ax.plot(ex["grid"], ex[name], color=colour, ls=ls, label=name)
        ax.set_title(f"α={ex['alpha']:.2f}, β={ex['beta']:.2f}, z={ex['z']:.2f}", fontsize=9)
        ax.set_xlabel("σ²")
    axes[0].set_ylabel("posterior density (wide meta-prior)")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    methods = [m for m in ("model", "SVI", "PFN-15", "PFN-5000") if m in results[0]["kl"]]
    width = 0.38
    for j, r in enumerate(results):
        means = [max(r["kl"][m]["mean"], 1e-6) for m in methods]
        ax.bar([i + (j - 0.5) * width for i in range(len(methods))], means, width, label=r["meta_prior"])
    ax.set_xticks(range(len(methods)), methods, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("mean KL(exact ‖ method)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="inverse-gamma", title="the paper's Table 1 on this library", seed=SEED,
    sizes={"quick": dict(problems=40, kl_samples=200, svi_steps=50, pfn_steps=30, repeats=3),
           "full": dict(problems=1000, kl_samples=10000, svi_steps=2000, pfn_steps=3000, repeats=9)},
    evaluate=evaluate_both, protocol=protocol, body=body, figure=_plot, caption="posteriors and KL",
    payload=drop_keys("examples"))

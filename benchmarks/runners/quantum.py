r"""Benchmark ``quantum`` (the paper's Figure 5): inferring :math:`\Delta` of a two-level system from ten single shots.

On fresh problems from the meta-prior (seed 6161), every method's posterior over :math:`\Delta` is scored by

* the expected NLL of the true :math:`\Delta` (density on :math:`\Delta` itself, Jacobian included), mean ± 95%
  interval over problems;
* KL(reference ‖ method), with the reference the grid posterior of ``problems/quantum.py`` (exact marginal
  likelihood, 4001 points in logit space), integrated on that grid;
* time per 1000 problems on this machine in this run, and its ratio to the model's.

Methods: the reference itself; the shipped model; SVI with a Gaussian on logit Δ (NumPyro, Adam lr 0.1 decaying
by 0.999 per step, 2000 steps, 10 draws, vmapped over problems); NUTS (NumPyro, 500 warm-up steps and 1000 draws,
one problem at a time, on the first ``nuts_problems`` problems only, scored through a 3-component EM fit to its
draws on the logit scale; its time per 1000 problems is extrapolated from them); PFNs with 15 and 100 buckets
trained in this run on the same simulator, which see the shots but not the prior. SVI and NUTS use the exact
marginal shot probability, which the paper's SVI estimated by sampling.

Command: ``distformer bench quantum`` (``--quick`` for a small run).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from distformer.diagnostics import estimate
from distformer.problems.quantum import TIME_SD, TwoLevelSystem

from .harness import Experiment, Table, drop_keys
from .methods import baselines_available, batched_seconds, numpyro_nuts, numpyro_svi, per_thousand, trained_pfn
from .report import fmt_estimate, stage

MODEL = "quantum"
SEED = 6161


def _grid_kl(grid: torch.Tensor, log_ref: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(ref || q)`` per problem from log densities on Delta ``(G, n)`` at ``grid`` ``(G,)`` (logit-spaced)."""
    u = torch.logit(grid)
    du = (u[1] - u[0]).item()
    weight = (log_ref + torch.log(grid * (1 - grid)).unsqueeze(-1)).exp() * du  # p(u) du
    ratio = torch.where(weight > 0, log_ref - log_q.clamp_min(-1e4), torch.zeros_like(log_ref))
    return (weight * ratio).sum(0)


def evaluate(size: dict, generator: torch.Generator) -> dict:
    import distformer

    model = distformer.pretrained(MODEL)
    problem = TwoLevelSystem(num_components=model.config.num_components)
    n = size["problems"]
    batch = problem.sample_batch(n, generator=generator)
    prior, obs, theta = batch.prior.double(), batch.observations, batch.theta.double()
    times, nll, kl, densities = {}, {}, {}, {}

    stage("quantum", f"grid reference and model on {n} problems")
    start = time.perf_counter()
    grid, log_ref = problem.reference_posterior(prior, obs)
    times["reference (grid)"] = time.perf_counter() - start
    nll["reference (grid)"] = -problem.reference_posterior(prior, obs, theta=theta)
    kl["reference (grid)"] = torch.zeros(n, dtype=torch.float64)
    densities["reference (grid)"] = log_ref
    x = grid.view(-1, 1, 1).expand(-1, n, 1)

    post = model.posterior(batch.prior, obs).to(torch.float64)
    times["model"] = batched_seconds(lambda: model.posterior(batch.prior, obs), size["repeats"])
    densities["model"] = post.log_prob(x)
    nll["model"] = -post.log_prob(theta)

    if baselines_available():
        import numpy as np

        from distformer.baselines.numpyro_models import quantum_model

        tokens = obs.values["shots"].double()
        moments = problem._moments.expand(n, -1, -1)
        args = (prior[:, 0].numpy(), prior[:, 1].numpy(), tokens[..., 1:].numpy(), moments.numpy(),
                tokens[..., 0].numpy(), obs.masks["shots"].numpy(), np.full(n, TIME_SD))
        q, times["SVI"] = numpyro_svi("quantum", quantum_model, problem.warp, args, size["svi_steps"])
        densities["SVI"] = q.log_prob(x)
        nll["SVI"] = -q.log_prob(theta)
        m = size["nuts_problems"]
        qn, per_problem = numpyro_nuts("quantum", quantum_model, problem.warp, args, m, generator)
        times["NUTS"] = per_problem * n
        densities["NUTS"] = qn.log_prob(x[:, :m])
        nll["NUTS"] = -qn.log_prob(theta[:m])

    for buckets in (15, 100):
        name = f"PFN-{buckets}"
        pfn, times[name] = trained_pfn("quantum", problem, obs, size["repeats"], num_buckets=buckets,
                                       steps=size["pfn_steps"], seed=SEED)
        densities[name] = pfn.log_prob(grid.view(-1, 1).expand(-1, n), obs).double()
        nll[name] = -pfn.log_prob(theta[:, 0], obs).double()

    for name, log_q in densities.items():
        if name != "reference (grid)":
            kl[name] = _grid_kl(grid, log_ref[:, :log_q.shape[1]], log_q)
    per_1000, vs_model = per_thousand(times, n)
    examples = [{"a": float(prior[i, 0]), "b": float(prior[i, 1]), "delta": float(theta[i, 0]),
                 "readings": obs.values["shots"][i, :, 0].tolist(), "grid": grid[::8].tolist(),
                 **{k: v[::8, i].exp().tolist() for k, v in densities.items() if v.shape[1] > i}} for i in range(3)]
    m = size["nuts_problems"] if "NUTS" in nll else 0
    return {
        "problems": n,
        "nuts_problems": m,
        "nll": {k: estimate(v).as_dict() for k, v in nll.items()},
        "nll_model_on_nuts_problems": estimate(nll["model"][:m]).as_dict() if m else None,
        "nll_reference_on_nuts_problems": estimate(nll["reference (grid)"][:m]).as_dict() if m else None,
        # paired over the same problems: "no worse than NUTS" is a statement about this difference's interval
        "nll_model_minus_nuts": estimate(nll["model"][:m] - nll["NUTS"]).as_dict() if m else None,
        "kl_reference_to_method": {k: estimate(v).as_dict() for k, v in kl.items()},
        "time_per_1000_s": per_1000,
        "time_vs_model": vs_model,
        "examples": examples,
    }


ORDER = ("reference (grid)", "model", "SVI", "NUTS", "PFN-15", "PFN-100")


def protocol(size: dict, r: dict) -> str:
    return (f"Problems: {r['problems']} fresh draws from the meta-prior (seed {SEED}); NUTS on the first "
            f"{r['nuts_problems']} (its NLL and KL are over those, its time extrapolated to 1000). NLL is of the true "
            "Δ (density on Δ); KL is to the grid reference, on its grid. Intervals are 95% over problems. Time: per "
            "1000 problems on this machine in this run (the model, the reference and the PFNs batched; SVI batched "
            "with `jax.vmap`, compiled beforehand; NUTS one problem at a time).")


def body(r: dict, size: dict) -> list:
    table = Table([m for m in ORDER if m in r["nll"]], (
        ("method", str),
        ("expected NLL", lambda m: fmt_estimate(r["nll"][m], 4)),
        ("KL(reference ‖ method)", lambda m: fmt_estimate(r["kl_reference_to_method"][m], 4)),
        ("time / 1000 problems (s)", lambda m: f"{r['time_per_1000_s'][m]:.4g}"),
        ("time vs model", lambda m: f"{r['time_vs_model'][m]:.3g}×")))
    if r["nll_model_on_nuts_problems"] is not None:
        note = (f"On the {r['nuts_problems']} NUTS problems: model NLL {fmt_estimate(r['nll_model_on_nuts_problems'], 4)}"
                f", reference {fmt_estimate(r['nll_reference_on_nuts_problems'], 4)}, NUTS "
                f"{fmt_estimate(r['nll']['NUTS'], 4)}; paired difference model − NUTS "
                f"{fmt_estimate(r['nll_model_minus_nuts'], 4)}.")
    else:
        note = "SVI and NUTS were skipped: the `baselines` extra (numpyro, jax) is not installed."
    return [table, "", note]


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()

    examples = r["examples"]
    fig, axes = plt.subplots(1, len(examples) + 1, figsize=(4 * (len(examples) + 1), 3.6))
    styles = {"reference (grid)": ("k", "-"), "model": ("C0", "--"), "SVI": ("C1", ":"), "NUTS": ("C3", ":"),
              "PFN-15": ("C2", "-.")}
    for ax, ex in zip(axes, examples):
        for name, (colour, ls) in styles.items():
            if name in ex:
                ax.plot(ex["grid"], ex[name], color=colour, ls=ls, label=name)
        ax.axvline(ex["delta"], color="grey", lw=0.8)
        ax.set_title(f"a={ex['a']:.2f}, b={ex['b']:.2f}, {int(sum(ex['readings']))}/10 shots read 1", fontsize=9)
        ax.set_xlabel("Δ")
    axes[0].set_ylabel("posterior density")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for m in ORDER:
        if m in r["nll"]:
            ax.errorbar(r["time_per_1000_s"][m], r["nll"][m]["mean"], yerr=1.96 * r["nll"][m]["stderr"], marker="o",
                        capsize=3, ls="none", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("time per 1000 problems (s)")
    ax.set_ylabel("expected NLL of the true Δ")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="quantum", title="Δ of a two-level system from ten single shots (the paper's Figure 5)", seed=SEED,
    sizes={"quick": dict(problems=30, svi_steps=50, nuts_problems=3, pfn_steps=30, repeats=3),
           "full": dict(problems=1000, svi_steps=2000, nuts_problems=100, pfn_steps=3000, repeats=9)},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot, caption="posteriors, and NLL against time",
    payload=drop_keys("examples"))

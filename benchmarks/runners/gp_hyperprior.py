r"""Benchmark ``gp-hyperprior`` (the paper's Table 2 and Figure 4): the joint posterior of :math:`f(x_\star)` and the
RBF lengthscale, for the 5-D and the 1-D input variants.

On fresh problems from each variant's meta-prior (seed 7171), every method is scored by the expected NLL of the
true :math:`f(x_\star)` (the "PPD" column) and of the true lengthscale :math:`\ell` (density on :math:`\ell`, the
"hyperposterior" column), mean ± 95% interval over problems, and by its time per 1000 problems in this run.

Methods: the reference (1-D quadrature over :math:`\log\ell` of the exact conditionals, ``problems/gp_hyperprior.py``);
the shipped model ``gp-hyperprior-{5d,1d}`` (its two marginals); SVI on the hyperposterior only (a Gaussian on
:math:`\log\ell` fitted to the exact GP marginal likelihood with NumPyro, the paper's setting: Adam lr 0.03, 2000 steps
here, 10 draws, vmapped); PFNs with 30 buckets trained in this run, one for :math:`f(x_\star)` and one for
:math:`\log\ell`, as in the paper. A variant whose model is not shipped is skipped, and the report says so.

Where the model loses to the reference: the paired per-problem differences of both NLLs (model − reference), by
quintile of the prior's mode lengthscale :math:`b/(a+1)`. A long lengthscale correlates the points strongly, so
:math:`f(x_\star)` is pinned down by a solve with the nearly singular :math:`K_\ell+\sigma_n^2I`.

Command: ``distformer bench gp-hyperprior`` (``--quick`` for a small run).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from distformer.diagnostics import estimate
from distformer.problems.gp_hyperprior import NOISE_VARIANCE, GPHyperprior

from .harness import Experiment, Table, drop_keys
from .methods import baselines_available, batched_seconds, numpyro_svi, per_thousand, trained_pfn
from .report import fmt_estimate, stage

SEED = 7171
PAPER = {"VI": (None, 0.39), "MCMC": (None, 2.27), "PFN": (0.90, 1.53), "model": (0.81, 0.31)}  # 5-D, Table 2


def gp_marginal_model(mean, scale, a, b, x, y, mask):
    """NumPyro: ``l ~ InvGamma(a, b)``, ``y ~ N(mean, K_l + noise I)`` (absent points decoupled and zeroed)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    ell = numpyro.sample("x", dist.InverseGamma(a, b))
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    both = mask[:, None] & mask[None, :]
    eye = jnp.eye(x.shape[0])
    K = jnp.where(both, scale**2 * jnp.exp(-0.5 * sq / ell**2), 0.0) + eye * jnp.where(mask, NOISE_VARIANCE, 1.0)
    r = jnp.where(mask, y - mean, 0.0)
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros_like(r), covariance_matrix=K), obs=r)


def evaluate(variant: str, size: dict, generator: torch.Generator) -> dict:
    import distformer

    name = f"gp-hyperprior-{variant}"
    model = distformer.pretrained(name)
    problem = GPHyperprior(variant, num_components=model.config.num_components)
    n = size["problems"]
    batch = problem.sample_batch(n, generator=generator)
    theta = batch.theta.double()
    nll_f, nll_l, times = {}, {}, {}

    stage("gp-hyperprior", f"{variant}: quadrature reference and model on {n} problems")
    start = time.perf_counter()
    ref = problem.reference_log_prob(batch.prior, batch.observations, batch.theta)
    times["reference (quadrature)"] = time.perf_counter() - start
    nll_f["reference (quadrature)"], nll_l["reference (quadrature)"] = -ref["f"], -ref["lengthscale"]

    post = model.posterior(batch.prior, batch.observations).to(torch.float64)
    times["model"] = batched_seconds(lambda: model.posterior(batch.prior, batch.observations), size["repeats"])
    nll_f["model"] = -post.marginal([0]).log_prob(theta[:, :1])
    nll_l["model"] = -post.marginal([1]).log_prob(theta[:, 1:])

    if baselines_available():
        p = batch.prior.double()
        data = batch.observations.values["data"].double()
        args = (p[:, 0].numpy(), p[:, 1].numpy(), p[:, 2].numpy(), p[:, 3].numpy(), data[..., :-1].numpy(),
                data[..., -1].numpy(), batch.observations.masks["data"].numpy())
        q, times["SVI (hyperposterior)"] = numpyro_svi(f"gp-hyperprior {variant}", gp_marginal_model, ("log",), args,
                                                       size["svi_steps"], lr=0.03)
        nll_l["SVI (hyperposterior)"] = -q.log_prob(theta[:, 1:])

    times["PFN-30"] = 0.0  # the two PFNs together give both columns
    for coordinate, target in ((0, nll_f), (1, nll_l)):
        pfn, seconds = trained_pfn(f"gp-hyperprior {variant}, coordinate {coordinate}", problem, batch.observations,
                                   size["repeats"], num_buckets=30, coordinate=coordinate, steps=size["pfn_steps"],
                                   seed=SEED)
        times["PFN-30"] += seconds
        target["PFN-30"] = -pfn.log_prob(theta[:, coordinate], batch.observations).double()

    per_1000, vs_model = per_thousand(times, n)
    mode = (batch.prior[:, 3] / (batch.prior[:, 2] + 1)).double()  # the prior's mode lengthscale b / (a + 1)
    gap_f, gap_l = nll_f["model"] - nll_f["reference (quadrature)"], nll_l["model"] - nll_l["reference (quadrature)"]
    return {"variant": variant, "model": name, "problems": n, "gap_by_lengthscale": gap_by_quantile(mode, gap_f, gap_l),
            "nll_f": {k: estimate(v).as_dict() for k, v in nll_f.items()},
            "nll_lengthscale": {k: estimate(v).as_dict() for k, v in nll_l.items()},
            "time_per_1000_s": per_1000, "time_vs_model": vs_model}


def gap_by_quantile(key: torch.Tensor, gap_f: torch.Tensor, gap_l: torch.Tensor, bins: int = 5) -> list[dict]:
    """Mean ± 95% of the paired NLL differences ``gap_f``, ``gap_l`` ``(n,)`` within each of ``bins`` quantile bins of
    ``key`` ``(n,)`` (every problem in exactly one bin)."""
    order = torch.argsort(key)
    rows = []
    for part in torch.tensor_split(order, bins):
        rows.append({"low": float(key[part].min()), "high": float(key[part].max()), "problems": len(part),
                     "gap_f": estimate(gap_f[part]).as_dict(), "gap_lengthscale": estimate(gap_l[part]).as_dict()})
    return rows


def figure_data(model, problem: GPHyperprior, generator: torch.Generator, num_queries: int = 200) -> dict:
    """One 1-D data set: the model's and the reference's predictive mean and sd of f over a grid of queries."""
    batch = problem.sample_batch(1, generator=generator)
    xq = torch.linspace(0, problem.settings["input_high"], num_queries).view(-1, 1, 1)
    data = batch.observations.values["data"].expand(num_queries, -1, -1)
    prior = batch.prior.expand(num_queries, -1)
    obs = {"data": data, "query": xq}
    post = model.posterior(prior, obs).to(torch.float64).base.marginal([0])
    ref_mean, ref_sd = problem.reference_f_moments(prior, obs)
    return {"x": xq[:, 0, 0].tolist(), "data_x": data[0, :, 0].tolist(), "data_y": data[0, :, 1].tolist(),
            "model_mean": post.mean[:, 0].tolist(), "model_sd": post.variance[:, 0].sqrt().tolist(),
            "reference_mean": ref_mean.tolist(), "reference_sd": ref_sd.tolist(),
            "prior": batch.prior[0].tolist()}


def evaluate_shipped(size: dict, generator: torch.Generator) -> dict:
    """Both variants whose model is shipped, and the 1-D figure's data where ``gp-hyperprior-1d`` is."""
    import distformer

    shipped = set(distformer.pretrained_names())
    variants = [v for v in ("5d", "1d") if f"gp-hyperprior-{v}" in shipped]
    results = [evaluate(v, size, generator) for v in variants]
    figure = None
    if "gp-hyperprior-1d" in shipped:
        model = distformer.pretrained("gp-hyperprior-1d")
        figure = figure_data(model, GPHyperprior("1d", model.config.num_components), generator)
    return {"results": results, "missing": [f"gp-hyperprior-{v}" for v in ("5d", "1d") if v not in variants],
            "figure": figure}


def protocol(size: dict, r: dict) -> str:
    return (f"Problems: {size['problems']} fresh draws per variant (seed {SEED}). NLL of the true f(x*) (PPD) and of "
            "the true lengthscale (hyperposterior, density on l); intervals are 95% over problems. Time per 1000 "
            "problems in this run.")


def body(out: dict, size: dict) -> list:
    lines = []
    for r in out["results"]:
        lines += [f"## {r['variant']} inputs (`{r['model']}`)", "", Table(list(r["time_per_1000_s"]), (
            ("method", str),
            ("PPD NLL", lambda m, r=r: fmt_estimate(r["nll_f"].get(m), 3)),
            ("hyperposterior NLL", lambda m, r=r: fmt_estimate(r["nll_lengthscale"].get(m), 3)),
            ("time / 1000 problems (s)", lambda m, r=r: f"{r['time_per_1000_s'][m]:.4g}"),
            ("time vs model", lambda m, r=r: f"{r['time_vs_model'][m]:.3g}×"))),
            "", "Model − reference, paired per problem, by the prior's mode lengthscale b/(a+1) (quintiles):", "",
            Table(r["gap_by_lengthscale"], (
                ("mode lengthscale", lambda row: f"{row['low']:.3g}–{row['high']:.3g}"),
                ("problems", lambda row: str(row["problems"])),
                ("PPD NLL gap", lambda row: fmt_estimate(row["gap_f"], 3)),
                ("hyperposterior NLL gap", lambda row: fmt_estimate(row["gap_lengthscale"], 3)))), ""]
    if out["missing"]:
        lines += [f"Not measured: {', '.join(out['missing'])} (not shipped in this checkout).", ""]
    lines += ["The paper's 5-D Table 2 (DT 0.81 / 0.31, PFN 0.90 / 1.53, VI – / 0.39, MCMC – / 2.27) is on its own "
              "draws and hardware."]
    return lines


def _plot(out: dict, path: Path) -> None:
    import numpy as np

    from distformer.plotting import pyplot

    plt = pyplot()
    fig_data = out["figure"]
    x = np.array(fig_data["x"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, colour, label in (("reference", "k", "reference (quadrature over l)"), ("model", "C0", "model")):
        m, s = np.array(fig_data[f"{key}_mean"]), np.array(fig_data[f"{key}_sd"])
        ax.plot(x, m, color=colour, label=label)
        ax.fill_between(x, m - 2 * s, m + 2 * s, color=colour, alpha=0.15)
    ax.scatter(fig_data["data_x"], fig_data["data_y"], color="C3", zorder=3, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x): mean ± 2 sd")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="gp-hyperprior", title="f(x*) and the lengthscale (the paper's Table 2 and Figure 4)", seed=SEED,
    sizes={"quick": dict(problems=30, svi_steps=50, pfn_steps=30, repeats=3),
           "full": dict(problems=1000, svi_steps=2000, pfn_steps=3000, repeats=9)},
    evaluate=evaluate_shipped, protocol=protocol, body=body, figure=_plot, caption="1-D predictive bands",
    payload=drop_keys("figure"))

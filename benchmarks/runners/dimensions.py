r"""Benchmark ``dimensions`` (the paper's appendix C.1): accuracy and cost of the linear-Gaussian model as the latent
dimension grows, against SVI, measured in the same run.

For each :math:`D \in \{1, 2, 4, 8, 16, 24\}`, on the same kind of problem at every dimension (K = 8 prior
components, the paper's C.1 setting; weights Dirichlet(1), means :math:`3\,\mathcal N(0, I)`, covariances with axis
standard deviations log-uniform in [0.1, 3]; 1 to 20 readings :math:`z_i = x + v_i`, :math:`v_i\sim\mathcal N(0,
I_D)`; seed ``2424 + D``, so rows of one :math:`D` see the same problems), it reports

* KL(exact ‖ method) per problem by Monte Carlo from the exact posterior, mean ± 95% interval over problems, for
  the model and for SVI (a full-covariance Gaussian fitted by NumPyro, vmapped over problems; the paper's settings:
  Adam with step size :math:`0.1\cdot 0.999^t`, 2000 steps, 10 draws per step), and the NLL gap of the true
  parameter;
* cost: time per 1000 problems batched (all threads) and of SVI (after compilation), batch-1 latency (one thread),
  the peak memory of a batched call of 1000 problems (resident set growth, in a fresh process), parameters and
  training time; the growth rate of each, :math:`p` in cost :math:`\propto D^p` fitted over :math:`D \ge 4`; and
  where the time of a batched eager forward goes at the largest :math:`D`.

Models: ``linear-gaussian-1d``, ``-2d`` and ``-10d`` are the shipped ones (the 10-D one also on sbibm's
``gaussian_linear`` through ``affine``); the others follow
``configs/linear-gaussian-{D}d.yaml`` (the exact-site recipe), and at :math:`D = 8` also
``configs/linear-gaussian-8d-before.yaml`` (the recipe before it), trained by this benchmark on one thread each, two
at a time, and kept in ``runs/dimensions/`` so that a second run reuses them (a kept model whose config differs
from the YAML file is retrained). Their training time is read from their cards.

Command: ``distformer bench dimensions`` (``--quick``: D = 1 and 4 only, the 4-D model trained for 40 steps, few
problems).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import torch

from distformer.diagnostics import estimate, kl_divergence, negative_log_likelihood
from distformer.distributions.gmm import GaussianMixture
from distformer.problems import get
from distformer.problems.base import Batch
from distformer.timing import interleaved_median_seconds, threads

from .harness import Experiment, Table
from .report import fmt_estimate, stage

ROWS = (("1", 1, "linear-gaussian-1d"), ("2", 2, "linear-gaussian-2d"), ("4", 4, "linear-gaussian-4d"),
        ("8, recipe before", 8, "linear-gaussian-8d-before"), ("8", 8, "linear-gaussian-8d"),
        ("10, shipped", 10, "linear-gaussian-10d"), ("16", 16, "linear-gaussian-16d"),
        ("24", 24, "linear-gaussian-24d"))
QUICK_ROWS = (("1", 1, "linear-gaussian-1d"), ("4", 4, "linear-gaussian-4d"))
SHIPPED = {"linear-gaussian-1d", "linear-gaussian-2d", "linear-gaussian-10d"}
SEED = 2424
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CACHE = Path("runs") / "dimensions"
MEMORY_BATCH = 1000
SVI_PROBLEMS = 250  # SVI's share of each dimension's problems


def problem_at(dim: int):
    """The evaluation problem at dimension ``dim`` (module docstring), the same for every model."""
    return get("linear-gaussian", dim=dim, num_components=8, min_observations=1, max_observations=20,
               mean_scale=3.0, min_std=0.1, max_std=3.0)


def _train_one(args: tuple) -> str:
    """Train one model from a config's YAML text and save it at ``out``; returns ``out``."""
    config_text, out, steps = args
    from distformer.training.config import TrainConfig
    from distformer.training.trainer import train

    torch.set_num_threads(1)
    config = TrainConfig.from_yaml(config_text)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps, validation_size=256, validate_every=steps,
                                     checkpoint_every=steps)
    model = train(config.problem.build(), config, checkpoint=f"{out}.ckpt.safetensors", progress=False)
    model.card["training"]["command"] = "distformer bench dimensions" + (" --quick" if steps is not None else "")
    model.save(out)
    return out


def _models(rows: tuple, quick: bool, folder: Path) -> dict[str, str]:
    """Where each row's model is: a shipped name, or a path in ``folder`` (kept with a matching config, or trained
    now)."""
    from distformer.nn.serialization import load_model
    from distformer.training.config import TrainConfig

    where, todo = {}, []
    for _, _, name in rows:
        if name in SHIPPED:
            where[name] = name
            continue
        path = CONFIGS / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"Expected the training config {path} (run from a source checkout), but it is missing.")
        out = folder / name
        wanted = TrainConfig.from_yaml(path.read_text()).to_dict()
        where[name] = str(out)
        if not quick and out.with_suffix(".json").is_file():
            kept = load_model(out)
            if TrainConfig.from_dict(kept.card["training"]["config"]).to_dict() == wanted:  # newer fields at defaults
                continue
        todo.append((path.read_text(), str(out), 40 if quick else None))
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        stage("dimensions", f"training {[Path(out).name for _, out, _ in todo]} (one thread each, two at a time)")
        with get_context("spawn").Pool(min(2, len(todo))) as pool:
            pool.map(_train_one, todo)
    return where


def _load(where: str):
    import distformer
    from distformer.nn.serialization import load_model

    return distformer.pretrained(where) if where in SHIPPED else load_model(where)


def _peak_memory(args: tuple) -> float:
    """MB by which one batched ``posterior`` of ``n`` problems grows the resident set of a fresh process above what
    it held just before: the resident set (``/proc/self/statm``) is read every millisecond during the call."""
    where, dim, n = args
    import os
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    torch.set_num_threads(1)
    model = _load(where)
    batch = problem_at(dim).sample_batch(n, generator=torch.Generator().manual_seed(0))
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            done.wait(0.001)

    with torch.inference_mode():
        model.posterior(batch.prior[:2], batch.observations.slice(0, 2), check=False)  # traces, caches
        before = resident()
        watcher = threading.Thread(target=watch)
        watcher.start()
        model.posterior(batch.prior, batch.observations, check=False)
        done.set()
        watcher.join()
    return max(peak[0] - before, 0) / 2**20


def fit_svi(prior: GaussianMixture, z: torch.Tensor, mask: torch.Tensor, steps: int, draws: int = 10,
            generator: torch.Generator | None = None) -> GaussianMixture:
    r"""Full-covariance Gaussian SVI for every problem at once, in torch (float64): maximise the ELBO
    :math:`\mathbb E_q[\log p(x) + \sum_i m_i \log\mathcal N(z_i; x, I) - \log q(x)]` over :math:`q = \mathcal
    N(\mu, LL^\top)` with ``draws`` reparameterised draws per step and Adam at step size :math:`0.1\cdot 0.999^t`
    (the paper's settings), from :math:`\mu` = the prior mean and :math:`L = I`. NumPyro's vmapped SVI stalled
    here from D = 10 on (JAX 0.10, every thread idle), so the sweep uses this one at every D."""
    prior, z, mask = prior.to(torch.float64), z.double(), mask.double()
    n, dim = z.shape[0], z.shape[-1]
    loc = prior.mean.clone().requires_grad_(True)
    raw = torch.zeros(n, dim, dim, dtype=torch.float64, requires_grad=True)  # L = tril(raw, -1) + diag(exp(raw))
    optimiser = torch.optim.Adam([loc, raw], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 0.999**t)
    eye = torch.eye(dim, dtype=torch.bool)
    for _ in range(steps):
        tril = torch.where(eye, raw.diagonal(dim1=-2, dim2=-1).exp().diag_embed(), raw.tril(-1))
        eps = torch.randn(draws, n, dim, 1, generator=generator, dtype=torch.float64)
        x = loc + (tril @ eps).squeeze(-1)  # (S, n, D)
        log_lik = -0.5 * (((z.unsqueeze(0) - x.unsqueeze(-2)) ** 2).sum(-1) * mask).sum(-1)
        entropy = raw.diagonal(dim1=-2, dim2=-1).sum(-1)  # log det L, up to a constant
        loss = -(prior.log_prob(x) + log_lik).mean(0) - entropy
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        tril = torch.where(eye, raw.diagonal(dim1=-2, dim2=-1).exp().diag_embed(), raw.tril(-1))
        return GaussianMixture(torch.ones(n, 1, dtype=torch.float64), loc.detach().unsqueeze(1),
                               scale_tril=tril.unsqueeze(1), validate_args=False)


def _svi(dim: int, batch, exact, size: dict, generator: torch.Generator) -> dict:
    n = min(size["problems"], SVI_PROBLEMS)
    stage("dimensions", f"D = {dim}: SVI, {size['svi_steps']} steps, over {n} problems")
    batch, exact = Batch(batch.prior[:n], batch.theta[:n], batch.observations.slice(0, n)), exact[:n]
    start = time.perf_counter()
    with threads(torch.get_num_threads()):
        q = fit_svi(batch.prior, batch.observations.values["z"], batch.observations.masks["z"], size["svi_steps"],
                    generator=generator)
    seconds = time.perf_counter() - start
    return {"kl": estimate(kl_divergence(exact, q, size["samples"], generator)).as_dict(),
            "nll_gap": estimate(negative_log_likelihood(q, batch.theta)
                                - negative_log_likelihood(exact, batch.theta)).as_dict(),
            "time_per_1000_s": 1000 * seconds / n, "problems": n}


def evaluate(label: str, dim: int, where: str, size: dict, svi: dict) -> dict:
    """Accuracy and cost of the model at ``where`` on dimension ``dim``'s problems; SVI's row is computed once per
    dimension and kept in ``svi``."""
    model = _load(where)
    n = size["problems"]
    problem = problem_at(dim)
    generator = torch.Generator().manual_seed(SEED + dim)
    batch = problem.sample_batch(n, generator=generator)
    exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
    stage("dimensions", f"D = {label}: model on {n} problems")
    with threads(torch.get_num_threads()), torch.inference_mode():
        post = model.posterior(batch.prior, batch.observations, check=False)
        t_model = interleaved_median_seconds(
            {"model": lambda: model.posterior(batch.prior, batch.observations, check=False)}, size["repeats"], 1)["model"]
    with threads(1), torch.inference_mode():
        one_prior, one_obs = batch.prior[:1], batch.observations.slice(0, 1)
        latency = interleaved_median_seconds(
            {"model": lambda: model.posterior(one_prior, one_obs, check=False)}, size["latency_repeats"], 5)["model"]
    if dim not in svi:
        svi[dim] = _svi(dim, batch, exact, size, generator)
    with get_context("spawn").Pool(1) as pool:
        memory = pool.apply(_peak_memory, ((where, dim, min(n, MEMORY_BATCH)),))
    training = model.card["training"]
    row = {"label": label, "D": dim, "problems": n, "model": Path(where).name,
           "training_time_s": training.get("total_time_s", training["time_s"]),
           "training_steps": training["config"]["steps"], "parameters": model.num_parameters(),
           "kl": {"model": estimate(kl_divergence(exact, post, size["samples"], generator)).as_dict()},
           "nll_gap": {"model": estimate(negative_log_likelihood(post, batch.theta)
                                         - negative_log_likelihood(exact, batch.theta)).as_dict()},
           "time_per_1000_s": {"model": 1000 * t_model / n}, "latency_ms": 1e3 * latency,
           "peak_memory_mb": memory}
    if svi[dim] is not None:
        for key in ("kl", "nll_gap", "time_per_1000_s"):
            row[key]["SVI"] = svi[dim][key]
    return row


def gaussian_linear(where: str, n: int, samples: int, generator: torch.Generator) -> dict:
    r"""sbibm's ``gaussian_linear`` (10-D, prior N(0, 0.1 I), one reading z = x + N(0, 0.1 I)) through the unit-noise
    model by rescaling: with :math:`c = \sqrt{0.1}`, :math:`x' = x/c` has prior N(0, I) and reads :math:`z/c =
    x' + \mathcal N(0, I)`; the model's posterior on :math:`x'` is mapped back by ``affine(c I)``."""
    model, c, dim = _load(where), math.sqrt(0.1), 10
    theta = c * torch.randn(n, dim, generator=generator)
    z = (theta + c * torch.randn(n, dim, generator=generator)).unsqueeze(1)  # (n, 1, 10)
    unit = GaussianMixture(torch.ones(n, 1), torch.zeros(n, 1, dim), scale_tril=torch.eye(dim).expand(n, 1, dim, dim))
    with torch.inference_mode():
        post = model.posterior(unit, z / c, check=False).affine(c * torch.eye(dim))
    prior = GaussianMixture(torch.ones(n, 1, dtype=torch.float64), torch.zeros(n, 1, dim, dtype=torch.float64),
                            covariance_matrix=0.1 * torch.eye(dim, dtype=torch.float64).expand(n, 1, dim, dim))
    exact = prior.condition_linear_gaussian(torch.eye(dim, dtype=torch.float64), 0.1 * torch.eye(dim,
                                            dtype=torch.float64), z.double())
    return {"problems": n, "kl": estimate(kl_divergence(exact, post, samples, generator)).as_dict()}


def growth(rows: list[dict], value) -> float:
    """Least-squares slope of log value against log D over the exact-site rows with D >= 4."""
    pts = [(math.log(r["D"]), math.log(value(r))) for r in rows if r["D"] >= 4 and "before" not in r["label"]
           and value(r) > 0]
    if len(pts) < 2:
        return float("nan")
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def where_time_goes(where: str, dim: int, n: int) -> dict[str, float]:
    """Median ms of each part of one batched eager forward of ``n`` problems at ``dim`` (``speed.parts_ms``)."""
    from .speed import parts_ms

    model = _load(where)
    batch = problem_at(dim).sample_batch(n, generator=torch.Generator().manual_seed(1))
    with threads(torch.get_num_threads()), torch.inference_mode():
        return parts_ms(model, batch.prior, batch.observations.values["z"], 5)


def evaluate_all(size: dict, generator: torch.Generator) -> dict:
    """Train (or reuse from ``CACHE``) a model per dimension and score it; each dimension seeds its own problems."""
    quick = size["quick"]
    table = QUICK_ROWS if quick else ROWS
    with tempfile.TemporaryDirectory() as scratch:
        where = _models(table, quick, Path(scratch) if quick else CACHE)
        svi: dict = {}
        rows = [evaluate(label, dim, where[name], size, svi) for label, dim, name in table]
        largest = max(table, key=lambda r: r[1])[1]
        parts = where_time_goes(where[max(table, key=lambda r: r[1])[2]], largest, size["parts_problems"])
        sbibm = None if quick else gaussian_linear(where["linear-gaussian-10d"], size["problems"], size["samples"],
                                                   generator)
    rates = {name: growth(rows, fn) for name, fn in (
        ("batched time", lambda r: r["time_per_1000_s"]["model"]), ("batch-1 latency", lambda r: r["latency_ms"]),
        ("peak memory", lambda r: r["peak_memory_mb"]), ("parameters", lambda r: r["parameters"]),
        ("training time", lambda r: r["training_time_s"]))}
    return {"rows": rows, "growth": rates, "parts_ms": parts, "largest_D": largest, "gaussian_linear": sbibm}


def protocol(size: dict, r: dict) -> str:
    return (f"Problems: {size['problems']} per dimension, the same kind at every D: K = 8 prior components (C.1), "
            "means 3 N(0, I), axis standard deviations log-uniform in [0.1, 3], 1–20 readings with identity noise; "
            f"seed 2424 + D. KL(exact ‖ method) by Monte Carlo with {size['samples']} exact-posterior draws per "
            "problem; NLL gap = NLL of the true parameter under the method minus under the exact posterior; intervals "
            f"are 95% over problems. SVI: full-covariance Gaussian, {size['svi_steps']} steps of Adam (0.1 · 0.999^t), "
            f"10 draws, batched over the first {min(size['problems'], SVI_PROBLEMS)} problems in torch (`fit_svi`; "
            "NumPyro's vmapped SVI stalled here from D = 10 on). D = 1, 2 and `10, shipped` are the shipped models; "
            "the rest follow `configs/linear-gaussian-{D}d.yaml` (the exact-site recipe), and `8, recipe before` "
            "follows `configs/linear-gaussian-8d-before.yaml`.")


def _ratio(r: dict, key: str) -> str:
    model, svi = r[key]["model"], r[key].get("SVI")
    if key == "kl":
        return f"{(svi['mean'] / max(model['mean'], 1e-12)) if svi else float('nan'):.3g}×"
    return f"{(svi / model) if svi else float('nan'):.3g}×"


def body(out: dict, size: dict) -> list:
    rows, parts = out["rows"], out["parts_ms"]
    whole = parts.get("whole forward, eager", float("nan"))
    lines = ["## Accuracy", "", Table(rows, (
        ("D", lambda r: str(r["label"])),
        ("model: training", lambda r: f"{r['training_steps']:,} steps, {r['training_time_s'] / 60:.1f} min"),
        ("model KL", lambda r: fmt_estimate(r["kl"]["model"])), ("SVI KL", lambda r: fmt_estimate(r["kl"].get("SVI"))),
        ("SVI KL / model KL", lambda r: _ratio(r, "kl")),
        ("model NLL gap", lambda r: fmt_estimate(r["nll_gap"]["model"])),
        ("SVI NLL gap", lambda r: fmt_estimate(r["nll_gap"].get("SVI")))))]
    if not all("SVI" in r["kl"] for r in rows):
        lines += ["", "SVI not measured: the `baselines` extra (numpyro, jax) is not installed."]
    lines += ["", "## Cost", "",
              f"Batched: {size['problems']} problems per call, all threads; batch 1: one thread, median of "
              f"{size['latency_repeats']} calls; memory: resident-set growth of one call of "
              f"{min(size['problems'], MEMORY_BATCH)} problems in a fresh process.", "", Table(rows, (
                  ("D", lambda r: str(r["label"])), ("model s / 1000", lambda r: f"{r['time_per_1000_s']['model']:.3g}"),
                  ("SVI s / 1000", lambda r: f"{r['time_per_1000_s'].get('SVI', float('nan')):.3g}"),
                  ("SVI time / model", lambda r: _ratio(r, "time_per_1000_s")),
                  ("batch-1 ms", lambda r: f"{r['latency_ms']:.3f}"),
                  ("peak memory MB", lambda r: f"{r['peak_memory_mb']:.1f}"),
                  ("parameters", lambda r: f"{r['parameters']:,}"))),
              "", "Growth, cost ∝ D^p fitted over the exact-site rows with D ≥ 4: "
              + "; ".join(f"{k} p = {v:.2f}" for k, v in out["growth"].items()) + ".", "",
              f"Where a batched eager forward's time goes at D = {out['largest_D']} ({size['parts_problems']} problems, "
              "median ms; the parts are timed separately, so they need not sum to the whole):", "",
              Table(list(parts.items()), (("part", lambda kv: kv[0]), ("ms", lambda kv: f"{kv[1]:.2f}"),
                                          ("share of the whole forward", lambda kv: f"{100 * kv[1] / whole:.0f}%")))]
    sbibm = out["gaussian_linear"]
    if sbibm is not None:
        lines += ["", f"sbibm's `gaussian_linear` (10-D, prior N(0, 0.1 I), one reading with noise 0.1 I; "
                  f"{sbibm['problems']} problems) through `linear-gaussian-10d` rescaled with `affine`: "
                  f"KL(exact ‖ model) {fmt_estimate(sbibm['kl'])}."]
    lines += ["", "The paper (C.1, D up to 24) reports KL rising with D, roughly quadratically, and staying at least "
              "10× below SVI's; its numbers are on its own problems and hardware."]
    return lines


def _plot(out: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    rows = out["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    dims = [r["D"] for r in rows]
    for method, marker in (("model", "o"), ("SVI", "s")):
        pts = [(r["D"], r["kl"][method]) for r in rows if method in r["kl"]]
        if pts:
            ax.errorbar([d for d, _ in pts], [max(e["mean"], 1e-5) for _, e in pts],
                        yerr=[1.96 * e["stderr"] for _, e in pts], marker=marker, capsize=3, label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("latent dimension D")
    ax.set_ylabel("mean KL(exact ‖ method)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="dimensions", title="the linear-Gaussian model as the latent dimension grows, against SVI (the paper's C.1)",
    seed=SEED,
    sizes={"quick": dict(quick=True, problems=50, samples=64, svi_steps=50, repeats=3, latency_repeats=20,
                         parts_problems=100),
           "full": dict(quick=False, problems=1000, samples=1024, svi_steps=2000, repeats=7, latency_repeats=200,
                        parts_problems=1000)},
    evaluate=evaluate_all, protocol=protocol, body=body, figure=_plot, caption="KL against dimension")

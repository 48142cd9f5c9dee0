"""Benchmark ``speed``: latency, throughput and NumPyro NUTS/SVI per problem, for each shipped model, in one run.

* Latency: median of interleaved batch-1 calls (20 observations, one thread) of ``model.posterior``, the same
  with ``check=False``, the exported TorchScript update, the exported AOTInductor package (``model.export(format="aoti")``, its export time
  apart; where a C++ compiler is found), and the exact update.
* Where the time goes: the eager forward pass split into its parts, batch 1, one thread (medians).
* Throughput: problems per second for batches of 1,000 and 100,000 (all cores), model (``check=False``: traced
  folded forward, chunks of ``model.chunk_size`` side by side, ``nn/chunks.py``), the path before it (the traced
  unfolded forward over chunks of 1,024 in turn, every operator split over all threads) and exact.
* NUTS and SVI (NumPyro, extra ``baselines``): compile time once, then median time per problem, and the expected
  NLL of the true parameter on the same problems as the model's; their time over the model's at batch 1 (eager
  and AOTInductor) and batched.

Writes ``benchmarks/speed.{md,json}``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from distformer.diagnostics import estimate
from distformer.nn.export import cpp_compiler
from distformer.nn.layers import layer_norm
from distformer.nn.engine import trace
from distformer.nn.site import apply_site
from distformer.nn.structure import framed, prior_features
from distformer.nn.tokens import chart_to_gmm, gmm_to_chart
from distformer.observations import as_observations
from distformer.problems import get
from distformer.timing import interleaved_median_seconds, threads

from .harness import Experiment, thread_count
from .report import fmt_estimate

SEED = 1618
MODELS = ("linear-gaussian-1d", "linear-gaussian-2d")


def _problems(problem, n: int, generator: torch.Generator, count: int = 20):
    """``n`` problems from the training meta-prior, each with ``count`` observations."""
    batch = problem.sample_batch(n, generator=generator)
    z = batch.theta.unsqueeze(-2) + torch.randn(n, count, problem.dim, generator=generator)
    return batch.prior, batch.theta, z


def parts_ms(model, prior, z, repeats: int) -> dict[str, float]:
    """Median ms of each part of one eager ``posterior`` call at batch 1."""
    config = model.config
    raw_obs = as_observations(z, model.config.sources)
    raw_chart = gmm_to_chart(prior)
    chart, obs, _ = framed(config, raw_chart, raw_obs)

    def embed_sources():
        return [embed(obs.values[n], obs.masks[n]) for n, embed in model.sources.items()]

    tokens = embed_sources()
    memory = layer_norm(model.memory_norm, torch.cat([t for t, _ in tokens], 1))
    key_mask = torch.cat([m for _, m in tokens], 1)

    def embed_prior():
        return model.prior_embedding(prior_features(chart, model.dim) if config.bounded_prior_features else chart)

    h0 = embed_prior()

    def blocks():
        h = h0
        for block in model.blocks:
            h = block(h, memory, key_mask)
        return h

    h = blocks()

    def head_and_site():
        return apply_site(chart, model.head(layer_norm(model.final_norm, h)), model.dim, config.site_evidence)

    out = head_and_site()
    support = model.support
    fns = {
        "input checks and chart encoding": lambda: (as_observations(z, model.config.sources), gmm_to_chart(prior)),
        "per-problem typicality check": lambda: support.outside(raw_chart, raw_obs),
        "the problem in the network's frame (anchor)": lambda: framed(config, raw_chart, raw_obs),
        "observation embedding": embed_sources,
        "prior embedding": embed_prior,
        "decoder blocks (attention + feed-forward)": blocks,
        "head and site update": head_and_site,
        "chart to GaussianMixture (Cholesky de-embedding)": lambda: chart_to_gmm(out, model.dim),
        "whole forward, eager": lambda: model(raw_chart, raw_obs),
    }
    with torch.inference_mode():
        return {k: 1e3 * v for k, v in interleaved_median_seconds(fns, repeats).items()}


def _previous_path(model):
    """The batched path before folded attention and side-by-side chunks: a trace of the module's own forward over
    chunks of 1,024 problems in turn, each operator split over all threads (kept as the same-run reference)."""
    traced = trace(model, model.prior_embedding.last.weight, forward=model.forward)
    names = list(model.config.sources)

    def posterior(prior, z):
        chart, obs = gmm_to_chart(prior), as_observations(z, model.config.sources)
        chunks = [obs.slice(i, i + 1024) for i in range(0, chart.shape[0], 1024)]
        out = torch.cat([traced(chart[1024 * j:1024 * (j + 1)], *[o.values[n] for n in names],
                                *[o.masks[n] for n in names]) for j, o in enumerate(chunks)])
        return chart_to_gmm(out, model.dim)

    return posterior


def evaluate(name: str, quick: bool, generator: torch.Generator) -> dict:
    import distformer

    model = distformer.pretrained(name)
    problem = get("linear-gaussian", **model.card["problem"]["options"])
    prior, _, z = _problems(problem, 1, generator)
    eye = torch.eye(problem.dim)
    repeats = 30 if quick else 500
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = torch.jit.load(str(model.export(Path(tmp) / "u.pt", max_observations=20)))
    mask = torch.ones(1, 20, dtype=torch.bool)
    fns = {
        "model": lambda: model.posterior(prior, z),
        "model, check=False": lambda: model.posterior(prior, z, check=False),
        "exported TorchScript": lambda: exported(prior.log_weights, prior.loc, prior.scale_tril, z, mask),
        "exact": lambda: prior.condition_linear_gaussian(eye, eye, z),
    }
    aoti_s = None
    with threads(1), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        if not quick:  # the export compiles for tens of seconds; it has its own test
            warnings.simplefilter("ignore")  # torch.compile's notices
            if cpp_compiler():
                start = time.perf_counter()
                exported_path = model.export(Path(tmp) / "u.pt2", format="aoti", max_observations=z.shape[-2])
                package = torch._inductor.aoti_load_package(str(exported_path))
                aoti_s = time.perf_counter() - start
                inputs = [t.contiguous() for t in (prior.log_weights, prior.loc, prior.scale_tril, z, mask)]
                fns["exported AOTInductor"] = lambda: package.loader.run(inputs)
        with torch.inference_mode():
            latency = interleaved_median_seconds(fns, repeats)
        parts = parts_ms(model, prior, z, repeats)
    throughput = {}
    previous = _previous_path(model)
    for size in ((1000, 2000) if quick else (1000, 100_000)):
        big_prior, _, big_z = _problems(problem, size, generator)
        with torch.inference_mode():
            t = interleaved_median_seconds({
                "model": lambda: model.posterior(big_prior, big_z, check=False),
                "before": lambda: previous(big_prior, big_z),
                "exact": lambda: big_prior.condition_linear_gaussian(eye, eye, big_z),
            }, 3 if quick else 5, warmup=1)
        throughput[size] = {k: size / v for k, v in t.items()}
    result = {"model": name, "latency_ms": {k: 1e3 * v for k, v in latency.items()}, "aoti_export_s": aoti_s,
              "parts_ms": parts, "throughput": throughput, "threads": torch.get_num_threads(),
              "chunk_size": model.chunk_size}
    from distformer.baselines import numpyro_linear_gaussian as npl

    if npl.available():
        result |= _peers(model, problem, npl, quick, generator)
    return result


def _peers(model, problem, npl, quick: bool, generator: torch.Generator) -> dict:
    n = 2 if quick else 20
    prior, theta, z = _problems(problem, n + 1, generator)
    mask = torch.ones(n + 1, 20, dtype=torch.bool)
    warmup, draws, steps = (50, 50, 100) if quick else (500, 1000, 2000)
    nuts = npl.NUTSBaseline(warmup, draws)
    svi = npl.SVIBaseline(steps)
    out = {"settings": {"nuts_warmup": warmup, "nuts_draws": draws, "svi_steps": steps}}
    for name, run in (("NUTS", lambda i: nuts.posterior(nuts.draws(prior, z, mask, i), generator)),
                      ("SVI", lambda i: svi.posterior(prior, z, mask, i))):
        start = time.perf_counter()
        run(n)  # problem n is only for compilation
        compile_s = time.perf_counter() - start
        times, nll = [], []
        for i in range(n):
            start = time.perf_counter()
            q = run(i)
            times.append(time.perf_counter() - start)
            nll.append(float(-q.log_prob(theta[i].double())))
        out[name] = {"compile_s": compile_s, "ms_per_problem": 1e3 * statistics.median(times),
                     "nll": estimate(torch.tensor(nll)).as_dict()}
    with torch.inference_mode():
        q = model.posterior(prior[:n], z[:n], check=False)
    exact = problem.exact_posterior(prior[:n].to(torch.float64), z[:n])
    out["nll_model"] = estimate(-q.to(torch.float64).log_prob(theta[:n].double())).as_dict()
    out["nll_exact"] = estimate(-exact.log_prob(theta[:n].double())).as_dict()
    return {"peers": out, "peer_problems": n}


def evaluate_all(size: dict, generator: torch.Generator) -> list[dict]:
    return [evaluate(name, size["quick"], generator) for name in MODELS]


def body(results: list[dict], size: dict) -> list[str]:
    lines = [
        "## Batch-1 latency, 20 observations, one thread (median ms)",
        "",
        "`exported AOTInductor`: `model.export(path, format=\"aoti\")`, called through `package.loader.run`; "
        "export time (compile included) in brackets.",
        "",
        "| model | posterior | check=False | exported TorchScript | "
        "exported AOTInductor (export s) | exact update | posterior / exact | AOTInductor / exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_ms"]
        aoti = (f"{lat['exported AOTInductor']:.3f} ({r['aoti_export_s']:.0f})",
                f"{lat['exported AOTInductor'] / lat['exact']:.2f}") if r.get("aoti_export_s") is not None \
            else ("not measured (--quick or no C++ compiler)", "–")
        lines.append(f"| {r['model']} | {lat['model']:.3f} | {lat['model, check=False']:.3f} | "
                     f"{lat['exported TorchScript']:.3f} | {aoti[0]} | {lat['exact']:.3f} | "
                     f"{lat['model'] / lat['exact']:.2f} | {aoti[1]} |")
    lines += ["", "## Throughput (problems per second, 20 observations each)", "",
              "`model`: `posterior(check=False)`, the traced folded forward over chunks of "
              f"{results[0]['chunk_size']} run side by side, one per thread. `before`: the traced unfolded forward "
              "over chunks of 1,024 in turn, each operator split over all "
              "threads (the path before; same run).", "",
              "| model | batch | model | before | model / before | exact |", "|---|---|---|---|---|---|"]
    for r in results:
        for size, t in r["throughput"].items():
            lines.append(f"| {r['model']} | {size:,} | {t['model']:,.0f} | {t['before']:,.0f} | "
                         f"{t['model'] / t['before']:.2f} | {t['exact']:,.0f} |")
    lines += ["", "## Where one eager call spends its time (batch 1, one thread, median ms per part)", "",
              "| part | " + " | ".join(r["model"] for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for part in results[0]["parts_ms"]:
        lines.append(f"| {part} | " + " | ".join(f"{r['parts_ms'][part]:.3f}" for r in results) + " |")
    if "peers" in results[0]:
        n, st = results[0]["peer_problems"], results[0]["peers"]["settings"]
        lines += ["", f"## NumPyro on the same problems ({n} per model, 20 observations each)", "",
                  f"NUTS: {st['nuts_warmup']:,} warm-up + {st['nuts_draws']:,} draws, one chain, scored through a "
                  f"4-component EM fit to its draws. SVI: full-covariance Gaussian guide, Adam, {st['svi_steps']:,} "
                  "steps. Times per problem after compilation "
                  "(median); compile time apart. Ratios against three times of the model per problem: its "
                  "batch-1 `posterior` (with the check), the batch-1 AOTInductor package, and a batch of "
                  f"{max(results[0]['throughput']):,} problems (throughput table).", "",
                  "| model | method | NLL of the true parameter | ms per problem | compile (s) | time / model, batch 1 "
                  "| time / AOTInductor, batch 1 | time / model, batched |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            p, lat = r["peers"], r["latency_ms"]
            batched_ms = 1e3 / r["throughput"][max(r["throughput"])]["model"]
            references = [lat["model"], lat.get("exported AOTInductor"), batched_ms]
            lines.append(f"| {r['model']} | exact | {fmt_estimate(p['nll_exact'])} | {lat['exact']:.3f} "
                         "| – | – | – | – |")
            lines.append(f"| {r['model']} | model | {fmt_estimate(p['nll_model'])} | {lat['model']:.3f} | – | 1 | – "
                         "| – |")
            for method in ("SVI", "NUTS"):
                m = p[method]
                ratios = " | ".join("–" if ref is None else f"{m['ms_per_problem'] / ref:,.0f}×" for ref in references)
                lines.append(f"| {r['model']} | {method} | {fmt_estimate(m['nll'])} | {m['ms_per_problem']:,.1f} | "
                             f"{m['compile_s']:.1f} | {ratios} |")
    else:
        lines += ["", "NumPyro is not installed (`pip install -e .[baselines]`), so NUTS and SVI were not measured."]
    return lines


EXPERIMENT = Experiment(
    name="speed", title="the shipped models against the exact update and NumPyro, in one run", seed=SEED,
    sizes={"quick": {"quick": True}, "full": {"quick": False}}, evaluate=evaluate_all,
    protocol=lambda size, results: "", body=body,
    machine_note=lambda results: f"throughput with {thread_count(results[0]['threads'])}, latency with 1",
    payload=lambda results: {"models": results})

"""What the filtering benchmarks share: timing a filter over a batch of series, scoring its beliefs by the NLL of
the true states, particle filters scored under a Gaussian and a KDE, the smallest particle filter that matches the
model, and the NLL-against-compute panel."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Callable

import torch

from distformer.baselines import ParticleFilter
from distformer.diagnostics import estimate
from distformer.observations import Observations
from .report import fmt_estimate


def timed(fn: Callable):
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def first_steps(observations: Observations, steps: int, series: int) -> Observations:
    """The first ``steps`` steps of the first ``series`` series (batch ``(T, n)``)."""
    return Observations({s: v[:steps, :series] for s, v in observations.values.items()},
                        {s: m[:steps, :series] for s, m in observations.masks.items()})


def score_filter(name: str, run: Callable, prior, observations: Observations, states: torch.Tensor,
                 reference: torch.Tensor | None = None) -> tuple[dict, object, torch.Tensor]:
    """Time ``run(prior, observations) -> beliefs`` (batch ``(T, n)``) after a warm-up call on the first 2 steps of
    every series (the same batch size, hence the same code path, as the timed call), and score it; with
    ``reference`` (the model's NLL ``(T, N)``, N >= n) the row also gets the paired gap to it on the same series.
    Returns the report row, the beliefs and the NLL ``(T, n)``."""
    run(prior, first_steps(observations, 2, states.shape[1]))  # first calls allocate: keep them off the clock
    beliefs, seconds = timed(lambda: run(prior, observations))
    nll = -beliefs.to(torch.float64).log_prob(states)  # (T, n)
    row = {"filter": name, "nll": estimate(nll.mean(0)).as_dict(), "nll_by_step": nll.mean(1).tolist(),
           "ms_per_step": 1e3 * seconds / states.shape[0], "series": states.shape[1]}
    if reference is not None:
        row["gap_to_model"] = estimate((nll - reference[:, :nll.shape[1]]).mean(0)).as_dict()
    return row, beliefs, nll


SCORING_RULES = ("best", "kde")


def score_particle_filter(pf: ParticleFilter, prior, observations: Observations, states: torch.Tensor,
                          seed: int, per_series: int, reference: torch.Tensor,
                          rule: str = "best") -> tuple[dict, object, torch.Tensor]:
    """Run ``pf`` (timed) and score the truth under the moment-matched Gaussian and under a Gaussian KDE of the same
    particles (same seed); the row's ``nll`` is the KDE's (``rule="kde"``) or the better of the two (``"best"``),
    with its paired gap to ``reference`` (the model's NLL). ``ms_per_step`` is scaled to a batch of ``per_series``
    series (particle-filter cost is linear in the number of series)."""
    if rule not in SCORING_RULES:
        raise ValueError(f"Expected a scoring rule among {SCORING_RULES}, but got {rule!r}.")
    kind = "regularised particle filter" if pf.regularised else "particle filter"
    name = f"{kind}, {pf.num_particles:,} particles"
    row, beliefs, _ = score_filter(name, lambda p, o: pf.run(p, o, generator=torch.Generator().manual_seed(seed)),
                                prior, observations, states)
    gaussian = -beliefs.to(torch.float64).log_prob(states)
    kde = -pf.log_density(prior, observations, states.to(prior.dtype),
                          generator=torch.Generator().manual_seed(seed)).double()
    best = kde if rule == "kde" or bool(kde.mean() < gaussian.mean()) else gaussian
    row |= {"particles": pf.num_particles, "nll": estimate(best.mean(0)).as_dict(),
            "nll_gaussian": estimate(gaussian.mean(0)).as_dict(), "nll_kde": estimate(kde.mean(0)).as_dict(),
            "nll_by_step": best.mean(1).tolist(),
            "gap_to_model": estimate((best - reference[:, :best.shape[1]]).mean(0)).as_dict(),
            "ms_per_step": row["ms_per_step"] * per_series / states.shape[1]}
    return row, beliefs, best


def phase_gaps(nll: torch.Tensor, reference: torch.Tensor, split: int) -> dict:
    """Paired NLL gaps ``nll - reference`` (both ``(T, n)``) per step, averaged over steps ``1..split`` and
    ``split+1..T`` of each series: ``{"first": Estimate, "rest": Estimate}`` over series."""
    gap = nll - reference
    return {"first": estimate(gap[:split].mean(0)).as_dict(), "rest": estimate(gap[split:].mean(0)).as_dict()}


def smallest_match(rows: list[dict], model_row: dict) -> dict:
    """The smallest particle filter whose NLL is at least as good as the model's on the same series (paired gap
    <= 0), and its time over the model's; if none is, the largest one (``matched`` False)."""
    pfs = sorted((r for r in rows if "particles" in r), key=lambda r: r["particles"])
    matched = [r for r in pfs if r["gap_to_model"]["mean"] <= 0]
    pick = matched[0] if matched else pfs[-1]
    return {"particles": pick["particles"], "speedup": pick["ms_per_step"] / model_row["ms_per_step"],
            "matched": bool(matched)}


def repeated_timing(run_model: Callable, run_particles: Callable, repeats: int, steps: int) -> dict:
    """Time ``run_model()`` and ``run_particles()`` (whole filter runs of ``steps`` steps) ``repeats`` times each,
    alternating, so that both see the same drift of a shared machine's speed: the medians in ms per step and the
    ratio of the medians (particle filter over model)."""
    model_s, particle_s = [], []
    for _ in range(repeats):
        model_s.append(timed(run_model)[1])
        particle_s.append(timed(run_particles)[1])
    model_ms, particle_ms = 1e3 * statistics.median(model_s) / steps, 1e3 * statistics.median(particle_s) / steps
    return {"repeats": repeats, "model_ms_per_step": model_ms, "particle_ms_per_step": particle_ms,
            "speedup": particle_ms / model_ms}


def describe_match(match: dict) -> str:
    again = match.get("repeated")
    if match["matched"]:
        text = (f"The smallest particle filter with an NLL at least as good as the model's has {match['particles']:,} "
                f"particles and takes {match['speedup']:,.0f}× the model's time per step in the table's run.")
    else:
        text = (f"No particle filter up to {match['particles']:,} particles reached the model's NLL; the largest takes "
                f"{match['speedup']:,.0f}× the model's time per step in the table's run.")
    if again:
        text += (f" Timed again, {again['repeats']} runs of each interleaved on the same series: medians "
                 f"{again['model_ms_per_step']:.2f} ms (model) and {again['particle_ms_per_step']:,.1f} ms (particle "
                 f"filter) per step, **{again['speedup']:,.1f}×**.")
    return text


def row_cells(row: dict, model_row: dict) -> str:
    """Markdown cells: NLL (Gaussian / KDE), paired gap to the model, ms per step and the time ratio to the model."""
    both = f"{row['nll_gaussian']['mean']:.3f} / {row['nll_kde']['mean']:.3f}" if "particles" in row else "–"
    gap = fmt_estimate(row.get("gap_to_model"), 3)
    return f"{both} | {gap} | {row['ms_per_step']:.2f} | {row['ms_per_step'] / model_row['ms_per_step']:,.1f}×"


def plot_compute_curve(ax, rows: list[dict], max_nll: float = 50.0, series: int = 100) -> None:
    """NLL against time per step for a batch of ``series``: particle filters (rows with ``particles``) as one curve,
    the other filters as points with 95% bars."""
    pf = sorted((r for r in rows if "particles" in r), key=lambda r: r["particles"])
    ax.plot([r["ms_per_step"] for r in pf], [r["nll"]["mean"] for r in pf], "o-", color="grey",
            label="particle filter (" + ", ".join(f"{r['particles']:,}" for r in pf) + ")")
    for r in rows:
        if "particles" not in r and abs(r["nll"]["mean"]) < max_nll:
            ax.errorbar(r["ms_per_step"], r["nll"]["mean"], yerr=1.96 * r["nll"]["stderr"], fmt="s", capsize=3,
                        label=r["filter"])
    ax.set_xscale("log")
    if any(abs(r["nll"]["mean"]) > max_nll for r in pf):  # a filter that lost the target would flatten the rest
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"ms per step (batch of {series} series)")
    ax.set_ylabel("NLL of the true state per step")
    ax.legend(fontsize=7)


def out_of_family_messages(run: Callable[[], object]) -> list[str]:
    """The distinct out-of-family (and other) warnings raised by ``run()``, sorted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return sorted({str(w.message) for w in caught})


def out_of_family_line(messages: list[str]) -> str:
    return "Out-of-family check during a checked run: " + (
        "; ".join(m.rstrip(".") for m in messages) if messages else "silent") + "."


def single_step_kl(model, problem, prior, generator: torch.Generator, draws: int = 20_000, chunk: int = 100) -> dict:
    r"""Expected ``KL(exact ‖ model)`` of one update from each prior of ``prior`` (batch ``(n,)``), in float64.

    One draw per prior: :math:`x\sim p(x)`, readings :math:`z\sim p(z\mid x)` from ``problem.simulate``, and
    :math:`\log p(x\mid z) = \log p(x) + \log p(z\mid x) - \log\hat p(z)` with the evidence estimated by importance
    sampling from the prior (``draws`` draws), so the average of :math:`\log p(x\mid z) - \log q(x\mid z)` estimates
    the KL. The log of the evidence estimate is biased low by about :math:`1/(2\,\mathrm{ESS})`; the median ESS is
    returned beside the estimate to show that this is negligible. Priors go ``chunk`` at a time."""
    prior = prior.to(torch.float64)
    kls, esss = [], []
    with torch.inference_mode():
        for start in range(0, prior.batch_shape[0], chunk):
            part = prior[start:start + chunk]
            x = part.sample(generator=generator)
            observations = problem.simulate(x, generator)
            q = model.posterior(part.to(torch.float32), observations.to(torch.float32))
            log_l = problem.log_likelihood(part.sample((draws,), generator=generator), observations)  # (draws, n)
            total = torch.logsumexp(log_l, 0)
            esss.append((2 * total - torch.logsumexp(2 * log_l, 0)).exp())
            log_exact = part.log_prob(x) + problem.log_likelihood(x, observations) - (total - math.log(draws))
            kls.append(log_exact - q.log_prob(x.to(torch.float32)).double())
    return {"kl": estimate(torch.cat(kls)).as_dict(), "median_ess": float(torch.cat(esss).median()),
            "problems": prior.batch_shape[0]}

"""Benchmark ``sensor-fusion``: the model filter against EKF, UKF and regularised particle filters (paper's Table 3).

Series from :meth:`distformer.problems.sensor_fusion.SensorFusion.simulate_series`; the update model is the shipped
``sensor-fusion``, the predict step is exact per component. All filters run on the same series in one process.
Particle filters are regularised (a bootstrap filter's resampling collapses where a bearing pins the position) and
scored by one rule, the NLL under a Gaussian KDE of their particles. The smallest one at least as good as the model
is then timed again against the model filter at each batch size, runs interleaved (``filter_runs.repeated_timing``):
on a machine whose speed drifts, the ratio of those medians is the speed-up to read. A much larger one is the
near-exact reference for the model's gap per step, over the first updates and the rest. Writes
``benchmarks/sensor-fusion.{md,json,png}``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from distformer.baselines import (ExtendedKalmanFilter, GaussianStateSpace, UnscentedKalmanFilter, bootstrap_filter,
                                  gaussian_beliefs)
from distformer.distributions.gmm import GaussianMixture
from distformer.filtering import Filter, LinearGaussianMotion
from distformer.observations import Observations
from distformer.problems.sensor_fusion import (BEARING_SD, SensorFusion, range_reading_moments, true_bearing,
                                               true_range, wrap_angle)
from distformer.diagnostics import estimate

from .filter_runs import (first_steps, out_of_family_line, out_of_family_messages, phase_gaps, plot_compute_curve,
                          repeated_timing, row_cells, score_filter, score_particle_filter, single_step_kl,
                          smallest_match)
from .harness import Experiment, Table, drop_keys, thread_count
from .report import fmt_estimate as _fmt
from .report import stage

SEED = 27182
MODEL = "sensor-fusion"
FIRST_STEPS = 10  # the first updates from the wide start, reported apart


class TwoSensorGaussianFilter:
    """EKF or UKF for :class:`SensorFusion`: predict, then a scalar update per present sensor (range, then bearing).

    The range sensor enters through the mean and variance of its reading given the true range (the paper's
    linearisation); the bearing innovation is wrapped to ``(-pi, pi]`` around the predicted bearing.
    """

    def __init__(self, problem: SensorFusion, unscented: bool):
        A, Q = problem.A, problem.Q
        cls = UnscentedKalmanFilter if unscented else ExtendedKalmanFilter
        moments = lambda x: range_reading_moments(true_range(x), problem.max_range)  # noqa: E731
        self.range = cls(GaussianStateSpace(lambda x: x @ A.T, Q, lambda x: moments(x)[0].unsqueeze(-1),
                                            lambda m: moments(m)[1][..., None, None]))
        self.bearing = cls(GaussianStateSpace(lambda x: x @ A.T, Q, lambda x: true_bearing(x).unsqueeze(-1),
                                              torch.tensor([[BEARING_SD**2]], dtype=torch.float64)))

    def run(self, prior: GaussianMixture, observations: Observations) -> GaussianMixture:
        """Filtered Gaussians (batch ``(T, *B)``) for readings with batch ``(T, *B)``."""
        mean, cov = prior.mean, prior.covariance_matrix
        reading = observations.values["range"].to(mean.dtype)
        b = observations.values["bearing"][..., 0, :].to(mean.dtype)
        beta = torch.atan2(b[..., 1], b[..., 0])
        means, covs = [], []
        for t in range(reading.shape[0]):
            if t > 0:
                mean, cov = self.range.predict(mean, cov)
            mean, cov = self.range.update(mean, cov, reading[t], observations.masks["range"][t])
            predicted = true_bearing(mean)
            unwrapped = predicted + wrap_angle(beta[t] - predicted)
            mean, cov = self.bearing.update(mean, cov, unwrapped[..., None, None], observations.masks["bearing"][t])
            means.append(mean)
            covs.append(cov)
        return gaussian_beliefs(means, covs)


def evaluate(size: dict, generator: torch.Generator) -> dict:
    """Every filter on the same series (seeded from ``SEED``; particle filters from ``SEED + 1``, the single-step
    KLs from ``SEED + 2``)."""
    import distformer

    problem = SensorFusion()
    data = problem.simulate_series(size["series"], size["steps"], generator)
    states = data.states
    model = distformer.pretrained(MODEL)
    motion = LinearGaussianMotion(problem.A.float(), None, problem.Q.float())
    model_filter = Filter(model, motion, check=False)
    prior32, obs32 = data.prior.to(torch.float32), data.observations.to(torch.float32)
    out_of_family = out_of_family_messages(lambda: Filter(model, motion, check=True).run(prior32, obs32))
    rows, beliefs_of = [], {}
    with torch.inference_mode():
        runs = {f"model ({MODEL})": (lambda p, o: model_filter.run(p, o).beliefs, prior32, obs32),
                "EKF": (TwoSensorGaussianFilter(problem, unscented=False).run, data.prior, data.observations),
                "UKF": (TwoSensorGaussianFilter(problem, unscented=True).run, data.prior, data.observations)}
        reference = None
        for name, (fn, prior, obs) in runs.items():
            row, beliefs_of[name], nll = score_filter(name, fn, prior, obs, states, reference)
            reference = nll if reference is None else reference
            rows.append(row)
        pf_nll = {}
        for J in size["particles"]:
            pf = bootstrap_filter(problem, J, regularised=True)
            row, beliefs_of[J], nll = score_particle_filter(pf, prior32, obs32, states, SEED + 1, size["series"],
                                                            reference, rule="kde")
            pf_nll[row["filter"]] = nll
            rows.append(row)
        model_row = rows[0]
        match = smallest_match(rows, model_row)
        if match["matched"]:  # the speed-up at equal NLL, timed again at each batch size
            pf = bootstrap_filter(problem, match["particles"], regularised=True)
            match["repeated_by_batch"] = {
                n: repeated_timing(lambda n=n: model_filter.run(prior32[:n], first_steps(obs32, size["steps"], n)),
                                   lambda n=n: pf.run(prior32[:n], first_steps(obs32, size["steps"], n),
                                                      generator=torch.Generator().manual_seed(SEED + 1)),
                                   size["repeats"], size["steps"])
                for n in size["timing_batches"]}
        stage("sensor-fusion", f"near-exact reference: {size['reference_particles']:,} particles")
        near = bootstrap_filter(problem, size["reference_particles"], regularised=True)
        near_nll = -near.log_density(prior32, obs32, states.to(torch.float32),
                                     generator=torch.Generator().manual_seed(SEED + 3)).double()
        to_near = {"particles": size["reference_particles"], "nll": estimate(near_nll.mean(0)).as_dict(),
                   "model": phase_gaps(reference, near_nll, FIRST_STEPS),
                   "filters": {name: phase_gaps(nll, near_nll, FIRST_STEPS) for name, nll in pf_nll.items()}}
    single_step = single_step_rows(model, problem, motion, data.prior, beliefs_of[f"model ({MODEL})"],
                                   size["kl_priors"], size["depths"], torch.Generator().manual_seed(SEED + 2))
    return {"filters": rows, "match": match, "near_exact": to_near, "single_step_kl": single_step,
            "out_of_family": out_of_family,
            "plot": (beliefs_of[f"model ({MODEL})"], beliefs_of[size["particles"][-1]], states)}


def protocol(size: dict, r: dict) -> str:
    return (f"{size['series']} series of {size['steps']} steps (seed {SEED}) from `SensorFusion.simulate_series` (4-D "
            "damped-velocity target from N((1,0,1,0), I); clipped mixture rangefinder and wrapped-normal bearing, "
            "each missing at a step with probability 0.1). The model filter predicts each of its 4 components exactly "
            f"and updates with the shipped `{MODEL}`. EKF/UKF take the range reading through its mean and variance "
            "given the range and update sensor by sensor. Particle filters are **regularised** (systematic "
            "resampling every step, then a kernel move shrunk to keep the weighted mean and covariance: "
            "`distformer.baselines.ParticleFilter(regularised=True)`; exact likelihoods, float32 like the model). "
            "**One scoring rule for every particle filter:** the NLL of the true state under a Gaussian KDE of the "
            "weighted particles (Scott's bandwidth); the moment-matched Gaussian's NLL is shown beside it and used "
            "for nothing. NLL: -log density of the true 4-D state, averaged over steps, then over series (95% "
            f"interval over series). Time: wall clock per step for the batch of {size['series']} series (filtering "
            f"only, not scoring), {thread_count()}.")


def body(r: dict, size: dict) -> list:
    model_row, near, match = r["filters"][0], r["near_exact"], r["match"]
    return [
        "| filter | NLL per step | NLL, Gaussian / KDE | minus model's NLL | ms per step (batch) | time / model's |",
        "|---|---|---|---|---|---|",
        *[f"| {f['filter']} | {_fmt(f['nll'], 3)} | {row_cells(f, model_row)} |" for f in r["filters"]],
        "", _describe_match(match), "",
        f"**Against a near-exact filter** (a regularised particle filter with {near['particles']:,} particles, "
        f"KDE NLL {_fmt(near['nll'], 3)}): the paired gap per step, filter minus reference, over the first "
        f"{FIRST_STEPS} steps from the wide start and over the rest (95% interval over series).", "",
        Table([("model", near["model"])] + list(near["filters"].items()), (
            ("filter", lambda x: x[0]),
            (f"steps 1–{FIRST_STEPS}", lambda x: _fmt(x[1]["first"], 3)),
            (f"steps {FIRST_STEPS + 1}–{size['steps']}", lambda x: _fmt(x[1]["rest"], 3)))),
        "", "The paper (Table 3, on a laptop GPU): model -0.197 ± 0.040 at 17 ms, particle filter -0.244 ± 0.047 at "
        "818 ms, EKF 95.9.", "",
        "Where the model's error comes from: the KL of one update, from priors the model was trained on, from the "
        "filter's start, and from the beliefs its own filter meets at a given step of the series above. "
        "`benchmarks/runners/filter_runs.single_step_kl`: x from the prior, readings from the sensors, the exact "
        "posterior density by importance sampling from the prior (20,000 draws; the median ESS says how well).",
        "",
        Table(r["single_step_kl"], (
            ("prior of the update", lambda s: s["prior"]), ("problems", lambda s: str(s["problems"])),
            ("KL(exact ‖ model)", lambda s: _fmt(s["kl"], 4)), ("median ESS", lambda s: f"{s['median_ess']:,.0f}"))),
        "",
        out_of_family_line(r["out_of_family"])]


def _describe_match(match: dict) -> str:
    """The smallest regularised particle filter of equal NLL and its time over the model's, timed again at each
    batch size with the runs interleaved."""
    if not match["matched"]:
        return (f"No particle filter up to {match['particles']:,} particles reached the model's NLL; the largest takes "
                f"{match['speedup']:,.0f}× the model's time per step in the table's run.")
    text = (f"The smallest regularised particle filter with an NLL at least as good as the model's (paired gap ≤ 0) "
            f"has {match['particles']:,} particles. Timed again, runs of each interleaved on the same series (medians "
            "of ms per step):")
    for n, t in match["repeated_by_batch"].items():
        text += (f" batch {n}: model {t['model_ms_per_step']:.2f} ms, particle filter {t['particle_ms_per_step']:,.1f} "
                 f"ms, **{t['speedup']:,.1f}×** ({t['repeats']} runs each);")
    return text.rstrip(";") + "."


def single_step_rows(model, problem: SensorFusion, motion, start: GaussianMixture, beliefs: GaussianMixture,
                     num_priors: int, depths: tuple[int, ...], generator: torch.Generator) -> list[dict]:
    """:func:`single_step_kl` from ``num_priors`` draws of the model's training meta-prior, from the filter's start
    ``start`` (``(n,)``, one Gaussian, replicated to ``num_priors``) and from the predicted beliefs of the model filter
    (``beliefs``, batch ``(T, n)``) at each 1-based step of ``depths``."""
    trained_on = SensorFusion(**model.card["problem"]["options"])
    cases = [("meta-prior the model was trained on", trained_on.sample_meta_prior(num_priors, generator)),
             ("the filter's start, N((1,0,1,0), I)", start[:1].expand((num_priors,)))]
    cases += [(f"model filter's belief, step {d}", motion(beliefs[d - 2].to(torch.float32), d - 1)) for d in depths]
    return [{"prior": name, **single_step_kl(model, problem, prior, generator)} for name, prior in cases]


def _ellipse(mean, cov, n_sd: float = 2.0):
    """Points ``(2, 64)`` on the ``n_sd`` ellipse of a 2-D Gaussian."""
    angle = torch.linspace(0, 2 * math.pi, 64, dtype=torch.float64)
    circle = torch.stack([angle.cos(), angle.sin()])
    return mean.unsqueeze(-1) + n_sd * torch.linalg.cholesky(cov) @ circle


def _plot(r: dict, path: Path) -> None:
    from distformer.plotting import pyplot

    plt = pyplot()
    rows, (model_beliefs, pf_beliefs, states) = r["filters"], r["plot"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    plot_compute_curve(ax1, rows)
    ax1.set_title("compute against accuracy (EKF/UKF off the chart if NLL > 50)", fontsize=9)
    largest = max((r for r in rows if "particles" in r), key=lambda r: r["particles"])
    for r in rows:
        if "particles" not in r or r is largest:
            ax2.plot(range(1, len(r["nll_by_step"]) + 1), r["nll_by_step"], label=r["filter"])
    ax2.set_ylim(top=max(3.0, min(10.0, max(rows[0]["nll_by_step"]) + 1)))
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean NLL over series")
    ax2.legend(fontsize=7)
    # one tracked series: positions are dims 0 (p_x) and 2 (p_y)
    dims = torch.tensor([0, 2])
    truth = states[:, 0][:, dims]
    ax3.plot(truth[:, 0], truth[:, 1], "k.-", lw=1, ms=3, label="true position")
    for name, beliefs, colour in (("model", model_beliefs, "C0"), ("largest particle filter", pf_beliefs, "C3")):
        b = beliefs.to(torch.float64)[:, 0].marginal(dims)
        mean, cov = b.mean, b.covariance_matrix
        ax3.plot(mean[:, 0], mean[:, 1], "-", color=colour, lw=1, label=f"{name} mean, 2-sd ellipses")
        for t in range(0, mean.shape[0], max(1, mean.shape[0] // 10)):
            e = _ellipse(mean[t], cov[t])
            ax3.plot(e[0], e[1], color=colour, lw=0.7, alpha=0.8)
    ax3.plot([0], [0], "k^", label="sensors")
    ax3.set_aspect("equal", adjustable="datalim")
    ax3.set_xlabel("p_x")
    ax3.set_ylabel("p_y")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPERIMENT = Experiment(
    name="sensor-fusion", title="the model filter against EKF, UKF and particle filters", seed=SEED,
    sizes={"quick": dict(series=8, steps=12, particles=(100, 1000), reference_particles=3000, timing_batches=(1, 8),
                         kl_priors=16, depths=(2, 10), repeats=2),
           "full": dict(series=100, steps=50, particles=(1000, 3000, 10_000, 30_000), reference_particles=200_000,
                        timing_batches=(1, 100), kl_priors=500, depths=(10, 25, 50), repeats=5)},
    evaluate=evaluate, protocol=protocol, body=body, figure=_plot,
    caption="NLL against time per step; NLL by step; one tracked series", payload=drop_keys("plot"))

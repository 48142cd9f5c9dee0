"""``distformer check MODEL``: calibration of a shipped model over its training meta-prior, beside the exact
posterior (where one exists) as a control for the test's own noise. Writes ``benchmarks/check-MODEL.md`` and a PNG
with coverage curves and SBC rank histograms. Equations: ``diagnostics.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .diagnostics import coverage, hpd_level, plot_calibration, sbc_ranks

SEED = 4242


def run_check(name: str, num_problems: int = 2000, out_dir: str | Path = "benchmarks", hpd_samples: int = 1000,
              sbc_samples: int = 99) -> Path:
    """Coverage at 50/80/95% and SBC ranks of model ``name`` (a shipped name or a path) on fresh problems."""
    from .problems.registry import from_card
    from .zoo import load_named_or_path

    model = load_named_or_path(name)
    stem = Path(name).stem
    problem = from_card(model.card)  # a user's problem: rebuilt by the factory it was trained from
    g = torch.Generator().manual_seed(SEED)
    batch = problem.sample_batch(num_problems, generator=g)
    posteriors = {"model": model.posterior(batch.prior, batch.observations)}
    if problem.has_exact_posterior:
        posteriors["exact"] = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
    results = {k: {"levels": hpd_level(q, batch.theta, hpd_samples, g), "ranks": sbc_ranks(q, batch.theta,
                                                                                            sbc_samples, g)}
               for k, q in posteriors.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"check-{stem}.png"
    plot_calibration(results, sbc_samples, png)
    lines = [f"# Calibration of {stem}", "",
             f"Command: `distformer check {name}" + (f" --problems {num_problems}`" if num_problems != 2000 else "`"),
             "",
             f"{num_problems} fresh problems from the training meta-prior (seed {SEED}). Coverage: fraction of "
             f"problems whose true parameter lies in the posterior's highest-density region of the given level "
             f"({hpd_samples} posterior samples per problem), ± 1.96 binomial standard errors. The exact posterior "
             "is the control: its deviations from nominal are the test's own noise.", "",
             "| posterior | 50% | 80% | 95% |", "|---|---|---|---|"]
    for k, r in results.items():
        cov = coverage(r["levels"])
        lines.append(f"| {k} | " + " | ".join(f"{100 * e.mean:.1f} ± {196 * e.stderr:.1f}" for e in cov.values())
                     + " |")
    lines += ["", f"SBC: ranks of each coordinate of the truth among {sbc_samples} posterior draws, 20 bins; the grey "
              "band holds 99% of bin counts for a calibrated posterior.", "", f"![calibration]({png.name})"]
    md = out_dir / f"check-{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return md

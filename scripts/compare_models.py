"""Before and after: shipped models against earlier versions of them, on the earlier versions' own training
meta-priors, on the same problems in one run. Writes ``benchmarks/before-after.md``.

Command: ``python scripts/compare_models.py OLD_DIR [OUT]`` (``OUT`` defaults to ``benchmarks/before-after.md``) where ``OLD_DIR`` holds the earlier ``NAME.safetensors`` and
``NAME.json`` (for example ``git show REV:src/distformer/pretrained/NAME.json > OLD_DIR/NAME.json``, and the same for
the weights). KL(exact or reference ‖ model) per problem: Monte Carlo with draws from the exact posterior
(linear-Gaussian, inverse-gamma), quadrature on the reference grid (quantum).
"""

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for benchmarks/runners

import distformer as dfm  # noqa: E402
from benchmarks.runners.inverse_gamma import _kl  # noqa: E402
from distformer.diagnostics import estimate, kl_divergence
from distformer.problems import get

SEED = 3131
PROBLEMS = 2000


def linear_gaussian(old, new, g):
    problem = get("linear-gaussian", **old.card["problem"]["options"])
    batch = problem.sample_batch(PROBLEMS, generator=g)
    exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
    return {m: kl_divergence(exact, model.posterior(batch.prior, batch.observations, check=False), 512, g)
            for m, model in (("before", old), ("after", new))}


def inverse_gamma(old, new, g, meta_prior):
    problem = get("inverse-gamma", meta_prior=meta_prior)
    batch = problem.sample_batch(PROBLEMS, generator=g)
    exact = problem.exact_posterior(batch.prior.double(), batch.observations)
    out = {}
    for m, model in (("before", old), ("after", new)):
        post = model.posterior(batch.prior, batch.observations, check=False)
        out[m] = _kl(exact.concentration, exact.rate, lambda x: post.log_prob(x.double()), 512, g)
    return out


def quantum(old, new, g):
    problem = get("quantum", **old.card["problem"]["options"])
    batch = problem.sample_batch(PROBLEMS, generator=g)
    delta, log_p = problem.reference_posterior(batch.prior, batch.observations, grid_size=2001)
    u = torch.log(delta) - torch.log1p(-delta)
    log_p_u = log_p + (torch.log(delta) + torch.log1p(-delta)).unsqueeze(-1)
    out = {}
    for m, model in (("before", old), ("after", new)):
        post = model.posterior(batch.prior, batch.observations, check=False)
        log_q = post.base.to(torch.float64).log_prob(u.view(-1, 1, 1).expand(-1, PROBLEMS, 1))
        out[m] = (log_p_u.exp() * (log_p_u - log_q)).nan_to_num(0.0).sum(0) * float(u[1] - u[0])
    return out


def main(old_dir: Path, out: Path = Path("benchmarks/before-after.md")) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(SEED)
    rows = []
    cases = [("linear-gaussian-1d", "training meta-prior", linear_gaussian),
             ("linear-gaussian-2d", "training meta-prior", linear_gaussian),
             ("inverse-gamma", "wide", lambda o, n, g: inverse_gamma(o, n, g, "wide")),
             ("inverse-gamma", "narrow", lambda o, n, g: inverse_gamma(o, n, g, "narrow")),
             ("quantum", "training meta-prior", quantum)]
    for name, family, run in cases:
        path = old_dir / name
        if not path.with_suffix(".json").exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kl = run(dfm.load(path), dfm.pretrained(name), g)
        diff = estimate(kl["after"] - kl["before"])
        rows.append(f"| {name} | {family} (before's) | {estimate(kl['before'])} | {estimate(kl['after'])} | {diff} |")
    lines = ["# before-after: the shipped models against the versions they replace", "",
             f"Command: `python scripts/compare_models.py OLD_DIR{'' if out.name == 'before-after.md' else ' ' + str(out)}`"
             " (old models from git, see the script).  ",
             f"Problems: {PROBLEMS} per row from the *earlier* model's training meta-prior (seed {SEED}), the same "
             "problems for both; KL(exact or reference ‖ model), mean ± 95% interval; the last column is the paired "
             "difference (negative: the new model is closer).", "",
             "| model | problems | KL before | KL after | after − before |", "|---|---|---|---|---|", *rows]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *[Path(a) for a in sys.argv[2:3]])

"""Command line: ``distformer demo | models | train CONFIG | bench NAME | infer``."""

from __future__ import annotations

import argparse
import sys


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .launch import spawn_training, train_and_save, train_worker
    from .training import TrainConfig

    config = TrainConfig.from_yaml(args.config)
    checkpoint = args.checkpoint or f"{args.out}.ckpt.safetensors"
    if not (args.resume or args.overwrite):
        existing = [p for p in (Path(checkpoint), Path(f"{args.out}.safetensors")) if p.exists()]
        if existing:
            raise ValueError(f"Expected no checkpoint or model at {existing[0]} (a crashed or finished run), but one "
                             "is there; pass --resume to continue it or --overwrite to start again.")
    if args.nproc > 1:
        command = f"distformer train {args.config} --nproc {args.nproc} --out {args.out}"
        spawn_training(args.nproc, train_worker, config.to_dict(), args.out, checkpoint, args.resume, args.quiet,
                       False, command, args.time_budget)
        print(f"saved {args.out}.safetensors/.json after training in {args.nproc} processes")
        return 0
    budget = f" --time-budget {args.time_budget:g}" if args.time_budget else ""
    model = train_and_save(config, args.out, checkpoint, args.resume, args.quiet,
                           f"distformer train {args.config} --out {args.out}{budget}", time_budget=args.time_budget)
    from .training.distributed import world_size_and_rank

    if world_size_and_rank()[1] != 0:  # under torchrun every process trains the same replica; rank 0 wrote it
        return 0
    final = model.card["training"]["final_validation"] or {}
    print(f"saved {args.out}.safetensors/.json after {model.card['training']['time_s']:.0f} s; "
          + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k.startswith("val_")))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .zoo import describe, pretrained_names

    for name in pretrained_names():
        print(describe(name))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(model_name=args.model, out=args.out)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]  # src/distformer/cli.py -> the source checkout
    if not (checkout / "benchmarks" / "runners" / "__init__.py").is_file():
        raise ValueError("Expected a source checkout of distformer (benchmarks/runners/), but this installation has "
                         "none; clone the repository and install it with pip install -e.")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks.runners import run_benchmark

    run_benchmark(args.name, quick=args.quick, out_dir=args.out_dir)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import json
    import warnings

    from .support import OutOfFamilyWarning
    from .zoo import load_named_or_path

    with (sys.stdin if args.input == "-" else open(args.input)) as f:
        text = f.read()
    try:
        request = json.loads(text)
    except json.JSONDecodeError:
        where = "standard input" if args.input == "-" else args.input
        got = "nothing" if not text.strip() else "text that is not JSON"
        raise ValueError(f"Expected a JSON object on {where}, but got {got}.") from None
    if not isinstance(request, dict) or "prior" not in request or "observations" not in request:
        got = sorted(request) if isinstance(request, dict) else type(request).__name__
        raise ValueError("Expected a JSON object with 'prior' {weights or logits, loc, covariance_matrix} and "
                         f"'observations' (a list of points, or an object of them per source), but got {got}.")
    model = load_named_or_path(args.model)
    prior = _json_prior(model, request["prior"])
    z = _json_observations(model, request["observations"])
    with warnings.catch_warnings():  # the verdict goes into the reply, problem by problem
        warnings.simplefilter("ignore", OutOfFamilyWarning)
        post = model.posterior(prior, z)
    reply = {}
    if post.reliable is not None:
        reply["reliable"] = bool(post.reliable.all())
        if not reply["reliable"]:  # why, as the warning would say it
            reply["reliability"] = post.reliability.summary() + (f"; {post.reliability.detail}"
                                                                 if post.reliability.detail else "")
    if model.warp is not None:  # the mixture lives on the warped space; say which, and its moments on the original
        reply["warp"] = list(model.warp.kinds)
        reply["mean_original_space"] = post.mean.tolist()
        reply["variance_original_space"] = post.variance.tolist()
        post = post.base
    reply |= {"weights": post.weights.tolist(), "loc": post.loc.tolist(),
              "covariance_matrix": post.component_covariance_matrix.tolist(),
              "mean": post.mean.tolist(), "mixture_covariance": post.covariance_matrix.tolist()}
    print(json.dumps(reply))
    return 0


def _numbers(value, what: str):
    """A tensor of float64 from nested JSON lists of numbers, or one sentence saying what was wrong."""
    import torch

    try:
        if isinstance(value, (str, dict)) or value is None:
            raise TypeError
        return torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Expected {what} as nested lists of numbers of even length, but got {value!r:.80}.") from None


def _json_prior(model, p):
    import torch

    from .distributions.gmm import GaussianMixture

    if model.is_parametric:  # a parametric prior: {"alpha": 2.0, "beta": 1.5}, in the model's parameter order
        names = list(model.config.prior_parameters)
        if not isinstance(p, dict) or set(p) != set(names):
            raise ValueError(f"Expected 'prior' to give this model's prior parameters {names}, but got {p!r:.80}.")
        return torch.stack([_numbers(p[k], f"prior parameter {k!r}") for k in names])
    if not isinstance(p, dict) or not ({"weights", "logits"} & set(p)) or not {"loc", "covariance_matrix"} <= set(p):
        raise ValueError("Expected 'prior' as an object with 'weights' (or 'logits'), 'loc' and 'covariance_matrix', "
                         f"but got {p!r:.80}.")
    mix = {"weights": _numbers(p["weights"], "'weights'")} if "weights" in p else \
        {"logits": _numbers(p["logits"], "'logits'")}
    return GaussianMixture(**mix, loc=_numbers(p["loc"], "'loc'"),
                           covariance_matrix=_numbers(p["covariance_matrix"], "'covariance_matrix'"))


def _json_observations(model, observations):
    """A tensor for a one-source model, or a dict of tensors (one entry per source) for any model."""
    def points(value, what):
        z = _numbers(value, what)
        return z.unsqueeze(-1) if z.dim() == 1 else z  # a flat list of numbers: scalar observations

    if isinstance(observations, dict):
        sources = list(model.config.sources)
        if set(observations) != set(sources):
            raise ValueError(f"Expected 'observations' for the sources {sources}, but got {sorted(observations)}.")
        return {name: points(observations[name], f"observations {name!r}") for name in sources}
    return points(observations, "'observations'")


def _cmd_export(args: argparse.Namespace) -> int:
    import time

    from .zoo import load_named_or_path

    model = load_named_or_path(args.model)
    if args.format == "aoti":
        print(f"compiling {args.model} with AOTInductor{' and autotuning its matrix products' if args.autotune else ''}"
              f" (about {3 if args.autotune else 1} min on 2 cores) ...", flush=True)
    elif args.format == "onnx":
        print(f"exporting {args.model} with torch.onnx (about 30 s on 2 cores) ...", flush=True)
    start = time.perf_counter()
    path = model.export(args.out, format=args.format, num_components=args.num_components,
                        max_observations=args.max_observations, autotune=args.autotune)
    print(f"wrote {path} and {path}.json (the input contract) in {time.perf_counter() - start:.0f} s")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check

    run_check(args.model, num_problems=args.problems, out_dir=args.out_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distformer", description="Millisecond Bayesian posteriors under "
                                     "run-time priors (Distribution Transformers).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="shipped 2-D model on one data set under three priors, against the exact posterior")
    p.add_argument("--model", default="linear-gaussian-2d")
    p.add_argument("--out", default="demo.png", help="where to write the contour plot (PNG)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list the pretrained models shipped in the package")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model from a YAML TrainConfig")
    p.add_argument("config", help="YAML file with TrainConfig fields")
    p.add_argument("--out", required=True, help="model path stem: writes OUT.safetensors and OUT.json")
    p.add_argument("--checkpoint", help="checkpoint file (default OUT.ckpt.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again over an existing checkpoint or model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this much training time and save the model reached (its weight average)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (gloo on CPU, NCCL on GPU); see also torchrun")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="run a benchmark and write benchmarks/NAME.md")
    p.add_argument("name")
    p.add_argument("--quick", action="store_true", help="small run (seconds), for tests")
    p.add_argument("--out-dir", default="benchmarks")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="write the posterior update as a program that runs without distformer")
    p.add_argument("model", help="a shipped model name or a model path")
    p.add_argument("out", help="output file: .pt for TorchScript, .pt2 for an AOTInductor package, .onnx for ONNX")
    p.add_argument("--format", choices=["torchscript", "aoti", "onnx"], default="torchscript")
    p.add_argument("--num-components", type=int, default=None, help="K of the priors it takes (default: trained K)")
    p.add_argument("--max-observations", type=int, default=None,
                   help="observations per data set, padded with a mask (default: the most in training)")
    p.add_argument("--no-autotune", dest="autotune", action="store_false",
                   help="aoti: skip timing Inductor's kernels for each matrix product (export 3x faster, update slower)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("check", help="calibration report (coverage, SBC) of a model over its training family")
    p.add_argument("model", help="a shipped model name or a model path")
    p.add_argument("--problems", type=int, default=2000)
    p.add_argument("--out-dir", default="benchmarks")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("infer", help="posterior for one prior and data set given as JSON (stdin or a file)")
    p.add_argument("--model", default="linear-gaussian-2d", help="a shipped model name or a model path")
    p.add_argument("--input", default="-", help="JSON file with 'prior' and 'observations' (default: stdin)")
    p.set_defaults(func=_cmd_infer)

    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    if args.debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

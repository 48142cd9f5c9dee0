r"""Training loop: fresh simulations every step, NLL of the true parameter under the predicted posterior.

.. math::
    \ell(\theta) = \mathbb E_{p(\phi)p(x\mid\phi)p(z\mid x)}\big[-\log q_\theta(x\mid z,\phi)\big]
    \;+\; \lambda\,\mathbb E\big[-\log q_\theta(x\mid\phi)\big],

where the first term equals the expected KL(exact ‖ model) up to a constant (the paper's Prop. 3.1) and the
second (the prior loss, :math:`\lambda\in\{0,1\}`) is the NLL under the decoded prior. For GMM priors the decoded
prior is the prior itself (``nn/transformer.py``), so this term is constant there and matters for parametric
priors. Validation reports the NLL on a fixed seeded set and, where the problem has an exact posterior, the gap
NLL(model) − NLL(exact), an unbiased estimate of the expected KL(exact ‖ model).

Learning rate: :math:`\eta_t = \eta\,t/T_w` for :math:`t<T_w`, then
:math:`\eta\,[r + (1-r)\tfrac12(1+\cos(\pi\frac{t-T_w}{T-T_w}))]`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..nn.tokens import chart_to_gmm, gmm_to_chart
from ..nn.transformer import DistributionTransformer, ModelConfig
from ..problems import Problem, get
from ..problems.base import Batch
from ..diagnostics import calibration_summary
from ..nn.support import estimate_support
from ..timing import hardware
from ..zoo import load_named_or_path
from .averaging import WeightAverage
from .checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from .distributed import gather_rng_states, rank_zero_decides, world_size_and_rank, wrap_ddp
from .config import TrainConfig


def learning_rate(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Warm-up then cosine learning rate at (0-based) ``step``; with a time budget the cosine follows whichever is
    further along, the steps or ``time_fraction`` (the share of the budget spent), so it ends when the budget does."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min(max((step - config.warmup_steps) / span, time_fraction), 1.0)
    r = config.final_lr_ratio
    return config.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(problem: Problem, config: TrainConfig) -> DistributionTransformer:
    """A freshly initialised model for ``problem`` (seeded by ``config.seed``), or with ``config.init`` the weights
    of that saved model, whose configuration must match."""
    a = config.architecture
    model_config = ModelConfig(dim=problem.dim, sources=dict(problem.sources), num_components=problem.num_components,
                               **a.network_sizes(), encoder_layers=a.encoder_layers, warp=tuple(problem.warp),
                               prior_parameters=dict(problem.prior_parameters),
                               source_transforms=dict(problem.source_transforms),
                               relative_sources=dict(problem.relative_sources), anchor=_anchor(problem, a),
                               site_evidence=a.site_evidence, site_residual=a.site_residual,
                               bounded_prior_features=a.bounded_prior_features,
                               split_observations=problem.independent_observations,
                               scale_source=problem.scale_source if a.anchored else "",
                               scale_parameter=problem.scale_parameter if a.anchored else "")
    if config.init is not None:  # the saved model itself: no fresh initialisation to overwrite
        model = load_named_or_path(config.init)
        if config.init_blocks is not None:
            model = keep_blocks(model, config.init_blocks)
        if model.config.to_dict() != model_config.to_dict():
            raise ValueError(f"Expected init {config.init!r} to have the model configuration this TrainConfig builds "
                             f"({model_config.to_dict()}), but it has {model.config.to_dict()}.")
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return DistributionTransformer(model_config)


def _anchor(problem: Problem, architecture) -> str:
    if not architecture.anchored:
        return ""
    if not (problem.location_source or problem.scale_source):
        raise ValueError(f"Expected a location or scale problem (one with a location_source or scale_source) for "
                         f"architecture.anchored, but problem {problem.name!r} has neither.")
    return problem.location_source


def keep_blocks(model: DistributionTransformer, blocks: Sequence[int]) -> DistributionTransformer:
    """A copy of ``model`` with only its decoder blocks ``blocks`` (indices, in that order) and every other weight
    as it is: the start of a shallower model fine-tuned from a deeper one (``TrainConfig.init_blocks``)."""
    depth = model.config.num_layers
    if any(not 0 <= i < depth for i in blocks):
        raise ValueError(f"Expected init_blocks among the init model's {depth} decoder blocks 0..{depth - 1}, but got "
                         f"{list(blocks)}.")
    config = dataclasses.replace(model.config, num_layers=len(blocks))
    shallow = DistributionTransformer(config, model.card)
    state = model.state_dict()
    for j, i in enumerate(blocks):
        for name, value in model.blocks[i].state_dict().items():
            state[f"blocks.{j}.{name}"] = value
    state = {k: v for k, v in state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < len(blocks)}
    shallow.load_state_dict(state)
    return shallow


def batch_loss(model: DistributionTransformer, batch: Batch, prior_loss: bool,
               forward=None, draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean NLL of the true parameter under the posterior (plus the prior loss); returns (loss, posterior NLL).

    With ``draws`` ``(M, B, D)`` from each problem's exact posterior (``TrainConfig.posterior_draws``) the
    posterior NLL is their mean instead of the generating parameter's; the prior loss still scores ``batch.theta``.

    The NLL is on the original space: for a model with a warp :math:`f` it is
    :math:`-\log q(f(x)) - \log|f'(x)|`, whose gradient is that of the warped-space NLL. Parametric priors go
    through the model's prior encoder, or its tabulated fit where the config names one (``prior_fit``).
    ``forward`` runs the network (default ``model``; a ``DistributedDataParallel`` wrapper under DDP)."""
    if torch.is_tensor(batch.prior) and model.config.prior_fit:  # a tabulated fit: what the network reads
        chart = model._encoded_prior_chart(batch.prior)
    elif torch.is_tensor(batch.prior):
        chart = model.encode_prior(batch.prior.float())
    else:
        chart = gmm_to_chart(batch.prior).float()
    theta = batch.theta.float()
    warp = model.warp
    target = theta if warp is None else warp.forward(theta)
    jacobian = 0.0 if warp is None else warp.log_abs_det_jacobian(theta)
    posterior = chart_to_gmm((forward or model)(chart, batch.observations), model.dim)
    if draws is None:
        nll = -(posterior.log_prob(target) + jacobian).mean()
    else:
        drawn = (draws if warp is None else warp.forward(draws)).float()  # warped in the draws' own precision
        jacobian = 0.0 if warp is None else warp.log_abs_det_jacobian(draws).float()
        nll = -(posterior.log_prob(drawn) + jacobian).mean()
    loss = nll
    if prior_loss:
        loss = loss - chart_to_gmm(chart, model.dim).log_prob(target).mean()
    return loss, nll


@torch.no_grad()
def evaluate(model: DistributionTransformer, problem: Problem, batch: Batch) -> dict[str, float]:
    """Validation metrics on a fixed batch: model NLL, and exact NLL and their gap where an exact posterior exists."""
    was_training = model.training
    model.eval()
    _, nll = batch_loss(model, batch, prior_loss=False)
    model.train(was_training)
    metrics = {"val_nll": float(nll)}
    if problem.has_exact_posterior:
        exact = problem.exact_posterior(batch.prior.to(torch.float64), batch.observations)
        exact_nll = float(-exact.log_prob(batch.theta.to(torch.float64)).mean())
        metrics |= {"val_exact_nll": exact_nll, "val_kl": float(nll) - exact_nll}
    return metrics


def train(problem: Problem | str, config: TrainConfig | None = None, *, checkpoint: str | Path | None = None,
          resume: bool = False, progress: bool = True,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          time_budget: float | None = None) -> DistributionTransformer:
    """Train a Distribution Transformer on ``problem``.

    Args:
        problem: a :class:`~distformer.problems.Problem` or a registered name (built with ``config.problem``).
        config: optimisation settings (default ``TrainConfig()``).
        checkpoint: file for periodic checkpoints (every ``config.checkpoint_every`` steps and at the end).
        resume: continue from ``checkpoint`` exactly where it stopped (weights, optimizer, data RNG, step).
        progress: show a progress bar with the loss and validation metrics.
        callback: called as ``callback(step, metrics)`` after each validation.
        time_budget: seconds of training (this run and any it resumes) after which it stops cleanly, validates,
            checkpoints and returns the model (its weight average), as if ``steps`` had been reached; the learning
            rate's cosine then ends with the budget. The card records the steps done. A run stopped by its budget
            follows the clock, so it is not bit-for-bit reproducible.

    Under ``torch.distributed`` (initialised by the caller, ``torchrun``, or ``distformer train --nproc``) the
    model is wrapped in ``DistributedDataParallel``; each process simulates its share of ``config.data_shards``;
    only rank 0 validates, reports progress and writes checkpoints.

    Returns:
        The trained model (its weight average if ``config.weight_average_decay`` is set), in eval mode, with
        ``model.card`` describing the run.
    """
    config = config or TrainConfig()
    if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(time_budget, (int, float))
                                    or not time_budget > 0):
        raise ValueError(f"Expected time_budget to be a positive number of seconds or None, but got {time_budget!r}.")
    if isinstance(problem, str):
        problem = get(problem, **dict(config.problem.options))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.posterior_draws and not problem.has_exact_posterior:
        raise ValueError(f"Expected a problem with an exact posterior for posterior_draws={config.posterior_draws}, "
                         f"but {type(problem).__name__} has none; set posterior_draws to 0.")
    model = build_model(problem, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.weight_average_decay) if config.weight_average_decay else None
    world, rank = world_size_and_rank()
    if config.data_shards % world:
        raise ValueError(f"Expected data_shards divisible by the number of processes, but got {config.data_shards} "
                         f"shards for {world} processes.")
    shard_rngs = [torch.Generator().manual_seed(config.seed + 1 + 7919 * i) for i in range(config.data_shards)]
    mine = range(rank * config.data_shards // world, (rank + 1) * config.data_shards // world)
    per_shard = config.batch_size // config.data_shards
    forward = wrap_ddp(model) if world > 1 else model
    progress = progress and rank == 0
    val_batch = problem.sample_batch(config.validation_size, generator=torch.Generator().manual_seed(config.seed + 2))
    start, elapsed, history = 0, 0.0, []
    if resume:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"Expected a checkpoint to resume from, but {checkpoint} does not exist.")
        tensors, metadata = load_checkpoint(checkpoint)
        meta = json.loads(metadata["meta"])
        if TrainConfig.from_dict(meta["config"]).to_dict() != config.to_dict():  # defaults of newer fields filled in
            raise ValueError("Expected the same TrainConfig as the checkpoint to resume exactly, but they differ.")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        restore_optimizer(optimizer, tensors, metadata)
        if average is not None:
            average.load_state_dict({k[len("average."):]: v for k, v in tensors.items() if k.startswith("average.")})
        for i, rng in enumerate(shard_rngs):
            rng.set_state(tensors["rng.data" if i == 0 else f"rng.data.{i}"])
        start, elapsed, history = meta["step"], meta["elapsed_s"], meta["history"]

    def save(step: int) -> None:
        if checkpoint is None:
            return
        states = gather_rng_states({i: shard_rngs[i].get_state() for i in mine}, world)
        if rank == 0:
            save_checkpoint(checkpoint, model, optimizer, [states[i] for i in range(config.data_shards)], {
                "config": config.to_dict(), "step": step, "elapsed_s": elapsed, "history": history},
                average.state_dict() if average is not None else None)

    stocks: dict[int, list] = {i: [] for i in mine}  # each shard's problems simulated ahead (simulate_ahead)
    result = model if average is None else average.model  # what is validated and returned
    bar = _progress(config.steps, start, progress)
    model.train()
    t0 = time.perf_counter()
    last = start
    for step in range(start, config.steps):
        spent = (elapsed + time.perf_counter() - t0) / time_budget if time_budget else 0.0
        if time_budget and rank_zero_decides(spent >= 1.0, world):
            break
        lr = learning_rate(step, config, spent)
        for group in optimizer.param_groups:
            group["lr"] = lr
        shards = [_stocked(problem, per_shard, shard_rngs[i], config.posterior_draws, stocks[i],
                           config.simulate_ahead - step % config.simulate_ahead) for i in mine]
        batch = Batch.concat([b for b, _ in shards])
        draws = torch.cat([d for _, d in shards], 1) if config.posterior_draws else None
        loss, nll = batch_loss(model, batch, config.prior_loss, forward, draws)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Expected a finite training loss, but got {float(loss)} at step {step}; "
                                     "lower lr or grad_clip.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        done = last = step + 1
        if average is not None:
            average.update(done)
        if rank == 0 and (done % config.validate_every == 0 or done == config.steps):
            metrics = {"step": done, "train_nll": nll.item()} | evaluate(result, problem, val_batch)
            metrics["elapsed_s"] = elapsed + time.perf_counter() - t0
            history.append(metrics)
            if callback is not None:
                callback(done, metrics)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k.startswith("val_")})
        if bar is not None:
            bar.update(1)
            if done % 50 == 0:
                bar.set_description(f"loss {nll.item():.4f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            now = time.perf_counter()
            elapsed += now - t0
            t0 = now
            save(done)
    elapsed += time.perf_counter() - t0
    if start < last < config.steps:  # stopped by the time budget: validate and checkpoint where it stopped
        if rank == 0 and last % config.validate_every:
            history.append({"step": last, "train_nll": nll.item()} | evaluate(result, problem, val_batch)
                           | {"elapsed_s": elapsed})
        if last % config.checkpoint_every:
            save(last)
    if bar is not None:
        bar.close()
    model.eval()
    result.eval()
    result.card = model_card(result, problem, config, last, elapsed, history, calibrate=rank == 0)
    result.card["training"]["time_budget_s"] = time_budget
    result.__dict__["_card_problem"] = problem  # its likelihood for check="importance" in this session (not saved)
    return result


def model_card(model: DistributionTransformer, problem: Problem | None, config: TrainConfig, steps: int,
               elapsed: float, history: list, calibrate: bool = True) -> dict:
    """The card of a model trained by ``config`` for ``steps`` steps in ``elapsed`` seconds: the problem, sizes, the
    training support and calibration on fresh simulations of ``problem`` (both skipped where it is ``None``), and
    the run (config, time, samples, hardware, last validation)."""
    card = {
        "problem": problem.describe() if problem is not None else {"name": config.problem.name},
        "num_components": model.config.num_components,
        "num_parameters": model.num_parameters(),
        "training": {
            "config": config.to_dict(),
            "time_s": round(elapsed, 1),
            "samples": steps * config.batch_size,
            "steps_done": steps,
            "hardware": hardware(),
            "final_validation": history[-1] if history else None,
        },
    }
    if problem is not None:
        card["support"] = estimate_support(problem, generator=torch.Generator().manual_seed(config.seed + 3),
                                           model=model).to_dict()
        if config.calibration_size and calibrate:
            card["calibration"] = calibration_summary(
                model, problem, config.calibration_size, torch.Generator().manual_seed(config.seed + 4))
    return card


def _shard(problem: Problem, n: int, generator: torch.Generator, draws: int) -> tuple[Batch, torch.Tensor | None]:
    """One shard of simulated problems and, for ``draws > 0``, ``(draws, n, D)`` draws from their exact posteriors,
    both from ``generator``."""
    batch = problem.sample_batch(n, generator=generator)
    if not draws:
        return batch, None
    prior = batch.prior.double() if torch.is_tensor(batch.prior) else batch.prior.to(torch.float64)
    # float64: a heavy-tailed posterior's float32 draws can underflow to 0 or overflow, whose log is infinite
    return batch, problem.exact_posterior(prior, batch.observations).sample((draws,), generator=generator)


def _stocked(problem: Problem, n: int, generator: torch.Generator, draws: int, stock: list,
             ahead: int) -> tuple[Batch, torch.Tensor | None]:
    """The next shard from ``stock``; an empty stock is first refilled with ``ahead`` shards simulated in one call
    (``TrainConfig.simulate_ahead``: ``ahead`` is the steps left to the next multiple of it). With ``ahead = 1``
    this is :func:`_shard`, the same draws."""
    if stock:
        return stock.pop(0)
    if ahead == 1:
        return _shard(problem, n, generator, draws)
    batch, target = _shard(problem, n * ahead, generator, draws)
    for j in range(ahead):
        rows = slice(j * n, (j + 1) * n)
        stock.append((Batch(batch.prior[rows], batch.theta[rows], batch.observations.slice(j * n, (j + 1) * n)),
                      None if target is None else target[:, rows]))
    return stock.pop(0)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=1.0)

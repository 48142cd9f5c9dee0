"""Training configuration: frozen dataclasses that round-trip through plain dicts and YAML.

Example YAML (``distformer train CONFIG``)::

    problem: {name: linear-gaussian, options: {dim: 2}}
    architecture: {d_model: 64, num_heads: 4, num_layers: 3, ff_dim: 256, hidden: 64}
    steps: 20000
    batch_size: 512
    lr: 0.001
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..nn.sizes import NetworkSizes


@dataclass(frozen=True)
class ProblemConfig:
    """Which problem to simulate: ``distformer.problems.get(name, **options)``, or, with ``factory`` (a
    ``"package.module:function"`` string), the problem that function returns for ``**options``: a problem of the
    user's own, importable where training runs. ``build()`` makes it."""

    name: str = "linear-gaussian"
    options: Mapping[str, Any] = field(default_factory=dict)
    factory: str | None = None

    def build(self):
        """The :class:`~distformer.problems.Problem` this config names."""
        from ..problems import get
        from ..problems.registry import from_factory

        return from_factory(self.factory, **dict(self.options)) if self.factory else get(self.name,
                                                                                          **dict(self.options))


@dataclass(frozen=True)
class ArchitectureConfig(NetworkSizes):
    """The network's sizes (``nn/sizes.py``) and structure; the latent dimension, sources and ``K`` come from the
    problem."""

    encoder_layers: int = 0  # self-attention blocks over the observation tokens (ModelConfig.encoder_layers)
    anchored: bool = False  # centre on the problem's location source (ModelConfig.anchor); needs a location problem
    site_evidence: bool = False  # ModelConfig.site_evidence
    site_residual: bool = True  # ModelConfig.site_residual
    bounded_prior_features: bool = False  # ModelConfig.bounded_prior_features


@dataclass(frozen=True)
class TrainConfig:
    r"""Optimisation and bookkeeping for :func:`distformer.train`.

    Learning rate: linear warm-up over ``warmup_steps`` to ``lr``, then cosine decay to ``lr * final_lr_ratio``
    at ``steps``. AdamW with ``weight_decay``; gradients clipped to global norm ``grad_clip``.

    Weights: with ``weight_average_decay`` :math:`\beta \in (0, 1)` the run keeps an exponential moving average
    of the weights (``averaging.py``), validates it and returns it; ``0`` (the default) returns the last weights.

    Start: ``init`` names a shipped model or a saved model's path stem whose weights the run starts from instead of
    a fresh initialisation (fine-tuning, e.g. a lower ``lr`` with the weight average); its ``ModelConfig`` must be
    the one this config builds. The card records it. Loading reads safetensors and JSON only. ``init_blocks``
    (with ``init``) keeps only those decoder blocks of the saved model, in that order, for a shallower model that
    starts from the deeper one's weights (``architecture.num_layers`` must equal their number): a block is a
    residual update, so the rest of the network still reads what it was trained on.

    Target draws: with ``posterior_draws`` :math:`M > 0` (problems with an exact posterior only), each simulated
    data set is scored at :math:`M` draws from its exact posterior instead of at the one parameter that generated
    it. The expected loss is the same, :math:`\mathbb E_z\,\mathbb E_{x\mid z}[-\log q(x\mid z)]`, but the noise
    from the parameter given the data falls :math:`M`-fold for the price of one forward pass per data set, which
    is what limits SGD once the model is close to exact.

    Calibration: after training, the card records coverage at 50/80/95% and SBC rank uniformity on
    ``calibration_size`` fresh simulations (``diagnostics.calibration_summary``; 0 skips it).

    Data: each step's batch is ``data_shards`` equal shards, shard ``i`` simulated from its own generator (seed
    ``seed + 1 + 7919 i``). Under distributed training each process simulates only its shards, so the global batch,
    and hence the run, is the same for any number of processes that divides ``data_shards``. With
    ``simulate_ahead`` :math:`A > 1` each shard's simulator is called once every :math:`A` steps, for those steps'
    problems together, and each step takes its share: for a simulator whose cost is per call rather than per
    problem (an ODE solved for the whole batch at once, Python loops over time steps), that is up to :math:`A`
    times fewer calls. The problems are drawn the same way, so the training distribution is the same; the draws
    are not those of :math:`A = 1`. Each stock ends at a multiple of :math:`A` steps, and ``checkpoint_every`` must
    be one, so a periodic checkpoint never falls inside a stock and resuming from it is exact. (The checkpoint a
    time budget writes where it stops may fall inside one; a run resumed from it simulates the rest afresh.)
    """

    problem: ProblemConfig = field(default_factory=ProblemConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    steps: int = 20000
    batch_size: int = 512
    lr: float = 1e-3
    warmup_steps: int = 500
    final_lr_ratio: float = 0.01
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    prior_loss: bool = True
    seed: int = 0
    validation_size: int = 2048
    validate_every: int = 500
    checkpoint_every: int = 1000
    num_threads: int | None = None
    data_shards: int = 1
    weight_average_decay: float = 0.0
    init: str | None = None
    init_blocks: tuple[int, ...] | None = None
    posterior_draws: int = 0
    calibration_size: int = 1000
    simulate_ahead: int = 1

    def __post_init__(self) -> None:
        _check_types(self, INT_FIELDS, FLOAT_FIELDS, BOOL_FIELDS)
        if not self.grad_clip > 0 or self.weight_decay < 0 or (self.num_threads is not None and self.num_threads < 1):
            raise ValueError(f"Expected grad_clip > 0, weight_decay >= 0 and num_threads >= 1 (or null), but got "
                             f"{self.grad_clip}, {self.weight_decay} and {self.num_threads}.")
        for name in ("steps", "batch_size", "validation_size", "validate_every", "checkpoint_every", "data_shards",
                     "simulate_ahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, but got {getattr(self, name)}.")
        if self.calibration_size < 0:
            raise ValueError(f"Expected calibration_size >= 0 (0 skips the card's calibration), but got "
                             f"{self.calibration_size}.")
        if self.posterior_draws < 0:
            raise ValueError(f"Expected posterior_draws >= 0 (0 scores the generating parameter), but got "
                             f"{self.posterior_draws}.")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"Expected lr > 0, warmup_steps >= 0 and 0 <= final_lr_ratio <= 1, but got "
                             f"{self.lr}, {self.warmup_steps}, {self.final_lr_ratio}.")
        if not 0.0 <= self.weight_average_decay < 1.0:
            raise ValueError(f"Expected 0 <= weight_average_decay < 1 (0 switches the average off), but got "
                             f"{self.weight_average_decay}.")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ValueError(f"Expected init to be a shipped model name or a model path stem, but got {self.init!r}.")
        if self.init_blocks is not None:
            blocks = tuple(self.init_blocks)
            if self.init is None or not all(isinstance(i, int) and i >= 0 for i in blocks) \
                    or len(set(blocks)) != len(blocks) or len(blocks) != self.architecture.num_layers:
                raise ValueError(f"Expected init_blocks to list architecture.num_layers={self.architecture.num_layers} "
                                 f"distinct block indices >= 0 of the init model, with init set, but got "
                                 f"{self.init_blocks!r} with init={self.init!r}.")
            object.__setattr__(self, "init_blocks", blocks)
        if self.checkpoint_every % self.simulate_ahead:
            raise ValueError(f"Expected checkpoint_every to be a multiple of simulate_ahead, so that no checkpoint "
                             f"falls inside a stock of simulations, but got {self.checkpoint_every} and "
                             f"{self.simulate_ahead}.")
        if self.batch_size % self.data_shards:
            raise ValueError(f"Expected batch_size divisible by data_shards, but got {self.batch_size} and "
                             f"{self.data_shards}.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["problem"]["options"] = dict(self.problem.options)
        if self.init_blocks is not None:
            data["init_blocks"] = list(self.init_blocks)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        data = dict(data)
        _check_fields(cls, data, "TrainConfig")
        if "problem" in data:
            _check_fields(ProblemConfig, data["problem"], "problem")
            data["problem"] = ProblemConfig(**data["problem"])
        if "architecture" in data:
            _check_fields(ArchitectureConfig, data["architecture"], "architecture")
            data["architecture"] = ArchitectureConfig(**data["architecture"])
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "TrainConfig":
        """A config from a ``.yaml``/``.yml`` file, or from YAML text (anything that contains a newline or a
        colon); a path with another suffix is refused rather than parsed as text."""
        raw = str(path_or_text)
        is_path = isinstance(path_or_text, Path) or ("\n" not in raw and ":" not in raw)
        if is_path and Path(raw).suffix not in {".yaml", ".yml"}:
            raise ValueError(f"Expected a config file ending in .yaml or .yml, but got {raw!r}.")
        text = Path(raw).read_text() if Path(raw).suffix in {".yaml", ".yml"} and "\n" not in raw else raw
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a YAML mapping of TrainConfig fields, but got {type(data).__name__}.")
        return cls.from_dict(data)


INT_FIELDS = ("steps", "batch_size", "warmup_steps", "seed", "validation_size", "validate_every", "checkpoint_every",
              "data_shards", "num_threads", "posterior_draws", "calibration_size", "simulate_ahead")
FLOAT_FIELDS = ("lr", "final_lr_ratio", "weight_decay", "grad_clip", "weight_average_decay")
BOOL_FIELDS = ("prior_loss",)


def _check_types(config, ints, floats, bools) -> None:
    """Every numeric field of ``config`` an int or float as declared: numeric strings such as ``"1e-3"`` (how
    PyYAML reads exponents without a dot) become floats; anything else raises one sentence naming the field."""
    for name in floats:
        value = getattr(config, name)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"Expected {name} to be a number, but got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Expected {name} to be a number, but got {value!r}.")
        object.__setattr__(config, name, float(value))
    for name in ints:
        value = getattr(config, name)
        if value is None and name == "num_threads":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"Expected {name} to be a whole number, but got {value!r}.")
        object.__setattr__(config, name, value)
    for name in bools:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"Expected {name} to be true or false, but got {getattr(config, name)!r}.")


def _check_fields(cls, data: Any, what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"Expected {what} to be a mapping, but got {type(data).__name__}.")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"Expected {what} fields among {sorted(f.name for f in dataclasses.fields(cls))}, but got "
                         f"unknown {sorted(unknown)}.")

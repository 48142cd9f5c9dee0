r"""The Distribution Transformer: a GMM prior and observations in, a GMM posterior out.

Forward pass for a prior with chart vectors :math:`c_{1..K}` (``tokens.py``) and observation tokens :math:`m`:

.. math::
    h^{(0)}_k = \mathrm{MLP}_{\text{prior}}(c_k),\qquad h^{(\ell)} = \mathrm{Block}_\ell(h^{(\ell-1)}, m),\qquad
    c'_k = \mathrm{Site}\big(c_k, \mathrm{Head}(\mathrm{LN}(h^{(L)}_k))\big),

and the posterior is the mixture decoded from :math:`c'`. ``Site`` (``site.py``) multiplies each prior component
by a Gaussian site emitted by its token (an additive update of natural parameters) and adds a chart residual.
This differs from the paper, which decodes the posterior chart from the token alone: the prior is carried by
the exact chart, so the decoded prior *is* the prior and posteriors can be fed back as priors without a lossy
re-encoding. The output is equivariant to permuting components and invariant to permuting observations; ``K``
at inference may differ from the ``K`` used in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..distributions.gmm import GaussianMixture
from ..distributions.linalg import broadcast_shapes
from ..observations import Observations, as_observations
from .embeddings import MLP, SourceEmbedding
from .layers import DecoderBlock, layer_norm
from .site import apply_site, head_size
from .tokens import chart_size, chart_to_gmm, gmm_to_chart


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a :class:`DistributionTransformer`.

    Attributes:
        dim: latent dimension ``D``.
        sources: observation sources, name -> dimension ``E_s`` of one observation.
        num_components: ``K`` used in training (any ``K`` works at inference).
        d_model, num_heads, num_layers, ff_dim: decoder sizes.
        hidden: hidden width of the embedding MLPs.
    """

    dim: int
    sources: Mapping[str, int] = field(default_factory=lambda: {"z": 1})
    num_components: int = 4
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    ff_dim: int = 256
    hidden: int = 64

    def __post_init__(self) -> None:
        if self.dim < 1 or self.num_components < 1 or self.num_layers < 0:
            raise ValueError(f"Expected dim >= 1, num_components >= 1 and num_layers >= 0, but got {self}.")
        if not self.sources:
            raise ValueError("Expected at least one observation source, but got none.")
        object.__setattr__(self, "sources", {str(k): int(v) for k, v in dict(self.sources).items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Expected ModelConfig fields {sorted(cls.__dataclass_fields__)}, but got unknown "
                             f"{sorted(unknown)}.")
        return cls(**data)


class DistributionTransformer(nn.Module):
    """Maps (GMM prior, observations) to a GMM posterior; see the module docstring for the equations."""

    chunk_size: int = 1024  # problems per forward pass in ``posterior`` for large batches

    def __init__(self, config: ModelConfig, card: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.card: dict[str, Any] = dict(card or {})
        c = chart_size(config.dim)
        self.prior_embedding = MLP([c, config.hidden, config.d_model])
        self.sources = nn.ModuleDict({
            name: SourceEmbedding(e, config.d_model, config.hidden) for name, e in config.sources.items()
        })
        self.memory_norm = nn.LayerNorm(config.d_model)
        self.blocks = nn.ModuleList([
            DecoderBlock(config.d_model, config.num_heads, config.ff_dim) for _ in range(config.num_layers)
        ])
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = MLP([config.d_model, config.hidden, head_size(config.dim)])
        nn.init.zeros_(self.head.last.weight)
        nn.init.zeros_(self.head.last.bias)

    @property
    def dim(self) -> int:
        return self.config.dim

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, chart: Tensor, observations: Observations) -> Tensor:
        """Posterior chart ``(B, K, C)`` from prior chart ``(B, K, C)`` and observations with batch ``(B,)``."""
        tokens, masks = [], []
        for name, embed in self.sources.items():
            t, m = embed(observations.values[name], observations.masks[name])
            tokens.append(t)
            masks.append(m)
        memory = layer_norm(self.memory_norm, torch.cat(tokens, dim=1))
        key_mask = torch.cat(masks, dim=1)
        h = self.prior_embedding(chart)
        for block in self.blocks:
            h = block(h, memory, key_mask)
        return apply_site(chart, self.head(layer_norm(self.final_norm, h)), self.dim)

    @property
    def support(self):
        """The training support recorded in the card (``support.py``), or ``None`` for a card without one."""
        from ..support import TrainingSupport

        data = self.card.get("support")
        cached = self.__dict__.get("_support")
        if cached is None or cached[0] is not data:
            cached = (data, None if data is None else TrainingSupport.from_dict(data))
            self.__dict__["_support"] = cached
        return cached[1]

    def posterior(self, prior: GaussianMixture, observations, mask=None, *, grad: bool = False,
                  strict: bool = False, check: bool = True) -> GaussianMixture:
        """Approximate posterior ``p(x | observations)`` under ``prior``.

        Args:
            prior: ``GaussianMixture`` with ``event_shape == (D,)`` and any batch shape ``B`` and ``K``.
            observations: tensor ``(*B, N, E)`` for single-source models, a dict ``source -> (*B, N_s, E_s)``,
                or :class:`~distformer.Observations`; ``B`` broadcasts against the prior's batch shape.
            mask: optional booleans ``(*B, N)`` (or a dict of them), ``True`` where an observation is present.
            grad: track gradients (default: run under ``torch.inference_mode``).
            strict: raise ``ValueError`` instead of warning when the prior or data lie outside the training
                family recorded in ``model.card["support"]``.
            check: run that out-of-family check at all (it warns once per kind of violation).

        Returns:
            ``GaussianMixture`` with the broadcast batch shape, ``K`` components and the prior's dtype. A data set
            with no present observation (all masked, or ``N = 0``) gets its prior back exactly.
        """
        if not isinstance(prior, GaussianMixture):
            raise TypeError(f"Expected prior to be a distformer.GaussianMixture, but got {type(prior).__name__}.")
        if prior.dim != self.dim:
            raise ValueError(f"Expected a prior over D={self.dim} dimensions for this model, but got D={prior.dim}.")
        obs = as_observations(observations, self.config.sources, mask)
        try:
            batch = broadcast_shapes(prior.batch_shape, obs.batch_shape)
        except RuntimeError:
            raise ValueError(f"Expected the prior's batch shape {tuple(prior.batch_shape)} to broadcast with the "
                             f"observations' {tuple(obs.batch_shape)}.") from None
        weight = self.prior_embedding.last.weight
        context = torch.enable_grad() if grad else torch.inference_mode()
        with context:
            chart = gmm_to_chart(prior)
            K, C = chart.shape[-2:]
            if chart.shape[:-2] != batch:
                chart = chart.expand(*batch, K, C)
                obs = obs.expand(batch)
            chart = chart.reshape(-1, K, C)
            flat_obs = obs.reshape((chart.shape[0],))
            if chart.dtype != weight.dtype or chart.device != weight.device:
                chart = chart.to(dtype=weight.dtype, device=weight.device)
            flat_obs = flat_obs.to(dtype=weight.dtype, device=weight.device)
            present = flat_obs.any_present()
            if present is None:  # every data set has observations: the common, fast path
                out = self._decode(chart, flat_obs, grad, strict, check)
            else:  # only data sets with observations go through the network
                rows = present.nonzero().squeeze(-1)
                out = chart.clone()
                if rows.numel():
                    out[rows] = self._decode(chart[rows], flat_obs.index(rows), grad, strict, check)
            out = out.reshape(*batch, K, C)
            posterior = chart_to_gmm(out if out.dtype == prior.dtype else out.to(prior.dtype), self.dim)
            if present is None:
                return posterior
            # a data set without any observation keeps its prior exactly: p(x | {}) = p(x)
            keep = present.reshape(batch).to(posterior.device)
            prior = prior.expand(batch)
            return GaussianMixture(
                logits=torch.where(keep[..., None], posterior.log_weights, prior.log_weights),
                loc=torch.where(keep[..., None, None], posterior.loc, prior.loc),
                scale_tril=torch.where(keep[..., None, None, None], posterior.scale_tril, prior.scale_tril),
                validate_args=False)

    def _decode(self, chart: Tensor, obs: Observations, grad: bool, strict: bool, check: bool) -> Tensor:
        """The network's posterior chart ``(n, K, C)`` for charts ``(n, K, C)`` and a flat batch of data sets."""
        support = self.support if check else None
        if support is not None:
            support.check(chart, obs, strict, self.__dict__.setdefault("_warned", set()))
        forward = self.forward if grad else self._inference_forward()
        size = chart.shape[0]
        if size <= self.chunk_size:
            out = forward(chart, obs)
        else:  # chunks keep the activations in cache: faster for large batches, same result
            out = torch.cat([forward(chart[i:i + self.chunk_size], obs.slice(i, i + self.chunk_size))
                             for i in range(0, size, self.chunk_size)])
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError("Expected the model to produce a finite posterior, but it produced NaN or "
                                     "inf; the prior or the data are probably far outside its training family "
                                     f"({self.card.get('problem', {}).get('meta_prior', 'see model.card')}).")
        return out

    def _inference_forward(self):
        """``forward`` traced with TorchScript (once per dtype and device), falling back to eager ``forward``.

        At batch size 1 the eager forward pass spends most of its time in Python dispatch; the traced graph runs
        the same operators (shapes stay symbolic, so any batch size, ``K`` and ``N`` work) in about half the time.
        """
        weight = self.prior_embedding.last.weight
        key = (weight.dtype, weight.device)
        cache = self.__dict__.setdefault("_traced", {})  # kept out of the module tree and the state dict
        if key not in cache:
            cache[key] = self._trace(weight)
        traced = cache[key]
        if traced is None:
            return self.forward
        names = list(self.config.sources)
        return lambda chart, obs: traced(chart, *[obs.values[n] for n in names], *[obs.masks[n] for n in names])

    def _trace(self, weight: Tensor):
        import warnings

        names = list(self.config.sources)
        model = self

        class _Flat(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, chart, *tensors):
                values, masks = tensors[:len(names)], tensors[len(names):]
                return self.model(chart, Observations(dict(zip(names, values)), dict(zip(names, masks))))

        c = chart_size(self.dim)
        chart = torch.zeros(2, 3, c, dtype=weight.dtype, device=weight.device)
        values = [torch.zeros(2, 5, e, dtype=weight.dtype, device=weight.device) for e in self.config.sources.values()]
        masks = [torch.ones(2, 5, dtype=torch.bool, device=weight.device) for _ in names]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.trace(_Flat(), (chart, *values, *masks), check_trace=False)
        except Exception:  # tracing is an optimisation only; eager forward is always correct
            return None

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_traced", None)  # dtype or device changes: trace again on next use
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self.__dict__.pop("_traced", None)
        return super().train(mode)

    def export(self, path, format: str = "torchscript", num_components: int | None = None,
               max_observations: int = 20):
        """Write the posterior update as a TorchScript program that runs with ``torch`` alone (see ``export.py``)."""
        from .export import export_update

        return export_update(self, path, format=format, num_components=num_components,
                             max_observations=max_observations)

    # serialisation lives in training/checkpoint.py; these are the public entry points
    def save(self, path) -> None:
        """Write ``path.safetensors`` (weights) and ``path.json`` (config and model card); never pickles."""
        from ..training.checkpoint import save_model

        save_model(self, path)

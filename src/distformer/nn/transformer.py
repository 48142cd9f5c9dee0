r"""The Distribution Transformer: a GMM prior and observations in, a GMM posterior out.

Forward pass for a prior with chart vectors :math:`c_{1..K}` (``tokens.py``) and observation tokens :math:`m`:

.. math::
    h^{(0)}_k = \mathrm{MLP}_{\text{prior}}(c_k),\qquad h^{(\ell)} = \mathrm{Block}_\ell(h^{(\ell-1)}, m),\qquad
    c'_k = \mathrm{Site}\big(c_k, \mathrm{Head}(\mathrm{LN}(h^{(L)}_k))\big),

and the posterior is the mixture decoded from :math:`c'`. With ``encoder_layers > 0`` the observation tokens first
go through that many ``layers.EncoderBlock`` (self-attention among observations) before they form :math:`m`.
``Site`` (``site.py``) multiplies each prior component by a Gaussian site emitted by its token (an additive
update of natural parameters) and adds a chart residual.
This differs from the paper, which decodes the posterior chart from the token alone: the prior is carried by
the exact chart, so the decoded prior *is* the prior and posteriors can be fed back as priors without a lossy
re-encoding. The output is equivariant to permuting components and invariant to permuting observations; ``K``
at inference may differ from the ``K`` used in training.

Parametric priors (the paper's prior embedding): a prior that is not a GMM, given by its parameters
:math:`\phi\in\mathbb R^P`, is first mapped to ``K`` chart vectors,
:math:`[c_1,\dots,c_K] = \mathrm{MLP}_{\phi}(g(\phi))` with :math:`g` the parameters' warp (log for positive ones),
whose weight logits are normalised, :math:`\ell_k \leftarrow \ell_k - \log\sum_j e^{\ell_j}` (``prior_logits``), and
then goes through the same decoder. The decoded chart is the model's GMM fit to the prior
(``prior_approximation``), trained by the prior loss. Where a prior family has a tabulated mixture fit
(``prior_fit``; the inverse-gamma's is exact to about 1e-5 nats for :math:`\alpha \ge 0.5`), the network reads that fit
instead, and the learned encoder is not used. Latents with a warp :math:`f` (log, logit;
``distributions/transforms.py``) are modelled as a GMM on :math:`f(x)`, and ``posterior`` returns a
:class:`~distformer.distributions.transforms.WarpedGaussianMixture` on the original space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..distributions.gmm import GaussianMixture
from ..distributions.transforms import Warp, WarpedGaussianMixture
from ..observations import Observations
from .embeddings import MLP, SOURCE_TRANSFORMS, SourceEmbedding, observation_tokens
from .layers import DecoderBlock, EncoderBlock, layer_norm
from .site import apply_site, head_size
from .sizes import NetworkSizes
from .structure import framed, moved, prior_features
from .tokens import chart_size, chart_to_gmm, gmm_to_chart


PRIOR_LOGITS = ("normalized", "raw")
PRIOR_FITS = ("", "log-inverse-gamma")


@dataclass(frozen=True)
class ModelConfig(NetworkSizes):
    r"""Sizes of a :class:`DistributionTransformer`.

    Attributes:
        dim: latent dimension ``D``.
        sources: observation sources, name -> dimension ``E_s`` of one observation.
        num_components: ``K`` used in training (any ``K`` works at inference).
        d_model, num_heads, num_layers, ff_dim, hidden: the network's sizes (``sizes.NetworkSizes``).
        encoder_layers: encoder blocks over the observation tokens before the decoder reads them
            (``layers.EncoderBlock``); 0, the paper's base model, reads the embedded tokens directly.
        warp: per latent coordinate ``"identity"``, ``"log"`` or ``"logit"``; empty means no warp.
        prior_parameters: for parametric priors, parameter name -> warp of that parameter (the prior encoder's
            input is the warped parameter vector); empty means the model takes GMM priors.
        source_transforms: source name -> ``"asinh"`` for sources whose values span many orders of magnitude
            (the embedding reads :math:`\operatorname{asinh}(z)`); other sources are read as given.
        relative_sources: source name -> anchor source: the source's leading coordinates are read relative to the
            anchor's first observation (``embeddings.relative_values``), and the anchor relative to itself; the
            anchor's first observation must be present.
        prior_logits: for parametric priors, how the prior encoder's weight logits enter the decoder:
            ``"normalized"`` (log-softmax over the components, so the network reads the same chart as
            ``gmm_to_chart`` of the decoded prior and a prior approximation fed back gives the same posterior
            as its parameters) or ``"raw"`` (the encoder's logits as they are: how models saved before this
            field existed were trained, and what ``from_dict`` assumes when the field is absent).
        anchor: for a location problem, the source whose observations move with the latent (``z = x + noise``
            in its first ``D`` coordinates): the network reads every problem centred on that source's data mean
            (``structure.py``), which makes the model translation-equivariant; empty means no anchoring.
        site_evidence: the weight change includes the site's Gaussian evidence (``site.py``): Bayes' rule for
            the weights wherever the site is right.
        site_residual: the head also emits a chart residual added to each posterior component (``site.py``);
            off, every posterior component is exactly its prior component times the site.
        bounded_prior_features: the component embedding reads bounded features of the chart
            (``structure.prior_features``) instead of the chart itself.
        scale_source, scale_power: for a scale problem (one latent coordinate, log warp), the source whose values
            scale as :math:`e^{pt}` when the latent moves by :math:`t`: the network reads every problem at unit mean
            square of that source (``structure.py``), which makes the model scale-equivariant; empty for none.
        scale_parameter: for a parametric prior, the parameter that is a scale of the latent on the original
            space (``beta`` of an inverse-gamma): the encoder reads the prior with it set to 1, and the encoded
            means move by its log.
        split_observations: the observations (one source) are conditionally independent given the latent, so
            ``posterior`` takes a data set larger than the trained count in consecutive parts (``inference.py``).
        prior_fit: for a parametric prior with a tabulated mixture fit, its name: the network reads that fit
            instead of the prior encoder's (``"log-inverse-gamma"``: ``distributions/log_inverse_gamma.py``, for
            parameters ``alpha`` and ``beta`` of a log-warped variance); empty means the encoder's chart.
    """

    dim: int
    sources: Mapping[str, int] = field(default_factory=lambda: {"z": 1})
    num_components: int = 4
    encoder_layers: int = 0
    warp: tuple[str, ...] = ()
    prior_parameters: Mapping[str, str] = field(default_factory=dict)
    source_transforms: Mapping[str, str] = field(default_factory=dict)
    relative_sources: Mapping[str, str] = field(default_factory=dict)
    prior_logits: str = "normalized"
    anchor: str = ""
    site_evidence: bool = False
    site_residual: bool = True
    bounded_prior_features: bool = False
    scale_source: str = ""
    scale_power: float = 0.5
    scale_parameter: str = ""
    split_observations: bool = False
    prior_fit: str = ""

    def __post_init__(self) -> None:
        sizes = ("dim", "num_components", "encoder_layers")
        bad = {k: getattr(self, k) for k in sizes
               if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)}
        if bad:
            raise ValueError(f"Expected whole numbers for the model sizes {list(sizes)}, but got {bad}.")
        super().__post_init__()
        if self.prior_logits not in PRIOR_LOGITS:
            raise ValueError(f"Expected prior_logits among {PRIOR_LOGITS}, but got {self.prior_logits!r}.")
        if self.dim < 1 or self.num_components < 1 or self.encoder_layers < 0:
            raise ValueError(f"Expected dim >= 1, num_components >= 1 and encoder_layers >= 0, but got {self}.")
        if not self.sources:
            raise ValueError("Expected at least one observation source, but got none.")
        object.__setattr__(self, "sources", {str(k): int(v) for k, v in dict(self.sources).items()})
        object.__setattr__(self, "warp", tuple(str(k) for k in self.warp))
        object.__setattr__(self, "prior_parameters", {str(k): str(v) for k, v in dict(self.prior_parameters).items()})
        if self.warp:
            Warp(self.warp)  # validates the kinds
            if len(self.warp) != self.dim:
                raise ValueError(f"Expected one warp per latent coordinate (D={self.dim}), but got {list(self.warp)}.")
        if self.prior_parameters:
            Warp(list(self.prior_parameters.values()))
        object.__setattr__(self, "source_transforms", {str(k): str(v) for k, v in dict(self.source_transforms).items()})
        bad = {k: v for k, v in self.source_transforms.items() if k not in self.sources or v not in SOURCE_TRANSFORMS}
        if bad:
            raise ValueError(f"Expected source_transforms to map sources {sorted(self.sources)} to one of "
                             f"{SOURCE_TRANSFORMS}, but got {bad}.")
        if self.anchor and (self.sources.get(self.anchor, 0) < self.dim or self.prior_parameters):
            raise ValueError(f"Expected anchor to name a source of at least D={self.dim} coordinates of a model with "
                             f"GMM priors, but got {self.anchor!r} with sources {dict(self.sources)}.")
        if self.scale_source and (self.sources.get(self.scale_source) is None or self.dim != 1 or self.anchor
                                  or list(self.warp) != ["log"] or not self.scale_power > 0):
            raise ValueError(f"Expected scale_source to name a source of a one-dimensional model with a log warp and "
                             f"no location anchor, and scale_power > 0, but got {self.scale_source!r} with sources "
                             f"{dict(self.sources)}, warp {list(self.warp)} and power {self.scale_power}.")
        if self.scale_parameter and (self.prior_parameters.get(self.scale_parameter) != "log" or self.dim != 1
                                     or list(self.warp) != ["log"]):
            raise ValueError(f"Expected scale_parameter to name a log-warped prior parameter of a one-dimensional "
                             f"model with a log warp, but got {self.scale_parameter!r} with prior parameters "
                             f"{dict(self.prior_parameters)} and warp {list(self.warp)}.")
        if self.prior_fit not in PRIOR_FITS:
            raise ValueError(f"Expected prior_fit among {PRIOR_FITS}, but got {self.prior_fit!r}.")
        if self.prior_fit and (list(self.prior_parameters) != ["alpha", "beta"] or list(self.warp) != ["log"]):
            raise ValueError(f"Expected prior parameters ['alpha', 'beta'] of a one-dimensional model with a log "
                             f"warp for prior_fit {self.prior_fit!r}, but got {list(self.prior_parameters)} and warp "
                             f"{list(self.warp)}.")
        if self.split_observations and (len(self.sources) != 1 or self.prior_parameters):
            raise ValueError(f"Expected one observation source and GMM priors for split_observations, but got "
                             f"sources {dict(self.sources)} and prior parameters {dict(self.prior_parameters)}.")
        object.__setattr__(self, "relative_sources", {str(k): str(v) for k, v in dict(self.relative_sources).items()})
        bad = {k: v for k, v in self.relative_sources.items()
               if k not in self.sources or v not in self.sources or k == v or self.sources[v] > self.sources[k]}
        if bad:
            raise ValueError(f"Expected relative_sources to map a source to another, no wider one among "
                             f"{dict(self.sources)}, but got {bad}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sources": dict(self.sources), "warp": list(self.warp),
                               "prior_parameters": dict(self.prior_parameters),
                               "source_transforms": dict(self.source_transforms),
                               "relative_sources": dict(self.relative_sources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Expected ModelConfig fields {sorted(cls.__dataclass_fields__)}, but got unknown "
                             f"{sorted(unknown)}.")
        if data.get("prior_parameters") and "prior_logits" not in data:
            data = dict(data) | {"prior_logits": "raw"}  # saved before the field existed: trained on raw logits
        return cls(**data)


class DistributionTransformer(nn.Module):
    """Maps (GMM prior, observations) to a GMM posterior; see the module docstring for the equations."""

    chunk_size: int = 512  # problems per forward pass in ``posterior`` for large batches (``engine.py``)
    traced_batch_size: int = 32  # up to this many problems, ``posterior`` runs one traced forward (``engine.py``)
    chunk_workers: int | None = None  # chunks run side by side on this many threads (None: torch's count)

    def __init__(self, config: ModelConfig, card: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.card: dict[str, Any] = dict(card or {})
        c = chart_size(config.dim)
        self.prior_embedding = MLP([c, config.hidden, config.d_model])
        self.sources = nn.ModuleDict({
            name: SourceEmbedding(e, config.d_model, config.hidden, config.source_transforms.get(name, "identity"))
            for name, e in config.sources.items()
        })
        self.encoder = nn.ModuleList([
            EncoderBlock(config.d_model, config.num_heads, config.ff_dim) for _ in range(config.encoder_layers)
        ])
        self.memory_norm = nn.LayerNorm(config.d_model)
        self.blocks = nn.ModuleList([
            DecoderBlock(config.d_model, config.num_heads, config.ff_dim) for _ in range(config.num_layers)
        ])
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = MLP([config.d_model, config.hidden, head_size(config.dim, config.site_residual)])
        nn.init.zeros_(self.head.last.weight)
        nn.init.zeros_(self.head.last.bias)
        if config.prior_parameters:
            p = len(config.prior_parameters)
            self.prior_encoder = MLP([p, config.hidden, config.hidden, config.num_components * c])
        latent = Warp(config.warp) if config.warp else None
        self._latent_warp = None if latent is None or latent.is_identity else latent
        self._parameter_warp = Warp(list(config.prior_parameters.values())) if config.prior_parameters else None

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def warp(self) -> Warp | None:
        """The latent warp, or ``None`` when the model works on the original space."""
        return self._latent_warp

    @property
    def is_parametric(self) -> bool:
        """Whether priors are given by parameters (``config.prior_parameters``) instead of as a GMM."""
        return bool(self.config.prior_parameters)

    def encode_prior(self, parameters: Tensor) -> Tensor:
        """Chart ``(B, K, C)`` of the GMM fit to parametric priors ``(B, P)`` (module docstring)."""
        shift = None
        if self.config.scale_parameter:  # encode at unit scale, then move: exactly scale-equivariant
            column = list(self.config.prior_parameters).index(self.config.scale_parameter)
            shift = torch.log(parameters[..., column:column + 1])
            parameters = torch.cat([parameters[..., :column], torch.ones_like(shift), parameters[..., column + 1:]], -1)
        features = self._parameter_warp.forward(parameters)
        chart = self.prior_encoder(features).unflatten(-1, (self.config.num_components, chart_size(self.dim)))
        if self.config.prior_logits != "raw":
            chart = torch.cat([torch.log_softmax(chart[..., :1], dim=-2), chart[..., 1:]], dim=-1)
        return chart if shift is None else moved(chart, shift, self.dim)

    def _wrap(self, mixture: GaussianMixture):
        warp = self.warp
        return mixture if warp is None else WarpedGaussianMixture(mixture, warp)

    def _parameters_tensor(self, prior) -> Tensor:
        names = list(self.config.prior_parameters)
        if torch.is_tensor(prior) and prior.device.type == "meta":
            raise ValueError("Expected prior parameters with values, but got a tensor on the meta device.")
        if torch.is_tensor(prior) and not prior.dtype.is_floating_point:  # integer alpha and beta: exact as floats
            prior = prior.to(self.prior_encoder.last.weight.dtype)
        if not torch.is_tensor(prior) or prior.shape[-1:] != (len(names),):
            shape = tuple(prior.shape) if torch.is_tensor(prior) else type(prior).__name__
            raise ValueError(f"Expected prior parameters {names} as a tensor of shape (*B, {len(names)}), but got "
                             f"{shape}.")
        if not bool(torch.isfinite(prior).all()):
            raise ValueError("Expected finite prior parameters, but got NaN or inf.")
        warp = self._parameter_warp
        if not bool(warp.in_support(prior).all()):
            raise ValueError(f"Expected prior parameters {names} inside their domains ({list(warp.kinds)}: log means "
                             "positive, logit means in (0, 1)), but some are outside.")
        return prior

    def prior_approximation(self, prior: Tensor, *, grad: bool = False):
        """The model's GMM fit to parametric priors ``(*B, P)``: a mixture with batch ``B`` (warped where the
        model has a warp). For GMM-prior models the prior needs no approximation and is returned as given."""
        if not self.is_parametric:
            return prior
        with torch.enable_grad() if grad else torch.inference_mode():
            chart = self._encoded_prior_chart(prior)
            return self._wrap(chart_to_gmm(chart.to(prior.dtype), self.dim))

    def _encoded_prior_chart(self, prior: Tensor) -> Tensor:
        """The chart ``(*B, K, C)`` the network reads for parameters ``(*B, P)``, after validation, in the network's
        dtype: the tabulated fit where the config names one (``prior_fit``), else ``encode_prior``'s.

        For a ``prior_logits="raw"`` model the encoder chart's weight column holds the encoder's unnormalised
        logits, so it is not ``gmm_to_chart`` of the decoded mixture (whose log weights are normalised): the
        posterior is computed from this chart, not from that round trip."""
        params = self._parameters_tensor(prior)
        weight = self.prior_encoder.last.weight
        if self.config.prior_fit:
            from ..distributions.log_inverse_gamma import log_inverse_gamma_mixture

            fitted = log_inverse_gamma_mixture(params[..., 0].double(), params[..., 1].double())
            return gmm_to_chart(fitted).to(dtype=weight.dtype, device=weight.device)
        chart = self.encode_prior(params.reshape(-1, params.shape[-1]).to(dtype=weight.dtype, device=weight.device))
        return chart.reshape(*params.shape[:-1], *chart.shape[-2:])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, chart: Tensor, observations: Observations) -> Tensor:
        """Posterior chart ``(B, K, C)`` from prior chart ``(B, K, C)`` and observations with batch ``(B,)``."""
        config = self.config
        chart, observations, shift = framed(config, chart, observations)
        tokens, key_mask = observation_tokens(self.sources, observations, config.relative_sources)
        for block in self.encoder:
            tokens = block(tokens, key_mask)
        memory = layer_norm(self.memory_norm, tokens)
        h = self.prior_embedding(prior_features(chart, self.dim) if config.bounded_prior_features else chart)
        for block in self.blocks:
            h = block(h, memory, key_mask)
        out = apply_site(chart, self.head(layer_norm(self.final_norm, h)), self.dim, config.site_evidence)
        return out if shift is None else moved(out, shift, self.dim)

    @property
    def support(self):
        """The training support recorded in the card (``support.py``), or ``None`` for a card without one."""
        from .support import TrainingSupport

        data = self.card.get("support")
        cached = self.__dict__.get("_support")
        if cached is None or cached[0] is not data:
            cached = (data, None if data is None else TrainingSupport.from_dict(data))
            self.__dict__["_support"] = cached
        return cached[1]

    def posterior(self, prior, observations, mask=None, *, grad: bool = False, strict: bool = False,
                  check: bool | str | None = None, likelihood=None, importance_draws: int = 256,
                  generator: torch.Generator | None = None):
        """Approximate posterior ``p(x | observations)`` under ``prior``.

        Args:
            prior: ``GaussianMixture`` with ``event_shape == (D,)`` and any batch shape ``B`` and ``K`` (on the
                warped space for a model with a warp, or a ``WarpedGaussianMixture`` with the model's warp); for
                a parametric-prior model also the prior's parameters ``(*B, P)`` (``config.prior_parameters``).
            observations: tensor ``(*B, N, E)`` for single-source models, a dict ``source -> (*B, N_s, E_s)``,
                or :class:`~distformer.Observations`; ``B`` broadcasts against the prior's batch shape.
            mask: optional booleans ``(*B, N)`` (or a dict of them), ``True`` where an observation is present.
            grad: track gradients (default: run under ``torch.inference_mode``).
            strict: raise ``ValueError`` instead of warning when any problem is flagged unreliable.
            check: judge each problem against the training support in ``model.card["support"]``
                (``support.py``); the verdict is ``post.reliable`` and ``post.reliability``, and a batch with
                flagged problems warns (on every call) with how many and why. With ``True``, a problem outside the
                training ranges is judged by the importance check where a likelihood is at hand and flagged only
                where it fails; ``"ranges"`` keeps the ranges' verdict alone (cheaper for a large batch far outside
                them). ``"importance"`` also flags
                problems whose importance ratios against prior times likelihood have a Pareto ``k̂`` above its
                threshold (``reliability.py``; ``importance_draws`` draws per problem, ``likelihood`` a problem
                or callable, by default the card's problem). ``None`` (the default): the model's own default,
                ``model.card["check"]`` where a card sets it (the ``gp-hyperprior`` models, ``quantum``,
                ``sensor-fusion`` and ``stochastic-volatility``, whose accuracy inside their ranges the ranges cannot
                vouch for, use ``"importance"``), else ``True``.
            likelihood, importance_draws, generator: for ``check="importance"``, and for the importance check that
                judges the problems outside the training ranges with ``check=True`` (four times the draws);
                ``generator`` ``None`` means a fixed seed, so that the same call gives the same verdict.

        The steps (prepare, judge, run, finish) are in ``inference.py``.

        Returns:
            ``GaussianMixture`` with the broadcast batch shape, ``K`` components and the prior's dtype, or for a
            model with a warp the ``WarpedGaussianMixture`` on the original space; ``reliable`` (booleans, the
            batch shape) and ``reliability`` (:class:`~distformer.support.Reliability`) are ``None`` when
            unchecked. A data set with no present observation (all masked, or ``N = 0``) gets its prior (or its
            prior approximation) back exactly, and a component of prior weight 0 keeps weight 0.
        """
        from .inference import posterior

        return posterior(self, prior, observations, mask, grad=grad, strict=strict, check=check,
                         likelihood=likelihood, importance_draws=importance_draws, generator=generator)

    def export(self, path, format: str = "torchscript", num_components: int | None = None,
               max_observations: int | None = None, autotune: bool = True):
        """Write the posterior update as a program that runs with ``torch`` alone: ``format="torchscript"`` (any
        shapes) or ``"aoti"`` (an AOTInductor ``.pt2`` package compiled ahead of time, the fastest batch-1 update;
        needs a C++ compiler to export; ``autotune`` times Inductor's kernels for each matrix product, about two
        minutes more). See ``export.py``."""
        from .export import export_update

        return export_update(self, path, format=format, num_components=num_components,
                             max_observations=max_observations, autotune=autotune)

    # serialisation lives in nn/serialization.py; these are the public entry points
    def save(self, path) -> None:
        """Write ``path.safetensors`` (weights) and ``path.json`` (config and model card); never pickles."""
        from .serialization import save_model

        save_model(self, path)

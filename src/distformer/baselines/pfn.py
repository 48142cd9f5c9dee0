r"""PFN baseline ("Transformers Can Do Bayesian Inference", Müller et al. 2022): data in, a bar distribution out.

The PFN sees only the observations, never the prior: it is trained on the simulator's joint
:math:`p(\phi)p(x\mid\phi)p(z\mid x)` with :math:`\phi` marginalised, so it learns :math:`p(x\mid z)` under the
*meta-marginal* prior :math:`\int p(x\mid\phi)p(\phi)\,d\phi`. One latent coordinate :math:`y = f(x_d)` (on the
problem's warped space) is modelled per PFN, as in the paper's baselines.

Bar (Riemann) distribution with ``B`` buckets and edges :math:`e_0<\dots<e_B` at the meta-marginal's quantiles
:math:`i/B` (extremes: the sample minimum and maximum). With bucket probabilities :math:`p = \mathrm{softmax}(\ell)`,
interior buckets are uniform and the two outer buckets are half-normal tails that extend to infinity:

.. math::
    q(y) = \frac{p_b}{e_{b+1}-e_b}\ \ (0<b<B-1),\qquad
    q(y) = p_0\,\mathrm{HN}(e_1 - y;\ s_0)\ \ (y<e_1),\qquad q(y) = p_{B-1}\,\mathrm{HN}(y - e_{B-1};\ s_{B-1}),

with :math:`\mathrm{HN}(t; s) = \frac{2}{s\sqrt{2\pi}}e^{-t^2/2s^2}` and :math:`s_0 = (e_1-e_0)/2`,
:math:`s_{B-1} = (e_B-e_{B-1})/2` (95% of a tail's mass inside its bucket). The network is the decoder of
``nn/layers.py`` with a single learned query token cross-attending to the observation tokens, and a linear head
to the ``B`` logits; its loss is the NLL of the true :math:`y`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..distributions.transforms import Warp
from ..nn.embeddings import SourceEmbedding, observation_tokens
from ..nn.layers import DecoderBlock, layer_norm
from ..nn.sizes import NetworkSizes
from ..observations import Observations, as_observations


@dataclass(frozen=True)
class PFNConfig(NetworkSizes):
    """Sizes (``nn/sizes.py``) and optimisation of a PFN baseline; ``coordinate`` is the latent coordinate it
    models."""

    num_buckets: int = 100
    coordinate: int = 0
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 200
    seed: int = 0
    edge_samples: int = 200_000


class BarDistribution:
    """Bar distribution with edges ``(B + 1,)`` and logits ``(*batch, B)`` on the warped space (module docstring)."""

    def __init__(self, edges: Tensor, logits: Tensor) -> None:
        self.edges = edges.to(logits.dtype)
        self.log_p = torch.log_softmax(logits, -1)
        widths = self.edges[1:] - self.edges[:-1]
        self.log_width = torch.log(widths)
        self.tail_scale = (widths[0] / 2, widths[-1] / 2)

    def log_prob(self, y: Tensor) -> Tensor:
        """``log q(y)`` for ``y`` ``(*S, *batch)``; returns the same shape."""
        e, B = self.edges, self.log_p.shape[-1]
        bucket = (torch.bucketize(y.contiguous(), e[1:-1], right=True)).clamp(0, B - 1)
        log_p = torch.gather(self.log_p.expand(*y.shape, B), -1, bucket.unsqueeze(-1)).squeeze(-1)
        interior = log_p - self.log_width[bucket]
        log_hn = lambda t, s: math.log(2 / math.sqrt(2 * math.pi)) - torch.log(s) - 0.5 * (t / s) ** 2
        left = log_p + log_hn(e[1] - y, self.tail_scale[0])
        right = log_p + log_hn(y - e[-2], self.tail_scale[1])
        return torch.where(bucket == 0, left, torch.where(bucket == B - 1, right, interior))


class PFN(nn.Module):
    """Observations -> bar distribution over one warped latent coordinate (module docstring)."""

    def __init__(self, sources: dict[str, int], edges: Tensor, warp: Warp | None, config: PFNConfig,
                 source_transforms: dict[str, str] | None = None,
                 relative_sources: dict[str, str] | None = None) -> None:
        super().__init__()
        self.config, self.warp = config, warp
        self.register_buffer("edges", edges.float())
        transforms = source_transforms or {}
        self.relative_sources = dict(relative_sources or {})
        self.sources = nn.ModuleDict({n: SourceEmbedding(e, config.d_model, config.hidden,
                                                         transforms.get(n, "identity")) for n, e in sources.items()})
        self.query = nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02)
        self.memory_norm = nn.LayerNorm(config.d_model)
        self.blocks = nn.ModuleList([DecoderBlock(config.d_model, config.num_heads, config.ff_dim)
                                     for _ in range(config.num_layers)])
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.num_buckets)

    def forward(self, observations: Observations) -> Tensor:
        """Bucket logits ``(n, B)`` for observations with batch ``(n,)``."""
        tokens, key_mask = observation_tokens(self.sources, observations, self.relative_sources)
        memory = layer_norm(self.memory_norm, tokens)
        h = self.query.expand(memory.shape[0], 1, -1)
        for block in self.blocks:
            h = block(h, memory, key_mask)
        return self.head(layer_norm(self.final_norm, h)).squeeze(-2)

    def posterior(self, observations) -> BarDistribution:
        """The bar distribution over the warped coordinate, batch ``(n,)``."""
        obs = as_observations(observations, {n: s.values.layers[0].in_features for n, s in self.sources.items()})
        with torch.inference_mode():
            flat = obs.reshape((-1,)).to(dtype=self.edges.dtype)
            return BarDistribution(self.edges, self(flat))

    def log_prob(self, x: Tensor, observations) -> Tensor:
        """``log q(x_d | z)`` on the original space (Jacobian of the warp included); ``x`` ``(*S, n)``."""
        y = x
        jacobian = torch.zeros_like(x)
        if self.warp is not None:
            kind = Warp([self.warp.kinds[self.config.coordinate]])
            y = kind.forward(x.unsqueeze(-1)).squeeze(-1)
            jacobian = kind.log_abs_det_jacobian(x.unsqueeze(-1))
        bar = self.posterior(observations)
        return bar.log_prob(y.to(bar.log_p.dtype)).to(x.dtype) + jacobian


def _warped_coordinate(warp: Warp | None, theta: Tensor, coordinate: int) -> Tensor:
    y = theta if warp is None else warp.forward(theta)
    return y[..., coordinate]


def train_pfn(problem, config: PFNConfig = PFNConfig(), progress: bool = True) -> PFN:
    """Train a PFN on ``problem``'s simulator (prior marginalised over the meta-prior); returns it in eval mode
    with ``pfn.training_time_s`` set."""
    generator = torch.Generator().manual_seed(config.seed)
    warp = Warp(problem.warp) if problem.warp else None
    edge_batch = problem.sample_batch(config.edge_samples, generator=generator)
    y = _warped_coordinate(warp, edge_batch.theta.double(), config.coordinate)
    edges = torch.quantile(y[torch.isfinite(y)][:1_000_000].float(),
                           torch.linspace(0, 1, config.num_buckets + 1)).double()
    edges = torch.cummax(edges, 0).values + torch.arange(config.num_buckets + 1, dtype=torch.float64) * 1e-6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        pfn = PFN(dict(problem.sources), edges, warp, config,
                  dict(problem.source_transforms), dict(problem.relative_sources))
    optimizer = torch.optim.AdamW(pfn.parameters(), lr=config.lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc=f"PFN-{config.num_buckets}", dynamic_ncols=True, mininterval=1.0)
    start = time.perf_counter()
    pfn.train()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = problem.sample_batch(config.batch_size, generator=generator)
        target = _warped_coordinate(warp, batch.theta.float(), config.coordinate)
        loss = -BarDistribution(pfn.edges, pfn(batch.observations)).log_prob(target).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pfn.parameters(), 1.0)
        optimizer.step()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_description(f"PFN-{config.num_buckets} loss {loss.item():.4f}")
    if bar is not None:
        bar.close()
    pfn.eval()
    pfn.training_time_s = time.perf_counter() - start
    pfn.card = {"config": asdict(pfn.config), "training_time_s": round(pfn.training_time_s, 1)}
    return pfn

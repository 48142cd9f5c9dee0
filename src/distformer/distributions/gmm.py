r"""Batched Gaussian mixtures stored by Cholesky factor.

.. math::
    p(x) = \sum_{k=1}^{K} w_k\, \mathcal N(x;\mu_k, L_k L_k^\top), \qquad
    \log p(x) = \operatorname{logsumexp}_k\big(\log w_k + \log\mathcal N(x;\mu_k, L_k L_k^\top)\big).

Mixture moments (law of total covariance):
:math:`\mathbb E[x] = \sum_k w_k\mu_k`,
:math:`\operatorname{Cov}[x] = \sum_k w_k(\Sigma_k + \mu_k\mu_k^\top) - \mathbb E[x]\mathbb E[x]^\top`.

Push-forward through :math:`y = A x + b + \varepsilon,\ \varepsilon\sim\mathcal N(0, Q)` maps each component to
:math:`\mathcal N(A\mu_k + b, A\Sigma_k A^\top + Q)` with unchanged weights.

Conditioning on linear-Gaussian observations is ``conditioning.py``'s. Shapes: weights ``(*B, K)``, loc ``(*B, K, D)``, scale_tril ``(*B, K, D, D)``; the component
index ``K`` is never part of ``batch_shape``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, MultivariateNormal

from .checks import check_shapes, check_weights, describe as _describe
from .linalg import broadcast_shapes, cholesky, gaussian_log_prob, symmetrize


class GaussianMixture(Distribution):
    r"""A batch of ``K``-component Gaussian mixtures over ``R^D``.

    Args:
        weights: mixture weights ``(*B, K)``, non-negative and summing to one over ``K``.
        loc: component means ``(*B, K, D)``.
        covariance_matrix: component covariances ``(*B, K, D, D)``; give this or ``scale_tril``.
        scale_tril: lower Cholesky factors with positive diagonal ``(*B, K, D, D)``.
        logits: unnormalised log-weights ``(*B, K)``, instead of ``weights`` (normalised by softmax).
        validate_args: check every input (default ``True``); ``False`` skips checks in hot loops.

    Names, as in ``torch.distributions.MixtureSameFamily``: the constructor's ``covariance_matrix`` and
    ``scale_tril`` are per component, like ``loc``; the properties ``mean``, ``covariance_matrix`` and ``variance``
    are the *mixture's* moments. The components' are ``loc``, ``scale_tril``, ``component_covariance_matrix`` and
    ``component_distribution`` (a ``MultivariateNormal`` of batch ``(*B, K)``); the weights' are ``weights``,
    ``log_weights`` and ``mixture_distribution``.

    Example:
        >>> gm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [2.0]]),
        ...                      covariance_matrix=torch.tensor([[[0.5]], [[1.0]]]))
        >>> gm.batch_shape, gm.event_shape, gm.num_components
        (torch.Size([]), torch.Size([1]), 2)
    """

    arg_constraints: dict = {}
    has_rsample = False
    reliable: Tensor | None = None  # set by ``model.posterior``: booleans with the batch shape (``support.py``)
    reliability = None  # set by ``model.posterior``: the verdict with its reasons (``support.Reliability``)

    def __init__(
        self,
        weights: Tensor | None = None,
        loc: Tensor | None = None,
        covariance_matrix: Tensor | None = None,
        scale_tril: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        validate = validate_args is not False
        if (weights is None) == (logits is None):
            raise ValueError("Expected exactly one of weights or logits, but got "
                             f"{'both' if weights is not None else 'neither'}.")
        if loc is None:
            raise ValueError("Expected loc of shape (*B, K, D), but got None.")
        if (covariance_matrix is None) == (scale_tril is None):
            raise ValueError("Expected exactly one of covariance_matrix or scale_tril, but got "
                             f"{'both' if covariance_matrix is not None else 'neither'}.")
        matrix = covariance_matrix if covariance_matrix is not None else scale_tril
        mix = weights if weights is not None else logits
        tensors = [t for t in (mix, loc, matrix)]
        if not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("Expected weights/logits, loc and the covariance to be torch tensors, but got "
                            f"{', '.join(type(t).__name__ for t in tensors)}.")
        if any(t.device.type == "meta" for t in tensors):
            raise ValueError("Expected weights, loc and covariance with values, but got tensors on the meta device.")
        dtype = torch.promote_types(torch.promote_types(mix.dtype, loc.dtype), matrix.dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        elif torch.finfo(dtype).bits < 32:  # float16 and bfloat16: too coarse for Cholesky factors; computed in float32
            dtype = torch.float32
        mix, loc, matrix = mix.to(dtype), loc.to(dtype), matrix.to(dtype)
        if validate:
            check_shapes(mix, loc, matrix, "weights" if weights is not None else "logits",
                               "covariance_matrix" if covariance_matrix is not None else "scale_tril")
        k, d = loc.shape[-2], loc.shape[-1]
        batch_shape = broadcast_shapes(mix.shape[:-1], loc.shape[:-2], matrix.shape[:-3])
        mix = mix.expand(*batch_shape, k)
        loc = loc.expand(*batch_shape, k, d)
        matrix = matrix.expand(*batch_shape, k, d, d)
        if weights is not None:
            if validate:
                check_weights(mix, weights.dtype)
                mix = mix / mix.sum(-1, keepdim=True)  # exactly normalised within the tolerance accepted
            log_weights = mix.clamp_min(0).log()
        else:
            if validate and bool(torch.isnan(mix).any() | torch.isposinf(mix).any()):
                raise ValueError("Expected logits to contain no NaN or +inf, but found some.")
            if validate and mix.shape[-1] and bool(torch.isneginf(mix).all(-1).any()):
                raise ValueError("Expected at least one finite logit per mixture, but some mixture has every logit "
                                 "-inf (all weights zero).")
            log_weights = torch.log_softmax(mix, dim=-1)
        if covariance_matrix is not None:
            if validate:
                if not bool(torch.allclose(matrix, matrix.transpose(-1, -2), rtol=1e-5, atol=1e-6)):
                    raise ValueError("Expected covariance_matrix to be symmetric, but it is not.")
                tril = cholesky(matrix, "covariance_matrix")
            else:
                tril = torch.linalg.cholesky(matrix)
        else:
            tril = matrix
            if validate:
                if not bool((tril.triu(1) == 0).all()):
                    raise ValueError("Expected scale_tril to be lower triangular, but it has non-zero "
                                     "entries above the diagonal.")
                if not bool((tril.diagonal(dim1=-2, dim2=-1) > 0).all()):
                    raise ValueError("Expected scale_tril to have a strictly positive diagonal, but found "
                                     "entries <= 0.")
        self._log_weights = log_weights
        self._loc = loc
        self._scale_tril = tril
        super().__init__(batch_shape=batch_shape, event_shape=torch.Size([d]), validate_args=False)

    @classmethod
    def _from_parts(cls, log_weights: Tensor, loc: Tensor, scale_tril: Tensor) -> "GaussianMixture":
        """A mixture from parts already valid and alike in batch shape and dtype: normalised ``log_weights``
        ``(*B, K)``, ``loc`` ``(*B, K, D)``, ``scale_tril`` ``(*B, K, D, D)``. No checks, casts or copies: for
        the model's own outputs, where the constructor's work is most of a batch-1 call's overhead."""
        self = cls.__new__(cls)
        self._log_weights, self._loc, self._scale_tril = log_weights, loc, scale_tril
        Distribution.__init__(self, batch_shape=loc.shape[:-2], event_shape=loc.shape[-1:], validate_args=False)
        return self

    # ----------------------------------------------------------------------------------- parameters
    @property
    def num_components(self) -> int:
        return self._loc.shape[-2]

    @property
    def dim(self) -> int:
        return self._loc.shape[-1]

    @property
    def weights(self) -> Tensor:
        """``(*B, K)``."""
        return self._log_weights.exp()

    @property
    def log_weights(self) -> Tensor:
        """``(*B, K)``; ``-inf`` for components of weight zero."""
        return self._log_weights

    @property
    def loc(self) -> Tensor:
        """Component means ``(*B, K, D)``."""
        return self._loc

    @property
    def scale_tril(self) -> Tensor:
        """Component Cholesky factors ``(*B, K, D, D)``."""
        return self._scale_tril

    @property
    def component_covariance_matrix(self) -> Tensor:
        """Component covariances ``(*B, K, D, D)``."""
        return self._scale_tril @ self._scale_tril.transpose(-1, -2)

    @property
    def component_distribution(self) -> MultivariateNormal:
        """The components as one ``MultivariateNormal`` of batch ``(*B, K)``."""
        return MultivariateNormal(self._loc, scale_tril=self._scale_tril, validate_args=False)

    @property
    def mixture_distribution(self) -> Categorical:
        """The weights as a ``Categorical`` of batch ``(*B)``."""
        return Categorical(logits=self._log_weights, validate_args=False)

    @property
    def mean(self) -> Tensor:
        """Mixture mean ``(*B, D)``."""
        return (self.weights.unsqueeze(-1) * self._loc).sum(-2)

    @property
    def covariance_matrix(self) -> Tensor:
        """Mixture covariance ``(*B, D, D)`` by the law of total covariance, ``sum_k w_k (Σ_k + δ_k δ_kᵀ)`` with
        ``δ_k = μ_k - mean`` (centred, so large means do not cancel away the spread)."""
        w = self.weights[..., None, None]
        delta = self._loc - self.mean.unsqueeze(-2)
        return symmetrize((w * (self.component_covariance_matrix + delta.unsqueeze(-1) * delta.unsqueeze(-2))).sum(-3))

    @property
    def variance(self) -> Tensor:
        return self.covariance_matrix.diagonal(dim1=-2, dim2=-1)

    @property
    def dtype(self) -> torch.dtype:
        return self._loc.dtype

    @property
    def device(self) -> torch.device:
        return self._loc.device

    # ----------------------------------------------------------------------------------- densities
    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mu_k, Sigma_k)`` for ``x`` of shape ``sample_shape + batch_shape + (D,)`` -> ``(..., K)``."""
        self._check_value(x)
        return gaussian_log_prob(x.unsqueeze(-2), self._loc, self._scale_tril)

    def log_prob(self, x: Tensor) -> Tensor:
        """``x``: ``sample_shape + batch_shape + (D,)`` (broadcastable) -> ``sample_shape + batch_shape``."""
        return torch.logsumexp(self._log_weights + self.component_log_prob(x), dim=-1)

    def cdf(self, x: Tensor) -> Tensor:
        """Distribution function of a one-dimensional mixture, values ``(..., 1)`` -> ``(...)`` (``univariate.py``)."""
        from .univariate import cdf

        return cdf(self, x)

    def icdf(self, q: Tensor) -> Tensor:
        """Quantiles of a one-dimensional mixture, probabilities ``(...)`` -> ``(..., 1)`` (``univariate.py``)."""
        from .univariate import icdf

        return icdf(self, q)

    def _check_value(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            got = _describe(x) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Expected a value with last dimension D={self.dim}, but got a {got}.")

    def sample(self, sample_shape: Sequence[int] = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Draw ``sample_shape + batch_shape + (D,)`` samples (ancestral: component, then Gaussian)."""
        sample_shape = torch.Size(sample_shape)
        n = sample_shape.numel()
        b = self.batch_shape.numel()
        if n == 0 or b == 0:  # as torch.distributions: an empty sample shape gives an empty tensor
            return torch.empty(*sample_shape, *self.batch_shape, self.dim, dtype=self.dtype, device=self.device)
        probs = self.weights.reshape(b, self.num_components)
        with torch.no_grad():
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # (b, n)
            idx = idx.transpose(0, 1).reshape(sample_shape + self.batch_shape)  # S + B
            loc = self._loc.expand(*sample_shape, *self._loc.shape)
            tril = self._scale_tril.expand(*sample_shape, *self._scale_tril.shape)
            g = idx[..., None, None]
            mu = loc.gather(-2, g.expand(*idx.shape, 1, self.dim)).squeeze(-2)
            L = tril.gather(-3, g.unsqueeze(-1).expand(*idx.shape, 1, self.dim, self.dim)).squeeze(-3)
            eps = torch.randn(*idx.shape, self.dim, 1, generator=generator, dtype=self.dtype, device=self.device)
            return mu + (L @ eps).squeeze(-1)

    # ----------------------------------------------------------------------------------- transforms
    def _new(self, log_weights: Tensor, loc: Tensor, scale_tril: Tensor) -> "GaussianMixture":
        return GaussianMixture(logits=log_weights, loc=loc, scale_tril=scale_tril, validate_args=False)

    def marginal(self, dims: Sequence[int] | int) -> "GaussianMixture":
        """Marginal over the event dimensions ``dims`` (order kept as given)."""
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims or any(not -self.dim <= d < self.dim for d in dims) or len(set(d % self.dim for d in dims)) != len(dims):
            raise ValueError(f"Expected distinct event dimensions in [0, {self.dim}), but got {dims}.")
        index = torch.tensor([d % self.dim for d in dims], device=self.device)
        cov = self.component_covariance_matrix.index_select(-1, index).index_select(-2, index)
        return self._new(self._log_weights, self._loc.index_select(-1, index), cholesky(symmetrize(cov)))

    def affine(self, A: Tensor, b: Tensor | None = None, noise_covariance: Tensor | None = None) -> "GaussianMixture":
        """Push-forward through ``y = A x + b + noise``: ``A`` ``(*B, E, D)``, ``b`` ``(*B, E)``, noise ``(*B, E, E)``."""
        A = torch.as_tensor(A, dtype=self.dtype, device=self.device)
        if A.dim() < 2 or A.shape[-1] != self.dim:
            raise ValueError(f"Expected A of shape (*B, E, D={self.dim}), but got a {_describe(A)}.")
        e = A.shape[-2]
        loc = (A.unsqueeze(-3) @ self._loc.unsqueeze(-1)).squeeze(-1)
        if b is not None:
            b = torch.as_tensor(b, dtype=self.dtype, device=self.device)
            if b.dim() < 1 or b.shape[-1] != e:
                raise ValueError(f"Expected b of shape (*B, E={e}), but got a {_describe(b)}.")
            loc = loc + b.unsqueeze(-2)
        AL = A.unsqueeze(-3) @ self._scale_tril
        cov = AL @ AL.transpose(-1, -2)
        if noise_covariance is not None:
            Q = torch.as_tensor(noise_covariance, dtype=self.dtype, device=self.device)
            if Q.dim() < 2 or Q.shape[-2:] != (e, e):
                raise ValueError(f"Expected noise_covariance of shape (*B, E, E)=({e}, {e}), but got a {_describe(Q)}.")
            cov = cov + Q.unsqueeze(-3)
        if not bool(torch.isfinite(cov).all() & torch.isfinite(loc).all()):
            raise ValueError("Expected finite A, b and noise_covariance, but the push-forward has NaN or inf.")
        return self._new(self._log_weights, loc, cholesky(symmetrize(cov), "the pushed-forward covariance"))

    def condition_linear_gaussian(self, H: Tensor, R: Tensor, z: Tensor, mask: Tensor | None = None) -> "GaussianMixture":
        """Exact posterior after observing ``z_i = H x + v_i``, ``v_i ~ N(0, R)`` i.i.d.

        Args:
            H: ``(*B, E, D)`` observation matrix.
            R: ``(*B, E, E)`` noise covariance (positive definite).
            z: ``(*B, N, E)`` observations (``N`` may be 1).
            mask: optional ``(*B, N)`` booleans, ``True`` where an observation is present.
        """
        from .conditioning import condition_linear_gaussian

        return condition_linear_gaussian(self, H, R, z, mask)

    # ----------------------------------------------------------------------------------- batching
    def expand(self, batch_shape: Sequence[int], _instance=None) -> "GaussianMixture":
        batch_shape = torch.Size(batch_shape)
        k, d = self.num_components, self.dim
        return self._new(self._log_weights.expand(*batch_shape, k), self._loc.expand(*batch_shape, k, d),
                         self._scale_tril.expand(*batch_shape, k, d, d))

    def __getitem__(self, index) -> "GaussianMixture":
        if len(self.batch_shape) == 0:
            raise IndexError("Cannot index a GaussianMixture with an empty batch shape.")
        if index is Ellipsis or (isinstance(index, tuple) and any(i is Ellipsis for i in index)):
            raise IndexError("Index a GaussianMixture's batch dimensions without Ellipsis.")
        return self._new(self._log_weights[index], self._loc[index], self._scale_tril[index])

    def to(self, *args, **kwargs) -> "GaussianMixture":
        """Move or cast all parameters (as ``Tensor.to``)."""
        return self._new(self._log_weights.to(*args, **kwargs), self._loc.to(*args, **kwargs),
                         self._scale_tril.to(*args, **kwargs))

    def detach(self) -> "GaussianMixture":
        return self._new(self._log_weights.detach(), self._loc.detach(), self._scale_tril.detach())

    @classmethod
    def stack(cls, mixtures: Sequence["GaussianMixture"], dim: int = 0) -> "GaussianMixture":
        """Stack mixtures with equal batch shape, ``K`` and ``D`` along a new batch dimension."""
        if dim < 0:
            dim = len(mixtures[0].batch_shape) + 1 + dim
        return cls(logits=torch.stack([m.log_weights for m in mixtures], dim),
                   loc=torch.stack([m.loc for m in mixtures], dim),
                   scale_tril=torch.stack([m.scale_tril for m in mixtures], dim), validate_args=False)

    def to_torch(self) -> MixtureSameFamily:
        """The same mixture as ``torch.distributions.MixtureSameFamily`` of ``MultivariateNormal``."""
        return MixtureSameFamily(Categorical(logits=self._log_weights),
                                 MultivariateNormal(self._loc, scale_tril=self._scale_tril))

    def __repr__(self) -> str:
        return (f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, num_components={self.num_components}, "
                f"dim={self.dim}, dtype={self.dtype})")

    # ----------------------------------------------------------------------------------- reduction / fitting
    def reduce(self, k: int) -> "GaussianMixture":
        """Greedy moment-preserving merge down to ``k`` components (Runnalls 2007); see ``reduction.py``."""
        from .reduction import runnalls_reduce

        return runnalls_reduce(self, k)

    @classmethod
    def fit(cls, samples: Tensor, k: int, *, sample_weights: Tensor | None = None,
            init: "GaussianMixture | None" = None, generator: torch.Generator | None = None,
            max_iterations: int = 200, tol: float = 1e-6) -> "GaussianMixture":
        """Maximum-likelihood ``k``-component mixture by EM; ``samples`` ``(N, *B, D)`` -> batch ``B``.

        ``sample_weights`` ``(N, *B)`` fits weighted (e.g. importance-weighted) samples; ``init`` starts EM from a
        mixture with batch ``B`` and ``k`` components instead of ``k`` random samples.
        """
        from .reduction import fit_em

        return fit_em(samples, k, sample_weights=sample_weights, init=init, generator=generator,
                      max_iterations=max_iterations, tol=tol)


__all__ = ["GaussianMixture"]

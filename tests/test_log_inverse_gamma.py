"""The tabulated mixture fit to log sigma^2 under an inverse-gamma prior: its KL to the exact density by quadrature
in float64, beta as an exact shift, its moments, and the shipped model reading it instead of its encoder."""

from __future__ import annotations

import math

import pytest
import torch

import distformer
from distformer.distributions.log_inverse_gamma import log_inverse_gamma_mixture, table_range
from distformer.nn.transformer import ModelConfig

F64 = torch.float64


def _kl_to_exact(alpha: float, beta: float) -> float:
    """KL(law of log sigma^2 ‖ the tabulated fit) by the trapezoid rule over 12 standard deviations and a long right
    tail (the density decays like exp(-alpha y) there)."""
    a = torch.tensor(alpha, dtype=F64)
    centre, sd = math.log(beta) - float(torch.digamma(a)), float(torch.polygamma(1, a).sqrt())
    y = torch.linspace(centre - 12 * sd, centre + 12 * sd + 40 / alpha, 200_001, dtype=F64)
    log_p = alpha * (math.log(beta) - y) - beta * torch.exp(-y) - float(torch.lgamma(a))
    log_q = log_inverse_gamma_mixture(torch.tensor(alpha), torch.tensor(beta)).log_prob(y.unsqueeze(-1))
    return float(torch.trapezoid(log_p.exp() * (log_p - log_q), y))


@pytest.mark.parametrize("alpha", [0.07, 0.26, 0.61, 1.0, 2.0, 3.7, 19.0, 150.0, 2500.0, 3e4])
def test_the_fit_is_the_exact_density_to_within_its_table_error(alpha):
    """Between table points as well as on them: under 2e-5 nats for alpha >= 0.5 (the wide meta-prior's and the
    narrow one's alpha = 2 included), under 1e-3 down to the paper's C.2 values (alpha about 0.26), and above the
    table, where the shape is clamped and the moments are not, still under 2e-5."""
    kl = _kl_to_exact(alpha, beta=1.7)
    assert kl >= -1e-9
    assert kl < (2e-5 if alpha >= 0.5 else 1e-3 if alpha >= 0.2 else 2e-3)


def test_beta_moves_the_fit_exactly_and_the_moments_are_the_closed_form():
    """log sigma^2 = log beta - log G: beta only moves the mixture, by log beta; its mean is log beta - digamma(alpha)
    and its variance trigamma(alpha) to within what a KL of 1e-5 allows."""
    alpha = torch.tensor([0.8, 2.0, 40.0], dtype=F64)
    one, other = log_inverse_gamma_mixture(alpha, torch.ones(3)), log_inverse_gamma_mixture(alpha, torch.full((3,), 7.5))
    torch.testing.assert_close(other.loc - one.loc, torch.full_like(one.loc, math.log(7.5)))
    torch.testing.assert_close(other.scale_tril, one.scale_tril)
    torch.testing.assert_close(one.mean[..., 0], -torch.digamma(alpha), rtol=0, atol=2e-3 * float(
        torch.polygamma(1, alpha).sqrt().max()))
    torch.testing.assert_close(one.covariance_matrix[..., 0, 0], torch.polygamma(1, alpha), rtol=1e-2, atol=0)
    low, high = table_range()
    assert low <= 0.05 and high >= 1e4


def test_bad_parameters_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="Expected positive, finite inverse-gamma parameters"):
        log_inverse_gamma_mixture(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 1.0]))


def test_the_shipped_model_reads_the_tabulated_fit_as_its_prior():
    """The prior approximation of the shipped inverse-gamma model is the table's mixture (on log sigma^2), and a
    data set with no readings returns it unchanged."""
    if "inverse-gamma" not in distformer.pretrained_names():
        pytest.skip("the inverse-gamma model is not shipped in this checkout")
    model = distformer.pretrained("inverse-gamma")
    assert model.config.prior_fit == "log-inverse-gamma"
    params = torch.tensor([[2.0, 2.0], [0.4, 3.0], [50.0, 0.2]])
    table = log_inverse_gamma_mixture(params[:, 0], params[:, 1])
    approx = model.prior_approximation(params).base
    torch.testing.assert_close(approx.loc.double(), table.loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(approx.log_weights.double(), table.log_weights, rtol=0, atol=1e-5)
    empty = torch.zeros(3, 1, 1), torch.zeros(3, 1, dtype=torch.bool)
    post = model.posterior(params, *empty).base
    torch.testing.assert_close(post.loc.double(), table.loc, rtol=0, atol=1e-5)


def test_prior_fit_is_validated_and_absent_from_older_configs():
    base = dict(dim=1, warp=("log",), prior_parameters={"alpha": "log", "beta": "log"}, d_model=8, num_heads=2,
                num_layers=1, ff_dim=8, hidden=8)
    assert ModelConfig.from_dict(base).prior_fit == ""
    assert ModelConfig(**base, prior_fit="log-inverse-gamma").prior_fit == "log-inverse-gamma"
    with pytest.raises(ValueError, match="Expected prior_fit among"):
        ModelConfig(**base, prior_fit="gamma")
    with pytest.raises(ValueError, match="Expected prior parameters \\['alpha', 'beta'\\]"):
        ModelConfig(dim=1, d_model=8, num_heads=2, num_layers=1, ff_dim=8, hidden=8, prior_fit="log-inverse-gamma")

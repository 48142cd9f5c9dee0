"""Out-of-family check: silent on in-family problems, fires (once) beyond the training support, strict raises."""

import warnings

import pytest
import torch

import distformer as dfm
from distformer.support import OutOfFamilyWarning, TrainingSupport
from helpers import random_mixture

NAMES = ["linear-gaussian-1d", "linear-gaussian-2d"]


@pytest.mark.parametrize("name", NAMES)
def test_silent_on_1000_in_family_problems(name):
    model = dfm.pretrained(name)
    problem = dfm.problems.get("linear-gaussian", **model.card["problem"]["options"])
    batch = problem.sample_batch(1000, generator=torch.Generator().manual_seed(99))  # a seed unused in training
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfFamilyWarning)
        model.posterior(batch.prior, batch.observations)


@pytest.mark.parametrize("name", NAMES)
def test_fires_once_for_priors_scaled_10x_beyond_the_support(name):
    model = dfm.pretrained(name)
    problem = dfm.problems.get("linear-gaussian", **model.card["problem"]["options"])
    batch = problem.sample_batch(50, generator=torch.Generator().manual_seed(5))
    D = problem.dim
    wide = batch.prior.affine(10.0 * torch.eye(D))  # means and scales 10x
    z = 10.0 * batch.observations.values["z"]
    with pytest.warns(OutOfFamilyWarning, match=r"prior mean\[0\] reaches .* \(trained range") as record:
        model.posterior(wide, z, batch.observations.masks["z"])
    assert "log scale" in str(record[0].message)
    assert record[0].filename == __file__  # the warning points at the caller's line, not at distformer
    with warnings.catch_warnings():  # the same violation warns only once per model
        warnings.simplefilter("error", OutOfFamilyWarning)
        model.posterior(wide, z, batch.observations.masks["z"])
    with pytest.raises(ValueError, match="inside the model's training family"):
        model.posterior(wide, z, batch.observations.masks["z"], strict=True)


def test_other_violations_and_opting_out(rng):
    model = dfm.pretrained("linear-gaussian-2d")
    prior = random_mixture((1,), 2, 2, rng, dtype=torch.float32, spread=0.5)
    with pytest.warns(OutOfFamilyWarning, match="K=2 components"):
        model.posterior(prior, torch.zeros(1, 3, 2))
    prior4 = random_mixture((1,), 4, 2, rng, dtype=torch.float32, spread=0.5)
    with pytest.raises(ValueError, match="25..25 observations per data set"):
        model.posterior(prior4, torch.zeros(1, 25, 2), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfFamilyWarning)
        model.posterior(prior4, 100 + torch.zeros(1, 3, 2), check=False)


def test_support_round_trips_and_is_recorded_by_training():
    card = dfm.pretrained("linear-gaussian-2d").card["support"]
    support = TrainingSupport.from_dict(card)
    assert TrainingSupport.from_dict(support.to_dict()) == support
    support._references(torch.float32)  # fills a cache that must not leak into the card
    assert set(support.to_dict()) == set(card) - {"estimated_by"}
    assert support.num_components == 4 and support.count_low["z"] == 1 and support.count_high["z"] == 20
    assert all(lo < hi for lo, hi in zip(support.chart_low, support.chart_high))


def test_torch_and_numpy_checks_agree(rng):
    """The torch path (used off the CPU) and the NumPy path (CPU) give the same verdict."""
    from distformer.nn.tokens import gmm_to_chart
    from distformer.observations import as_observations

    support = dfm.pretrained("linear-gaussian-2d").support
    for scale, n in [(1.0, 5), (10.0, 5), (1.0, 25)]:
        prior = random_mixture((3,), 4, 2, rng, dtype=torch.float32, spread=0.5)
        z = scale * torch.randn(3, n, 2, generator=rng)
        mask = torch.rand(3, n, generator=rng) > 0.3
        mask[:, 0] = True
        obs = as_observations(z, {"z": 2}, mask)
        chart = gmm_to_chart(prior.affine(scale * torch.eye(2)))
        flag = support._outside_flag(chart, obs.values["z"], obs.masks["z"])
        assert bool(flag) == support.any_violation(chart, obs)

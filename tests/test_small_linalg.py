"""Entry-by-entry Cholesky factors and inverses of many small matrices agree with LAPACK."""

import pytest
import torch

from distformer.distributions.small_linalg import MIN_UNROLLED_BATCH, cholesky_factor, inverse_from_factor, mahalanobis


def _spd(n, d, rng):
    A = torch.randn(n, d, d, generator=rng, dtype=torch.float64)
    return A @ A.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [3, MIN_UNROLLED_BATCH])
def test_factor_and_inverse_match_lapack_in_float64(d, n, rng):
    """Both branches (LAPACK for few matrices or D > 4, written out for many small ones) give L L^T = A and
    (L L^T)^-1 = A^-1 to 1e-10."""
    A = _spd(n, d, rng)
    L = cholesky_factor(A)
    torch.testing.assert_close(L, torch.linalg.cholesky(A), rtol=0, atol=1e-10)
    assert bool((L.triu(1) == 0).all())
    torch.testing.assert_close(inverse_from_factor(L), torch.linalg.inv(A), rtol=1e-9, atol=1e-9)


def test_batch_dimensions_are_kept(rng):
    A = _spd(2 * MIN_UNROLLED_BATCH, 2, rng).reshape(4, MIN_UNROLLED_BATCH // 2, 2, 2)
    assert cholesky_factor(A).shape == A.shape and inverse_from_factor(cholesky_factor(A)).shape == A.shape


def test_a_matrix_that_is_not_positive_definite_gets_nan_entries(rng):
    A = _spd(MIN_UNROLLED_BATCH, 2, rng)
    A[7] = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    L = cholesky_factor(A)
    assert bool(torch.isnan(L[7]).any())
    assert bool(torch.isfinite(L[:7]).all()) and bool(torch.isfinite(L[8:]).all())


def test_a_failed_factor_gets_a_nan_inverse_and_the_others_are_kept(rng):
    """LAPACK's Cholesky inverse refuses a whole batch over one factor with a zero diagonal entry (a partial factor
    from ``cholesky_ex``); the inverse is NaN for that factor alone, for the caller's finiteness check."""
    A = _spd(5, 6, rng)
    L = torch.linalg.cholesky(A)
    L[2, 3, 3] = 0.0
    L[4, 1, 1] = torch.nan
    inverse = inverse_from_factor(L)
    assert bool(torch.isnan(inverse[2]).all()) and bool(torch.isnan(inverse[4]).all())
    keep = [0, 1, 3]
    torch.testing.assert_close(inverse[keep], torch.linalg.inv(A[keep]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_gram_of_the_inverse_factor_is_the_inverse_in_float64(d, rng):
    """gram_entries(inverse_entries(L)) is the lower triangle of (L L^T)^-1 (the entrywise site update's prior
    precision)."""
    from distformer.distributions.small_linalg import cholesky_entries, entries, gram_entries, inverse_entries

    A = _spd(7, d, rng)
    gram = gram_entries(inverse_entries(cholesky_entries(entries(A))))
    inverse = torch.linalg.inv(A)
    for i in range(d):
        for j in range(i + 1):
            torch.testing.assert_close(gram[i][j], inverse[..., i, j], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
def test_mahalanobis_is_the_quadratic_form_in_float64(d, rng):
    """Written out for D <= 4 at any batch size, LAPACK above: sqrt(g^T A^-1 g) to 1e-10, batch shapes kept."""
    A = _spd(12, d, rng).reshape(3, 4, d, d)
    g = torch.randn(3, 4, d, generator=rng, dtype=torch.float64)
    expected = (g.unsqueeze(-2) @ torch.linalg.solve(A, g.unsqueeze(-1))).squeeze(-1).squeeze(-1).sqrt()
    torch.testing.assert_close(mahalanobis(A, g), expected, rtol=0, atol=1e-10)


"""numerics/linalg.py: the one checked PSD eigendecomposition and square root."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.numerics.linalg import psd_eigh, psd_sqrt


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31))
def test_square_root_reproduces_a_gram_matrix(n, rank, seed):
    X = np.random.default_rng(seed).standard_normal((n, rank))
    K = X @ X.T
    for R in (psd_sqrt(K), psd_sqrt(K, "K")):  # R R^T = K, to rounding of the eigendecomposition
        np.testing.assert_allclose(R @ R.T, K, atol=1e-12 * max(1.0, np.abs(K).max()))


def test_checked_path_names_the_argument():
    with pytest.raises(ValueError, match="^kx: must be positive semi-definite, smallest eigenvalue -1"):
        psd_eigh(np.diag([1.0, -1.0]), "kx")
    with pytest.raises(ValueError, match="^kx: must be symmetric"):
        psd_sqrt(np.array([[1.0, 0.5], [0.0, 1.0]]), "kx")
    with pytest.raises(ValueError, match=r"^kx: must be a finite square matrix, got shape \(2, 3\)"):
        psd_sqrt(np.zeros((2, 3)), "kx")
    with pytest.raises(ValueError, match="^kx: must be a finite square matrix, got non-finite entries"):
        psd_sqrt(np.full((2, 2), np.nan), "kx")
    evals, _, scale = psd_eigh(np.diag([2.0, -1e-14]), "k")  # rounding below zero is clipped, not refused
    assert evals.min() == 0.0 and scale == 2.0

"""The shared array helpers: the banded upper Gram matrix and the triangle mirror."""
import numba as nb
import numpy as np
import pytest

from limitlab.numerics import arrays


@pytest.mark.parametrize("n, d, dtype", [(7, 3, np.float64), (1500, 40, np.float64), (1300, 17, np.float32)])
def test_upper_gram_equals_the_full_product_on_and_above_the_diagonal(n, d, dtype):
    X = np.random.default_rng(n).standard_normal((n, d)).astype(dtype)
    G = arrays.upper_gram(X)
    ref = X.astype(np.float64) @ X.T.astype(np.float64)
    iu = np.triu_indices(n)
    eps = np.finfo(dtype).eps
    # each entry is one dot product of length d: |error| <= d eps |x||y| (Higham 3.5)
    norms = np.sqrt(np.diag(ref))
    assert G.dtype == dtype and G.shape == (n, n)
    assert np.all(np.abs(G[iu] - ref[iu]) <= d * eps * np.outer(norms, norms)[iu])


def test_upper_gram_is_the_same_with_one_thread_and_with_several():
    # the bands are independent GEMMs: the thread count only changes who computes them
    X = np.random.default_rng(1).standard_normal((1100, 30))
    many = arrays.upper_gram(X)
    old = nb.get_num_threads()
    try:
        nb.set_num_threads(1)
        one = arrays.upper_gram(X)
    finally:
        nb.set_num_threads(old)
    iu = np.triu_indices(1100)
    np.testing.assert_allclose(many[iu], one[iu], rtol=0, atol=1e-12 * np.abs(one).max())


@pytest.mark.parametrize("n", [1, 64, 150, 260])  # tile rows: one, one full, odd, even with a remainder
def test_mirror_upper_makes_the_matrix_symmetric_from_its_upper_triangle(n):
    A = np.triu(np.random.default_rng(2).standard_normal((n, n)))
    B = A.copy()
    arrays.mirror_upper(B)
    np.testing.assert_array_equal(B, A + np.triu(A, 1).T)

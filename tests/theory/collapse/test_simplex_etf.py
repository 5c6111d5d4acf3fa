import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

from limitlab.theory.collapse import orthogonal_frame, orthogonal_frame_gram, simplex_etf, simplex_etf_gram


@settings(max_examples=30, deadline=None)
@given(C=st.integers(2, 12), extra=st.integers(-1, 5), seed=st.one_of(st.none(), st.integers(0, 2**31)))
def test_simplex_etf_has_unit_norms_cosines_minus_one_over_c_minus_one_and_zero_sum(C, extra, seed):
    M = simplex_etf(C, C + extra, seed=seed)
    assert M.shape == (C, C + extra)
    G = M @ M.T
    expected = np.full((C, C), -1.0 / (C - 1))
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(G, expected, atol=1e-13)
    np.testing.assert_allclose(M.sum(axis=0), 0.0, atol=1e-13)


def test_simplex_etf_default_is_papyans_canonical_form():
    C = 5
    expected = np.sqrt(C / (C - 1)) * (np.eye(C) - np.ones((C, C)) / C)
    np.testing.assert_allclose(simplex_etf(C), expected, atol=1e-15)


def test_simplex_etf_scale_multiplies_every_vector():
    np.testing.assert_allclose(np.linalg.norm(simplex_etf(4, 6, scale=2.5, seed=1), axis=1), 2.5, atol=1e-13)


def test_simplex_etf_gram_symbolic_matches_numeric_and_general_c():
    for C in (2, 3, 7):
        G = np.array(simplex_etf_gram(C), dtype=float)
        M = simplex_etf(C)
        np.testing.assert_allclose(G, M @ M.T, atol=1e-14)
    Csym = sp.Symbol("C", integer=True, positive=True)
    Gs = simplex_etf_gram(Csym)
    assert sp.simplify(Gs.subs(Csym, 4).as_explicit() - simplex_etf_gram(4)) == sp.zeros(4, 4)


def test_orthogonal_frame_is_orthonormal_with_identity_gram():
    U = orthogonal_frame(4, 9, seed=3)
    np.testing.assert_allclose(U @ U.T, np.eye(4), atol=1e-13)
    assert orthogonal_frame_gram(3) == sp.eye(3)


def test_centred_orthogonal_frame_is_a_simplex_etf():
    # Dang et al. 2023: the bias-free minimizer is an orthogonal frame; centring gives the ETF
    U = orthogonal_frame(5, 8, seed=0)
    V = U - U.mean(axis=0)
    V /= np.linalg.norm(V, axis=1)[:, None]
    np.testing.assert_allclose(V @ V.T, np.array(simplex_etf_gram(5), dtype=float), atol=1e-13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), "num_classes"), (dict(num_classes=4, dim=2), "dim"), (dict(num_classes=2.0), "num_classes"),
    (dict(num_classes=3, scale=-1.0), "scale")])
def test_simplex_etf_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simplex_etf(**kwargs)


def test_orthogonal_frame_rejects_dim_below_classes():
    with pytest.raises(ValueError, match="dim"):
        orthogonal_frame(4, 3)


@pytest.mark.parametrize("frame", [simplex_etf, orthogonal_frame])
@pytest.mark.parametrize("dtype", [int, np.int32, np.uint8, bool, np.complex128, "U3"])
def test_frames_refuse_non_floating_dtypes(frame, dtype):
    # simplex_etf(3, dtype=int) used to return an all-zero "frame" (entries like 0.816 cast to 0)
    with pytest.raises(TypeError, match="floating dtype"):
        frame(3, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_frames_in_floating_dtypes_keep_their_geometry(dtype):
    E = simplex_etf(4, dtype=dtype)
    assert E.dtype == dtype
    G = E.astype(np.float64) @ E.astype(np.float64).T
    tol = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(np.diag(G), 1.0, atol=tol)
    np.testing.assert_allclose(G[np.triu_indices(4, 1)], -1 / 3, atol=tol)
    assert orthogonal_frame(3, dtype=dtype).dtype == dtype

"""Funk–Hecke spectra against Bessel closed forms, mpmath quadrature, multiplicity counts,
and the limiting NTK of theory.kernels.MLP."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import comb, gamma, iv, roots_jacobi

from limitlab.theory.risk.sphere_spectra import (dot_product_kernel, gegenbauer_quadrature, legendre_d, multiplicity,
                                                 sphere_spectrum)


@pytest.mark.parametrize("d", [2, 3, 5, 10, 30])
def test_exponential_kernel_matches_bessel_closed_form(d):
    # e^t = sum_l N(d,l) lambda_l P_l(t) with lambda_l = Gamma(d/2) 2^(d/2-1) I_(l+d/2-1)(1)
    s = sphere_spectrum(np.exp, d, 15)
    exact = gamma(d / 2) * 2 ** (d / 2 - 1) * iv(np.arange(16) + d / 2 - 1, 1.0)
    # quadrature of an oscillating integrand: absolute accuracy ~1e-14 k(1)
    assert np.max(np.abs(s.eigenvalues - exact)) <= 1e-13 * math.e
    big = exact > 1e-3
    assert np.max(np.abs(s.eigenvalues[big] / exact[big] - 1)) <= 1e-10
    assert abs(s.trace_residual) <= 1e-13 * math.e * s.multiplicities.sum()  # per-eigenvalue bound, summed


@pytest.mark.parametrize("d", [2, 3, 4, 7])
def test_multiplicities_match_the_harmonic_count(d):
    # N(d, l) = C(l+d-1, d-1) - C(l+d-3, d-1) (homogeneous harmonic polynomials)
    for l in range(0, 12):
        ref = comb(l + d - 1, d - 1, exact=True) - (comb(l + d - 3, d - 1, exact=True) if l >= 2 else 0)
        assert multiplicity(d, l) == ref
    # as an array holding degree 0 (the form sphere_spectrum uses): exact integers, elementwise
    refs = [comb(l + d - 1, d - 1, exact=True) - (comb(l + d - 3, d - 1, exact=True) if l >= 2 else 0)
            for l in range(0, 200)]
    got = multiplicity(d, np.arange(200))
    assert got.tolist() == refs and np.all(got.astype(np.int64) == refs)
    assert np.all(sphere_spectrum(np.exp, d, 30).multiplicities.astype(np.int64) == refs[:31])


def test_legendre_d3_is_legendre_and_d2_is_chebyshev():
    t = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(legendre_d(6, 3, t), [np.polynomial.legendre.Legendre.basis(l)(t) for l in range(7)],
                               atol=1e-13)
    np.testing.assert_allclose(legendre_d(6, 2, t), [np.cos(l * np.arccos(t)) for l in range(7)], atol=1e-13)


def _arccos1(t):
    """Degree-1 arc-cosine kernel (Cho & Saul 2009): (sqrt(1-t^2) + (pi - arccos t) t)/pi, written here only."""
    t = np.clip(t, -1, 1)
    return (np.sqrt(1 - t * t) + (np.pi - np.arccos(t)) * t) / np.pi


def test_singular_arccos_kernel_matches_mpmath_eigenvalues():
    import mpmath as mp

    d = 4
    s = sphere_spectrum(_arccos1, d, 8)
    mp.mp.dps = 25
    c = mp.gamma(mp.mpf(d) / 2) / (mp.sqrt(mp.pi) * mp.gamma(mp.mpf(d - 1) / 2))
    for l in range(9):
        # t = cos(th): (1 - t^2)^(1/2) dt = sin^2(th) dth, P_l = U_l(cos th)/(l+1) = sin((l+1)th)/((l+1) sin th)
        k = lambda th: (mp.sin(th) + (mp.pi - th) * mp.cos(th)) / mp.pi  # noqa: E731
        ref = c * mp.quad(lambda th, l=l: k(th) * mp.sin((l + 1) * th) * mp.sin(th) / (l + 1), [0, mp.pi / 2, mp.pi])
        assert abs(s.eigenvalues[l] - float(ref)) <= 1e-12
    # degree-1 arc-cosine kernel: eigenvalues vanish at odd l >= 3 (Bach 2017; Bietti & Mairal 2019)
    assert np.all(np.abs(s.eigenvalues[3::2]) < 1e-12)


def test_mlp_ntk_spectrum_uses_the_limiting_kernel():
    from limitlab.theory.kernels import MLP

    model = MLP(1, "relu", weight_var=2.0, bias_var=0.0)
    k = dot_product_kernel(model, "ntk")
    t = np.linspace(-1, 1, 9)
    # NTK parametrization, w = 2, b = 0, |x|^2 = d (Jacot et al. 2018; Cho & Saul 2009 closed forms):
    # K1 = 2t; K2 = 2 E[relu relu] at variance 2 = 2 arccos1(t); Kdot2 = 2 (pi - acos t)/(2 pi); Theta = K2 + Kdot2 K1
    ref = 2 * _arccos1(t) + (np.pi - np.arccos(t)) / np.pi * 2 * t
    np.testing.assert_allclose(k(t), ref, rtol=1e-12, atol=1e-14)
    s = sphere_spectrum(model, 5, 30)
    assert np.all(s.eigenvalues[:3] > 0)
    assert abs(s.trace_residual) < 1e-2 * s.trace  # the tail beyond degree 30 carries the rest


@pytest.mark.parametrize("d", [400, 1000, 10 ** 4, 10 ** 6])
def test_high_dimension_matches_mpmath_bessel(d):
    # scipy's roots_jacobi overflows here (d >~ 400); the Golub-Welsch rule does not.
    # Reference: lambda_l = Gamma(nu + 1) 2^nu I_(l+nu)(1), nu = (d-2)/2, by mpmath at 40 digits.
    import mpmath as mp

    s = sphere_spectrum(np.exp, d, 6)
    with mp.workdps(40):
        nu = mp.mpf(d - 2) / 2
        exact = np.array([float(mp.gamma(nu + 1) * mp.mpf(2) ** nu * mp.besseli(l + nu, 1)) for l in range(7)])
    assert np.max(np.abs(s.eigenvalues - exact)) <= 1e-14 * math.e
    big = exact > 1e-6
    assert np.max(np.abs(s.eigenvalues[big] / exact[big] - 1)) <= 1e-10
    # the d -> infinity limit: I_(nu+1)(1) ~ 2^-(nu+1)/Gamma(nu+2) (1 + 1/(4 (nu+2))) gives d lambda_1 = 1 + 1/(2d) + O(d^-2)
    assert abs(d * s.eigenvalues[1] - 1 - 1 / (2 * d)) <= 2 / d ** 2


def test_limiting_ntk_spectrum_in_high_dimension():
    # the user's case: MLP kernels at d >= 400 raised an error about X2 (NaN nodes from scipy)
    from limitlab.theory.kernels import MLP

    s = sphere_spectrum(dot_product_kernel(MLP(2, "relu", bias_var=0.1), "ntk"), 1000, 4)
    assert np.all(np.isfinite(s.eigenvalues)) and np.all(s.eigenvalues[:3] > 0)
    # lambda_0 -> k(0) as d -> infinity (the cosine concentrates at 0): the NTK at t = 0
    k0 = float(dot_product_kernel(MLP(2, "relu", bias_var=0.1), "ntk")(np.array([0.0]))[0])
    assert abs(s.eigenvalues[0] - k0) < 1e-2 * k0


@pytest.mark.parametrize("d", [2, 3, 4, 7, 30, 250])
def test_quadrature_agrees_with_scipy_where_scipy_works(d):
    n = 300
    t, w = gegenbauer_quadrature(n, d)
    a = (d - 3) / 2
    t_ref, w_ref = roots_jacobi(n, a, a)
    np.testing.assert_allclose(t, t_ref, rtol=0, atol=1e-14)
    # scipy's own end weights are off by ~1e-10 relative (measured against mpmath for d = 3, n = 300;
    # ours by < 2e-12, see the next test)
    np.testing.assert_allclose(w, w_ref / w_ref.sum(), rtol=3e-10, atol=1e-17)


def test_quadrature_weights_match_mpmath_gauss_legendre():
    # d = 3 is Gauss-Legendre: normalized weights 1/((1 - x^2) P_n'(x)^2) at the roots of P_n (30 digits)
    import mpmath as mp

    n = 300
    t, w = gegenbauer_quadrature(n, 3)
    with mp.workdps(30):
        for j in (0, 1, 2, 75, 150):
            x = mp.findroot(lambda x: mp.legendre(n, x), mp.mpf(t[j]))
            dp = mp.diff(lambda x: mp.legendre(n, x), x)
            assert abs(t[j] - float(x)) <= 1e-15
            assert abs(w[j] / float(1 / ((1 - x ** 2) * dp ** 2)) - 1) <= 1e-11


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 10 ** 8), n=st.integers(3, 120))
def test_quadrature_moments_are_exact(d, n):
    # t = one coordinate of a uniform point of S^(d-1): E t^2 = 1/d, E t^4 = 3/(d(d+2)), odd moments 0
    t, w = gegenbauer_quadrature(n, d)
    assert np.all(w > 0) and np.all(np.diff(t) > 0) and np.all(np.abs(t) < 1)
    assert w.sum() == pytest.approx(1.0, rel=1e-14)
    assert w @ t == pytest.approx(0.0, abs=1e-15)
    assert w @ t ** 2 == pytest.approx(1 / d, rel=1e-12)
    assert w @ t ** 4 == pytest.approx(3 / (d * (d + 2)), rel=1e-11)


def test_bad_input():
    with pytest.raises(ValueError, match="d"):
        sphere_spectrum(np.exp, 1, 5)
    with pytest.raises(ValueError, match=r"d: .*>= 2, got 1"):
        multiplicity(1, 3)  # used to return 0 silently
    with pytest.raises(ValueError, match="d"):
        multiplicity(2.5, 3)
    with pytest.raises(ValueError, match="degree"):
        multiplicity(3, -1)
    with pytest.raises(TypeError, match="degree"):
        multiplicity(3, 1.5)
    with pytest.raises(ValueError, match="nodes"):
        gegenbauer_quadrature(0, 3)
    with pytest.raises(ValueError, match="max_degree"):
        sphere_spectrum(np.exp, 3, -1)
    with pytest.raises(ValueError, match="kernel"):
        sphere_spectrum(lambda t: np.full_like(t, np.nan), 3, 2)

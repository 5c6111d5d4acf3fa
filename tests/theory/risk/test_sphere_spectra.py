"""Funk–Hecke spectra against Bessel closed forms, mpmath quadrature, multiplicity counts,
and the limiting NTK of theory.kernels.MLP."""
import math

import numpy as np
import pytest
from scipy.special import comb, gamma, iv

from limitlab.theory.risk.sphere_spectra import dot_product_kernel, legendre_d, multiplicity, sphere_spectrum


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


def test_bad_input():
    with pytest.raises(ValueError, match="d"):
        sphere_spectrum(np.exp, 1, 5)
    with pytest.raises(ValueError, match="max_degree"):
        sphere_spectrum(np.exp, 3, -1)
    with pytest.raises(ValueError, match="kernel"):
        sphere_spectrum(lambda t: np.full_like(t, np.nan), 3, 2)

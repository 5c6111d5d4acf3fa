"""Closed-form kernel maps: derived/cross-checked symbolically and against independent numerics."""
import math

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from limitlab.numerics import gaussian
from limitlab.theory import activations as A
from limitlab.theory.kernels import dual

CONTINUOUS = ["relu", "abs", "erf", "sin", "cos", "exp", "gaussian", "gelu", "identity",
              ("leaky_relu", {"alpha": 0.2}), ("abrelu", {"a": -0.3, "b": 0.7}),
              ("rectified_monomial", {"degree": 2}), ("rectified_monomial", {"degree": 3}),
              ("monomial", {"degree": 3}), ("polynomial", {"coefficients": [0.5, -1, 0.25, 0.1]}),
              ("erf", {"a": 0.7, "b": 1.4, "c0": 0.2}), ("sin", {"a": 0.8, "b": 1.3, "c0": 0.4})]


def _act(spec):
    return A.get(spec) if isinstance(spec, str) else A.get(spec[0], **spec[1])


def _ids(specs):
    return [s if isinstance(s, str) else f"{s[0]}{list(s[1].values())}" for s in specs]


POINTS = [(1.3, 0.7, 0.4), (0.2, 2.5, -0.5), (4.0, 4.0, 3.9), (1.0, 1.0, -0.999)]


@pytest.mark.parametrize("spec", CONTINUOUS, ids=_ids(CONTINUOUS))
def test_price_theorem_d_dc_of_nngp_map_is_the_derivative_map(spec):
    """Price 1958: d/dc E[phi(u)phi(v)] = E[phi'(u)phi'(v)] for continuous phi (checked at 40 digits)."""
    d = dual(_act(spec))
    lhs = sp.diff(d.nngp, A.c) - d.derivative
    for p in POINTS:
        val = lhs.subs({A.q1: sp.Rational(str(p[0])), A.q2: sp.Rational(str(p[1])), A.c: sp.Rational(str(p[2]))})
        assert abs(complex(val.evalf(40))) < 1e-30


@pytest.mark.parametrize("spec", CONTINUOUS + ["step", "sign"], ids=_ids(CONTINUOUS + ["step", "sign"]))
def test_closed_form_matches_independent_quadrature(spec):
    """Closed form vs nested Gauss-Legendre quadrature of the defining integral (1e-12)."""
    act = _act(spec)
    d = dual(act)
    phi = lambda t: act(t)  # noqa: E731
    dphi = lambda t: act.derivative(t)  # noqa: E731
    for q1, q2, c in POINTS[1:3]:
        n0, n1 = d.evaluate(q1, q2, c)
        r0, r1 = gaussian.nested_dual(phi, dphi, q1, q2, c, kinks=(0.0,))
        scale0 = math.sqrt(gaussian.expect(lambda t: phi(t) ** 2, q1) * gaussian.expect(lambda t: phi(t) ** 2, q2))
        scale1 = math.sqrt(gaussian.expect(lambda t: dphi(t) ** 2, q1) * gaussian.expect(lambda t: dphi(t) ** 2, q2))
        assert abs(n0 - r0) <= 1e-12 * scale0
        assert abs(n1 - r1) <= 1e-12 * max(scale1, 1e-300) + (0 if scale1 else 1e-300)


MP_FUNCS = {
    "relu": (lambda u: max(u, 0), lambda u: mp.mpf(u > 0)),
    "erf": (mp.erf, lambda u: 2 / mp.sqrt(mp.pi) * mp.exp(-u * u)),
    "gelu": (lambda u: u * mp.ncdf(u), lambda u: mp.ncdf(u) + u * mp.npdf(u)),
    "sin": (mp.sin, mp.cos),
    "abs": (abs, lambda u: mp.sign(u)),
}


@pytest.mark.parametrize("name", sorted(MP_FUNCS))
@pytest.mark.parametrize("q", [1e-4, 0.37, 2.0, 1e4])
def test_diagonal_matches_mpmath_30_digits(name, q):
    """At c = q1 = q2 the map is a 1-D expectation: compare with mpmath at 30 digits (1e-12)."""
    if name == "sin" and q > 100:
        pytest.skip("sin(100 z) oscillates too fast for the mpmath reference's panels")
    f, df = MP_FUNCS[name]
    d = dual(name)
    n0, n1 = d.evaluate(q, q, q)
    r0 = mp_ref = gaussian.mp_expect(lambda u: f(u) ** 2, q, dps=30)
    r1 = gaussian.mp_expect(lambda u: df(u) ** 2, q, dps=30)
    assert abs(n0 - float(r0)) <= 1e-12 * abs(float(mp_ref))
    assert abs(n1 - float(r1)) <= 1e-12 * abs(float(r1))


@pytest.mark.parametrize("name", sorted(MP_FUNCS))
def test_zero_covariance_factorizes(name):
    """c = 0: E[phi(u)phi(v)] = E[phi(u)] E[phi(v)] (independence), mpmath at 30 digits."""
    f, df = MP_FUNCS[name]
    q1, q2 = 0.7, 3.1
    n0, n1 = dual(name).evaluate(q1, q2, 0.0)
    r0 = gaussian.mp_expect(f, q1) * gaussian.mp_expect(f, q2)
    r1 = gaussian.mp_expect(df, q1) * gaussian.mp_expect(df, q2)
    assert abs(n0 - float(r0)) <= 1e-12 * max(1.0, abs(float(r0)))
    assert abs(n1 - float(r1)) <= 1e-12 * max(1.0, abs(float(r1)))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_hermite_dual_is_rho_to_the_n(n):
    """Normalized Hermite polynomials: E[h_n(u) h_n(v)] = c^n at unit variances (Mehler), symbolically."""
    d = dual("hermite", degree=n)
    assert sp.simplify(d.nngp.subs({A.q1: 1, A.q2: 1}) - A.c ** n) == 0


def test_relu_is_the_arc_cosine_kernel_of_degree_one():
    """Cho & Saul 2009: E[relu(u)relu(v)] = sqrt(q1 q2) (sin t + (pi - t) cos t) / (2 pi)."""
    t = sp.acos(A.c / sp.sqrt(A.q1 * A.q2))
    expected = sp.sqrt(A.q1 * A.q2) * (sp.sin(t) + (sp.pi - t) * sp.cos(t)) / (2 * sp.pi)
    assert sp.simplify(dual("relu").nngp - expected) == 0
    assert sp.simplify(dual("relu").derivative - (sp.pi - t) / (2 * sp.pi)) == 0


def test_symbolic_forms_exist_for_any_activation():
    """Numerical activations expose the unevaluated Gaussian integral and the Mehler series."""
    d = dual("tanh")
    assert not d.closed_form
    assert isinstance(d.nngp, sp.Integral) and isinstance(d.series[0], sp.Sum)
    assert sp.latex(d.nngp)


def test_bad_covariance_is_rejected():
    with pytest.raises(ValueError, match="c: "):
        dual("relu").evaluate(1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="q1, q2"):
        dual("relu").evaluate(-1.0, 1.0, 0.0)


def test_derivative_kernel_is_named_for_what_it_is_and_ntk_is_a_deprecated_alias():
    """E[phi'(u) phi'(v)] is the derivative kernel (K-dot), not an NTK: ``Dual.derivative``;
    ``Dual.ntk`` still answers, with a DeprecationWarning."""
    d = dual("erf")
    with pytest.warns(DeprecationWarning, match="Dual.derivative"):
        old = d.ntk
    assert old == d.derivative
    # Price: d/dc of the NNGP map is the derivative kernel (the identity that names it)
    assert sp.simplify(sp.diff(dual("relu").nngp, A.c) - dual("relu").derivative) == 0


def test_complex_covariances_are_rejected():
    with pytest.raises(TypeError, match="c: must be real"):
        dual("relu").evaluate(1.0, 1.0, 0.5 + 0.1j)
    with pytest.raises(TypeError, match="q1: must be real"):
        dual("tanh").evaluate(np.array([1.0 + 0j]), 1.0, 0.5)

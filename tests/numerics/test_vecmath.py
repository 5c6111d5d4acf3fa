"""The branch-free arctangent the compiled loops use instead of libm's."""
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.numerics import codegen, vecmath

ULP_REL = 2.3e-16  # about one ulp of the result, relative


def _mp_atan2(y, x):
    with mp.workdps(30):
        return float(mp.atan2(mp.mpf(y), mp.mpf(x)))


def test_coefficients_are_the_chebyshev_interpolant_of_the_reduced_arctangent():
    # (atan(u)/u - 1)/u^2 interpolated in z = u^2 at 11 Chebyshev nodes of [0, tan(pi/8)^2]
    with mp.workdps(50):
        a = mp.tan(mp.pi / 8) ** 2
        n = len(vecmath.COEFFICIENTS)
        nodes = [(a / 2) * (1 - mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n)) for k in range(n)]
        g = [(mp.atan(mp.sqrt(z)) / mp.sqrt(z) - 1) / z for z in nodes]
        coef = mp.lu_solve(mp.matrix([[z ** j for j in range(n)] for z in nodes]), mp.matrix(g))
    assert [float(c) for c in coef] == pytest.approx(vecmath.COEFFICIENTS, rel=1e-12, abs=1e-16)


def test_atan2_matches_30_digit_mpmath_over_300_orders_of_magnitude():
    rng = np.random.default_rng(0)
    ys = rng.standard_normal(3000) * 10.0 ** rng.uniform(-150, 150, 3000)
    xs = rng.standard_normal(3000) * 10.0 ** rng.uniform(-150, 150, 3000)
    # near the reduction's switch points and the axes
    t = math.tan(math.pi / 8)
    ys = np.concatenate([ys, [t, t * (1 + 1e-15), 1.0, 1e-300, 0.0, -0.0, 1.0, -1.0, 5e-324]])
    xs = np.concatenate([xs, [1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.0, -1e-300, 1.0]])
    for y, x in zip(ys, xs):
        ref = _mp_atan2(y, x)
        assert abs(vecmath.atan2(y, x) - ref) <= 2 * ULP_REL * abs(ref) + 1e-320, (y, x)


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_atan2_is_odd_in_y_bounded_and_agrees_with_libm(y, x):
    r = vecmath.atan2(y, x)
    assert -math.pi <= r <= math.pi
    if y != 0.0:
        assert vecmath.atan2(-y, x) == -r
    # signed zeros count as +0 (the kernels never produce -0 angles' arguments)
    assert abs(r - math.atan2(y + 0.0, x + 0.0)) <= 4 * ULP_REL * max(abs(r), 1e-300)


def test_atan2_of_zero_over_zero_is_zero():
    # the kernels rely on it: a zero-variance input then gets its exact limit, not NaN
    assert vecmath.atan2(0.0, 0.0) == 0.0


def test_atan_matches_math_atan():
    x = np.concatenate([np.linspace(-50, 50, 2001), [1e-300, 1e300, -1e300]])
    ref = np.arctan(x)
    got = np.array([vecmath.atan(v) for v in x])
    assert np.all(np.abs(got - ref) <= 4 * ULP_REL * np.abs(ref) + 1e-320)


def test_generated_code_calls_the_vectorizable_arctangents_not_libm():
    import sympy as sp
    a, b = sp.symbols("a b", real=True)
    src = codegen.scalar_function_source("f", [a, b], [sp.atan2(a, b) + sp.atan(a)])
    assert "_atan2(" in src and "_atan(" in src and "math.atan" not in src


def _pair(s1, s2, rho):
    # (r, c, t) as the compiled recursion forms them: t = s1 s2, r = sqrt((t - c)(t + c))
    t = s1 * s2
    c = rho * t
    d = (t - c) * (t + c)
    return (math.sqrt(d) if d > 0 else 0.0), c, t


def test_pair_angle_matches_30_digit_mpmath_from_parallel_to_antiparallel():
    rng = np.random.default_rng(5)
    rhos = np.concatenate([rng.uniform(-1, 1, 1500),
                           np.sign(rng.uniform(-1, 1, 1000)) * (1 - 10.0 ** rng.uniform(-17, -1, 1000)),
                           np.sign(rng.uniform(-1, 1, 500)) * 10.0 ** rng.uniform(-17, 0, 500),
                           [0.0, -0.0, 1.0, -1.0, math.cos(math.pi / 4), -math.cos(math.pi / 4)]])
    for rho in rhos:
        s1, s2 = 10.0 ** rng.uniform(-70, 70, 2)
        r, c, t = _pair(s1, s2, rho)
        ref = _mp_atan2(r, c)
        assert abs(vecmath.angle(r, c, t) - ref) <= 2 * ULP_REL * abs(ref) + 1e-320, (r, c, t)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-30, 1e30), st.floats(1e-30, 1e30), st.floats(-1.0, 1.0))
def test_pair_angle_lies_in_0_pi_and_reflects_to_pi_minus_itself(s1, s2, rho):
    r, c, t = _pair(s1, s2, rho)
    a = vecmath.angle(r, c, t)
    assert 0.0 <= a <= math.pi
    # the angle to -y is pi minus the angle to y
    assert abs(vecmath.angle(r, -c, t) - (math.pi - a)) <= 4 * ULP_REL * math.pi


def test_pair_angle_of_a_zero_variance_input_is_zero():
    assert vecmath.angle(0.0, 0.0, 0.0) == 0.0


def test_arc_cosine_maps_take_the_pair_angle_through_the_pipelined_layer():
    # relu's map takes the angle of (r, c) as an argument, computed by vecmath.angle's two
    # halves in a software-pipelined loop; erf's (an arctangent of another argument, written so
    # since its arcsine's cosine cancels at large q) keeps vecmath.atan inside its map and the
    # one-pass loop
    from limitlab.theory.kernels import MLP
    relu = open(MLP(1, "relu")._compiled().__file__).read()
    erf = open(MLP(1, "erf")._compiled().__file__).read()
    assert "def _dualmap_raw(s1, s2, cc, r, theta)" in relu and "_atan2(" not in relu.split("def diagonal")[0]
    assert "def _pipelined(" in relu and "_angle_reduce(" in relu and "_angle_finish(" in relu
    assert "_atan(" in erf.split("def diagonal")[0] and "def _pipelined(" not in erf
    assert "_atan2(" not in erf.split("def diagonal")[0] and "4*r**2" in erf.split("def diagonal")[0]

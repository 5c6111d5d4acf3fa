"""Kernels at large input scale (|x|^2/d up to 1e16) against 30-digit mpmath, in both paths.

Seen by users: the tanh cross path (X2 given) off by 2e-4 at scale 1e6 and 71 % at 1e8 on
the entries pairing a point with its copy; erf's NTK diagonal off by 0.9 % at 3e7 and a
"zero variance" error beyond, gelu alike.
"""
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.numerics import gaussian
from limitlab.theory import activations as A
from limitlab.theory.kernels import MLP

SCALES = [1.0, 1e3, 1e6, 1e8]
W, B = 2.0, 0.1
# two rows with simple entries (rho = 0.93 at large scale) among random ones
PAIR = np.array([[1.0, 2.0, 2.0], [1.5, 2.0, 1.0]])


def _inputs(n=20):
    # 20 rows: more distinct variances than the numerical path evaluates one by one, so its
    # Hermite tables are interpolated in log q
    return np.vstack([PAIR, np.random.default_rng(0).standard_normal((n - 2, 3))])


def _layer1(x, y):
    """(q1, q2, c) of the first layer at 250 digits, from the float inputs exactly."""
    with mp.workdps(250):
        g = lambda u, v: mp.fsum(mp.mpf(float(a)) * mp.mpf(float(b)) for a, b in zip(u, v)) / len(u)  # noqa: E731
        b = mp.mpf(1) / 10
        return W * g(x, x) + b, W * g(y, y) + b, W * g(x, y) + b


def _diag_ntk_reference(x, f, df):
    """Depth-1 NTK at (x, x): w E[phi^2] + b + w E[phi'^2] K1, 1-D mpmath at 30 digits."""
    q, _, _ = _layer1(x, x)
    e2 = gaussian.mp_expect(lambda u: f(u) ** 2, q, (0.0,), dps=30)
    ed = gaussian.mp_expect(lambda u: df(u) ** 2, q, (0.0,), dps=30)
    return W * e2 + mp.mpf(1) / 10 + W * ed * q


def _erf_reference(q1, q2, c):
    """Williams 1997 as printed (the textbook form), at 250 digits: enough for its cancellation at 1e200."""
    with mp.workdps(250):
        d1, d2 = 1 + 2 * q1, 1 + 2 * q2
        A = 2 / mp.pi * mp.asin(2 * c / mp.sqrt(d1 * d2))
        Ad = 4 / mp.pi / mp.sqrt(d1 * d2 - 4 * c * c)
        return W * A + mp.mpf(1) / 10 + W * Ad * c


def _gelu_reference(q1, q2, c):
    """Tsuchida et al. 2020 as printed, at 250 digits."""
    with mp.workdps(250):
        p1, p2 = q1 + 1, q2 + 1
        d2 = p1 * p2 - c * c
        d = mp.sqrt(d2)
        ang = mp.atan(c / d)
        A = ((c * c + q1 * q2 * d2) / (p1 * p2 * d) + c * ang) / (2 * mp.pi) + c / 4
        Ad = c / d / (2 * mp.pi) * (1 / d2 + (1 - q1 * q2) / (p1 * p2) + 1) + mp.mpf(1) / 4 + ang / (2 * mp.pi)
        return W * A + mp.mpf(1) / 10 + W * Ad * c


MP = {"tanh": (mp.tanh, lambda u: mp.sech(u) ** 2),
      "erf": (mp.erf, lambda u: 2 / mp.sqrt(mp.pi) * mp.exp(-u * u)),
      "gelu": (lambda u: u * mp.ncdf(u), lambda u: mp.ncdf(u) + u * mp.npdf(u))}

# E[phi phi] + E[phi' phi'] c at the PAIR's off-diagonal entry for tanh (no closed form):
# nested 20-digit mpmath quadrature (gaussian.mp_expect2 with a breakpoint at 0), ~3 min a value
TANH_PAIR = {1.0: "3.1217941420594908", 1e3: "4.7986190960008344", 1e6: "4.798623095470556",
             1e8: "4.7986230955808509"}


def _check(K, ref, scale, tol, what):
    err = abs(float(mp.mpf(float(K)) - ref))
    assert err <= tol * scale, f"{what}: {float(K)!r} vs mpmath {mp.nstr(ref, 17)} (error {err / scale:.2e} of scale)"


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("activation", ["tanh", "erf", "gelu"])
def test_depth1_ntk_matches_mpmath_at_every_scale_in_both_paths(activation, scale):
    X = _inputs() * scale
    m = MLP(1, activation, W, B)
    sym, cross = m.ntk(X), m.ntk(X, X.copy())
    f, df = MP[activation]
    # the whole matrices agree (relative to the Cauchy-Schwarz scale sqrt(K_ii K_jj))
    d = np.sqrt(np.outer(np.diag(sym), np.diag(sym)))
    assert np.max(np.abs(sym - cross) / d) <= 1e-12
    for i in [0, 1, 5, 16]:
        ref = _diag_ntk_reference(X[i], f, df)
        for K, path in ((sym, "symmetric"), (cross, "cross")):
            _check(K[i, i], ref, abs(ref), 1e-11, f"{path} diagonal {i}")
    q1, q2, c = _layer1(X[0], X[1])
    if activation == "tanh":
        ref = mp.mpf(TANH_PAIR[scale])
    else:
        ref = (_erf_reference if activation == "erf" else _gelu_reference)(q1, q2, c)
    for K, path in ((sym, "symmetric"), (cross, "cross")):
        _check(K[0, 1], ref, np.sqrt(K[0, 0] * K[1, 1]), 1e-11, f"{path} (0, 1)")
        if activation != "tanh":
            _check(K[0, 1], ref, abs(ref), 1e-10, f"{path} (0, 1) relative to itself")


@pytest.mark.parametrize("activation", ["erf", "gelu"])
@pytest.mark.parametrize("scale", [1e12, 1e30, 1e49])
def test_erf_and_gelu_stay_accurate_far_beyond(activation, scale):
    """No cancellation left: the closed forms keep every digit up to variances of Q_MAX = 1e100."""
    X = PAIR * scale
    k = MLP(1, activation, W, B).kernels(X)
    q1, q2, c = _layer1(X[0], X[1])
    ref = (_erf_reference if activation == "erf" else _gelu_reference)(q1, q2, c)
    _check(k.ntk[0, 1], ref, abs(ref), 1e-12, "ntk (0, 1)")
    refd = (_erf_reference if activation == "erf" else _gelu_reference)(q1, q1, q1)
    _check(k.ntk[0, 0], refd, abs(refd), 1e-12, "ntk (0, 0)")


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", A.exp()])
def test_variances_beyond_the_limit_are_a_clear_error(activation):
    X = PAIR.copy()
    X[1] *= 1e51  # layer-1 variance 2 * 7.25e102 / 3 > Q_MAX
    with pytest.raises(ValueError, match=r"X1: row 1 has pre-activation variance 4.83e\+102 at layer 1.*1e\+100"):
        MLP(2, activation, W, B).kernels(X)
    with pytest.raises(ValueError, match=r"X2: row 1 .* at layer 1"):
        MLP(2, activation, W, B).kernels(PAIR, X)
    # exp's second-layer variance e^{q} overflows from moderate inputs: named too, not "zero variance"
    if activation is not None and getattr(activation, "name", "").startswith("exp"):
        with pytest.raises(ValueError, match=r"X1: row \d has pre-activation variance inf at layer 2"):
            MLP(2, activation, W, B).kernels(PAIR * 30)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["erf", "gelu", "relu", "abs"]), st.floats(0.0, 45.0), st.integers(0, 2 ** 32 - 1),
       st.integers(1, 3))
def test_closed_forms_are_finite_symmetric_and_cauchy_schwarz_at_any_scale(activation, log_scale, seed, depth):
    """At input scales 1 .. 1e45 (variances up to 1e90): finite, both paths agree, and
    |K_ij| <= sqrt(K_ii K_jj), for the compiled closed forms."""
    X = np.random.default_rng(seed).standard_normal((6, 3)) * 10.0 ** log_scale
    X[3] = X[1]  # a repeated point: the parallel snap
    m = MLP(depth, activation, W, B)
    sym, cross = m.kernels(X), m.kernels(X, X.copy())
    for a, b in zip(sym, cross):
        assert np.all(np.isfinite(a))
        d = np.sqrt(np.outer(np.diag(a), np.diag(a)))
        assert np.max(np.abs(a - b) / d) <= 1e-12
        assert np.all(np.abs(a) <= d * (1 + 1e-12))
        # the repeated point's row is the original's (the GEMM's blocking may differ by an ulp)
        assert np.max(np.abs(a[3] - a[1]) / d[1]) <= 1e-13

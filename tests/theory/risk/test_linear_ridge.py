"""Linear ridge risk (Hastie et al.) against mpmath, the ridgeless closed forms, numerical
optimization of the ridge, and the Marchenko–Pastur density."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.theory.risk.linear_ridge import linear_ridge, linear_ridge_optimal, mp_stieltjes


def _mp_risk(g, lam, r2, s2):
    """risk = r^2 lam^2 m' + s2 g (m - lam m') with m by the quadratic and m' by mpmath differentiation."""
    import mpmath as mp

    with mp.workdps(40):
        g, lam = mp.mpf(g), mp.mpf(lam)
        M = lambda L: (-(1 - g + L) + mp.sqrt((1 - g + L) ** 2 + 4 * g * L)) / (2 * g * L)  # noqa: E731
        m, dm = M(lam), -mp.diff(M, lam)
        return r2 * lam ** 2 * dm + s2 * g * (m - lam * dm)


@pytest.mark.parametrize("g, lam", [(0.3, 0.5), (0.9, 1e-3), (2.0, 1e-3), (1.0, 0.1), (5.0, 3.0), (2.0, 1e-9)])
def test_risk_matches_mpmath(g, lam):
    ref = float(_mp_risk(g, lam, 1.3, 0.4))
    assert abs(linear_ridge(g, lam, 1.3, 0.4).risk - ref) <= 1e-12 * ref


def test_stieltjes_transform_matches_the_marchenko_pastur_density():
    from scipy.integrate import quad

    g, lam = 0.5, 0.3
    a, b = (1 - math.sqrt(g)) ** 2, (1 + math.sqrt(g)) ** 2
    dens = lambda s: math.sqrt((b - s) * (s - a)) / (2 * math.pi * g * s)  # noqa: E731
    m_ref = quad(lambda s: dens(s) / (s + lam), a, b, epsabs=1e-14)[0]
    dm_ref = quad(lambda s: dens(s) / (s + lam) ** 2, a, b, epsabs=1e-14)[0]
    m, dm = mp_stieltjes(g, lam)
    assert abs(m - m_ref) < 1e-10 and abs(dm - dm_ref) < 1e-10


@settings(max_examples=50, deadline=None)
@given(g=st.floats(0.05, 20).filter(lambda x: abs(x - 1) > 0.02), r2=st.floats(0.1, 5), s2=st.floats(0, 5))
def test_ridge_to_zero_meets_the_ridgeless_form(g, r2, s2):
    exact = s2 * g / (1 - g) if g < 1 else r2 * (1 - 1 / g) + s2 / (g - 1)
    assert abs(linear_ridge(g, 0.0, r2, s2).risk - exact) <= 1e-14 * max(exact, 1e-300)
    assert abs(linear_ridge(g, 1e-12, r2, s2).risk - exact) <= 1e-8 * max(exact, 1.0)


def test_interpolation_peak_at_gamma_one():
    g = np.linspace(0.2, 5, 4801)
    r = linear_ridge(g, 1e-8, 1.0, 0.5).risk
    assert abs(g[np.argmax(r)] - 1.0) < 2e-3
    assert np.isinf(linear_ridge(1.0, 0.0, 1.0, 0.5).risk)


@settings(max_examples=30, deadline=None)
@given(g=st.floats(0.1, 10), r2=st.floats(0.1, 5), s2=st.floats(0.01, 5))
def test_optimal_ridge_minimizes_the_risk(g, r2, s2):
    from scipy.optimize import minimize_scalar

    lam, risk = linear_ridge_optimal(g, r2, s2)
    assert abs(linear_ridge(g, lam, r2, s2).risk - risk) <= 1e-12 * risk
    opt = minimize_scalar(lambda t: linear_ridge(g, math.exp(t), r2, s2).risk, bounds=(-25, 10), method="bounded",
                          options=dict(xatol=1e-9))
    assert risk <= opt.fun * (1 + 1e-12)
    assert abs(math.log(lam) - opt.x) < 1e-3


@settings(max_examples=30, deadline=None)
@given(g=st.floats(0.1, 10), a=st.floats(1.01, 3), r2=st.floats(0.1, 5), s2=st.floats(0.01, 5))
def test_tuned_risk_does_not_increase_with_samples(g, a, r2, s2):
    # more samples = smaller gamma = p/n
    assert linear_ridge_optimal(g / a, r2, s2)[1] <= linear_ridge_optimal(g, r2, s2)[1] * (1 + 1e-12)


def test_simulation_agrees():
    from limitlab.verify.risk.simulate import linear_ridge_regression

    for g, lam in [(0.5, 0.2), (2.0, 0.0)]:
        th = linear_ridge(g, lam, 1.0, 0.5).risk
        s = [linear_ridge_regression(200, g, lam, 1.0, 0.5, seed=i) for i in range(24)]
        assert abs(np.mean(s) - th) <= 4 * np.std(s) / math.sqrt(24) + 0.01 * th


@pytest.mark.parametrize("kwargs, arg", [(dict(gamma=0.0), "gamma"), (dict(ridge=-1.0), "ridge"),
                                         (dict(noise=-1.0), "noise"), (dict(signal=np.inf), "signal")])
def test_bad_input_raises(kwargs, arg):
    base = dict(gamma=1.0, ridge=0.1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        linear_ridge(**base)

"""Eigenframework (KRR and random-feature ridge) against mpmath, closed forms, limits and
simulated regressions in the Gaussian eigenbasis model."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.theory.risk.eigenlearning import (effective_regularization, kernel_ridge, mp_kappa,
                                                power_law_problem, random_feature_ridge, scaling_exponent,
                                                tuned_ridge)

LAM, V = power_law_problem(400, 1.5, 2.0)


@pytest.mark.parametrize("n, ridge", [(10, 0.0), (50, 1e-4), (100, 1e-2), (399, 0.0), (1000, 1.0), (3.5, 1e-3)])
def test_kappa_matches_30_digit_mpmath(n, ridge):
    k = effective_regularization(LAM, n, ridge)
    ref = float(mp_kappa(LAM, n, ridge, dps=30))
    assert abs(k - ref) <= 1e-10 * ref


def test_learning_curve_is_one_vectorized_call_matching_pointwise_calls():
    n = np.array([5, 20, 80, 200])
    r = kernel_ridge(LAM, V, n, 1e-3, noise=0.1)
    for i, ni in enumerate(n):
        assert r.test_risk[i] == pytest.approx(kernel_ridge(LAM, V, ni, 1e-3, noise=0.1).test_risk, rel=1e-13)
    assert r.learnabilities.shape == (4, LAM.size)


def test_single_eigenvalue_closed_form():
    # M = 1, l, v: kappa solves l/(l+k) + delta/k = n (quadratic), everything else explicit
    l, v, n, delta, s2 = 0.7, 1.3, 3.0, 0.4, 0.2
    # n k^2 + (n l - l - delta) k - delta l = 0
    a, b, c = n, n * l - l - delta, -delta * l
    k = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    L = l / (l + k)
    E0 = n / (n - L * L)
    r = kernel_ridge([l], [v], n, delta, s2)
    assert r.kappa == pytest.approx(k, rel=1e-14)
    assert r.test_risk == pytest.approx(E0 * ((1 - L) ** 2 * v * v + s2), rel=1e-13)
    assert r.train_risk == pytest.approx((delta / (n * k)) ** 2 * r.test_risk, rel=1e-13)
    assert r.excess_risk == pytest.approx(r.test_risk - s2, rel=1e-13)


def test_ridgeless_with_more_samples_than_eigenfunctions():
    r = kernel_ridge(LAM[:10], V[:10], 20, 0.0, noise=0.5)
    assert r.kappa == 0 and r.overfitting_coefficient == pytest.approx(2.0)
    assert r.excess_risk == pytest.approx(0.5, rel=1e-13)  # (E0 - 1) sigma^2, zero bias


def test_multiplicities_equal_repeated_eigenvalues():
    lam = np.array([1.0, 0.3, 0.05, 0.01])
    m = np.array([1, 3, 5, 7])
    power = np.array([0.2, 0.5, 0.1, 0.0])
    r1 = kernel_ridge(lam, np.sqrt(power), 6, 1e-3, 0.1, multiplicities=m)
    vrep = np.concatenate([[math.sqrt(p)] + [0.0] * (k - 1) for p, k in zip(power, m)])
    r2 = kernel_ridge(np.repeat(lam, m), vrep, 6, 1e-3, 0.1)
    assert r1.test_risk == pytest.approx(r2.test_risk, rel=1e-13)
    q1 = random_feature_ridge(lam, np.sqrt(power), 6, 9, 1e-3, 0.1, multiplicities=m).test_risk
    q2 = random_feature_ridge(np.repeat(lam, m), vrep, 6, 9, 1e-3, 0.1).test_risk
    assert q1 == pytest.approx(q2, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.floats(2, 300), delta=st.floats(1e-6, 1.0))
def test_infinitely_many_features_recover_kernel_ridge(n, delta):
    k = kernel_ridge(LAM, V, n, delta, 0.1)
    rf = random_feature_ridge(LAM, V, n, 1e9, delta, 0.1)
    assert rf.test_risk == pytest.approx(k.test_risk, rel=1e-6)
    assert rf.gamma == pytest.approx(k.kappa, rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.floats(2, 300), k=st.floats(2, 300).filter(lambda x: True), delta=st.floats(1e-12, 1e-10))
def test_ridge_to_zero_meets_the_ridgeless_rf_limit(n, k, delta):
    if abs(n - k) < 0.05 * min(n, k):
        return  # the interpolation pole
    r0 = random_feature_ridge(LAM, V, n, k, 0.0, 0.1).test_risk
    r = random_feature_ridge(LAM, V, n, k, delta, 0.1).test_risk
    assert r == pytest.approx(r0, rel=1e-5)


def test_rf_interpolation_peak_at_k_equal_n():
    k = np.geomspace(10, 1000, 2001)
    r = random_feature_ridge(LAM, V, 100, k, 1e-9, 0.1).test_risk
    assert abs(k[np.argmax(r)] / 100 - 1) < 5e-3


@settings(max_examples=8, deadline=None)
@given(alpha=st.floats(1.1, 2.5), beta=st.floats(1.1, 3.0), noise=st.floats(0.0, 0.5), n=st.floats(5, 100),
       a=st.floats(1.2, 4))
def test_more_is_better_at_the_tuned_ridge(alpha, beta, noise, n, a):
    lam, v = power_law_problem(300, alpha, beta)
    base = tuned_ridge(lam, v, n, noise, features=n)[1].test_risk
    more_k = tuned_ridge(lam, v, n, noise, features=a * n)[1].test_risk
    more_n = tuned_ridge(lam, v, a * n, noise, features=n)[1].test_risk
    assert more_k <= base * (1 + 1e-6) and more_n <= base * (1 + 1e-6)


@pytest.mark.parametrize("alpha, beta, noise", [(2.5, 3.0, False), (2.5, 7.0, False),
                                                    pytest.param(2.0, 2.5, True, marks=pytest.mark.slow)])
def test_power_law_learning_curve_slopes_match_the_exponents(alpha, beta, noise):
    # M >> n so that the truncated tail (relative effect ~ (n/M)^(alpha-1)) is negligible
    lam, v = power_law_problem(1_000_000, alpha, beta)
    ns = np.array([2_000.0, 8_000.0])
    if noise:
        risks = [tuned_ridge(lam, v, n, 0.1, bounds=(1e-9, 1.0), grid=31)[1].excess_risk for n in ns]
    else:
        risks = kernel_ridge(lam, v, ns, 0.0).excess_risk
    slope = -np.diff(np.log(risks))[0] / np.diff(np.log(ns))[0]
    assert slope == pytest.approx(scaling_exponent(alpha, beta, noise), abs=0.03)


@pytest.mark.slow
def test_rf_eigenframework_matches_simulation():
    from limitlab.verify.risk.simulate import gaussian_rf_regression

    lam, v = power_law_problem(300, 1.5, 2.0)
    for n, k, d in [(200, 100, 1e-3), (200, 400, 0.0)]:
        th = random_feature_ridge(lam, v, n, k, d, 0.1).test_risk
        s = [gaussian_rf_regression(lam, v, n, k, d, 0.1, seed=i)[0] for i in range(12)]
        assert abs(np.mean(s) - th) <= 4 * np.std(s) / math.sqrt(12) + 0.03 * th


def test_krr_eigenframework_matches_simulation():
    from limitlab.verify.risk.simulate import kernel_ridge_regression

    lam, v = power_law_problem(200, 1.5, 2.0)
    rng = np.random.default_rng(1)
    th = kernel_ridge(lam, v, 150, 1e-3, 0.1).test_risk
    sims = []
    for _ in range(12):
        X, Xt = rng.standard_normal((150, 200)), rng.standard_normal((2000, 200))
        y, yt = X @ v + 0.1 ** 0.5 * rng.standard_normal(150), Xt @ v + 0.1 ** 0.5 * rng.standard_normal(2000)
        sims.append(kernel_ridge_regression(lambda A, B: (A * lam) @ B.T, X, y, Xt, yt, 1e-3)[0])
    assert abs(np.mean(sims) - th) <= 4 * np.std(sims) / math.sqrt(12) + 0.03 * th


@pytest.mark.parametrize("call, arg", [
    (lambda: kernel_ridge([1.0, 0.0], [1, 1], 5, 0.1), "eigenvalues"),
    (lambda: kernel_ridge([1.0, -0.1], [1, 1], 5, 0.1), "eigenvalues"),
    (lambda: kernel_ridge([1.0], [1.0], 0.5, 0.1), "n"),
    (lambda: kernel_ridge([1.0], [1.0], 5, -0.1), "ridge"),
    (lambda: kernel_ridge([1.0], [1.0], 5, 0.1, noise=-1), "noise"),
    (lambda: kernel_ridge([1.0], [1.0, 2.0], 5, 0.1), "target"),
    (lambda: random_feature_ridge([1.0], [1.0], 5, 0, 0.1), "features"),
])
def test_bad_input_raises(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def _mp_rf(lam, n, k, delta, dps=30):
    """(gamma, kappa) of the RF eigenframework by 30-digit mpmath: bisection in log gamma on
    kappa(gamma) = gamma (k - z)/k against delta/(n - z), then Newton polishing."""
    import mpmath as mp

    with mp.workdps(dps + 10):
        L = [mp.mpf(float(x)) for x in lam]
        n, k, d = mp.mpf(n), mp.mpf(k), mp.mpf(delta)
        z = lambda g: sum(x / (x + g) for x in L)  # noqa: E731

        def F(g):
            zz = z(g)
            if zz >= min(n, k):
                return mp.mpf(-1)
            return g * (k - zz) * (n - zz) - k * d

        lo, hi = d / (2 * n), 10 * (sum(L) + d)
        for _ in range(120):
            mid = mp.sqrt(lo * hi)
            lo, hi = (mid, hi) if F(mid) < 0 else (lo, mid)
        g = mp.findroot(F, mp.sqrt(lo * hi))
        return g, g * (k - z(g)) / k


@pytest.mark.parametrize("n, k, delta", [(50, 20, 1e-3), (50, 200, 1e-2), (100, 100, 1e-4), (30, 1000, 1.0)])
def test_rf_gamma_kappa_match_30_digit_mpmath(n, k, delta):
    lam, v = LAM[:200], V[:200]
    r = random_feature_ridge(lam, v, n, k, delta)
    g, kap = _mp_rf(lam, n, k, delta)
    assert abs(r.gamma - float(g)) <= 1e-10 * float(g)
    assert abs(r.kappa - float(kap)) <= 1e-10 * float(kap)

"""gaussian_moments: the multi-input Gaussian expectations and their covariance derivatives
against 30-digit mpmath (the finite-width recursions built on them: test_finite_width.py)."""
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.numerics import gaussian, gaussian_moments
from limitlab.theory import activations as A


@pytest.mark.parametrize("q", [1.0, 30.0, 100.0] + [pytest.param(q, marks=pytest.mark.slow) for q in (0.25, 4.0, 10.0)])
def test_one_input_moments_and_their_variance_derivatives_match_mpmath_for_steep_tanh(q):
    """E[f], dE/dq and d2E/dq2 for f = tanh^2 and tanh'^2 at variances up to 100, where tanh's
    poles come within pi / (2 sqrt(q)) of the real line: 1e-12 relative to 30-digit mpmath (the
    q-derivatives there by mpmath.diff of the mpmath expectation, independent of the score weights)."""
    act = A.get("tanh")
    fs = [lambda z: act(z) ** 2, lambda z: act.derivative(z) ** 2]
    mfs = [lambda x: mp.tanh(x) ** 2, lambda x: (1 - mp.tanh(x) ** 2) ** 2]
    got = gaussian_moments.one_input_derivatives(fs, q, act.kinks)
    with mp.workdps(30):
        for row, mf in zip(got, mfs):
            # mp.diff raises the precision for its differences; the expectation must keep it
            E = lambda v: gaussian.mp_expect(mf, v, kinks=(), dps=mp.mp.dps)  # noqa: E731
            ref = [E(q), mp.diff(E, q), mp.diff(E, q, 2)]
            for k in range(3):
                assert abs(row[k] - ref[k]) <= 1e-12 * abs(ref[0]) / q ** k, (k, row[k], ref[k])


# --------------------------------------------------------------------------------------
# many variances at once; products of powers on three and four inputs; the fused pair series
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_one_input_derivatives_many_equal_the_per_variance_rule(activation):
    """Interpolated in log q over 400 variances from 0.2 to 50: the k-th q-derivative within 1e-13
    |E[f]| / q^k of the one-variance rule (itself pinned to mpmath above)."""
    act = A.get(activation)
    fs = [lambda z: act(z) ** 2, lambda z: act.derivative(z) ** 2, lambda z: z * act(z) * act.derivative(z)]
    q = np.exp(np.random.default_rng(0).uniform(np.log(0.2), np.log(50.0), 400))
    got = gaussian_moments.one_input_derivatives_many(fs, q, act.kinks)
    ref = np.stack([gaussian_moments.one_input_derivatives(fs, v, act.kinks) for v in q])
    scale = np.abs(ref[:, :, :1]) / q[:, None, None] ** np.arange(3)
    assert np.all(np.abs(got - ref) <= 1e-13 * scale)


def _cos_power_reference(cov, powers, omega, theta):
    """E[prod_i cos(omega z_i + theta)^p_i] at 30 digits: cos^p expanded in exponentials, and
    E[exp(i t.z)] = exp(-t^T cov t / 2)."""
    import itertools

    with mp.workdps(30):
        C = mp.matrix(cov.tolist())
        total = mp.mpf(0)
        for ks in itertools.product(*[range(p + 1) for p in powers]):
            t = [omega * (p - 2 * k) for p, k in zip(powers, ks)]
            coef = mp.mpf(1)
            for p, k in zip(powers, ks):
                coef *= mp.binomial(p, k) / mp.mpf(2) ** p
            quad = sum(t[i] * C[i, j] * t[j] for i in range(len(t)) for j in range(len(t)))
            phase = theta * sum(p - 2 * k for p, k in zip(powers, ks))
            total += coef * mp.re(mp.exp(1j * phase) * mp.exp(-quad / 2))
        return float(total)


def _random_cov(rng, r, scale):
    B = rng.standard_normal((r, r + 2))
    return B @ B.T / (r + 2) * scale


@pytest.mark.parametrize("r", [3, 4])
# a (spurious) kink takes the cut, non-tensor path; at the larger variances its fit of the smoothed
# cosine takes ~30 s (many panels over the means' range)
@pytest.mark.parametrize("kinks,scale", [((), 0.5), ((), 3.0), ((0.0,), 0.5),
                                         pytest.param((0.0,), 3.0, marks=pytest.mark.slow)])
def test_power_expectations_match_30_digit_closed_forms_for_cosine_products(r, kinks, scale):
    """phi = cos(1.3 z + 0.3): every product of powers summing to 4 on r correlated inputs
    against the closed form at 30 digits, within 1e-12 relative to the largest (variances
    ~0.2 to 5: up to several oscillations across the density)."""
    import itertools

    cov = _random_cov(np.random.default_rng(r), r, scale)
    powers = [p for p in itertools.product(range(1, 3), repeat=r) if sum(p) == 4]
    phi = lambda z: np.cos(1.3 * z + 0.3)  # noqa: E731
    got = gaussian_moments.power_expectations(phi, cov, powers, kinks)
    ref = np.array([_cos_power_reference(cov, p, mp.mpf("1.3"), mp.mpf("0.3")) for p in powers])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@settings(max_examples=10, deadline=None)
@given(st.integers(3, 4), st.floats(0.2, 5.0), st.integers(0, 10_000))
def test_power_expectations_of_a_linear_map_are_wick_sums(r, scale, seed):
    """phi(z) = z: E[z_a z_b z_c z_d] is the sum over the three pairings (Isserlis), with repeated
    indices for the powers, on any covariance; relative 1e-12."""
    import itertools

    cov = _random_cov(np.random.default_rng(seed), r, scale)
    powers = [p for p in itertools.product(range(1, 3), repeat=r) if sum(p) == 4]
    got = gaussian_moments.power_expectations(lambda z: z, cov, powers, ())
    for val, p in zip(got, powers):
        a, b, c, d = [i for i in range(r) for _ in range(p[i])]
        ref = cov[a, b] * cov[c, d] + cov[a, c] * cov[b, d] + cov[a, d] * cov[b, c]
        assert val == pytest.approx(ref, rel=1e-12, abs=1e-13 * scale ** 2)


def test_power_expectations_of_relu_agree_with_the_full_nested_rule():
    """Kinked (cut) path: ReLU products on three inputs against product_expectation, whose pieces
    between the cuts are polynomials times the density (an independent code path), within 1e-11."""
    act = A.get("relu")
    cov = np.array([[1.3, 0.6, -0.3], [0.6, 0.8, 0.2], [-0.3, 0.2, 1.1]])
    powers = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
    got = gaussian_moments.power_expectations(act.__call__, cov, powers, act.kinks)
    for val, p in zip(got, powers):
        ref = gaussian_moments.product_expectation([(lambda k: (lambda z: act(z) ** k))(k) for k in p], cov,
                                                   [act.kinks] * 3)
        assert val == pytest.approx(ref, rel=1e-11)


def test_fused_block_recursion_restricted_to_a_pair_equals_the_two_input_run():
    """K1 and the two-input blocks of V close under the recursion: on 40 inputs (fused series and
    block pass, finite_width's N > MAX_FULL_INPUTS path) their (a, b) entries equal those of the
    two-input run on X[[a, b]] (the full-V path: pair_series, einsums), to 1e-12."""
    from limitlab.theory.kernels import MLP, finite_width

    X = np.random.default_rng(5).standard_normal((40, 6))
    net = MLP(4, "tanh", weight_var=1.5, bias_var=0.1, parametrization="standard")
    many = finite_width(net, X, four_point=False)
    for a, b in [(0, 1), (3, 17), (39, 22)]:
        two = finite_width(net, X[[a, b]])
        np.testing.assert_allclose(many.nngp_correction[np.ix_([a, b], [a, b])], two.nngp_correction,
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(many.four_point_pairs[:, :, a, b], two.four_point_pairs[:, :, 0, 1],
                                   rtol=1e-12, atol=1e-14)


# ---- the two-block Hermite series (sets of three and four inputs at once) ----------------------

def _multiset_powers(m):
    idx = sorted(set(m))
    return idx, [list(m).count(i) for i in idx]


@pytest.mark.parametrize("omega,theta,scale", [(1.3, 0.3, 0.5), (1.3, 0.3, 3.0), (1.1, -np.pi / 2, 1.5)])
def test_series_four_point_matches_30_digit_closed_forms_for_cosine_products(omega, theta, scale):
    """phi = cos(omega z + theta) on six correlated inputs (theta = -pi/2: sin, odd, the half-grid
    path): every multiset with three or four distinct inputs against the closed form at 30 digits,
    within the documented bound, 1e-11 sqrt(E[F^2] E[G^2]) <= 1e-11 max E[phi^4] (<= 1e-11 for a
    cosine), and mostly far within it; every series converges."""
    cov = _random_cov(np.random.default_rng(7), 6, scale)
    phi = lambda z: np.cos(omega * z + theta)  # noqa: E731
    sets, got, ok = gaussian_moments.series_four_point(phi, cov)
    assert ok.all() and len(sets) == 3 * 20 + 15
    ref = []
    for m in sets:
        idx, p = _multiset_powers(m)
        ref.append(_cos_power_reference(cov[np.ix_(idx, idx)], p, mp.mpf(omega), mp.mpf(theta)))
    err = np.abs(got - np.array(ref))
    assert err.max() <= 1e-11 and np.median(err) <= 1e-13


@settings(max_examples=8, deadline=None)
@given(st.integers(4, 6), st.floats(0.2, 4.0), st.integers(0, 10_000))
def test_series_four_point_of_a_linear_map_are_wick_sums(n, scale, seed):
    """phi(z) = z: E[z_a z_b z_c z_d] is the Isserlis sum over the three pairings on any covariance
    (the products have Hermite degree <= 2, so the series ends after it); relative 1e-12."""
    cov = _random_cov(np.random.default_rng(seed), n, scale)
    sets, got, ok = gaussian_moments.series_four_point(lambda z: z, cov)
    assert ok.all()
    for (a, b, c, d), val in zip(sets, got):
        ref = cov[a, b] * cov[c, d] + cov[a, c] * cov[b, d] + cov[a, d] * cov[b, c]
        assert val == pytest.approx(ref, rel=1e-12, abs=1e-13 * scale ** 2)


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_series_four_point_agrees_with_nested_quadrature(activation):
    """tanh (odd: half grid) and GELU (no parity) on five inputs with variances 0.3-3 and
    correlations up to 0.95: sets of three and four against power_expectations (an independent
    rule), within 1e-11 of the largest; the near-parallel pair still converges or is flagged."""
    act = A.get(activation)
    X = np.random.default_rng(3).standard_normal((5, 4))
    X[4] = X[3] + 0.3 * X[4] / np.linalg.norm(X[4]) * np.linalg.norm(X[3])  # correlation ~0.95 with row 3
    cov = X @ X.T / 4 + 0.05
    sets, got, ok = gaussian_moments.series_four_point(act.__call__, cov)
    picks = [t for t, m in enumerate(sets) if len(set(m)) == 4] + [0, 7, 13, len(sets) // 3]
    ref = []
    for t in picks:
        idx, p = _multiset_powers(sets[t])
        ref.append(gaussian_moments.power_expectations(act.__call__, cov[np.ix_(idx, idx)], [p], ())[0])
    assert ok[picks].all()
    np.testing.assert_allclose(got[picks], ref, rtol=0, atol=1e-11 * np.abs(ref).max())


def test_series_four_point_flags_what_it_cannot_sum():
    """Two inputs parallel to 1e-9 (no second Cholesky coordinate): the sets that need that pair in
    every pairing are flagged (ok False), none is answered wrongly: the others match the closed form."""
    cov = _random_cov(np.random.default_rng(11), 5, 1.0)
    cov[4] = cov[3] * (1 + 1e-9)
    cov[:, 4] = cov[4]
    cov[4, 4] = cov[3, 3] * (1 + 1e-9) ** 2
    phi = lambda z: np.cos(1.3 * z + 0.3)  # noqa: E731
    sets, got, ok = gaussian_moments.series_four_point(phi, cov)
    assert not ok.all() and ok.any()
    for m, v in zip(sets[ok], got[ok]):
        idx, p = _multiset_powers(m)
        assert v == pytest.approx(_cos_power_reference(cov[np.ix_(idx, idx)], p, mp.mpf("1.3"), mp.mpf("0.3")),
                                  abs=1e-11)


def _cos_product_reference(cov, idx, omega, theta):
    """E[prod_t cos(omega_t z_idx[t] + theta_t)], z ~ N(0, cov): cos A cos B = (cos(A+B) + cos(A-B)) / 2
    repeatedly, and E[cos(v.z + c)] = cos(c) exp(-v^T cov v / 2)."""
    import itertools

    total = 0.0
    for signs in itertools.product((1.0, -1.0), repeat=len(idx) - 1):
        sg = (1.0,) + signs
        v = np.zeros(cov.shape[0])
        for s, i, o in zip(sg, idx, omega):
            v[i] += s * o
        total += math.cos(sum(s * t for s, t in zip(sg, theta))) * math.exp(-0.5 * v @ cov @ v)
    return total / 2 ** (len(idx) - 1)


def test_series_products_of_two_functions_match_closed_forms():
    """Mixed products (f_0 = cos(1.3 z + 0.3), f_1 = sin(0.9 z): odd, the half grid) on six inputs,
    every multiset with three or four distinct inputs under several role patterns, against the
    closed form of products of cosines, within the bound 1e-11 (E[f^4] <= 1)."""
    import itertools

    cov = _random_cov(np.random.default_rng(12), 6, 1.5)
    fs = (lambda z: np.cos(1.3 * z + 0.3), lambda z: np.sin(0.9 * z))
    om, th = (1.3, 0.9), (0.3, -math.pi / 2)
    sets, roles = [], []
    rng = np.random.default_rng(0)
    for m in itertools.combinations_with_replacement(range(6), 4):
        if len(set(m)) >= 3:
            for _ in range(2):
                sets.append(m)
                roles.append(rng.integers(0, 2, 4))
    got, ok = gaussian_moments.series_products(fs, cov, np.array(sets), np.array(roles))
    assert ok.all()
    ref = [_cos_product_reference(cov, m, [om[r] for r in rs], [th[r] for r in rs]) for m, rs in zip(sets, roles)]
    err = np.abs(got - np.array(ref))
    assert err.max() <= 1e-11 and np.median(err) <= 1e-13

"""The Gaussian-expectation engine's interpolation in log q and its NNGP-only Mehler path."""
import numpy as np
import pytest

from limitlab.numerics import gaussian
from limitlab.theory import activations as A

TANH = A.get("tanh")


def _coefficients(qs):
    return gaussian.hermite_coefficients(TANH, qs, 24, TANH.kinks)


def test_interpolation_in_log_q_equals_direct_quadrature():
    q = np.sort(10.0 ** np.random.default_rng(0).uniform(-3, 3, 400))
    got, err = gaussian.interpolated(_coefficients, q)
    direct = _coefficients(q)
    scale = np.abs(direct).max(axis=1, keepdims=True)
    assert 0 < err <= 2e-14  # the interpolant was used, and its checked error is within tolerance
    assert np.max(np.abs(got - direct) / scale) < 1e-13


def test_interpolation_falls_back_to_direct_evaluation_when_not_smooth():
    # a kink in log q defeats polynomial interpolation: every q is then evaluated directly
    fn = lambda qs: np.abs(np.log(qs) - 0.3)[:, None]  # noqa: E731
    q = np.linspace(0.5, 3.0, 300)
    got, err = gaussian.interpolated(fn, q)
    assert err == 0.0 and np.array_equal(got, fn(q))


def test_few_distinct_q_are_evaluated_directly():
    q = np.repeat([1.0, 2.0, 3.0], 50)
    got, err = gaussian.interpolated(_coefficients, q)
    assert err == 0.0 and np.array_equal(got, _coefficients(np.array([1.0, 2.0, 3.0]))[np.repeat([0, 1, 2], 50)])


def test_nngp_only_mehler_equals_the_nngp_of_the_full_computation():
    rng = np.random.default_rng(1)
    q = rng.uniform(0.5, 2.0, 60)
    R = np.corrcoef(rng.standard_normal((60, 8)))
    C = R * np.sqrt(np.outer(q, q))
    phi, dphi = (lambda t: TANH(t)), (lambda t: TANH.derivative(t))
    full = gaussian.mehler_dual(phi, dphi, q, q, C, TANH.kinks, symmetric=True)
    only = gaussian.mehler_dual(phi, dphi, q, q, C, TANH.kinks, symmetric=True, want=(True, False))
    assert only[1] is None
    np.testing.assert_array_equal(only[0], full[0])
    assert np.array_equal(full[0], full[0].T) and np.array_equal(full[1], full[1].T)


@pytest.mark.parametrize("q", [1.0, 1e6, 1e12, 1e16])
def test_nested_dual_snaps_covariances_within_rounding_of_parallel(q):
    """c = q (1 - 4 eps): q^2 - c^2 ~ 8 eps q^2 is rounding (a point and its copy, c and q from
    different dot products), not a conditional spread sqrt(8 eps q) (0.015 at q = 1e12, as wide
    as tanh's transition): the parallel value E[phi'(u)^2], 30-digit mpmath."""
    import mpmath as mp

    eps = np.finfo(float).eps
    tanh, dtanh = np.tanh, (lambda t: 1.0 - np.tanh(t) ** 2)
    ref = gaussian.mp_expect(lambda u: mp.sech(u) ** 4, q, (0.0,), dps=30)
    for c in (q, q * (1 - 4 * eps), q * (1 + 4 * eps)):
        _, v = gaussian.nested_dual(tanh, dtanh, q, q, c, kinks=(0.0,))
        assert abs(v - float(ref)) <= 1e-11 * float(ref)
    # a genuine spread is kept: c = q (1 - 1e-6) at q = 1 lowers E[phi' phi'] by more than 1e-8
    if q == 1.0:
        _, v = gaussian.nested_dual(tanh, dtanh, q, q, q * (1 - 1e-6), kinks=(0.0,))
        assert 1e-8 < float(ref) - v

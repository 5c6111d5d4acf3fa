"""gaussian_moments: the multi-input Gaussian expectations and their covariance derivatives
against 30-digit mpmath (the finite-width recursions built on them: test_finite_width.py)."""
import mpmath as mp
import numpy as np
import pytest

from limitlab.numerics import gaussian, gaussian_moments
from limitlab.theory import activations as A


@pytest.mark.parametrize("q", [0.25, 1.0, 4.0, 10.0, 30.0, 100.0])
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

"""Activations without closed forms against 20-digit mpmath references (fixtures/mpmath_duals.json)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from limitlab.numerics import gaussian
from limitlab.theory import activations as A
from limitlab.theory.kernels import dual

REFS = json.loads((Path(__file__).parents[2] / "fixtures" / "mpmath_duals.json").read_text())


@pytest.mark.parametrize("ref", REFS, ids=[f"{r['activation']}-{r['point']}" for r in REFS])
def test_quadrature_dual_matches_mpmath_to_1e10(ref):
    act = A.get(ref["activation"])
    q1, q2, c = ref["point"]
    n0, n1 = dual(act).evaluate(q1, q2, c)
    # relative to the Cauchy-Schwarz scale sqrt(E phi(u)^2 E phi(v)^2): the map itself can vanish
    s0 = math.sqrt(gaussian.expect(lambda t: act(t) ** 2, q1, act.kinks) * gaussian.expect(lambda t: act(t) ** 2, q2, act.kinks))
    s1 = math.sqrt(gaussian.expect(lambda t: act.derivative(t) ** 2, q1, act.kinks)
                   * gaussian.expect(lambda t: act.derivative(t) ** 2, q2, act.kinks))
    assert abs(n0 - float(ref["nngp"])) <= 1e-10 * s0
    assert abs(n1 - float(ref["ntk"])) <= 1e-10 * s1
    assert abs(n0 - float(ref["nngp"])) <= 1e-10 * abs(float(ref["nngp"])) or abs(float(ref["nngp"])) < 1e-3 * s0


@pytest.mark.parametrize("name", ["tanh", "softplus", "selu", "silu", "sigmoid", "elu", "mish"])
@pytest.mark.parametrize("q", [1e-4, 1.0, 1e4])
def test_diagonal_of_quadrature_duals_matches_mpmath(name, q):
    """At c = q1 = q2 the maps are 1-D: 30-digit mpmath (cheap), over q in [1e-4, 1e4]."""
    import mpmath as mp

    act = A.get(name)
    f = {"tanh": mp.tanh, "softplus": lambda u: mp.log1p(mp.exp(u)), "sigmoid": lambda u: 1 / (1 + mp.exp(-u)),
         "silu": lambda u: u / (1 + mp.exp(-u)), "mish": lambda u: u * mp.tanh(mp.log1p(mp.exp(u))),
         "elu": lambda u: u if u > 0 else mp.expm1(u),
         "selu": lambda u: mp.mpf("1.0507009873554804934193349852946") * (
             u if u > 0 else mp.mpf("1.6732632423543772848170429916717") * mp.expm1(u))}[name]
    n0, _ = dual(act).evaluate(q, q, q)
    ref = float(gaussian.mp_expect(lambda u: f(u) ** 2, q, act.kinks, dps=30))
    assert abs(n0 - ref) <= 1e-10 * ref


@pytest.mark.parametrize("name", ["tanh", "softplus", "selu", "silu", "sigmoid", "elu", "mish"])
def test_activation_and_derivative_are_finite_and_consistent(name):
    """No NaN at extreme arguments, and phi' agrees with a central difference of phi."""
    act = A.get(name)
    z = np.array([-800.0, -30.0, -1.3, -1e-3, 0.7, 25.0, 800.0])
    assert np.all(np.isfinite(act(z))) and np.all(np.isfinite(act.derivative(z)))
    zz = np.array([-2.1, -0.4, 0.3, 1.7])
    h = 1e-6
    np.testing.assert_allclose(act.derivative(zz), (act(zz + h) - act(zz - h)) / (2 * h), rtol=1e-7, atol=1e-9)

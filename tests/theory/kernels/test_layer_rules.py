"""net.recursion(): the stax layers' rules as sympy, checked by evaluating them against the kernels."""
import numpy as np
import pytest
import sympy as sp
from sympy.core.function import AppliedUndef

from limitlab.theory.kernels import LayerNorm, stax
from limitlab.theory.kernels.layer_rules import x, x2


def _evaluate_flat(eqs, X):
    """Evaluate a flat recursion on the two inputs X[0], X[1]: {(name, i, j): value}."""
    u, v = sp.symbols("u v")
    idx = {u: 0, v: 1}
    vals = {}
    for i in range(2):
        for j in range(2):
            vals[("K_0", i, j)] = float(X[i] @ X[j] / X.shape[1])
            vals[("Theta_0", i, j)] = 0.0
    for eq in eqs[2:]:
        for i, j in ((0, 0), (1, 1), (0, 1)):
            rhs = eq.rhs.subs({x: (u, v)[i], x2: (u, v)[j]}, simultaneous=True)
            rhs = rhs.replace(lambda e: isinstance(e, AppliedUndef),
                              lambda e: sp.Float(vals[(e.func.__name__, idx[e.args[0]], idx[e.args[1]])], 30))
            vals[(eq.lhs.func.__name__, i, j)] = float(sp.N(rhs, 30))
    return vals


@pytest.mark.parametrize("act", [stax.Relu, stax.Erf, lambda: stax.LeakyRelu(0.3)])
def test_flat_recursion_evaluated_is_the_kernel(act):
    """The printed recursion of Dense-act-Dense-act-Dense, evaluated in sympy at 30 digits, gives
    the compiled NNGP and NTK of the same two inputs to 1e-12."""
    net = stax.serial(stax.Dense(4, weight_var=1.7, bias_var=0.2), act(), stax.Dense(4, weight_var=2.0),
                      act(), stax.Dense(1, weight_var=1.3, bias_var=0.05))
    X = np.random.default_rng(0).standard_normal((2, 5))
    eqs = net.recursion()
    assert all(isinstance(e, sp.Eq) for e in eqs) and len(eqs) == 2 * 6
    vals = _evaluate_flat(eqs, X)
    k = net.kernels(X)
    L = 5
    assert vals[("K_%d" % L, 0, 1)] == pytest.approx(k.nngp[0, 1], rel=1e-12)
    assert vals[("Theta_%d" % L, 0, 1)] == pytest.approx(k.ntk[0, 1], rel=1e-12)
    assert vals[("K_%d" % L, 0, 0)] == pytest.approx(k.nngp[0, 0], rel=1e-12)


def test_conv_and_pool_rules_are_offset_sums():
    """Conv: w/|F| times the sum over |F| shared offsets plus b; AvgPool: 1/|W|^2 over two independent
    offsets; a global pool makes the state flat (functions of the inputs only)."""
    net = stax.serial(stax.Conv(8, (3, 3), strides=(2, 2), padding="SAME", weight_var=2.0, bias_var=0.5), stax.Relu(),
                      stax.AvgPool((2, 2)), stax.GlobalAvgPool(), stax.Dense(1))
    eqs = net.recursion()
    conv = eqs[2].rhs
    s_sum = next(iter(conv.atoms(sp.Sum)))
    assert s_sum.limits[0][1:] == (1, 9) and sp.Rational(2, 9) * s_sum + sp.Rational(1, 2) == conv
    assert "2*s + o[j]" in str(s_sum.function)
    pool = eqs[6].rhs
    assert len(next(iter(pool.atoms(sp.Sum))).limits) == 2 and pool.as_coeff_Mul()[0] == sp.Rational(1, 16)
    assert eqs[8].lhs.args == (x, x2) and eqs[-1].lhs.args == (x, x2)


def test_layers_without_a_sympy_rule_are_named():
    """A layer with no printed rule raises NotImplementedError naming it."""
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        stax.serial(stax.Dense(2), LayerNorm()).recursion()

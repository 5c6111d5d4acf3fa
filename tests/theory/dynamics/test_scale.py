"""limitlab.theory.dynamics.scale: gradient-flow and NNGP-posterior predictions from stored kernels.

References: the in-memory predictions of theory/dynamics/gradient_flow.py (eigendecomposition),
and the NNGP posterior by scipy's Cholesky, on kernels that fit in memory; the stored kernels
come from write_kernels.
"""
import numpy as np
import pytest
import scipy.linalg as sla

from limitlab.numerics.solvers import ConvergenceError
from limitlab.theory.dynamics import gradient_flow as gf
from limitlab.theory.dynamics import scale
from limitlab.theory.kernels import MLP, write_kernels

RNG = np.random.default_rng(5)
X, XT = RNG.standard_normal((120, 6)), RNG.standard_normal((9, 6))
Y = RNG.standard_normal((120, 2))
NET = MLP(2, bias_var=0.1)
KXX, KTX, KTT = NET.kernels(X), NET.kernels(XT, X), NET.kernels(XT)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The training kernels in a zarr store of 50-row tiles, the test-train kernels in another."""
    d = tmp_path_factory.mktemp("k")
    train = write_kernels(NET, X, path=d / "train", chunks=50, progress=False)
    test = write_kernels(NET, XT, X, path=d / "test", chunks=(9, 50), progress=False)
    return train, test


@pytest.mark.parametrize("t", [None, 2.0, [0.3, 40.0]])
@pytest.mark.parametrize("on_test", [False, True])
def test_gradient_flow_mean_matches_the_in_memory_prediction(t, on_test, stored):
    """mean_t on training and test points from the stores = gradient_descent_mse_ensemble, to 1e-8."""
    train, test = stored
    predict = gf.gradient_descent_mse_ensemble(KXX.ntk, Y, diag_reg=1e-3, lr=2.0)
    ref = predict(t, ntk_test_train=KTX.ntk if on_test else None).mean
    out = scale.gradient_flow_mean(train.ntk, Y, t, test.ntk if on_test else None, diag_reg=1e-3, lr=2.0,
                                   method="cg", tol=1e-12)
    assert out.mean.shape == ref.shape
    assert rel(out.mean, ref) < 1e-8
    for r in out.solver if isinstance(out.solver, list) else [out.solver]:
        assert r.converged and r.iterations >= 1 and np.all(r.residual <= 1e-12)


def test_nngp_posterior_matches_cholesky(stored):
    """mean = K(x,X)(K + s I)^{-1} y and var = K(x,x) - K(x,X)(K + s I)^{-1}K(X,x), against scipy, to 1e-8."""
    train, test = stored
    s = 1e-2 * np.trace(KXX.nngp) / 120
    cf = sla.cho_factor(KXX.nngp + s * np.eye(120))
    mean = KTX.nngp @ sla.cho_solve(cf, Y)
    var = np.diag(KTT.nngp) - np.einsum("ij,ji->i", KTX.nngp, sla.cho_solve(cf, KTX.nngp.T))
    for method in ("cg", "cholesky"):
        out = scale.nngp_posterior(train.nngp, Y, test.nngp, np.diag(KTT.nngp), diag_reg=1e-2, method=method,
                                   tol=1e-12)
        assert rel(out.mean, mean) < 1e-8 and rel(out.variance, var) < 1e-8
        assert out.solver.converged and out.solver.value is None
    # on the training points without noise the posterior mean interpolates
    out = scale.nngp_posterior(train.nngp, Y, method="cholesky", tol=1e-10)
    assert rel(out.mean, Y) < 1e-8


def test_unconverged_solve_is_reported_and_strict_raises(stored):
    train, _ = stored
    out = scale.gradient_flow_mean(train.ntk, Y, method="cg", maxiter=2)
    assert not out.solver.converged and "> tol" in out.solver.message
    with pytest.raises(ConvergenceError):
        scale.gradient_flow_mean(train.ntk, Y, method="cg", maxiter=2, strict=True)


def test_bad_arguments_name_themselves(stored):
    train, test = stored
    with pytest.raises(ValueError, match="y_train"):
        scale.gradient_flow_mean(train.ntk, Y[:5])
    with pytest.raises(ValueError, match="ntk_test_train"):
        scale.gradient_flow_mean(train.ntk, Y, None, np.ones((3, 7)))
    with pytest.raises(ValueError, match="lr"):
        scale.gradient_flow_mean(train.ntk, Y, lr=0.0)
    with pytest.raises(ValueError, match="diag_reg"):
        scale.nngp_posterior(train.nngp, Y, diag_reg=-1.0)
    with pytest.raises(ValueError, match="nngp_test_test_diag"):
        scale.nngp_posterior(train.nngp, Y, test.nngp, np.ones(3))
    with pytest.raises(ValueError, match="nngp_train_train"):
        scale.nngp_posterior(np.ones((3, 4)), Y)

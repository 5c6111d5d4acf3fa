import numpy as np
import pytest

from limitlab.theory.collapse import ufm_global_minimizer, ufm_objective
from limitlab.verify import stats
from limitlab.verify.collapse import checks
from limitlab.verify.registry import Context, Measurement, get_check


def test_checks_are_registered_with_quick_sizes():
    for name in ("collapse.ufm", "collapse.train"):
        c = get_check(name)
        assert len(c.quick_sizes) >= 2 and c.quick_samples <= 4


def test_batched_ufm_gradient_step_equals_the_objectives_gradient():
    counts, lw, lh = (3, 2, 2), 0.05, 0.02
    # one step of lr from the start equals start - lr * grad; recover the start with steps=0
    f0, P0, H0, y = checks.ufm_gradient_descent(counts, lw, lh, 1, 4, starts=2, lr=0.3, steps=0, seed=1)
    f1, P1, H1, _ = checks.ufm_gradient_descent(counts, lw, lh, 1, 4, starts=2, lr=0.3, steps=1, seed=1)
    for s in range(2):
        f, dW, dH = ufm_objective([P0[s]], H0[s], y, lw, lh, grad=True)
        assert f0[s] == pytest.approx(f, rel=1e-13)
        np.testing.assert_allclose(P1[s], P0[s] - 0.3 * dW[0], rtol=1e-12)
        np.testing.assert_allclose(H1[s], H0[s] - 0.3 * dH, rtol=1e-12)


def test_depth_two_gradient_descent_reaches_the_closed_form_minimum():
    depth, counts, lw, lh, lr, steps = checks.UFM_CASES[1]
    g = ufm_global_minimizer(counts, lw, lh, depth)
    f, P, _, _ = checks.ufm_gradient_descent(counts, lw, lh, depth, 6, starts=2, lr=lr, steps=steps, seed=0)
    np.testing.assert_allclose(f, g.objective, rtol=1e-6)
    np.testing.assert_allclose(np.einsum("sci,sci->sc", P, P), np.tile(g.classifier_sq_norms, (2, 1)), rtol=1e-4)


def test_ufm_verdict_rejects_a_theory_that_ignores_the_zero_solution():
    # depth 2, class 4 between the root threshold and the collapse threshold: a theory that
    # takes the stationary root instead of comparing with zero predicts a wrong minimum
    counts, lw, lh = (12, 8, 5, 2), 0.062, 0.004
    g = ufm_global_minimizer(counts, lw, lh, 2)
    assert g.collapsed[3] and g.root_exists[3]
    wrong = float(np.sum(g.objective_at_root))
    meas = [Measurement("global minimum", wrong, np.full(3, g.objective), rtol_floor=checks.UFM_RTOL)]
    assert not stats.verdict([6, 12], [meas, meas], rate=None).passed
    right = [Measurement("global minimum", g.objective, np.full(3, g.objective), rtol_floor=checks.UFM_RTOL)]
    assert stats.verdict([6, 12], [right, right], rate=None).passed


def test_array_api_strict_backend_gives_the_numpy_numbers():
    pytest.importorskip("array_api_strict")
    a = checks.ufm_gradient_descent((3, 2), 0.05, 0.02, 2, 3, starts=2, lr=0.3, steps=5, seed=2)
    b = checks.ufm_gradient_descent((3, 2), 0.05, 0.02, 2, 3, starts=2, lr=0.3, steps=5, seed=2,
                                    backend="array-api-strict")
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12)
    X, y = checks.gaussian_mixture(np.random.default_rng(0), 3, 5, 4)
    r1 = checks.train_mlp(X, y, networks=2, width=8, steps=5, lr=0.1, weight_decay=1e-2, seed=0)
    r2 = checks.train_mlp(X, y, networks=2, width=8, steps=5, lr=0.1, weight_decay=1e-2, seed=0,
                          backend="array-api-strict")
    for u, v in zip(r1, r2):
        np.testing.assert_allclose(u, v, rtol=1e-12)


def test_mlp_gradient_matches_finite_differences_of_the_regularized_loss():
    X, y = checks.gaussian_mixture(np.random.default_rng(1), 3, 5, 4)
    lr, wd = 1e-7, 1e-2
    H0, W0, l0 = checks.train_mlp(X, y, networks=1, width=8, steps=0, lr=lr, weight_decay=wd, seed=3)
    H1, W1, l1 = checks.train_mlp(X, y, networks=1, width=8, steps=1, lr=lr, weight_decay=wd, seed=3)
    # a tiny GD step lowers loss + penalty by lr * |grad|^2 to first order; check the readout part
    dW = (W0 - W1) / lr  # gradient of the readout, (1, C, width)
    N = y.size
    F = H0[0] @ W0[0].T
    grad = (F - np.eye(3)[y]).T @ H0[0] / N + wd * W0[0]
    np.testing.assert_allclose(dW[0], grad, rtol=1e-5, atol=1e-9)


def test_quick_checks_pass_and_nc_metrics_fall_with_training():
    res = {}
    for name in ("collapse.ufm", "collapse.train"):
        c = get_check(name)
        ms = [c.run(Context(n, c.quick_samples, 0)) for n in c.quick_sizes]
        v = stats.verdict(list(c.quick_sizes), ms, c.rate, c.bias_rate)
        assert v.passed, (name, v.reason)
        res[name] = ms
    nc1 = [m[0].samples.mean() for m in res["collapse.train"]]
    assert nc1[1] < nc1[0]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cupy"])
def test_gpu_backends_give_the_numpy_numbers(backend):
    from limitlab.verify.backend import available_backends

    if backend not in available_backends():
        pytest.skip(f"backend {backend} is not available here")
    a = checks.ufm_gradient_descent((3, 2), 0.05, 0.02, 2, 3, starts=2, lr=0.3, steps=50, seed=2)
    b = checks.ufm_gradient_descent((3, 2), 0.05, 0.02, 2, 3, starts=2, lr=0.3, steps=50, seed=2, backend=backend)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-10)
    from limitlab.verify.networks import FiniteNetworks

    X, y = checks.gaussian_mixture(np.random.default_rng(0), 3, 5, 4)
    # the same networks on both backends (each backend has its own random streams)
    init = [np.asarray(p) for p in FiniteNetworks.sample(checks.mlp(3, 8), (5,), 2, seed=0, backend="numpy").params]
    r1 = checks.train_mlp(X, y, networks=2, width=8, steps=50, lr=0.1, weight_decay=1e-2, seed=0, init=init)
    r2 = checks.train_mlp(X, y, networks=2, width=8, steps=50, lr=0.1, weight_decay=1e-2, seed=0, backend=backend,
                          init=init)
    for u, v in zip(r1, r2):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)

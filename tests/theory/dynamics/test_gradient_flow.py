"""Infinite-width MSE gradient descent against ODE integration and brute-force linear algebra."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from limitlab.theory.dynamics.gradient_flow import gradient_descent_mse_ensemble


def _problem(seed, n=5, m=3, d=4):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n + m, d))
    ntk = Z @ Z.T / d + 0.5 * np.exp(-0.5 * ((Z[:, None] - Z[None]) ** 2).sum(-1))
    nngp = 0.7 * Z @ Z.T / d + 0.2
    y = rng.standard_normal(n)
    return ntk, nngp, y, n


def test_train_mean_matches_ode_integration():
    ntk, _, y, n = _problem(0)
    K = ntk[:n, :n]
    lr = 0.7
    sol = solve_ivp(lambda t, f: -lr / n * K @ (f - y), (0, 3.0), np.zeros(n), rtol=1e-12, atol=1e-13,
                    t_eval=[0.5, 3.0])
    pred = gradient_descent_mse_ensemble(K, y, lr=lr)(np.array([0.5, 3.0])).mean
    np.testing.assert_allclose(pred, sol.y.T, rtol=1e-9, atol=1e-11)


def test_test_mean_and_covariance_match_linearized_model_by_sampling_formula():
    ntk, nngp, y, n = _problem(1)
    t, lr = 1.3, 2.0
    E = expm(-lr * ntk[:n, :n] * t / n)
    A = ntk[n:, :n] @ np.linalg.solve(ntk[:n, :n], np.eye(n) - E)
    # f_t(x) = f0(x) + A (y - f0(X)) is linear in the Gaussian f0: mean A y, covariance by brute force
    M = np.hstack([-A, np.eye(ntk.shape[0] - n)])
    cov = M @ nngp @ M.T
    pred = gradient_descent_mse_ensemble(ntk[:n, :n], y, nngp_train_train=nngp[:n, :n], lr=lr)
    out = pred(t, ntk_test_train=ntk[n:, :n], nngp_test_train=nngp[n:, :n], nngp_test_test=nngp[n:, n:],
               compute_cov=True)
    np.testing.assert_allclose(out.mean, A @ y, rtol=1e-10)
    np.testing.assert_allclose(out.covariance, cov, rtol=1e-9, atol=1e-12)
    tr = pred(t, compute_cov=True)
    np.testing.assert_allclose(tr.covariance, E @ nngp[:n, :n] @ E.T, rtol=1e-9, atol=1e-12)


def test_infinite_time_is_kernel_regression_and_ridge_matches_neural_tangents_scaling():
    ntk, _, y, n = _problem(2)
    K, Kt = ntk[:n, :n], ntk[n:, :n]
    pred = gradient_descent_mse_ensemble(K, y)
    np.testing.assert_allclose(pred(None, ntk_test_train=Kt).mean, Kt @ np.linalg.solve(K, y), rtol=1e-9)
    reg = gradient_descent_mse_ensemble(K, y, diag_reg=0.1)(None, ntk_test_train=Kt).mean
    np.testing.assert_allclose(reg, Kt @ np.linalg.solve(K + 0.1 * np.trace(K) / n * np.eye(n), y), rtol=1e-9)
    reg_abs = gradient_descent_mse_ensemble(K, y, diag_reg=0.1, diag_reg_absolute_scale=True)(None, ntk_test_train=Kt)
    np.testing.assert_allclose(reg_abs.mean, Kt @ np.linalg.solve(K + 0.1 * np.eye(n), y), rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 40), st.floats(0.01, 0.3))
def test_discrete_steps_equal_repeated_gradient_descent(seed, k, lr):
    ntk, _, y, n = _problem(seed)
    K = ntk[:n, :n]
    f = np.zeros(n)
    for _ in range(k):
        f = f - lr * K @ (f - y)
    pred = gradient_descent_mse_ensemble(K, y, lr=lr, normalization=1, steps=True)(k).mean
    np.testing.assert_allclose(pred, f, rtol=1e-9, atol=1e-12)


def test_bad_inputs_raise_clear_errors():
    ntk, _, y, n = _problem(3)
    K = ntk[:n, :n]
    with pytest.raises(ValueError, match="t"):
        gradient_descent_mse_ensemble(K, y)(-1.0)
    bad = K.copy()
    bad[0, 0] = -5.0
    with pytest.raises(ValueError, match="positive semi-definite"):
        gradient_descent_mse_ensemble(bad, y)
    with pytest.raises(ValueError, match="lr"):
        gradient_descent_mse_ensemble(K, y, lr=-1)
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent_mse_ensemble(K, y[:-1])
    with pytest.raises(ValueError, match="diverges"):
        gradient_descent_mse_ensemble(K, y, lr=100.0, normalization=1, steps=True)


def test_complex_input_raises_type_error_instead_of_dropping_the_imaginary_part():
    ntk, nngp, y, n = _problem(0)
    K = ntk[:n, :n]
    with pytest.raises(TypeError, match="y_train: must be real"):
        gradient_descent_mse_ensemble(K, y + 1j)
    with pytest.raises(TypeError, match="y_train: must be real"):
        gradient_descent_mse_ensemble(K, y.astype(complex))  # zero imaginary part: still complex, still refused
    with pytest.raises(TypeError, match="ntk_train_train: must be real"):
        gradient_descent_mse_ensemble(K.astype(complex), y)
    predict = gradient_descent_mse_ensemble(K, y, nngp_train_train=nngp[:n, :n])
    with pytest.raises(TypeError, match="ntk_test_train: must be real"):
        predict(1.0, ntk_test_train=ntk[n:, :n] * 1j)
    with pytest.raises(TypeError, match="t: must be real"):
        predict(1.0 + 0j)
    with pytest.raises(TypeError, match="y_train"):
        gradient_descent_mse_ensemble(K, ["a"] * n)

"""Saxe et al. 2014 mode dynamics: closed forms against ODE integration and gradient descent."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from limitlab.theory.dynamics import deep_linear as dl


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_mode_trajectory_agrees_with_ode_integration(depth):
    s, u0, tau = 2.0, 0.05, 1.3
    t = np.array([0.0, 0.4, 1.5, 4.0])
    sol = solve_ivp(lambda _, u: dl.mode_rate(u, s, depth, tau), (0, 4.0), [u0], t_eval=t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dl.mode_trajectory(t, s, u0, depth, tau), sol.y[0], rtol=1e-8)


@pytest.mark.parametrize("depth", [2, 3])
def test_learning_time_inverts_the_trajectory(depth):
    s, u0 = 1.5, 0.01
    tf = dl.learning_time(s, u0, 0.75, depth)
    assert dl.mode_trajectory(np.array([tf]), s, u0, depth)[0] == pytest.approx(0.75, rel=1e-9)


def test_learning_time_scales_as_one_over_s_for_one_hidden_layer():
    # eq. (7): t ~ (tau / s) ln(s / u0) for small u0: stronger modes are learned first
    t1 = dl.learning_time(1.0, 1e-3, 0.5, 2)
    t2 = dl.learning_time(2.0, 1e-3, 1.0, 2)
    assert t2 < t1
    assert t1 == pytest.approx(0.5 * np.log(0.5 * (1 - 1e-3) / (1e-3 * 0.5)))


def test_gradient_descent_from_balanced_init_follows_the_modes():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((4, 4)))[0][:, :3]
    S = np.array([3.0, 1.5, 0.5])
    sigma31 = U @ np.diag(S) @ V.T
    Ws, _ = dl.balanced_init(sigma31, 0.01, 2, 5, seed=1)
    lr, steps = 1e-3, 1500
    for _ in range(steps):  # gradient flow of ||Sigma31 - W2 W1||^2 / 2 (whitened inputs)
        E = sigma31 - Ws[1] @ Ws[0]
        Ws = [Ws[0] + lr * Ws[1].T @ E, Ws[1] + lr * E @ Ws[0].T]
    u = np.array([U[:, a] @ Ws[1] @ Ws[0] @ V[:, a] for a in range(3)])
    np.testing.assert_allclose(u, dl.mode_trajectory(np.array([lr * steps]), S, 0.01, 2)[0], rtol=2e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="u0"):
        dl.mode_trajectory([1.0], 1.0, 2.0, 2)
    with pytest.raises(ValueError, match="t"):
        dl.mode_trajectory([-1.0], 1.0, 0.1, 2)
    with pytest.raises(ValueError, match="depth"):
        dl.learning_time(1.0, 0.1, 0.5, 0)

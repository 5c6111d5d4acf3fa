"""DMFT (Bordelon & Pehlevan 2022): lazy limit, closed forms, and agreement between independent solvers."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from limitlab.numerics.solvers import ConvergenceError
from limitlab.theory.dynamics import dmft
from limitlab.theory.dynamics.gradient_flow import gradient_descent_mse_ensemble
from limitlab.theory.kernels.mlp import MLP


def _data(P=4, D=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    X *= np.sqrt(D) / np.linalg.norm(X, axis=1, keepdims=True)
    return X, dmft.input_kernel(X), np.tanh(X[:, 0])


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_two_layer_at_gamma0_zero_is_ntk_gradient_descent(activation):
    X, kx, y = _data()
    T, dt = 40, 0.1
    r = dmft.two_layer(kx, y, activation, 0.0, T, dt, samples=2000, seed=1)
    if activation == "relu":  # arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009), written out here
        q = np.sqrt(np.outer(np.diag(kx), np.diag(kx)))
        th = np.arccos(np.clip(kx / q, -1, 1))
        ntk = q * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi) + kx * (np.pi - th) / (2 * np.pi)
    else:
        ntk = MLP(1, activation, weight_var=1.0, bias_var=0.0).ntk(X)
    lazy = gradient_descent_mse_ensemble(ntk, y, lr=dt, normalization=1, steps=True)(np.arange(T + 1))
    np.testing.assert_allclose(r.f, lazy.mean, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(r.K[-1, -1], ntk, rtol=1e-11, atol=1e-12)


def test_two_layer_kernel_change_is_order_gamma0_squared():
    X, kx, y = _data()
    changes = []
    for g in (0.1, 0.2):
        r = dmft.two_layer(kx, y, "tanh", g, 30, 0.1, samples=50_000, seed=3)
        changes.append(np.linalg.norm(r.K[-1, -1] - r.K[0, 0]))
    # O(gamma0^2) means the ratio is 4, up to the O(gamma0^2) ~ 4% next order and the
    # mean-zero O(gamma0 / sqrt(samples)) Monte Carlo term (~2% of the change here)
    assert changes[1] / changes[0] == pytest.approx(4.0, rel=0.08)


def test_two_layer_linear_closed_form_agrees_with_ode_integration():
    t = np.linspace(0, 3, 7)
    for g, yv in ((0.0, 1.0), (0.7, 1.0), (2.0, -1.5), (1e-9, 0.8)):
        sol = solve_ivp(lambda _, f: 2 * np.sqrt(1 + g * g * f * f) * (yv - f), (0, 3), [0.0], t_eval=t, rtol=1e-12,
                        atol=1e-14)
        np.testing.assert_allclose(dmft.two_layer_linear_whitened(t, yv, g), sol.y[0], rtol=1e-8, atol=1e-12)


def test_two_layer_monte_carlo_converges_to_the_linear_closed_form_as_dt_shrinks():
    g = 1.5
    errs = []
    for T in (100, 200):
        r = dmft.two_layer(np.ones((1, 1)), np.array([1.0]), "identity", g, T, 2.0 / T, samples=50_000, seed=5)
        errs.append(abs(r.f[-1, 0] - dmft.two_layer_linear_whitened(2.0, 1.0, g)))
    # Euler steps of the network: O(dt) error, halving with dt (Monte Carlo error ~1e-4 here)
    assert errs[1] < 0.6 * errs[0] and errs[1] < 5e-3


def test_deep_linear_ntk_at_initialisation_is_depth_plus_one_input_kernels():
    _, kx, y = _data()
    for L in (1, 3):
        r = dmft.linear(kx, y, L, 1.0, 10, 0.05)
        assert r.solver.converged
        np.testing.assert_allclose(r.ntk(0), (L + 1) * kx, rtol=1e-12)


def test_deep_linear_lazy_limit_and_order_gamma0_squared_kernel_change():
    _, kx, y = _data()
    L, T, dt = 3, 20, 0.05
    lazy = dmft.lazy_prediction((L + 1) * kx, y, T, dt)
    r0 = dmft.linear(kx, y, L, 1e-6, T, dt)
    np.testing.assert_allclose(r0.f, lazy, atol=1e-10)
    ch = [np.linalg.norm(dmft.linear(kx, y, L, g, T, dt).ntk(T) - (L + 1) * kx) for g in (0.01, 0.02)]
    assert ch[1] / ch[0] == pytest.approx(4.0, rel=1e-2)


@pytest.mark.slow
def test_deep_linear_one_layer_agrees_with_two_layer_monte_carlo():
    _, kx, y = _data(P=3)
    T, dt = 20, 0.05
    closed = dmft.linear(kx, y, 1, 1.0, T, dt)
    mc = dmft.two_layer(kx, y, "identity", 1.0, T, dt, samples=200_000, seed=2)
    np.testing.assert_allclose(mc.f, closed.f, atol=2e-3)
    np.testing.assert_allclose(mc.K[-1, -1], closed.ntk(T), atol=1e-2)


@pytest.mark.slow
def test_deep_single_site_linear_agrees_with_closed_equations():
    # Monte Carlo with 2e4 sites: f to ~5e-3, response A to ~1e-3 (of 0.09)
    _, kx, y = _data(P=2)
    T, dt = 8, 0.1
    closed = dmft.linear(kx, y, 2, 1.0, T, dt)
    mc = dmft.deep(kx, y, 2, "identity", 1.0, T, dt, samples=20_000, seed=4, damping=0.3, tol=1e-6, maxiter=60)
    assert mc.solver.converged
    np.testing.assert_allclose(mc.f, closed.f, atol=1.5e-2)
    np.testing.assert_allclose(mc.A[1], closed.A[1], atol=5e-3)


@pytest.mark.slow
def test_deep_single_site_one_layer_agrees_with_two_layer_solver():
    _, kx, y = _data(P=2)
    T, dt = 10, 0.1
    a = dmft.deep(kx, y, 1, "tanh", 0.8, T, dt, samples=40_000, seed=6)
    b = dmft.two_layer(kx, y, "tanh", 0.8, T, dt, samples=200_000, seed=7)
    assert a.solver.converged
    np.testing.assert_allclose(a.f, b.f, atol=1e-2)


def test_convergence_is_reported_and_strict_mode_raises():
    _, kx, y = _data()
    r = dmft.linear(kx, y, 3, 1.0, 20, 0.05, maxiter=1, method="picard")
    assert not r.solver.converged and r.solver.iterations == 1
    with pytest.raises(ConvergenceError):
        dmft.linear(kx, y, 3, 1.0, 20, 0.05, maxiter=1, strict=True, method="picard")
    # the march has no iteration: it reports non-finite values (here gradient descent with dt far above
    # 2 / lambda_max of the NTK diverges)
    r = dmft.linear(kx, y, 3, 1.0, 200, 2.0)
    assert not r.solver.converged and not np.all(np.isfinite(r.f))
    with pytest.raises(ConvergenceError):
        dmft.linear(kx, y, 3, 1.0, 200, 2.0, strict=True)


@pytest.mark.parametrize("depth,gamma0", [(2, 0.5), (2, 1.0), (3, 0.5), (3, 1.0), (3, 1.5)])
def test_deep_linear_march_equals_the_picard_reference(depth, gamma0):
    # Two solvers of the same closed equations: the reference iterates to a change below 1e-10 per sweep
    # (contracting, so within ~1e-10 of its fixed point) and the march is exact up to rounding (~1e-13
    # measured); 1e-8 leaves two decades for both. gamma0 = 1.5 at depth 3 is the strong-coupling case
    # (the reference needs its continuation in gamma0 there).
    _, kx, y = _data()
    T, dt = 10, 0.05
    ref = dmft.linear(kx, y, depth, gamma0, T, dt, method="picard")
    new = dmft.linear(kx, y, depth, gamma0, T, dt)
    assert ref.solver.converged and new.solver.converged and new.solver.iterations == 1 and new.solver.residual < 1e-12
    np.testing.assert_allclose(new.f, ref.f, rtol=0, atol=1e-8)
    for name in ("Phi", "G", "A", "B"):
        a, b = getattr(new, name), getattr(ref, name)
        assert sorted(a) == sorted(b)
        for layer in b:
            np.testing.assert_allclose(a[layer], b[layer], rtol=0, atol=1e-8, err_msg=f"{name}[{layer}]")
    np.testing.assert_allclose(new.ntk(T), ref.ntk(T), rtol=0, atol=1e-8)


def test_deep_linear_march_lazy_limit_is_exact_and_matrices_are_built_on_demand():
    _, kx, y = _data()
    L, T, dt = 2, 15, 0.1
    r = dmft.linear(kx, y, L, 0.0, T, dt)
    np.testing.assert_allclose(r.f, dmft.lazy_prediction((L + 1) * kx, y, T, dt), rtol=0, atol=1e-13)
    r = dmft.linear(kx, y, L, 1.0, T, dt)
    assert list(r.Phi) == [0, 1, 2] and list(r.G) == [1, 2, 3] and list(r.A) == [0, 1] and list(r.B) == [1, 2]
    assert r.Phi[2] is r.Phi[2]  # built once, then kept
    np.testing.assert_allclose(r.Phi[2], r.Phi[2].T, atol=1e-13)
    # compact G is G^l(t, s) without the sample axes (gradients of a linear network do not depend on the sample)
    np.testing.assert_allclose(r.G[1], np.kron(r.compact["G"][1], np.ones((y.size, y.size))))


def _train_mup_deep_linear(X, y, depth, gamma0, T, dt, N, seed, sign):
    """Finite muP deep linear network of the module docstring, gradient descent of step dt (all layers updated
    from the same pre-step weights); f at steps 0..T. ``sign`` flips the readout (antithetic pairs cancel f_0)."""
    rng = np.random.default_rng(seed)
    P, D = X.shape
    W = [rng.standard_normal((N, D))] + [rng.standard_normal((N, N)) for _ in range(depth - 1)]
    w = sign * rng.standard_normal(N)
    f = np.zeros((T + 1, P))
    for k in range(T + 1):
        H = [W[0] @ X.T / np.sqrt(D)]
        for l in range(1, depth):
            H.append(W[l] @ H[-1] / np.sqrt(N))
        f[k] = w @ H[-1] / (gamma0 * N)
        if k == T:
            return f
        delta = y - f[k]
        g = [w]
        for l in range(depth - 1, 0, -1):  # g^l = W^l^T g^{l+1} / sqrt(N)
            g.insert(0, W[l].T @ g[0] / np.sqrt(N))
        w = w + dt * gamma0 * H[-1] @ delta
        for l in range(1, depth):
            W[l] += (dt * gamma0 / np.sqrt(N)) * np.outer(g[l], H[l - 1] @ delta)
        W[0] += (dt * gamma0 / np.sqrt(D)) * np.outer(g[0], X.T @ delta)


@pytest.mark.slow
def test_deep_linear_strong_coupling_agrees_with_finite_width_networks():
    # depth 3, gamma0 = 3: the reference Picard iteration overflows here (non-finite after two sweeps);
    # the march is direct. 16 antithetic pairs of width-512 networks: standard error ~1e-3 at the last step
    # (4e-3 at early steps, where f_0 = O(1 / (gamma0 sqrt N)) noise dominates); the rich solution is 0.49 from lazy.
    X, kx, y = _data()
    L, g, T, dt = 3, 3.0, 20, 0.05
    r = dmft.linear(kx, y, L, g, T, dt)
    assert r.solver.converged
    runs = np.array([[_train_mup_deep_linear(X, y, L, g, T, dt, 512, s, sg) for sg in (1.0, -1.0)] for s in range(16)])
    pairs = runs.mean(axis=1)
    err = np.abs(pairs.mean(axis=0) - r.f)
    se = pairs.std(axis=0, ddof=1) / np.sqrt(pairs.shape[0])
    assert np.all(err <= 4 * se + 2e-3)
    assert err[-1].max() < 5e-3 < 0.1 < np.abs(r.f - dmft.lazy_prediction((L + 1) * kx, y, T, dt)).max()


def test_bad_inputs_raise_clear_errors():
    _, kx, y = _data()
    with pytest.raises(ValueError, match="gamma0"):
        dmft.two_layer(kx, y, "tanh", -0.1, 10, 0.1, samples=100)
    bad = kx.copy()
    bad[0, 1] = bad[1, 0] = 10.0
    with pytest.raises(ValueError, match="positive semi-definite"):
        dmft.linear(bad, y, 2, 1.0, 10, 0.1)
    with pytest.raises(ValueError, match="^steps: must be an integer >= 1, got 0"):
        dmft.two_layer(kx, y, "tanh", 1.0, 0, 0.1, samples=100)
    with pytest.raises(ValueError, match="^lr: must be a finite number > 0"):
        dmft.linear(kx, y, 2, 1.0, 10, 0.0)
    with pytest.raises(ValueError, match="t"):
        dmft.two_layer_linear_whitened(-1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="gamma0"):
        dmft.deep(kx, y, 2, "tanh", 0.0, 5, 0.1, samples=100)
    with pytest.raises(ValueError, match="dt"):
        dmft.linear(kx, y, 2, 1.0, 10, -0.1)


def _user_problem():
    X = np.random.default_rng(0).standard_normal((3, 10))
    return dmft.input_kernel(X), np.array([1.0, -0.5, 0.3])


def test_diverging_deep_linear_is_not_reported_converged():
    # the user's case: gamma0 = 5, dt = 0.1 blew up to ~1e24..1e45 with converged=True
    kx, y = _user_problem()
    r = dmft.linear(kx, y, 2, 5.0, 26, 0.1)
    assert np.all(np.isfinite(r.f)) and np.abs(r.f).max() > 1e20
    assert not r.solver.converged and "diverges" in r.solver.message and "dt" in r.solver.message
    with pytest.raises(ConvergenceError, match="linear: gradient descent diverges"):
        dmft.linear(kx, y, 2, 5.0, 26, 0.1, strict=True)
    # the same dynamics before the blow-up stay bounded (|y - f| <= 3 |y|): converged
    early = dmft.linear(kx, y, 2, 5.0, 20, 0.1)
    assert early.solver.converged and early.solver.message == ""
    np.testing.assert_array_equal(early.f, r.f[:21])  # causal: the longer run starts with the same steps
    # the threshold is the documented parameter
    assert dmft.linear(kx, y, 2, 5.0, 26, 0.1, max_error_growth=1e30).solver.converged
    stable = dmft.linear(kx, y, 2, 1.0, 30, 0.1, strict=True)
    assert stable.solver.converged and np.abs(y - stable.f[-1]).max() < 0.05


@pytest.mark.parametrize("factor, diverges", [(1.9, False), (2.5, True)])
def test_divergence_matches_the_lazy_stability_boundary(factor, diverges):
    # gamma0 = 0 is NTK gradient descent with Theta = (L+1) K^x: stable iff dt * max eig(Theta) < 2
    _, kx, y = _data()
    lam = np.linalg.eigvalsh(3 * kx).max()
    r = dmft.linear(kx, y, 2, 0.0, 60, factor / lam)
    assert r.solver.converged is (not diverges)
    if diverges:
        assert "diverges" in r.solver.message and f"dt * max eig = {factor:.3g}" in r.solver.message


def test_diverging_two_layer_is_reported():
    kx, y = _user_problem()
    r = dmft.two_layer(kx, y, "tanh", 1.0, 20, 5.0, samples=2000)
    assert not r.solver.converged and "diverges" in r.solver.message
    with pytest.raises(ConvergenceError, match="two_layer: gradient descent diverges"):
        dmft.two_layer(kx, y, "tanh", 1.0, 20, 5.0, samples=2000, strict=True)
    ok = dmft.two_layer(kx, y, "tanh", 1.0, 20, 0.5, samples=2000, strict=True)
    assert ok.solver.converged and ok.solver.message == ""


def test_picard_failure_is_reported_as_a_solver_failure():
    kx, y = _user_problem()
    r = dmft.linear(kx, y, 2, 5.0, 26, 0.1, method="picard", maxiter=20)
    assert not r.solver.converged and "solver did not converge" in r.solver.message


@pytest.mark.parametrize("value", [1.0, 0.5, np.nan, np.inf, "big"])
def test_bad_error_growth(value):
    kx, y = _user_problem()
    with pytest.raises(ValueError, match="max_error_growth"):
        dmft.linear(kx, y, 2, 1.0, 5, 0.1, max_error_growth=value)


def test_input_kernel_rejects_empty_and_complex_input():
    for X in (np.zeros((0, 3)), np.zeros((3, 0)), np.zeros(0), np.zeros(3)):
        with pytest.raises(ValueError, match=r"X: expected a \(P, D\) array"):
            dmft.input_kernel(X)
    with pytest.raises(TypeError, match="X: must be real"):
        dmft.input_kernel(np.ones((2, 3)) * (1 + 1j))
    kx, y = _user_problem()
    with pytest.raises(TypeError, match="y: must be real"):
        dmft.linear(kx, y + 1j, 2, 1.0, 5, 0.1)


def test_diverged_two_layer_kernels_are_nan_and_flagged():
    kx, y = _user_problem()
    r = dmft.two_layer(kx, y, "tanh", 1.0, 20, 5.0, samples=2000)
    assert not r.solver.converged and np.isnan(r.K).all() and np.isnan(r.Phi).all()
    assert np.abs(r.f).max() > 1e3 * np.abs(y).max()


def test_deep_linear_is_the_deprecated_name_of_linear():
    # dmft.deep_linear read like the Saxe module limitlab.theory.dynamics.deep_linear; it is dmft.linear
    _, kx, y = _data()
    with pytest.warns(DeprecationWarning, match="dmft.deep_linear is deprecated; use dmft.linear"):
        old = dmft.deep_linear(kx, y, 2, 0.5, 10, 0.1)
    np.testing.assert_array_equal(old.f, dmft.linear(kx, y, 2, 0.5, 10, 0.1).f)


def test_old_keywords_T_and_dt_still_work_deprecated():
    # one word per thing: steps and lr; the paper's T and dt are accepted with a DeprecationWarning
    _, kx, y = _data()
    with pytest.warns(DeprecationWarning, match="linear: the keyword (T|dt) is deprecated; use (steps|lr)"):
        old = dmft.linear(kx, y, 2, 0.5, T=8, dt=0.1)
    np.testing.assert_array_equal(old.f, dmft.linear(kx, y, 2, 0.5, steps=8, lr=0.1).f)
    with pytest.raises(TypeError, match="got both T"):
        dmft.linear(kx, y, 2, 0.5, T=8, steps=8)

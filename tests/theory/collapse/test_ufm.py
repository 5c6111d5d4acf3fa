"""UFM closed forms (Dang et al. 2023) against sympy, brute-force 1-D minimization and
L-BFGS minimization of the full objective from random starts."""
import numpy as np
import pytest
import sympy as sp
from scipy.optimize import minimize, minimize_scalar

from limitlab.theory.collapse import metrics, ufm_global_minimizer, ufm_objective, ufm_realize, ufm_sympy, \
    ufm_thresholds


def _minimize_ufm(counts, lw, lh, M, d, seeds, scale=1.0):
    """Full UFM objective minimized by L-BFGS (independent of the closed form)."""
    C = len(counts)
    y = np.repeat(np.arange(C), counts)
    shapes = [(d, d)] * (M - 1) + [(C, d), (len(y), d)]
    sizes = [a * b for a, b in shapes]

    def unpack(v):
        out, i = [], 0
        for s, z in zip(shapes, sizes):
            out.append(v[i:i + z].reshape(s))
            i += z
        return out

    def fg(v):
        p = unpack(v)
        f, dW, dH = ufm_objective(p[:-1], p[-1], y, lw, lh, grad=True)
        return f, np.concatenate([a.ravel() for a in dW + [dH]])

    runs = []
    for s in seeds:
        v0 = scale * np.random.default_rng(s).standard_normal(sum(sizes))
        r = minimize(fg, v0, jac=True, method="L-BFGS-B", options=dict(maxiter=20000, gtol=1e-12, ftol=1e-16))
        p = unpack(r.x)
        P = p[0]
        for W in p[1:-1]:
            P = W @ P
        runs.append((r.fun, P, p[-1], y))
    return runs


def test_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((5, 4)), rng.standard_normal((3, 5))]
    H = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7)
    f, dW, dH = ufm_objective(Ws, H, y, 0.1, 0.2, grad=True)
    eps = 1e-6
    for arr, g in [(Ws[0], dW[0]), (Ws[1], dW[1]), (H, dH)]:
        i = (1, 2)
        old = arr[i]
        arr[i] = old + eps
        fp = ufm_objective(Ws, H, y, 0.1, 0.2)
        arr[i] = old - eps
        fm = ufm_objective(Ws, H, y, 0.1, 0.2)
        arr[i] = old
        assert g[i] == pytest.approx((fp - fm) / (2 * eps), rel=1e-6)


def test_depth_one_matches_sympy_closed_form_and_lbfgs_with_a_collapsed_minority_class():
    counts, lw, lh = [12, 8, 5, 2], 0.1, 0.04  # threshold N^2 lw lh = 2.916: the last class collapses
    g = ufm_global_minimizer(counts, lw, lh, 1)
    assert g.collapsed.tolist() == [False, False, False, True]
    s = ufm_sympy(1)
    sym = s["symbols"]
    for k, n in enumerate(counts):
        sub = {sym["n_k"]: n, sym["N"]: 27, sym["lambda_W"]: sp.Rational(1, 10), sym["lambda_H"]: sp.Rational(1, 25)}
        assert g.classifier_sq_norms[k] == pytest.approx(float(s["classifier_sq_norm_closed"].subs(sub)), rel=1e-13)
        assert g.feature_sq_norms[k] == pytest.approx(float(s["feature_sq_norm_closed"].subs(sub)), rel=1e-13)
        assert g.alignment[k] == pytest.approx(float(s["alignment_closed"].subs(sub)), rel=1e-13, abs=1e-15)
        assert g.objective_per_class[k] == pytest.approx(float(s["objective_closed"].subs(sub)), rel=1e-13)
    for f, P, H, y in _minimize_ufm(counts, lw, lh, 1, 6, seeds=(0, 1)):
        assert f == pytest.approx(g.objective, rel=1e-9)
        np.testing.assert_allclose(np.diag(P @ P.T), g.classifier_sq_norms, atol=1e-6)
        G = P @ P.T
        np.testing.assert_allclose(G - np.diag(np.diag(G)), 0, atol=1e-6)  # orthogonal class directions
        hbar = np.array([H[y == k].mean(0) for k in range(4)])
        np.testing.assert_allclose(np.sum(hbar ** 2, 1), g.feature_sq_norms, atol=1e-6)
        np.testing.assert_allclose(np.diag(P @ hbar.T), g.alignment, atol=1e-6)


def test_depth_two_zero_wins_although_the_stationarity_equation_has_a_root():
    counts, lw, lh = [12, 8, 5, 2], 0.062, 0.004  # n_root 1.69 < n_4 = 2 < n_collapse 2.20
    g = ufm_global_minimizer(counts, lw, lh, 2)
    assert g.root_exists[3] and g.collapsed[3]
    assert g.objective_at_root[3] > g.objective_per_class[3] == pytest.approx(2 / 54)
    best = min(_minimize_ufm(counts, lw, lh, 2, 5, seeds=(0, 1, 2)), key=lambda r: r[0])
    assert best[0] == pytest.approx(g.objective, rel=1e-8)
    np.testing.assert_allclose(np.diag(best[1] @ best[1].T), g.classifier_sq_norms, atol=1e-5)
    # the nonzero solution built from the root is a stationary point, with a higher objective
    y = np.repeat(np.arange(4), counts)
    g_root = ufm_global_minimizer(counts, lw, lh, 2)
    g_root.collapsed[:] = False
    xm = g_root.x ** 2
    g_root.layer_singular_values = (27 * lh * xm) ** 0.25
    g_root.feature_sq_norms = xm / (27 * lh * (xm + 1) ** 2)
    Ws, H = ufm_realize(g_root, y, 5, seed=0)
    f, dW, dH = ufm_objective(Ws, H, y, lw, lh, grad=True)
    assert f == pytest.approx(g.objective_at_root.sum(), rel=1e-12) and f > g.objective
    assert max(np.abs(a).max() for a in dW + [dH]) < 1e-12


@pytest.mark.slow
def test_depth_two_and_three_minimum_found_by_lbfgs_equals_closed_form():
    for M, counts, lw, lh in [(2, [12, 8, 5, 2], 0.02, 0.004), (3, [9, 6, 3], 0.01, 0.002)]:
        g = ufm_global_minimizer(counts, lw, lh, M)
        assert not g.collapsed.any()
        runs = _minimize_ufm(counts, lw, lh, M, len(counts) + 1, seeds=range(4))
        best = min(runs, key=lambda r: r[0])
        assert best[0] == pytest.approx(g.objective, rel=1e-8)
        assert all(r[0] >= g.objective * (1 - 1e-9) for r in runs)  # nothing beats the global minimum
        np.testing.assert_allclose(np.diag(best[1] @ best[1].T), g.classifier_sq_norms, rtol=1e-5)


def test_realized_minimizer_attains_the_reported_objective_and_is_an_etf_after_centring():
    counts = [10, 10, 10, 10]
    g = ufm_global_minimizer(counts, 0.01, 0.005, 2)
    y = np.repeat(np.arange(4), 10)
    Ws, H = ufm_realize(g, y, 7, seed=3)
    assert ufm_objective(Ws, H, y, 0.01, 0.005) == pytest.approx(g.objective, rel=1e-12)
    assert np.ptp(g.classifier_sq_norms) == 0  # balanced: orthogonal frame of equal norms
    r = metrics(H, y, Ws[1] @ Ws[0])
    assert r.nc1 < 1e-20 and r.nc2_etf_means < 1e-12 and r.nc2_maxangle_means < 1e-12


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_roots_solve_the_stationarity_equation_and_thresholds_match_brute_force(M):
    g = ufm_global_minimizer([50, 20, 7, 3, 1], 0.01, 0.01, M)
    s = ufm_sympy(M)
    sym = s["symbols"]
    for k in np.flatnonzero(g.root_exists):
        sub = {sym["n_k"]: g.counts[k], sym["N"]: 81, sym["lambda_W"]: 0.01, sym["lambda_H"]: 0.01, sym["x"]: g.x[k]}
        assert abs(float(s["equation"].subs(sub))) < 1e-10
    # n_collapse: the class size where min_x [1/(x^M+1) + (b/n) x] reaches 1 (= value at zero)
    n_root, n_coll = ufm_thresholds(81, 0.01, 0.01, M)
    b = g.b

    def best(n):
        return minimize_scalar(lambda x: 1 / (x ** M + 1) + b / n * x, bounds=(1e-9, 1e3), method="bounded",
                               options=dict(xatol=1e-12)).fun

    assert best(n_coll * 1.001) < 1 - 1e-9 and best(n_coll * 0.999) > 1 - 1e-9
    if M == 1:
        assert n_root == n_coll == pytest.approx(81 ** 2 * 1e-4)
    else:
        assert n_root < n_coll
        xs = np.linspace(1e-4, 20, 400001)
        assert b / n_root == pytest.approx(np.max(M * xs ** (M - 1) / (xs ** M + 1) ** 2), rel=1e-8)


@pytest.mark.parametrize("args, match", [
    (([5, 0, 3], 0.1, 0.1), "counts"), (([5, 3], -0.1, 0.1), "lambda_W"), (([5, 3], 0.1, np.nan), "lambda_H"),
    (([5, 3], 0.1, 0.1, 0), "depth")])
def test_bad_input_is_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        ufm_global_minimizer(*args)


def test_realize_needs_dim_at_least_classes():
    g = ufm_global_minimizer([3, 3, 3], 0.01, 0.01)
    with pytest.raises(ValueError, match="dim"):
        ufm_realize(g, np.repeat(np.arange(3), 3), 2)


@pytest.mark.parametrize("labels, err, match", [([0, 1, -1], ValueError, "value -1 out of range"),
                                                 ([0, 1, 3], ValueError, "value 3 out of range"),
                                                 ([0, 1, 1.5], TypeError, "integer class indices"),
                                                 ([0, 1], ValueError, r"expected shape \(3,\)")])
def test_objective_requires_labels_in_range(labels, err, match):
    # a label -1 used to index the last class silently
    W = [np.eye(3)]
    with pytest.raises(err, match=match):
        ufm_objective(W, np.eye(3), labels, 0.1, 0.1)
    with pytest.raises(ValueError, match="num_classes"):
        ufm_objective(W, np.eye(3), [0, 1, 2], 0.1, 0.1, num_classes=0)


def test_objective_with_valid_labels_is_the_formula():
    rng = np.random.default_rng(0)
    W, H, y = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), np.array([0, 2, 1, 2, 0])
    Y = np.eye(3)[y]
    ref = 0.5 / 5 * np.sum((H @ W.T - Y) ** 2) + 0.05 * np.sum(W * W) + 0.5 * 0.2 * np.sum(H * H)
    assert ufm_objective([W], H, y, 0.1, 0.2) == pytest.approx(ref, rel=1e-14)


def test_realize_requires_labels_in_range():
    g = ufm_global_minimizer([2, 2], 1e-3, 1e-3)
    with pytest.raises(ValueError, match="value -1 out of range"):
        ufm_realize(g, [0, 0, 1, -1], 3)
    with pytest.raises(ValueError, match="1-D"):
        ufm_realize(g, [[0, 0, 1, 1]], 3)
    with pytest.raises(ValueError, match="class sizes"):
        ufm_realize(g, [0, 0, 0, 1], 3)

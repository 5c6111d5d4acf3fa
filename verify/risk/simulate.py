"""Simulated ridge regressions that the risk formulas of limitlab.theory.risk are checked against.

Every function draws fresh data from ``seed`` (int or numpy Generator) and returns the
test risk of one fitted regression (one independent sample for limitlab.verify).
"""
from __future__ import annotations

import math

import numpy as np

from limitlab.theory import activations as _activations

__all__ = ["sphere", "random_features_regression", "linear_ridge_regression", "kernel_ridge_regression",
           "gaussian_rf_regression"]


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sphere(n, d, rng, radius=None):
    """n points uniform on the sphere of radius ``radius`` (default sqrt(d)) in R^d."""
    g = rng.standard_normal((n, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g * (math.sqrt(d) if radius is None else radius)


def _ridge_solve(Z, y, reg):
    """argmin (1/n)||y - Z a||^2 + reg ||a||^2, primal or dual form, whichever is smaller."""
    n, N = Z.shape
    if N <= n:  # (reg = 0: ordinary least squares via the normal equations; SVD-based lstsq is far slower)
        A = Z.T @ Z / n
        A[np.diag_indices_from(A)] += reg
        return np.linalg.solve(A, Z.T @ y / n)
    # dual form; reg = 0 gives the minimum-norm interpolator Z^T (Z Z^T)^-1 y
    G = Z @ Z.T / n
    G[np.diag_indices_from(G)] += reg
    return Z.T @ np.linalg.solve(G, y) / n


def random_features_regression(d, psi1, psi2, ridge, activation="relu", signal=1.0, nonlinear_signal=0.0,
                               noise=0.0, seed=0, n_test=None):
    """Test risk of one RF ridge regression in Mei & Montanari's setting (see theory.risk.random_features).

    N = round(psi1 d) features theta_a and n = round(psi2 d) samples, uniform on the sphere of
    radius sqrt(d); target y = <beta1, x> + F* sqrt((d+2)/d) x_1 x_2 + tau eps (the degree-2 part has
    variance F*^2 and is orthogonal to degree <= 1); the risk E_x (f(x) - f_hat(x))^2 is averaged
    over ``n_test`` fresh points (default 8 d).
    """
    rng = _rng(seed)
    act = _activations.get(activation)
    N, n = max(1, round(psi1 * d)), max(1, round(psi2 * d))
    n_test = n_test or 8 * d
    theta = sphere(N, d, rng)
    beta = rng.standard_normal(d)
    beta *= math.sqrt(signal) / np.linalg.norm(beta)
    c2 = math.sqrt(nonlinear_signal * (d + 2) / d)

    def target(X):
        return X @ beta + c2 * X[:, 0] * X[:, 1]

    X = sphere(n, d, rng)
    y = target(X) + math.sqrt(noise) * rng.standard_normal(n)
    Z = np.asarray(act(X @ theta.T / math.sqrt(d)))
    a = _ridge_solve(Z, y, N * ridge / d)
    Xt = sphere(n_test, d, rng)
    err = target(Xt) - np.asarray(act(Xt @ theta.T / math.sqrt(d))) @ a
    return float(np.mean(err ** 2))


def linear_ridge_regression(p, gamma, ridge, signal=1.0, noise=1.0, seed=0):
    """||beta_hat - beta||^2 for x ~ N(0, I_p), n = p/gamma, beta_hat = (X^T X/n + ridge I)^-1 X^T y/n
    (ridge = 0: the minimum-norm least-squares solution)."""
    rng = _rng(seed)
    n = max(1, round(p / gamma))
    beta = rng.standard_normal(p)
    beta *= math.sqrt(signal) / np.linalg.norm(beta)
    X = rng.standard_normal((n, p))
    y = X @ beta + math.sqrt(noise) * rng.standard_normal(n)
    b = _ridge_solve(X, y, ridge)
    return float(np.sum((b - beta) ** 2))


def kernel_ridge_regression(kernel, X, y, X_test, y_test, ridge):
    """Test and train MSE of kernel ridge regression f = K(., X)(K + ridge I)^-1 y.

    ``kernel(A, B)`` returns the Gram matrix; ridge = 0 uses a least-squares solve.
    """
    K = kernel(X, X)
    Kt = kernel(X_test, X)
    A = K + ridge * np.eye(K.shape[0])
    alpha = np.linalg.solve(A, y) if ridge > 0 else np.linalg.lstsq(A, y, rcond=None)[0]
    return float(np.mean((y_test - Kt @ alpha) ** 2)), float(np.mean((y - K @ alpha) ** 2))


def gaussian_rf_regression(eigenvalues, target, n, features, ridge, noise=0.0, seed=0, n_test=4000):
    """Test MSE (on noisy labels) of random-feature ridge regression in the Gaussian eigenbasis model.

    x ~ N(0, I_M) are the eigenfunction values, the kernel is sum_i l_i x_i x'_i, the k random
    features are g_j . (sqrt(l) * x) / sqrt(k) with g_j ~ N(0, I_M); y = target . x + noise.
    This is the model of Simon et al. 2023 ("More is Better"), where the eigenframework is exact
    as n, k -> infinity. Returns (test_mse, train_mse).
    """
    rng = _rng(seed)
    lam = np.asarray(eigenvalues, float)
    v = np.asarray(target, float)
    M = lam.size
    F = rng.standard_normal((features, M)) * np.sqrt(lam)[None, :] / math.sqrt(features)
    X = rng.standard_normal((n, M))
    Xt = rng.standard_normal((n_test, M))
    y = X @ v + math.sqrt(noise) * rng.standard_normal(n)
    yt = Xt @ v + math.sqrt(noise) * rng.standard_normal(n_test)
    Z, Zt = X @ F.T, Xt @ F.T
    return kernel_ridge_regression(lambda A, B: A @ B.T, Z, y, Zt, yt, ridge)

"""Simulated ridge regressions that the risk formulas of limitlab.theory.risk are checked against.

Every function draws fresh data from ``seed`` (int or numpy Generator) and returns the
test risk of one fitted regression (one independent sample for limitlab.verify).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from limitlab.theory import activations as _activations

__all__ = ["sphere", "random_features_regression", "linear_ridge_regression", "kernel_ridge_regression",
           "gaussian_rf_regression", "GaussianKernelRidge", "gaussian_design_kernel_ridge",
           "gaussian_kernel_ridge_regression"]


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


@dataclass(frozen=True)
class GaussianKernelRidge:
    """One kernel ridge regression in the Gaussian eigenbasis model (see gaussian_design_kernel_ridge)."""
    test_mse: float                 # population test MSE on a noisy label, this draw of the label noise
    test_mse_noise_averaged: float  # its exact expectation over the training label noise, same design


def gaussian_design_kernel_ridge(Z, eigenvalues, multiplicities, target_coef, ridge, noise=0.0, y=None):
    """Exact population test MSE of kernel ridge regression on a given Gaussian design.

    Model (the eigenframework's Gaussian design): eigenfunction values z ~ N(0, I_M) at each point,
    the columns of ``Z`` (n x M) ordered in blocks, block l having ``multiplicities[l]`` columns and
    eigenvalue ``eigenvalues[l]``; kernel k(x, x') = sum_k l_k z_k z'_k; target f = z . v with
    v = ``target_coef`` (length M); labels y = Z v + sqrt(noise) eps: ``y`` is that label vector
    (None: the clean labels Z v, for which test_mse has no training noise; the noise average below
    needs no draw). Fit: alpha = (K + ridge I)^-1 y, f_hat(x) = sum_i k(x, x_i) alpha_i, i.e. the
    coefficients v_hat_k = l_k (Z^T alpha)_k.

    Test MSE on a noisy test label at a fresh point (z' ~ N(0, I_M), eps' independent):
        E (z'.v + sqrt(noise) eps' - z'.v_hat)^2 = ||v_hat - v||^2 + noise       (E z' z'^T = I).
    Averaged over the training noise, alpha = alpha0 + sqrt(noise) A^-1 eps with A = K + ridge I and
    alpha0 = A^-1 Z v, so v_hat = v_hat0 + sqrt(noise) Lambda Z^T A^-1 eps and
        E ||v_hat - v||^2 = ||v_hat0 - v||^2 + noise tr(A^-1 K2 A^-1),   K2 = Z Lambda^2 Z^T.
    """
    Z = np.asarray(Z, float)
    lam = np.asarray(eigenvalues, float)
    mult = np.asarray(multiplicities, int)
    v = np.asarray(target_coef, float)
    n, M = Z.shape
    if mult.sum() != M or v.shape != (M,) or lam.shape != mult.shape:
        raise ValueError(f"Z has {M} columns, multiplicities sum to {mult.sum()}, target has shape {v.shape}")
    off = np.concatenate([[0], np.cumsum(mult)])
    K = np.zeros((n, n))
    K2 = np.zeros((n, n))
    for l in range(lam.size):  # one Gram product per block: K and K2 together cost one Z Z^T
        Zl = Z[:, off[l]:off[l + 1]]
        P = Zl @ Zl.T
        K += lam[l] * P
        K2 += lam[l] ** 2 * P
    le = np.repeat(lam, mult)
    A = K
    A[np.diag_indices(n)] += ridge
    c = scipy.linalg.cho_factor(A)
    y0 = Z @ v
    err0 = float(np.sum((le * (Z.T @ scipy.linalg.cho_solve(c, y0)) - v) ** 2))
    Ai = scipy.linalg.cho_solve(c, np.eye(n))
    noise_term = float(np.sum((Ai @ K2) * Ai))  # tr(A^-1 K2 A^-1), A^-1 symmetric
    if y is None:
        err = err0
    else:
        err = float(np.sum((le * (Z.T @ scipy.linalg.cho_solve(c, np.asarray(y, float))) - v) ** 2))
    return GaussianKernelRidge(err + noise, err0 + noise * noise_term + noise)


def gaussian_kernel_ridge_regression(eigenvalues, multiplicities, target, n, ridge, noise=0.0, seed=0):
    """One kernel ridge regression with n points in the Gaussian eigenbasis model (the eigenframework's
    own setting): block l has ``multiplicities[l]`` Gaussian features of eigenvalue ``eigenvalues[l]``,
    the target's coefficients on block l are ``target[l]`` times a uniformly random unit vector (so
    ``target[l]`` is the norm of its projection on that eigenspace, the convention of
    theory.risk.eigenlearning.kernel_ridge), label noise of variance ``noise``, ridge ``ridge`` in
    (K + ridge I). Returns GaussianKernelRidge (exact population test MSEs on noisy labels)."""
    rng = _rng(seed)
    lam = np.asarray(eigenvalues, float)
    mult = np.asarray(multiplicities)
    if np.any(mult != np.round(mult)) or np.any(mult < 1):
        raise ValueError(f"multiplicities: must be integers >= 1, got {multiplicities!r}")
    mult = np.round(mult).astype(int)
    t = np.asarray(target, float)
    off = np.concatenate([[0], np.cumsum(mult)])
    v = np.zeros(off[-1])
    for l in np.flatnonzero(t):
        u = rng.standard_normal(mult[l])
        v[off[l]:off[l + 1]] = t[l] * u / np.linalg.norm(u)
    Z = rng.standard_normal((n, off[-1]))
    y = Z @ v + math.sqrt(noise) * rng.standard_normal(n)
    return gaussian_design_kernel_ridge(Z, lam, mult, v, ridge, noise, y)

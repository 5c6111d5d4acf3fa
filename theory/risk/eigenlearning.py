"""Eigenframework for kernel ridge and random-feature ridge regression.

Kernel ridge (Bordelon, Canatar, Pehlevan 2020, eqs. (9)-(11); Canatar, Bordelon, Pehlevan 2021;
Simon, Dickens, Karkada, DeWeese 2021 "The eigenlearning framework", arXiv:2110.03922, eqs. (4)-(8)):
with kernel eigenvalues l_i (integral operator on the data distribution), target coefficients
v_i in the orthonormal eigenbasis, n samples, ridge delta in (K + delta I_n), label noise sigma^2,

    sum_i l_i/(l_i + kappa) + delta/kappa = n,          L_i = l_i/(l_i + kappa),
    E0 = n/(n - sum_i L_i^2),   test MSE = E0 (sum_i (1 - L_i)^2 v_i^2 + sigma^2),
    train MSE = (delta/(n kappa))^2 test MSE.

test MSE is the expected squared error on a *noisy* test label (Simon et al.'s convention);
``excess_risk`` = test MSE - sigma^2 is the error against the clean target.

Random-feature ridge (Simon, Karkada, Ghosh, Belkin 2023, "More is Better in Modern Machine
Learning", arXiv:2311.14646, Sec. 4): k random features whose kernel averages to the kernel
above, ridge delta in (K_rf + delta I_n): (kappa, gamma) solve

    n = sum_i l_i/(l_i + gamma) + delta/kappa,   k = sum_i l_i/(l_i + gamma) + k kappa/gamma;
    L_i = l_i/(l_i + gamma), z = sum L_i, q = sum L_i^2,
    E = 1/(1 - (q (k - 2z) + z^2)/(n (k - q))),
    test MSE = E (sum_i [(1 - L_i) - kappa L_i k/((l_i + gamma)(k - q))] v_i^2 + sigma^2).

Solving (no silent wrong root): the kernel-ridge equation is decreasing in kappa and is solved
on the bracket [delta/n, (sum l + delta)/n]. For random features, kappa = gamma (k - z)/k and
G(gamma) = gamma (k - z)_+ (n - z)_+ - k delta is continuous and increasing with G < 0 below
delta/(2n): one root, bracketed. Ridgeless (delta = 0) limits are taken exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import sympy as sp

from limitlab.numerics import validation as validate
from limitlab.numerics.solvers import find_root

__all__ = ["KernelRidgeRisk", "RandomFeatureRidgeRisk", "kernel_ridge", "random_feature_ridge", "tuned_ridge",
           "effective_regularization", "eigenlearning_equations", "scaling_exponent", "power_law_problem",
           "mp_kappa"]


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------

def _spectrum(eigenvalues, target, multiplicities=None):
    lam = np.asarray(eigenvalues, dtype=float)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"eigenvalues: must be a non-empty 1-D array, got shape {lam.shape}")
    bad = ~np.isfinite(lam) | (lam <= 0)
    if bad.any():
        raise ValueError(f"eigenvalues: must be finite and > 0, got {lam[bad][0]!r} at index {int(np.flatnonzero(bad)[0])}")
    v = np.asarray(target, dtype=float)
    if v.shape != lam.shape:
        raise ValueError(f"target: must have the shape of eigenvalues {lam.shape}, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("target: must be finite")
    if multiplicities is None:
        return lam, v, None
    w = np.asarray(multiplicities, dtype=float)
    if w.shape != lam.shape or np.any(~np.isfinite(w)) or np.any(w < 1):
        raise ValueError(f"multiplicities: must be finite, >= 1 and shaped like eigenvalues {lam.shape}")
    return lam, v, w


def _out(a):
    a = np.asarray(a)
    return a.copy() if a.ndim else float(a)


# ----------------------------------------------------------------------------------
# symbolic
# ----------------------------------------------------------------------------------

def eigenlearning_equations():
    """Sympy form of both frameworks over a symbolic spectrum l[i], i = 0..M-1 (Sum objects)."""
    i, M = sp.symbols("i M", integer=True, nonnegative=True)
    l, v = sp.IndexedBase("lambda"), sp.IndexedBase("v")
    n, k, delta, sigma2 = sp.symbols("n k delta sigma2", positive=True)
    kappa, gamma = sp.symbols("kappa gamma", positive=True)
    S = lambda e: sp.Sum(e, (i, 0, M - 1))  # noqa: E731
    L = l[i] / (l[i] + kappa)
    E0 = n / (n - S(L ** 2))
    Lg = l[i] / (l[i] + gamma)
    z, q = S(Lg), S(Lg ** 2)
    E_rf = 1 / (1 - (q * (k - 2 * z) + z ** 2) / (n * (k - q)))
    return {
        "symbols": dict(i=i, M=M, eigenvalues=l, target=v, n=n, features=k, ridge=delta, noise=sigma2,
                        kappa=kappa, gamma=gamma),
        "kappa_eq": sp.Eq(S(L) + delta / kappa, n),
        "overfitting_coefficient": E0,
        "test_mse": E0 * (S((1 - L) ** 2 * v[i] ** 2) + sigma2),
        "train_mse": (delta / (n * kappa)) ** 2 * E0 * (S((1 - L) ** 2 * v[i] ** 2) + sigma2),
        "rf_n_eq": sp.Eq(S(Lg) + delta / kappa, n),
        "rf_k_eq": sp.Eq(S(Lg) + k * kappa / gamma, k),
        "rf_test_mse": E_rf * (S(((1 - Lg) - kappa * Lg * k / ((l[i] + gamma) * (k - q))) * v[i] ** 2) + sigma2),
    }


# ----------------------------------------------------------------------------------
# kernel ridge
# ----------------------------------------------------------------------------------

def _dof(lam, kappa, w=None):
    """sum_i w_i l_i/(l_i + kappa) over the last axis (w: multiplicities), kappa of any shape."""
    L = lam / (lam + kappa[..., None])
    return np.sum(L if w is None else L * w, axis=-1)


def _total(w, lam):
    return float(lam.size if w is None else w.sum())


def _solve_kappa(lam, n, delta, w=None):
    """kappa(n, delta) on the grid of broadcast (n, delta); ridgeless with n >= M gives 0."""
    n, delta = np.broadcast_arrays(n, delta)
    kappa = np.zeros(n.shape)
    M = _total(w, lam)
    trace = float(np.sum(lam if w is None else lam * w))
    pos = delta > 0
    need = pos | (n < M)
    if need.any():
        nn, dd = n[need], delta[need]
        lo = np.where(dd > 0, dd / nn, lam.min() * (M - nn) / nn)
        hi = (trace + dd) / nn
        lo = np.minimum(lo, hi)
        # decreasing in kappa; solved in t = log kappa for uniform relative precision
        f = lambda t: np.log(_dof(lam, np.exp(t), w) + dd * np.exp(-t)) - np.log(nn)  # noqa: E731
        res = find_root(f, bracket=(np.log(lo), np.log(hi)), tol=1e-15, rtol=4e-16, strict=True)
        kappa[need] = np.exp(res.value)
    return kappa


def effective_regularization(eigenvalues, n, ridge=0.0, multiplicities=None):
    """kappa solving sum_i l_i/(l_i + kappa) + ridge/kappa = n (Simon et al. 2021, eq. (4))."""
    lam, _, w = _spectrum(eigenvalues, np.zeros(np.shape(eigenvalues)), multiplicities)
    return _out(_solve_kappa(lam, validate.real_array(n, "n", at_least=1.0), validate.real_array(ridge, "ridge", at_least=0.0), w))


@dataclass
class KernelRidgeRisk:
    """Eigenframework predictions; arrays shaped like the broadcast (n, ridge, noise)."""

    test_risk: np.ndarray       # expected squared error on a noisy test label
    excess_risk: np.ndarray     # against the clean target: test_risk - noise
    train_risk: np.ndarray
    kappa: np.ndarray           # effective regularization
    overfitting_coefficient: np.ndarray  # E0
    bias: np.ndarray            # E0 sum (1 - L)^2 v^2
    variance: np.ndarray        # (E0 - 1) noise: the excess risk due to noise
    eigenvalues: np.ndarray = field(repr=False)

    @cached_property
    def learnabilities(self):
        """L_i = l_i/(l_i + kappa), shape kappa.shape + (M,)."""
        k = np.asarray(self.kappa)
        return self.eigenvalues / (self.eigenvalues + k[..., None])


def kernel_ridge(eigenvalues, target, n, ridge, noise=0.0, multiplicities=None) -> KernelRidgeRisk:
    """Test/train risk of kernel ridge regression from the eigenframework (see module doc).

    ``n`` and ``ridge`` (and ``noise``) broadcast: a learning curve is one call.
    Ridgeless (``ridge = 0``) with n >= len(eigenvalues) gives kappa = 0, E0 = n/(n - M).
    ``multiplicities`` (e.g. of spherical-harmonic degrees): eigenvalue i is repeated
    multiplicities[i] times and target[i] is the norm of the target's projection on that
    whole eigenspace (the risk depends on nothing else).
    """
    lam, v, w = _spectrum(eigenvalues, target, multiplicities)
    n = validate.real_array(n, "n", at_least=1.0)
    delta = validate.real_array(ridge, "ridge", at_least=0.0)
    s2 = validate.real_array(noise, "noise", at_least=0.0)
    n, delta, s2 = np.broadcast_arrays(n, delta, s2)
    kappa = _solve_kappa(lam, n, delta, w)
    L = lam / (lam + kappa[..., None])
    one_minus_L = kappa[..., None] / (lam + kappa[..., None])  # not 1 - L: no cancellation for l >> kappa
    q = np.sum(L * L if w is None else L * L * w, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        E0 = np.where(n > q, n / (n - q), np.inf)
        bias = E0 * np.sum(one_minus_L ** 2 * v * v, axis=-1)
        bias = np.where(np.isnan(bias), np.inf, bias)
        var = np.where(s2 > 0, np.where(n > q, q / (n - q), np.inf) * s2, 0.0)
        test = bias + var + s2
        train = np.where(delta > 0, (delta / (n * np.where(kappa > 0, kappa, 1.0))) ** 2 * test, 0.0)
    return KernelRidgeRisk(_out(test), _out(bias + var), _out(train), _out(kappa), _out(E0), _out(bias), _out(var),
                           lam)


def mp_kappa(eigenvalues, n, ridge, dps=30):
    """kappa by mpmath at ``dps`` digits (bisection refined by Newton), the test reference."""
    import mpmath as mp

    with mp.workdps(dps + 10):
        lam = [mp.mpf(float(x)) for x in eigenvalues]
        n, d = mp.mpf(n), mp.mpf(ridge)
        f = lambda k: sum(x / (x + k) for x in lam) + d / k - n  # noqa: E731
        lo, hi = (d / n if d > 0 else min(lam) * (len(lam) - n) / n), (sum(lam) + d) / n
        for _ in range(60):
            mid = mp.sqrt(lo * hi)
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return mp.findroot(f, mp.sqrt(lo * hi))


# ----------------------------------------------------------------------------------
# random-feature ridge
# ----------------------------------------------------------------------------------

@dataclass
class RandomFeatureRidgeRisk:
    test_risk: np.ndarray
    excess_risk: np.ndarray
    kappa: np.ndarray
    gamma: np.ndarray
    overfitting_coefficient: np.ndarray
    bias: np.ndarray
    variance: np.ndarray
    eigenvalues: np.ndarray = field(repr=False)

    @cached_property
    def learnabilities(self):
        g = np.asarray(self.gamma)
        return self.eigenvalues / (self.eigenvalues + g[..., None])


def _solve_gamma_level(lam, level, w=None):
    """gamma with sum l/(l + gamma) = level (0 when level >= M)."""
    M = _total(w, lam)
    g = np.zeros(level.shape)
    need = level < M
    if need.any():
        lv = level[need]
        lo = lam.min() * (M - lv) / lv
        hi = float(np.sum(lam if w is None else lam * w)) / lv
        lo = np.minimum(lo, hi)
        f = lambda t: np.log(_dof(lam, np.exp(t), w)) - np.log(lv)  # noqa: E731
        g[need] = np.exp(find_root(f, bracket=(np.log(lo), np.log(hi)), tol=1e-15, rtol=4e-16, strict=True).value)
    return g


def _solve_rf(lam, n, k, delta, w=None):
    gamma = np.zeros(n.shape)
    kappa = np.zeros(n.shape)
    pos = delta > 0
    if pos.any():
        nn, kk, dd = n[pos], k[pos], delta[pos]
        mn = np.minimum(nn, kk)

        def G(t):
            g = np.exp(t)
            z = _dof(lam, g, w)
            # divided by k n (positive) to keep the scale O(gamma)
            return g * np.maximum(1 - z / kk, 0.0) * np.maximum(1 - z / nn, 0.0) - dd / nn

        lo = 0.5 * dd / nn
        hi = 1.01 * np.maximum(2 * float(np.sum(lam if w is None else lam * w)) / mn, 4 * dd / nn)
        t = find_root(G, bracket=(np.log(lo), np.log(hi)), tol=1e-15, rtol=4e-16, strict=True).value
        g = np.exp(t)
        gamma[pos] = g
        kappa[pos] = g * (kk - _dof(lam, g, w)) / kk
    zero = ~pos
    if zero.any():
        nn, kk = n[zero], k[zero]
        g = _solve_gamma_level(lam, np.minimum(nn, kk), w)
        gamma[zero] = g
        # kappa = gamma (k - z)/k with z = min(n, M) when k > n; 0 when k <= n (the delta -> 0 limit)
        kappa[zero] = np.where(kk > nn, g * (kk - np.minimum(nn, _total(w, lam))) / kk, 0.0)
    return gamma, kappa


def random_feature_ridge(eigenvalues, target, n, features, ridge, noise=0.0,
                         multiplicities=None) -> RandomFeatureRidgeRisk:
    """Test risk of random-feature ridge regression (Simon et al. 2023, "More is Better", Sec. 4).

    ``features`` = k random features whose average kernel has the given eigenvalues; ridge
    delta in (K_rf + delta I_n); ``n``, ``features``, ``ridge``, ``noise`` broadcast.
    """
    lam, v, w = _spectrum(eigenvalues, target, multiplicities)
    n = validate.real_array(n, "n", at_least=1.0)
    k = validate.real_array(features, "features", at_least=1.0)
    delta = validate.real_array(ridge, "ridge", at_least=0.0)
    s2 = validate.real_array(noise, "noise", at_least=0.0)
    n, k, delta, s2 = np.broadcast_arrays(n, k, delta, s2)
    gamma, kappa = _solve_rf(lam, n, k, delta, w)
    L = lam / (lam + gamma[..., None])
    z = np.sum(L if w is None else L * w, axis=-1)
    q = np.sum(L * L if w is None else L * L * w, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (q * (k - 2 * z) + z * z) / (n * (k - q))
        E = np.where(x < 1, 1.0 / (1.0 - x), np.inf)
        coef = gamma[..., None] / (lam + gamma[..., None]) - kappa[..., None] * L / (lam + gamma[..., None]) * (k / (k - q))[..., None]
        bias = E * np.sum(coef * v * v, axis=-1)
        bias = np.where(np.isfinite(E), bias, np.inf)
        var = np.where(s2 > 0, np.where(x < 1, x / (1.0 - x), np.inf) * s2, 0.0)  # (E - 1) sigma^2
    return RandomFeatureRidgeRisk(_out(bias + var + s2), _out(bias + var), _out(kappa), _out(gamma), _out(E),
                                  _out(bias), _out(var), lam)


# ----------------------------------------------------------------------------------
# tuned ridge
# ----------------------------------------------------------------------------------

def tuned_ridge(eigenvalues, target, n, noise=0.0, features=None, bounds=(1e-10, 1e4), grid=61,
                multiplicities=None):
    """The ridge minimizing the predicted test risk (kernel ridge, or RF ridge with ``features``).

    A log-spaced scan over ``bounds`` (ridge 0 included), then a bounded Brent refinement in
    log-ridge around the best grid point. Returns (ridge, result) for scalar n / features.
    """
    from scipy.optimize import minimize_scalar

    def risk(delta):
        if features is None:
            return kernel_ridge(eigenvalues, target, n, delta, noise, multiplicities)
        return random_feature_ridge(eigenvalues, target, n, features, delta, noise, multiplicities)

    scale = float(np.sum(np.asarray(eigenvalues) * (1 if multiplicities is None else np.asarray(multiplicities))))
    ts = np.linspace(np.log(bounds[0] * scale), np.log(bounds[1] * scale), grid)
    vals = np.asarray(risk(np.exp(ts)).test_risk)
    r0 = risk(0.0).test_risk
    j = int(np.argmin(vals))
    if r0 <= vals[j] and j == 0:
        return 0.0, risk(0.0)
    a, b = ts[max(j - 1, 0)], ts[min(j + 1, grid - 1)]
    opt = minimize_scalar(lambda t: float(risk(np.exp(t)).test_risk), bounds=(a, b), method="bounded",
                          options=dict(xatol=1e-10))
    best = float(np.exp(opt.x))
    return best, risk(best)


# ----------------------------------------------------------------------------------
# power laws
# ----------------------------------------------------------------------------------

def power_law_problem(M, alpha, beta, scale=1.0):
    """(eigenvalues, target) with l_i = scale i^-alpha and v_i^2 = i^-beta, i = 1..M."""
    if not (np.isfinite(alpha) and alpha > 1):
        raise ValueError(f"alpha: must be > 1 (a trace-class kernel), got {alpha!r}")
    if not (np.isfinite(beta) and beta > 1):
        raise ValueError(f"beta: must be > 1 (a square-summable target), got {beta!r}")
    i = np.arange(1, int(M) + 1, dtype=float)
    return scale * i ** -alpha, i ** (-beta / 2)


def scaling_exponent(alpha, beta, noise=False, ridge="tuned"):
    """Exponent a in excess risk ~ n^-a for l_i ~ i^-alpha, v_i^2 ~ i^-beta (1 < alpha, 1 < beta).

    Noiseless (ridgeless or tuned): a = min(beta - 1, 2 alpha) (Bordelon et al. 2020, Sec. 4;
    Spigler et al. 2020). Noisy, tuned ridge: a = min((beta - 1)/beta, 2 alpha/(2 alpha + 1))
    (Cui, Loureiro, Krzakala, Zdeborova 2021, "the crossover from the noiseless to noisy regime").
    Noisy, ridgeless: a = 0 (the excess risk tends to (E0 - 1) sigma^2 > 0: tempered overfitting).
    """
    if ridge not in ("tuned", "ridgeless"):
        raise ValueError(f"ridge: must be 'tuned' or 'ridgeless', got {ridge!r}")
    if not alpha > 1 or not beta > 1:
        raise ValueError(f"alpha, beta: must be > 1, got {alpha!r}, {beta!r}")
    if not noise:
        return min(beta - 1.0, 2.0 * alpha)
    if ridge == "ridgeless":
        return 0.0
    return min((beta - 1.0) / beta, 2.0 * alpha / (2.0 * alpha + 1.0))

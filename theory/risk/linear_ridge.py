"""Asymptotic risk of isotropic linear ridge and ridgeless regression.

Source: T. Hastie, A. Montanari, S. Rosset, R. Tibshirani, "Surprises in high-dimensional
ridgeless least squares interpolation", Ann. Statist. 50 (2022), arXiv:1903.08560 —
Theorem 1 (ridgeless, isotropic), Theorem 5 / Corollary 5 (ridge, optimal ridge).

Model: x ~ N(0, I_p), y = <x, beta> + eps, Var eps = sigma^2 (``noise``), ||beta||^2 = r^2
(``signal``), gamma = p/n; beta_hat = (X^T X/n + lambda I)^-1 X^T y/n; risk = E||beta_hat - beta||^2
(= the excess test risk E (x^T (beta_hat - beta))^2). With m(z) the Marchenko–Pastur Stieltjes
transform at ratio gamma,

    risk(lambda) = r^2 lambda^2 m'(-lambda) + sigma^2 gamma (m(-lambda) - lambda m'(-lambda)),
    m(-lambda) = [-(1 - gamma + lambda) + sqrt((1 - gamma + lambda)^2 + 4 gamma lambda)] / (2 gamma lambda);

ridgeless: sigma^2 gamma/(1 - gamma) for gamma < 1, r^2 (1 - 1/gamma) + sigma^2/(gamma - 1) for
gamma > 1; optimal ridge lambda* = gamma sigma^2 / r^2 with risk sigma^2 gamma m(-lambda*).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from limitlab.numerics import validation as validate

__all__ = ["LinearRidgeRisk", "linear_ridge", "linear_ridge_optimal", "mp_stieltjes", "linear_ridge_equations"]


def _uw(gamma, ridge):
    """u = lambda m(-lambda), w = 1 - u and sq = sqrt(b^2 + 4 gamma lambda), b = 1 - gamma + lambda.

    u solves gamma u^2 + b u - lambda = 0 and w solves gamma w^2 - (1 + gamma + lambda) w + 1 = 0;
    each is taken in the form without cancellation (everything is a sum of positive terms), so
    the ridgeless limit is reached to full precision.
    """
    g, lam = np.broadcast_arrays(np.asarray(gamma, float), np.asarray(ridge, float))
    b = 1.0 - g + lam
    sq = np.sqrt((1.0 - g) ** 2 + lam * (2.0 + 2.0 * g + lam))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(b >= 0, 2.0 * lam / (b + sq), (sq - b) / (2.0 * g))
    w = 2.0 / (1.0 + g + lam + sq)
    return u, w, sq


def mp_stieltjes(gamma, ridge):
    """(m(-lambda), m'(-lambda)) of the Marchenko–Pastur law with ratio gamma, variance 1, lambda > 0.

    m solves gamma lambda m^2 + (1 - gamma + lambda) m - 1 = 0 (the root with m > 0).
    """
    lam = np.asarray(ridge, float)
    u, w, sq = _uw(gamma, lam)
    g = np.asarray(gamma, float)
    return u / lam, u * u * (1.0 + lam + g * u) / (sq * lam * lam)


def linear_ridge_equations():
    """Sympy: the MP quadratic for m = m(-lambda) and the risk in terms of m, m' (Hastie et al., Thm 5)."""
    g, lam, r2, s2 = sp.symbols("gamma lambda r2 sigma2", positive=True)
    m, dm = sp.symbols("m dm")
    return {"symbols": dict(gamma=g, ridge=lam, signal=r2, noise=s2, m=m, dm=dm),
            "stieltjes_eq": sp.Eq(g * lam * m ** 2 + (1 - g + lam) * m - 1, 0),
            "risk": r2 * lam ** 2 * dm + s2 * g * (m - lam * dm),
            "optimal_ridge": g * s2 / r2}


@dataclass
class LinearRidgeRisk:
    risk: np.ndarray
    bias: np.ndarray
    variance: np.ndarray


def linear_ridge(gamma, ridge, signal=1.0, noise=1.0) -> LinearRidgeRisk:
    """Risk E||beta_hat - beta||^2 of isotropic ridge regression (Hastie et al. 2022, Thm 1 and 5).

    Arrays broadcast; ``ridge = 0`` is the ridgeless (minimum-norm) limit, +inf at gamma = 1
    when noise > 0 (the interpolation peak).
    """
    g = validate.real_array(gamma, "gamma", above=0.0)
    lam = validate.real_array(ridge, "ridge", at_least=0.0)
    r2 = validate.real_array(signal, "signal", at_least=0.0)
    s2 = validate.real_array(noise, "noise", at_least=0.0)
    g, lam, r2, s2 = np.broadcast_arrays(g, lam, r2, s2)
    pos = lam > 0
    lam_safe = np.where(pos, lam, 1.0)
    u, w, sq = _uw(g, lam_safe)
    # bias = r^2 lambda^2 m' = r^2 u^2 (1 + lambda + gamma u)/sq, variance = sigma^2 gamma (m - lambda m')
    # = sigma^2 gamma w / sq: the same quantities with the cancellations removed algebraically
    bias = np.where(pos, r2 * u * u * (1.0 + lam_safe + g * u) / sq, 0.0)
    var = np.where(pos, s2 * g * w / sq, 0.0)
    # ridgeless closed forms (Hastie et al., Theorem 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b0 = np.where(g > 1, r2 * (1.0 - 1.0 / g), 0.0)
        v0 = np.where(g < 1, s2 * g / (1.0 - g), np.where(g > 1, s2 / (g - 1.0), np.where(s2 > 0, np.inf, 0.0)))
    bias = np.where(pos, bias, b0)
    var = np.where(pos, var, v0)
    out = (lambda a: a.copy() if a.shape else float(a))
    return LinearRidgeRisk(out(bias + var), out(bias), out(var))


def linear_ridge_optimal(gamma, signal=1.0, noise=1.0):
    """(optimal ridge, its risk): lambda* = gamma sigma^2 / r^2, risk = sigma^2 gamma m(-lambda*)
    (Hastie et al. 2022, Corollary 5; Dobriban & Wager 2018, Thm 2.1)."""
    g = validate.real_array(gamma, "gamma", above=0.0)
    r2 = validate.real_array(signal, "signal", above=0.0)
    s2 = validate.real_array(noise, "noise", at_least=0.0)
    lam = g * s2 / r2
    pos = lam > 0
    lam_safe = np.where(pos, lam, 1.0)
    u, _, _ = _uw(g, lam_safe)
    risk = np.where(pos, s2 * g * u / lam_safe, linear_ridge(g, 0.0, r2, s2).risk)
    out = (lambda a: np.asarray(a).copy() if np.ndim(a) else float(a))
    return out(lam), out(risk)

"""Mei–Montanari asymptotic test risk of random-features ridge regression.

Source: S. Mei and A. Montanari, "The generalization error of random features regression:
precise asymptotics and double descent curve", Comm. Pure Appl. Math. 75 (2022),
arXiv:1908.05355 — Definition 1 (nu1, nu2, chi), Theorem 1 (E0, E1, E2, B, V, risk),
Theorem 3 (ridgeless limit).

Model (the paper's conventions): x_i, theta_a uniform on the sphere of radius sqrt(d);
f(x) = sum_a a_a sigma(<theta_a, x>/sqrt d); a minimizes
(1/n) sum_i (y_i - f(x_i))^2 + (N ridge / d) ||a||^2; psi1 = N/d, psi2 = n/d;
y = <beta1, x> + f_NL(x) + noise with ||beta1||^2 = F1^2 (``signal``),
E f_NL^2 = F*^2 (``nonlinear_signal``), noise variance tau^2 (``noise``). The risk is
E_x (f_target(x) - f(x))^2 (no test noise):

    risk = F1^2 B + (tau^2 + F*^2) V + F*^2,   B = E1/E0, V = E2/E0,

with mu0 = E sigma(G), mu1 = E G sigma(G), mu*^2 = E sigma(G)^2 - mu0^2 - mu1^2,
zeta = mu1/mu*, lambda_bar = ridge/mu*^2, chi = nu1 nu2 at xi = i sqrt(psi1 psi2 lambda_bar).

How it is solved (no silent wrong root): at xi = i s the solution branch with Im nu > 0
is nu_k = i y_k with y_k > 0 real (the right-hand sides map the positive imaginary axis
to itself). Writing P = y1 y2 = -chi and g(P) = P (1 + zeta^2 / (1 + zeta^2 P)), the two
equations give s y_k = psi_k - g(P), hence one scalar equation

    h(P) = s^2 P - (psi1 - g(P)) (psi2 - g(P)) = 0,   0 <= P <= P_max,  g(P_max) = min(psi1, psi2),

with h increasing, h(0) < 0 < h(P_max): exactly one root on the bracket. It is found by
Newton steps safeguarded by bisection (compiled, vectorized), and every point's residual
in the original complex equations is checked. At s = 0, P = P_max: the paper's ridgeless
closed form (Theorem 3).

Why this module keeps its own compiled root finder instead of ``numerics.solvers.find_root``:
h has a cheap closed-form derivative and a known bracket, so compiled Newton per point is
several times faster than a derivative-free vectorized bracket method on the same grid, at
the same accuracy (measured: docs/benchmarks.md, "Solvers").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np
import sympy as sp

from limitlab.numerics import validation as validate
from limitlab.numerics.gaussian import expect
from limitlab.numerics.solvers import HasSolver, SolverResult
from limitlab.theory import activations as _activations

__all__ = ["RandomFeaturesRisk", "random_features", "activation_coefficients", "random_features_equations",
           "chi_ridgeless", "solve_chi", "mp_solve_nu"]


# ----------------------------------------------------------------------------------
# symbolic form
# ----------------------------------------------------------------------------------

def random_features_equations():
    """The paper's equations as sympy objects (Mei & Montanari, Definition 1 and Theorem 1).

    Returns a dict with ``symbols`` (nu1, nu2, xi, zeta, psi1, psi2, chi, lambda_bar, F1, Fstar, tau),
    ``nu1_eq``/``nu2_eq`` (sympy Eq), ``xi_star``, ``E0``, ``E1``, ``E2``, ``B``, ``V`` and ``risk``.
    """
    nu1, nu2, xi = sp.symbols("nu1 nu2 xi")
    zeta, psi1, psi2, lam = sp.symbols("zeta psi1 psi2 lambda_bar", positive=True)
    chi = sp.Symbol("chi", real=True)
    F1, Fs, tau = sp.symbols("F1 F_star tau", nonnegative=True)
    z2 = zeta ** 2
    eq1 = sp.Eq(nu1, psi1 / (-xi - nu2 - z2 * nu2 / (1 - z2 * nu1 * nu2)))
    eq2 = sp.Eq(nu2, psi2 / (-xi - nu1 - z2 * nu1 / (1 - z2 * nu1 * nu2)))
    E0, E1, E2 = _E_polys(chi, zeta, psi1, psi2)
    B, V = E1 / E0, E2 / E0
    return {
        "symbols": dict(nu1=nu1, nu2=nu2, xi=xi, zeta=zeta, psi1=psi1, psi2=psi2, chi=chi, lambda_bar=lam,
                        F1=F1, F_star=Fs, tau=tau),
        "nu1_eq": eq1, "nu2_eq": eq2, "xi_star": sp.I * sp.sqrt(psi1 * psi2 * lam), "chi_def": nu1 * nu2,
        "E0": E0, "E1": E1, "E2": E2, "B": B, "V": V,
        "risk": F1 ** 2 * B + (tau ** 2 + Fs ** 2) * V + Fs ** 2,
    }


def _E_polys(chi, zeta, p1, p2):
    """E0, E1, E2 of Mei & Montanari, Theorem 1 (valid for sympy symbols and NumPy arrays)."""
    z2 = zeta * zeta
    z4 = z2 * z2
    z6 = z4 * z2
    c2 = chi * chi
    c3 = c2 * chi
    c4 = c3 * chi
    c5 = c4 * chi
    E0 = (-c5 * z6 + 3 * c4 * z4 + (p1 * p2 - p2 - p1 + 1) * c3 * z6 - 2 * c3 * z4 - 3 * c3 * z2
          + (p1 + p2 - 3 * p1 * p2 + 1) * c2 * z4 + 2 * c2 * z2 + c2 + 3 * p1 * p2 * chi * z2 - p1 * p2)
    E1 = p2 * c3 * z4 - p2 * c2 * z2 + p1 * p2 * chi * z2 - p1 * p2
    E2 = (c5 * z6 - 3 * c4 * z4 + (p1 - 1) * c3 * z6 + 2 * c3 * z4 + 3 * c3 * z2 + (-p1 - 1) * c2 * z4
          - 2 * c2 * z2 - c2)
    return E0, E1, E2


# ----------------------------------------------------------------------------------
# activation coefficients
# ----------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _coefficients_cached(act):
    phi = lambda z: np.asarray(act(np.asarray(z, dtype=float)), dtype=float)  # noqa: E731
    kinks = tuple(act.kinks)
    mu0 = expect(phi, 1.0, kinks)
    mu1 = expect(lambda z: z * phi(z), 1.0, kinks)
    m2 = expect(lambda z: phi(z) ** 2, 1.0, kinks)
    return mu0, mu1, math.sqrt(max(m2 - mu0 * mu0 - mu1 * mu1, 0.0))


def activation_coefficients(activation="relu", **params):
    """(mu0, mu1, mu_star) of an activation for G ~ N(0, 1) (Mei & Montanari, eq. (5)).

    Computed with the Gaussian-expectation engine :func:`limitlab.numerics.gaussian.expect`.
    """
    return _coefficients_cached(_activations.get(activation, **params))


# ----------------------------------------------------------------------------------
# compiled solver
# ----------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _pmax(m, z2):
    # root of g(P) = m, rationalized: g(P) = m  <=>  z2 P^2 + (1 + z2 - m z2) P - m = 0
    b = 1.0 + z2 - m * z2
    return 2.0 * m / (b + math.sqrt(b * b + 4.0 * z2 * m))


@nb.njit(cache=True)
def _solve_one(p1, p2, s, z2, tol, maxiter):
    """Root P of h on [0, P_max]; returns (P, iterations, converged)."""
    m = min(p1, p2)
    pmax = _pmax(m, z2)
    if s == 0.0:
        return pmax, 0, True
    s2 = s * s
    lo, hi = 0.0, pmax
    # start from the smaller of the root of the large-ridge (P ~ psi1 psi2 / s^2) and small-ridge forms
    P = min(p1 * p2 / s2, pmax)
    if P >= hi:
        P = 0.5 * hi
    for it in range(1, maxiter + 1):
        u = 1.0 + z2 * P
        g = P * (1.0 + z2 / u)
        dg = 1.0 + z2 / (u * u)
        a1 = p1 - g
        a2 = p2 - g
        h = s2 * P - a1 * a2
        dh = s2 + dg * (a1 + a2)
        if h > 0.0:
            hi = P
        else:
            lo = P
        step = h / dh
        Pn = P - step
        if not (lo < Pn < hi):
            Pn = 0.5 * (lo + hi)
        if abs(Pn - P) <= tol * Pn or hi - lo <= tol * hi:
            return Pn, it, True
        P = Pn
    return P, maxiter, False


@nb.njit(parallel=True, cache=True)
def _solve_grid(p1, p2, s, z2, out, iters, ok, tol, maxiter):
    for i in nb.prange(p1.shape[0]):
        P, it, conv = _solve_one(p1[i], p2[i], s[i], z2[i], tol, maxiter)
        out[i] = P
        iters[i] = it
        ok[i] = conv


def chi_ridgeless(psi1, psi2, zeta):
    """Ridgeless chi (Mei & Montanari, Theorem 3), psi = min(psi1, psi2):
    chi = -[(psi zeta^2 - zeta^2 - 1) + sqrt((psi zeta^2 - zeta^2 - 1)^2 + 4 zeta^2 psi)] / (2 zeta^2)."""
    m = np.minimum(np.asarray(psi1, float), np.asarray(psi2, float))
    z2 = np.asarray(zeta, float) ** 2
    b = 1.0 + z2 - m * z2
    return -2.0 * m / (b + np.sqrt(b * b + 4.0 * z2 * m))


def solve_chi(psi1, psi2, lambda_bar, zeta, tol=1e-15, maxiter=200, strict: bool = False):
    """chi = nu1 nu2 at xi = i sqrt(psi1 psi2 lambda_bar) on the Im nu > 0 branch (arrays broadcast).

    Returns (chi, nu1, nu2, solver): ``solver`` a :class:`SolverResult` (value chi, residual per
    point, iterations the most any point took, ``converged_mask`` per point); ``strict=True``
    raises ConvergenceError if a point fails.
    """
    p1, p2, lb, z = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (psi1, psi2, lambda_bar, zeta)))
    shape = p1.shape
    p1, p2, lb, z = (np.ascontiguousarray(v).ravel() for v in (p1, p2, lb, z))
    s = np.sqrt(p1 * p2 * lb)
    z2 = z * z
    P = np.empty(p1.size)
    iters = np.empty(p1.size, dtype=np.int64)
    ok = np.empty(p1.size, dtype=np.bool_)
    _solve_grid(p1, p2, s, z2, P, iters, ok, tol, maxiter)
    g = P * (1.0 + z2 / (1.0 + z2 * P))
    # y_k = (psi_k - g)/s; the smaller one from P / larger (no cancellation near the ridgeless limit)
    big = np.maximum(p1, p2)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_big = np.where(s > 0, (big - g) / s, np.inf)
        y_small = np.where(s > 0, P / y_big, 0.0)
    y1 = np.where(p1 >= p2, y_big, y_small)
    y2 = np.where(p1 >= p2, y_small, y_big)
    residual = _residual(p1, p2, s, z2, P, y1, y2)
    bad = ~ok | ~(residual <= 1e-9)
    message = ""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        message = (f"chi did not converge at {int(bad.sum())} point(s), first psi1={p1[i]!r}, psi2={p2[i]!r}, "
                   f"lambda_bar={lb[i]!r}, zeta={z[i]!r} (residual {residual[i]:.3g})")
    solver = SolverResult(-P.reshape(shape), residual.reshape(shape), int(iters.max(initial=0)), not bad.any(),
                          ~bad.reshape(shape), message).check(strict, "random_features")
    nu1 = np.zeros(shape, dtype=complex)
    nu2 = np.zeros(shape, dtype=complex)
    nu1.imag, nu2.imag = y1.reshape(shape), y2.reshape(shape)  # ridgeless: Im nu = +inf, the xi -> 0 limit
    return -P.reshape(shape), nu1, nu2, solver


def _residual(p1, p2, s, z2, P, y1, y2):
    """Relative error of P implied by the reduced equation: |h(P) / (P h'(P))| (a Newton step over P)."""
    u = 1.0 + z2 * P
    g = P * (1.0 + z2 / u)
    dg = 1.0 + z2 / (u * u)
    a1, a2 = p1 - g, p2 - g
    h = s * s * P - a1 * a2
    dh = s * s + dg * (a1 + a2)
    r = np.abs(h) / (np.abs(dh) * P + np.finfo(float).tiny)
    # ridgeless: P must solve g(P) = min(psi1, psi2)
    m = np.minimum(p1, p2)
    r0 = np.abs(g - m) / m
    return np.where(s > 0, r, r0)


# ----------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------

@dataclass
class RandomFeaturesRisk(HasSolver):
    """Asymptotic risk of RF ridge regression; arrays broadcast over the inputs.

    risk = bias + variance + approximation, with bias = F1^2 B, variance = (tau^2 + F*^2) V,
    approximation = F*^2 (the nonlinear part no RF model with N, n ~ d can fit). ``solver``
    reports the solve for chi (:func:`solve_chi`): residual per point, converged (mask per point).
    """

    risk: np.ndarray
    bias: np.ndarray
    variance: np.ndarray
    approximation: np.ndarray
    B: np.ndarray
    V: np.ndarray
    chi: np.ndarray
    nu1: np.ndarray
    nu2: np.ndarray
    zeta: float
    mu: tuple
    solver: SolverResult


def random_features(psi1, psi2, ridge, activation="relu", signal=1.0, nonlinear_signal=0.0, noise=0.0,
                    mu=None, strict: bool = False, **activation_params) -> RandomFeaturesRisk:
    """Asymptotic test risk of random-features ridge regression (Mei & Montanari 2019, Theorem 1).

    ``psi1 = N/d``, ``psi2 = n/d``, ``ridge = lambda`` in (N lambda/d)||a||^2, ``signal = F1^2``,
    ``nonlinear_signal = F*^2``, ``noise = tau^2``; array arguments broadcast. ``ridge = 0`` uses
    the ridgeless closed form (Theorem 3). ``mu = (mu0, mu1, mu_star)`` overrides the activation's
    coefficients (computed otherwise by the Gaussian-expectation engine). ``strict=True`` raises
    ``ConvergenceError`` when chi was not found at some point (``solver.converged_mask`` says where).

    The ridgeless risk diverges at the interpolation threshold ``psi1 = psi2`` (Theorem 3:
    E0 = 0 there): ``B`` and ``V`` are ``inf`` and so is every term with a nonzero
    coefficient; a term whose coefficient is 0 is exactly 0 (``signal = 0`` gives
    ``bias = 0``; ``noise = nonlinear_signal = 0`` gives ``variance = 0``), so the risk is
    ``inf`` unless there is nothing to fit, never NaN.
    """
    p1 = validate.real_array(psi1, "psi1", above=0.0)
    p2 = validate.real_array(psi2, "psi2", above=0.0)
    lam = validate.real_array(ridge, "ridge", at_least=0.0)
    F1 = validate.real_array(signal, "signal", at_least=0.0)
    Fs = validate.real_array(nonlinear_signal, "nonlinear_signal", at_least=0.0)
    tau = validate.real_array(noise, "noise", at_least=0.0)
    if mu is None:
        mu = activation_coefficients(activation, **activation_params)
    else:
        mu = tuple(float(m) for m in mu)
        if len(mu) != 3:
            raise ValueError(f"mu: must be (mu0, mu1, mu_star), got {mu!r}")
    mu0, mu1, mus = mu
    if not mus > 1e-12 * max(1.0, abs(mu1)):
        raise ValueError(f"activation: mu_star = {mus!r} must be > 0 (a linear activation gives a linear model; "
                         "use linear_ridge)")
    zeta = abs(mu1) / mus
    chi, nu1, nu2, solver = solve_chi(p1, p2, lam / mus ** 2, zeta, strict=strict)
    p1b, p2b = np.broadcast_arrays(p1, p2)
    E0, E1, E2 = _E_polys(chi, zeta, p1b, p2b)
    with np.errstate(divide="ignore", invalid="ignore"):
        B = np.where(E0 != 0, E1 / E0, np.inf)
        V = np.where(E0 != 0, E2 / E0, np.inf)
    # ridgeless at N = n: the interpolation pole (E0 = 0 exactly; rounding leaves ~1e-16)
    pole = (lam == 0) & (p1b == p2b)
    B = np.where(pole, np.inf, B)
    V = np.where(pole, np.inf, V)
    # a zero coefficient makes its term exactly 0, also at the pole (0 * inf would be NaN):
    # no signal means nothing to fit, no noise and no F* means nothing to overfit
    with np.errstate(invalid="ignore"):
        bias = np.where(F1 == 0, 0.0, F1 * B)
        variance = np.where(tau + Fs == 0, 0.0, (tau + Fs) * V)
    risk = bias + variance + Fs
    shape = np.broadcast_shapes(risk.shape, np.shape(Fs))
    fix = (lambda a: np.broadcast_to(a, shape).copy() if shape else float(a))
    return RandomFeaturesRisk(risk=fix(risk), bias=fix(bias), variance=fix(variance), approximation=fix(Fs * 1.0),
                              B=fix(np.broadcast_to(B, shape)), V=fix(np.broadcast_to(V, shape)),
                              chi=fix(np.broadcast_to(chi, shape)), nu1=nu1, nu2=nu2, zeta=zeta,
                              mu=(mu0, mu1, mus), solver=solver)


# ----------------------------------------------------------------------------------
# mpmath reference
# ----------------------------------------------------------------------------------

def mp_solve_nu(psi1, psi2, lambda_bar, zeta, dps=30):
    """nu1, nu2 of Definition 1 by mpmath at ``dps`` digits, directly from the complex system.

    Damped fixed-point iteration from the large-|xi| asymptote nu_k ~ -psi_k / xi, then
    Newton polishing (mpmath.findroot); the Im nu > 0 branch is asserted.
    """
    import mpmath as mp

    with mp.workdps(dps + 10):
        p1, p2, z2 = mp.mpf(psi1), mp.mpf(psi2), mp.mpf(zeta) ** 2
        xi = 1j * mp.sqrt(p1 * p2 * mp.mpf(lambda_bar))

        def rhs(n1, n2):
            d = 1 - z2 * n1 * n2
            return p1 / (-xi - n2 - z2 * n2 / d), p2 / (-xi - n1 - z2 * n1 / d)

        n1, n2 = -p1 / xi, -p2 / xi
        for _ in range(400):
            f1, f2 = rhs(n1, n2)
            n1, n2 = (n1 + f1) / 2, (n2 + f2) / 2
        sol = mp.findroot(lambda a, b: [a - rhs(a, b)[0], b - rhs(a, b)[1]], (n1, n2))
        n1, n2 = sol[0], sol[1]
        if not (mp.im(n1) > 0 and mp.im(n2) > 0):
            raise ArithmeticError("mp_solve_nu: left the Im nu > 0 branch")
        return n1, n2

"""Multivariate Gaussian expectations of products: E[prod_i f_i(z_i) P(xi)], z ~ N(0, Sigma).

The finite-width (1/n) corrections of wide networks (Roberts, Yaida & Hanin 2022, "The
Principles of Deep Learning Theory", ch. 4) need, beside the two-point kernel maps of
:mod:`limitlab.numerics.gaussian`, Gaussian expectations over up to four inputs
(``<phi_a phi_b phi_c phi_d>_K``) and derivatives of ``<phi_a phi_b>_K`` with respect to
the covariance. Both are computed here on one rule:

* **Nested quadrature on the Cholesky coordinates.** ``z = L xi`` with ``L`` lower
  triangular, ``xi`` standard normal; ``xi_1`` is integrated first, then ``xi_2`` given
  ``xi_1`` (``z_2 = L_21 xi_1 + L_22 xi_2``), and so on. At each level the line is cut at
  the points where ``z_k`` crosses a kink of ``f_k`` (they move with the outer nodes), and
  every piece of ``[-Z, Z]`` gets composite Gauss-Legendre panels: the integrand is smooth
  on each piece, so the rule converges exponentially, kinks included (ReLU, step, ...).
  Z = 9: the standard normal tail beyond it is below 3e-19.
* **Derivatives with respect to the covariance without derivatives of f** (the score
  function; PDLT eq. (4.6x) write the recursions this way): for a symmetric direction D,
  with ``A = L^-1 D L^-T``,

      d/dt E_{Sigma + t D}[F]            = E[F s_D],   s_D = (xi^T A xi - tr A) / 2,
      d2/dt1 dt2 E_{Sigma + t1 D1 + t2 D2}[F] = E[F (s_1 s_2 - xi^T A_1 A_2 xi + tr(A_1 A_2) / 2)],

  which hold for any integrable F (kinks and jumps included); they lose digits as Sigma
  approaches singular (weights of order 1/det), so near-parallel inputs are refused by the
  caller rather than answered inaccurately.

mpmath references for tests: :func:`limitlab.numerics.gaussian.mp_expect` and ``mp_expect2``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numba as nb
import numpy as np

__all__ = ["nested_nodes", "product_expectation", "score_derivatives", "one_input_derivatives", "Z_MAX"]

Z_MAX = 9.0


@lru_cache(maxsize=None)
def _gl(order: int):
    return np.polynomial.legendre.leggauss(order)


def _pieces_nodes(cuts: np.ndarray, panels: int, order: int):
    """Nodes and weights (with the standard normal density) on [-Z, Z] cut at ``cuts``.

    ``cuts``: (M, k) sorted cut points per row (clipped to [-Z, Z]); each of the k + 1 pieces
    gets ``panels`` equal Gauss-Legendre panels of ``order`` nodes. Returns (x, w), (M, m).
    """
    M, k = cuts.shape
    edges = np.concatenate([np.full((M, 1), -Z_MAX), np.clip(cuts, -Z_MAX, Z_MAX), np.full((M, 1), Z_MAX)], axis=1)
    t, wt = _gl(order)
    xs, ws = [], []
    for p in range(k + 1):
        a, b = edges[:, p:p + 1], edges[:, p + 1:p + 2]
        h = (b - a) / panels
        for j in range(panels):
            lo = a + j * h
            xs.append(lo + h / 2 * (1 + t[None, :]))
            ws.append(h / 2 * wt[None, :] * np.ones_like(lo))
    x = np.concatenate(xs, axis=1)
    w = np.concatenate(ws, axis=1) * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return x, w


def _rule(kinked: bool, r: int):
    """(panels per piece, Gauss-Legendre order) per level. Panels of width h = 0.5 resolve tanh's
    poles at distance pi/(2 sqrt(q)) for q <= 10: two inputs to 6e-11 relative or better against
    30-digit mpmath (tests/theory/kernels/test_finite_width.py); three inputs (h = 1.0) to ~1e-9
    against a finer rule, at ~0.5 s an expectation; four inputs (h = 1.5) coarser still."""
    h = {1: 0.5, 2: 0.5, 3: 1.0}.get(r, 1.5)
    panels = int(math.ceil(2 * Z_MAX / h))
    # a kinked level has two pieces (one kink) whose lengths add up to 2 Z
    return (max(2, int(math.ceil(0.75 * panels))) if kinked else panels), 8


def nested_nodes(cov: np.ndarray, kinks: Sequence[Sequence[float]], rule=None):
    """Quadrature nodes of N(0, cov) (cov: r x r, positive semi-definite).

    ``kinks[i]``: the points where the i-th coordinate's integrand is not smooth. Returns
    (z, xi, w): points (M, r), their whitened coordinates (M, r) (z = L xi; a coordinate with
    no conditional spread gets the single node xi = 0) and weights (M,) summing to ~1.
    """
    cov = np.asarray(cov, dtype=float)
    r = cov.shape[0]
    L = _cholesky(cov)
    z = np.zeros((1, r))
    xi = np.zeros((1, r))
    w = np.ones(1)
    for k in range(r):
        mean = xi[:, :k] @ L[k, :k]
        s = L[k, k]
        if s <= 1e-14 * math.sqrt(max(cov[k, k], 1e-300)):
            # no conditional spread: z_k is its conditional mean (a repeated or parallel input)
            z[:, k] = mean
            continue
        panels, order = rule if rule is not None else _rule(bool(kinks[k]), r)
        cuts = np.sort(np.stack([(kk - mean) / s for kk in kinks[k]], axis=1), axis=1) if kinks[k] \
            else np.zeros((mean.size, 0))
        x, wx = _pieces_nodes(cuts, panels, order)
        m = x.shape[1]
        z = np.repeat(z, m, axis=0)
        xi = np.repeat(xi, m, axis=0)
        xi[:, k] = x.ravel()
        z[:, k] = np.repeat(mean, m) + s * x.ravel()
        w = (w[:, None] * wx).ravel()
    return z, xi, w


def _cholesky(cov):
    """Lower Cholesky factor of a PSD matrix, zero columns where the conditional variance
    vanishes (to rounding)."""
    r = cov.shape[0]
    L = np.zeros((r, r))
    for j in range(r):
        d = cov[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-13 * max(cov[j, j], 1e-300):
            continue
        L[j, j] = math.sqrt(d)
        for i in range(j + 1, r):
            L[i, j] = (cov[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


def product_expectation(fs: Sequence[Callable], cov, kinks: Sequence[Sequence[float]], rule=None) -> float:
    """E[prod_i fs[i](z_i)], z ~ N(0, cov); ``fs`` NumPy-vectorized."""
    z, _, w = nested_nodes(cov, kinks, rule)
    F = np.ones(w.size)
    for i, f in enumerate(fs):
        F *= f(z[:, i])
    return float(F @ w)


def score_derivatives(cov, xi, Fw, directions):
    """First and second covariance derivatives of E[F] by the score function (module docstring).

    ``xi``: the whitened nodes of :func:`nested_nodes` for ``cov``; ``Fw``: F times the weights
    at those nodes; ``directions``: symmetric r x r matrices D_e. The weights are quadratic and
    quartic polynomials in xi, so only the moments sum_m Fw xi_i xi_j (xi_k xi_l) are summed.
    Returns (g, h): g[e] = dE[F]/dt_e, h[e, f] = d2E[F]/dt_e dt_f.
    """
    L = _cholesky(np.asarray(cov, dtype=float))
    Li = np.linalg.inv(L)
    A = np.stack([Li @ D @ Li.T for D in directions])  # (E, r, r)
    m0 = Fw.sum()
    m2 = np.einsum("m,mi,mj->ij", Fw, xi, xi)
    X2 = np.einsum("mi,mj->mij", xi, xi).reshape(xi.shape[0], -1)
    m4 = (X2 * Fw[:, None]).T @ X2  # sum_m Fw xi_i xi_j xi_k xi_l, as (r r) x (r r)
    tr = np.trace(A, axis1=1, axis2=2)
    q2 = np.einsum("eij,ij->e", A, m2)  # E[F xi^T A_e xi]
    g = 0.5 * (q2 - tr * m0)
    Af = A.reshape(A.shape[0], -1)
    q4 = Af @ m4 @ Af.T  # E[F (xi^T A_e xi)(xi^T A_f xi)]
    ss = 0.25 * (q4 - np.outer(q2, tr) - np.outer(tr, q2) + np.outer(tr, tr) * m0)
    AA = np.einsum("eij,fjk->efik", A, A)
    AA = 0.5 * (AA + AA.transpose(0, 1, 3, 2))
    h = ss - np.einsum("efij,ij->ef", AA, m2) + 0.5 * np.einsum("efii->ef", AA) * m0
    return g, h


def one_input_derivatives(fs: Sequence[Callable], q: float, kinks: Sequence[float]) -> np.ndarray:
    """(len(fs), 3): E[f(z)], d/dq E[f(z)] and d2/dq2 E[f(z)] for z ~ N(0, q), each f NumPy-vectorized.

    By the one-dimensional score weights (module docstring with r = 1, z = sqrt(q) xi):
    d/dq = E[f He_2(xi)] / (2 q), d2/dq2 = E[f He_4(xi)] / (4 q^2), He_2 = xi^2 - 1,
    He_4 = xi^4 - 6 xi^2 + 3; no derivative of f is taken, so steps and kinks are exact.
    """
    from limitlab.numerics import gaussian

    # the engine's 1-D rule: graded toward 0 and the kinks, so steep maps (tanh at large q, whose
    # poles sit at pi / (2 sqrt(q)) from 0) keep their accuracy, unlike fixed-width panels
    x, w = gaussian.nodes(gaussian.breakpoints_for(kinks, float(q)))
    z = np.sqrt(float(q)) * x[:, None]
    x2 = x * x
    weights = np.stack([w, w * (x2 - 1) / (2 * q), w * (x2 * x2 - 6 * x2 + 3) / (4 * q * q)], axis=1)
    F = np.stack([np.asarray(f(z[:, 0]), dtype=float) * np.ones(w.size) for f in fs])
    return F @ weights


# ---------------------------------------------------------------------------------
# Two-input expectations and their covariance derivatives by Mehler series
# ---------------------------------------------------------------------------------
#
# With a_k(q) = E[f(sqrt(q) z) h_k(z)] (normalized Hermite coefficients, the engine's
# ``hermite_coefficients``), E[f(u) g(v)] = sum_k a^f_k(q1) a^g_k(q2) rho^k, rho = c/sqrt(q1 q2)
# (Mehler). Writing the terms as b_k(q1) b_k(q2) c^k with b_k = a_k q^(-k/2), the heat equation
# d/dq E[f(sqrt(q) z) He_k(z)] = E[f(sqrt(q) z) He_{k+2}(z)] / 2 gives
# b_k'(q) = sqrt((k+1)(k+2)) b_{k+2}(q) / 2: every derivative in (q1, q2, c) is again a Mehler
# series of the same tables, shifted by 2 or 4.

SERIES = ("m2", "s22", "s31", "s13", "d_q1", "d_q2", "d_c", "h_q1q1", "h_q2q2", "h_q1q2", "h_q1c", "h_q2c", "h_cc")


@nb.njit(cache=True)
def _pair_series(A1, A2, A3, R, C2, C4, i, j, q1, q2, rho, tol, kmax, out):
    """The 13 SERIES for inputs i, j (tables A1 of phi, A2 of phi^2, A3 of phi^3: (N, K); R: the
    relative Parseval tails, R[i, k] >= sum_{m >= k} a_m^2 / E[f^2], the largest over the three
    functions). Terms stop at the first K where every series' remainder, bounded by Cauchy-Schwarz
    as (K + 4)^2 |rho|^(K-2) sqrt(R[i, K] R[j, K]) relative to its scale, is below tol. Returns
    False when that needs more terms than kmax (the caller then integrates)."""
    r = abs(rho)
    K = 5
    rk = r * r * r  # r^(K - 2), updated as K grows
    while K < kmax and (K + 4.0) ** 2 * rk * math.sqrt(R[i, K] * R[j, K]) > tol:
        K += 1
        rk *= r
    if K >= kmax:
        return False
    for s in range(13):
        out[s] = 0.0
    s12 = math.sqrt(q1 * q2)
    p = 1.0  # rho^k
    pm1 = 0.0  # rho^(k-1)
    pm2 = 0.0  # rho^(k-2)
    for k in range(K):
        a_i, a_j = A1[i, k], A1[j, k]
        out[0] += a_i * a_j * p
        out[1] += A2[i, k] * A2[j, k] * p
        out[2] += A3[i, k] * A1[j, k] * p
        out[3] += A1[i, k] * A3[j, k] * p
        c2 = C2[k]
        c4 = C4[k]
        out[4] += c2 * A1[i, k + 2] * a_j * p
        out[5] += c2 * a_i * A1[j, k + 2] * p
        out[6] += k * a_i * a_j * pm1
        out[7] += c4 * A1[i, k + 4] * a_j * p
        out[8] += c4 * a_i * A1[j, k + 4] * p
        out[9] += c2 * c2 * A1[i, k + 2] * A1[j, k + 2] * p
        out[10] += k * c2 * A1[i, k + 2] * a_j * pm1
        out[11] += k * c2 * a_i * A1[j, k + 2] * pm1
        out[12] += k * (k - 1.0) * a_i * a_j * pm2
        pm2, pm1, p = pm1, p, p * rho
    out[4] /= q1
    out[5] /= q2
    out[6] /= s12
    out[7] /= q1 * q1
    out[8] /= q2 * q2
    out[9] /= q1 * q2
    out[10] /= q1 * s12
    out[11] /= q2 * s12
    out[12] /= q1 * q2
    return True


@nb.njit(parallel=True, cache=True)
def _all_pair_series(A1, A2, A3, R, I, J, q, rho, tol, kmax, out, ok):
    k = np.arange(A1.shape[1], dtype=np.float64)
    C2 = 0.5 * np.sqrt((k + 1.0) * (k + 2.0))  # the heat-equation shift factors (module note)
    C4 = 0.25 * np.sqrt((k + 1.0) * (k + 2.0) * (k + 3.0) * (k + 4.0))
    for p in nb.prange(I.shape[0]):
        ok[p] = _pair_series(A1, A2, A3, R, C2, C4, I[p], J[p], q[I[p]], q[J[p]], rho[p], tol, kmax, out[p])


def pair_series(phi, q, I, J, C, kinks=(0.0,), K: int = 256, tol: float = 1e-13):
    """For input pairs (I[p], J[p]) with variances q[I], q[J] and covariances C[p]: the SERIES
    (E[phi phi], E[phi^2 phi^2], E[phi^3 phi], E[phi phi^3], the first derivatives of E[phi(u)
    phi(v)] in (q1, q2, c) and its second derivatives), shape (P, 13), and a mask of the pairs
    whose |rho| is too close to 1 for K terms (their rows are not set).

    Also returns, per input, (E[phi^2], d/dq, d2/dq2, E[phi^4]) from the same tables. The Hermite
    coefficients are interpolated in log q by :func:`limitlab.numerics.gaussian.interpolated`.
    """
    from limitlab.numerics import gaussian

    q = np.ascontiguousarray(q, dtype=float)
    fs = (phi, lambda t: phi(t) ** 2, lambda t: phi(t) ** 3)

    def fn(qs):
        cols = []
        for f in fs:
            alpha, m2, _ = gaussian.hermite_coefficients(f, qs, K, kinks, df=f)
            cols += [alpha, m2[:, None]]
        return np.concatenate(cols, axis=1)

    def scale(V):  # each function's coefficients against the root of its second moment (Parseval)
        out = []
        for s in range(3):
            m = V[:, s * (K + 1) + K:s * (K + 1) + K + 1]
            out += [np.repeat(np.sqrt(np.abs(m)), K, axis=1), np.abs(m)]
        return np.concatenate(out, axis=1) + 1e-300

    V, _ = gaussian.interpolated(fn, q, scale=scale)
    A = [np.ascontiguousarray(V[:, s * (K + 1):s * (K + 1) + K]) for s in range(3)]
    m4 = V[:, 2 * (K + 1) - 1]  # E[(phi^2)^2]
    # relative Parseval tails: 1 - sum_{m<k} a_m^2 / E[f^2], plus a rounding allowance
    R = np.zeros((q.size, K))
    for s in range(3):
        m = np.abs(V[:, s * (K + 1) + K])[:, None] + 1e-300
        part = np.concatenate([np.zeros((q.size, 1)), np.cumsum(A[s] ** 2, axis=1)[:, :-1]], axis=1)
        R = np.maximum(R, np.maximum(1.0 - part / m, 0.0) + 1e-14)
    # one input: E[phi^2] = a_0(phi^2); d/dq and d2/dq2 by the heat-equation shift (module note)
    diag = (A[1][:, 0], math.sqrt(2.0) / 2 * A[1][:, 2] / q, math.sqrt(24.0) / 4 * A[1][:, 4] / q ** 2, m4)
    I = np.ascontiguousarray(I, dtype=np.int64)
    J = np.ascontiguousarray(J, dtype=np.int64)
    rho = np.asarray(C, dtype=float) / np.sqrt(q[I] * q[J])
    out = np.empty((I.size, 13))
    ok = np.empty(I.size, dtype=np.bool_)
    _all_pair_series(A[0], A[1], A[2], np.ascontiguousarray(R), I, J, q, rho, tol, K - 4, out, ok)
    return out, ~ok, diag

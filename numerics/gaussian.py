"""The Gaussian-expectation engine: one place where E[f(z)] over Gaussians is computed.

Every pillar uses it: kernel maps of activations without closed forms (limiting
kernels), mu0/mu1/mu* of random-feature models, single-site moments in DMFT.

Methods
-------
* 1-D: composite Gauss-Legendre on [-Z, Z] (Z = 16: the density's tail is < 1e-55),
  with breakpoints at the kinks of f and panels graded geometrically toward them, so
  kinks (ReLU-like) and steep transitions (tanh at variance 1e4) converge exponentially.
* 2-D kernel maps ``E[phi(u) phi(v)]`` and ``E[phi'(u) phi'(v)]``: the Mehler expansion
  ``sum_k alpha_k(q1) alpha_k(q2) rho^k`` with normalized Hermite coefficients
  (O'Donnell 2014, ch. 11; Daniely et al. 2016, "dual activation") summed per entry
  until a rigorous Cauchy-Schwarz tail bound falls below the tolerance; where the bound
  cannot be met (|rho| near 1), nested 1-D quadrature with a breakpoint at the inner kink.
* References: :func:`mp_expect` and :func:`mp_expect2` evaluate the same integrals with
  mpmath at arbitrary precision (tests compare against them).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numba as nb
import numpy as np

Z_MAX = 16.0
_GL_ORDER = 16
_GRADING_LEVELS = 34  # panels down to 2^-34 ~ 6e-11 around each breakpoint

__all__ = ["nodes", "expect", "hermite_coefficients", "mehler_tables", "mehler_dual", "nested_dual",
           "mp_expect", "mp_expect2"]


@lru_cache(maxsize=None)
def _gl(order: int):
    return np.polynomial.legendre.leggauss(order)


@lru_cache(maxsize=256)
def _nodes_cached(breaks: tuple, z_max: float, panel: float, order: int):
    pts = set(np.arange(-z_max, z_max + 1e-12, panel).round(12).tolist())
    for b in breaks:
        if -z_max < b < z_max:
            pts.add(b)
            for j in range(_GRADING_LEVELS + 1):
                h = 2.0 ** (-j)
                pts.update(p for p in (b - h, b + h) if -z_max < p < z_max)
    edges = np.array(sorted(pts))
    t, w = _gl(order)
    a, b_ = edges[:-1, None], edges[1:, None]
    half = (b_ - a) / 2
    z = (a + b_) / 2 + half * t[None, :]
    wz = half * w[None, :]
    z, wz = z.ravel(), wz.ravel()
    dens = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z, wz * dens


def nodes(breakpoints: Sequence[float] = (0.0,), z_max: float = Z_MAX, panel: float = 0.5,
          order: int = _GL_ORDER):
    """Nodes z and weights w with sum_n w_n f(z_n) ~ E[f(z)], z ~ N(0, 1).

    Panels break at each of ``breakpoints`` (in z units) and are graded toward them.
    """
    return _nodes_cached(tuple(sorted(set(float(b) for b in breakpoints))), float(z_max), float(panel), int(order))


def _breaks_for(kinks, q):
    s = math.sqrt(q)
    return tuple(sorted({0.0} | {k / s for k in kinks}))


def expect(f: Callable, var=1.0, kinks: Sequence[float] = (0.0,)):
    """E[f(sqrt(var) z)], z ~ N(0, 1), for a NumPy-vectorized f; ``var`` may be an array.

    ``kinks`` are points x where f (or f') is not smooth; quadrature panels break there.
    """
    v = np.asarray(var, dtype=float)
    if np.any(~np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"var: must be finite and >= 0, got {var!r}")
    flat = v.ravel()
    out = np.empty(flat.size)
    for breaks, idx in _group_by_nodes(flat, kinks).items():
        z, w = nodes(breaks)
        out[idx] = f(np.sqrt(flat[idx])[:, None] * z[None, :]) @ w  # one array call per node set
    out = out.reshape(v.shape)
    return out if out.shape else float(out)


def _group_by_nodes(q, kinks):
    """Indices of q sharing one quadrature node set (all of them when the only kink is 0)."""
    groups = {}
    for i, qi in enumerate(q):
        groups.setdefault(_breaks_for(kinks, qi) if qi > 0 else (0.0,), []).append(i)
    return {k: np.array(v) for k, v in groups.items()}


def _hermite_matrix(z: np.ndarray, K: int) -> np.ndarray:
    """h_k(z) = He_k(z)/sqrt(k!) for k < K, by the stable three-term recurrence."""
    H = np.empty((z.size, K))
    H[:, 0] = 1.0
    if K > 1:
        H[:, 1] = z
    for k in range(1, K - 1):
        H[:, k + 1] = (z * H[:, k] - math.sqrt(k) * H[:, k - 1]) / math.sqrt(k + 1)
    return H


def hermite_coefficients(f: Callable, q: np.ndarray, K: int, kinks: Sequence[float] = (0.0,), df: Callable = None):
    """alpha_k(q) = E[f(sqrt(q) z) h_k(z)] for each q (rows) and k < K (columns).

    With ``df``, also returns E[f(sqrt q z)^2] and E[df(sqrt q z)^2] from the same nodes.
    """
    q = np.asarray(q, dtype=float).ravel()
    out = np.empty((q.size, K))
    m2, dm2 = np.empty(q.size), np.empty(q.size)
    for breaks, idx in _group_by_nodes(q, kinks).items():
        z, w = nodes(breaks)
        H = _hermite_matrix(z, K)
        arg = np.sqrt(q[idx])[:, None] * z[None, :]
        F = f(arg)
        out[idx] = (F * w[None, :]) @ H
        if df is not None:
            m2[idx] = (F * F) @ w
            D = df(arg)
            dm2[idx] = (D * D) @ w
    return (out, m2, dm2) if df is not None else out


def mehler_tables(phi: Callable, dphi: Callable, q: np.ndarray, K: int, kinks: Sequence[float] = (0.0,)):
    """Per-input tables for :func:`mehler_dual`.

    Returns (alpha, tail, dtail, m2, dm2): Hermite coefficients of phi(sqrt(q) z); the
    tails S_k = sum_{m>=k} alpha_m^2 and D_k = sum_{m>=k} m alpha_m^2 (from E[phi^2] and
    q E[phi'^2], which equal the full sums by Parseval and Stein's lemma); the diagonal
    values E[phi(sqrt q z)^2] and E[phi'(sqrt q z)^2].
    """
    q = np.asarray(q, dtype=float).ravel()
    alpha, m2, dm2 = hermite_coefficients(phi, q, K, kinks, df=dphi)
    a2 = alpha ** 2
    k = np.arange(K)
    # tail_k = total - partial_{<k}; clipped at 0 against rounding, plus a rounding allowance
    part = np.concatenate([np.zeros((q.size, 1)), np.cumsum(a2, axis=1)[:, :-1]], axis=1)
    dpart = np.concatenate([np.zeros((q.size, 1)), np.cumsum(a2 * k, axis=1)[:, :-1]], axis=1)
    eps = 64 * np.finfo(float).eps
    tail = np.maximum(m2[:, None] - part, 0.0) + eps * m2[:, None]
    dtail = np.maximum(q[:, None] * dm2[:, None] - dpart, 0.0) + eps * K * q[:, None] * dm2[:, None]
    return alpha, tail, dtail, m2, dm2


@nb.njit(cache=True, fastmath=False)
def _mehler_entry(a1, a2, t1, t2, dt1, dt2, q1, q2, c, m2_1, m2_2, dm2_1, dm2_2, tol):
    """One entry of the Mehler sums; returns (nngp, ntk, ok)."""
    K = a1.shape[0]
    s = math.sqrt(q1 * q2)
    rho = c / s
    if rho > 1.0:
        rho = 1.0
    elif rho < -1.0:
        rho = -1.0
    arho = abs(rho)
    scale0 = math.sqrt(m2_1 * m2_2)
    scale1 = math.sqrt(dm2_1 * dm2_2)
    nngp = 0.0
    ntk = 0.0
    p = 1.0  # rho^k
    pm1 = 0.0  # rho^(k-1)
    apow = 1.0  # |rho|^k
    apm1 = 1.0  # |rho|^(k-1), bounded by 1 at k = 0 where the term vanishes
    done0 = False
    done1 = False
    for k in range(K):
        if not done0 and apow * math.sqrt(t1[k] * t2[k]) <= tol * scale0:
            done0 = True
        if not done1 and k > 0 and apm1 * math.sqrt(dt1[k] * dt2[k]) <= tol * scale1 * s:
            done1 = True
        if done0 and done1:
            return nngp, ntk / s, True
        prod = a1[k] * a2[k]
        if not done0:
            nngp += prod * p
        if not done1:
            ntk += k * prod * pm1
        pm1 = p
        p *= rho
        apm1 = apow
        apow *= arho
    return nngp, ntk / s, False


@nb.njit(parallel=True, cache=True)
def _mehler_matrix(A1, A2, T1, T2, D1, D2, q1, q2, m1, m2, dm1, dm2, C, out0, out1, bad, tol, symmetric):
    n1, n2 = C.shape
    for i in nb.prange(n1):
        j0 = i if symmetric else 0
        for j in range(j0, n2):
            if symmetric and i == j:
                out0[i, j] = m1[i]
                out1[i, j] = dm1[i]
                bad[i, j] = False
                continue
            v0, v1, ok = _mehler_entry(A1[i], A2[j], T1[i], T2[j], D1[i], D2[j], q1[i], q2[j], C[i, j],
                                       m1[i], m2[j], dm1[i], dm2[j], tol)
            out0[i, j] = v0
            out1[i, j] = v1
            bad[i, j] = not ok
            if symmetric:
                out0[j, i] = v0
                out1[j, i] = v1
                bad[j, i] = not ok


@lru_cache(maxsize=None)
def _half_line_nodes(t_max: float = 25.0, levels: int = 24):
    """Gauss-Legendre nodes on [0, t_max], panels graded geometrically toward t = 0 (to 2^-levels)."""
    edges = sorted({0.0, *[2.0 ** (-j) for j in range(levels + 1)], *np.arange(1.0, t_max + 1e-9, 1.0)})
    t, w = _gl(12)
    a, b = np.array(edges[:-1])[:, None], np.array(edges[1:])[:, None]
    return ((a + b) / 2 + (b - a) / 2 * t).ravel(), ((b - a) / 2 * w).ravel()


def nested_dual(phi: Callable, dphi: Callable, q1: float, q2: float, c: float, kinks=(0.0,), want=(True, True)):
    """(E[phi(u)phi(v)], E[phi'(u)phi'(v)]) by nested 1-D quadrature, vectorized over the outer nodes.

    v = (c/q1) u + s z with s^2 = q2 - c^2/q1. The inner integral over z is split at the
    point where v crosses the activation's kink (or 0), each half-line on nodes graded toward
    it, so both levels see piecewise-smooth integrands whatever |rho|.
    """
    z1, w1 = nodes(_breaks_for(kinks, q1), panel=1.0, order=12)
    u = math.sqrt(q1) * z1
    s = math.sqrt(max(q2 - c * c / q1, 0.0))
    mean = (c / q1) * u
    kink = kinks[0] if kinks else 0.0
    out = []
    for f, on in zip((phi, dphi), want):
        if not on:
            out.append(np.nan)
            continue
        if s < 1e-14 * math.sqrt(q2):
            inner = f(mean)
        else:
            t, wt = _half_line_nodes()
            zs = np.clip((kink - mean) / s, -15.0, 15.0)[:, None]  # beyond 15 sd the split is immaterial; 15 + 10 <= t_max keeps the whole density
            inner = np.zeros_like(u)
            for sign in (-1.0, 1.0):
                z2 = zs + sign * t[None, :]
                dens = np.exp(-0.5 * z2 * z2) / math.sqrt(2 * math.pi)
                inner += np.sum(wt[None, :] * dens * f(mean[:, None] + s * z2), axis=1)
        out.append(float(np.dot(w1, f(u) * inner)))
    return tuple(out)


def mehler_dual(phi, dphi, q1, q2, C, kinks=(0.0,), K: int = 256, tol: float = 1e-13, symmetric: bool = False,
                tables=None):
    """Kernel maps on a matrix of covariances C (rows: q1, columns: q2); see module doc.

    Returns (E[phi phi], E[phi' phi']) as arrays shaped like C.
    """
    q1 = np.ascontiguousarray(q1, dtype=float)
    q2 = np.ascontiguousarray(q2, dtype=float)
    C = np.ascontiguousarray(C, dtype=float)
    if tables is None:
        K = _terms_needed(C, q1, q2, K, tol, symmetric)
    tab1 = tables[0] if tables else _unique_tables(phi, dphi, q1, K, kinks)
    tab2 = tab1 if symmetric else (tables[1] if tables else _unique_tables(phi, dphi, q2, K, kinks))
    out0 = np.empty(C.shape)
    out1 = np.empty(C.shape)
    bad = np.zeros(C.shape, dtype=np.bool_)
    _mehler_matrix(*tab1[:1], *tab2[:1], tab1[1], tab2[1], tab1[2], tab2[2], q1, q2,
                   tab1[3], tab2[3], tab1[4], tab2[4], C, out0, out1, bad, tol, symmetric)
    for i, j in zip(*np.nonzero(bad)):
        if symmetric and j < i:
            continue
        v0, v1 = nested_dual(phi, dphi, q1[i], q2[j], C[i, j], kinks)
        out0[i, j], out1[i, j] = v0, v1
        if symmetric:
            out0[j, i], out1[j, i] = v0, v1
    return out0, out1


def _terms_needed(C, q1, q2, K, tol, symmetric):
    """Fewest Mehler terms with |rho_max|^K <= tol over the off-diagonal entries (at most K).

    The tail bound is still checked per entry; entries it fails go to nested quadrature, so
    this only trims table work when correlations are small (e.g. random high-dimensional data).
    """
    rho = np.abs(C) / np.sqrt(np.outer(q1, q2))
    if symmetric:
        np.fill_diagonal(rho, 0.0)
    r = float(np.max(rho, initial=0.0))
    if r >= 1.0 or not np.isfinite(r):
        return K
    if r == 0.0:
        return min(K, 16)
    # the Cauchy-Schwarz tail is |rho|^K times at most the full scale: a few spare terms
    return int(min(K, max(16, math.ceil(math.log(tol) / math.log(r)) + 4)))


def _unique_tables(phi, dphi, q, K, kinks):
    """Tables computed once per distinct q (data on a sphere has one q per layer)."""
    uq, inv = np.unique(q, return_inverse=True)
    tabs = mehler_tables(phi, dphi, uq, K, kinks)
    return tuple(np.ascontiguousarray(t[inv]) for t in tabs)


# ---------------------------------------------------------------------------------
# mpmath references
# ---------------------------------------------------------------------------------

def _mp_points(centre_breaks, mp, z=13):
    """Finite panels [-z, z] split at 0 and the given breaks (tails beyond z: < 1e-37)."""
    pts = {mp.mpf(p) for p in (-z, 0, z)}
    pts |= {b for b in centre_breaks if -z < b < z}
    return sorted(pts)


def mp_expect(f, var, kinks=(0.0,), dps: int = 30):
    """E[f(sqrt(var) z)] with mpmath at ``dps`` digits; f takes and returns mpf."""
    import mpmath as mp

    with mp.workdps(dps):
        s = mp.sqrt(mp.mpf(var))
        pts = _mp_points({mp.mpf(k) / s for k in kinks}, mp)
        g = lambda z: f(s * z) * mp.exp(-z * z / 2)  # noqa: E731
        return mp.quad(g, pts) / mp.sqrt(2 * mp.pi)


def mp_expect2(f, g, q1, q2, c, kinks=(0.0,), dps: int = 30):
    """E[f(u) g(v)] for (u, v) centred Gaussian, Var (q1, q2), Cov c, by nested mpmath quadrature."""
    import mpmath as mp

    with mp.workdps(dps):
        q1, q2, c = mp.mpf(q1), mp.mpf(q2), mp.mpf(c)
        s1 = mp.sqrt(q1)
        s = mp.sqrt(max(q2 - c * c / q1, mp.mpf(0)))
        pts1 = _mp_points({mp.mpf(k) / s1 for k in kinks}, mp)

        def inner(z1):
            m = c / q1 * s1 * z1
            if s == 0:
                return g(m)
            pts2 = _mp_points({(mp.mpf(k) - m) / s for k in kinks}, mp)
            return mp.quad(lambda z2: g(m + s * z2) * mp.exp(-z2 * z2 / 2), pts2) / mp.sqrt(2 * mp.pi)

        val = mp.quad(lambda z1: f(s1 * z1) * inner(z1) * mp.exp(-z1 * z1 / 2), pts1)
        return val / mp.sqrt(2 * mp.pi)

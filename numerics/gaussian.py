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
  (O'Donnell 2014, ch. 11; Daniely et al. 2016, "dual activation"), summed row by row
  (Horner in rho, vectorized over the row's entries) with as many terms as the row's largest
  |rho| needs, and a rigorous Cauchy-Schwarz tail bound checked per entry; where the bound
  cannot be met (|rho| near 1), nested 1-D quadrature with a breakpoint at the inner kink.
  For many distinct variances the Hermite coefficients are interpolated in log q
  (:func:`interpolated`).
* References: :func:`mp_expect` and :func:`mp_expect2` evaluate the same integrals with
  mpmath at arbitrary precision (tests compare against them).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numba as nb
import numpy as np

from limitlab.numerics.arrays import mirror_upper, single_threaded_blas

Z_MAX = 16.0
_GL_ORDER = 16
_GRADING_LEVELS = 34  # panels down to 2^-34 ~ 6e-11 around each breakpoint

__all__ = ["nodes", "expect", "hermite_coefficients", "mehler_tables", "mehler_dual", "nested_dual",
           "interpolated", "mp_expect", "mp_expect2"]


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


def breakpoints_for(kinks, q):
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
        groups.setdefault(breakpoints_for(kinks, qi) if qi > 0 else (0.0,), []).append(i)
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


@lru_cache(maxsize=32)
def _hermite_table(breaks: tuple, K: int) -> np.ndarray:
    """h_k at the quadrature nodes of ``breaks`` (read-only; shared by every call)."""
    H = _hermite_matrix(nodes(breaks)[0], K)
    H.flags.writeable = False
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
        H = _hermite_table(breaks, K)
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
    return mehler_tables_from(alpha, m2, dm2, q)


def mehler_tables_from(alpha, m2, dm2, q, slack: float = 0.0):
    """The tables from Hermite coefficients and second moments; ``slack``: their relative
    error (e.g. interpolation), added to the tails so the tail bound stays an upper bound."""
    K = alpha.shape[1]
    a2 = alpha ** 2
    k = np.arange(K)
    # tail_k = total - partial_{<k}; clipped at 0 against rounding, plus a rounding allowance
    part = np.concatenate([np.zeros((q.size, 1)), np.cumsum(a2, axis=1)[:, :-1]], axis=1)
    dpart = np.concatenate([np.zeros((q.size, 1)), np.cumsum(a2 * k, axis=1)[:, :-1]], axis=1)
    # a coefficient error delta (relative to sqrt(m2)) moves the partial sums by <= 2 sqrt(K) delta m2
    eps = 64 * np.finfo(float).eps + (2 * math.sqrt(K) + 1) * slack
    tail = np.maximum(m2[:, None] - part, 0.0) + eps * m2[:, None]
    dtail = np.maximum(q[:, None] * dm2[:, None] - dpart, 0.0) + eps * K * q[:, None] * dm2[:, None]
    return (np.ascontiguousarray(alpha), np.ascontiguousarray(tail), np.ascontiguousarray(dtail),
            np.ascontiguousarray(m2), np.ascontiguousarray(dm2))


@nb.njit(cache=True, error_model="numpy")
def _mehler_row(a1, t1, dt1, q1, m1, dm1, A2, T2, D2, j0, q2, m2, dm2, c, tol, want1, out0, out1, ok):
    """Mehler sums for one input (tables a1, t1, dt1) against inputs j0 + j (columns of the
    transposed tables A2, T2, D2: shape (terms, n)) at covariances c[j], with K - 1 terms,
    K the fewest with |rho_max|^K <= tol (rho_max: the row's largest |rho|), at most the
    tables' length; ok[j] says whether the Cauchy-Schwarz tail bound from term K - 1 on is
    within tol (entries where it is not go to nested quadrature).

    Horner in rho with the loop over j innermost and branch-free, so it vectorizes.
    """
    n = c.shape[0]
    rho = np.empty(n)
    acc0 = np.zeros(n)  # sum_k a1_k a2_k rho^k
    acc1 = np.zeros(n)  # its derivative in rho
    rmax = 0.0
    for j in range(n):
        r = min(1.0, max(-1.0, c[j] / math.sqrt(q1 * q2[j])))
        rho[j] = r
        rmax = max(rmax, abs(r))
    K = a1.shape[0]
    if rmax < 1.0:
        # the tail is |rho|^K times at most the full scale: a few spare terms
        K = min(K, max(16, int(math.ceil(math.log(tol) / math.log(max(rmax, 1e-300)))) + 5))
    for k in range(K - 2, -1, -1):
        ak = a1[k]
        a2 = A2[k, j0:]
        for j in range(n):
            # locals first: stores to acc1 may alias acc0 as far as LLVM knows
            a0 = acc0[j]
            r = rho[j]
            acc1[j] = acc1[j] * r + a0
            acc0[j] = a0 * r + ak * a2[j]
    # tails: sum_{k>=K-1} |a1_k a2_k rho^k| <= |rho|^(K-1) sqrt(S1 S2) (Cauchy-Schwarz) and
    # the derivative series alike with |rho|^(K-2) and D; |rho_j|^(K-2) by repeated squaring
    # over the exponent's bits (the same for every j, so the loop stays vectorized)
    last = K - 1
    pw = np.ones(n)
    base = np.abs(rho)
    e = last - 1
    while e > 0:
        odd = e & 1
        for j in range(n):
            pw[j] = pw[j] * base[j] if odd else pw[j]
            base[j] = base[j] * base[j]
        e >>= 1
    for j in range(n):
        s = math.sqrt(q1 * q2[j])
        b1 = pw[j]
        b0 = b1 * abs(rho[j])
        ok0 = b0 * math.sqrt(t1[last] * T2[last, j0 + j]) <= tol * math.sqrt(m1 * m2[j])
        ok1 = b1 * math.sqrt(dt1[last] * D2[last, j0 + j]) <= tol * math.sqrt(dm1 * dm2[j]) * s
        out0[j] = acc0[j]
        if want1:
            out1[j] = acc1[j] / s
        ok[j] = ok0 and (ok1 or not want1)


@nb.njit(parallel=True, cache=True)
def _mehler_matrix(A1, T1, D1, q1, m1, dm1, A2, T2, D2, q2, m2, dm2, C, tol, want1, out0, out1, ok, symmetric):
    """Entries (i, j) of the Mehler sums; A1, ... are per-input rows, A2, ... transposed."""
    n1 = C.shape[0]
    for i in nb.prange(n1):
        j0 = i + 1 if symmetric else 0
        _mehler_row(A1[i], T1[i], D1[i], q1[i], m1[i], dm1[i], A2, T2, D2, j0, q2[j0:],
                     m2[j0:], dm2[j0:], C[i, j0:], tol, want1, out0[i, j0:], out1[i, j0:], ok[i, j0:])
        if symmetric:
            out0[i, i] = m1[i]
            if want1:
                out1[i, i] = dm1[i]
            ok[i, i] = True


@nb.njit(cache=True)
def _mehler_pairs(A1, T1, D1, q1, m1, dm1, A2, T2, D2, q2, m2, dm2, c, tol, want1, out0, out1, ok):
    """Entry n pairs input n of side 1 with input n of side 2 (A2, ... transposed)."""
    for i in range(c.shape[0]):
        _mehler_row(A1[i], T1[i], D1[i], q1[i], m1[i], dm1[i], A2, T2, D2, i, q2[i:i + 1], m2[i:i + 1], dm2[i:i + 1], c[i:i + 1], tol, want1,
                    out0[i:i + 1], out1[i:i + 1], ok[i:i + 1])


@lru_cache(maxsize=None)
def _half_line_nodes(t_max: float = 25.0, levels: int = 24):
    """Gauss-Legendre nodes on [0, t_max], panels graded geometrically toward t = 0 (to 2^-levels)."""
    edges = sorted({0.0, *[2.0 ** (-j) for j in range(levels + 1)], *np.arange(1.0, t_max + 1e-9, 1.0)})
    t, w = _gl(12)
    a, b = np.array(edges[:-1])[:, None], np.array(edges[1:])[:, None]
    return ((a + b) / 2 + (b - a) / 2 * t).ravel(), ((b - a) / 2 * w).ravel()


def _snap_parallel(q1: float, q2: float, c: float):
    """(c, s): the covariance and the conditional standard deviation s = sqrt((q1 q2 - c^2)/q1)
    of v given u, with |c| within rounding of t = sqrt(q1 q2) snapped to +-t (s = 0): the
    rule of the compiled closed-form path (``recursion._snap``).

    c and q come from different dot products (X1 X2^T and the row norms), so a point of X1
    repeated in X2 has q1 q2 - c^2 of the order eps q1 q2, not 0; unsnapped, that rounding is
    a conditional spread s ~ sqrt(eps q2), which at q2 = 1e12 is 0.01: as wide as tanh's
    transition, an error of 1e-3 in E[phi'(u) phi'(v)]. The gap is taken as (t - c)(t + c),
    without the cancellation of q2 - c^2/q1.
    """
    t = math.sqrt(q1 * q2)
    gap = (t - c) * (t + c)
    if gap <= 16 * np.finfo(float).eps * (t * t):
        return math.copysign(t, c), 0.0
    return c, math.sqrt(gap / q1)


def nested_dual(phi: Callable, dphi: Callable, q1: float, q2: float, c: float, kinks=(0.0,), want=(True, True)):
    """(E[phi(u)phi(v)], E[phi'(u)phi'(v)]) by nested 1-D quadrature, vectorized over the outer nodes.

    v = (c/q1) u + s z with s^2 = q2 - c^2/q1. The inner integral over z is split at the
    point where v crosses the activation's kink (or 0), each half-line on nodes graded toward
    it, so both levels see piecewise-smooth integrands whatever |rho|.
    """
    z1, w1 = nodes(breakpoints_for(kinks, q1), panel=1.0, order=12)
    u = math.sqrt(q1) * z1
    c, s = _snap_parallel(q1, q2, c)
    mean = (c / q1) * u
    kink = kinks[0] if kinks else 0.0
    out = []
    for f, on in zip((phi, dphi), want):
        if not on:
            out.append(np.nan)
            continue
        if s == 0.0:
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
                want=(True, True), pairs: bool = False):
    """Kernel maps on a matrix of covariances C (rows: q1, columns: q2); see module doc.

    Returns (E[phi phi], E[phi' phi']) as arrays shaped like C; with ``want[1]`` False the
    second is not computed (None). ``pairs``: q1, q2 and C are equal-length vectors and
    entry n pairs q1[n] with q2[n].
    """
    q1 = np.ascontiguousarray(q1, dtype=float).ravel()
    q2 = np.ascontiguousarray(q2, dtype=float).ravel()
    C = np.ascontiguousarray(C, dtype=float)
    want1 = bool(want[1])
    tab1 = interpolated_tables(phi, dphi if want1 else None, q1, K, kinks)
    tab2 = tab1 if symmetric else interpolated_tables(phi, dphi if want1 else None, q2, K, kinks)
    # terms past which every tail is negligible whatever rho (Cauchy-Schwarz) are never needed
    cut = 2
    for t, q in ((tab1, q1),) if symmetric else ((tab1, q1), (tab2, q2)):
        small = np.all(t[1] <= (0.1 * tol) ** 2 * t[3][:, None], axis=0)
        if want1:
            small &= np.all(t[2] <= (0.1 * tol) ** 2 * q[:, None] * t[4][:, None], axis=0)
        cut = max(cut, int(np.argmax(small)) + 1 if small.any() else K)
    tab1 = tuple(np.ascontiguousarray(t[:, :cut]) for t in tab1[:3]) + tab1[3:]
    t2 = [np.ascontiguousarray(t[:, :cut].T) for t in tab2[:3]]
    out0 = np.empty(C.shape)
    out1 = np.empty(C.shape) if want1 else np.empty((C.shape[0], 0))
    ok = np.ones(C.shape, dtype=np.bool_)  # the lower triangle of a symmetric C is not visited
    if pairs:
        _mehler_pairs(*tab1[:3], q1, *tab1[3:], *t2, q2, *tab2[3:], C, tol, want1, out0, out1, ok)
    else:
        _mehler_matrix(*tab1[:3], q1, *tab1[3:], *t2, q2, *tab2[3:], C, tol, want1, out0, out1, ok, symmetric)
    for idx in ([] if ok.all() else zip(*np.nonzero(~ok))):
        i, j = (idx[0], idx[0]) if pairs else idx
        v0, v1 = nested_dual(phi, dphi, q1[i], q2[j], C[idx], kinks, want=(True, want1))
        out0[idx] = v0
        if want1:
            out1[idx] = v1
    if symmetric:
        mirror_upper(out0)
        if want1:
            mirror_upper(out1)
    return out0, (out1 if want1 else None)


def interpolated(fn: Callable, q: np.ndarray, tol: float = 2e-14, n0: int = 17, n_max: int = 257,
                 scale: Callable = None):
    """fn(q) for many q > 0: fn(qs) -> (len(qs), m) array, smooth in log q.

    One evaluation per distinct q when there are few; otherwise Chebyshev interpolation in
    log q on [min q, max q] (barycentric, Berrut & Trefethen 2004), with nodes doubled until
    the interpolant matches fn at the midpoints between nodes to ``tol`` relative to
    ``scale(values)`` (default: each row's largest entry), falling back to one evaluation per
    distinct q. Returns (values at q, the measured interpolation error).
    """
    if scale is None:
        scale = lambda V: np.max(np.abs(V), axis=1, keepdims=True)  # noqa: E731
    with single_threaded_blas():
        return _interpolated(fn, q, tol, n0, n_max, scale)


def _interpolated(fn, q, tol, n0, n_max, scale):
    q = np.asarray(q, dtype=float).ravel()
    uq, inv = np.unique(q, return_inverse=True)
    n = n0
    if uq.size > 2 * n0 and uq[0] > 0:
        lo, hi = math.log(uq[0]), math.log(uq[-1])
        to_x = lambda v: (2 * np.log(v) - lo - hi) / (hi - lo)  # noqa: E731
        while n <= n_max and 2 * n < uq.size:
            x = np.cos(np.pi * np.arange(n) / (n - 1))
            V = fn(np.exp((lo + hi) / 2 + (hi - lo) / 2 * x))
            xc = np.cos(np.pi * (np.arange(n - 1) + 0.5) / (n - 1))  # midpoints: the interpolant's worst
            Vc = fn(np.exp((lo + hi) / 2 + (hi - lo) / 2 * xc))
            err = np.max(np.abs(_barycentric(xc, x, V) - Vc) / scale(Vc))
            if err <= tol:
                return _barycentric(np.clip(to_x(uq), -1.0, 1.0), x, V)[inv], float(err)
            n = 2 * n - 1
    return fn(uq)[inv], 0.0


def _barycentric(xt, x, V):
    """Interpolant through (x, V) at Chebyshev points of the second kind x, evaluated at xt."""
    w = (-1.0) ** np.arange(x.size)
    w[0] *= 0.5
    w[-1] *= 0.5
    d = xt[:, None] - x[None, :]
    hit = d == 0
    d[hit] = 1.0
    M = w[None, :] / d
    rows = hit.any(axis=1)
    M[rows] = hit[rows]  # exactly on a node: that node's value
    return (M @ V) / M.sum(axis=1, keepdims=True)


def interpolated_tables(phi, dphi, q, K, kinks):
    """:func:`mehler_tables` for many inputs, interpolated in log q (:func:`interpolated`).

    ``dphi=None``: NNGP only (phi stands in for dphi; those tables are never read).
    """
    def fn(qs):
        alpha, m2, dm2 = hermite_coefficients(phi, qs, K, kinks, df=phi if dphi is None else dphi)
        return np.column_stack([alpha, m2, dm2])

    def scale(V):  # coefficients against sqrt(E phi^2) (Parseval), the moments against themselves
        return np.column_stack([np.repeat(np.sqrt(V[:, K:K + 1]), K, axis=1), V[:, K:]]) + 1e-300

    V, err = interpolated(fn, q, scale=scale)
    return mehler_tables_from(V[:, :K], V[:, K], V[:, K + 1], np.asarray(q, dtype=float).ravel(), slack=err)


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

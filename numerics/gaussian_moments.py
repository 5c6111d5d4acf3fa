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

__all__ = ["nested_nodes", "product_expectation", "score_derivatives", "one_input_derivatives",
           "one_input_derivatives_many",
           "pair_tables", "pair_series", "power_expectations", "product_tables",
           "product_series", "Z_MAX"]

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

    ``kinks[i]``: the points where the i-th coordinate's integrand is not smooth. ``rule``:
    (panels per piece, Gauss-Legendre order) for every level, or a list of them, one per level
    (default: :func:`_rule`). Returns (z, xi, w): points (M, r), their whitened coordinates (M, r)
    (z = L xi; a coordinate with no conditional spread gets the single node xi = 0) and weights
    (M,) summing to ~1.
    """
    cov = np.asarray(cov, dtype=float)
    r = cov.shape[0]
    return _extend_levels(cov, _cholesky(cov), kinks, rule, np.zeros((1, r)), np.zeros((1, r)), np.ones(1), 0, r)


def _extend_levels(cov, L, kinks, rule, z, xi, w, k0, k1):
    """Nodes of levels k0 .. k1 - 1 of :func:`nested_nodes` appended to the nodes (z, xi, w) of the
    levels before (rows: one per node so far)."""
    r = cov.shape[0]
    for k in range(k0, k1):
        mean = xi[:, :k] @ L[k, :k]
        s = L[k, k]
        if s <= 1e-14 * math.sqrt(max(cov[k, k], 1e-300)):
            # no conditional spread: z_k is its conditional mean (a repeated or parallel input)
            z[:, k] = mean
            continue
        panels, order = _rule(bool(kinks[k]), r) if rule is None else (rule[k] if isinstance(rule, list) else rule)
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


# ---------------------------------------------------------------------------------
# Products of powers on three and four inputs: the innermost level smoothed once
# ---------------------------------------------------------------------------------
#
# Given the outer coordinates, the innermost z_r is N(m, s^2) with m = L[r, :r] xi (linear in
# the outer nodes) and s = L[r, r] fixed, so the innermost integral is one function of one
# variable, g(m) = E[f(m + s u)]: a Gaussian smoothing of f, smooth even where f has kinks. It
# is fitted once per set of inputs by piecewise Chebyshev interpolation (checked against direct
# quadrature at the panel midpoints) and evaluated at the outer nodes, so an r-input
# expectation costs an (r-1)-level grid instead of an r-level one.

_CHEB_DEG = 16  # degree per panel
_CHUNK = 1 << 21  # outer nodes per chunk
_MAX_PANELS = 4096


@lru_cache(maxsize=None)
def _cheb_points(D: int):
    """Chebyshev points of the second kind on [0, 1] (D + 1) and the midpoints between them (D)."""
    x = 0.5 * (1.0 - np.cos(np.pi * np.arange(D + 1) / D))
    xm = 0.5 * (1.0 - np.cos(np.pi * (np.arange(D) + 0.5) / D))
    return x, xm


def _cheb_coeffs(V):
    """Chebyshev coefficients (..., D + 1) on [-1, 1] from values at cos(pi j / D) (DCT-I by FFT)."""
    D = V.shape[-1] - 1
    c = np.fft.rfft(np.concatenate([V, V[..., -2:0:-1]], axis=-1), axis=-1).real / D
    c[..., 0] /= 2
    c[..., D] /= 2
    return c


@nb.njit(cache=True)
def _clenshaw(C, p, u):
    b1 = 0.0
    b2 = 0.0
    for k in range(C.shape[1] - 1, 0, -1):
        b1, b2 = 2.0 * u * b1 - b2 + C[p, k], b1
    return u * b1 - b2 + C[p, 0]


@nb.njit(parallel=True, cache=True)
def _piecewise_cheb(lo, h, C, m, out):
    """g(m) from P uniform panels of width h from lo, Chebyshev coefficients C (P, D + 1), by
    Clenshaw, four points at a time (four independent recurrences keep the FMA units busy)."""
    P, D1 = C.shape
    M = m.shape[0]
    for blk in nb.prange((M + 3) // 4):
        t0 = blk * 4
        if t0 + 4 > M:
            for t in range(t0, M):
                x = (m[t] - lo) / h
                p = min(max(int(math.floor(x)), 0), P - 1)
                out[t] = _clenshaw(C, p, 2.0 * (x - p) - 1.0)
            continue
        x0, x1, x2, x3 = (m[t0] - lo) / h, (m[t0 + 1] - lo) / h, (m[t0 + 2] - lo) / h, (m[t0 + 3] - lo) / h
        p0 = min(max(int(math.floor(x0)), 0), P - 1)
        p1 = min(max(int(math.floor(x1)), 0), P - 1)
        p2 = min(max(int(math.floor(x2)), 0), P - 1)
        p3 = min(max(int(math.floor(x3)), 0), P - 1)
        u0, u1, u2, u3 = 2.0 * (x0 - p0) - 1.0, 2.0 * (x1 - p1) - 1.0, 2.0 * (x2 - p2) - 1.0, 2.0 * (x3 - p3) - 1.0
        a0 = a1 = a2 = a3 = 0.0
        c0 = c1 = c2 = c3 = 0.0
        for k in range(D1 - 1, 0, -1):
            a0, c0 = 2.0 * u0 * a0 - c0 + C[p0, k], a0
            a1, c1 = 2.0 * u1 * a1 - c1 + C[p1, k], a1
            a2, c2 = 2.0 * u2 * a2 - c2 + C[p2, k], a2
            a3, c3 = 2.0 * u3 * a3 - c3 + C[p3, k], a3
        out[t0] = u0 * a0 - c0 + C[p0, 0]
        out[t0 + 1] = u1 * a1 - c1 + C[p1, 0]
        out[t0 + 2] = u2 * a2 - c2 + C[p2, 0]
        out[t0 + 3] = u3 * a3 - c3 + C[p3, 0]


def _smoothed_direct(f, s, kinks, m):
    """E[f(m + s u)], u ~ N(0, 1), per entry of m, on the two-input rule of :func:`nested_nodes`."""
    cuts = np.sort(np.stack([(k - m) / s for k in kinks], axis=1), axis=1) if kinks else np.zeros((m.size, 0))
    x, w = _pieces_nodes(cuts, *_rule(bool(kinks), 2))
    return np.sum(f(m[:, None] + s * x) * w, axis=1)


def _smoothed_fit(f, s, kinks, lo, hi, tol):
    """Piecewise Chebyshev fit of g(m) = E[f(m + s u)] on [lo, hi]: (lo, h, C), or None when
    _MAX_PANELS panels do not reach ``tol`` (relative to max |g|) at the panel midpoints."""
    x, xm = _cheb_points(_CHEB_DEG)
    P = 8
    while P <= _MAX_PANELS:
        h = max(hi - lo, 1e-300) / P
        left = lo + h * np.arange(P)[:, None]
        V = _smoothed_direct(f, s, kinks, (left + h * x).ravel()).reshape(P, -1)
        Vm = _smoothed_direct(f, s, kinks, (left + h * xm).ravel()).reshape(P, -1)
        C = _cheb_coeffs(V[:, ::-1])  # cos(pi j / D) runs from the right end to the left
        got = np.empty(Vm.size)
        _piecewise_cheb(lo, h, C, (left + h * xm).ravel(), got)
        if np.max(np.abs(got - Vm.ravel())) <= tol * max(np.max(np.abs(V)), 1e-300):
            return lo, h, C
        P *= 2
    return None


# panel width in z units for the outer levels: the 2-input rule's 0.5-wide panels at q = 10 are
# 1.6 wide in z and hold 6e-11 on tanh (whose poles sit pi/2 off the real z axis); 0.8 gives
# Gauss-Legendre 8 a Bernstein ellipse ~8 around each panel, ~1e-14
_PANEL_Z = 0.8
_PANEL_XI = (0.5, 1.0)  # bounds on the width in xi units


def _scaled_rule(L, kinked):
    """Per outer level j: panels of width _PANEL_Z / max_k |L_kj| in xi_j (clipped to _PANEL_XI),
    so that every z_k that moves with xi_j sees panels _PANEL_Z wide or less."""
    rules = []
    for j in range(L.shape[0] - 1):
        h = min(max(_PANEL_Z / max(np.abs(L[j:, j]).max(), 1e-300), _PANEL_XI[0]), _PANEL_XI[1])
        panels = int(math.ceil(2 * Z_MAX / h))
        rules.append(((max(2, int(math.ceil(0.75 * panels))) if kinked else panels), 8))
    return rules


def power_expectations(phi: Callable, cov, powers, kinks: Sequence[float] = (0.0,), tol: float = 1e-13) -> np.ndarray:
    """E[prod_i phi(z_i)^powers[t, i]] for each row t of ``powers`` (T, r), z ~ N(0, cov), r >= 2.

    Nested quadrature (:func:`nested_nodes`) over r - 1 coordinates; the innermost one (the
    coordinate with the largest conditional variance) integrated by the fitted smoothing of its
    power of phi (section note above); where no fit reaches ``tol``, the innermost level is
    integrated at every outer node instead.
    """
    cov = np.asarray(cov, dtype=float)
    powers = np.atleast_2d(np.asarray(powers, dtype=int))
    r = cov.shape[0]
    # the innermost coordinate: the largest conditional variance given the others (smoothest g)
    last = int(np.argmax(1.0 / np.diag(np.linalg.inv(cov))))
    order = [i for i in range(r) if i != last] + [last]
    cov = cov[np.ix_(order, order)]
    powers = powers[:, order]
    kinks = tuple(float(k) for k in kinks)
    L = _cholesky(cov)
    rules = _scaled_rule(L, bool(kinks))
    s = L[-1, -1]
    # the innermost power's smoothing g_p(m) on the range of the means m = L[-1, :-1] xi, |xi| <= Z
    fits = {}
    half = Z_MAX * np.abs(L[-1, :-1]).sum()
    for p in sorted(set(powers[:, -1].tolist())):
        f = (lambda p_: (lambda t: phi(t) ** p_))(p)
        spread = s > 1e-14 * math.sqrt(cov[-1, -1])
        fits[p] = (f, spread, _smoothed_fit(f, s, kinks, -half, half, tol) if spread and half > 0 else None)

    def inner(p, m):
        f, spread, fit = fits[p]
        if not spread:
            return f(m)  # no conditional spread
        if fit is None:
            return _smoothed_direct(f, s, kinks, m)
        g = np.empty(m.size)
        _piecewise_cheb(fit[0], fit[1], fit[2], np.ascontiguousarray(m), g)
        return g

    out = np.zeros(len(powers))
    tensor = not kinks and bool(np.all(np.diag(L)[:-1] > 0))
    z0, xi0, w0 = _extend_levels(cov[:-1, :-1], L[:-1, :-1], [kinks] * (r - 1), rules,
                                 np.zeros((1, r - 1)), np.zeros((1, r - 1)), np.ones(1), 0, 1)
    if tensor:
        # no kinks: the outer nodes are a tensor grid in xi, and z_k needs only levels <= k
        grid = [_pieces_nodes(np.zeros((1, 0)), *rule) for rule in rules[1:]]
        xs = [x.ravel() for x, _ in grid]
        ws = [wx.ravel() for _, wx in grid]
        per_row = int(np.prod([x.size for x in xs])) if xs else 1
    else:
        per_row = int(np.prod([2 * rule[0] * rule[1] for rule in rules[1:]])) if r > 2 else 1
    rows = max(1, _CHUNK // per_row)  # level-0 nodes per chunk: bounded memory
    for c0 in range(0, w0.size, rows):
        x0, wc = xi0[c0:c0 + rows, 0], w0[c0:c0 + rows]
        if tensor:
            shape = (x0.size,) + tuple(x.size for x in xs)
            z = []
            for k in range(r):
                acc = L[k, 0] * x0.reshape((-1,) + (1,) * (r - 2))
                for j in range(1, min(k + 1, r - 1)):
                    acc = acc + L[k, j] * xs[j - 1].reshape([1] * j + [-1] + [1] * (r - 2 - j))
                z.append(acc)
            base = [phi(z[k]).reshape(z[k].shape[:k + 1]) for k in range(r - 1)]  # z_k: levels <= k
            g = {p: inner(p, np.broadcast_to(z[-1], shape).ravel()).reshape(shape) for p in fits}
            wl = [wc] + ws
            for t, pw in enumerate(powers):
                F = g[int(pw[-1])]
                for k in range(r - 2, -1, -1):  # innermost outer level first
                    b = base[k] if pw[k] == 1 else base[k] ** int(pw[k])
                    F = np.tensordot(F * b, wl[k], axes=([k], [0]))
                out[t] += float(F)
        else:
            z, xi, w = _extend_levels(cov[:-1, :-1], L[:-1, :-1], [kinks] * (r - 1), rules, z0[c0:c0 + rows].copy(),
                                      xi0[c0:c0 + rows].copy(), wc.copy(), 1, r - 1)
            m = xi @ L[-1, :-1]
            base = [phi(z[:, i]) for i in range(r - 1)]
            g = {p: inner(p, m) for p in fits}
            for t, pw in enumerate(powers):
                F = g[int(pw[-1])] * w
                for i in range(r - 1):
                    F = F * (base[i] if pw[i] == 1 else base[i] ** int(pw[i]))
                out[t] += F.sum()
    return out


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



def one_input_derivatives_many(fs: Sequence[Callable], q, kinks: Sequence[float]) -> np.ndarray:
    """:func:`one_input_derivatives` for many variances at once: (len(q), len(fs), 3).

    The same 1-D rule, one array call per function and node set; for many distinct q,
    (E[f], q dE/dq, q^2 d2E/dq2) are interpolated in log q
    (:func:`limitlab.numerics.gaussian.interpolated`, checked at the midpoints to 2e-14 of the
    largest of the three), so a layer of thousands of inputs costs a few dozen evaluations.
    """
    from limitlab.numerics import gaussian

    q = np.asarray(q, dtype=float).ravel()
    nf = len(fs)

    def fn(qs):  # E[f], q dE/dq, q^2 d2E/dq2: smooth in log q, all on the scale of E[f]
        out = np.empty((qs.size, nf, 3))
        for breaks, idx in gaussian._group_by_nodes(qs, kinks).items():
            x, w = gaussian.nodes(breaks)
            x2 = x * x
            W = np.stack([w, w * (x2 - 1) / 2, w * (x2 * x2 - 6 * x2 + 3) / 4], axis=1)  # (m, 3)
            z = np.sqrt(qs[idx])[:, None] * x[None, :]
            for s, f in enumerate(fs):
                out[idx, s] = (np.asarray(f(z), dtype=float) * np.ones(z.shape)) @ W
        return out.reshape(qs.size, -1)

    def scale(V):  # per function: the largest of its three entries
        return np.repeat(np.abs(V.reshape(V.shape[0], nf, 3)).max(axis=2), 3, axis=1) + 1e-300

    V, _ = gaussian.interpolated(fn, q, scale=scale)
    V = V.reshape(q.size, nf, 3)
    V[:, :, 1] /= q[:, None]
    V[:, :, 2] /= (q * q)[:, None]
    return V.reshape(q.size, nf, 3)


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


def pair_tables(phi, q, kinks=(0.0,), K: int = 256):
    """Per input (rows): the tables of the two-input series. Returns (A, G, diag):

    * A (5, N, K): Hermite coefficients of phi(sqrt(q) z), phi^2 and phi^3 (module note, a_k),
      then the heat-equation shifts C2_k a_{k+2} and C4_k a_{k+4} of phi's (zero past the table);
    * G (N, K): log(k + 4) + log(R) / 2, R[i, k] >= sum_{m >= k} a_m^2 / E[f^2] the relative
      Parseval tails, the largest over the three functions (plus a rounding allowance);
    * diag: (E[phi^2], d/dq, d2/dq2, E[phi^4]) per input.

    The coefficients are interpolated in log q by :func:`limitlab.numerics.gaussian.interpolated`.
    """
    q = np.ascontiguousarray(q, dtype=float)
    T, R, M = _tables((phi, lambda t: phi(t) ** 2, lambda t: phi(t) ** 3), q, kinks, K)
    A = np.zeros((5, q.size, K))
    A[:3] = T
    k = np.arange(K, dtype=float)
    A[3, :, :K - 2] = 0.5 * np.sqrt((k[:-2] + 1) * (k[:-2] + 2)) * A[0, :, 2:]
    A[4, :, :K - 4] = 0.25 * np.sqrt((k[:-4] + 1) * (k[:-4] + 2) * (k[:-4] + 3) * (k[:-4] + 4)) * A[0, :, 4:]
    m4 = M[1]  # E[(phi^2)^2]
    # one input: E[phi^2] = a_0(phi^2); d/dq and d2/dq2 by the heat-equation shift (module note)
    diag = (A[1, :, 0].copy(), math.sqrt(2.0) / 2 * A[1, :, 2] / q, math.sqrt(24.0) / 4 * A[1, :, 4] / q ** 2, m4)
    return A, np.log(k + 4.0) + 0.5 * np.log(R), diag


@nb.njit(cache=True)
def _terms(Gi, Gj, r, tol, kmax):
    """The number of terms K after which every series' remainder, bounded by Cauchy-Schwarz as
    (K + 4)^2 |rho|^(K-2) sqrt(R_i[K] R_j[K]) relative to its scale, is below tol (kmax: too many);
    in logs, with G = log(K + 4) + log(R) / 2 (:func:`pair_tables`), so no product chain."""
    lr = math.log(max(r, 1e-300))
    lt = math.log(tol)
    K = 5
    while K < kmax and Gi[K] + Gj[K] + (K - 2) * lr > lt:
        K += 1
    return K


@nb.njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def _series_pair(A, G, i, j, qi, qj, rho, tol, kmax, P, out):
    """The 13 SERIES of inputs i, j (tables A (5, N, K) and log tails G (N, K) of
    :func:`pair_tables`) at correlation rho, into out[:13]; False (out not set) when
    :func:`_terms` needs more than kmax terms (the caller integrates). P: scratch (>= kmax + 2).
    Summed as dot products with the powers P[k + 2] = rho^k (P[0] = P[1] = 0 for the
    rho-derivative series sum_k k a_k b_k rho^(k-1) and sum_k k (k-1) a_k b_k rho^(k-2))."""
    K = _terms(G[i], G[j], abs(rho), tol, kmax)
    if K >= kmax:
        return False
    P[0] = 0.0
    P[1] = 0.0
    P[2] = 1.0
    for k in range(3, min(K + 2, 10)):
        P[k] = P[k - 1] * rho
    if K + 2 > 10:
        r8 = P[9] * rho
        for k in range(10, K + 2):  # dependence distance 8: no serial chain
            P[k] = P[k - 8] * r8
    f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = f8 = f9 = f10 = f11 = f12 = 0.0
    for k in range(K):
        a1, c1 = A[0, i, k], A[0, j, k]
        b2, e2 = A[3, i, k], A[3, j, k]
        p, p1, p2 = P[k + 2], k * P[k + 1], (k * (k - 1.0)) * P[k]
        t = a1 * c1
        f0 += t * p
        f6 += t * p1
        f12 += t * p2
        f1 += A[1, i, k] * A[1, j, k] * p
        f2 += A[2, i, k] * c1 * p
        f3 += a1 * A[2, j, k] * p
        t = b2 * c1
        f4 += t * p
        f10 += t * p1
        t = a1 * e2
        f5 += t * p
        f11 += t * p1
        f7 += A[4, i, k] * c1 * p
        f8 += a1 * A[4, j, k] * p
        f9 += b2 * e2 * p
    s12 = math.sqrt(qi * qj)
    out[0], out[1], out[2], out[3] = f0, f1, f2, f3
    out[4], out[5], out[6] = f4 / qi, f5 / qj, f6 / s12
    out[7], out[8], out[9] = f7 / (qi * qi), f8 / (qj * qj), f9 / (qi * qj)
    out[10], out[11], out[12] = f10 / (qi * s12), f11 / (qj * s12), f12 / (qi * qj)
    return True


@nb.njit(parallel=True, cache=True)
def _all_pair_series(A, G, I, J, q, rho, tol, kmax, out, ok):
    P = I.shape[0]
    nblk = (P + 255) // 256
    for t in nb.prange(nblk):
        scratch = np.empty(kmax + 2)
        for p in range(t * 256, min(P, (t + 1) * 256)):
            ok[p] = _series_pair(A, G, I[p], J[p], q[I[p]], q[J[p]], rho[p], tol, kmax, scratch, out[p])


def pair_series(phi, q, I, J, C, kinks=(0.0,), K: int = 256, tol: float = 1e-13):
    """For input pairs (I[p], J[p]) with variances q[I], q[J] and covariances C[p]: the SERIES
    (E[phi phi], E[phi^2 phi^2], E[phi^3 phi], E[phi phi^3], the first derivatives of E[phi(u)
    phi(v)] in (q1, q2, c) and its second derivatives), shape (P, 13), and a mask of the pairs
    whose |rho| is too close to 1 for K terms (their rows are not meaningful).

    Also returns, per input, (E[phi^2], d/dq, d2/dq2, E[phi^4]) from the same tables
    (:func:`pair_tables`; the sums: :func:`_series_pair`).
    """
    q = np.ascontiguousarray(q, dtype=float)
    A, G, diag = pair_tables(phi, q, kinks, K)
    I = np.ascontiguousarray(I, dtype=np.int64)
    J = np.ascontiguousarray(J, dtype=np.int64)
    rho = np.ascontiguousarray(np.asarray(C, dtype=float) / np.sqrt(q[I] * q[J]))
    out = np.empty((I.size, 13))
    ok = np.empty(I.size, dtype=np.bool_)
    _all_pair_series(A, G, I, J, q, rho, tol, K - 4, out, ok)
    return out, ~ok, diag


# ---------------------------------------------------------------------------------
# Two-input expectations of products of several functions, by Mehler series
# ---------------------------------------------------------------------------------
#
# The NTK's pair recursion needs E[f(u) g(v)] for a dozen (f, g) built from phi, phi' and z, and
# the covariance derivatives of E[phi'(u) phi'(v)] and E[phi(u) phi(v)]: the Mehler series of the
# module note above with one Hermite table per function, the derivatives by the heat-equation
# shifts (d/dq1 shifts f's table by 2 with C2_k, d2/dq1^2 by 4 with C4_k, d/dc multiplies by k).

def product_tables(fs: Sequence[Callable], q, kinks=(0.0,), K: int = 256):
    """Hermite tables of several functions at the variances q: (A, R) with A (len(fs), N, K) the
    normalized coefficients a_k = E[f(sqrt(q) z) h_k(z)] (interpolated in log q by
    :func:`limitlab.numerics.gaussian.interpolated`) and R (N, K) >= sum_{m >= k} a_m^2 / E[f^2],
    the relative Parseval tails, the largest over the functions (plus a rounding allowance)."""
    A, R, _ = _tables(fs, np.ascontiguousarray(q, dtype=float), kinks, K)
    return A, R


def _tables(fs, q, kinks, K):
    """(A, R, M): the Hermite coefficients (len(fs), N, K) interpolated in log q, the relative
    Parseval tails (N, K) (the largest over the functions, plus a rounding allowance) and the
    second moments E[f^2] (len(fs), N); shared by :func:`pair_tables` and :func:`product_tables`."""
    from limitlab.numerics import gaussian

    F = len(fs)

    def fn(qs):
        cols = []
        for f in fs:
            alpha, m2, _ = gaussian.hermite_coefficients(f, qs, K, kinks, df=f)
            cols += [alpha, m2[:, None]]
        return np.concatenate(cols, axis=1)

    def scale(V):  # each function's coefficients against the root of its second moment (Parseval)
        out = []
        for s in range(F):
            m = V[:, s * (K + 1) + K:s * (K + 1) + K + 1]
            out += [np.repeat(np.sqrt(np.abs(m)), K, axis=1), np.abs(m)]
        return np.concatenate(out, axis=1) + 1e-300

    V, _ = gaussian.interpolated(fn, q, scale=scale)
    A = np.stack([V[:, s * (K + 1):s * (K + 1) + K] for s in range(F)])
    M = np.stack([V[:, s * (K + 1) + K] for s in range(F)])
    # relative Parseval tails: 1 - sum_{m<k} a_m^2 / E[f^2], plus a rounding allowance
    R = np.zeros((q.size, K))
    for s in range(F):
        m = np.abs(M[s])[:, None] + 1e-300
        part = np.concatenate([np.zeros((q.size, 1)), np.cumsum(A[s] ** 2, axis=1)[:, :-1]], axis=1)
        R = np.maximum(R, np.maximum(1.0 - part / m, 0.0) + 1e-14)
    return A, R, M


def product_series(A, R, q, I, J, C, products, first=(), second=(), tol: float = 1e-13):
    """Two-input expectations of the pairs of inputs (I[p], J[p]) (variances q, covariances C[p])
    from :func:`product_tables`' (A, R):

    * ``products``: (fi, fj) table indices -> E[f_fi(u) f_fj(v)], (P, len(products));
    * ``first``: (fi, fj) -> the derivatives of E[f(u) g(v)] in (q1, q2, c), (P, len(first), 3);
    * ``second``: (fi, fj) -> its second derivatives, (P, len(second), 3, 3).

    Returns (values, first, second, bad): ``bad`` flags the pairs whose |rho| is too close to 1 for
    the table (the Cauchy-Schwarz bound (k + 4)^2 |rho|^(k - 2) sqrt(R_i R_j) on every remainder,
    relative to its scale, above tol within K - 4 terms); their rows are not meaningful.
    """
    K = A.shape[2]
    I = np.asarray(I, dtype=np.int64)
    J = np.asarray(J, dtype=np.int64)
    q1, q2 = q[I], q[J]
    rho = np.asarray(C, dtype=float) / np.sqrt(q1 * q2)
    r = np.abs(rho)
    k = np.arange(K, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # rho = 0: log 0, and 0 * -inf at k = 2 (never read)
        logb = 2 * np.log(k + 4.0)[None, :] + (k[None, :] - 2) * np.log(r)[:, None] \
            + 0.5 * np.log(R[I] * R[J])
    below = logb <= math.log(tol)
    below[:, :5] = False
    need = np.where(below.any(axis=1), below.argmax(axis=1), K)
    bad = need > K - 4
    n = int(min(max(need[~bad].max(initial=5), 5), K - 4))
    k = k[:n]
    # rho^k, k rho^(k-1), k (k-1) rho^(k-2) (no negative powers at rho = 0)
    pw = rho[:, None] ** k[None, :]
    pw1 = np.zeros_like(pw)
    pw1[:, 1:] = k[1:] * pw[:, :-1]
    pw2 = np.zeros_like(pw)
    pw2[:, 2:] = k[2:] * (k[2:] - 1) * pw[:, :-2]
    C2 = 0.5 * np.sqrt((k + 1) * (k + 2))
    C4 = 0.25 * np.sqrt((k + 1) * (k + 2) * (k + 3) * (k + 4))
    s12 = np.sqrt(q1 * q2)

    def tab(f, idx, shift=0):
        return A[f][idx, shift:shift + n]

    vals = np.stack([np.einsum("pk,pk,pk->p", tab(a, I), tab(b, J), pw) for a, b in products], axis=1) \
        if products else np.zeros((I.size, 0))
    d1 = np.zeros((I.size, len(first), 3))
    for s, (a, b) in enumerate(first):
        ai, bj = tab(a, I), tab(b, J)
        d1[:, s, 0] = np.einsum("pk,pk,pk->p", C2 * tab(a, I, 2), bj, pw) / q1
        d1[:, s, 1] = np.einsum("pk,pk,pk->p", ai, C2 * tab(b, J, 2), pw) / q2
        d1[:, s, 2] = np.einsum("pk,pk,pk->p", ai, bj, pw1) / s12
    d2 = np.zeros((I.size, len(second), 3, 3))
    for s, (a, b) in enumerate(second):
        ai, bj = tab(a, I), tab(b, J)
        ai2, bj2 = C2 * tab(a, I, 2), C2 * tab(b, J, 2)
        h = d2[:, s]
        h[:, 0, 0] = np.einsum("pk,pk,pk->p", C4 * tab(a, I, 4), bj, pw) / q1 ** 2
        h[:, 1, 1] = np.einsum("pk,pk,pk->p", ai, C4 * tab(b, J, 4), pw) / q2 ** 2
        h[:, 0, 1] = h[:, 1, 0] = np.einsum("pk,pk,pk->p", ai2, bj2, pw) / (q1 * q2)
        h[:, 0, 2] = h[:, 2, 0] = np.einsum("pk,pk,pk->p", ai2, bj, pw1) / (q1 * s12)
        h[:, 1, 2] = h[:, 2, 1] = np.einsum("pk,pk,pk->p", ai, bj2, pw1) / (q2 * s12)
        h[:, 2, 2] = np.einsum("pk,pk,pk->p", ai, bj, pw2) / (q1 * q2)
    return vals, d1, d2, bad

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

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numba as nb
import numpy as np

__all__ = ["nested_nodes", "product_expectation", "score_derivatives", "one_input_derivatives",
           "one_input_derivatives_many",
           "pair_tables", "pair_series", "power_expectations", "product_tables",
           "product_series", "series_four_point", "series_products", "Z_MAX"]

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


def _rule(kinked: bool, r: int, scale: float = 0.0):
    """(panels per piece, Gauss-Legendre order) per level. Panels of width h = 0.5 in the whitened
    coordinate; three inputs h = 1.0 (~1e-9 against a finer rule, ~0.5 s an expectation), four
    h = 1.5. A smooth integrand's poles (tanh's at distance pi/2 in z) limit the rule in z, where
    a panel is h * scale wide (scale: the largest |L_jk| moving with this coordinate), so for
    kink-free levels h is also capped at 0.8 / scale: 8-point panels 0.8 wide in z converge like
    8^-16 ~ 4e-15 there (with h = 0.5 alone, tanh two-input moments at variance 7.6 were off by
    4e-11). Kinked activations are polynomial or exponential between their kinks: no cap."""
    h = {1: 0.5, 2: 0.5, 3: 1.0}.get(r, 1.5)
    if not kinked and scale > 0:
        h = min(h, _PANEL_Z / scale)
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
        panels, order = (_rule(bool(kinks[k]), r, float(np.abs(L[k:, k]).max())) if rule is None
                         else (rule[k] if isinstance(rule, list) else rule))
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


# ---------------------------------------------------------------------------------
# Three and four inputs at once: two-block Hermite series
# ---------------------------------------------------------------------------------
#
# E[F(x) G(y)] for x, y standard normal in R^2 with E[x y^T] = R (2 x 2) is
# sum_n <A^(n), S^(n)(R) B^(n)>, where A^(n), B^(n) are the degree-n normalized Hermite
# coefficients of F and G (n + 1 each) and S^(n)(R) = E[h_alpha(x) h_beta(y)] is R's action on
# the n-th Wiener chaos: S_ij = sqrt(i!(n-i)!/(j!(n-j)!)) [u1^i u2^(n-i)] (r11 u1 + r21 u2)^j
# (r12 u1 + r22 u2)^(n-j) (Wick's theorem; Slepian 1972). With F = phi_a phi_b in the Cholesky
# coordinates of (z_a, z_b) and G = phi_c phi_d in those of (z_c, z_d), one table of coefficients
# per pair of inputs serves every set of four: a set costs one 2 x 2 R and the series, no
# quadrature. |<A^(n), S^(n) B^(n)>| <= s^n |A^(n)| |B^(n)| with s = |R|_2 (the largest canonical
# correlation between the pairs), so the remainder after degree n is bounded by Cauchy-Schwarz
# with the Parseval tails of F and G: s^(n+1) sqrt(tail_F tail_G). Of a set's three pairings the
# one with the smallest s is summed; a set whose bound does not reach ``tol`` by degree ``kmax``
# (pairs near parallel) is reported, and the caller integrates it by quadrature. Sets of three
# (phi_a^2 phi_b phi_c, ...) are the same series with G of one variable.

_SERIES_KMAX = 64
_GH_PER_VAR, _GH_MAX = 100.0, 512.0


@lru_cache(maxsize=16)
def _gh_hermite(m: int, kmax: int):
    """Gauss-Hermite rule of m nodes (weights summing to 1) and w_j h_k(x_j), k <= kmax."""
    from limitlab.numerics.gaussian import _hermite_matrix

    from scipy.special import roots_hermitenorm  # NumPy's hermegauss overflows past m ~ 300

    x, w = roots_hermitenorm(m)
    w = w / w.sum()
    Hw = _hermite_matrix(x, kmax + 1) * w[:, None]
    for a in (x, w, Hw):
        a.flags.writeable = False
    return x, w, Hw


def _gh_size(q: float, kmax: int) -> int:
    """Gauss-Hermite nodes a coordinate for the tables at variance q: more than kmax, and enough
    that aliasing keeps the coefficients used to ~1e-13. For phi analytic in the strip
    |Im z| < tau the rule's error falls like exp(-2 tau sqrt(2 m) / sqrt(q)), so m grows like q:
    measured against power_expectations for tanh, m = 80 suffices at q = 0.5 and ~100 q above
    (q = 3: m = 190 is off by 1e-10, 250 by 4e-15). A multiple of 16 (few distinct rules)."""
    return int(16 * math.ceil(max(80.0, kmax + 16.0, min(_GH_MAX, _GH_PER_VAR * q)) / 16))


def _parity(f) -> int:
    """1 if f is even, -1 if odd (exactly, on sample points), else 0."""
    t = np.linspace(0.05, 12.0, 240)
    v, u = np.asarray(f(t), dtype=float), np.asarray(f(-t), dtype=float)
    return 1 if np.array_equal(u, v) else (-1 if np.array_equal(u, -v) else 0)


def _block_tables(fs, K, kmax, pairs=None):
    """Hermite tables of the two-block series for the functions ``fs`` (F of them). Per pair a < b
    (all, or the rows of ``pairs``, an (P, 2) array; ``row[a, b]`` the table row of (a, b), -1 where
    none) and type t = F r + s: the coefficients of f_r(z_a) f_s(z_b) in the pair's Cholesky
    coordinates, flat over (n, i) (offset n(n+1)/2 + i, i the power of the first coordinate),
    scaled two ways (times and over sqrt(i!(n-i)!), the forms the series use), their norms and
    Parseval tails per degree; per input and unordered (r, s): the same for f_r f_s of one variable
    (type ``prod[r, s]``). Tensor Gauss-Hermite rule (:func:`_gh_size` nodes a coordinate), the
    second coordinate integrated first, half the grid for an odd or even function (the nodes are
    symmetric); the pairs are shared among threads (NumPy and BLAS release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from limitlab.numerics.arrays import single_threaded_blas

    F = len(fs)
    N = K.shape[0]
    q = np.diagonal(K).copy()
    K1 = kmax + 1
    nf = K1 * (K1 + 1) // 2
    deg = np.concatenate([np.full(n + 1, n) for n in range(K1)])
    first = np.concatenate([np.arange(n + 1) for n in range(K1)])
    starts = np.array([n * (n + 1) // 2 for n in range(K1)])
    lf = np.array([math.lgamma(k + 1.0) for k in range(K1)])
    up = np.exp(0.5 * (lf[first] + lf[deg - first]))  # sqrt(i! (n - i)!)
    keep = (first, deg - first)  # the (i, n - i) entries of a K1 x K1 coefficient matrix

    def tails(C, E2, per):  # -> (..., K1 + 1): E[f^2] minus the squares kept below degree n
        done = np.concatenate([np.zeros(C.shape[:-1] + (1,)), np.cumsum(per, axis=-1)], axis=-1)
        return np.maximum(E2[..., None] - done, 0.0) + 1e-15 * E2[..., None]

    prod = np.zeros((F, F), dtype=np.int64)
    kinds = []
    for r in range(F):
        for t in range(r, F):
            prod[r, t] = prod[t, r] = len(kinds)
            kinds.append((r, t))
    one = np.zeros((len(kinds), N, K1))
    E1 = np.zeros((len(kinds), N))
    sizes = [_gh_size(qi, kmax) for qi in q]
    for i in range(N):
        x, w, Hw = _gh_hermite(sizes[i], kmax)
        v = [np.asarray(f(math.sqrt(q[i]) * x), dtype=float) for f in fs]
        for u, (r, t) in enumerate(kinds):
            g = v[r] * v[t]
            one[u, i], E1[u, i] = g @ Hw, (g * g) @ w
    parity = [_parity(f) for f in fs]
    I, J = np.triu_indices(N, 1) if pairs is None else (pairs[:, 0], pairs[:, 1])
    row = np.full((N, N), -1, dtype=np.int64)
    row[I, J] = np.arange(I.size)
    two = np.zeros((F * F, I.size, nf))
    E2 = np.zeros((F * F, I.size))
    m_pair = np.maximum(np.array(sizes)[I], np.array(sizes)[J])

    def work(ps):  # pairs sharing one rule
        x, w, Hw = _gh_hermite(int(m_pair[ps[0]]), kmax)
        m = x.size
        a, b = I[ps], J[ps]
        rho = K[a, b] / np.sqrt(q[a] * q[b])
        sa = [np.asarray(f(np.sqrt(q[a])[:, None] * x[None, :]), dtype=float) for f in fs]  # (P, m) each
        for t, g in enumerate(fs):
            h = m // 2 if parity[t] else m
            sb = np.empty((ps.size, m, m))
            sb[:, :h] = g(np.sqrt(q[b])[:, None, None] * (rho[:, None, None] * x[None, :h, None]
                          + np.sqrt(np.maximum(1.0 - rho * rho, 0.0))[:, None, None] * x[None, None, :]))
            if parity[t]:
                sb[:, h:] = parity[t] * sb[:, h - 1::-1, ::-1]
            # Y[p, j, l] = E[f_t(z_b) h_l(x2) | x1 = x_j], one GEMM; then one small product per f_r
            Y = (sb.reshape(-1, m) @ Hw).reshape(ps.size, m, K1)
            sb2 = (sb * sb) @ w
            for r in range(F):
                C = np.matmul((Hw[None] * sa[r][:, :, None]).transpose(0, 2, 1), Y)
                two[F * r + t, ps] = C[:, keep[0], keep[1]]
                E2[F * r + t, ps] = np.einsum("pj,pj->p", w * sa[r] * sa[r], sb2)

    threads = max(1, min(nb.get_num_threads(), I.size // 8))
    jobs = []
    for mv in np.unique(m_pair):
        ps = np.nonzero(m_pair == mv)[0]
        jobs += np.array_split(ps, max(1, -(-ps.size * mv * mv // (1 << 18))))  # ~2 MB of f(z_b) a job
    with single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, jobs))
    norms = np.sqrt(np.add.reduceat(two * two, starts, axis=-1))
    return dict(one=one, one_tails=tails(one, E1, one * one), prod=prod, two_up=two * up, two_down=two / up,
                two_norms=norms, two_tails=tails(two, E2, norms ** 2), lf=lf, row=row)


@nb.njit(cache=True)
def _pair_cholesky(K, i, j):
    """The lower Cholesky factor (l11, l21, l22) of K on (i, j); l22 = 0 where the pair is parallel
    to rounding (no second coordinate)."""
    l11 = math.sqrt(K[i, i])
    l21 = K[i, j] / l11
    l22 = math.sqrt(max(K[j, j] - l21 * l21, 0.0))
    return l11, l21, (l22 if l22 > 1e-7 * l11 else 0.0)


@nb.njit(cache=True)
def _whitened_cross(K, i, j, k, l):
    """R = E[x y^T] for x, y the Cholesky coordinates of (z_i, z_j) and (z_k, z_l); all NaN where
    a pair is parallel to rounding (no second coordinate)."""
    a11, a21, a22 = _pair_cholesky(K, i, j)
    b11, b21, b22 = _pair_cholesky(K, k, l)
    if a22 == 0.0 or b22 == 0.0:
        return np.nan, np.nan, np.nan, np.nan
    m11 = K[i, k] / a11
    m12 = K[i, l] / a11
    m21 = (K[j, k] - a21 * m11) / a22
    m22 = (K[j, l] - a21 * m12) / a22
    r11 = m11 / b11
    r21 = m21 / b11
    return r11, (m12 - b21 * r11) / b22, r21, (m22 - b21 * r21) / b22


@nb.njit(cache=True)
def _top_singular(r11, r12, r21, r22):
    f = r11 * r11 + r12 * r12 + r21 * r21 + r22 * r22
    d = r11 * r22 - r12 * r21
    return math.sqrt(0.5 * (f + math.sqrt(max(f * f - 4.0 * d * d, 0.0))))


@nb.njit(cache=True)
def _block_series(Au, An, At, Bd, Bn, Bt, r11, r12, r21, r22, s, kmax, tol, T, U, Pw):
    """sum_n <A^(n), S^(n)(R) B^(n)> (module note): for each degree, Q = sum_j b_j c1^j c2^(n-j)
    by Horner in c1 (c1 = r11 u1 + r21 u2, c2 = r12 u1 + r22 u2, the powers of c2 kept in Pw),
    then <a, Q>. Au: A times sqrt(i!(n-i)!), Bd: B over it; An, Bn: the norms |A^(n)|, |B^(n)|;
    At, Bt: the Parseval tails. The sum stops at the first degree n whose remainder bound
    sum_{n' = n..kmax} s^n' |A^(n')| |B^(n')| + s^(kmax + 1) sqrt(tail_A tail_B) is below
    tol sqrt(E[F^2] E[G^2]). Returns (value, converged)."""
    scale = math.sqrt(At[0] * Bt[0])
    U[0] = 1.0  # U: the powers s^n until the sum starts
    for n in range(1, kmax + 2):
        U[n] = U[n - 1] * s
    rem = U[kmax + 1] * math.sqrt(At[kmax + 1] * Bt[kmax + 1])
    stop = kmax + 1
    if rem > tol * scale:
        return np.nan, False
    for n in range(kmax, 0, -1):
        rem += U[n] * An[n] * Bn[n]
        if rem > tol * scale:
            break
        stop = n
    val = Au[0] * Bd[0]
    Pw[0, 0] = 1.0
    T[0] = 0.0
    U[0] = 0.0
    for n in range(1, stop):
        # Pw[n] = c2^n: coefficients of u1^i u2^(n-i), i = 0..n
        Pw[n, 0] = r22 * Pw[n - 1, 0]
        for i in range(1, n):
            Pw[n, i] = r12 * Pw[n - 1, i - 1] + r22 * Pw[n - 1, i]
        Pw[n, n] = r12 * Pw[n - 1, n - 1]
        o = n * (n + 1) // 2
        # the form of degree d sits at T[1 .. d + 1]; T[0] = U[0] = 0 pad the shift
        T[1] = Bd[o + n]
        for d in range(0, n):
            bk = Bd[o + n - 1 - d]
            T[d + 2] = 0.0
            pw = Pw[d + 1]
            for i in range(d + 2):
                U[i + 1] = r11 * T[i] + r21 * T[i + 1] + bk * pw[i]
            T, U = U, T
        tot = 0.0
        for i in range(n + 1):
            tot += Au[o + i] * T[i + 1]
        val += tot
    return val, True


@nb.njit(cache=True)
def _pairing(u):
    """The positions (j, k, l) of pairing u of a sorted set of four: (0, j) against (k, l)."""
    return (1, 2, 3) if u == 0 else ((2, 1, 3) if u == 1 else (3, 1, 2))


@nb.njit(cache=True)
def _best_pairing(K, m):
    """(s, u): the pairing u of the sorted set of four m with the smallest top canonical correlation
    s between its two pairs; s = inf where every pairing has a parallel pair (NaN never wins)."""
    best, u0 = np.inf, 0
    for u in range(3):
        j, k, l = _pairing(u)
        s = _top_singular(*_whitened_cross(K, m[0], m[j], m[k], m[l]))
        if s < best:
            best, u0 = s, u
    return best, u0


@nb.njit(cache=True)
def _doubled_input(m):
    """For a sorted multiset (i, i, j, k), (j, i, i, k) or (j, k, i, i): (i, j, k, p), p the position of
    i's first occurrence."""
    if m[0] == m[1]:
        return m[0], m[2], m[3], 0
    if m[1] == m[2]:
        return m[1], m[0], m[3], 1
    return m[2], m[0], m[1], 2


@nb.njit(parallel=True, cache=True)
def _four_input_series(K, sets, roles, F, row, up, down, norms, tails, kmax, tol, chunks, out, ok, s_out):
    """Sets of four distinct sorted inputs; roles[t, i]: the function (of F) at sets[t, i]; s_out:
    the canonical correlation each was summed at."""
    for ch in nb.prange(chunks):
        T = np.empty(kmax + 3)
        U = np.empty(kmax + 3)
        Pw = np.empty((kmax + 1, kmax + 1))  # row n: c2^n, entries 0..n
        for t in range(ch, sets.shape[0], chunks):
            best, u0 = _best_pairing(K, sets[t])
            s_out[t] = best
            if not best < 1.0:
                out[t] = np.nan
                ok[t] = False
                continue
            j, k, l = _pairing(u0)
            a, b, c, d = sets[t, 0], sets[t, j], sets[t, k], sets[t, l]
            r11, r12, r21, r22 = _whitened_cross(K, a, b, c, d)
            p, p2 = row[a, b], row[c, d]
            ta, tb = F * roles[t, 0] + roles[t, j], F * roles[t, k] + roles[t, l]
            out[t], ok[t] = _block_series(up[ta, p], norms[ta, p], tails[ta, p], down[tb, p2], norms[tb, p2],
                                          tails[tb, p2], r11, r12, r21, r22, best, kmax, tol, T, U, Pw)


@nb.njit(cache=True)
def _pair_single_series(Ad, At, g, gt, n_max, r1, r2, s, sqf, tol):
    """E[F(x) g(y)] for x the Cholesky coordinates of a pair, y one standardized input with
    E[x y] = (r1, r2): sum_n g_n sum_i A_ni sqrt(n!/(i!(n-i)!)) r1^i r2^(n-i). Ad: A over
    sqrt(i!(n-i)!), sqf[n] = sqrt(n!). Returns (value, converged)."""
    val = Ad[0] * g[0]
    scale = math.sqrt(At[0] * gt[0])
    sn = 1.0
    for n in range(1, n_max + 1):
        sn *= s
        if sn * math.sqrt(At[n] * gt[n]) <= tol * scale:
            return val, True
        o = n * (n + 1) // 2
        # sum_i Ad_i r1^i r2^(n-i) by Horner in u1 on the form's coefficients (no division by r2)
        acc = Ad[o + n]
        p2 = 1.0
        for i in range(n - 1, -1, -1):
            p2 *= r2
            acc = acc * r1 + Ad[o + i] * p2
        val += g[n] * sqf[n] * acc
    return val, sn * s * math.sqrt(At[n_max + 1] * gt[n_max + 1]) <= tol * scale


@nb.njit(cache=True)
def _pair_single_cross(K, i, j, c):
    """E[x y] for x the Cholesky coordinates of (z_i, z_j), y = z_c / sqrt(K_cc); NaN where the pair
    is parallel to rounding."""
    a11, a21, a22 = _pair_cholesky(K, i, j)
    if a22 == 0.0:
        return np.nan, np.nan
    sc = math.sqrt(K[c, c])
    r1 = K[i, c] / a11
    return r1 / sc, (K[j, c] - a21 * r1) / a22 / sc


@nb.njit(parallel=True, cache=True)
def _three_input_series(K, sets, roles, F, prod, row, down, tails, one, one_tails, kmax, sqf, tol, out, ok, s_out):
    """sets (T, 4): sorted index multisets with one index i twice, (i, i, j, k), ...; roles as for
    the sets of four: E[(f_j f_k)(z_j, z_k) (f f')(z_i)], the pair (j, k) against the product of
    the doubled input's two functions, of one variable."""
    for t in nb.prange(sets.shape[0]):
        i, j, k, pi = _doubled_input(sets[t])
        pj, pk = (2, 3) if pi == 0 else ((0, 3) if pi == 1 else (0, 1))
        r1, r2 = _pair_single_cross(K, j, k, i)
        s = math.sqrt(r1 * r1 + r2 * r2)
        s_out[t] = s if s < 1.0 else np.inf
        if not s < 1.0:  # NaN: (j, k) parallel to rounding
            out[t] = np.nan
            ok[t] = False
            continue
        p, tp = row[j, k], F * roles[t, pj] + roles[t, pk]
        out[t], ok[t] = _pair_single_series(down[tp, p], tails[tp, p], one[prod[roles[t, pi], roles[t, pi + 1]], i],
                                            one_tails[prod[roles[t, pi], roles[t, pi + 1]], i], kmax, r1, r2, s,
                                            sqf, tol)


@lru_cache(maxsize=4)
def _multisets(N: int):
    """Sorted index multisets with three distinct inputs (one twice) and with four."""
    three = [m for a, b, c in itertools.combinations(range(N), 3) for m in ((a, a, b, c), (a, b, b, c), (a, b, c, c))]
    out = (np.array(three, dtype=np.int64).reshape(-1, 4),
           np.array(list(itertools.combinations(range(N), 4)), dtype=np.int64).reshape(-1, 4))
    for o in out:
        o.flags.writeable = False
    return out


def _series_pass(fs, K, three, r3, four, r4, tol, kmax, pairs=None):
    """Values, ok and the canonical correlation s of the sets of three then of four."""
    tab = _block_tables(fs, K, kmax, pairs)
    F = len(fs)
    n3, n4 = len(three), len(four)
    v, ok, s = np.empty(n3 + n4), np.empty(n3 + n4, dtype=np.bool_), np.empty(n3 + n4)
    if n3:
        # O(n) a degree, so summed tighter (no cost): their errors stay well below the sets of four's
        _three_input_series(K, three, r3, F, tab["prod"], tab["row"], tab["two_down"], tab["two_tails"], tab["one"],
                            tab["one_tails"], kmax, np.exp(0.5 * tab["lf"]), 0.1 * tol, v[:n3], ok[:n3], s[:n3])
    if n4:
        _four_input_series(K, four, r4, F, tab["row"], tab["two_up"], tab["two_down"], tab["two_norms"],
                           tab["two_tails"], kmax, tol, 8 * nb.get_num_threads(), v[n3:], ok[n3:], s[n3:])
    return v, ok, s


def _pairs_of(three, four):
    """The pairs the series may use: (j, k) of each (i, i, j, k)-type multiset, all three pairings'
    of each set of four."""
    out = [_doubled_input(m)[1:3] for m in three]
    for a, b, c, d in four:
        out += [(a, b), (c, d), (a, c), (b, d), (a, d), (b, c)]
    return np.unique(np.array(out, dtype=np.int64).reshape(-1, 2), axis=0)


# sets whose best canonical correlation exceeds this (near-parallel or linearly dependent inputs)
# would need thousands of degrees: no second pass, they go to the caller's quadrature at once
_RETRY_MAX_S = 1 - 1e-6


def series_products(fs: Sequence[Callable], K, sets, roles, tol: float = 1e-11, kmax: int = _SERIES_KMAX):
    """E[prod_t fs[roles[t]](z_sets[t])] under N(0, K) for sorted index multisets ``sets`` (T, 4)
    with three or four distinct inputs, ``roles`` (T, 4) the function at each position; by the
    two-block Hermite series (section note above); smooth functions. Returns (values, ok), with
    the accuracy and the meaning of ok of :func:`series_four_point`."""
    K = np.ascontiguousarray(K, dtype=float)
    sets = np.ascontiguousarray(sets, dtype=np.int64).reshape(-1, 4)
    roles = np.ascontiguousarray(roles, dtype=np.int64).reshape(-1, 4)
    rep = (np.diff(sets, axis=1) == 0).any(axis=1)
    v, ok = np.empty(len(sets)), np.empty(len(sets), dtype=bool)
    order = np.concatenate([np.nonzero(rep)[0], np.nonzero(~rep)[0]])
    s = np.empty(len(sets))
    v[order], ok[order], s[order] = _series_pass(fs, K, sets[rep], roles[rep], sets[~rep], roles[~rep], tol, kmax)
    hopeless = s > _RETRY_MAX_S
    for k in (2 * kmax, 4 * kmax):  # what is left, on tables of just the pairs it uses
        bad = np.nonzero(~ok & ~hopeless)[0]
        if not bad.size:
            break
        br = rep[bad]
        b3, b4 = sets[bad[br]], sets[bad[~br]]
        v2, ok2, _ = _series_pass(fs, K, b3, roles[bad[br]], b4, roles[bad[~br]], tol, k, _pairs_of(b3, b4))
        order = np.concatenate([bad[br], bad[~br]])
        v[order], ok[order] = v2, ok2
    return v, ok


def series_four_point(phi: Callable, K, tol: float = 1e-11, kmax: int = _SERIES_KMAX):
    """E[phi_a phi_b phi_c phi_d] under N(0, K) for every multiset of indices with three or four
    distinct inputs, by the two-block Hermite series (section note above); phi smooth (for kinks
    the coefficients decay too slowly). Returns (sets (T, 4) sorted multisets, values (T,), ok (T,)):
    each value is within ``tol`` sqrt(E[F^2] E[G^2]) (F, G the series' two factors) plus the
    tables' quadrature error (~1e-13) of the expectation; where ok is False the series did not
    reach that by degree ``kmax``, nor by 2 and 4 kmax on passes over the pairs of the sets left
    (large variances; sets at a canonical correlation above 1 - 1e-6, near-parallel or linearly
    dependent inputs, get no second pass), and the value is not to be used."""
    three, four = _multisets(np.asarray(K).shape[0])
    sets = np.concatenate([three, four])
    v, ok = series_products((phi,), K, sets, np.zeros(sets.shape, dtype=np.int64), tol, kmax)
    return sets, v, ok

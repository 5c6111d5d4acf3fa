"""Spectra of dot-product kernels on the sphere S^{d-1} (Funk–Hecke / Gegenbauer).

A kernel k(x, x') = k(t), t = <x, x'>/(|x||x'|), on the uniform probability measure of
S^{d-1} has the spherical harmonics of degree l as eigenfunctions, with multiplicity

    N(d, l) = (2l + d - 2)/l * C(l + d - 3, l - 1)   (N(d, 0) = 1),

and eigenvalue (Funk–Hecke formula; Atkinson & Han, "Spherical Harmonics and Approximations
on the Unit Sphere", Springer 2012, Thm 2.22; Smola, Ovari, Williamson 2001, Thm 2)

    lambda_l = Gamma(d/2)/(sqrt(pi) Gamma((d-1)/2)) * int_{-1}^{1} k(t) P_l^d(t) (1 - t^2)^{(d-3)/2} dt,

with P_l^d the Legendre polynomial in d dimensions, P_l^d(1) = 1, from the recurrence
P_{l+1} = ((2l + d - 2) t P_l - l P_{l-1})/(l + d - 2). Then k(t) = sum_l N(d, l) lambda_l P_l^d(t),
so sum_l N(d, l) lambda_l = k(1) (the trace) — reported as a closure check.

The integral uses Gauss–Jacobi (Gauss–Gegenbauer) quadrature with the weight
(1 - t^2)^{(d-3)/2} built in, so arc-cosine-type kernels (square-root singularities at
t = +-1) still converge fast. The nodes and weights are computed for any d by the
Golub–Welsch method (G. H. Golub, J. H. Welsch, "Calculation of Gauss quadrature rules",
Math. Comp. 23 (1969) 221-230): the nodes are the eigenvalues of the symmetric tridiagonal
Jacobi matrix of the orthonormal Gegenbauer polynomials (diagonal 0, off-diagonal
b_k = sqrt(k (k + 2 nu - 1) / (4 (k + nu)(k + nu - 1))), nu = (d - 2)/2; the recurrence
of the Gegenbauer polynomials C_k^nu, Szegő, "Orthogonal Polynomials", eq. (4.7.17)), and
the weights of the normalized measure are the Christoffel numbers
w_j = 1 / sum_{k<n} p_k(t_j)^2, p_k the orthonormal polynomials (Golub & Welsch, eq. (2.5);
Gautschi, "Orthogonal Polynomials", Oxford 2004, Thm 1.46), summed with rescaling so that
no term overflows. The prefactor Gamma(d/2)/(sqrt(pi) Gamma((d-1)/2)) is the inverse of
the weight's total mass, so the normalized weights need no Gamma functions at all.
(scipy.special.roots_jacobi overflows for d >~ 400: its weights carry Gamma(d/2)-sized
constants.) d = 2 uses the Gauss–Chebyshev rule t_j = cos((2j - 1) pi / (2n)), w_j = 1/n.

Accuracy: absolute, ~1e-14 k(1) per eigenvalue (the eigenvalues come from cancelling sums
of terms of size k(1)). In high dimension lambda_l ~ k^(l)(0) d^-l, so only the degrees
with lambda_l well above 1e-14 k(1) are resolved (d = 1000: l <= 4); the trace closure is
then dominated by N(d, l) times the rounding of the unresolved ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigvalsh_tridiagonal
from scipy.special import gammaln

from limitlab.numerics import validation as validate

__all__ = ["SphereSpectrum", "sphere_spectrum", "multiplicity", "legendre_d", "dot_product_kernel",
           "gegenbauer_quadrature"]


def multiplicity(d, degree):
    """N(d, l): the dimension of the degree-l spherical harmonics on S^{d-1} (float, exact for < 2^53).

    ``d`` is an integer >= 2 (S^1 is the circle); ``degree`` integers >= 0 (array or scalar).
    """
    d = validate.integer(d, "d", minimum=2, meaning="the sphere S^(d-1) lies in R^d")
    l = np.asarray(degree)
    if l.dtype.kind not in "iu" and not (l.dtype.kind == "f" and np.all(l == np.round(l))):
        raise TypeError(f"degree: must be integers, got {degree!r}")
    if np.any(l < 0):
        raise ValueError(f"degree: must be integers >= 0, got {degree!r}")
    if d == 2:
        return np.where(l == 0, 1.0, 2.0)
    lf = np.where(l == 0, 1.0, l.astype(float))  # degree 0 handled below (no 0/0: a NaN there once
    # made the all(val < 2^53) test below fail for every array holding degree 0, so no count was rounded)
    logc = gammaln(lf + d - 2) - gammaln(lf) - gammaln(d - 1.0)  # log C(l + d - 3, l - 1)
    val = (2 * lf + d - 2) / lf * np.exp(logc)
    val = np.where(val < 2 ** 53, np.round(val), val)  # exact integers where a float can hold them
    out = np.where(l == 0, 1.0, val)
    return out if out.ndim else float(out)


def legendre_d(max_degree, d, t):
    """P_l^d(t) for l = 0..max_degree (rows), normalized to P_l^d(1) = 1."""
    t = np.asarray(t, float)
    P = np.empty((max_degree + 1,) + t.shape)
    P[0] = 1.0
    if max_degree >= 1:
        P[1] = t
    for l in range(1, max_degree):
        P[l + 1] = ((2 * l + d - 2) * t * P[l] - l * P[l - 1]) / (l + d - 2)
    return P


def dot_product_kernel(model, kind="ntk"):
    """k(t) from a limiting-kernel object with ``.ntk(X1, X2)`` / ``.nngp(X1, X2)`` (e.g. theory.kernels.MLP).

    On inputs with |x|^2 = dim (x.x'/dim = t) a dot-product kernel depends on t only; it is
    evaluated on 2-dimensional inputs sqrt(2)(1, 0) and sqrt(2)(t, sqrt(1 - t^2)), which give
    the same x.x'/dim for every t.
    """
    if kind not in ("ntk", "nngp"):
        raise ValueError(f"kind: must be 'ntk' or 'nngp', got {kind!r}")
    fn = getattr(model, kind, None)
    if not callable(fn):
        raise TypeError(f"model: needs a callable .{kind}(X1, X2), got {type(model).__name__}")

    def k(t):
        t = np.clip(np.asarray(t, float), -1.0, 1.0)
        X1 = np.array([[math.sqrt(2.0), 0.0]])
        X2 = math.sqrt(2.0) * np.stack([t.ravel(), np.sqrt(1.0 - t.ravel() ** 2)], axis=1)
        return np.asarray(fn(X1, X2))[0].reshape(t.shape)

    return k


def gegenbauer_quadrature(nodes, d):
    """Gauss quadrature for the probability measure on [-1, 1] with density proportional to
    (1 - t^2)^{(d-3)/2} (the law of one coordinate of a uniform point of S^{d-1}), for any d >= 2.

    Returns (t, w), increasing nodes and positive weights summing to 1, exact for
    polynomials of degree < 2 ``nodes``. Golub–Welsch (module docstring): eigenvalues of
    the Jacobi matrix, Christoffel weights; d = 2 is Gauss–Chebyshev.
    """
    d = validate.integer(d, "d", minimum=2, meaning="the sphere S^(d-1) lies in R^d")
    n = validate.integer(nodes, "nodes", minimum=1)
    if d == 2:
        t = np.cos((2 * np.arange(n, 0, -1) - 1) * np.pi / (2 * n))
        return t, np.full(n, 1.0 / n)
    nu = (d - 2) / 2.0
    k = np.arange(1, n, dtype=float)
    b = np.sqrt(k * (k + 2 * nu - 1) / (4 * (k + nu) * (k + nu - 1)))
    t = np.sort(eigvalsh_tridiagonal(np.zeros(n), b)) if n > 1 else np.zeros(1)
    t = 0.5 * (t - t[::-1])  # the measure is even: exact symmetry of the rule
    # Christoffel numbers 1/sum_k p_k(t)^2 on the half t >= 0, rescaled by 2^-1000 against overflow
    half = t[n // 2:]
    p_prev, p = np.zeros_like(half), np.ones_like(half)
    S = np.ones_like(half)
    scale = np.zeros(half.shape, dtype=np.int64)
    for j in range(n - 1):
        p_prev, p = p, (half * p - (b[j - 1] if j else 0.0) * p_prev) / b[j]
        S += p * p
        big = np.abs(p) > 2.0 ** 500
        if big.any():
            p[big] = np.ldexp(p[big], -500)
            p_prev[big] = np.ldexp(p_prev[big], -500)
            S[big] = np.ldexp(S[big], -1000)
            scale[big] += 1
    w_half = np.ldexp(1.0 / S, -1000 * scale)
    w = np.concatenate((w_half[::-1][: n // 2], w_half)) if n % 2 else np.concatenate((w_half[::-1], w_half))
    return t, w / w.sum()


@dataclass
class SphereSpectrum:
    """eigenvalues[l] (one per degree), multiplicities[l], and the trace closure k(1) - sum N lambda."""

    d: int
    eigenvalues: np.ndarray
    multiplicities: np.ndarray
    trace: float
    trace_residual: float

    def expanded(self):
        """(eigenvalues, degrees) with each degree repeated by its multiplicity (small d only)."""
        m = self.multiplicities.astype(np.int64)
        if m.sum() > 5_000_000:
            raise ValueError(f"multiplicities: {int(m.sum())} eigenfunctions are too many to expand; "
                             "pass multiplicities= to the eigenframework instead")
        return np.repeat(self.eigenvalues, m), np.repeat(np.arange(m.size), m)


def sphere_spectrum(kernel, d, max_degree, nodes=None) -> SphereSpectrum:
    """Eigenvalues of the dot-product kernel ``kernel(t)`` on S^{d-1}, degrees 0..max_degree.

    ``kernel`` is a NumPy-vectorized function of the cosine t, or an object with ``.ntk``
    (see :func:`dot_product_kernel`, used with kind='ntk'). ``nodes``: Gauss–Jacobi nodes
    (default max(4 max_degree, 1024)). Any integer d >= 2 works (Golub–Welsch nodes, see the
    module docstring); eigenvalues below ~1e-14 k(1) are rounding noise.
    """
    d = validate.integer(d, "d", minimum=2, meaning="the sphere S^(d-1) lies in R^d")
    validate.integer(max_degree, "max_degree", minimum=0)
    if not callable(kernel):
        kernel = dot_product_kernel(kernel, "ntk")
    t, w = gegenbauer_quadrature(max(4 * max_degree, 1024) if nodes is None else nodes, d)
    kt = np.asarray(kernel(t), float)
    if kt.shape != t.shape or not np.all(np.isfinite(kt)):
        raise ValueError("kernel: must return finite values shaped like its input t")
    P = legendre_d(max_degree, d, t)
    lam = (P * (w * kt)[None, :]).sum(axis=1)
    mult = np.asarray(multiplicity(d, np.arange(max_degree + 1)), float)
    k1 = float(np.asarray(kernel(np.array([1.0])), float)[0])
    return SphereSpectrum(int(d), lam, mult, k1, k1 - float(np.sum(mult * lam)))

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

The integral uses Gauss–Jacobi quadrature with the weight (1 - t^2)^{(d-3)/2} built in, so
arc-cosine-type kernels (square-root singularities at t = +-1) still converge fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, roots_jacobi

__all__ = ["SphereSpectrum", "sphere_spectrum", "multiplicity", "legendre_d", "dot_product_kernel"]


def multiplicity(d, degree):
    """N(d, l): the dimension of the degree-l spherical harmonics on S^{d-1} (float, exact for < 2^53)."""
    l = np.asarray(degree)
    if d == 2:
        return np.where(l == 0, 1.0, 2.0)
    lf = l.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = gammaln(lf + d - 2) - gammaln(lf) - gammaln(d - 1.0)  # log C(l + d - 3, l - 1)
        val = (2 * lf + d - 2) / lf * np.exp(logc)
    out = np.where(l == 0, 1.0, np.round(val) if np.all(val < 2 ** 53) else val)
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
    (default max(4 max_degree, 1024)).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d: must be an integer >= 2, got {d!r}")
    if isinstance(max_degree, bool) or not isinstance(max_degree, (int, np.integer)) or max_degree < 0:
        raise ValueError(f"max_degree: must be an integer >= 0, got {max_degree!r}")
    if not callable(kernel):
        kernel = dot_product_kernel(kernel, "ntk")
    nodes = int(nodes or max(4 * max_degree, 1024))
    a = (d - 3) / 2.0
    t, w = roots_jacobi(nodes, a, a)
    c = math.exp(gammaln(d / 2) - 0.5 * math.log(math.pi) - gammaln((d - 1) / 2))
    kt = np.asarray(kernel(t), float)
    if kt.shape != t.shape or not np.all(np.isfinite(kt)):
        raise ValueError("kernel: must return finite values shaped like its input t")
    P = legendre_d(max_degree, d, t)
    lam = c * (P * (w * kt)[None, :]).sum(axis=1)
    mult = np.asarray(multiplicity(d, np.arange(max_degree + 1)), float)
    k1 = float(np.asarray(kernel(np.array([1.0])), float)[0])
    return SphereSpectrum(int(d), lam, mult, k1, k1 - float(np.sum(mult * lam)))

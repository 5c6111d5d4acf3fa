"""Benchmark: limitlab's solvers against the SciPy routines that could replace them.

1. Random-features reduced equation h(P) = 0 on a 200 x 200 (psi1, psi2) grid, ridge 1e-3
   (theory/risk/random_features.py): its compiled safeguarded Newton (Numba, parallel) vs
   ``numerics.solvers.find_root`` (vectorized Illinois) vs SciPy's
   ``scipy.optimize.elementwise.find_root`` (vectorized Chandrupatla), relative tolerance 1e-15.
2. Barycentric interpolation at Chebyshev points (numerics/gaussian.py ``_barycentric``) vs
   ``scipy.interpolate.BarycentricInterpolator``, several columns at once.

Prints best-of-5 wall times and the largest difference from the reference (the compiled
Newton root; the exact function for interpolation). Results: docs/benchmarks.md, "Solvers".

    NUMBA_NUM_THREADS=2 python benchmarks/bench_solvers.py
"""
from __future__ import annotations

import importlib
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from scipy.interpolate import BarycentricInterpolator  # noqa: E402
from scipy.optimize import elementwise  # noqa: E402

from limitlab.numerics.gaussian import _barycentric  # noqa: E402
from limitlab.numerics.solvers import find_root  # noqa: E402

rfm = importlib.import_module("limitlab.theory.risk.random_features")


def best(fn, repeats=5):
    fn()
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, min(ts)


def root_finding(n=200):
    p = np.geomspace(0.1, 10.0, n)
    P1, P2 = np.meshgrid(p, p, indexing="ij")
    p1, p2 = P1.ravel().copy(), P2.ravel().copy()
    _, mu1, mus = rfm.activation_coefficients("relu")
    s = np.sqrt(p1 * p2 * 1e-3 / mus ** 2)
    z2 = np.full(p1.size, (mu1 / mus) ** 2)
    m = np.minimum(p1, p2)
    b = 1.0 + z2 - m * z2
    pmax = 2.0 * m / (b + np.sqrt(b * b + 4.0 * z2 * m))

    def h(P, s=s, z2=z2, p1=p1, p2=p2):
        g = P * (1.0 + z2 / (1.0 + z2 * P))
        return s * s * P - (p1 - g) * (p2 - g)

    def compiled():
        out, it, ok = np.empty(p1.size), np.empty(p1.size, np.int64), np.empty(p1.size, np.bool_)
        rfm._solve_grid(p1, p2, s, z2, out, it, ok, 1e-15, 200)
        return out

    lo = np.zeros(p1.size)
    ref, t_ref = compiled(), None
    print(f"h(P) = 0 on a {n} x {n} grid, ridge 1e-3:")
    for name, fn in (("compiled Newton (random_features)", compiled),
                     ("numerics.solvers.find_root", lambda: find_root(h, (lo, pmax), tol=0.0, rtol=1e-15).value),
                     ("scipy.optimize.elementwise.find_root",
                      lambda: elementwise.find_root(h, (lo, pmax), args=(s, z2, p1, p2),
                                                    tolerances=dict(xatol=0.0, xrtol=1e-15)).x)):
        x, t = best(fn)
        t_ref = t_ref or t  # the compiled solver, measured first
        rel = np.max(np.abs(x - ref) / np.abs(ref))
        print(f"  {name:38s} {t * 1e3:8.2f} ms  ({t / t_ref:4.1f}x)  max rel. diff {rel:.1e}")


def interpolation(seed=0):
    rng = np.random.default_rng(seed)
    print("barycentric interpolation at Chebyshev points:")
    for n, m, K in ((17, 2000, 12), (65, 20000, 12), (257, 20000, 24)):
        x = np.cos(np.pi * np.arange(n) / (n - 1))

        def f(t):
            return np.stack([np.exp(0.3 * k * t) * np.cos(k * t) for k in range(K)], axis=1)

        V, xt = f(x), rng.uniform(-1, 1, m)
        exact = f(xt)
        for name, fn in (("numerics.gaussian._barycentric", lambda: _barycentric(xt, x, V)),
                         ("scipy BarycentricInterpolator", lambda: BarycentricInterpolator(x, V, axis=0)(xt))):
            y, t = best(fn)
            err = np.max(np.abs(y - exact) / np.maximum(1, np.abs(exact)))
            print(f"  {n:3d} nodes, {m:5d} points, {K:2d} columns  {name:32s} {t * 1e3:7.2f} ms  max error {err:.1e}")


if __name__ == "__main__":
    root_finding()
    interpolation()

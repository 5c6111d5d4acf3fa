"""Benchmark: a 200 x 200 (psi1, psi2) Mei–Montanari risk surface, every point converged.

Reports the wall time of the surface (target < 1 s on 2 cores), the time per point, and the
ratio to one simulated RF ridge regression at d = 400 (psi1 = psi2 = 1.5, ridge 1e-3).

    NUMBA_NUM_THREADS=2 python benchmarks/bench_risk_surface.py
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from limitlab.theory.risk import random_features  # noqa: E402
from limitlab.verify.risk.simulate import random_features_regression  # noqa: E402


def main(n=200, repeats=5, d=400):
    p = np.geomspace(0.1, 10.0, n)
    kw = dict(activation="relu", signal=1.0, nonlinear_signal=0.2, noise=0.1)
    random_features(p[:3], p[:3], 1e-3, **kw)  # compile / load the cached Numba code
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = random_features(p[:, None], p[None, :], 1e-3, **kw)
        times.append(time.perf_counter() - t)
    assert r.risk.shape == (n, n) and np.all(np.isfinite(r.risk))
    assert np.all(r.solver.residual <= 1e-12), "a point did not converge"
    best = min(times)
    ridgeless = min(_timeit(lambda: random_features(p[:, None], p[None, :], 0.0, **kw)) for _ in range(repeats))
    t = time.perf_counter()
    random_features_regression(d, 1.5, 1.5, 1e-3, seed=0, n_test=4 * d, **{k: v for k, v in kw.items()})
    sim = time.perf_counter() - t
    print(f"threads={os.environ['NUMBA_NUM_THREADS']}  surface {n}x{n} (ridge 1e-3): {best:.3f} s  "
          f"({best / n ** 2 * 1e6:.2f} us/point, max residual {r.solver.residual.max():.1e}, "
          f"max iterations {r.solver.iterations})")
    print(f"ridgeless surface: {ridgeless:.3f} s")
    print(f"one simulated RF regression at d={d} (N = n = 600, 1600 test points): {sim:.3f} s "
          f"= {sim / (best / n ** 2):.2e} theory points")
    return best


def _timeit(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

"""DMFT solver timings and their growth with P and T (run: python benchmarks/bench_dmft.py).

Targets (issue 4): two-layer tanh, P = 16, T = 200, 1e5 single sites: < 5 s on 2 cores;
deep linear, depth 5, P = 20, T = 100: < 5 s. The reference method (Bordelon & Pehlevan
2022) costs O(P^3 T^3) per iteration. Ours: two-layer O(samples P^2 T) (no outer loop);
deep linear O(L (P T)^3) per sweep, ~10 sweeps with the quasi-Newton output update.
Prints CPU-seconds next to wall seconds (the machine may be shared). On a loaded machine set
OPENBLAS_NUM_THREADS=1: oversubscribed BLAS threads made the deep-linear sweeps 15x slower.
``--full`` also runs deep linear at T = 100 (minutes); by default it is extrapolated.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from limitlab.theory.dynamics import dmft


def _data(P, D=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    X *= np.sqrt(D) / np.linalg.norm(X, axis=1, keepdims=True)
    return dmft.input_kernel(X), np.tanh(X[:, 0])


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def slope(xs, ts):
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def main(quick: bool = False, full: bool = False):
    kx, y = _data(16)
    dmft.two_layer(kx, y, "tanh", 1.0, 2, 0.05, samples=1000, seed=0)  # compile (cached on disk afterwards)
    S = 20_000 if quick else 100_000
    _, wall, cpu = timed(lambda: dmft.two_layer(kx, y, "tanh", 1.0, 200, 0.05, samples=S, seed=0, snapshots=2))
    print(f"two-layer tanh P=16 T=200 samples={S}: wall {wall:.2f} s, cpu {cpu:.2f} s (target < 5 s)")
    Ps, Ts = (4, 8, 16, 32), (50, 100, 200, 400)
    tp = [timed(lambda: dmft.two_layer(*_data(P), "tanh", 1.0, 100, 0.05, samples=20_000, snapshots=2))[1] for P in Ps]
    tt = [timed(lambda: dmft.two_layer(kx, y, "tanh", 1.0, T, 0.05, samples=20_000, snapshots=2))[1] for T in Ts]
    print(f"  growth: time ~ P^{slope(Ps, tp):.2f} (reference P^3), T^{slope(Ts, tt):.2f} (reference T^3)")

    kx, y = _data(20)
    L = 5
    Ts = (10, 20) if quick else (10, 20, 40)
    tt = []
    for T in Ts:
        r, wall, cpu = timed(lambda: dmft.deep_linear(kx, y, L, 0.5, T, 0.02))
        tt.append(cpu)
        print(f"deep linear L={L} P=20 T={T}: wall {wall:.2f} s, cpu {cpu:.2f} s, {r.iterations} sweeps, "
              f"converged={r.converged}")
    e = slope(Ts, tt)
    print(f"  growth: cpu ~ T^{e:.2f} (reference T^3); extrapolated T=100: {tt[-1] * (100 / Ts[-1]) ** e:.0f} s "
          f"cpu (target < 5 s)")
    if full:
        r, wall, cpu = timed(lambda: dmft.deep_linear(kx, y, L, 0.5, 100, 0.02))
        print(f"deep linear L=5 P=20 T=100: wall {wall:.2f} s, cpu {cpu:.2f} s, {r.iterations} sweeps")
    Ps = (5, 10, 20)
    tp = [timed(lambda: dmft.deep_linear(kx[:P, :P], y[:P], L, 0.5, 10, 0.02))[2] for P in Ps]
    print(f"  growth: cpu ~ P^{slope(Ps, tp):.2f} at T=10 (reference P^3)")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv, full="--full" in sys.argv)

"""DMFT solver timings and their growth with P and T (run: python benchmarks/bench_dmft.py).

Targets: two-layer tanh, P = 16, T = 200, 1e5 single sites: < 5 s on 2 cores;
deep linear, depth 5, P = 20, T = 100: < 5 s. The reference method (Bordelon & Pehlevan
2022) costs O(P^3 T^3) per iteration. Ours: two-layer O(samples P^2 T) (no outer loop);
deep linear: one causal pass over time in compact form, O(L P T^3) (``method="march"``);
the reference damped Picard sweeps (``method="picard"``, O(L (P T)^3) per sweep) are timed at
T = 10, 20 (``--full``: also 40) and extrapolated. Times are the minimum of repeats; CPU-seconds are
printed next to wall seconds (the machine may be shared). On a loaded machine set
OPENBLAS_NUM_THREADS=1: oversubscribed BLAS threads made the Picard sweeps 15x slower.
``--deep-linear`` runs only the deep-linear part; ``--quick`` fewer sizes and repeats.
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


def main(quick: bool = False, full: bool = False, deep_linear_only: bool = False):
    if not deep_linear_only:
        two_layer(quick)
    deep_linear(quick, full)


def two_layer(quick):
    kx, y = _data(16)
    dmft.two_layer(kx, y, "tanh", 1.0, 2, 0.05, samples=1000, seed=0)  # compile (cached on disk afterwards)
    S = 20_000 if quick else 100_000
    _, wall, cpu = timed(lambda: dmft.two_layer(kx, y, "tanh", 1.0, 200, 0.05, samples=S, seed=0, snapshots=2))
    print(f"two-layer tanh P=16 T=200 samples={S}: wall {wall:.2f} s, cpu {cpu:.2f} s (target < 5 s)")
    Ps, Ts = (4, 8, 16, 32), (50, 100, 200, 400)
    tp = [timed(lambda: dmft.two_layer(*_data(P), "tanh", 1.0, 100, 0.05, samples=20_000, snapshots=2))[1] for P in Ps]
    tt = [timed(lambda: dmft.two_layer(kx, y, "tanh", 1.0, T, 0.05, samples=20_000, snapshots=2))[1] for T in Ts]
    print(f"  growth: time ~ P^{slope(Ps, tp):.2f} (reference P^3), T^{slope(Ts, tt):.2f} (reference T^3)")


def deep_linear(quick, full):
    L = 5
    kx, y = _data(20)
    dmft.linear(kx, y, L, 0.5, 5, 0.02)  # warm-up (imports, BLAS start-up)
    reps = 2 if quick else 5
    runs = [timed(lambda: dmft.linear(kx, y, L, 0.5, 100, 0.02)) for _ in range(reps)]
    r = runs[-1][0]
    wall, cpu = min(x[1] for x in runs), min(x[2] for x in runs)
    print(f"deep linear (march) L={L} P=20 T=100 gamma0=0.5: wall {wall:.3f} s, cpu {cpu:.3f} s (min of {reps}; "
          f"target < 5 s), finite={r.solver.converged}, residual {r.solver.residual:.1e}")
    _, wall_m, cpu_m = timed(lambda: [r.Phi[L], r.A[L - 1], r.B[1], r.G[1]])
    print(f"  + building every full ((T+1)P)^2 matrix Phi, G, A, B on first access: wall {wall_m:.2f} s, "
          f"cpu {cpu_m:.2f} s")

    def best(fn, k=3):
        return min(timed(fn)[1] for _ in range(k))

    Ts = (25, 50, 100) if quick else (25, 50, 100, 200, 400)
    tt = [best(lambda: dmft.linear(kx, y, L, 0.5, T, 0.02)) for T in Ts]
    Ps = (5, 10, 20, 40) if not quick else (5, 10, 20)
    tp = [best(lambda: dmft.linear(*_data(P), L, 0.5, 100, 0.02)) for P in Ps]
    print("  march wall s by T (P=20): " + ", ".join(f"T={T}: {t:.3f}" for T, t in zip(Ts, tt)))
    print("  march wall s by P (T=100): " + ", ".join(f"P={P}: {t:.3f}" for P, t in zip(Ps, tp)))
    print(f"  growth: time ~ T^{slope(Ts[-3:], tt[-3:]):.2f} (largest three T), P^{slope(Ps, tp):.2f}; "
          f"algorithm O(L P T^3), reference O(P^3 T^3) per sweep")
    # the reference solver (method="picard") on the same problem at small T
    Tr = (10, 20) if quick or not full else (10, 20, 40)
    tr = []
    for T in Tr:
        rr, wall, cpu = timed(lambda: dmft.linear(kx, y, L, 0.5, T, 0.02, method="picard"))
        tr.append(wall)
        tm = best(lambda: dmft.linear(kx, y, L, 0.5, T, 0.02))
        print(f"  reference picard T={T}: wall {wall:.2f} s, {rr.solver.iterations} sweeps (march {tm:.4f} s)")
    e = slope(Tr, tr)
    print(f"  reference growth T^{e:.2f}; extrapolated to T=100: {tr[-1] * (100 / Tr[-1]) ** e:.0f} s")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv, full="--full" in sys.argv, deep_linear_only="--deep-linear" in sys.argv)

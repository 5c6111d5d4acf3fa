"""Timings of the finite-width (1/n) theory (run: python benchmarks/bench_finite_width.py [--quick]).

Targets (issue 14; tanh MLP, depth 10, weight_var 1.5, bias_var 0.1, inputs in d = 16, 2 cores):
* (a) K1 for N = 1000 inputs: < 5 s (two-input Mehler series fused with the block recursion,
  ``four_point=False``); timed in the standard parametrization (K1 and the two-input blocks of V
  only) and in the ntk one (plus the single-input NTK quantities, computed alongside);
* (b) the full four-point vertex V for N = 32 inputs: < 2 s. Its sets of three and four distinct
  inputs (C(32, 4) = 35,960 and 3 C(32, 3) = 14,880 multisets a layer) come from the two-block
  Hermite series of ``gaussian_moments.series_four_point`` (one Gauss-Hermite table per pair of
  inputs, then a short series per set).

Each figure is the best of ``REPEATS`` runs, the two parametrizations alternating, as CPU seconds
of the process (all threads: ``time.process_time``) and wall seconds: on a shared machine the wall
time depends on the load, the CPU time much less; on two free cores wall ~ CPU / 2 for the
parallel parts.

No library computes these (neural-tangents and the other peers stop at infinite width), so the
reference printed last is the Monte Carlo alternative in this repository: the ensemble of finite
networks (``limitlab.verify.montecarlo.sample_kernels``, width 128) that estimates V to ~1%.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from limitlab.theory.kernels import MLP, finite_width
from limitlab.verify.montecarlo import sample_kernels

NET = dict(weight_var=1.5, bias_var=0.1)
DEPTH = 10
REPEATS = 3
TARGET_A, TARGET_B = 5.0, 2.0


def timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - t


def verdict(seconds, target):
    return f"target < {target:.0f} s: {'met' if seconds < target else 'NOT met'}"


def main(quick: bool = False):
    rng = np.random.default_rng(0)
    nets = {p: MLP(DEPTH, "tanh", parametrization=p, **NET) for p in ("standard", "ntk")}
    for net in nets.values():  # compile (cached on disk afterwards)
        finite_width(net, rng.standard_normal((5, 16)), four_point=False)
        finite_width(net, rng.standard_normal((5, 16)), four_point=True)

    N = 200 if quick else 1000
    X = rng.standard_normal((N, 16))
    best = {p: [math.inf, math.inf] for p in nets}
    for _ in range(REPEATS):
        for p, net in nets.items():
            _, cpu, wall = timed(lambda: finite_width(net, X, four_point=False))
            best[p] = [min(best[p][0], cpu), min(best[p][1], wall)]
    note = "" if N == 1000 else " (--quick; the target is for N = 1000)"
    for p, (cpu, wall) in best.items():
        what = "K1 + V blocks" if p == "standard" else "K1 + V blocks + single-input NTK"
        print(f"(a) {what} ({p}), tanh depth {DEPTH}, N = {N}: CPU {cpu:.2f} s, wall {wall:.2f} s{note}; "
              f"{verdict(wall, TARGET_A)} (wall), {verdict(cpu / 2, TARGET_A)} (CPU / 2 cores)")

    net = nets["standard"]
    N = 12 if quick else 32
    Xs = rng.standard_normal((N, 16))
    cpu_b, wall_b = math.inf, math.inf
    for _ in range(REPEATS):
        _, cpu, wall = timed(lambda: finite_width(net, Xs, four_point=True))
        cpu_b, wall_b = min(cpu_b, cpu), min(wall_b, wall)
    note = "" if N == 32 else " (--quick; the target is for N = 32)"
    print(f"(b) full V (two-block Hermite series), tanh depth {DEPTH}, N = {N} ({math.comb(N, 4)} sets of four and "
          f"{3 * math.comb(N, 3)} multisets of three a layer): CPU {cpu_b:.2f} s, wall {wall_b:.2f} s{note}; "
          f"{verdict(wall_b, TARGET_B)} (wall), {verdict(cpu_b / 2, TARGET_B)} (CPU / 2 cores)")
    t3 = min(timed(lambda: finite_width(net, Xs[:3], four_point=True))[1] for _ in range(2))

    S = 4000 if quick else 40_000
    _, cpu, wall = timed(lambda: sample_kernels(net, Xs[:3], width=128, n_networks=S, seed=0))
    print(f"reference: Monte Carlo, {S} networks of width 128 on 3 inputs (V to ~{100 * math.sqrt(2 / S):.1f}%): "
          f"CPU {cpu:.2f} s, wall {wall:.2f} s; theory (N = 3) / simulation CPU ratio {t3 / cpu:.2f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

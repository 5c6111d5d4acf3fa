"""Timings of the finite-width (1/n) theory (run: python benchmarks/bench_finite_width.py [--quick]).

Targets (issue 14; tanh MLP, depth 10, weight_var 1.5, bias_var 0.1, inputs in d = 16, 2 cores):
* (a) K1 for N = 1000 inputs: < 5 s (two-input Mehler series fused with the block recursion,
  ``four_point=False``); timed in the standard parametrization (K1 and the two-input blocks of V
  only) and in the ntk one (plus the single-input NTK quantities, computed alongside);
* (b) the full four-point vertex V for N = 32 inputs: < 2 s (quadrature path).

Each figure is the best of ``REPEATS`` runs, the two parametrizations alternating, as CPU seconds
of the process (all threads: ``time.process_time``) and wall seconds: on a shared machine the wall
time depends on the load, the CPU time much less; on two free cores wall ~ CPU / 2 for the
parallel parts. The full V needs one (r-1)-level quadrature per set of r = 3 or 4 distinct inputs
(``gaussian_moments.power_expectations``); it is timed on N = 3 and 4 inputs and its cost at N = 32
extrapolated from the per-set times (C(32, 3) sets of three and C(32, 4) of four per layer).

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
        finite_width(net, rng.standard_normal((3, 16)), four_point=True)

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
    Xs = rng.standard_normal((4, 16))
    t = {}
    for n in (2, 3) if quick else (2, 3, 4):
        t[n] = min(timed(lambda: finite_width(net, Xs[:n], four_point=True))[1] for _ in range(2))
        print(f"(b) full V, tanh depth {DEPTH}, N = {n}: CPU {t[n]:.2f} s")
    per3 = (t[3] - t[2]) / DEPTH  # one set of three inputs (its three multisets) a layer
    per4 = (t[4] - t[2] - 4 * (t[3] - t[2])) / DEPTH if 4 in t else None  # one set of four beside four of three
    n3, n4 = math.comb(32, 3), math.comb(32, 4)
    est = DEPTH * (n3 * per3 + (n4 * per4 if per4 else 0.0))
    line = f"(b) per layer: {per3:.3f} s CPU a set of three inputs"
    line += f", {per4:.2f} s a set of four" if per4 else " (sets of four: skipped with --quick)"
    print(line)
    print(f"(b) full V, N = 32 (extrapolated: {DEPTH} layers x ({n3} sets of three + {n4} of four)): "
          f"~{est:.0f} s CPU{'' if per4 else ' + the sets of four'}; {verdict(est / 2, TARGET_B)}")

    S = 4000 if quick else 40_000
    _, cpu, wall = timed(lambda: sample_kernels(net, Xs[:3], width=128, n_networks=S, seed=0))
    print(f"reference: Monte Carlo, {S} networks of width 128 on 3 inputs (V to ~{100 * math.sqrt(2 / S):.1f}%): "
          f"CPU {cpu:.2f} s, wall {wall:.2f} s; theory (N = 3) / simulation CPU ratio {t[3] / cpu:.2f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

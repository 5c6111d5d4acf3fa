"""Timings of the finite-width (1/n) theory (run: python benchmarks/bench_finite_width.py [--quick]).

Targets (tanh MLP, depth 10, weight_var 1.5, bias_var 0.1, inputs in d = 16):
* K1 for N = 1000 inputs: < 5 s on 2 cores (two-input Mehler series, ``four_point=False``);
* the full four-point vertex V for N = 32 inputs: < 2 s (quadrature path).

No library computes these (neural-tangents and the other peers stop at infinite width), so the
reference printed beside each is the Monte Carlo alternative in this repository: the ensemble of
finite networks (``limitlab.verify.montecarlo.sample_kernels``, width 128) that estimates the same
quantities to about 1% (40k networks for V; K1's estimate needs far more), timed in the same run.
The full V needs one r-dimensional quadrature per set of r <= 4 distinct inputs; it is timed for
N = 3 and 4 and its cost at N = 32 extrapolated from the per-expectation times (C(32, 3) sets of
three and C(32, 4) of four inputs per layer). Times are wall seconds (the machine may be shared).
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from limitlab.theory.kernels import MLP, finite_width
from limitlab.verify.montecarlo import sample_kernels

NET = dict(weight_var=1.5, bias_var=0.1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(quick: bool = False):
    rng = np.random.default_rng(0)
    depth = 10
    net = MLP(depth, "tanh", **NET)
    finite_width(net, rng.standard_normal((3, 16)), four_point=False)  # compile (cached on disk afterwards)

    N = 200 if quick else 1000
    X = rng.standard_normal((N, 16))
    _, t = timed(lambda: finite_width(net, X, four_point=False))
    note = "" if N == 1000 else " (--quick; without it, N = 1000)"
    print(f"K1, tanh depth {depth}, N = {N}: {t:.2f} s{note} (target < 5 s at N = 1000)")

    Xs = rng.standard_normal((4, 16))
    _, t3 = timed(lambda: finite_width(net, Xs[:3], four_point=True))
    _, t2 = timed(lambda: finite_width(net, Xs[:3], four_point=False))
    per3 = (t3 - t2) / (3 * depth)  # three sets of three inputs a layer
    print(f"full V, tanh depth {depth}, N = 3: {t3:.2f} s ({per3:.3f} s per three-input expectation)")
    if quick:
        per4 = None
        print("full V, N = 4: skipped with --quick (seconds per four-input expectation)")
    else:
        _, t4 = timed(lambda: finite_width(net, Xs, four_point=True))
        per4 = (t4 - t3 * 4 / 3) / depth  # one set of four inputs a layer, beside four sets of three
        print(f"full V, tanh depth {depth}, N = 4: {t4:.2f} s (~{per4:.2f} s per four-input expectation)")
    n3, n4 = 32 * math.comb(31, 2), math.comb(32, 4)  # sets with 3 (one repeated) and 4 distinct inputs
    est = depth * (n3 * per3 + (n4 * per4 if per4 else 0.0))
    print(f"full V, N = 32 (extrapolated): ~{est:.0f} s{'' if per4 else ' + the four-input sets'} (target < 2 s): "
          "not met by the quadrature path")

    S = 4000 if quick else 40_000
    _, tmc = timed(lambda: sample_kernels(net, Xs[:3], width=128, n_networks=S, seed=0))
    print(f"reference: Monte Carlo, {S} networks of width 128 on 3 inputs (V to ~{100 * math.sqrt(2 / S):.1f}%): "
          f"{tmc:.2f} s; theory/simulation time ratio {t3 / tmc:.2f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

"""Reproduction: the double-descent curve of random-features ridge regression.

Mei & Montanari 2019 (arXiv:1908.05355), Figure 1-style setting: ReLU features, n/d = psi2 = 3,
test risk against N/n for several ridges, theory (Theorem 1) with simulated points at d = 100
(the paper's dimension; error bars = standard error over independent regressions).
Signal F1^2 = 1, no nonlinear part, noise tau^2 = 0.5 (an SNR where the ridgeless peak at
N = n and its suppression by the ridge are both visible).

    python docs/reproductions/mei_montanari2019_double_descent.py [--d 100] [--samples 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np

from limitlab.theory.risk import random_features
from limitlab.verify.risk.simulate import random_features_regression

PSI2 = 3.0
RIDGES = (1e-8, 1e-3, 1e-2, 1e-1)
TARGET = dict(signal=1.0, nonlinear_signal=0.0, noise=0.5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--points", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    ratio = np.geomspace(0.1, 10, 400)  # N/n
    theory = {lam: random_features(ratio * PSI2, PSI2, lam, "relu", **TARGET).risk for lam in RIDGES}
    rng = np.random.default_rng(args.seed)
    sim_ratio = np.geomspace(0.12, 8, args.points)
    sims = []
    for lam in RIDGES[1:]:  # ridge 1e-8 would need a near-singular solve at N ~ n; the theory line shows it
        for r in sim_ratio:
            vals = [random_features_regression(args.d, r * PSI2, PSI2, lam, "relu", **TARGET, seed=rng)
                    for _ in range(args.samples)]
            sims.append((lam, r, float(np.mean(vals)), float(np.std(vals, ddof=1) / np.sqrt(len(vals)))))
            print(f"ridge={lam:g} N/n={r:.3f} simulated {sims[-1][2]:.4f} +- {sims[-1][3]:.4f} "
                  f"theory {random_features(r * PSI2, PSI2, lam, 'relu', **TARGET).risk:.4f}")

    with open(os.path.join(args.out, "mei_montanari_theory.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["N_over_n", *[f"risk_ridge={lam:g}" for lam in RIDGES]])
        for i, r in enumerate(ratio):
            w.writerow([f"{r:.10g}", *[f"{theory[lam][i]:.12g}" for lam in RIDGES]])
    with open(os.path.join(args.out, "mei_montanari_simulated.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ridge", "N_over_n", "risk_mean", "risk_se", "d"])
        for row in sims:
            w.writerow([*row, args.d])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for lam in RIDGES:
        line, = ax.plot(ratio, theory[lam], label=f"theory, lambda={lam:g}")
        pts = [s for s in sims if s[0] == lam]
        if pts:
            ax.errorbar([s[1] for s in pts], [s[2] for s in pts], yerr=[s[3] for s in pts], fmt="o", ms=3.5,
                        color=line.get_color())
    ax.axvline(1.0, color="0.7", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.3, 30)
    ax.set_xlabel("N / n")
    ax.set_ylabel("test risk")
    ax.set_title(f"RF ridge regression, ReLU, n/d = {PSI2:g}; points: simulation at d = {args.d}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out, "mei_montanari_double_descent.png")
    fig.savefig(path, dpi=130)
    print(path)


if __name__ == "__main__":
    main()

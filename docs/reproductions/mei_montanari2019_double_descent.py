"""Reproduction: the double-descent curve of random-features ridge regression.

Mei & Montanari 2019 (arXiv:1908.05355), Figure 1-style setting: ReLU features, n/d = psi2 = 3,
test risk against N/n for several ridges, theory (Theorem 1) with simulated points at d = 100
(the paper's dimension; error bars = standard error over independent regressions).
Signal F1^2 = 1, no nonlinear part, noise tau^2 = 0.5 (an SNR where the ridgeless peak at
N = n and its suppression by the ridge are both visible).

Compared: each simulated mean risk against the theory, in standard errors of the mean (the
paper's figure is not tabulated, so its Theorem 1, evaluated by
limitlab.theory.risk.random_features, is the reference). Finite d adds an O(1/sqrt(d))
bias the standard error does not cover; --quick uses d = 40 and a few points.

    python docs/reproductions/mei_montanari2019_double_descent.py [--quick] [--d 100] [--samples 5] [--out DIR]
"""
from __future__ import annotations

import numpy as np

import _common
from limitlab.theory.risk import random_features
from limitlab.verify.risk.simulate import random_features_regression

PSI2 = 3.0
RIDGES = (1e-8, 1e-3, 1e-2, 1e-1)
TARGET = dict(signal=1.0, nonlinear_signal=0.0, noise=0.5)


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--d", type=int, default=None, help="input dimension of the simulations (default 100; 40 with --quick)")
    ap.add_argument("--samples", type=int, default=None, help="regressions per point (default 5; 3 with --quick)")
    ap.add_argument("--points", type=int, default=None, help="simulated N/n values per ridge (default 14; 4 with --quick)")
    args = ap.parse_args(argv)
    out = _common.prepare(args)
    d = args.d or (40 if args.quick else 100)
    samples = args.samples or (3 if args.quick else 5)
    points = args.points or (4 if args.quick else 14)
    sim_ridges = RIDGES[2:] if args.quick else RIDGES[1:]  # ridge 1e-8 would need a near-singular solve at N ~ n
    cmp = _common.Comparison(f"Mei & Montanari 2019: random-features ridge risk, simulation at d = {d} vs Theorem 1")

    ratio = np.geomspace(0.1, 10, 400)  # N/n
    theory = {lam: random_features(ratio * PSI2, PSI2, lam, "relu", **TARGET).risk for lam in RIDGES}
    rng = np.random.default_rng(args.seed)
    sim_ratio = np.geomspace(0.12, 8, points)
    sims = []
    for lam, r in _common.progress([(lam, r) for lam in sim_ridges for r in sim_ratio], "regressions"):
        vals = [random_features_regression(d, r * PSI2, PSI2, lam, "relu", **TARGET, seed=rng) for _ in range(samples)]
        sims.append((lam, r, float(np.mean(vals)), float(np.std(vals, ddof=1) / np.sqrt(len(vals)))))
        cmp.add(f"ridge={lam:g} N/n={r:.3f}: simulated risk (mean of {samples})", sims[-1][2],
                random_features(r * PSI2, PSI2, lam, "relu", **TARGET).risk, "theory", se=sims[-1][3])
    z = np.array([row["z"] for row in cmp.rows])
    print(f"largest |simulation - theory| in standard errors: {np.abs(z).max():.2f} over {z.size} points; "
          f"RMS {np.sqrt(np.mean(z ** 2)):.2f} (about 1 if the theory holds at d = {d})")

    _common.write_csv(out / "mei_montanari_theory.csv", ["N_over_n", *[f"risk_ridge={lam:g}" for lam in RIDGES]],
                      [[f"{r:.10g}", *[f"{theory[lam][i]:.12g}" for lam in RIDGES]] for i, r in enumerate(ratio)])
    _common.write_csv(out / "mei_montanari_simulated.csv", ["ridge", "N_over_n", "risk_mean", "risk_se", "d"],
                      [[*row, d] for row in sims])

    fig = _common.figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
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
    ax.set_title(f"RF ridge regression, ReLU, n/d = {PSI2:g}; points: simulation at d = {d}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _common.save_figure(fig, out / "mei_montanari_double_descent.png", dpi=130)
    cmp.write(out, quick=args.quick, d=d, samples=samples, points=points, psi2=PSI2, seed=args.seed, **TARGET)
    return cmp


if __name__ == "__main__":
    main()

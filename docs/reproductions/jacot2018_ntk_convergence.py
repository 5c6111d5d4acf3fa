"""Reproduction: Jacot, Gabriel & Hongler 2018, "Neural Tangent Kernel", Fig. 1 (left) — the NTK of
random finite networks converges to the deterministic limiting NTK as the width grows.

Setting of the paper (Sec. 6): a depth-4 ReLU network (3 hidden layers of width n, NTK
parametrization, weight variance 1, bias scale beta = 0.1, i.e. bias_var = 0.01), inputs on
the unit circle x = (cos g, sin g), and Theta(x0, x) with x0 = (1, 0) plotted against g for
10 independent initializations at n = 500 and n = 10000, with the limit.

Right panel (beyond the paper): the RMS deviation of one network's NTK from the limit
against the width, on log-log axes, with the n^-1/2 slope the theory predicts.

    python docs/reproductions/jacot2018_ntk_convergence.py [--out FIG.png] [--quick]
"""
import argparse
import sys

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="jacot2018_ntk_convergence.png")
    ap.add_argument("--quick", action="store_true", help="fewer angles and widths")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from limitlab.theory.kernels import MLP
    from limitlab.verify.montecarlo import sample_kernels

    mlp = MLP(depth=3, activation="relu", weight_var=1.0, bias_var=0.01)  # 3 hidden layers + readout = depth 4
    g = np.linspace(-np.pi, np.pi, 61 if a.quick else 121)
    X = np.stack([np.cos(g), np.sin(g)], axis=1)
    x0 = np.array([[1.0, 0.0]])
    limit = mlp.ntk(x0, X)[0]

    curves = {}
    for n in (500, 10000):
        ks = sample_kernels(mlp, x0, X, width=n, n_networks=10, seed=a.seed)
        curves[n] = ks.ntk[:, 0, :]

    widths = [64, 256, 1024, 4096] if a.quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    Xs = X[:: max(1, len(g) // 12)]
    lim_s = mlp.ntk(Xs)
    rms = []
    for n in widths:
        ks = sample_kernels(mlp, Xs, width=n, n_networks=32 if a.quick else 64, seed=a.seed + n)
        rms.append(np.sqrt(np.mean((ks.ntk - lim_s) ** 2)) / np.sqrt(np.mean(lim_s ** 2)))
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for n, style in ((500, dict(color="tab:green", lw=0.8)), (10000, dict(color="tab:red", lw=0.8))):
        for k, c in enumerate(curves[n]):
            ax1.plot(g, c, label=f"n = {n}" if k == 0 else None, alpha=0.8, **style)
    ax1.plot(g, limit, "k--", lw=1.5, label="n = ∞ (limit)")
    ax1.set_xlabel("γ")
    ax1.set_ylabel("Θ(x₀, x(γ))")
    ax1.set_title("NTK of 10 random networks (Jacot et al. 2018, Fig. 1)", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.loglog(widths, rms, "o-", label="relative RMS deviation of one network's NTK")
    ax2.loglog(widths, rms[0] * (np.asarray(widths) / widths[0]) ** -0.5, "k--", lw=0.8, label="slope −1/2")
    ax2.set_xlabel("width n")
    ax2.set_title(f"convergence with width: fitted slope {slope:.3f}", fontsize=9)
    ax2.legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    fig.savefig(a.out, dpi=120)
    dev = {n: float(np.max(np.abs(curves[n] - limit)) / np.max(np.abs(limit))) for n in curves}
    print(f"wrote {a.out}; max relative deviation from the limit: n=500 {dev[500]:.3f}, n=10000 {dev[10000]:.3f}; "
          f"RMS slope {slope:.3f} (theory -0.5)")
    return slope, dev


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

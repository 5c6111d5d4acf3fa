"""Reproduction: Jacot, Gabriel & Hongler 2018 (NeurIPS), "Neural Tangent Kernel: Convergence and
Generalization in Neural Networks", Fig. 1 (left): the NTK of random finite networks converges
to the deterministic limiting NTK as the width grows.

Setting of the paper (Sec. 6): a depth-4 ReLU network (3 hidden layers of width n, NTK
parametrization, weight variance 1, bias scale beta = 0.1, i.e. bias_var = 0.01), inputs on
the unit circle x = (cos g, sin g), and Theta(x0, x) with x0 = (1, 0) plotted against g for
10 independent initializations at n = 500 and n = 10000, with the limit.

Right panel (beyond the paper): the RMS deviation of one network's NTK from the limit
against the width, on log-log axes, with the n^-1/2 slope the theory predicts.

Compared: the largest relative deviation of the ten networks' NTK curves from the limit at
the two widths (the paper's figure shows the n = 10000 curves hugging the limit; its text
gives no numbers), the ratio of the curves' RMS deviations at the two widths against the
sqrt(10000/500) of an n^-1/2 law, and the fitted RMS slope of the right panel against the
-1/2 of the central limit theorem.
With --quick the widths of the left panel are 500 and 2000 and fewer networks are drawn.

    python docs/reproductions/jacot2018_ntk_convergence.py [--quick] [--out DIR]
"""
import numpy as np

import _common
from limitlab.theory.kernels import MLP
from limitlab.verify.montecarlo import sample_kernels


def main(argv=None):
    a = _common.parser(__file__, __doc__).parse_args(argv)
    out = _common.prepare(a)
    cmp = _common.Comparison("Jacot et al. 2018, Fig. 1: finite-width NTK vs the limiting NTK")

    mlp = MLP(depth=3, activation="relu", weight_var=1.0, bias_var=0.01)  # 3 hidden layers + readout = depth 4
    g = np.linspace(-np.pi, np.pi, 41 if a.quick else 121)
    X = np.stack([np.cos(g), np.sin(g)], axis=1)
    x0 = np.array([[1.0, 0.0]])
    limit = mlp.ntk(x0, X)[0]

    panel = (500, 2000) if a.quick else (500, 10000)
    curves = {n: sample_kernels(mlp, x0, X, width=n, n_networks=4 if a.quick else 10, seed=a.seed).ntk[:, 0, :]
              for n in _common.progress(panel, "NTK curves (left panel)")}

    widths = [64, 256, 1024] if a.quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    Xs = X[:: max(1, len(g) // 12)]
    lim_s = mlp.ntk(Xs)
    rms = []
    for n in _common.progress(widths, "RMS deviation vs width"):
        ks = sample_kernels(mlp, Xs, width=n, n_networks=16 if a.quick else 64, seed=a.seed + n)
        rms.append(np.sqrt(np.mean((ks.ntk - lim_s) ** 2)) / np.sqrt(np.mean(lim_s ** 2)))
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]

    dev = {n: float(np.max(np.abs(curves[n] - limit)) / np.max(np.abs(limit))) for n in curves}
    for n in panel:
        cmp.add(f"n={n}: max |Theta_n - Theta_inf| / max Theta_inf over {len(curves[n])} networks", dev[n], 0.0,
                "the limit (0)")
    rmsdev = {n: np.sqrt(np.mean((curves[n] - limit) ** 2) / np.mean(limit ** 2)) for n in curves}
    cmp.add(f"ratio of the curves' relative RMS deviations, n={panel[0]} / n={panel[1]}",
            rmsdev[panel[0]] / rmsdev[panel[1]], np.sqrt(panel[1] / panel[0]), "n^-1/2 scaling",
            note=f"{len(curves[panel[0]])} networks per width: a noisy ratio")
    cmp.add(f"fitted log-log slope of the RMS deviation, widths {widths[0]}..{widths[-1]}", slope, -0.5,
            "n^-1/2 (central limit theorem)")

    fig = _common.figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for n, color in zip(panel, ("tab:green", "tab:red")):
        for k, c in enumerate(curves[n]):
            ax1.plot(g, c, label=f"n = {n}" if k == 0 else None, alpha=0.8, color=color, lw=0.8)
    ax1.plot(g, limit, "k--", lw=1.5, label="n = \u221e (limit)")
    ax1.set_xlabel("\u03b3")
    ax1.set_ylabel("\u0398(x\u2080, x(\u03b3))")
    ax1.set_title("NTK of random networks (Jacot et al. 2018, Fig. 1)", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.loglog(widths, rms, "o-", label="relative RMS deviation of one network's NTK")
    ax2.loglog(widths, rms[0] * (np.asarray(widths) / widths[0]) ** -0.5, "k--", lw=0.8, label="slope \u22121/2")
    ax2.set_xlabel("width n")
    ax2.set_title(f"convergence with width: fitted slope {slope:.3f}", fontsize=9)
    ax2.legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    _common.save_figure(fig, out / "jacot2018_ntk_convergence.png")
    _common.write_csv(out / "ntk_curves.csv", ["gamma", "limit", *[f"n={n}_net{k}" for n in panel for k in range(len(curves[n]))]],
                      [[f"{x:.10g}" for x in (g[i], limit[i], *[c[i] for n in panel for c in curves[n]])]
                       for i in range(len(g))])
    _common.write_csv(out / "rms_vs_width.csv", ["width", "relative_rms_deviation"],
                      [[n, f"{r:.10g}"] for n, r in zip(widths, rms)])
    cmp.write(out, quick=a.quick, seed=a.seed)
    return cmp


if __name__ == "__main__":
    main()

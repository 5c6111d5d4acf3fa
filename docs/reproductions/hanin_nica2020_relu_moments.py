"""Hanin & Nica 2020 (Comm. Math. Phys. 376), the depth-to-width law of ReLU networks: the second
moment of a ReLU network's squared output grows like exp(5 beta), beta = L / n (with PDLT ch. 5's
1/n term 5 L / n).

"Products of many large random matrices and gradients in deep neural networks" shows that the
log of the squared norm through a deep ReLU network is Gaussian with a variance set by
beta = sum_l 1/n_l, so that moments collapse onto one curve of beta whatever the depth L and
width n separately. Here: for one input and critical ReLU networks (weight_var 2, no bias), the
readout-integrated kernel Ghat of each network (the output's variance given the last hidden
layer) is sampled, and R = E[Ghat^2] / E[Ghat]^2 (the output's kurtosis is 3 R) is plotted
against beta for several (L, n). Exactly at width n, R = (1 + 5/n)^L (each layer multiplies it
by 1 + c/n with c = E[u^4]/E[u^2]^2 - 1 = 5 for u a rectified Gaussian; docs/finite_width.md),
which tends to exp(5 beta); the 1/n theory of limitlab.theory.kernels.finite_width gives R = 1 + V/(n K^2) =
1 + 5 beta.

Compared: each simulated R against the exact (1 + 5/n)^L (with its standard error), and the 1/n
coefficient of finite_width (V / K^2) against 5 L. The paper plots curves and tabulates no
values, so the comparison is with the formulas.

    python docs/reproductions/hanin_nica2020_relu_moments.py [--quick] [--out DIR] [--networks S]
"""
import numpy as np

import _common
from limitlab.theory.kernels import MLP, finite_width
from limitlab.verify.montecarlo import sample_kernels

X = np.array([[1.0, -0.5, 0.25, 2.0]])


def ratio_and_se(g):
    """R = mean(g^2) / mean(g)^2 and its delta-method standard error."""
    m1, m2 = g.mean(), (g * g).mean()
    r = m2 / m1 ** 2
    grad = np.array([-2 * m2 / m1 ** 3, 1 / m1 ** 2])
    C = np.cov(np.stack([g, g * g])) / g.size
    return r, float(np.sqrt(grad @ C @ grad))


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--networks", type=int, default=None, help="networks per (L, n) (default 40000; 4000 with --quick)")
    a = ap.parse_args(argv)
    out = _common.prepare(a)
    S = a.networks or (4000 if a.quick else 40_000)
    widths = (16, 32) if a.quick else (16, 32, 64, 128)
    depths = (1, 2, 4, 8) if a.quick else (1, 2, 4, 8, 16, 32)
    cmp = _common.Comparison("Hanin & Nica 2020: ReLU moments against beta = L/n, exact (1 + 5/n)^L and 1/n theory")
    rows = []
    grid = [(L, n) for n in widths for L in depths]
    for k, (L, n) in enumerate(_common.progress(grid, "networks")):
        net = MLP(L, "relu", weight_var=2.0, bias_var=0.0)
        ks = sample_kernels(net, X, width=n, n_networks=S, seed=a.seed * 1000 + k)
        r, se = ratio_and_se(ks.nngp[:, 0, 0])
        exact = (1 + 5 / n) ** L
        rows.append((L, n, L / n, r, se, exact))
        if L in (depths[0], depths[-1]):
            cmp.add(f"R = E[Ghat^2]/E[Ghat]^2 at L={L}, n={n}", r, exact, "exact (1 + 5/n)^L", se=se)
    for L in (depths[0], depths[-1]):
        fw = finite_width(MLP(L, "relu", weight_var=2.0, bias_var=0.0), X)
        cmp.add(f"1/n coefficient V/K^2 at L={L}", fw.four_point[0, 0, 0, 0] / fw.nngp[0, 0] ** 2, 5 * L,
                "PDLT 5 L")

    fig = _common.figure(figsize=(6, 4.5))
    ax = fig.subplots()
    beta = np.linspace(0, max(r[2] for r in rows), 200)
    ax.plot(beta, np.log(np.exp(5 * beta)), "k-", label="exp(5 beta) (Hanin & Nica)")
    ax.plot(beta, np.log1p(5 * beta), "k--", label="1 + 5 beta (1/n theory)")
    for n in widths:
        sel = [r for r in rows if r[1] == n]
        b = np.array([r[2] for r in sel])
        ax.errorbar(b, np.log([r[3] for r in sel]), yerr=np.array([r[4] / r[3] for r in sel]), fmt="o",
                    label=f"simulation, n = {n}")
        ax.plot(b, np.log([r[5] for r in sel]), "x", color="gray")
    ax.set(xlabel="beta = L / n", ylabel="log E[Ghat^2] / E[Ghat]^2",
           title="critical ReLU, one input (x: exact (1 + 5/n)^L)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _common.save_figure(fig, out / "hanin_nica2020_relu_moments.png")
    _common.write_csv(out / "moments.csv", ["L", "n", "beta", "R_sim", "R_se", "R_exact"],
                      [[L, n, f"{b:.6g}", f"{r:.8g}", f"{se:.3g}", f"{e:.8g}"] for L, n, b, r, se, e in rows])
    cmp.write(out, quick=a.quick, networks=S, widths=list(widths), depths=list(depths), seed=a.seed)
    return cmp


if __name__ == "__main__":
    main()

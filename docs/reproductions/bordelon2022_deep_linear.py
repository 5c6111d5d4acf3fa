"""Bordelon & Pehlevan 2022 (NeurIPS), "Self-consistent dynamical field theory of kernel evolution
in wide neural networks", deep linear figures: loss and relative NTK change against the
richness gamma0 and the depth.

The closed deep linear DMFT equations (limitlab.theory.dynamics.dmft.linear) on a small
random task; finite muP linear networks (limitlab.verify.dynamics.training.train_mup_mlp)
trained by the same gradient descent are overlaid.

Compared: (1) the NTK at initialization against the paper's (L + 1) K^x; (2) the ratio of
kernel changes when gamma0 doubles at small gamma0 against the paper's O(gamma0^2) law
(ratio 4); (3) the DMFT train loss at the end against finite-width networks (mean over a
few networks, with its standard error). The paper's figures are not tabulated, so the
comparison is with its stated laws and with simulation.

    python docs/reproductions/bordelon2022_deep_linear.py [--quick] [--out DIR] [--width 1000]
"""
import numpy as np

import _common
from limitlab.theory.dynamics import dmft
from limitlab.verify.dynamics.training import train_mup_mlp


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--width", type=int, default=None, help="finite-network width (default 1000; 300 with --quick)")
    ap.add_argument("--networks", type=int, default=None, help="finite networks per point (default 4; 2 with --quick)")
    a = ap.parse_args(argv)
    out = _common.prepare(a)
    width = a.width or (300 if a.quick else 1000)
    networks = a.networks or (2 if a.quick else 4)
    cmp = _common.Comparison("Bordelon & Pehlevan 2022: deep linear DMFT vs its stated laws and finite muP networks")

    rng = np.random.default_rng(a.seed)
    P, D = 6, 12
    X = rng.standard_normal((P, D))
    X *= np.sqrt(D) / np.linalg.norm(X, axis=1, keepdims=True)
    y = X[:, 0] / np.sqrt(D) * 2
    kx = dmft.input_kernel(X)
    T, dt = (20, 0.05) if a.quick else (40, 0.05)
    gammas = [0.25, 0.5, 1.0] if a.quick else [0.25, 0.5, 0.75, 1.0]
    depths = (1, 3) if a.quick else (1, 2, 3)

    runs = {(L, g): dmft.linear(kx, y, L, g, T, dt)
            for L, g in _common.progress([(L, g) for L in depths for g in gammas], "deep linear DMFT")}
    for L in depths:
        r = runs[L, gammas[0]]
        cmp.add(f"L={L}: |NTK(0)| (Frobenius)", np.linalg.norm(r.ntk(0)), np.linalg.norm((L + 1) * kx),
                "paper (L+1) K^x")
    change = {k: np.linalg.norm(r.ntk(T) - r.ntk(0)) / np.linalg.norm(r.ntk(0)) for k, r in runs.items()}
    small = [dmft.linear(kx, y, depths[-1], g, T, dt) for g in (0.01, 0.02)]
    ratio = np.linalg.norm(small[1].ntk(T) - small[1].ntk(0)) / np.linalg.norm(small[0].ntk(T) - small[0].ntk(0))
    cmp.add(f"L={depths[-1]}: kernel change ratio gamma0 0.02 vs 0.01", ratio, 4.0, "paper O(gamma0^2) law")
    L = depths[-1]
    cmp.add(f"L={L}: kernel change ratio gamma0 {gammas[1]:g} vs {gammas[0]:g}", change[L, gammas[1]] / change[L, gammas[0]],
            (gammas[1] / gammas[0]) ** 2, "paper O(gamma0^2) law", note="beyond the small-gamma0 regime")

    loss = lambda f: 0.5 * ((f - y) ** 2).sum(-1)  # noqa: E731
    nets = {}
    for L, g in _common.progress([(L, g) for L in depths for g in gammas[-1:]], "finite muP networks"):
        fs = train_mup_mlp(X, y, L, "linear", g, width, T, dt, n_networks=networks, seed=a.seed + 10,
                           record=[T])[0][:, -1]
        ls = loss(fs)
        nets[L, g] = ls
        cmp.add(f"L={L}, gamma0={g:g}: train loss at t={T * dt:g}, width {width} (mean of {networks})", ls.mean(),
                loss(runs[L, g].f[-1]), "DMFT", se=ls.std(ddof=1) / np.sqrt(networks) if networks > 1 else None)

    fig = _common.figure(figsize=(10, 4))
    ax = fig.subplots(1, 2)
    for g in gammas:
        r = runs[depths[-1], g]
        ax[0].semilogy(r.times, loss(r.f), label=f"gamma0 = {g}")
    for L in depths:
        ch = [change[L, g] for g in gammas]
        ax[1].loglog(gammas, ch, "o-", label=f"L = {L}")
        ax[1].loglog(gammas, ch[0] * (np.array(gammas) / gammas[0]) ** 2, "k--", lw=0.5)
    ax[0].set(xlabel="t", ylabel="train loss", title=f"depth {depths[-1]} deep linear DMFT")
    ax[1].set(xlabel="gamma0", ylabel="|K(T) - K(0)| / |K(0)|", title="kernel change ~ gamma0^2, grows with depth")
    ax[0].legend()
    ax[1].legend()
    fig.tight_layout()
    _common.save_figure(fig, out / "bordelon2022_deep_linear.png")
    _common.write_csv(out / "kernel_change.csv", ["depth", "gamma0", "relative_ntk_change", "dmft_final_loss"],
                      [[L, g, f"{change[L, g]:.10g}", f"{loss(runs[L, g].f[-1]):.10g}"] for L, g in runs])
    cmp.write(out, quick=a.quick, width=width, networks=networks, T=T, dt=dt, seed=a.seed)
    return cmp


if __name__ == "__main__":
    main()

"""Saxe, McClelland & Ganguli 2014 (ICLR), Figs. 3 and 5: mode trajectories and learning times
of deep linear networks.

Left panel: the three modes (singular values s = 4, 2, 1) of a one-hidden-layer linear network
trained by gradient descent from the decoupled balanced initial condition (u0 = 1e-3), on
the paper's analytic sigmoid (eq. (6)). Right panel: the time a mode needs to grow from
u0 = 0.01 to s/2 against the number of weight matrices (eq. (7) for two, quadrature beyond).

Compared: simulated mode strengths against eq. (6) (largest difference per mode), and the
simulated time to reach s/2 against eq. (7). The paper plots these curves without tabulating
them, so the comparison is with its equations, evaluated by limitlab.theory.dynamics.deep_linear.
The simulation is gradient descent with step lr (time t = step x lr, tau = 1): its distance
from the gradient flow of the theory is O(lr).

    python docs/reproductions/saxe2014_modes.py [--quick] [--out DIR] [--lr 0.005]
"""
import numpy as np

import _common
from limitlab.theory.dynamics import deep_linear as dl
from limitlab.verify.dynamics.training import train_deep_linear

S = np.array([4.0, 2.0, 1.0])
U0 = 1e-3
T_END = 8.0


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--lr", type=float, default=None, help="gradient-descent step (default 0.005; 0.02 with --quick)")
    a = ap.parse_args(argv)
    out = _common.prepare(a)
    lr = a.lr or (0.02 if a.quick else 0.005)
    cmp = _common.Comparison("Saxe et al. 2014: deep linear modes, gradient descent vs eqs. (6), (7)")

    rng = np.random.default_rng(a.seed)
    U = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    sigma = U @ np.diag(S) @ V.T
    # whitened inputs: X X^T / P = I and Y X^T / P = Sigma^31, so the loss gradient is Sigma^31 - W2 W1
    X = np.sqrt(3.0) * np.eye(3)
    Y = sigma @ X
    Ws, _ = dl.balanced_init(sigma, U0, 2, 8, seed=a.seed + 1)
    steps = int(round(T_END / lr))
    every = max(1, steps // 400)
    record = list(range(0, steps + 1, every))
    maps = train_deep_linear(Ws, X, Y, lr, steps, set(record))  # 3 x 8 x 3 weights: fast, no progress bar
    sim_t = np.array(record) * lr
    sim_u = np.einsum("ia,kij,ja->ka", U, maps, V)
    theory_u = dl.mode_trajectory(sim_t, S, U0, depth=2)
    for m, s in enumerate(S):
        err = np.abs(sim_u[:, m] - theory_u[:, m])
        k = int(np.argmax(err))
        cmp.add(f"mode s={s:g}, u(t) at t={sim_t[k]:.2f} (largest difference)", sim_u[k, m], theory_u[k, m],
                "paper eq. (6)")
        t_half = np.interp(s / 2, sim_u[:, m], sim_t)  # u(t) increases monotonically
        cmp.add(f"mode s={s:g}, time from u0={U0:g} to s/2", t_half, dl.learning_time(s, U0, s / 2, 2),
                "paper eq. (7)", note=f"gradient-descent step lr={lr:g}")

    fig = _common.figure(figsize=(10, 4))
    ax = fig.subplots(1, 2)
    t = np.linspace(0, T_END, 200)
    u = dl.mode_trajectory(t, S, U0, depth=2)
    for m in range(3):
        ax[0].plot(t, u[:, m], label=f"s = {S[m]:g}")
        ax[0].plot(sim_t[:: max(1, len(sim_t) // 40)], sim_u[:: max(1, len(sim_t) // 40), m], "kx", ms=4)
    ax[0].set(xlabel="t / tau", ylabel="mode strength u", title="one hidden layer: eq. (6) (lines), GD (x)")
    ax[0].legend()
    depths = np.arange(1, 5 if a.quick else 9)
    times = {s: [dl.learning_time(s, 1e-2, s / 2, int(d)) for d in _common.progress(depths, f"learning times s={s:g}")]
             for s in (1.0, 2.0)}
    for s, ts in times.items():
        ax[1].plot(depths, ts, "o-", label=f"s = {s:g}")
    ax[1].set(xlabel="number of weight matrices", ylabel="time to reach s/2", title="learning time vs depth (u0 = 0.01)")
    ax[1].legend()
    fig.tight_layout()
    _common.save_figure(fig, out / "saxe2014_modes.png")
    _common.write_csv(out / "modes.csv", ["t", *[f"sim_u_s={s:g}" for s in S], *[f"theory_u_s={s:g}" for s in S]],
                      [[f"{x:.6g}" for x in (ti, *su, *tu)] for ti, su, tu in zip(sim_t, sim_u, theory_u)])
    _common.write_csv(out / "learning_times.csv", ["weight_matrices", *[f"time_s={s:g}" for s in times]],
                      [[int(d), *[f"{times[s][i]:.10g}" for s in times]] for i, d in enumerate(depths)])
    cmp.write(out, quick=a.quick, lr=lr, seed=a.seed)
    return cmp


if __name__ == "__main__":
    main()

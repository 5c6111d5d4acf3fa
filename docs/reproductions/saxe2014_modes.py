"""Saxe, McClelland & Ganguli 2014, Fig. 3 / 5: mode trajectories and learning times of deep linear networks.

Run: python docs/reproductions/saxe2014_modes.py [out.png]. Simulated gradient descent from
the balanced initial condition lies on the analytic curves (crosses on lines).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from limitlab.theory.dynamics import deep_linear as dl  # noqa: E402

S = np.array([4.0, 2.0, 1.0])
U0 = 1e-3
t = np.linspace(0, 8, 200)
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
u = dl.mode_trajectory(t, S, U0, depth=2)
rng = np.random.default_rng(0)
U = np.linalg.qr(rng.standard_normal((3, 3)))[0]
V = np.linalg.qr(rng.standard_normal((3, 3)))[0]
sigma = U @ np.diag(S) @ V.T
Ws, _ = dl.balanced_init(sigma, U0, 2, 8, seed=1)
lr, sim_t, sim_u = 0.005, [], []
for k in range(int(8 / lr) + 1):
    if k % 100 == 0:
        M = Ws[1] @ Ws[0]
        sim_t.append(k * lr)
        sim_u.append([U[:, a] @ M @ V[:, a] for a in range(3)])
    E = sigma - Ws[1] @ Ws[0]
    Ws = [Ws[0] + lr * Ws[1].T @ E, Ws[1] + lr * E @ Ws[0].T]
for a in range(3):
    ax[0].plot(t, u[:, a], label=f"s = {S[a]:g}")
    ax[0].plot(sim_t, np.array(sim_u)[:, a], "kx", ms=4)
ax[0].set(xlabel="t / tau", ylabel="mode strength u", title="one hidden layer (eq. 6) vs simulation")
ax[0].legend()
depths = np.arange(1, 9)
for s in (1.0, 2.0):
    ax[1].plot(depths, [dl.learning_time(s, 1e-2, s / 2, int(d)) for d in depths], "o-", label=f"s = {s:g}")
ax[1].set(xlabel="number of weight matrices", ylabel="time to reach s/2", title="learning time vs depth (u0 = 0.01)")
ax[1].legend()
fig.tight_layout()
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else "saxe2014_modes.png", dpi=120)
print("max |simulation - theory|:", np.abs(np.array(sim_u) - dl.mode_trajectory(np.array(sim_t), S, U0, 2)).max())

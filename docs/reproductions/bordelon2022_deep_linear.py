"""Bordelon & Pehlevan 2022, deep linear figures: loss and relative NTK change vs gamma0 and depth.

Run: python docs/reproductions/bordelon2022_deep_linear.py [out.png]. The closed DMFT
equations; the relative kernel change grows like gamma0^2 L at small gamma0 (dashed).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from limitlab.theory.dynamics import dmft  # noqa: E402

rng = np.random.default_rng(0)
P, D = 6, 12
X = rng.standard_normal((P, D))
X *= np.sqrt(D) / np.linalg.norm(X, axis=1, keepdims=True)
y = X[:, 0] / np.sqrt(D) * 2
kx = dmft.input_kernel(X)
T, dt = 40, 0.05
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
gammas = [0.25, 0.5, 0.75, 1.0]
for L in (1, 2, 3):
    changes = []
    for g in gammas:
        r = dmft.deep_linear(kx, y, L, g, T, dt)
        K0, KT = r.ntk(0), r.ntk(T)
        changes.append(np.linalg.norm(KT - K0) / np.linalg.norm(K0))
        if L == 3:
            ax[0].semilogy(r.times, 0.5 * ((r.f - y) ** 2).sum(1), label=f"gamma0 = {g}")
    ax[1].loglog(gammas, changes, "o-", label=f"L = {L}")
    ax[1].loglog(gammas, changes[0] * (np.array(gammas) / gammas[0]) ** 2, "k--", lw=0.5)
ax[0].set(xlabel="t", ylabel="train loss", title="depth 3 deep linear DMFT")
ax[1].set(xlabel="gamma0", ylabel="|K(T) - K(0)| / |K(0)|", title="kernel change ~ gamma0^2, grows with depth")
ax[0].legend()
ax[1].legend()
fig.tight_layout()
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else "bordelon2022_deep_linear.png", dpi=120)

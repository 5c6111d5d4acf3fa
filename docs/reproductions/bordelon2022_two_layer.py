"""Bordelon & Pehlevan 2022, two-layer figures: predictions, kernel alignment and NTK change vs gamma0.

Run: python docs/reproductions/bordelon2022_two_layer.py [out.png]. DMFT (Monte Carlo over
single sites) for tanh two-layer networks at several richness values gamma0, with finite
muP networks (width 1000) trained by the same gradient descent overlaid.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from limitlab.theory.dynamics import dmft  # noqa: E402
from limitlab.verify.dynamics.training import train_mup_mlp  # noqa: E402

rng = np.random.default_rng(0)
P, D = 10, 20
X = rng.standard_normal((P, D))
X *= np.sqrt(D) / np.linalg.norm(X, axis=1, keepdims=True)
y = np.sign(X[:, 0])
kx = dmft.input_kernel(X)
T, dt = 100, 0.05
gammas = [0.0, 0.5, 1.0, 2.0]
fig, ax = plt.subplots(1, 3, figsize=(14, 4))
for g in gammas:
    r = dmft.two_layer(kx, y, "tanh", g, T, dt, samples=100_000, seed=1, snapshots=11)
    loss = 0.5 * ((r.f - y) ** 2).sum(1)
    ax[0].semilogy(r.times, loss, label=f"gamma0 = {g}")
    if g > 0:
        f_net, _ = train_mup_mlp(X, y, 1, "tanh", g, 1000, T, dt, seed=2, record=range(0, T + 1, 10))
        ax[0].semilogy(r.times[::10], 0.5 * ((f_net - y) ** 2).sum(1), "kx", ms=4)
    Ks = r.equal_time("K")
    st = r.times[r.snapshot_steps]
    ax[1].plot(st, [dmft.kernel_alignment(K, y) for K in Ks], "o-", label=f"gamma0 = {g}")
    ax[2].plot(st, [np.linalg.norm(K - Ks[0]) / np.linalg.norm(Ks[0]) for K in Ks], "o-", label=f"gamma0 = {g}")
ax[0].set(xlabel="t", ylabel="train loss", title="DMFT (lines) vs width-1000 muP nets (x)")
ax[1].set(xlabel="t", ylabel="alignment y'Ky / |K| |y|^2", title="kernel alignment")
ax[2].set(xlabel="t", ylabel="|K(t) - K(0)| / |K(0)|", title="NTK change")
for a in ax:
    a.legend()
fig.tight_layout()
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else "bordelon2022_two_layer.png", dpi=120)

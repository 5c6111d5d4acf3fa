"""Papyan, Han, Donoho 2020 (PNAS 117(40)), Figs. 3-7 in miniature: NC1-NC4 of a network
falling during the terminal phase of training.

A bias-free two-hidden-layer ReLU MLP (width 64) is trained by full-batch gradient descent
on MSE with weight decay on a 4-class Gaussian mixture (the setting of the verify check
collapse.train); NC metrics of its last hidden layer are printed along training, averaged
over a few networks. The train error reaches 0 early; the metrics keep falling after.

    .venv/bin/python docs/reproductions/papyan2020_nc_metrics.py [--steps 3200] [--networks 4] [--plot out.png]
"""
from __future__ import annotations

import argparse

import numpy as np

from limitlab.theory.collapse import metrics
from limitlab.verify.collapse.checks import TRAIN, gaussian_mixture, train_mlp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3200)
    ap.add_argument("--networks", type=int, default=4)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    p = TRAIN
    X, y = gaussian_mixture(np.random.default_rng(20200924), p["classes"], p["dim"], p["per_class"],
                            p["separation"], p["noise"])
    record = sorted({0, *np.unique(np.geomspace(10, a.steps, 10).astype(int))})
    rows = {}

    def cb(t, H, W):
        ms = [metrics(h, y, w) for h, w in zip(H, W)]
        err = np.mean([np.mean(np.argmax(h @ w.T, 1) != y) for h, w in zip(H, W)])
        rows[t] = dict(train_error=err, **{k: np.mean([getattr(m, k) for m in ms]) for k in
                                           ("nc1", "nc2_equinorm_means", "nc2_maxangle_means", "nc2_etf_means",
                                            "nc2_etf_classifier", "nc3", "nc4", "cdnv")})

    train_mlp(X, y, networks=a.networks, width=p["width"], steps=a.steps, lr=p["lr"],
              weight_decay=p["weight_decay"], seed=0, backend=a.backend, record_steps=record, callback=cb)
    keys = list(next(iter(rows.values())).keys())
    print("step  " + " ".join(f"{k:>18s}" for k in keys))
    for t in sorted(rows):
        print(f"{t:5d} " + " ".join(f"{rows[t][k]:18.4g}" for k in keys))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ts = sorted(t for t in rows if t > 0)
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in ("nc1", "nc2_maxangle_means", "nc2_etf_means", "nc3", "nc4", "cdnv"):
            ax.loglog(ts, [max(rows[t][k], 1e-6) for t in ts], marker="o", label=k)
        ax.set_xlabel("gradient-descent step")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print("wrote", a.plot)


if __name__ == "__main__":
    main()

"""Papyan, Han, Donoho 2020 (PNAS 117(40)), Figs. 3-7 in miniature: NC1-NC4 of a network
falling during the terminal phase of training.

A bias-free two-hidden-layer ReLU MLP (width 64) is trained by full-batch gradient descent
on MSE with weight decay on a 4-class Gaussian mixture (the setting of the verify check
collapse.train); NC metrics of its last hidden layer are printed along training, averaged
over a few networks. The train error reaches 0 early; the metrics keep falling after.

Compared: each metric at the last recorded step against its value at the first positive
step (the paper's claim: all fall during training) and against the collapse limit 0 (the
paper's Figs. 3-7 are log-scale curves of real networks on image data, not tabulated, so
no number of theirs is reproduced here; the setting is far smaller). --quick trains two
networks for 400 steps.

    python docs/reproductions/papyan2020_nc_metrics.py [--quick] [--steps 3200] [--networks 4] [--out DIR]
"""
from __future__ import annotations

import numpy as np

import _common
from limitlab.theory.collapse import metrics
from limitlab.verify.collapse.checks import TRAIN, gaussian_mixture, train_mlp

KEYS = ("nc1", "nc2_equinorm_means", "nc2_maxangle_means", "nc2_etf_means", "nc2_etf_classifier", "nc3", "nc4", "cdnv")


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--steps", type=int, default=None, help="gradient-descent steps (default 3200; 400 with --quick)")
    ap.add_argument("--networks", type=int, default=None, help="networks averaged (default 4; 2 with --quick)")
    ap.add_argument("--backend", default="numpy", help="array backend of the training (numpy, torch, cupy)")
    a = ap.parse_args(argv)
    out = _common.prepare(a)
    steps = a.steps or (400 if a.quick else 3200)
    networks = a.networks or (2 if a.quick else 4)
    cmp = _common.Comparison("Papyan, Han & Donoho 2020: NC metrics of a trained MLP fall towards collapse (0)")
    p = TRAIN
    X, y = gaussian_mixture(np.random.default_rng(20200924 + a.seed), p["classes"], p["dim"], p["per_class"],
                            p["separation"], p["noise"])
    record = sorted({0, *np.unique(np.geomspace(10, steps, 10).astype(int))})
    rows = {}
    bar = _common.progress(range(steps), "training")

    def cb(t, H, W):
        bar.update(t - bar.n)
        ms = [metrics(h, y, w) for h, w in zip(H, W)]
        err = np.mean([np.mean(np.argmax(h @ w.T, 1) != y) for h, w in zip(H, W)])
        rows[t] = dict(train_error=err, **{k: np.mean([getattr(m, k) for m in ms]) for k in KEYS})

    train_mlp(X, y, networks=networks, width=p["width"], steps=steps, lr=p["lr"], weight_decay=p["weight_decay"],
              seed=a.seed, backend=a.backend, record_steps=record, callback=cb)
    bar.close()
    keys = list(next(iter(rows.values())).keys())
    print("step  " + " ".join(f"{k:>18s}" for k in keys))
    for t in sorted(rows):
        print(f"{t:5d} " + " ".join(f"{rows[t][k]:18.4g}" for k in keys))
    first, last = min(t for t in rows if t > 0), max(rows)
    cmp.add(f"train error at step {last}", rows[last]["train_error"], 0.0, "0 (interpolation)")
    for k in KEYS:
        v0, v1 = rows[first][k], rows[last][k]
        trend = ("reached 0" if v1 == 0 else f"fell by a factor {v0 / v1:.3g}" if v1 < v0
                 else f"did not fall (x{v1 / v0:.3g})")
        cmp.add(f"{k} at step {last}", v1, 0.0, "collapse (0)", note=f"{v0:.4g} at step {first}: {trend}")
    _common.write_csv(out / "nc_metrics.csv", ["step", *keys], [[t, *[f"{rows[t][k]:.10g}" for k in keys]] for t in sorted(rows)])

    ts = sorted(t for t in rows if t > 0)
    fig = _common.figure(figsize=(6, 4))
    ax = fig.subplots()
    for k in ("nc1", "nc2_maxangle_means", "nc2_etf_means", "nc3", "nc4", "cdnv"):
        ax.loglog(ts, [max(rows[t][k], 1e-6) for t in ts], marker="o", label=k)
    ax.set_xlabel("gradient-descent step")
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, out / "papyan2020_nc_metrics.png")
    cmp.write(out, quick=a.quick, steps=steps, networks=networks, backend=a.backend, seed=a.seed, **TRAIN)
    return cmp


if __name__ == "__main__":
    main()

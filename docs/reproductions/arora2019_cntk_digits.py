"""Reproduction: Arora, Du, Hu, Li, Salakhutdinov & Wang 2019 (NeurIPS), "On Exact Computation
with an Infinitely Wide Neural Net", Table 1, with Novak et al. 2019 (ICLR), "Bayesian Deep
Convolutional Networks with Many Channels are Gaussian Processes": the accuracy trends of
kernel regression with the infinite-width CNN kernels, on scikit-learn's 8x8 digits
(sklearn.datasets.load_digits, 1797 images shipped with the package) instead of CIFAR-10.

Architectures (Arora et al.'s, scaled to 8x8 images): depth d = the number of 3x3 SAME
convolutions + 1, each followed by ReLU, weight variance 2, no bias (NTK parametrization), then
the readout: "V" (vanilla) = Flatten + Dense, "GAP" = global average pooling + Dense. Each
network gives the CNN-GP (its NNGP: Novak et al.) and the CNTK (its NTK: Arora et al.); the
fully connected NNGP and NTK of a ReLU MLP with d - 1 hidden layers on the 64 pixels ("FC") is
the baseline. Pixels are standardized (mean 0, variance 1 over the images), as the CIFAR-10
channels in Arora et al.'s code.

Protocol (the papers'): kernel regression with no ridge onto the one-hot targets 0.9 / -0.1
(Arora et al.'s code), i.e. the infinite-time ensemble prediction of gradient flow on the
squared loss (limitlab.theory.dynamics.gradient_descent_mse_ensemble at t = infinity; with the
NNGP in place of the NTK it is the GP posterior mean without noise), class = argmax. Every
kernel is computed once on a pool of digits; each of several random splits of the pool into
train/test halves gives an accuracy, and differences between kernels are paired over the
splits (mean and standard error over splits; the splits share the pool, so the error is
an indication, not an independent-sample one).

Compared (the trend, not the numbers: 8x8 digits with a few hundred training images is not
CIFAR-10 with 50000):
  * CNTK, GAP - V (best depth of each) against Arora et al.'s Table 1 (CNTK-GAP 77.43% at
    depth 11, CNTK-V 66.03% at depth 6: +11.40 points; quoted without a copy of the table at
    hand, see README.md);
  * CNN-GP, GAP - V against 0 (Novak et al.: without pooling the CNN-GP equals the GP of the
    locally connected net, weight sharing plays no role; pooling makes it count);
  * best CNTK - best CNN-GP against +10 points (Arora et al.'s abstract: CNTK 10% above the
    kernels of Novak et al. 2019 on CIFAR-10);
  * best CNN kernel - best FC kernel against 0 (Novak et al.: CNN-GPs beat the fully connected
    NNGP, the previous state of the art for GPs without trainable kernels);
  * CNTK-GAP and CNTK-V, deepest - shallowest depth, against 0 (Table 1: GAP gains with depth up
    to 11, V is nearly flat).
Caveats printed in the notes: Arora et al.'s CNTK-GAP column fixes the first and last layers
(their Sec. 4.2 option), here every layer is trained; their depths go to 21 on 32x32 images.
With --quick the pool is 60 digits, depths 2 and 3, 6 splits.

    python docs/reproductions/arora2019_cntk_digits.py [--quick] [--out DIR] [--pool 200] [--depths 2 3 5]
"""
from __future__ import annotations

import time

import numpy as np

import _common
from limitlab.theory.dynamics import gradient_descent_mse_ensemble
from limitlab.theory.kernels import MLP, stax

W = 2.0  # weight variance of every layer (ReLU: keeps the pixel variances fixed, as in Arora et al.)
# Arora et al. 2019, Table 1 (CIFAR-10, all 50000 training images): the best entry of each column
TABLE1 = {"CNTK-GAP": (77.43, 11), "CNTK-V": (66.03, 6)}


def cnn(depth, readout):
    """Arora et al.'s CNN of depth d: d - 1 blocks (3x3 SAME conv, ReLU), readout, Dense."""
    body = [layer for _ in range(depth - 1)
            for layer in (stax.Conv(1, (3, 3), padding="SAME", weight_var=W, bias_var=0.0), stax.Relu())]
    pool = stax.GlobalAvgPool() if readout == "GAP" else stax.Flatten()
    return stax.serial(*body, pool, stax.Dense(1, weight_var=W, bias_var=0.0))


def load_pool(n, seed):
    """``n`` digits drawn without replacement, (n, 8, 8, 1) standardized, and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))[:n]
    X = d.images[idx].astype(float)
    X = (X - X.mean()) / X.std()
    return X[..., None], d.target[idx]


def accuracies(K, y, splits):
    """Test accuracy of ridgeless kernel regression (targets 0.9 / -0.1) on each split (train, test)."""
    Y = np.full((len(y), 10), -0.1)
    Y[np.arange(len(y)), y] = 0.9
    acc = []
    for tr, te in splits:
        predict = gradient_descent_mse_ensemble(K[np.ix_(tr, tr)], Y[tr])
        f = predict(None, ntk_test_train=K[np.ix_(te, tr)]).mean
        acc.append(np.mean(f.argmax(1) == y[te]))
    return 100.0 * np.asarray(acc)


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--pool", type=int, default=None, help="digits in the pool (default 200; 60 with --quick)")
    ap.add_argument("--depths", type=int, nargs="+", default=None,
                    help="depths d = conv layers + 1 (default 2 3 5; 2 3 with --quick)")
    ap.add_argument("--splits", type=int, default=None, help="random train/test halvings (default 20; 6 with --quick)")
    a = ap.parse_args(argv)
    n = a.pool or (60 if a.quick else 200)
    depths = sorted(set(a.depths or ((2, 3) if a.quick else (2, 3, 5))))
    n_splits = a.splits or (6 if a.quick else 20)
    if n < 20 or n > 1797:
        ap.error(f"--pool: between 20 and 1797 digits, got {n}")
    if depths[0] < 2:
        ap.error(f"--depths: each at least 2 (one convolution), got {depths}")
    if n_splits < 2:
        ap.error(f"--splits: at least 2, got {n_splits}")
    out = _common.prepare(a)
    cmp = _common.Comparison("Arora et al. 2019 Table 1 / Novak et al. 2019: CNN kernel trends on 8x8 digits")

    X, y = load_pool(n, a.seed)
    rng = np.random.default_rng(a.seed + 1)
    splits = []
    for _ in range(n_splits):
        p = rng.permutation(n)
        splits.append((p[: n // 2], p[n // 2:]))

    cnn(2, "V").kernels(X[:2])  # compile the Numba maps once, outside the timings
    acc, seconds = {}, {}
    jobs = [(d, r) for d in depths for r in ("V", "GAP")]
    for d, r in _common.progress(jobs, "CNN kernels (pool x pool)"):
        t = time.perf_counter()
        k = cnn(d, r).kernels(X)
        seconds[f"CNTK-{r}", d] = seconds[f"CNN-GP-{r}", d] = time.perf_counter() - t
        acc[f"CNTK-{r}", d] = accuracies(k.ntk, y, splits)
        acc[f"CNN-GP-{r}", d] = accuracies(k.nngp, y, splits)
    flat = X.reshape(n, -1)
    for d in depths:
        t = time.perf_counter()
        k = MLP(d - 1, "relu", weight_var=W, bias_var=0.0).kernels(flat)
        seconds["FC-NTK", d] = seconds["FC-NNGP", d] = time.perf_counter() - t
        acc["FC-NTK", d] = accuracies(k.ntk, y, splits)
        acc["FC-NNGP", d] = accuracies(k.nngp, y, splits)

    names = ["CNTK-GAP", "CNTK-V", "CNN-GP-GAP", "CNN-GP-V", "FC-NTK", "FC-NNGP"]
    se = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v)))
    print(f"\n{n} digits, {n_splits} random halvings ({n // 2} train / {n - n // 2} test); test accuracy %, "
          f"mean +- standard error over the splits")
    print("kernel      " + "".join(f"   depth {d:<6d}" for d in depths))
    for m in names:
        print(f"{m:11s} " + "".join(f"  {acc[m, d].mean():5.1f} +- {se(acc[m, d]):3.1f}" for d in depths))

    def best(m):
        d = max(depths, key=lambda d: acc[m, d].mean())
        return acc[m, d], d

    def paired(what, A, B, reference, against, note):
        diff = A - B
        cmp.add(what, diff.mean(), reference, against, se=se(diff), note=note)

    (g, dg), (v, dv) = best("CNTK-GAP"), best("CNTK-V")
    ref = TABLE1["CNTK-GAP"][0] - TABLE1["CNTK-V"][0]
    paired(f"CNTK: GAP (depth {dg}) - V (depth {dv}), accuracy points", g, v, ref,
           f"Arora et al. Table 1, CNTK-GAP d={TABLE1['CNTK-GAP'][1]} - CNTK-V d={TABLE1['CNTK-V'][1]} on CIFAR-10",
           "their GAP column fixes the first and last layers; every layer trained here")
    (g, dg), (v, dv) = best("CNN-GP-GAP"), best("CNN-GP-V")
    paired(f"CNN-GP: GAP (depth {dg}) - V (depth {dv}), accuracy points", g, v, 0.0, "no gain (0)",
           "Novak et al.: pooling is what makes weight sharing count in the limit")
    top = lambda ms: max((acc[m, d] for m in ms for d in depths), key=np.mean)
    paired("best CNTK - best CNN-GP, accuracy points", top(["CNTK-GAP", "CNTK-V"]),
           top(["CNN-GP-GAP", "CNN-GP-V"]), 10.0, "Arora et al. abstract (CNTK vs Novak et al.'s kernels)",
           "their +10 is against the kernels Novak et al. reported; here the same networks' two kernels")
    paired("best CNN kernel - best FC kernel, accuracy points", top(names[:4]), top(names[4:]), 0.0,
           "no gain (0)", "Novak et al.: CNN-GPs beat the fully connected NNGP on CIFAR-10")
    if len(depths) > 1:
        for m in ("CNTK-GAP", "CNTK-V"):
            paired(f"{m}: depth {depths[-1]} - depth {depths[0]}, accuracy points", acc[m, depths[-1]],
                   acc[m, depths[0]], 0.0, "no change (0)",
                   "Table 1: GAP gains with depth up to 11 (of 21), V nearly flat; 8x8 images limit depth")

    fig = _common.figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for m, style in zip(names, ("o-", "s-", "o--", "s--", "^:", "v:")):
        ax1.errorbar(depths, [acc[m, d].mean() for d in depths], yerr=[se(acc[m, d]) for d in depths],
                     fmt=style, capsize=3, label=m)
    ax1.set_xticks(depths)
    ax1.set_xlabel("depth d (convolutions + 1; FC: hidden layers + 1)")
    ax1.set_ylabel(f"test accuracy % ({n - n // 2} digits)")
    ax1.set_title(f"kernel regression, 8x8 digits, {n // 2} training images", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.semilogy(depths, [seconds["CNTK-GAP", d] for d in depths], "o-", label="CNN (GAP) NNGP + NTK")
    ax2.semilogy(depths, [seconds["CNTK-V", d] for d in depths], "s-", label="CNN (V) NNGP + NTK")
    ax2.semilogy(depths, [seconds["FC-NTK", d] for d in depths], "^:", label="FC NNGP + NTK")
    ax2.set_xticks(depths)
    ax2.set_xlabel("depth d")
    ax2.set_ylabel(f"seconds for the {n}x{n} kernels")
    ax2.legend(fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.28)
    _common.save_figure(fig, out / "arora2019_cntk_digits.png")
    _common.write_csv(out / "accuracy.csv", ["kernel", "depth", "mean_accuracy_pct", "se_pct", "kernel_seconds",
                                             *[f"split{i}" for i in range(n_splits)]],
                      [[m, d, f"{acc[m, d].mean():.4f}", f"{se(acc[m, d]):.4f}", f"{seconds[m, d]:.3f}",
                        *[f"{x:.4f}" for x in acc[m, d]]] for m in names for d in depths])
    cmp.write(out, quick=a.quick, seed=a.seed, pool=n, depths=depths, splits=n_splits, weight_var=W, bias_var=0.0)
    return cmp


if __name__ == "__main__":
    main()

"""Verify checks of neural-collapse geometry.

* ``collapse.ufm`` — full-batch gradient descent on the unconstrained-features model
  (bias-free MSE, weight decay, linear head of M layers) from several random starts, at
  several feature dimensions d (the closed-form geometry does not depend on d >= C).
  Each start is one sample; its final objective, classifier norms diag(W W^T), class-mean
  norms and alignment (W h_k)_k are compared with :func:`limitlab.theory.collapse.ufm_global_minimizer`
  (Dang et al. 2023, Thm 3.1): depth 1 with a minority class below the collapse threshold
  (its classifier and features go to zero) and depth 2 with all classes above it.
  Gradient descent is deterministic given the start, so ``rtol_floor`` is the optimizer's
  tolerance, not a statistical allowance; a start stuck at a non-global stationary point
  fails the check (the report then shows it).
* ``collapse.train`` — a bias-free two-hidden-layer ReLU MLP trained by full-batch gradient
  descent on MSE with weight decay on a Gaussian-mixture dataset; size = number of steps.
  Quantities whose value in the collapsed geometry of the UFM is 0 (Papyan et al. 2020;
  Dang et al. 2023, Thm 2.1, bias-free: W aligned with the uncentred class means): NC1 and
  the self-duality gap 1 - mean_k cos(w_k, h_k). The check asserts they fall towards 0
  at least as fast as steps^-1/2 (``bias_rate`` 0.5) over its sizes; no rate is claimed.
  Weight decay makes the finite network settle at an equilibrium with NC1 > 0 (about
  0.006 at weight decay 5e-3, reached near 6400 steps; 0.011 at 1e-2 by 3200 steps), so
  the sizes stay in the falling phase; the mean |cos| between uncentred class means
  (0 for the UFM's orthogonal frame) stalls near 0.09 in these ReLU networks and is not
  part of the verdict (``train_measurements`` returns it).
  Trained by the finite-network engine (array API: NumPy, torch, CuPy): networks of one size
  train as a batch.
"""
from __future__ import annotations

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

__all__ = ["UFM_CASES", "ufm_gradient_descent", "mlp", "train_mlp", "gaussian_mixture"]

# (depth, class sizes, lambda_W, lambda_H, learning rate, steps)
UFM_CASES = (
    (1, (12, 8, 5, 2), 0.1, 0.04, 1.0, 1500),  # n_4 = 2 < N^2 lW lH = 2.92: class 4 collapses
    (2, (12, 8, 5, 2), 0.005, 0.002, 1.0, 4000),
)
UFM_RTOL = 1e-4


def ufm_gradient_descent(counts, lambda_W, lambda_H, depth, dim, *, starts, lr, steps, seed, backend="numpy",
                         init_scale=1.2):
    """Batched full-batch GD on the UFM objective (limitlab.theory.collapse.ufm) from
    ``starts`` Gaussian starts. Returns host arrays: objective (S,), product P (S, C, d),
    features H (S, N, d), labels (N,)."""
    from limitlab.verify.backend import get_backend

    bk = get_backend(backend)
    xp = bk.xp
    C = len(counts)
    y = np.repeat(np.arange(C), counts)
    N = y.size
    rng = np.random.default_rng(seed)
    shapes = [(dim, dim)] * (depth - 1) + [(C, dim)]
    # entries of variance init_scale^2 / dim: the spectral norms do not grow with dim
    sd = init_scale / np.sqrt(dim)
    Ws = [bk.asarray(sd * rng.standard_normal((starts,) + s)) for s in shapes]
    H = bk.asarray(sd * rng.standard_normal((starts, N, dim)))
    Y = bk.asarray(np.eye(C)[y])

    def T(a):
        return xp.permute_dims(a, (0, 2, 1))

    def forward(Ws):
        prods = [Ws[0]]  # prods[j] = W_j ... W_1
        for W in Ws[1:]:
            prods.append(xp.matmul(W, prods[-1]))
        return prods

    for _ in range(steps):
        prods = forward(Ws)
        P = prods[-1]
        R = (xp.matmul(H, T(P)) - Y) / N  # (S, N, C)
        G = xp.matmul(T(R), H)  # df/dP, (S, C, d)
        dH = xp.matmul(R, P) + lambda_H * H
        suffix = None  # W_M ... W_{j+1}
        grads = [None] * depth
        for j in range(depth - 1, -1, -1):
            left = G if suffix is None else xp.matmul(T(suffix), G)
            grads[j] = (left if j == 0 else xp.matmul(left, T(prods[j - 1]))) + lambda_W * Ws[j]
            suffix = Ws[j] if suffix is None else xp.matmul(suffix, Ws[j])
        Ws = [W - lr * g for W, g in zip(Ws, grads)]
        H = H - lr * dH
    P = forward(Ws)[-1]
    R = xp.matmul(H, T(P)) - Y
    f = 0.5 / N * xp.sum(xp.reshape(R * R, (starts, -1)), axis=1) + 0.5 * lambda_H * xp.sum(
        xp.reshape(H * H, (starts, -1)), axis=1)
    for W in Ws:
        f = f + 0.5 * lambda_W * xp.sum(xp.reshape(W * W, (starts, -1)), axis=1)
    return bk.to_numpy(f), bk.to_numpy(P), bk.to_numpy(H), y


@check("collapse.ufm", sizes=(6, 12, 24), quick_sizes=(6, 12), samples=6, quick_samples=3, rate=None,
       size_name="dim", default=True, min_size=4, seconds_quick=1.0,
       min_size_reason="the closed-form minimizer needs feature dimension d >= C = 4 classes",
       description="GD on the unconstrained-features model reaches Dang et al.'s closed-form global minimizer")
def _ufm(ctx: Context) -> list:
    from limitlab.theory.collapse import ufm_global_minimizer

    out = []
    for depth, counts, lw, lh, lr, steps in UFM_CASES:
        g = ufm_global_minimizer(counts, lw, lh, depth)
        f, P, H, y = ufm_gradient_descent(counts, lw, lh, depth, ctx.size, starts=ctx.samples, lr=lr, steps=steps,
                                          seed=ctx.rng, backend=ctx.backend)
        tag = f"M={depth}"
        out.append(Measurement(f"{tag} global minimum", g.objective, f, rtol_floor=UFM_RTOL))
        hbar = np.stack([H[:, y == k].mean(axis=1) for k in range(len(counts))], axis=1)  # (S, C, d)
        w2 = np.einsum("sci,sci->sc", P, P)
        h2 = np.einsum("sci,sci->sc", hbar, hbar)
        align = np.einsum("sci,sci->sc", P, hbar)
        for k in range(len(counts)):
            if g.collapsed[k]:
                # zero in theory: compare the (tiny) norms through the objective's class share
                continue
            out.append(Measurement(f"{tag} |w_{k}|^2", g.classifier_sq_norms[k], w2[:, k], rtol_floor=UFM_RTOL))
            out.append(Measurement(f"{tag} |h_{k}|^2", g.feature_sq_norms[k], h2[:, k], rtol_floor=UFM_RTOL))
            out.append(Measurement(f"{tag} (W h_{k})_{k}", g.alignment[k], align[:, k], rtol_floor=UFM_RTOL))
        # the collapsed classes: their share of the squared norms must vanish
        if g.collapsed.any():
            frac = w2[:, g.collapsed].sum(axis=1) / w2.sum(axis=1)
            out.append(Measurement(f"{tag} 1 + norm share of collapsed classes", 1.0, 1.0 + frac,
                                   rtol_floor=UFM_RTOL))
    return out


# --------------------------------------------------------------------------------------
# collapse.train
# --------------------------------------------------------------------------------------

TRAIN = dict(classes=4, dim=16, per_class=32, width=64, lr=0.1, weight_decay=5e-3, separation=1.0, noise=1.0)


def gaussian_mixture(rng, classes, dim, per_class, separation=1.0, noise=1.0):
    """Balanced Gaussian mixture: means of norm ``separation``, isotropic noise of total
    variance ``noise``; inputs rescaled to norm sqrt(dim). Returns X (N, dim), labels (N,)."""
    mu = rng.standard_normal((classes, dim))
    mu *= separation / np.linalg.norm(mu, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), per_class)
    X = mu[y] + noise * rng.standard_normal((y.size, dim)) / np.sqrt(dim)
    X *= np.sqrt(dim) / np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def mlp(classes, width, depth=2, activation="relu"):
    """The bias-free standard-parametrization MLP of :func:`train_mlp` (He init), as a stax network."""
    from limitlab.theory.kernels import stax

    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, weight_var=2.0, bias_var=None, parametrization="standard"),
                   stax.Activation(activation)]
    return stax.serial(*layers, stax.Dense(classes, bias_var=None, parametrization="standard"))


def train_mlp(X, y, *, networks, width, steps, lr, weight_decay, seed, backend="numpy", depth=2,
              record_steps=(), callback=None, activation="relu", init=None):
    """``networks`` bias-free MLPs in the standard parametrization (He init: hidden weights
    N(0, 2 / fan_in), readout N(0, 1 / width)) trained as a batch by the finite-network engine
    (:func:`limitlab.verify.networks.train`): full-batch GD on (1/2N) ||f - Y||^2 + (weight_decay/2)
    sum ||W||^2 with one-hot targets Y. Returns host arrays: last-hidden features (S, N, width),
    readout W (S, C, width), final loss (S,). ``callback(step, features, classifier)`` (host
    arrays) runs at each of ``record_steps``. ``activation``: a name for
    :func:`limitlab.theory.activations.get` (ReLU by default). ``init``: initial parameters
    instead of the engine's draws (see :func:`limitlab.verify.networks.train`)."""
    from limitlab.verify.networks import train

    C = int(y.max()) + 1
    net = mlp(C, width, depth, activation)
    hook = None if callback is None else (lambda t, r: callback(t, r["feat"], np.swapaxes(r["ro"], 1, 2)))
    rec = sorted({int(t) for t in record_steps if 0 <= int(t) <= steps})
    res = train(net, X, np.eye(C)[y], lr=lr, steps=steps, n_networks=networks, seed=seed, backend=backend,
                record_steps=sorted(set(rec) | {steps}), record=("features", "readout"), weight_decay=weight_decay,
                init=init, callback=None if hook is None else (lambda t, r: hook(t, r) if t in rec else None))
    return res.features[:, -1], np.swapaxes(res.readout[:, -1], 1, 2), res.loss[:, -1]


def train_measurements(features, classifier, y):
    """Per network: NC1 (Papyan et al.), self-duality gap and mean |cos| of uncentred class means."""
    from limitlab.theory.collapse import metrics

    C = classifier.shape[1]
    nc1, gap, cosm = [], [], []
    iu = np.triu_indices(C, 1)
    for H, W in zip(features, classifier):
        nc1.append(metrics(H, y, num_classes=C).nc1)
        hb = np.stack([H[y == k].mean(axis=0) for k in range(C)])
        hn = hb / np.linalg.norm(hb, axis=1, keepdims=True)
        wn = W / np.linalg.norm(W, axis=1, keepdims=True)
        gap.append(1.0 - float(np.mean(np.sum(hn * wn, axis=1))))
        cosm.append(float(np.mean(np.abs(hn @ hn.T)[iu])))
    return np.array(nc1), np.array(gap), np.array(cosm)


@check("collapse.train", sizes=(400, 1600, 6400), quick_sizes=(400, 1600), samples=16, quick_samples=4, rate=None,
       bias_rate=0.5, size_name="steps", default=False,  # run by name (`limitlab verify collapse.train`): ~3 s quick
       min_size=400, seconds_quick=3.0,
       min_size_reason="before ~400 steps (lr 0.1) the network is still fitting the labels; the collapse "
                       "metrics fall only afterwards",
       description="an MLP trained by GD on a Gaussian mixture: NC1 and the self-duality gap fall towards 0")
def _train(ctx: Context) -> list:
    p = TRAIN
    rng = ctx.rng
    X, y = gaussian_mixture(np.random.default_rng(20200924), p["classes"], p["dim"], p["per_class"],
                            p["separation"], p["noise"])  # fixed data: PNAS publication date
    H, W, _ = train_mlp(X, y, networks=ctx.samples, width=p["width"], steps=ctx.size, lr=p["lr"],
                        weight_decay=p["weight_decay"], seed=rng, backend=ctx.backend)
    nc1, gap, _ = train_measurements(H, W, y)
    return [Measurement("NC1", 0.0, nc1), Measurement("1 - cos(w_k, h_k)", 0.0, gap)]

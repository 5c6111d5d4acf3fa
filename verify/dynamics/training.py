"""Finite networks trained by full-batch gradient descent, for the dynamics checks.

Small, explicit trainers (manual backpropagation, any array-API namespace) for the three
network families the theory speaks about:

* :func:`train_ntk_mlp` — NTK parametrization (neural-tangents conventions,
  ``h = sqrt(weight_var / fan_in) W x``), sum loss, step ``lr``;
* :func:`train_mup_mlp` — Bordelon & Pehlevan's muP / mean-field scaling with richness
  gamma0 (``f = w . phi(h^L) / (gamma0 N)``, rates multiplied by gamma0^2 N);
* :func:`train_abc` — an abc-parametrization (Yang & Hu 2021) for coordinate checks.

Written here rather than in the shared Monte Carlo engine because the muP / abc
scalings need per-layer multipliers that the engine's NTK-parametrized MLP does not take.
"""
from __future__ import annotations

import math

import numpy as np

from limitlab.numerics import arrays
from limitlab.theory import activations as _act

__all__ = ["train_ntk_mlp", "train_mup_mlp", "train_abc", "train_deep_linear"]


def _xp_of(xp):
    return xp if xp is not None else arrays.namespace()


def _to(xp, a, device=None):
    if device is None:
        return xp.asarray(a)
    return xp.asarray(a, device=device)


def train_ntk_mlp(X, y, X_test, depth, activation, width, steps, lr, seed, weight_var=1.0, xp=None, device=None,
                  record=None):
    """Gradient descent on ``sum (f - y)^2 / 2`` of an NTK-parametrized MLP; returns (f_train, f_test) per recorded step.

    ``record``: step indices to record (default: 0 and ``steps``). Outputs are NumPy arrays
    of shape (n_record, P) and (n_record, P_test).
    """
    xp = _xp_of(xp)
    act = _act.get(activation)
    rng = np.random.default_rng(seed)
    record = sorted(set(record if record is not None else (0, steps)))
    D = X.shape[1]
    fans = [D] + [width] * depth
    Ws = [_to(xp, rng.standard_normal((fans[l + 1] if l < depth else 1, fans[l])), device) for l in range(depth + 1)]
    scale = [math.sqrt(weight_var / f) for f in fans]
    Xa = _to(xp, np.concatenate([X, X_test]), device)
    Xa = xp.matrix_transpose(Xa) if hasattr(xp, "matrix_transpose") else Xa.T
    P = X.shape[0]
    out_tr, out_te = [], []

    def forward(Ws):
        acts, pre = [Xa], []
        z = Xa
        for l in range(depth):
            hh = scale[l] * (Ws[l] @ z)
            pre.append(hh)
            z = act(hh, xp)
            acts.append(z)
        f = scale[depth] * (Ws[depth] @ z)[0]
        return f, pre, acts

    for k in range(steps + 1):
        f, pre, acts = forward(Ws)
        if k in record:
            fn = arrays.to_numpy(f)
            out_tr.append(fn[:P].copy())
            out_te.append(fn[P:].copy())
        if k == steps:
            break
        # only training columns carry a residual
        res = np.zeros(Xa.shape[1])
        res[:P] = arrays.to_numpy(f)[:P] - y
        r = _to(xp, res[None, :], device)
        T_ = xp.matrix_transpose if hasattr(xp, "matrix_transpose") else (lambda a: a.T)
        grads = [None] * (depth + 1)
        grads[depth] = scale[depth] * (r @ T_(acts[depth]))
        back = scale[depth] * (T_(Ws[depth]) @ r)  # d loss / d acts[depth]
        for l in range(depth - 1, -1, -1):
            delta = back * act.derivative(pre[l], xp)
            grads[l] = scale[l] * (delta @ T_(acts[l]))
            if l > 0:
                back = scale[l] * (T_(Ws[l]) @ delta)
        Ws = [W - lr * g for W, g in zip(Ws, grads)]
    return np.array(out_tr), np.array(out_te)


def train_mup_mlp(X, y, depth, activation, gamma0, width, steps, dt, seed, xp=None, device=None, record=None):
    """Bordelon & Pehlevan 2022 muP network trained by gradient descent with step dt (rates x gamma0^2 N).

    Returns (f, Phi_L) with f of shape (n_record, P) and Phi_L = phi(h^L)^T phi(h^L) / N
    at each recorded step, shape (n_record, P, P).
    """
    if gamma0 <= 0:
        raise ValueError(f"gamma0: must be > 0 for the mean-field scaling, got {gamma0!r}")
    xp = _xp_of(xp)
    act = _act.get(activation)
    rng = np.random.default_rng(seed)
    record = sorted(set(record if record is not None else (0, steps)))
    P, D = X.shape
    N = int(width)
    W0 = _to(xp, rng.standard_normal((N, D)), device)
    Ws = [_to(xp, rng.standard_normal((N, N)), device) for _ in range(depth - 1)]
    w = _to(xp, rng.standard_normal(N), device)
    Xt = _to(xp, np.ascontiguousarray(X.T), device)
    yv = _to(xp, y, device)
    fs, phis = [], []
    T_ = xp.matrix_transpose if hasattr(xp, "matrix_transpose") else (lambda a: a.T)
    for k in range(steps + 1):
        pre = [W0 @ Xt / math.sqrt(D)]
        acts = [act(pre[0], xp)]
        for W in Ws:
            pre.append(W @ acts[-1] / math.sqrt(N))
            acts.append(act(pre[-1], xp))
        f = (w @ acts[-1]) / (gamma0 * N)
        if k in record:
            fs.append(arrays.to_numpy(f).copy())
            phis.append(arrays.to_numpy(T_(acts[-1]) @ acts[-1] / N))
        if k == steps:
            break
        delta = yv - f
        # g^L = w phi'(h^L); updates dtheta = dt gamma0^2 N sum_mu Delta_mu df_mu/dtheta
        g = w[:, None] * act.derivative(pre[-1], xp)
        new_w = w + dt * gamma0 * (acts[-1] @ delta)
        new_Ws = list(Ws)
        for l in range(depth - 1, 0, -1):
            gd = g * delta[None, :]
            new_Ws[l - 1] = Ws[l - 1] + dt * gamma0 / math.sqrt(N) * (gd @ T_(acts[l - 1]))
            g = act.derivative(pre[l - 1], xp) * (T_(Ws[l - 1]) @ g) / math.sqrt(N)
        W0 = W0 + dt * gamma0 / math.sqrt(D) * ((g * delta[None, :]) @ T_(Xt))
        w, Ws = new_w, new_Ws
    return np.array(fs), np.array(phis)


def train_abc(X, y, a, b, c, eta, width, steps, activation="tanh", seed=0, per_residual=False):
    """SGD (full batch) in an abc-parametrization (Yang & Hu 2021, sec. 3); returns per-layer RMS of h^l_t - h^l_0.

    W^l = n^{-a_l} w^l, w^l ~ N(0, n^{-2 b_l}), learning rate eta n^{-c}; input fan-in d is
    not scaled. Returns an array (depth + 1,) of coordinate sizes: RMS over neurons and
    inputs of the change of each hidden layer's pre-activation, and |f_t - f_0| for the output;
    ``per_residual`` divides them by the RMS initial residual (the first step is linear in it,
    so this removes the seed-to-seed spread of f_0 in SP).
    """
    act = _act.get(activation)
    rng = np.random.default_rng(seed)
    L = len(a) - 1
    n = int(width)
    P, D = X.shape
    fans = [D] + [n] * L
    outs = [n] * L + [1]
    ws = [rng.standard_normal((outs[l], fans[l])) * n ** (-b[l]) for l in range(L + 1)]
    mult = [n ** (-a[l]) for l in range(L + 1)]
    lr = eta * n ** (-c)
    Xt = X.T

    def forward(ws):
        z, pre, acts = Xt, [], [Xt]
        for l in range(L):
            hh = mult[l] * (ws[l] @ z)
            pre.append(hh)
            z = act(hh)
            acts.append(z)
        return (mult[L] * (ws[L] @ z))[0], pre, acts

    f0, pre0, _ = forward(ws)
    for _ in range(steps):
        f, pre, acts = forward(ws)
        r = f - y
        grads = [None] * (L + 1)
        back = mult[L] * r[None, :]
        grads[L] = back @ acts[L].T
        back = ws[L].T @ back
        for l in range(L - 1, -1, -1):
            delta = back * act.derivative(pre[l])
            grads[l] = mult[l] * (delta @ acts[l].T)
            back = mult[l] * (ws[l].T @ delta)
        ws = [w - lr * g for w, g in zip(ws, grads)]
    f, pre, _ = forward(ws)
    sizes = [float(np.sqrt(np.mean((pre[l] - pre0[l]) ** 2))) for l in range(L)]
    sizes.append(float(np.sqrt(np.mean((f - f0) ** 2))))
    sizes = np.array(sizes)
    return sizes / np.sqrt(np.mean((f0 - y) ** 2)) if per_residual else sizes


def train_deep_linear(Ws, X, Y, lr, steps, record):
    """Full-batch GD on ||Y - W_k..W_1 X||^2 / (2 P): returns the end-to-end maps at the recorded steps."""
    P = X.shape[1]
    Ws = [W.copy() for W in Ws]
    out = []
    for k in range(steps + 1):
        if k in record:
            M = Ws[0]
            for W in Ws[1:]:
                M = W @ M
            out.append(M)
        if k == steps:
            break
        # forward products and the error
        hs = [X]
        for W in Ws:
            hs.append(W @ hs[-1])
        E = (Y - hs[-1]) / P
        back = E
        grads = [None] * len(Ws)
        for l in range(len(Ws) - 1, -1, -1):
            grads[l] = back @ hs[l].T
            back = Ws[l].T @ back
        Ws = [W + lr * g for W, g in zip(Ws, grads)]
    return np.array(out)

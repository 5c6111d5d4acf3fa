"""The networks of the dynamics checks, trained by the finite-network engine.

Each function only builds a stax description and its parametrization and calls
:func:`limitlab.verify.networks.train` (full-batch gradient descent on any array backend,
network i drawn from ``(seed, i)``):

* :func:`train_mup_mlp` — Bordelon & Pehlevan 2022's muP / mean-field network with richness
  gamma0: ``h^1 = W^0 x / sqrt(D)``, ``h^{l+1} = W^l phi(h^l) / sqrt(N)``, ``f = w . phi(h^L) /
  (gamma0 N)``, all N(0, 1), every parameter moved by ``dt gamma0^2 N`` times its gradient of
  ``sum (f - y)^2 / 2``. That is Yang & Hu 2021's ``mup`` preset (after their eq. (5)
  symmetry) with readout ``weight_var = 1/gamma0^2`` and base rate ``eta = dt gamma0^2``.
* :func:`coordinate_change` — the per-coordinate change of the last hidden pre-activations
  after a few steps in an abc-parametrization (Yang & Hu 2021, sec. 3; coordinate checks of
  Yang et al. 2022).
* :func:`train_deep_linear` — a deep linear network ``serial(Dense, ..., Dense)`` (standard
  parametrization, no bias, no activation) from given weights, its end-to-end map along GD.
"""
from __future__ import annotations

import numpy as np

from limitlab.numerics import validation as validate
from limitlab.theory.kernels import stax

__all__ = ["mup_mlp", "train_mup_mlp", "coordinate_change", "train_deep_linear"]


def _mlp(depth, activation, readout_weight_var=1.0):
    """``depth`` hidden Dense(1)->activation layers and a Dense readout (widths set by at_width)."""
    layers = []
    for _ in range(validate.integer(depth, "depth", minimum=1)):
        layers += [stax.Dense(1), stax.Activation(activation)]
    return stax.serial(*layers, stax.Dense(1, weight_var=readout_weight_var))


def mup_mlp(depth: int, activation, gamma0: float):
    """Bordelon & Pehlevan 2022's muP network (see the module docstring) as (stax network, base rate
    factor gamma0^2): train it with ``parametrization="mup"``, ``lr = (DMFT lr) * gamma0^2``, ``loss_scale="sum"``."""
    gamma0 = validate.positive(gamma0, "gamma0", meaning="the mean-field scale")
    return _mlp(depth, activation, 1.0 / gamma0 ** 2), gamma0 ** 2


@validate.renamed(dt="lr")
def train_mup_mlp(X, y, depth, activation, gamma0, width, steps, lr, *, n_networks=1, seed=0, backend="numpy",
                  record=None):
    """``n_networks`` muP networks (Bordelon & Pehlevan 2022) trained by GD with step lr (the
    DMFT solvers' ``lr``: the raw learning rate is ``lr * gamma0^2``).

    Returns (f, Phi): f (S, T, P) at the recorded steps (default 0 and ``steps``) and
    ``Phi_L = phi(h^L) phi(h^L)^T / N`` (S, T, P, P)."""
    from limitlab.verify.networks import train

    net, g2 = mup_mlp(depth, activation, gamma0)
    rec = sorted(set(record if record is not None else (0, steps)))
    res = train(net, X, y, lr=lr * g2, steps=steps, width=width, parametrization="mup", n_networks=n_networks,
                seed=seed, backend=backend, record_steps=rec, record=("features",), loss_scale="sum")
    feats = res.features
    return res.f_train[..., 0], np.einsum("stpi,stqi->stpq", feats, feats) / feats.shape[-1]


def coordinate_change(X, y, abc, lr, width, steps, activation="tanh", *, n_networks=1, seed=0, backend="numpy"):
    """RMS over units and inputs of ``h^L_t - h^L_0`` (the last hidden pre-activations) after
    ``steps`` full-batch GD steps in the abc-parametrization ``abc`` ((a, b, c) or an ABC, one
    exponent per layer) at width n, divided by the RMS initial residual (the first step is linear
    in it: this removes the seed-to-seed spread of f_0). Returns one value per network (S,)."""
    from limitlab.theory.dynamics.parametrizations import ABC
    from limitlab.verify.networks import train

    depth = (len(abc.a) if isinstance(abc, ABC) else len(abc[0])) - 1
    net = _mlp(depth, activation)
    res = train(net, X, y, lr=lr, steps=steps, width=width, parametrization=abc, n_networks=n_networks, seed=seed,
                backend=backend, record_steps=[0, steps], record=("features",), features_at=2 * depth - 1,
                loss_scale="sum")
    h = res.features
    change = np.sqrt(np.mean((h[:, -1] - h[:, 0]) ** 2, axis=(1, 2)))
    residual = np.sqrt(np.mean((res.f_train[:, 0, :, 0] - np.asarray(y)) ** 2, axis=1))
    return change / residual


def train_deep_linear(Ws, X, Y, lr, steps, record, backend="numpy"):
    """Full-batch GD on ``||Y - W_k..W_1 X||^2 / (2 P)`` (X (d, P), Y (m, P): columns are samples)
    from the weights ``Ws`` (W_1 first); returns the end-to-end maps W_k..W_1 (T, m, d) at the
    recorded steps (read off as the outputs on the basis vectors)."""
    from limitlab.verify.networks import train

    Ws = [np.asarray(W, dtype=float) for W in Ws]
    layers = [stax.Dense(W.shape[0], bias_var=None, parametrization="standard") for W in Ws]
    init = sum(([W.T, np.zeros(W.shape[0])] for W in Ws), [])
    d = Ws[0].shape[1]
    rec = sorted(set(int(t) for t in record))
    res = train(stax.serial(*layers), np.asarray(X, dtype=float).T, np.asarray(Y, dtype=float).T, lr=lr,
                steps=steps, record_steps=rec, init=init, X_test=np.eye(d), backend=backend)
    return np.transpose(res.f_test[0], (0, 2, 1))

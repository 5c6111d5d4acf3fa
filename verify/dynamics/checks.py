"""Verify checks of the training-dynamics pillar.

* ``dynamics.ntk-flow`` — wide NTK-parametrized MLPs trained by small-step gradient descent
  (the finite-network engine, ``limitlab.verify.networks.train``) follow the infinite-width linear
  dynamics (Lee et al. 2019). Each network's own f_0 is carried through the linear
  prediction (f_t - f_0 + Theta_xX Theta^-1 (I - e^{-eta Theta t}) f_0(X)), so one network's
  estimate deviates from the ensemble mean only by the O(n^-1/2) kernel fluctuation.
* ``dynamics.dmft`` — Bordelon & Pehlevan muP two-layer tanh networks at gamma0 = 0.5 and 1
  converge to the DMFT f(t) and Phi(t, t) (the engine with the ``mup`` abc-parametrization;
  :func:`.training.train_mup_mlp`). Deviations of one network are O(N^-1/2).
* ``dynamics.deep-linear`` — a three-weight-matrix linear network from Saxe's decoupled
  balanced initial condition, trained by gradient descent with step 1/size, follows the
  exact mode trajectories; Richardson extrapolation of steps 1/size and 1/(2 size) leaves an
  O(step^2) discretization error: rate -2.
* ``dynamics.mup-coord`` — coordinate check (Yang et al. 2022, microsoft/mup): after a few
  SGD steps, the per-coordinate change of the last hidden layer stays flat with width under
  muP and grows like n^{1/2} under SP with a width-independent rate (an unstable
  parametrization per :func:`limitlab.theory.dynamics.parametrizations.classify`). The
  measured quantity is the ratio change(SP) / change(muP) divided by the theory scale
  (n / n_0)^{1/2}: it tends to a constant.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

from . import training

__all__ = ["NTK_X", "DMFT_X"]


def _inputs(P, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, d))
    X *= np.sqrt(d) / np.linalg.norm(X, axis=1, keepdims=True)  # x.x / d = 1
    y = np.tanh(X[:, 0] + 0.5 * X[:, 1])
    return X, y


NTK_X, NTK_Y = _inputs(4, 8, 2019)
NTK_XTEST, _ = _inputs(2, 8, 2020)
NTK_LR, NTK_STEPS = 0.05, 60
DMFT_X, DMFT_Y = _inputs(4, 8, 2022)
DMFT_DT, DMFT_STEPS, DMFT_GAMMAS = 0.1, 30, (0.5, 1.0)
DMFT_RECORD = (10, 20, 30)  # steps at which f(t) is compared (t = step * dt); the last is DMFT_STEPS


@lru_cache(maxsize=None)
def _ntk_theory():
    from limitlab.theory.kernels import stax
    from limitlab.theory.kernels.mlp import MLP

    mlp = MLP(1, "erf", weight_var=1.0, bias_var=0.0)
    net = stax.serial(stax.Dense(1), stax.Erf(), stax.Dense(1))  # the same network, as the engine's description
    return net, mlp.ntk(NTK_X), mlp.ntk(NTK_XTEST, NTK_X)


@check("dynamics.ntk-flow", sizes=(256, 1024, 4096), quick_sizes=(128, 256, 512), samples=16, quick_samples=8,
       rate=-0.5, default=True, min_size=64, seconds_quick=1.0,
       min_size_reason="the lazy (linearized) regime needs the O(n^-1/2) kernel change during training to be small; "
                       "below 64 it is tens of percent at this learning rate and time",
       description="wide NTK-parametrized MLPs trained by GD follow the NTK flow")
def ntk_flow(ctx: Context) -> list:
    from limitlab.theory.dynamics.gradient_flow import gradient_descent_mse_ensemble
    from limitlab.verify.networks import train

    net, ntk, ntk_tx = _ntk_theory()
    res = train(net, NTK_X, NTK_Y, lr=NTK_LR, steps=NTK_STEPS, width=ctx.size, n_networks=ctx.samples,
                X_test=NTK_XTEST, record_steps=[0, NTK_STEPS], seed=ctx.rng, backend=ctx.backend, loss_scale="sum")
    predict = gradient_descent_mse_ensemble(ntk, NTK_Y, lr=NTK_LR, normalization=1.0, steps=True)
    theory = predict(NTK_STEPS, ntk_test_train=ntk_tx).mean
    theory_tr = predict(NTK_STEPS).mean
    # the same linear map applied to each network's own f_0(X) (targets -f_0 give -Theta..f_0)
    ftr, fte = res.f_train[..., 0], res.f_test[..., 0]
    est_tr, est_te = [], []
    for s in range(ftr.shape[0]):
        f0 = ftr[s, 0]
        lin = gradient_descent_mse_ensemble(ntk, f0, lr=NTK_LR, normalization=1.0, steps=True)
        est_tr.append(ftr[s, -1] - f0 + lin(NTK_STEPS).mean)
        est_te.append(fte[s, -1] - fte[s, 0] + lin(NTK_STEPS, ntk_test_train=ntk_tx).mean)
    est_tr, est_te = np.array(est_tr), np.array(est_te)
    out = [Measurement(f"f_train[{i}]", theory_tr[i], est_tr[:, i]) for i in range(2)]
    out += [Measurement(f"f_test[{i}]", theory[i], est_te[:, i]) for i in range(2)]
    return out


@lru_cache(maxsize=None)
def _dmft_theory(gamma0):
    from limitlab.theory.dynamics import dmft

    r = dmft.two_layer(dmft.input_kernel(DMFT_X), DMFT_Y, "tanh", gamma0, DMFT_STEPS, DMFT_DT, samples=50_000,
                       seed=7, snapshots=[0, DMFT_STEPS])
    return r.f[list(DMFT_RECORD)], r.Phi[-1, -1]


def _t(step):
    return f"{step * DMFT_DT:g}"


def _dmft_series(names):
    """Plot hook: f_i(t) of each gamma0 against t (theory line, simulation ± z SE)."""
    from limitlab.verify.registry import Series

    out = []
    for g in DMFT_GAMMAS:
        for i in range(2):
            qs = [f"gamma0={g} f[{i}](t={_t(k)})" for k in DMFT_RECORD]
            if all(q in names for q in qs):
                out.append(Series(f"gamma0={g} f[{i}]", [k * DMFT_DT for k in DMFT_RECORD], qs, "t"))
    return out


@check("dynamics.dmft", sizes=(256, 1024, 4096), quick_sizes=(128, 256, 512), samples=12, quick_samples=6,
       rate=-0.5, default=True, min_size=64, seconds_quick=3.0, plot_series=_dmft_series,
       min_size_reason="the DMFT describes the N -> infinity limit with O(N^-1/2) fluctuations; below 64 the "
                       "O(1/N) corrections to f(t) are no longer small against them",
       description="muP two-layer tanh networks converge to DMFT f(t), Phi(t,t) at gamma0 0.5, 1")
def dmft_check(ctx: Context) -> list:
    out = []
    seed = int(ctx.rng.integers(0, 2**63 - 1))  # the same networks at both gamma0
    for g in DMFT_GAMMAS:
        f_th, phi_th = _dmft_theory(g)
        fs, phis = training.train_mup_mlp(DMFT_X, DMFT_Y, 1, "tanh", g, ctx.size, DMFT_STEPS, DMFT_DT,
                                          n_networks=ctx.samples, seed=seed, backend=ctx.backend, record=DMFT_RECORD)
        phis = phis[:, -1]  # fs: (samples, len(DMFT_RECORD), P)
        for i in range(2):
            for k, step in enumerate(DMFT_RECORD):
                out.append(Measurement(f"gamma0={g} f[{i}](t={_t(step)})", f_th[k, i], fs[:, k, i]))
        out.append(Measurement(f"gamma0={g} Phi[0,0]", phi_th[0, 0], phis[:, 0, 0]))
        out.append(Measurement(f"gamma0={g} Phi[0,1]", phi_th[0, 1], phis[:, 0, 1]))
    return out


SAXE_S = np.array([3.0, 2.0, 1.0])
SAXE_U0 = 1e-2
SAXE_TIMES = (1.0, 2.5)


@check("dynamics.deep-linear", sizes=(40, 80, 160, 320), quick_sizes=(40, 80, 160), samples=3, quick_samples=2,
       rate=-2.0, size_name="steps per unit time", min_size=20, seconds_quick=3.0,
       min_size_reason="the O(step^2) Richardson error is the leading term only once the step 1/size is well "
                       "below the fastest mode's time scale (~1/6 for s = 3 at depth 2)",
       description="deep linear GD follows Saxe et al.'s exact mode trajectories (Richardson error O(step^2))")
def deep_linear_check(ctx: Context) -> list:
    from limitlab.theory.dynamics import deep_linear as dl

    depth, hidden = 2, 6
    lr = 1.0 / ctx.size
    out_dim, in_dim, P = 3, 4, 4
    theory = dl.mode_trajectory(np.array(SAXE_TIMES), SAXE_S, SAXE_U0, depth)
    ests = []
    for s in range(ctx.samples):
        rng = np.random.default_rng([ctx.seed, s])
        U = np.linalg.qr(rng.standard_normal((out_dim, out_dim)))[0]
        V = np.linalg.qr(rng.standard_normal((in_dim, in_dim)))[0][:, :3]
        sigma31 = U @ np.diag(SAXE_S) @ V.T
        X = np.sqrt(P) * np.eye(in_dim)[:, :P]  # whitened: X X^T / P = I
        Y = sigma31 @ X  # Y X^T / P = Sigma31
        Ws, _ = dl.balanced_init(sigma31, SAXE_U0, depth, hidden, seed=rng)
        modes = []
        for k in (1, 2):  # step lr and lr/2; Richardson 2 u(lr/2) - u(lr) cancels the O(lr) bias of GD
            steps = [int(round(t * ctx.size * k)) for t in SAXE_TIMES]
            maps = training.train_deep_linear(Ws, X, Y, lr / k, max(steps), steps, backend=ctx.backend)
            modes.append(np.array([[U[:, a] @ M @ V[:, a] for a in range(3)] for M in maps]))
        ests.append(2 * modes[1] - modes[0])
    ests = np.array(ests)  # (samples, times, modes)
    return [Measurement(f"u_{a}(t={t})", theory[k, a], ests[:, k, a], rtol_floor=0.0)
            for k, t in enumerate(SAXE_TIMES) for a in range(3)]


@check("dynamics.mup-coord", sizes=(256, 512, 1024, 2048), quick_sizes=(256, 512, 1024), samples=8, quick_samples=4,
       rate=None, min_size=128, seconds_quick=6.0,
       min_size_reason="log2 growth between n/2 and n reaches its exponent (0 muP, 1/2 SP) only once n/2 >= 64 "
                       "makes the O(n^-1/2) fluctuation of one step small",
       description="coordinate check: one SGD step moves h^L by O(1) under muP, O(n^1/2) under SP")
def mup_coord(ctx: Context) -> list:
    """log2 of |dh^L|(n) / |dh^L|(n/2) after one SGD step with a width-independent base rate.

    muP (classify: stable, r = 0): 0. SP with c = 0 (classify: unstable): the first step moves
    the last hidden pre-activations by lr |x^{L-1}|^2 W^{L+1} ~ n^{1/2}, so 1/2.
    """
    from limitlab.theory.dynamics.parametrizations import classify, preset

    depth = 2
    X, y = _inputs(4, 8, 11)
    mup, sp = preset("mup", depth), preset("sp", depth)
    assert classify(mup.a, mup.b, mup.c).feature_learning and not classify(sp.a, sp.b, 0).stable
    sp0 = (sp.a, sp.b, 0)  # SP with a width-independent rate
    seeds = ctx.rng.integers(0, 2**63 - 1, size=2)  # widths n and n/2: independent networks, the same for both
    est = []
    for abc in (mup, sp0):
        big, half = (training.coordinate_change(X, y, abc, 0.5, n, 1, n_networks=ctx.samples, seed=int(sd),
                                                backend=ctx.backend) for n, sd in ((ctx.size, seeds[0]),
                                                                                   (ctx.size // 2, seeds[1])))
        est.append(np.log2(big / half))
    return [Measurement("muP log2 growth of |dh^L|", 0.0, est[0]),
            Measurement("SP log2 growth of |dh^L|", 0.5, est[1])]

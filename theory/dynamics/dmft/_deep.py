"""Deep nonlinear DMFT (Bordelon & Pehlevan 2022, eqs. (10)-(12)): single-site Monte Carlo with
response functions, solved as a damped fixed point."""
from __future__ import annotations

import math

import numpy as np

from limitlab.numerics import solvers
from limitlab.numerics import validation as validate
from limitlab.numerics.linalg import psd_sqrt
from limitlab.theory import activations as _act

from ._common import (DeepResult, _causal_mask, _check_common, _equal_time_ntk, _precondition_f,
                      _report_divergence, lazy_prediction)


@validate.renamed(T="steps", dt="lr")
def deep(kx, y, depth: int = 2, activation="tanh", gamma0: float = 1.0, steps: int = 20, lr: float = 0.1,
         samples: int = 20_000, seed=0, damping: float = 0.5, tol: float = 1e-8, maxiter: int = 200,
         resp_samples: int = 5_000, strict: bool = False, max_error_growth: float = 1e3) -> DeepResult:
    """Deep nonlinear DMFT: single-site Monte Carlo with response functions (Bordelon & Pehlevan 2022, eqs. (10)-(12)).

    Single-site fields, for l = 1..L on steps t (causal sums over s < t)::

        h^l(t) = u^l(t) + gamma0 sum_s [A^{l-1} + dt Phi^{l-1}(t, s) Delta(s)] g^l(s),    u^l ~ N(0, Phi^{l-1})
        z^l(t) = r^l(t) + gamma0 sum_s [B^l + dt G^{l+1}(t, s) Delta(s)] phi(h^l(s)),       r^l ~ N(0, G^{l+1})
        g^l = phi'(h^l) z^l,  r^L = w(0),  A^0 = B^L = 0,

    A^l = gamma0^-1 <d phi(h^l) / d r^l> and B^{l-1} = gamma0^-1 <d g^l / d u^l> by central
    differences of the simulated fields on common Gaussian draws (``resp_samples`` sites; no
    inverse of G or Phi, whose noise an estimate by Stein's lemma would amplify),
    f_k = <w_k phi(h^L_k) - w_0 phi(h^L_0)> / gamma0. The same Gaussian
    draws are reused at every iteration, so the damped map is deterministic and
    ``solvers.fixed_point`` can converge on it; the returned result says whether it did, and a
    diverging trajectory is reported as non-convergence (module docstring, "Divergence").
    """
    _, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, steps, lr)
    growth = validate.real(max_error_growth, "max_error_growth", above=1.0)
    if gamma0 == 0:
        raise ValueError("gamma0: the deep single-site solver needs gamma0 > 0; gamma0 = 0 is the static NTK "
                         "(use gradient_flow with MLP(depth).ntk)")
    validate.integer(depth, "depth", minimum=1, meaning="number of hidden layers")
    validate.integer(samples, "samples", minimum=2)
    act = _act.get(activation)
    L, P, T1, S = int(depth), y.size, T + 1, int(samples)
    n = T1 * P
    rng = np.random.default_rng(seed)
    zeta_u = {l: rng.standard_normal((S, n)) for l in range(2, L + 1)}
    zeta_r = {l: rng.standard_normal((S, n)) for l in range(1, L)}
    u1 = np.tile(rng.standard_normal((S, P)) @ psd_sqrt(kx, "kx").T, (1, T1))
    w0 = rng.standard_normal(S)
    mask = _causal_mask(T1, P, dt)
    causal = mask > 0
    Phi0 = np.kron(np.ones((T1, T1)), kx)
    ones = np.ones((n, n))

    def phi(z):
        return np.asarray(act(z), dtype=float) * np.ones_like(z)

    def dphi(z):
        return np.asarray(act.derivative(z), dtype=float) * np.ones_like(z)

    # state: Phi^1..L, G^1..L, A^1..L-1, B^1..L-1, f  (packed into one vector)
    shapes = [("Phi", l, (n, n)) for l in range(1, L + 1)] + [("G", l, (n, n)) for l in range(1, L + 1)] \
        + [("A", l, (n, n)) for l in range(1, L)] + [("B", l, (n, n)) for l in range(1, L)] + [("f", 0, (T1, P))]

    def unpack(x):
        out, i = {}, 0
        for name, l, shp in shapes:
            size = int(np.prod(shp))
            out[(name, l)] = x[i:i + size].reshape(shp)
            i += size
        return out

    def pack(d):
        return np.concatenate([d[(name, l)].ravel() for name, l, _ in shapes])

    def simulate(u, r, C, D):
        """March the single-site fields of one layer in time (leading batch axes allowed)."""
        h = np.array(u, copy=True)
        z = np.array(r, copy=True)
        ph = np.empty_like(h)
        g = np.empty_like(h)
        for t in range(T1):
            sl = slice(t * P, (t + 1) * P)
            if t > 0:
                past = slice(0, t * P)
                h[..., sl] += g[..., past] @ C[sl, past].T
                z[..., sl] += ph[..., past] @ D[sl, past].T
            ph[..., sl] = phi(h[..., sl])
            g[..., sl] = dphi(h[..., sl]) * z[..., sl]
        return h, z, ph, g

    def response(u, r, C, D, which, out):
        """<d field / d source_j> for every source coordinate j, by central differences (exact for
        linear fields; O(eps^2) otherwise). The derivative sample needs fewer sites than the kernels."""
        Sd = min(S, resp_samples)
        uu, rr = u[:Sd], r[:Sd]
        eps = 1e-4
        J = np.empty((n, n))
        for j0 in range(0, n, 8):
            js = np.arange(j0, min(n, j0 + 8))
            E = np.zeros((js.size, 1, n))
            E[np.arange(js.size), 0, js] = eps
            res = []
            for sign in (1.0, -1.0):
                if which == "u":
                    o = simulate(uu[None] + sign * E, np.broadcast_to(rr, (js.size,) + rr.shape), C, D)
                else:
                    o = simulate(np.broadcast_to(uu, (js.size,) + uu.shape), rr[None] + sign * E, C, D)
                res.append(o[out])
            J[:, js] = ((res[0] - res[1]) / (2 * eps)).mean(axis=1).T
        return J

    def sweep(x):
        st = unpack(x)
        Phi = {0: Phi0, **{l: st[("Phi", l)] for l in range(1, L + 1)}}
        G = {L + 1: ones, **{l: st[("G", l)] for l in range(1, L + 1)}}
        A = {0: np.zeros((n, n)), **{l: st[("A", l)] for l in range(1, L)}}
        B = {L: np.zeros((n, n)), **{l: st[("B", l)] for l in range(1, L)}}
        delta = (y[None, :] - st[("f", 0)]).ravel()
        md = mask * delta[None, :]
        new = {}
        for l in range(1, L + 1):
            C = (A[l - 1] + Phi[l - 1] * md) * gamma0
            D = (B[l] + G[l + 1] * md) * gamma0
            u = u1 if l == 1 else zeta_u[l] @ psd_sqrt(Phi[l - 1]).T
            r = np.repeat(w0[:, None], n, axis=1) if l == L else zeta_r[l] @ psd_sqrt(G[l + 1]).T
            h, z, ph, g = simulate(u, r, C, D)
            new[("Phi", l)] = ph.T @ ph / S
            new[("G", l)] = g.T @ g / S
            if l < L:  # A^l = gamma0^-1 <d phi(h^l) / d r^l>: central differences on common draws
                new[("A", l)] = np.where(causal, response(u, r, C, D, "r", 2) / gamma0, 0.0)
            if l > 1:  # B^{l-1} = gamma0^-1 <d g^l / d u^l>
                new[("B", l - 1)] = np.where(causal, response(u, r, C, D, "u", 3) / gamma0, 0.0)
            if l == L:
                wphi = z * ph  # z^L = w(t)
                m = wphi.mean(axis=0).reshape(T1, P)
                f_tilde = (m - m[0]) / gamma0
                Gd = {L + 1: ones, **{k: new.get(("G", k), G[k]) for k in range(1, L + 1)}}
                Pd = {0: Phi0, **{k: new[("Phi", k)] for k in range(1, L + 1)}}
                new[("f", 0)] = _precondition_f(st[("f", 0)], f_tilde, _equal_time_ntk(Pd, Gd, L, T1, P), dt)
        return pack(new)

    init = {("f", 0): lazy_prediction(_lazy_ntk(act, kx, L), y, T, dt)}
    for l in range(1, L + 1):
        init[("Phi", l)] = Phi0.copy()
        init[("G", l)] = ones.copy()
    for l in range(1, L):
        init[("A", l)] = np.zeros((n, n))
        init[("B", l)] = np.zeros((n, n))
    res = solvers.fixed_point(sweep, pack(init), damping=damping, tol=tol, maxiter=maxiter, strict=strict)
    st = unpack(res.value)
    Phi = {0: Phi0, **{l: st[("Phi", l)] for l in range(1, L + 1)}}
    G = {L + 1: ones, **{l: st[("G", l)] for l in range(1, L + 1)}}
    A = {l: st[("A", l)] for l in range(1, L)}
    B = {l: st[("B", l)] for l in range(1, L)}
    solver = solvers.SolverResult(st[("f", 0)], float(np.max(res.residual)), res.iterations, bool(res.converged),
                                  message=res.message)
    out = DeepResult(dt * np.arange(T1), st[("f", 0)], Phi, G, A, B, L, P, gamma0, solver, "fixed-point")
    return _report_divergence(out, "deep", y, dt, growth, _lazy_ntk(act, kx, L), strict)


def _lazy_ntk(act, kx, depth):
    from limitlab.theory.kernels.mlp import MLP
    # MLP.ntk needs inputs; the DMFT needs only K^x: use a square root of it as inputs (X X^T / P = K^x)
    root = psd_sqrt(kx, "kx")
    X = root * math.sqrt(root.shape[1])
    return MLP(depth, act, weight_var=1.0, bias_var=0.0).ntk(X)

"""Two-layer DMFT by Monte Carlo over the single-site process (Bordelon & Pehlevan 2022, sec. 3),
and the closed form of a two-layer linear network on one whitened input.

The single-site loop is a source template compiled with the activation's generated map in one
module (:func:`limitlab.numerics.codegen.compile_module`): Numba's disk cache misses, in every
new process, a loop that takes the map as a function argument or closes over it (measured; see
:mod:`limitlab.numerics.recursion`), so ordinary ``@njit`` code would recompile per process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from limitlab.numerics import codegen, solvers
from limitlab.numerics import validation as validate
from limitlab.numerics.linalg import psd_sqrt
from limitlab.theory import activations as _act

from ._common import _check_common, _divergence


_TEMPLATE = '''
@nb.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def run(h, w, Kx, y, Mcv, dt, gamma0, T, snap_steps, snap_h, snap_w, f_out, n_chunks):
    S, P = h.shape
    ph = np.empty((S, P))
    dph = np.empty((S, P))
    for i in nb.prange(S):
        for m in range(P):
            p, d = _phi(h[i, m])
            ph[i, m] = p
            dph[i, m] = d
    part = np.zeros((n_chunks, P))
    chunk = (S + n_chunks - 1) // n_chunks
    KxT = np.ascontiguousarray(Kx.T)
    f = np.zeros(P)
    delta = np.empty(P)
    js = 0
    if snap_steps.shape[0] > 0 and snap_steps[0] == 0:
        for i in nb.prange(S):
            for m in range(P):
                snap_h[0, i, m] = h[i, m]
            snap_w[0, i] = w[i]
        js = 1
    for k in range(T):
        for m in range(P):
            delta[m] = y[m] - f[m]
        store = js < snap_steps.shape[0] and snap_steps[js] == k + 1
        inv_g = 1.0 / gamma0 if gamma0 > 0.0 else 0.0
        for c in nb.prange(n_chunks):
            lo = c * chunk
            hi = min(S, lo + chunk)
            acc = np.zeros(P)
            bv = np.empty(P)
            for i in range(lo, hi):
                a = 0.0
                for n in range(P):
                    bv[n] = 0.0
                # b_n = sum_m Kx[n, m] Delta_m phi'(h_m): axpy form (inner loop over n vectorizes)
                for m in range(P):
                    vm = delta[m] * dph[i, m]
                    a += ph[i, m] * delta[m]
                    for n in range(P):
                        bv[n] += Kx[m, n] * vm
                wi = w[i]
                step = dt * gamma0 * wi
                for n in range(P):
                    b = bv[n]
                    if gamma0 > 0.0:
                        hn = h[i, n] + step * b
                        p, d = _phi(hn)
                        # exact discrete increment of <w phi(h)> / gamma0 (no division of O(1) terms)
                        acc[n] += dt * a * p + wi * (p - ph[i, n]) * inv_g
                        h[i, n] = hn
                        ph[i, n] = p
                        dph[i, n] = d
                    else:
                        acc[n] += dt * (a * ph[i, n] + wi * wi * dph[i, n] * b)
                w[i] = wi + dt * gamma0 * a
                if store:
                    for m in range(P):
                        snap_h[js, i, m] = h[i, m]
                    snap_w[js, i] = w[i]
            for m in range(P):
                part[c, m] = acc[m]
        for m in range(P):
            s = 0.0
            for c in range(n_chunks):
                s += part[c, m]
            corr = 0.0
            for n in range(P):
                corr += Mcv[m, n] * delta[n]
            f[m] += s / S + dt * corr
            f_out[k + 1, m] = f[m]
        if store:
            js += 1
    return f_out
'''

_TWO_LAYER = {}


def _two_layer_kernel(act):
    key = act.name + repr(act.params)
    if key not in _TWO_LAYER:
        # tanh(a) = 1 - 2 / (e^{2a} + 1): exact to rounding in absolute terms, and cheaper than libm tanh
        fast = [sp.sympify(e).replace(sp.tanh, lambda a: 1 - 2 / (sp.exp(2 * a) + 1)) for e in act.scalar_exprs]
        src = codegen.scalar_function_source("_phi_raw", [_act.x], fast)
        src += ("\n@nb.njit(cache=True, inline='always')\ndef _phi(x):\n"
                "    p, d = _phi_raw(x)\n    return float(p), float(d)\n")
        _TWO_LAYER[key] = codegen.compile_module(src + _TEMPLATE, tag="dmft2")
    return _TWO_LAYER[key]


@dataclass
class TwoLayerResult(solvers.HasSolver):
    """Two-layer DMFT: f (T+1, P) at steps 0..T and two-time kernels on the snapshot steps.

    ``Phi[i, j]``, ``G[i, j]``, ``K[i, j]`` are P x P matrices Phi(t_i, t_j) etc. for
    ``snapshot_steps`` t_i; ``ntk0`` the exact initial NTK; ``times = dt * steps``.
    ``solver.converged`` is False, with the reason in ``solver.message``, when gradient descent
    diverged (module docstring, "Divergence"); the kernels of such a run are not computed and
    are NaN (``f`` keeps the diverging trajectory). The march is one pass (``solver.iterations``
    1, ``solver.residual`` 0: nothing is iterated).
    """

    times: np.ndarray
    f: np.ndarray
    snapshot_steps: np.ndarray
    Phi: np.ndarray
    G: np.ndarray
    K: np.ndarray
    ntk0: np.ndarray
    gamma0: float
    samples: int
    seed: object = None
    solver: solvers.SolverResult = None

    def equal_time(self, name: str = "K") -> np.ndarray:
        """Phi(t, t), G(t, t) or K(t, t) at the snapshot steps, shape (n_snapshots, P, P)."""
        arr = getattr(self, name)
        idx = np.arange(arr.shape[0])
        return arr[idx, idx]


def _exact_init_kernels(act, kx):
    """Phi^0 = E[phi(u) phi(v)] and E[phi'(u) phi'(v)], (u, v) ~ N(0, K^x): the compiled MLP kernels."""
    from limitlab.theory.kernels.mlp import MLP
    d = np.diag(kx)
    if np.any(d <= 0):
        raise ValueError("kx: every input needs a positive norm (diagonal of kx > 0)")
    from limitlab.theory.kernels.dual import Dual
    dual = Dual(act)
    if dual.closed_form:  # the activation's own closed kernel pair (Cho & Saul, Williams, ...)
        q1, q2 = np.broadcast_arrays(d[:, None], d[None, :])
        return dual.evaluate(q1, q2, kx)
    root = psd_sqrt(kx, "kx")
    X = root * math.sqrt(root.shape[1])  # any X with X X^T / D = K^x
    nngp = MLP(1, act, weight_var=1.0, bias_var=0.0).nngp(X)
    dact = _act.get(act.derivative_expr)
    dphi0 = MLP(1, dact, weight_var=1.0, bias_var=0.0).nngp(X)
    return nngp, dphi0


@validate.renamed(T="steps", dt="lr")
def two_layer(kx, y, activation="tanh", gamma0: float = 1.0, steps: int = 100, lr: float = 0.05,
              samples: int = 100_000, seed=0, snapshots=6, control_variate: bool = True, strict: bool = False,
              max_error_growth: float = 1e3) -> TwoLayerResult:
    """Two-layer DMFT by Monte Carlo over the single-site process (Bordelon & Pehlevan 2022, sec. 3, eqs. (8)-(9)).

    ``kx``: input Gram X X^T / D (P x P, PSD); ``y``: targets (P,); gradient descent of step
    ``lr`` (the paper's time step dt) for ``steps`` steps (T); ``samples`` single sites (h in R^P, w) drawn with ``seed``;
    ``snapshots``: number of equally spaced steps (or an explicit increasing list of steps)
    at which the two-time kernels Phi, G, K are recorded. A diverging run (``max |y - f|``
    non-finite or above ``max_error_growth`` times its initial value) has ``converged=False``
    and a ``message``; with ``strict=True`` it raises ``ConvergenceError``.
    """
    root, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, steps, lr)
    growth = validate.real(max_error_growth, "max_error_growth", above=1.0)
    act = _act.get(activation)
    validate.integer(samples, "samples", minimum=2)
    if isinstance(snapshots, (int, np.integer)) and not isinstance(snapshots, bool):
        validate.integer(snapshots, "snapshots", minimum=1)
        steps = np.unique(np.round(np.linspace(0, T, int(snapshots))).astype(np.int64))
    else:
        steps = np.asarray(snapshots, dtype=np.int64)
        if steps.ndim != 1 or np.any(np.diff(steps) <= 0) or steps.min() < 0 or steps.max() > T:
            raise ValueError(f"snapshots: steps must be increasing integers in [0, {T}], got {snapshots!r}")
    rng = np.random.default_rng(seed)
    P = y.size
    S = int(samples)
    h = rng.standard_normal((S, P)) @ root.T
    w = rng.standard_normal(S)
    phi0, dphi0 = _exact_init_kernels(act, kx)
    ntk0 = phi0 + kx * dphi0
    # Monte Carlo estimate of the initial kernels (the control variate's baseline)
    ph = np.asarray(act(h), dtype=float)
    dph = np.asarray(act.derivative(h), dtype=float) * np.ones_like(h)
    phi_mc = ph.T @ ph / S
    g_mc = (dph * (w ** 2)[:, None]).T @ dph / S
    k_mc = phi_mc + kx * g_mc
    mcv = (ntk0 - k_mc) if control_variate else np.zeros((P, P))
    del ph, dph
    mod = _two_layer_kernel(act)
    snap_h = np.empty((steps.size, S, P))
    snap_w = np.empty((steps.size, S))
    f_out = np.zeros((T + 1, P))
    with np.errstate(over="ignore", invalid="ignore"):
        mod.run(h, w, np.ascontiguousarray(kx), y, mcv, dt, gamma0, T, steps, snap_h, snap_w, f_out, 64)
    message = _divergence(f_out, y, dt, growth, ntk0)
    solver = solvers.SolverResult(f_out, 0.0, 1, not message, message=message).check(strict, "two_layer")
    # two-time kernels on the snapshot grid, Gram matrices over samples in blocks
    n = steps.size
    Phi = np.zeros((n * P, n * P))
    Gm = np.zeros((n * P, n * P))
    block = 20_000
    for lo in range(0, S, block) if not message else ():  # a diverged run's kernels are not computed (NaN)
        hb = snap_h[:, lo:lo + block]  # (n, b, P)
        A = np.asarray(act(hb), dtype=float).transpose(1, 0, 2).reshape(-1, n * P)
        B = (np.asarray(act.derivative(hb), dtype=float) * snap_w[:, lo:lo + block, None]).transpose(1, 0, 2)
        B = B.reshape(-1, n * P)
        Phi += A.T @ A
        Gm += B.T @ B
    if message:
        Phi[:], Gm[:] = np.nan, np.nan
    Phi = (Phi / S).reshape(n, P, n, P).transpose(0, 2, 1, 3)
    Gm = (Gm / S).reshape(n, P, n, P).transpose(0, 2, 1, 3)
    if control_variate:
        Phi = Phi + (phi0 - phi_mc)
        Gm = Gm + (dphi0 - g_mc)
    K = Phi + kx * Gm
    return TwoLayerResult(dt * np.arange(T + 1), f_out, steps, Phi, Gm, K, ntk0, gamma0, S, seed, solver)


def two_layer_linear_whitened(t, y: float, gamma0: float):
    """f(t) of a two-layer linear network on one whitened input (|x|^2 / D = 1), f(0) = 0.

    Solves ``df/dt = 2 sqrt(1 + gamma0^2 f^2) (y - f)`` in closed form. The equation is the
    depth-1 deep linear DMFT of Bordelon & Pehlevan 2022 (arXiv:2205.09653, sec. 5) for one
    input with |x|^2/D = 1: the single-site fields obey dh/dt = gamma0 Delta w and
    dw/dt = gamma0 Delta h, so a = <h^2> = <w^2> and c = <h w> = gamma0 f satisfy
    da/dt = 2 gamma0 Delta c, dc/dt = 2 gamma0 Delta a; a^2 - c^2 = 1 is conserved and the
    NTK is <h^2> + <w^2> = 2 sqrt(1 + gamma0^2 f^2) (docs/dynamics.md). With
    f = sinh(theta)/gamma0, c = gamma0 y and
    u = e^theta, ``(u+ - u)/(u - u-) = ((u+ - 1)/(1 - u-)) e^{-2 t sqrt(1 + c^2)}``,
    ``u+- = c +- sqrt(1 + c^2)``. gamma0 = 0 gives the lazy ``y (1 - e^{-2t})``.
    """
    t = validate.real_array(t, "t", at_least=0.0)
    gamma0 = validate.real(gamma0, "gamma0", at_least=0.0)
    y = validate.real(y, "y", meaning="a scalar target")
    if gamma0 == 0 or y == 0:
        return y * -np.expm1(-2 * t)
    sgn = math.copysign(1.0, y)
    c = gamma0 * abs(y)
    r = math.sqrt(1 + c * c)
    up1 = c + c * c / (r + 1)  # u+ - 1 without cancellation
    um1 = c - r - 1  # u- - 1
    R = (up1 / -um1) * np.exp(-2 * t * r)
    u_minus_1 = (up1 + R * um1) / (1 + R)
    theta = np.log1p(u_minus_1)
    return sgn * np.sinh(theta) / gamma0

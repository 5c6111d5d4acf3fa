"""Dynamical mean field theory of feature learning (Bordelon & Pehlevan 2022).

Network (muP / mean-field scaling, their eq. (1)): ``h^1 = W^0 x / sqrt(D)``,
``h^{l+1} = W^l phi(h^l) / sqrt(N)``, ``f = w^L . phi(h^L) / (gamma0 N)``, all weights
N(0, 1), trained by gradient descent of step ``dt`` on the sum loss
``sum_mu (f_mu - y_mu)^2 / 2`` with the rate multiplied by gamma^2 = gamma0^2 N. Then
``df/dt = K(t) Delta(t)``, ``Delta = y - f``, with the evolving NTK (their eq. (5))
``K(t, s) = sum_{l=0}^{L} G^{l+1}(t, s) * Phi^l(t, s)``, ``Phi^0 = K^x = X X^T / D``,
``G^{L+1} = 1``, feature kernels ``Phi^l = <phi(h^l) phi(h^l)>`` and gradient kernels
``G^l = <g^l g^l>``. At gamma0 = 0 the NTK stays at ``MLP(depth, weight_var=1,
bias_var=0).ntk`` (the lazy limit); gamma0 > 0 learns features.

Time is discrete: every solver here is the exact infinite-width limit of *gradient
descent with step dt* (fields at steps k = 0..T), so a finite network trained with the same
step converges to it as width grows, and gamma0 -> 0 gives discrete NTK gradient descent,
``f_k = (I - (I - dt Theta)^k) y`` (:mod:`gradient_flow` with ``steps=True``,
``learning_rate=dt``, ``normalization=1``). dt -> 0 gives the gradient flow.

Three solvers:

* :func:`two_layer` — any activation; Monte Carlo over the single-site process of
  B&P sec. 3 (``dh = gamma0 w K^x (Delta * phi'(h)) dt``, ``dw = gamma0 (phi(h) . Delta) dt``;
  sites couple only through Delta), compiled with Numba, parallel over samples. The
  output increment is the exact discrete one, ``<w_{k+1} phi(h_{k+1}) - w_k phi(h_k)> / gamma0``,
  with a control variate: the Monte Carlo NTK at step 0 is replaced by the exact one.
* :func:`deep_linear` — linear networks of any depth: the closed equations of B&P
  sec. 5 / app. (fields linear in their Gaussian sources) with response functions A, B,
  solved exactly by one causal pass over the time steps in a compact form (O(L P T^3));
  ``method="picard"`` keeps the reference damped Picard iteration over all order parameters.
* :func:`deep` — nonlinear MLPs: the full single-site process with response functions
  ``A^l = gamma0^-1 <d phi(h^l) / d r^l>`` and ``B^l = gamma0^-1 <d g^{l+1} / d u^{l+1}>``
  estimated by Gaussian integration by parts (B&P app. "Monte Carlo"), damped fixed-point
  iteration (``limitlab.numerics.solvers.fixed_point``), convergence reported.

:func:`two_layer_linear_whitened` is the closed form for a two-layer linear network on
one whitened input, ``df/dt = 2 sqrt(1 + gamma0^2 f^2) (y - f)``: the depth-1 case of the
deep linear equations of B. Bordelon and C. Pehlevan, "Self-Consistent Dynamical Field
Theory of Kernel Evolution in Wide Neural Networks", NeurIPS 2022, arXiv:2205.09653,
sec. 5 (linear networks); derived in its docstring and in docs/dynamics.md.

Divergence: gradient descent with too large a step diverges, and so does its
infinite-width limit. Every solver checks the training error ``|y - f(t)|`` (largest
over the samples): a non-finite value, or growth beyond ``max_error_growth`` (default
1e3) times its value at step 0 (``|y|``, as f(0) = 0), is reported as non-convergence
(``converged=False`` and a ``message``; ``strict=True`` raises ``ConvergenceError``). The
lazy limit is stable iff ``dt * max eig(NTK(0)) < 2``; feature learning changes the NTK,
so larger gamma0 can diverge at smaller dt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Optional

import numpy as np
import sympy as sp
from scipy import linalg as sla

from limitlab.numerics import codegen, solvers
from limitlab.theory import activations as _act

from limitlab.numerics import validation as validate
from limitlab.numerics.linalg import psd_sqrt

from .gradient_flow import _real_array

__all__ = ["TwoLayerResult", "DeepResult", "two_layer", "deep_linear", "deep", "two_layer_linear_whitened",
           "input_kernel", "kernel_alignment", "lazy_prediction"]


# ---------------------------------------------------------------------------------- checks
def input_kernel(X) -> np.ndarray:
    """K^x = X X^T / D, the input Gram matrix the DMFT depends on (B&P eq. (2)).

    ``X``: a real, finite (P, D) array with P >= 1 inputs of dimension D >= 1.
    """
    X = _real_array(X, "X")
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X: expected a (P, D) array with P >= 1 inputs and dimension D >= 1, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X: contains non-finite values")
    return X @ X.T / X.shape[1]


def _check_common(kx, y, gamma0, T, dt):
    kx = _real_array(kx, "kx")
    y = _real_array(y, "y")
    root = psd_sqrt(kx, "kx")
    if y.shape != (kx.shape[0],) or not np.all(np.isfinite(y)):
        raise ValueError(f"y: expected finite targets of shape ({kx.shape[0]},), got {y.shape}")
    gamma0 = validate.real(gamma0, "gamma0", at_least=0.0, meaning="richness")
    T = validate.integer(T, "T", minimum=1, meaning="number of time steps")
    dt = validate.positive(dt, "dt", meaning="time step")
    return root, kx, y, gamma0, T, dt


def _divergence(f, y, dt, growth, ntk0):
    """'' if the trajectory f (T+1, P) stays finite and max_mu |y - f(t)| <= growth * max_mu |y - f(0)|,
    else a message saying where gradient descent diverged (module docstring, "Divergence")."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(y[None, :] - f).max(axis=1)
    lam = float(np.linalg.eigvalsh(0.5 * (ntk0 + ntk0.T)).max())
    hint = (f"reduce dt (the lazy limit needs dt * max eig(NTK(0)) < 2; here dt = {dt:g}, "
            f"dt * max eig = {dt * lam:.3g})")
    bad = ~np.isfinite(err)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        return f"gradient descent diverges: non-finite f at step {k} of {f.shape[0] - 1}; {hint}"
    ref = float(err[0])
    if ref > 0:
        over = np.flatnonzero(err > growth * ref)
        if over.size:
            k = int(over[0])
            return (f"gradient descent diverges: max |y - f| grew from {ref:.3g} at step 0 to {err[k]:.3g} at step {k} "
                    f"(more than max_error_growth = {growth:g} times; {err[-1]:.3g} at the last step {f.shape[0] - 1}); "
                    f"{hint}")
    return ""


def kernel_alignment(K, y) -> float:
    """Centred-free kernel-target alignment y^T K y / (||K||_F ||y||^2) (Cristianini et al. 2002)."""
    K = np.asarray(K, dtype=float)
    y = np.asarray(y, dtype=float)
    return float(y @ K @ y / (np.linalg.norm(K) * (y @ y)))


def lazy_prediction(ntk, y, T, dt):
    """f_k = (I - (I - dt Theta)^k) y, k = 0..T: discrete NTK gradient descent from f_0 = 0."""
    ntk = np.asarray(ntk, dtype=float)
    f = np.zeros((T + 1, y.size))
    for k in range(T):
        f[k + 1] = f[k] + dt * ntk @ (y - f[k])
    return f


# ----------------------------------------------------------------------- two-layer (Numba)
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
        # tanh(a) = 1 - 2 / (e^{2a} + 1): exact to rounding in absolute terms and ~3x faster than libm tanh
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


def two_layer(kx, y, activation="tanh", gamma0: float = 1.0, T: int = 100, dt: float = 0.05,
              samples: int = 100_000, seed=0, snapshots=6, control_variate: bool = True, strict: bool = False,
              max_error_growth: float = 1e3) -> TwoLayerResult:
    """Two-layer DMFT by Monte Carlo over the single-site process (Bordelon & Pehlevan 2022, sec. 3, eqs. (8)-(9)).

    ``kx``: input Gram X X^T / D (P x P, PSD); ``y``: targets (P,); gradient descent of step
    ``dt`` for ``T`` steps; ``samples`` single sites (h in R^P, w) drawn with ``seed``;
    ``snapshots``: number of equally spaced steps (or an explicit increasing list of steps)
    at which the two-time kernels Phi, G, K are recorded. A diverging run (``max |y - f|``
    non-finite or above ``max_error_growth`` times its initial value) has ``converged=False``
    and a ``message``; with ``strict=True`` it raises ``ConvergenceError``.
    """
    root, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, T, dt)
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
    t = np.asarray(t, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"t: times must be finite and >= 0, got {t!r}")
    if not np.isscalar(gamma0) or not np.isfinite(gamma0) or gamma0 < 0:
        raise ValueError(f"gamma0: must be a finite number >= 0, got {gamma0!r}")
    if not np.isscalar(y) or not np.isfinite(y):
        raise ValueError(f"y: must be a finite scalar target, got {y!r}")
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


# ------------------------------------------------------------------------- deep linear
@dataclass
class DeepResult(solvers.HasSolver):
    """Deep DMFT solution on steps 0..T.

    ``f`` (T+1, P); ``Phi[l]``, ``G[l]`` for l = 1..L as ((T+1) P x (T+1) P) matrices in
    time-major order (index t * P + mu), with ``Phi[0] = K^x`` and ``G[L+1] = 1`` added for
    the NTK; ``A[l]``, ``B[l]`` the discrete response operators; ``ntk(t, s)`` gives
    K(t, s) = sum_l G^{l+1}(t, s) * Phi^l(t, s). ``method`` says which solver made the result
    ("march", "picard" or "fixed-point"); from the march ``Phi``, ``G``, ``A``, ``B`` are read-only
    mappings {layer: matrix} that build each matrix on first access and ``compact`` holds its
    compact arrays. ``solver`` (a :class:`~limitlab.numerics.solvers.SolverResult`) reports
    iterations and residual; ``solver.converged`` is False, with the reason in
    ``solver.message``, when the solver failed or gradient descent diverged (module docstring,
    "Divergence").
    """

    times: np.ndarray
    f: np.ndarray
    Phi: dict
    G: dict
    A: dict
    B: dict
    depth: int
    P: int
    gamma0: float
    solver: solvers.SolverResult
    method: str = ""
    compact: Optional[dict] = None

    @property
    def extra(self) -> dict:
        """Deprecated: ``{"method": method, "compact": compact}``."""
        import warnings

        warnings.warn("DeepResult.extra is deprecated; use DeepResult.method and DeepResult.compact",
                      DeprecationWarning, stacklevel=2)
        return {"method": self.method, **({"compact": self.compact} if self.compact is not None else {})}

    def block(self, M, t, s):
        P = self.P
        return M[t * P:(t + 1) * P, s * P:(s + 1) * P]

    def ntk(self, t: int, s: Optional[int] = None) -> np.ndarray:
        s = t if s is None else s
        return sum(self.block(self.G[l + 1], t, s) * self.block(self.Phi[l], t, s) for l in range(self.depth + 1))

    def equal_time(self, name: str, layer: int) -> np.ndarray:
        M = getattr(self, name)[layer]
        return np.stack([self.block(M, t, t) for t in range(self.times.size)])


def _precondition_f(f, f_tilde, K_eq, dt):
    """f + (I + J)^{-1} (f_tilde - f), J the lazy Jacobian (J d)_k = dt sum_{s<k} K(s, s) d_s.

    f_tilde(Delta) is the sweep's output for Delta = y - f; plain Picard on f oscillates
    (|J| ~ |K| t is large), this quasi-Newton step has the same fixed point.
    """
    r = f_tilde - f
    d = np.empty_like(r)
    acc = np.zeros(r.shape[1])
    for k in range(r.shape[0]):
        d[k] = r[k] - acc
        acc = acc + dt * K_eq[k] @ d[k]
    return f + d


def _equal_time_ntk(Phi, G, L, T1, P):
    out = np.zeros((T1, P, P))
    for t in range(T1):
        sl = slice(t * P, (t + 1) * P)
        out[t] = sum(G[l + 1][sl, sl] * Phi[l][sl, sl] for l in range(L + 1))
    return out


def _causal_mask(T1, P, dt):
    t = np.arange(T1)
    return np.kron((t[:, None] > t[None, :]).astype(float) * dt, np.ones((P, P)))


class _LazyLayers(Mapping):
    """Read-only {layer: matrix} mapping that builds each ((T+1)P)^2 matrix on first access and keeps it.

    The marching solver's dynamics need only O(P T^2) numbers per layer; the full two-time
    matrices cost O(P^2 T^3) flops and ((T+1)P)^2 floats each, so they are made when asked for.
    """

    def __init__(self, keys, build):
        self._keys = tuple(keys)
        self._build = build
        self._cache = {}

    def __getitem__(self, layer):
        if layer not in self._cache:
            if layer not in self._keys:
                raise KeyError(layer)
            self._cache[layer] = self._build(layer)
        return self._cache[layer]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def __repr__(self):
        return f"<layers {list(self._keys)}, built {sorted(self._cache)}>"


def _deep_linear_march(kx, y, L, gamma0, T, dt):
    """One causal pass over time steps of the deep linear DMFT (derivation: docs/dynamics.md).

    Every operator D^l has rows independent of the sample and is ``D^l = d^l E^T``,
    ``E[(s, nu), s'] = [s = s'] Delta_nu(s)``, ``d^l`` a (T+1) x (T+1) strictly lower matrix; so
    the fields couple to Phi^l only through ``pd^l = Phi^l E`` ((T+1)P x (T+1)) and
    ``q^l = E^T Phi^l E``. With ``c^{l-1} = C^{l-1} 1`` (sum over the columns' samples),
    ``a^l = A^l 1``, ``Zr^l = (I - gamma0^2 d^l E^T c^{l-1})^{-1}`` ((T+1) x (T+1)):

        c^{l-1} = a^{l-1} + dt [s < t] pd^{l-1}          a^l = c^{l-1} Zr^l
        d^l = beta^l + dt [s < t] G^{l+1}                beta^{l-1} = Zr^l d^l   (B^{l-1} = 1 beta^{l-1} E^T)
        G^l = Zr^l (G^{l+1} + gamma0^2 d^l q^{l-1} d^lT) Zr^lT
        pd^l = pd^{l-1} + gamma0^2 (a^l d^l q^{l-1} + pd^{l-1} d^lT (E^T a^l)^T + c^{l-1} G^l (E^T c^{l-1})^T)
        f(t) = pd^{L-1}(t, :) beta^{L-1}(t, :)^T + c^{L-1}(t, :) G^L(:, t)

    Row t of each uses Delta(s) only for s < t and rows < t of the others (forward in l for
    c, a, pd; backward for d, Zr, G, beta); after f(t), column t of pd^l and q^l is filled.
    O(L P T^3) flops, O(L P T^2) memory. Returns the compact arrays.
    """
    P, T1 = y.size, T + 1
    n = T1 * P
    g2 = gamma0 * gamma0

    def z2():
        return np.zeros((T1, T1))

    def zn():
        return np.zeros((n, T1))

    Dl = np.zeros((T1, P))
    f = np.zeros((T1, P))
    pd = {l: zn() for l in range(L)}  # Phi^l E, rows (t, mu) time-major
    q = {l: z2() for l in range(L)}  # E^T Phi^l E
    c = {l: zn() for l in range(L)}  # C^l 1
    ec = {l: z2() for l in range(L)}  # E^T c^l
    a = {l: zn() for l in range(L + 1)}  # A^l 1 (a^0 = 0)
    ea = {l: z2() for l in range(L)}  # E^T a^l
    d = {l: z2() for l in range(1, L + 1)}  # D^l = 1 d^l E^T
    beta = {l: z2() for l in range(L + 1)}  # B^l = 1 beta^l E^T (beta^L = 0)
    Zr = {l: np.eye(T1) for l in range(1, L + 1)}
    G = {l: z2() for l in range(1, L + 1)}
    G[L + 1] = np.ones((T1, T1))
    M = {l: z2() for l in range(1, L + 1)}  # G^{l+1} + gamma0^2 d^l q^{l-1} d^lT
    Q1 = {l: z2() for l in range(1, L + 1)}  # d^l q^{l-1}
    Q2 = {l: z2() for l in range(1, L)}  # d^lT (E^T a^l)^T
    Q3 = {l: z2() for l in range(1, L)}  # G^l (E^T c^{l-1})^T
    kxT = np.ascontiguousarray(kx)
    for t in range(T1):
        rt = slice(t * P, (t + 1) * P)
        # forward in l: row t of c^{l-1}, a^l, pd^l (columns s < t)
        for l in range(1, L + 1):
            ct = c[l - 1][rt, :t]
            ct[...] = a[l - 1][rt, :t] + dt * pd[l - 1][rt, :t]
            a[l][rt, :t] = ct @ Zr[l][:t, :t]
            if l < L and t > 0:
                pd[l][rt, :t] = pd[l - 1][rt, :t] + g2 * (a[l][rt, :t] @ Q1[l][:t, :t]
                                                          + pd[l - 1][rt, :t] @ Q2[l][:t, :t]
                                                          + ct @ Q3[l][:t, :t])
        # backward in l: row t of d^l, Zr^l, G^l, beta^{l-1}
        for l in range(L, 0, -1):
            dl = d[l]
            dl[t, :t] = beta[l][t, :t] + dt * G[l + 1][t, :t]
            Zr[l][t, :t] = g2 * ((dl[t, :t] @ ec[l - 1][:t, :t]) @ Zr[l][:t, :t])
            Q1[l][t, :t] = dl[t, :t] @ q[l - 1][:t, :t]
            m = G[l + 1][t, :t + 1] + g2 * (dl[:t + 1, :t] @ Q1[l][t, :t])
            M[l][t, :t + 1] = m
            M[l][:t + 1, t] = m
            gt = Zr[l][:t + 1, :t + 1] @ (Zr[l][t, :t + 1] @ M[l][:t + 1, :t + 1])
            G[l][t, :t + 1] = gt
            G[l][:t + 1, t] = gt
            beta[l - 1][t, :t] = Zr[l][t, :t + 1] @ dl[:t + 1, :t]
        f[t] = pd[L - 1][rt, :t] @ beta[L - 1][t, :t] + c[L - 1][rt, :t] @ G[L][t, :t]
        Dl[t] = y - f[t]
        dv = Dl[t]
        # close step t: column t of pd^l, q^l; row t of E^T c, E^T a; the Q's
        kd = kxT @ dv
        pd[0][:, t] = np.tile(kd, T1)
        q[0][:t + 1, t] = Dl[:t + 1] @ kd
        q[0][t, :t + 1] = q[0][:t + 1, t]
        ec[0][t] = dv @ c[0][rt]
        r = (t + 1) * P
        for l in range(1, L + 1):
            Q1[l][:t + 1, t] = d[l][:t + 1, :t] @ q[l - 1][:t, t]
            if l == L:
                break
            ea[l][t] = dv @ a[l][rt]
            Q2[l][:t, t] = ea[l][t, :t] @ d[l][:t, :t]
            Q3[l][t, :t + 1] = ec[l - 1][:t + 1, :t] @ G[l][t, :t]
            Q3[l][:t, t] = G[l][:t, :t] @ ec[l - 1][t, :t]
            pd[l][:r, t] = pd[l - 1][:r, t] + g2 * (a[l][:r, :t] @ Q1[l][:t, t] + pd[l - 1][:r, :t] @ Q2[l][:t, t]
                                                    + c[l - 1][:r, :t] @ Q3[l][:t, t])
            qc = np.einsum("rm,rm->r", Dl[:t + 1], pd[l][:r, t].reshape(t + 1, P))
            q[l][:t + 1, t] = qc
            q[l][t, :t + 1] = qc
            ec[l][t] = dv @ c[l][rt]
    return dict(f=f, Delta=Dl, pd=pd, q=q, c=c, a=a, d=d, beta=beta, Zr=Zr, G=G)


def _march_matrices(kx, L, gamma0, dt, cp):
    """Lazy full ((T+1)P)^2 matrices Phi, G, A, B from the march's compact arrays (docs/dynamics.md)."""
    Dl = cp["Delta"]
    T1, P = Dl.shape
    n = T1 * P
    g2 = gamma0 * gamma0
    cache = {}

    def md():  # [s < t] dt Delta_nu(s): C^{l-1} = A^{l-1} + Phi^{l-1} * md
        if "md" not in cache:
            cache["md"] = _causal_mask(T1, P, dt) * Dl.ravel()[None, :]
        return cache["md"]

    def build_phi(l):
        if l == 0:
            return np.kron(np.ones((T1, T1)), kx)
        prev = Phi[l - 1]
        if g2 == 0:
            return prev.copy()
        cl = cp["c"][l - 1]
        W = cp["d"][l] @ cp["pd"][l - 1].T  # d^l E^T Phi^{l-1}
        X = np.hstack([cp["a"][l], cl]) @ np.vstack([W, 0.5 * (cp["G"][l] @ cl.T)])
        X += X.T
        X *= g2
        X += prev
        return X

    def build_a(l):
        if l == 0:
            return np.zeros((n, n))
        C = A[l - 1] + Phi[l - 1] * md()
        if g2 == 0:
            return C
        EC = np.einsum("tm,tmj->tj", Dl, C.reshape(T1, P, n))  # E^T C
        C += g2 * (cp["a"][l] @ (cp["d"][l] @ EC))
        return C

    def build_b(l):
        if l == L:
            return np.zeros((n, n))
        return np.repeat((cp["beta"][l][:, :, None] * Dl[None]).reshape(T1, n), P, axis=0)

    def build_g(l):
        return np.kron(cp["G"][l], np.ones((P, P)))

    Phi = _LazyLayers(range(L + 1), build_phi)
    G = _LazyLayers(range(1, L + 2), build_g)
    A = _LazyLayers(range(L), build_a)
    B = _LazyLayers(range(1, L + 1), build_b)
    return Phi, G, A, B


def deep_linear(kx, y, depth: int = 2, gamma0: float = 1.0, T: int = 100, dt: float = 0.05, damping: float = 0.0,
                tol: float = 1e-10, maxiter: int = 500, strict: bool = False, continuation: float = 0.5,
                method: str = "march", max_error_growth: float = 1e3, _start=None) -> DeepResult:
    """Deep linear DMFT: the closed equations in Phi, G, A, B (Bordelon & Pehlevan 2022, sec. 5 / app. deep linear).

    With C^{l-1} = A^{l-1} + Theta(t > s) dt Phi^{l-1}(t, s) Delta(s) and
    D^l = B^l + Theta(t > s) dt G^{l+1}(t, s) Delta(s) (causal operators on (t, mu)):
    ``h^l = H^l (u^l + gamma0 C^{l-1} r^l)``, ``H^l = (I - gamma0^2 C^{l-1} D^l)^{-1}``,
    ``z^l = Z^l (r^l + gamma0 D^l u^l)``, ``Z^l = (I - gamma0^2 D^l C^{l-1})^{-1}``, so
    Phi^l = H^l (Phi^{l-1} + gamma0^2 C^{l-1} G^{l+1} C^{l-1 T}) H^{l T},
    G^l = Z^l (G^{l+1} + gamma0^2 D^l Phi^{l-1} D^{l T}) Z^{l T}, A^l = H^l C^{l-1},
    B^{l-1} = Z^l D^l, and f(t) = <h^L(t) z^L(t)> / gamma0 with gamma0 cancelled analytically.

    ``method="march"`` (default): every operator is causal, so one pass over the time steps
    solves the equations exactly, with no iteration: at step t the rows t of all order
    parameters need Delta(s) only for s < t. Gradients of a linear network do not depend on
    the sample, so D^l = 1 d^l E^T with E = diag(Delta(s)) and the fields see Phi^l only
    through Phi^l E; the pass costs O(L P T^3) flops and O(L P T^2) memory (derivation in
    :func:`_deep_linear_march` and docs/dynamics.md). ``f`` and the (T+1) x (T+1) kernels are
    computed at once; the full ((T+1)P)^2 matrices ``Phi``, ``G``, ``A``, ``B`` are read-only
    mappings that build each layer on first access (O(P^2 T^3) flops each) and keep it.
    ``converged`` is False (with a ``message``; ``strict=True`` raises ``ConvergenceError``)
    when gradient descent diverges: a non-finite value, or ``max |y - f(t)|`` above
    ``max_error_growth`` times ``max |y|`` (module docstring, "Divergence"); ``residual`` is
    the largest mismatch between E^T Phi^l E computed from rows and from columns (rounding
    only); ``extra["compact"]`` holds the compact arrays (``G`` there is G^l(t, s) without
    the sample axes).

    ``method="picard"``: the reference solver, damped Picard sweeps over all order
    parameters (forward in l for Phi, A; backward for G, B) until the largest change of f,
    Phi, G is below ``tol``, O((P T)^3) per sweep; for gamma0 > ``continuation`` it first
    solves at gamma0 / 2 (recursively) and starts from that solution. ``damping``, ``tol``,
    ``maxiter`` and ``continuation`` apply to it only.
    """
    _, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, T, dt)
    validate.integer(depth, "depth", minimum=1, meaning="number of hidden layers")
    validate.real(damping, "damping", at_least=0.0, below=1.0)
    growth = validate.real(max_error_growth, "max_error_growth", above=1.0)
    if method == "picard":
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite sweeps are reported, not warned about
            res = _deep_linear_picard(kx, y, int(depth), gamma0, T, dt, damping, tol, maxiter, False, continuation,
                                      _start)
        return _report_divergence(res, "deep_linear", y, dt, growth, (depth + 1) * kx, strict)
    if method != "march":
        raise ValueError(f"method: must be 'march' or 'picard', got {method!r}")
    L = int(depth)
    with np.errstate(over="ignore", invalid="ignore"):
        cp = _deep_linear_march(kx, y, L, gamma0, T, dt)
        T1, P = cp["f"].shape
        resid = 0.0
        for l in range(1, L):  # E^T Phi^l E from the rows (s < t) against the stored column values
            qrow = np.einsum("tm,tmr->tr", cp["Delta"], cp["pd"][l].reshape(T1, P, T1))
            resid = max(resid, float(np.abs(qrow - cp["q"][l]).max()))
    finite = all(np.all(np.isfinite(v)) for k in ("f", "pd", "c", "Zr", "G")
                 for v in (cp[k].values() if isinstance(cp[k], dict) else [cp[k]]))
    if not finite:
        resid = float("inf")
    Phi, G, A, B = _march_matrices(kx, L, gamma0, dt, cp)
    solver = solvers.SolverResult(cp["f"], resid, 1, finite,
                                  message="" if finite else "the march produced non-finite values")
    res = DeepResult(dt * np.arange(T + 1), cp["f"], Phi, G, A, B, L, y.size, gamma0, solver, "march", cp)
    return _report_divergence(res, "deep_linear", y, dt, growth, (L + 1) * kx, strict)  # NTK(0) = (L+1) K^x


def _report_divergence(res, who, y, dt, growth, ntk0, strict):
    """Mark a DeepResult whose trajectory diverged as not converged (module docstring,
    "Divergence"); with ``strict`` raise ConvergenceError for any non-converged result."""
    message = _divergence(res.f, y, dt, growth, ntk0)
    sol = res.solver
    if res.method == "march":  # exact, no iteration: non-finite values are the dynamics' own
        if message:
            sol.converged, sol.message = False, message
    elif not sol.converged:  # an iterative solver that failed: its last iterate says nothing about the dynamics
        sol.message = (f"the solver did not converge: non-finite iterate after {sol.iterations} iterations"
                       if not np.all(np.isfinite(res.f)) else
                       f"the solver did not converge after {sol.iterations} iterations "
                       f"(change {float(np.max(sol.residual)):.3g})")
    elif message:
        sol.converged, sol.message = False, message
    sol.check(strict, who)
    return res


def _deep_linear_picard(kx, y, depth, gamma0, T, dt, damping=0.0, tol=1e-10, maxiter=500, strict=False,
                        continuation=0.5, _start=None) -> DeepResult:
    """Reference solver (``method="picard"``): the closed equations in Phi, G, A, B as one global fixed point
    (Bordelon & Pehlevan 2022, sec. 5 / app. deep linear), O((P T)^3) per sweep; the
    equations are those in :func:`deep_linear`'s docstring.
    Damped Picard sweeps (forward in l for Phi, A; backward for G, B) until the largest
    change of f, Phi, G is below ``tol``; the result reports convergence. Strong coupling
    (gamma0^2 L large) makes sweeps from the lazy start blow up, so for gamma0 > ``continuation``
    the solver first solves at gamma0 / 2 (recursively) and starts from that solution.
    """
    L, P, T1 = int(depth), y.size, T + 1
    n = T1 * P
    mask = _causal_mask(T1, P, dt)
    Phi0 = np.kron(np.ones((T1, T1)), kx)
    ones = np.ones((n, n))
    f = lazy_prediction((L + 1) * kx, y, T, dt)
    Phi = {0: Phi0, **{l: Phi0.copy() for l in range(1, L + 1)}}
    G = {L + 1: ones, **{l: ones.copy() for l in range(1, L + 1)}}
    A = {l: np.zeros((n, n)) for l in range(0, L)}
    B = {l: np.zeros((n, n)) for l in range(1, L + 1)}
    if _start is None and continuation and gamma0 > continuation:
        _start = _deep_linear_picard(kx, y, depth, gamma0 / 2, T, dt, damping, tol, maxiter, False, continuation)
        if not _start.solver.converged:
            _start = None
    if _start is not None:  # warm start from a solution at smaller gamma0
        f = _start.f.copy()
        for l in range(1, L + 1):
            Phi[l], G[l] = _start.Phi[l].copy(), _start.G[l].copy()
        for l in range(1, L):
            A[l], B[l] = _start.A[l].copy(), _start.B[l].copy()
    g2 = gamma0 * gamma0
    eye = np.eye(n)
    converged, it, change = False, 0, np.inf
    for it in range(1, maxiter + 1):
        delta = (y[None, :] - f).ravel()
        md = mask * delta[None, :]
        old_f = f
        change = 0.0
        C = {}
        H = {}
        # forward sweep: Phi^l, A^l from fresh lower layers
        for l in range(1, L + 1):
            C[l - 1] = A[l - 1] + Phi[l - 1] * md
            D = B[l] + G[l + 1] * md
            Lm = eye - g2 * (C[l - 1] @ D)
            Q = Phi[l - 1] + g2 * (C[l - 1] @ G[l + 1] @ C[l - 1].T)
            Y = sla.solve_triangular(Lm, Q, lower=True, unit_diagonal=True, check_finite=False)
            new = sla.solve_triangular(Lm, Y.T, lower=True, unit_diagonal=True, check_finite=False).T
            new = 0.5 * (new + new.T)
            change = max(change, np.abs(new - Phi[l]).max())
            Phi[l] = damping * Phi[l] + (1 - damping) * new
            if l < L:
                newA = sla.solve_triangular(Lm, C[l - 1], lower=True, unit_diagonal=True, check_finite=False)
                A[l] = damping * A[l] + (1 - damping) * newA
            H[l] = Lm
        # backward sweep: G^l, B^{l-1} from fresh upper layers
        for l in range(L, 0, -1):
            C[l - 1] = A[l - 1] + Phi[l - 1] * md
            D = B[l] + G[l + 1] * md
            Lz = eye - g2 * (D @ C[l - 1])
            Q = G[l + 1] + g2 * (D @ Phi[l - 1] @ D.T)
            Y = sla.solve_triangular(Lz, Q, lower=True, unit_diagonal=True, check_finite=False)
            new = sla.solve_triangular(Lz, Y.T, lower=True, unit_diagonal=True, check_finite=False).T
            new = 0.5 * (new + new.T)
            change = max(change, np.abs(new - G[l]).max())
            G[l] = damping * G[l] + (1 - damping) * new
            if l > 1:
                newB = sla.solve_triangular(Lz, D, lower=True, unit_diagonal=True, check_finite=False)
                B[l - 1] = damping * B[l - 1] + (1 - damping) * newB
            if l == L:
                # <h^L z^L^T> / gamma0 = H (Phi^{L-1} D^T + C^{L-1} G^{L+1}) Z^T
                Lh = eye - g2 * (C[L - 1] @ D)
                X = Phi[L - 1] @ D.T + C[L - 1] @ G[L + 1]
                Xs = sla.solve_triangular(Lh, X, lower=True, unit_diagonal=True, check_finite=False)
                Xs = sla.solve_triangular(Lz, Xs.T, lower=True, unit_diagonal=True, check_finite=False).T
                fnew = np.diagonal(Xs).reshape(T1, P).copy()
        change = max(change, np.abs(fnew - old_f).max())
        fnew = _precondition_f(old_f, fnew, _equal_time_ntk(Phi, G, L, T1, P), dt)
        f = damping * old_f + (1 - damping) * fnew
        if not np.all(np.isfinite(f)) or not np.isfinite(change):
            converged = False
            break
        if change <= tol * (1 + np.abs(y).max()):
            converged = True
            break
    message = "" if converged else f"no convergence after {it} sweeps (change {change:.3g})"
    solver = solvers.SolverResult(f, float(change), it, converged, message=message).check(strict, "deep_linear")
    return DeepResult(dt * np.arange(T1), f, Phi, G, A, B, L, P, gamma0, solver, "picard")


# ---------------------------------------------------------------------- deep nonlinear
def deep(kx, y, depth: int = 2, activation="tanh", gamma0: float = 1.0, T: int = 20, dt: float = 0.1,
         samples: int = 20_000, seed=0, damping: float = 0.5, tol: float = 1e-8, maxiter: int = 200,
         resp_samples: int = 5_000, strict: bool = False, max_error_growth: float = 1e3) -> DeepResult:
    """Deep nonlinear DMFT: single-site Monte Carlo with response functions (Bordelon & Pehlevan 2022, eqs. (10)-(12)).

    Single-site fields, for l = 1..L on steps t (causal sums over s < t)::

        h^l(t) = u^l(t) + gamma0 sum_s [A^{l-1} + dt Phi^{l-1}(t, s) Delta(s)] g^l(s),    u^l ~ N(0, Phi^{l-1})
        z^l(t) = r^l(t) + gamma0 sum_s [B^l + dt G^{l+1}(t, s) Delta(s)] phi(h^l(s)),       r^l ~ N(0, G^{l+1})
        g^l = phi'(h^l) z^l,  r^L = w(0),  A^0 = B^L = 0,

    A^l = gamma0^-1 <d phi(h^l) / d r^l> and B^{l-1} = gamma0^-1 <d g^l / d u^l> by central
    differences of the simulated fields on common Gaussian draws (``resp_samples`` sites; Stein's
    lemma with a pseudo-inverse of G, Phi amplified the noise and did not converge),
    f_k = <w_k phi(h^L_k) - w_0 phi(h^L_0)> / gamma0. The same Gaussian
    draws are reused at every iteration, so the damped map is deterministic and
    ``solvers.fixed_point`` can converge on it; the returned result says whether it did, and a
    diverging trajectory is reported as non-convergence (module docstring, "Divergence").
    """
    _, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, T, dt)
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

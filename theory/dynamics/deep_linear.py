"""Exact learning dynamics of deep linear networks (Saxe, McClelland & Ganguli 2014).

Whitened inputs (Sigma^11 = I), input-output correlation Sigma^31 = U S V^T, gradient
flow ``tau dW/dt = -dL/dW`` with tau = 1 / learning rate on ``L = E||y - W_{N-1}..W_1 x||^2 / 2``.
From decoupled balanced initial conditions every mode alpha evolves on its own:
the product of the layers is ``U diag(u_alpha(t)) V^T`` with (Saxe et al. 2014, eqs. (5)-(9))

* one weight matrix (N_l = 2 layers): ``tau du/dt = s - u``, ``u = s + (u0 - s) e^{-t/tau}``;
* one hidden layer (N_l = 3): ``tau du/dt = 2 u (s - u)``,
  ``u(t) = s e^{2st/tau} / (e^{2st/tau} - 1 + s/u0)`` (eq. (6)), learning time
  ``t = (tau / 2s) ln[u_f (s - u0) / (u0 (s - u_f))]`` (eq. (7));
* N_l layers (sec. 3, "deeper networks"): ``tau du/dt = (N_l - 1) u^{2 - 2/(N_l - 1)} (s - u)``.

Here ``depth`` = N_l - 1 is the number of weight matrices. For N_l >= 4 the learning time is
``t(u) = tau int_{u0}^{u} dv / ((N_l - 1) v^{2-2/(N_l-1)} (s - v))`` (by quadrature) and
the trajectory inverts it with a bracketed root.
"""
from __future__ import annotations

import numpy as np
from scipy import integrate

from limitlab.numerics import solvers
from limitlab.numerics import validation as validate

__all__ = ["mode_rate", "learning_time", "mode_trajectory", "network_map", "balanced_init"]


def _check(s, u0, depth, tau):
    s = np.asarray(s, dtype=float)
    u0 = np.asarray(u0, dtype=float)
    validate.integer(depth, "depth", minimum=1, meaning="number of weight matrices")
    validate.positive(tau, "tau", meaning="1 / learning rate")
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"s: mode strengths (singular values of Sigma^31) must be > 0, got {s!r}")
    if np.any(~np.isfinite(u0)) or np.any(u0 <= 0) or (depth > 1 and np.any(u0 >= s)):
        raise ValueError(f"u0: initial mode strengths must satisfy 0 < u0 < s for depth > 1, got {u0!r}")
    return s, u0


def mode_rate(u, s, depth: int, tau: float = 1.0):
    """du/dt of one mode (Saxe et al. 2014): (N_l - 1) u^{2 - 2/(N_l - 1)} (s - u) / tau, N_l - 1 = depth."""
    u = np.asarray(u, dtype=float)
    return depth * np.abs(u) ** (2.0 - 2.0 / depth) * (s - u) / tau


def learning_time(s, u0, uf, depth: int = 2, tau: float = 1.0):
    """Time for a mode to grow from u0 to uf (Saxe et al. 2014, eq. (7) for depth 2; quadrature otherwise)."""
    s, u0 = _check(s, u0, depth, tau)
    uf = np.asarray(uf, dtype=float)
    s, u0, uf = np.broadcast_arrays(s, u0, uf)
    if np.any((uf - u0) * (s - uf) < 0) or np.any(uf == s):
        raise ValueError("uf: must lie between u0 and s (excluded): the mode never reaches s")
    if depth == 1:
        return tau * np.log((s - u0) / (s - uf))
    if depth == 2:
        return tau / (2 * s) * np.log(uf * (s - u0) / (u0 * (s - uf)))
    out = np.empty(s.shape)
    for i in np.ndindex(s.shape):
        f = lambda v: 1.0 / mode_rate(v, s[i], depth, tau)  # noqa: E731
        # substitution v = s - (s - u0) e^{-x} removes the log singularity at v -> s
        si, ui = s[i], u0[i]
        g = lambda x: f(si - (si - ui) * np.exp(-x)) * (si - ui) * np.exp(-x)  # noqa: E731
        xf = np.log((si - ui) / (si - uf[i]))
        out[i] = integrate.quad(g, 0.0, xf, epsabs=0, epsrel=1e-12, limit=200)[0]
    return out if out.ndim else float(out)


def mode_trajectory(t, s, u0, depth: int = 2, tau: float = 1.0):
    """u(t) of each mode; t an array of times >= 0; s, u0 scalars or arrays (broadcast, trailing axis)."""
    s, u0 = _check(s, u0, depth, tau)
    t = np.asarray(t, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"t: times must be finite and >= 0, got {t!r}")
    tt, ss, uu = np.broadcast_arrays(t[..., None] if s.ndim else t, s, u0)
    if depth == 1:
        return ss + (uu - ss) * np.exp(-tt / tau)
    if depth == 2:
        # eq. (6) divided through by e^{2st/tau}: no overflow at late times
        e = np.exp(-2 * ss * tt / tau)
        return ss / (1.0 - e + e * ss / uu)
    # invert t(u) = t with a bracketed root in u in [u0, s)
    flat_t, flat_s, flat_u = (np.ravel(v).astype(float) for v in (tt, ss, uu))
    out = np.empty_like(flat_t)
    for i in range(flat_t.size):
        if flat_t[i] == 0:
            out[i] = flat_u[i]
            continue
        ti, si, ui = flat_t[i], flat_s[i], flat_u[i]
        hi = si * (1 - 1e-15)
        if learning_time(si, ui, hi, depth, tau) <= ti:
            out[i] = hi
            continue
        res = solvers.find_root(lambda v: learning_time(si, ui, v, depth, tau) - ti, (ui, hi), tol=1e-15, rtol=1e-13)
        out[i] = res.value
    return out.reshape(tt.shape)


def balanced_init(sigma31, u0, depth: int, hidden: int, seed=None):
    """Decoupled balanced initial weights [W_1, ..., W_depth] with product U diag(u0) V^T (Saxe et al. 2014, sec. 2).

    Each layer carries u0^(1/depth) per mode; hidden-space rotations R_l are random orthogonal
    (seeded), so the network starts exactly on the analytic solution's initial condition.
    """
    sigma31 = np.asarray(sigma31, dtype=float)
    U, S, Vt = np.linalg.svd(sigma31, full_matrices=False)
    k = S.size
    if hidden < k:
        raise ValueError(f"hidden: width must be >= number of modes {k}, got {hidden}")
    u0 = np.broadcast_to(np.asarray(u0, dtype=float), (k,))
    rng = np.random.default_rng(seed)
    a = np.diag(u0 ** (1.0 / depth))
    Rs = [np.linalg.qr(rng.standard_normal((hidden, hidden)))[0][:, :k] for _ in range(depth - 1)]
    Ws = []
    for l in range(depth):
        left = U if l == depth - 1 else Rs[l]
        right = Vt if l == 0 else Rs[l - 1].T
        Ws.append(left @ a @ right)
    return Ws, (U, S, Vt)


def network_map(t, sigma31, u0, depth: int = 2, tau: float = 1.0):
    """The end-to-end map W_depth...W_1 at times t: U diag(u(t)) V^T (Saxe et al. 2014, eq. (9))."""
    U, S, Vt = np.linalg.svd(np.asarray(sigma31, dtype=float), full_matrices=False)
    u = mode_trajectory(np.atleast_1d(t), S, np.broadcast_to(u0, S.shape), depth, tau)
    return np.einsum("ik,tk,kj->tij", U, u, Vt)

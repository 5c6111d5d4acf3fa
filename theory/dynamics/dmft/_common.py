"""DMFT pieces shared by the solvers: argument checks, the input kernel, the lazy (NTK)
prediction, the divergence test (package docstring, "Divergence") and the deep result type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitlab.numerics import solvers
from limitlab.numerics import validation as validate
from limitlab.numerics.linalg import psd_sqrt


def input_kernel(X) -> np.ndarray:
    """K^x = X X^T / D, the input Gram matrix the DMFT depends on (B&P eq. (2)).

    ``X``: a real, finite (P, D) array with P >= 1 inputs of dimension D >= 1.
    """
    X = validate.real_array(X, "X", finite=False)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X: expected a (P, D) array with P >= 1 inputs and dimension D >= 1, got shape {X.shape}")
    X = validate.real_array(X, "X")  # finite: checked after the shape
    return X @ X.T / X.shape[1]


def _check_common(kx, y, gamma0, steps, lr):
    """(root of kx, kx, y, gamma0, T, dt): checked arguments, T = steps and dt = lr in the paper's notation."""
    kx = validate.real_array(kx, "kx", finite=False)
    y = validate.real_array(y, "y", finite=False)
    root = psd_sqrt(kx, "kx")
    if y.shape != (kx.shape[0],) or not np.all(np.isfinite(y)):
        raise ValueError(f"y: expected finite targets of shape ({kx.shape[0]},), got {y.shape}")
    gamma0 = validate.real(gamma0, "gamma0", at_least=0.0, meaning="richness")
    T = validate.integer(steps, "steps", minimum=1, meaning="number of gradient descent steps")
    dt = validate.positive(lr, "lr", meaning="learning rate, the time step dt")
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


@validate.renamed(T="steps", dt="lr")
def lazy_prediction(ntk, y, steps, lr):
    """f_k = (I - (I - lr Theta)^k) y, k = 0..steps: discrete NTK gradient descent from f_0 = 0."""
    T, dt = steps, lr
    ntk = np.asarray(ntk, dtype=float)
    f = np.zeros((T + 1, y.size))
    for k in range(T):
        f[k + 1] = f[k] + dt * ntk @ (y - f[k])
    return f


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

"""Deep linear DMFT (Bordelon & Pehlevan 2022, sec. 5): the closed equations in Phi, G, A, B solved
by one causal march over the time steps (:func:`linear`), and the reference Picard iteration."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import linalg as sla

from limitlab.numerics import solvers
from limitlab.numerics import validation as validate

from ._common import (DeepResult, _causal_mask, _check_common, _equal_time_ntk, _precondition_f,
                      _report_divergence, lazy_prediction)


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


def _march(kx, y, L, gamma0, T, dt):
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


@validate.renamed(T="steps", dt="lr")
def linear(kx, y, depth: int = 2, gamma0: float = 1.0, steps: int = 100, lr: float = 0.05, damping: float = 0.0,
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
    :func:`_march` and docs/dynamics.md). ``f`` and the (T+1) x (T+1) kernels are
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
    _, kx, y, gamma0, T, dt = _check_common(kx, y, gamma0, steps, lr)
    validate.integer(depth, "depth", minimum=1, meaning="number of hidden layers")
    validate.real(damping, "damping", at_least=0.0, below=1.0)
    growth = validate.real(max_error_growth, "max_error_growth", above=1.0)
    if method == "picard":
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite sweeps are reported, not warned about
            res = _picard(kx, y, int(depth), gamma0, T, dt, damping, tol, maxiter, False, continuation,
                                      _start)
        return _report_divergence(res, "linear", y, dt, growth, (depth + 1) * kx, strict)
    if method != "march":
        raise ValueError(f"method: must be 'march' or 'picard', got {method!r}")
    L = int(depth)
    with np.errstate(over="ignore", invalid="ignore"):
        cp = _march(kx, y, L, gamma0, T, dt)
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
    return _report_divergence(res, "linear", y, dt, growth, (L + 1) * kx, strict)  # NTK(0) = (L+1) K^x


def _picard(kx, y, depth, gamma0, T, dt, damping=0.0, tol=1e-10, maxiter=500, strict=False,
                        continuation=0.5, _start=None) -> DeepResult:
    """Reference solver (``method="picard"``): the closed equations in Phi, G, A, B as one global fixed point
    (Bordelon & Pehlevan 2022, sec. 5 / app. deep linear), O((P T)^3) per sweep; the
    equations are those in :func:`linear`'s docstring.
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
        _start = _picard(kx, y, depth, gamma0 / 2, T, dt, damping, tol, maxiter, False, continuation)
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
    solver = solvers.SolverResult(f, float(change), it, converged, message=message).check(strict, "linear")
    return DeepResult(dt * np.arange(T1), f, Phi, G, A, B, L, P, gamma0, solver, "picard")

"""Infinite-width predictions from stored kernels larger than memory.

The same predictions as :mod:`limitlab.theory.dynamics.gradient_flow` (Lee et al. 2019,
"Wide neural networks of any depth evolve as linear models", eqs. (9)-(16), S23), computed
with blocked solvers (:mod:`limitlab.numerics.blocked`) over a kernel stored tile by tile
(``write_kernels``; a zarr array, a dask array or a NumPy array), never as a whole matrix:

* :func:`gradient_flow_mean` — the ensemble mean of gradient flow on the MSE loss,
  ``mean_t(x) = Theta(x, X) g_t(Theta) y`` with ``g_t(lambda) = (1 - e^{-eta lambda t/n})/lambda``
  (a Lanczos approximation of the matrix function), and at ``t = inf``
  ``Theta(x, X) Theta^{-1} y`` (a preconditioned CG or blocked Cholesky solve); on the
  training set ``(I - e^{-eta Theta t/n}) y``;
* :func:`nngp_posterior` — the NNGP posterior (exact Bayesian inference; Lee et al. 2018,
  eq. (6)-(7)): ``mean(x) = K(x, X) (K + s I)^{-1} y`` and
  ``var(x) = K(x, x) - K(x, X) (K + s I)^{-1} K(X, x)``.

``diag_reg``, ``diag_reg_absolute_scale``, ``lr`` (the learning rate) and ``normalization`` mean what they
mean in ``gradient_descent_mse_ensemble``. Each result carries ``solver``, the solver's
diagnostics (a SolverResult: converged, iterations, residual, message); ``strict=True``
raises ConvergenceError instead of returning an unconverged result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitlab.numerics import blocked
from limitlab.numerics import validation as validate
from limitlab.numerics.solvers import SolverResult
from limitlab.theory.dynamics.gradient_flow import times

__all__ = ["StoredPrediction", "gradient_flow_mean", "nngp_posterior"]


@dataclass
class StoredPrediction:
    """``mean`` (time axis first for several times), ``variance`` (NNGP posterior, or None) and
    ``solver``: the diagnostics of the solve (one SolverResult per time for several times)."""

    mean: np.ndarray
    variance: Optional[np.ndarray]
    solver: object

    def __post_init__(self):
        # the solution vectors are internal; keep the diagnostics light
        for r in (self.solver if isinstance(self.solver, list) else [self.solver]):
            if isinstance(r, SolverResult):
                r.value = None


def _train(K, name, block):
    try:
        return blocked.as_tiled(K, block)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _test_rows(K, name, n):
    if K is None:
        return None
    K = blocked.as_tiled(K, square=False, name=name)
    if K.shape[1] != n:
        raise ValueError(f"{name}: expected a (M, {n}) kernel between test and training points, got shape {K.shape}")
    return K


def _ridge(T, diag_reg, absolute, client):
    validate.real(diag_reg, "diag_reg", at_least=0.0)
    if not diag_reg or absolute:
        return float(diag_reg)
    return float(diag_reg * blocked.diagonal(T).sum() / T.shape[0])


def gradient_flow_mean(ntk_train_train, y_train, t=None, ntk_test_train=None, *, lr: float = 1.0,
                       diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False, normalization=None,
                       method: str = "auto", tol: float = 1e-10, maxiter: Optional[int] = None,
                       block: Optional[int] = None, client=None, strict: bool = False) -> StoredPrediction:
    """Mean prediction of the infinite-width ensemble trained by gradient flow, from stored kernels.

    ``ntk_train_train`` (N x N) and ``ntk_test_train`` (M x N, optional; without it the
    training-set prediction) as zarr/dask/NumPy arrays; ``t=None`` is t = infinity, an array of
    times gives a leading time axis. ``method`` ("auto", "cg", "cholesky") is the solver at
    t = infinity; finite times use Lanczos.
    """
    T = _train(ntk_train_train, "ntk_train_train", block)
    n = T.shape[0]
    y = validate.rows(y_train, "y_train", n)
    test = _test_rows(ntk_test_train, "ntk_test_train", n)
    validate.positive(lr, "lr")
    norm = float(y.size if normalization is None else validate.positive(normalization, "normalization"))
    reg = _ridge(T, diag_reg, diag_reg_absolute_scale, client)
    rate = lr / norm
    ts, scalar = times(t)
    y2 = y.reshape(n, -1)
    means, diags = [], []
    for tt in ts:
        if np.isinf(tt):
            if test is None:  # (I - e^{-inf}) y = y on the range of Theta + reg (all of it: it is invertible)
                r = blocked.solve(T, y2, reg=reg, method=method, tol=tol, maxiter=maxiter, client=client,
                                  strict=strict)
                mean = blocked.matmul(T, r.value, client) + reg * r.value
            else:
                r = blocked.solve(T, y2, reg=reg, method=method, tol=tol, maxiter=maxiter, client=client,
                                  strict=strict)
                mean = blocked.matmul(test, r.value, client)
        elif test is None:
            r = blocked.apply_function(T, y2, lambda lam, s=rate * tt: -np.expm1(-s * lam), reg=reg, tol=tol,
                                       maxiter=maxiter, client=client, strict=strict)
            mean = r.value
        else:
            r = blocked.apply_function(T, y2, lambda lam, s=rate * tt: _flow_gain(lam, s), reg=reg, tol=tol,
                                       maxiter=maxiter, client=client, strict=strict)
            mean = blocked.matmul(test, r.value, client)
        means.append(mean.reshape((-1,) + y.shape[1:]))
        diags.append(r)
    return StoredPrediction(means[0] if scalar else np.stack(means), None, diags[0] if scalar else diags)


def _flow_gain(lam, s):
    """(1 - e^{-s lambda}) / lambda, = s at lambda = 0 (expm1: no cancellation for small s lambda)."""
    lam = np.asarray(lam, dtype=float)
    safe = np.where(lam != 0, lam, 1.0)
    return np.where(lam != 0, -np.expm1(-s * lam) / safe, s)


def nngp_posterior(nngp_train_train, y_train, nngp_test_train=None, nngp_test_test_diag=None, *,
                   diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False, method: str = "auto",
                   tol: float = 1e-10, maxiter: Optional[int] = None, block: Optional[int] = None, client=None,
                   strict: bool = False) -> StoredPrediction:
    """NNGP posterior mean (and variance, given ``nngp_test_test_diag``) from stored kernels.

    ``nngp_test_train`` (M x N; None: the training points themselves) and
    ``nngp_test_test_diag`` (the M prior variances K(x, x)). The variance needs one solve
    with M right-hand sides, all sharing each pass over the tiles.
    """
    T = _train(nngp_train_train, "nngp_train_train", block)
    n = T.shape[0]
    y = validate.rows(y_train, "y_train", n)
    test = _test_rows(nngp_test_train, "nngp_test_train", n)
    reg = _ridge(T, diag_reg, diag_reg_absolute_scale, client)
    y2 = y.reshape(n, -1)
    KxX = None
    if nngp_test_test_diag is not None:
        if test is None:
            raise ValueError("nngp_test_test_diag: the posterior variance is computed at test points; pass "
                             "nngp_test_train (the training points' own variances would need N columns)")
        prior = validate.real_array(nngp_test_test_diag, "nngp_test_test_diag", finite=False)
        if prior.shape != (test.shape[0],):
            raise ValueError(f"nngp_test_test_diag: expected the {test.shape[0]} prior variances K(x, x), got shape "
                             f"{prior.shape}")
        KxX = _columns(test, client)  # K(X, x): N x M, in memory
    rhs = y2 if KxX is None else np.hstack([y2, KxX])
    r = blocked.solve(T, rhs, reg=reg, method=method, tol=tol, maxiter=maxiter, client=client, strict=strict)
    alpha = r.value[:, :y2.shape[1]]
    mean = blocked.matmul(T if test is None else test, alpha, client)
    variance = None
    if KxX is not None:
        Z = r.value[:, y2.shape[1]:]  # (K + s I)^{-1} K(X, x)
        variance = prior - np.einsum("ij,ij->j", KxX, Z)
    return StoredPrediction(mean.reshape((-1,) + y.shape[1:]), variance, r)


def _columns(K, client):
    """K(X, x) = K(x, X)^T for a test kernel of few rows, in memory (N x M, float64)."""
    return np.ascontiguousarray(K.read(slice(0, K.shape[0]), slice(0, K.shape[1])).T, dtype=np.float64)

"""Infinite-width gradient descent on the MSE loss: the linear (kernel) dynamics.

At infinite width in the NTK parametrization the network trained by gradient flow on
``L = ||f(X) - y||^2 / (2 n)`` evolves as a linear model (Jacot et al. 2018; Lee et al. 2019,
"Wide neural networks of any depth evolve as linear models", eqs. (9)-(16))::

    f_t(X) = f_0(X) + (I - exp(-lr Theta t / n)) (y - f_0(X))
    f_t(x) = f_0(x) - Theta(x, X) Theta^{-1} (I - exp(-lr Theta t / n)) (f_0(X) - y)

with ``f_0`` a centred Gaussian process of covariance the NNGP ``K``. Averaging over
initialisations gives a Gaussian (Lee et al. 2019, eq. (16), their S23 for the NNGP)::

    mean_t(x) = Theta(x, X) Theta^{-1} (I - e^{-lr Theta t/n}) y
    cov_t(x, x') = K(x, x') + A K(X, X) A^T - A K(X, x') - K(x, X) A^T,
    A = Theta(x, X) Theta^{-1} (I - e^{-lr Theta t/n}).

This is the counterpart of neural-tangents' ``predict.gradient_descent_mse_ensemble``:
the same normalisation (``n = y_train.size``), learning rate (``lr``; neural-tangents'
``learning_rate``, still accepted, deprecated), ``diag_reg`` (scaled by
``trace(Theta)/n`` unless ``diag_reg_absolute_scale``). ``normalization=1`` gives the
sum loss ``||f - y||^2 / 2`` used by the DMFT papers. ``steps=True`` replaces the flow by
discrete gradient descent of step ``lr``: ``exp(-lr Theta t/n)`` becomes
``(I - lr Theta / n)^t`` for integer ``t``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitlab.numerics import validation as validate
from limitlab.numerics.linalg import psd_eigh

__all__ = ["Gaussian", "gradient_descent_mse_ensemble", "predict_mlp"]


@dataclass
class Gaussian:
    """Ensemble prediction: ``mean`` (time axis first when several times) and ``covariance`` (or None)."""

    mean: np.ndarray
    covariance: Optional[np.ndarray] = None


def _as_matrix(a, name, shape0=None, square=False):
    a = validate.real_array(a, name, finite=False)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D kernel matrix, got shape {a.shape}")
    if square and a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got shape {a.shape}")
    if shape0 is not None and a.shape[1] != shape0:
        raise ValueError(f"{name}: expected {shape0} columns (training points), got shape {a.shape}")
    return validate.real_array(a, name)  # finite: checked after the shape


def times(t, steps=False):
    """``(times, scalar)``: ``t`` as a 1-D float array of times >= 0 (``inf`` allowed; ``None`` is
    t = infinity) and whether it was a scalar; with ``steps`` the finite ones must be integer
    step counts. The one check of a time argument in theory/dynamics (gradient_flow, scale)."""
    if t is None:
        return np.array([np.inf]), True
    arr = validate.real_array(t, "t", finite=False)
    scalar = arr.ndim == 0
    arr = np.atleast_1d(arr)
    if arr.ndim != 1 or np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"t: must be times >= 0 (or None for t = infinity), got {t!r}")
    if steps and np.any((arr != np.round(arr)) & np.isfinite(arr)):
        raise ValueError(f"t: must be integer step counts (steps=True), got {t!r}")
    return arr, scalar


@validate.renamed(learning_rate="lr")
def gradient_descent_mse_ensemble(ntk_train_train, y_train, nngp_train_train=None, lr=1.0,
                                  diag_reg=0.0, diag_reg_absolute_scale=False, normalization=None,
                                  steps=False):
    """Infinite-width MSE training of an ensemble: returns ``predict(t=None, ...)`` (Lee et al. 2019, eq. (16)).

    ``predict(t=None, ntk_test_train=None, nngp_test_train=None, nngp_test_test=None,
    compute_cov=False)``: without test kernels, the training-set prediction; ``t=None`` is
    t = infinity; an array of times gives a leading time axis. ``compute_cov`` needs the
    NNGP kernels (``nngp_train_train`` here, the test ones in the call).
    """
    theta = _as_matrix(ntk_train_train, "ntk_train_train", square=True)
    n = theta.shape[0]
    y = validate.rows(y_train, "y_train", n)
    validate.positive(lr, "lr", meaning="learning rate")
    validate.real(diag_reg, "diag_reg", at_least=0.0)
    norm = float(y.size if normalization is None else normalization)
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError(f"normalization: must be > 0, got {normalization!r}")
    evals, evecs, _ = psd_eigh(theta, "ntk_train_train")
    if diag_reg:
        reg = diag_reg if diag_reg_absolute_scale else diag_reg * np.trace(theta) / n
        theta = theta + reg * np.eye(n)
        evals = evals + reg
    K = None
    if nngp_train_train is not None:
        K = _as_matrix(nngp_train_train, "nngp_train_train", square=True)
        if K.shape != theta.shape:
            raise ValueError(f"nngp_train_train: expected shape {theta.shape}, got {K.shape}")
        psd_eigh(K, "nngp_train_train")
    rate = lr / norm
    if steps and evals.max() * rate >= 2.0:
        raise ValueError(f"lr: {lr} diverges for discrete steps "
                         f"(needs lr * max eig / normalization < 2, got {evals.max() * rate:.3g})")
    pos = evals > 1e-12 * max(evals.max(), np.finfo(float).tiny)
    y2 = y.reshape(n, -1)
    uty = evecs.T @ y2

    def decay(t):
        """Eigenvalues of e^{-rate Theta t} (or (1 - rate Theta)^t) and of Theta^+ (I - that)."""
        if np.isinf(t):
            e = np.where(pos, 0.0, 1.0)
            g = np.where(pos, 1.0 / np.where(pos, evals, 1.0), 0.0)
            return e, g
        if steps:
            x = rate * evals
            e = (1.0 - x) ** t
            # (1 - e)/lambda: expm1/log1p avoids cancellation for small steps; direct where 1 - x < 1/2
            small = np.where(x < 0.5, x, 0.0)
            num = np.where(x < 0.5, -np.expm1(t * np.log1p(-small)), 1.0 - e)
            g = np.where(pos, num / np.where(pos, evals, 1.0), rate * t)
        else:
            e = np.exp(-rate * evals * t)
            g = np.where(pos, -np.expm1(-rate * evals * t) / np.where(pos, evals, 1.0), rate * t)
        return e, g

    def predict(t=None, ntk_test_train=None, nngp_test_train=None, nngp_test_test=None, compute_cov=False):
        ts, scalar = times(t, steps)
        test = ntk_test_train is not None
        if test:
            k_tx = _as_matrix(ntk_test_train, "ntk_test_train", shape0=n)
        if compute_cov:
            if K is None:
                raise ValueError("compute_cov: needs nngp_train_train (the NNGP covariance of f_0)")
            if test:
                if nngp_test_train is None or nngp_test_test is None:
                    raise ValueError("compute_cov: needs nngp_test_train and nngp_test_test for test points")
                g_tx = _as_matrix(nngp_test_train, "nngp_test_train", shape0=n)
                g_tt = _as_matrix(nngp_test_test, "nngp_test_test", square=True)
                if g_tx.shape[0] != k_tx.shape[0] or g_tt.shape[0] != k_tx.shape[0]:
                    raise ValueError("nngp_test_train, nngp_test_test: must have as many rows as ntk_test_train")
        means, covs = [], []
        for tt in ts:
            e, g = decay(tt)
            if test:
                a_eig = k_tx @ evecs  # Theta(x,X) U
                mean = a_eig @ (g[:, None] * uty)
            else:
                mean = evecs @ ((1.0 - e)[:, None] * uty)
            means.append(mean.reshape((-1,) + y.shape[1:]))
            if compute_cov:
                if test:
                    A = (a_eig * g) @ evecs.T
                    cross = A @ g_tx.T
                    cov = g_tt + A @ K @ A.T - cross - cross.T
                else:
                    E = (evecs * e) @ evecs.T
                    cov = E @ K @ E.T
                covs.append(0.5 * (cov + cov.T))
        mean = means[0] if scalar else np.stack(means)
        cov = None
        if compute_cov:
            cov = covs[0] if scalar else np.stack(covs)
        return Gaussian(mean, cov)

    return predict


def predict_mlp(mlp, x_train, y_train, x_test=None, t=None, compute_cov=False, **kwargs):
    """The ensemble prediction of ``limitlab.theory.kernels.MLP`` trained on (x_train, y_train).

    Computes the NNGP/NTK with ``mlp.kernels`` and calls :func:`gradient_descent_mse_ensemble`
    (keyword arguments pass through: lr, diag_reg, normalization, steps).
    """
    k_train = mlp.kernels(x_train)
    nngp, ntk = k_train[0], k_train[1]
    predict = gradient_descent_mse_ensemble(ntk, y_train, nngp_train_train=nngp if compute_cov else None, **kwargs)
    if x_test is None:
        return predict(t, compute_cov=compute_cov)
    k_tx = mlp.kernels(x_test, x_train)
    k_tt = mlp.nngp(x_test) if compute_cov else None
    return predict(t, ntk_test_train=k_tx[1], nngp_test_train=k_tx[0], nngp_test_test=k_tt, compute_cov=compute_cov)

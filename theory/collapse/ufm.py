"""Global minimizers of the unconstrained-features model (UFM) with a deep linear head.

Source: Dang, Tran, Osher, Tran-The, Ho, Nguyen 2023, "Neural Collapse in Deep Linear
Networks: From Balanced to Imbalanced Data" (ICML), Theorems 2.1 (balanced) and 3.1
(imbalanced, bias-free MSE). The objective over features H (N x d, rows) and layers
W_1 (d_1 x d), ..., W_M (C x d_{M-1}) is

    f = (1/2N) ||H W_1^T ... W_M^T - Y||_F^2 + (lambda_W/2) sum_j ||W_j||_F^2 + (lambda_H/2) ||H||_F^2

with one-hot targets Y and class sizes n_1..n_C, N = sum n_k, all widths >= C. At a global
minimizer the features of a class collapse to their mean h_k, the class directions are
orthogonal (W W^T, H_bar H_bar^T and W H_bar^T are diagonal, W = W_M ... W_1) and, class by
class, with b = M N lambda_W (N lambda_H)^(1/M) and x_k the largest root of

    M x^(M-1) / (x^M + 1)^2 = b / n_k                                  (Dang et al., Thm 3.1)

||w_k||^2 = N lambda_H x_k^M, ||h_k||^2 = x_k^M / (N lambda_H (x_k^M + 1)^2), (W h_k)_k =
x_k^M / (x_k^M + 1); every layer has singular value s_k = (N lambda_H x_k^M)^(1/(2M)) on
class k's direction. Reduced to one class, f_k(x) = (n_k/2N) [1/(x^M + 1) + (b/n_k) x]
(derived here from the per-class problem by minimizing over ||h_k|| first; f_k(0) = n_k/2N
is the zero solution). For M = 1 the root is unique and convex analysis makes it the
minimizer; for M >= 2 zero is always a local minimum and can be the global one although
the root exists, so each class is decided by comparing f_k at the root with f_k(0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from limitlab.numerics import validation as validate
from limitlab.numerics.solvers import find_root

from .metrics import _check_labels

__all__ = ["UFMGeometry", "ufm_global_minimizer", "ufm_thresholds", "ufm_objective", "ufm_realize", "ufm_sympy"]


def _check_counts(counts):
    n = np.asarray(counts)
    if n.ndim != 1 or n.size < 1 or n.dtype.kind not in "iuf":
        raise ValueError(f"counts: must be a 1-D sequence of class sizes, got {counts!r}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"counts: every class size must be > 0, got {counts!r} (an empty class has no features)")
    return n.astype(np.float64)


@dataclass
class UFMGeometry:
    """Closed-form global minimizer, per class k (arrays of length C).

    ``x``: largest root of the stationarity equation (NaN where none exists);
    ``root_exists``; ``collapsed``: the zero solution is the global minimum (ties count as
    collapsed); ``classifier_sq_norms`` diag(W W^T) of W = W_M...W_1;
    ``layer_singular_values`` s_k of every layer; ``feature_sq_norms`` ||h_k||^2;
    ``alignment`` (W h_k)_k; ``objective_per_class`` f_k at the global minimum;
    ``objective`` their sum (the global minimum value); ``objective_at_root``.
    """

    counts: np.ndarray
    depth: int
    lambda_W: float
    lambda_H: float
    b: float
    x: np.ndarray
    root_exists: np.ndarray
    collapsed: np.ndarray
    classifier_sq_norms: np.ndarray
    layer_singular_values: np.ndarray
    feature_sq_norms: np.ndarray
    alignment: np.ndarray
    objective_per_class: np.ndarray
    objective_at_root: np.ndarray
    objective: float

    @property
    def num_samples(self) -> float:
        return float(self.counts.sum())


def _phi_max(M):
    """max_x M x^(M-1)/(x^M+1)^2, attained at x^M = (M-1)/(M+1) (M >= 2)."""
    xm = (M - 1) / (M + 1)
    return M * xm ** ((M - 1) / M) / (xm + 1) ** 2, xm ** (1 / M)


def _r_crit(M):
    """Largest b/n_k at which the nonzero solution still beats zero: max_x x^(M-1)/(x^M+1)."""
    return 1.0 if M == 1 else (M - 1) ** ((M - 1) / M) / M


def ufm_thresholds(num_samples, lambda_W, lambda_H, depth=1):
    """Per-class size thresholds at fixed N (Dang et al. 2023, Thm 3.1 and its remark on M >= 2).

    Returns ``(n_root, n_collapse)``: the stationarity equation has a positive root iff
    n_k > n_root (M = 1) or n_k >= n_root (M >= 2); the class is nonzero at the global
    minimum iff n_k > n_collapse. For M = 1 both equal N^2 lambda_W lambda_H; for M >= 2,
    n_collapse = b M / (M-1)^((M-1)/M) > n_root = b / max_x M x^(M-1)/(x^M+1)^2.
    """
    N = validate.positive(num_samples, "num_samples")
    lw, lh, M = validate.positive(lambda_W, "lambda_W"), validate.positive(lambda_H, "lambda_H"), validate.integer(depth, "depth", minimum=1, meaning="number of linear layers M")
    b = M * N * lw * (N * lh) ** (1.0 / M)
    n_root = b if M == 1 else b / _phi_max(M)[0]
    return n_root, b / _r_crit(M)


def ufm_global_minimizer(counts, lambda_W: float, lambda_H: float, depth: int = 1) -> UFMGeometry:
    """The global minimizer's geometry of the bias-free MSE UFM with an M-layer linear head
    (Dang et al. 2023, Thm 3.1; balanced counts give Thm 2.1's orthogonal frame)."""
    n = _check_counts(counts)
    lw, lh, M = validate.positive(lambda_W, "lambda_W"), validate.positive(lambda_H, "lambda_H"), validate.integer(depth, "depth", minimum=1, meaning="number of linear layers M")
    N = n.sum()
    b = M * N * lw * (N * lh) ** (1.0 / M)
    r = b / n
    x = np.full(n.shape, np.nan)
    if M == 1:
        exists = r < 1.0
        x[exists] = 1.0 / np.sqrt(r[exists]) - 1.0  # (x+1)^2 = n_k / b
    else:
        phimax, xstar = _phi_max(M)
        exists = r <= phimax
        if exists.any():
            rr = r[exists]
            hi = (M / rr) ** (1.0 / (M + 1)) * (1 + 1e-12) + 1e-300  # phi(x) < M / x^(M+1)
            lo = np.full(rr.shape, xstar)
            res = find_root(lambda v: M * v ** (M - 1) / (v ** M + 1) ** 2 - rr, (lo, hi), strict=True)
            x[exists] = res.value
    zero_obj = n / (2 * N)
    with np.errstate(invalid="ignore"):
        root_obj = np.where(exists, n / (2 * N) * (1.0 / (x ** M + 1.0) + r * x), np.inf)
    collapsed = ~(root_obj < zero_obj)
    xm = np.where(collapsed, 0.0, np.nan_to_num(x) ** M)
    w2 = N * lh * xm
    return UFMGeometry(
        counts=n, depth=M, lambda_W=lw, lambda_H=lh, b=b, x=x, root_exists=exists, collapsed=collapsed,
        classifier_sq_norms=w2, layer_singular_values=w2 ** (1.0 / (2 * M)),
        feature_sq_norms=xm / (N * lh * (xm + 1.0) ** 2), alignment=xm / (xm + 1.0),
        objective_per_class=np.minimum(root_obj, zero_obj), objective_at_root=root_obj,
        objective=float(np.sum(np.minimum(root_obj, zero_obj))))


def ufm_objective(weights, features, labels, lambda_W, lambda_H, num_classes=None, grad=False):
    """The UFM objective f (module docstring) for NumPy arrays; with ``grad`` also its
    gradients ``(dW_1, ..., dW_M), dH``. ``weights`` = [W_1, ..., W_M], ``features`` (N, d),
    ``labels`` (N,) integers in [0, num_classes) (``num_classes`` defaults to the rows of
    W_M); anything else raises (a label -1 would otherwise index the last class)."""
    lw, lh = validate.positive(lambda_W, "lambda_W"), validate.positive(lambda_H, "lambda_H")
    Ws = [np.asarray(W, dtype=np.float64) for W in weights]
    if not Ws:
        raise ValueError("weights: need at least one layer")
    H = np.asarray(features, dtype=np.float64)
    if H.ndim != 2:
        raise ValueError(f"features: expected shape (N, d), got shape {H.shape}")
    if num_classes is None:
        C = Ws[-1].shape[0]
    else:
        C = validate.integer(num_classes, "num_classes", minimum=1)
    y = _check_labels(labels, H.shape[0], C)  # integers in [0, C): -1 is not "the last class"
    N = H.shape[0]
    Y = np.zeros((N, C))
    Y[np.arange(N), y] = 1.0
    P = Ws[0]
    for W in Ws[1:]:
        P = W @ P
    R = H @ P.T - Y
    f = 0.5 / N * np.sum(R * R) + 0.5 * lw * sum(np.sum(W * W) for W in Ws) + 0.5 * lh * np.sum(H * H)
    if not grad:
        return float(f)
    R /= N
    G = R.T @ H  # df/dP
    dH = R @ P + lh * H
    dWs = []
    for j in range(len(Ws)):
        A = np.eye(C) if j == len(Ws) - 1 else _chain(Ws[j + 1:])
        B = np.eye(H.shape[1]) if j == 0 else _chain(Ws[:j])
        dWs.append(A.T @ G @ B.T + lw * Ws[j])
    return float(f), dWs, dH


def _chain(Ws):
    P = Ws[0]
    for W in Ws[1:]:
        P = W @ P
    return P


def ufm_realize(geometry: UFMGeometry, labels, dim: int, *, seed=None):
    """Weights [W_1..W_M] (dim-wide) and features (N, dim) attaining ``geometry``: every
    layer is sum_k s_k u_k u_k^T on an orthonormal frame u_1..u_C (Haar-random with
    ``seed``), h_i = ||h_{y_i}|| u_{y_i}."""
    C = geometry.counts.size
    validate.integer(dim, "dim", minimum=C, meaning="the UFM minimizer needs dim >= num_classes")
    y0 = np.asarray(labels)
    if y0.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array of class indices, got shape {y0.shape}")
    y = _check_labels(labels, y0.shape[0], C)
    if np.any(np.bincount(y, minlength=C) != geometry.counts):
        raise ValueError("labels: class sizes must equal geometry.counts")
    from .simplex_etf import orthogonal_frame

    U = orthogonal_frame(C, dim, seed=seed)  # (C, dim) rows u_k
    s = geometry.layer_singular_values
    hidden = (U.T * s) @ U  # dim x dim
    Ws = [hidden] * (geometry.depth - 1) + [s[:, None] * U]
    H = np.sqrt(geometry.feature_sq_norms)[y, None] * U[y]
    return [W.copy() for W in Ws], H


def ufm_sympy(depth: int = 1) -> dict:
    """Symbolic forms for one class (sympy; symbols n_k, N, lambda_W, lambda_H, x).

    Keys: ``equation`` (= 0 at a stationary point), ``b``, ``objective`` f_k(x),
    ``classifier_sq_norm``, ``feature_sq_norm``, ``alignment`` (functions of the root x);
    for M = 1 also the closed forms ``classifier_sq_norm_closed``,
    ``feature_sq_norm_closed``, ``alignment_closed``, ``objective_closed`` (Piecewise:
    zero when n_k <= N^2 lambda_W lambda_H; Dang et al. 2023, Thm 3.1 with M = 1).
    """
    M = validate.integer(depth, "depth", minimum=1, meaning="number of linear layers M")
    n, N, lw, lh, x = sp.symbols("n_k N lambda_W lambda_H x", positive=True)
    b = M * N * lw * (N * lh) ** sp.Rational(1, M)
    out = dict(symbols=dict(n_k=n, N=N, lambda_W=lw, lambda_H=lh, x=x), b=b,
               equation=M * x ** (M - 1) / (x ** M + 1) ** 2 - b / n,
               objective=n / (2 * N) * (1 / (x ** M + 1) + b / n * x),
               classifier_sq_norm=N * lh * x ** M, feature_sq_norm=x ** M / (N * lh * (x ** M + 1) ** 2),
               alignment=x ** M / (x ** M + 1))
    if M == 1:
        nonzero = n > N ** 2 * lw * lh
        w2 = sp.sqrt(n * lh / lw) - N * lh
        out.update(
            classifier_sq_norm_closed=sp.Piecewise((w2, nonzero), (0, True)),
            feature_sq_norm_closed=sp.Piecewise((lw / (n * lh) * w2, nonzero), (0, True)),
            alignment_closed=sp.Piecewise((1 - N * sp.sqrt(lw * lh / n), nonzero), (0, True)),
            objective_closed=sp.Piecewise((sp.sqrt(n * lw * lh) - N * lw * lh / 2, nonzero), (n / (2 * N), True)))
    return out

"""Simplex equiangular tight frames and orthogonal frames: the geometries of neural collapse.

Rows are class vectors (shape ``(num_classes, dim)``), matching a classifier ``W`` of shape
``(C, d)`` and class means stacked as rows.

Sources: Papyan, Han, Donoho 2020, "Prevalence of neural collapse during the terminal
phase of deep learning training", Definition 1 (simplex ETF
``sqrt(C/(C-1)) P (I - 11^T/C)``, ``P^T P = I``); Dang et al. 2023, "Neural Collapse in
Deep Linear Networks", Theorem 2.1 (orthogonal frame for bias-free MSE).
"""
from __future__ import annotations


import numpy as np
import sympy as sp

from limitlab.numerics import validation as validate

__all__ = ["simplex_etf", "orthogonal_frame", "simplex_etf_gram", "orthogonal_frame_gram"]


def _check_dtype(dtype):
    """Only floating dtypes can hold the frame's irrational entries (an integer cast gives zeros)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: must be a floating NumPy dtype, got {dtype!r} "
                        "(float16, float32, float64, longdouble)") from None
    if dt.kind != "f":
        raise TypeError(f"dtype={dtype!r}: the frame has irrational entries; allowed: a floating dtype "
                        "(float16, float32, float64, longdouble)")
    return dt


def _rotation(dim, seed):
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def simplex_etf(num_classes: int, dim: int | None = None, *, scale: float = 1.0, seed=None,
                dtype=np.float64) -> np.ndarray:
    """C unit vectors (times ``scale``) in R^dim with pairwise cosines -1/(C-1), summing to zero.

    Papyan et al. 2020, Definition 1: ``M = sqrt(C/(C-1)) (I - 11^T/C) P^T`` as rows.
    ``dim`` defaults to C (P = I, Papyan's canonical form); any ``dim >= C - 1`` works
    (the frame spans a (C-1)-dimensional subspace). With ``seed`` the frame is rotated
    by a Haar-random orthogonal matrix of R^dim. ``dtype``: a floating dtype (TypeError otherwise).
    """
    C = validate.integer(num_classes, "num_classes", minimum=2)
    dtype = _check_dtype(dtype)
    dim = C if dim is None else dim
    validate.integer(dim, "dim", minimum=C - 1, meaning=f"a simplex ETF of {C} classes needs dim >= C - 1")
    validate.positive(scale, "scale")
    centred = np.eye(C) - np.full((C, C), 1.0 / C)
    if dim >= C:
        frame = np.zeros((C, dim))
        frame[:, :C] = np.sqrt(C / (C - 1)) * centred
    else:  # dim == C - 1: coordinates in an orthonormal basis of 1^perp
        basis = np.linalg.svd(centred)[0][:, : C - 1]  # (C, C-1), orthonormal, orthogonal to 1
        frame = np.sqrt(C / (C - 1)) * centred @ basis
    if seed is not None:
        frame = frame @ _rotation(dim, seed).T
    return (scale * frame).astype(dtype, copy=False)


def orthogonal_frame(num_classes: int, dim: int | None = None, *, scale: float = 1.0, seed=None,
                     dtype=np.float64) -> np.ndarray:
    """C orthonormal vectors (times ``scale``) in R^dim, ``dim >= C`` (Dang et al. 2023, Thm 2.1);
    ``dtype`` a floating dtype (TypeError otherwise)."""
    C = validate.integer(num_classes, "num_classes", minimum=1)
    dtype = _check_dtype(dtype)
    dim = C if dim is None else dim
    validate.integer(dim, "dim", minimum=C, meaning=f"an orthogonal frame of {C} classes needs dim >= C")
    validate.positive(scale, "scale")
    frame = np.eye(C, dim)
    if seed is not None:
        frame = frame @ _rotation(dim, seed).T
    return (scale * frame).astype(dtype, copy=False)


def simplex_etf_gram(num_classes):
    """Gram matrix of the unit simplex ETF: ``C/(C-1) (I - 11^T/C)`` (1 on, -1/(C-1) off the diagonal).

    An integer gives an explicit sympy Matrix with rational entries; a sympy Symbol gives
    the matrix expression in that symbol (``.as_explicit()`` after substituting a number).
    """
    if isinstance(num_classes, sp.Basic) and not num_classes.is_Integer:
        C = num_classes
        return C / (C - 1) * (sp.Identity(C) - sp.OneMatrix(C, C) / C)
    C = validate.integer(int(num_classes) if isinstance(num_classes, sp.Integer) else num_classes, "num_classes", minimum=2)
    return sp.Rational(C, C - 1) * (sp.eye(C) - sp.ones(C, C) / C)


def orthogonal_frame_gram(num_classes):
    """Gram matrix of the orthonormal frame: the identity (sympy; a Symbol gives ``Identity(C)``)."""
    if isinstance(num_classes, sp.Basic) and not num_classes.is_Integer:
        return sp.Identity(num_classes)
    C = validate.integer(int(num_classes) if isinstance(num_classes, sp.Integer) else num_classes, "num_classes",
                         minimum=1)
    return sp.eye(C)

"""Positive semi-definite matrices: one checked eigendecomposition and one square root.

Kernel and Gram matrices are PSD in exact arithmetic and symmetric up to rounding. Both
helpers factor the symmetric part ``(k + k^T) / 2`` with ``numpy.linalg.eigh`` and clip
eigenvalues that rounding pushed below zero; given a ``name`` they first check that ``k``
is a finite square matrix, symmetric and PSD up to ``tol`` relative to its largest
eigenvalue magnitude times its size, and raise a ValueError naming ``name`` otherwise.
"""
from __future__ import annotations

import numpy as np

__all__ = ["psd_eigh", "psd_sqrt"]


def psd_eigh(k, name: str, tol: float = 1e-10):
    """(eigenvalues clipped at 0, eigenvectors, largest |eigenvalue|) of a checked PSD matrix ``k``."""
    k = np.asarray(k, dtype=float)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or not np.all(np.isfinite(k)):
        square = k.ndim == 2 and k.shape[0] == k.shape[1]
        raise ValueError(f"{name}: must be a finite square matrix, got "
                         + ("non-finite entries" if square else f"shape {k.shape}"))
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(k).max(initial=0.0))):
        raise ValueError(f"{name}: must be symmetric (a kernel matrix)")
    evals, evecs = np.linalg.eigh(0.5 * (k + k.T))
    scale = max(np.abs(evals).max(initial=0.0), np.finfo(float).tiny)
    if evals.size and evals.min() < -tol * scale * k.shape[0]:
        raise ValueError(f"{name}: must be positive semi-definite, smallest eigenvalue {evals.min():.3g} "
                         f"(largest {evals.max():.3g})")
    return np.maximum(evals, 0.0), evecs, scale


def psd_sqrt(k, name: str = None, tol: float = 1e-10) -> np.ndarray:
    """R with R R^T = k (R = U sqrt(Lambda), eigenvalues clipped at 0); ``name``: check ``k`` first."""
    if name is not None:
        evals, evecs, _ = psd_eigh(k, name, tol)
        return evecs * np.sqrt(evals)
    ev, U = np.linalg.eigh(0.5 * (k + k.T))
    return U * np.sqrt(np.maximum(ev, 0.0))

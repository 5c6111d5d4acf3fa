"""Compiled inner loops of the streamed NC metrics (one read of each block, all cores).

Both are memory-bound passes that NumPy would split into several temporaries and
single-threaded sweeps; the BLAS products around them (the block Gram matrix, the stacked
score GEMM) already run on all cores.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})  # vectorized float64 row-norm sums
def centre_block(X, y, ref, Z, T, q_parts):
    """Z = X - ref[y] (input dtype) and, from the same read, the class sums of Z and the row
    norms ||Z_i||^2, both accumulated in float64.

    X (n, d), y (n,) class indices, ref (C, d) in X's dtype; outputs Z (n, d), T (C, d)
    float64 (zeroed here), q_parts (P, n) float64: thread p handles the columns
    p*d/P .. (p+1)*d/P of every row (so the class sums need no per-thread copies) and
    writes its part of each row norm; the caller sums q_parts over its first axis.
    """
    n, d = X.shape
    P = q_parts.shape[0]
    T[:] = 0.0
    for p in nb.prange(P):
        lo = p * d // P
        hi = (p + 1) * d // P
        for i in range(n):
            c = y[i]
            s = 0.0
            for j in range(lo, hi):
                z = X[i, j] - ref[c, j]
                Z[i, j] = z
                zf = np.float64(z)
                T[c, j] += zf
                s += zf * zf
            q_parts[p, i] = s


@nb.njit(parallel=True, cache=True)
def disagreements(scores, C, mism):
    """Row-wise argmax of scores[:, :C] (classifier) and scores[:, C:] (nearest centre),
    first index on ties as numpy.argmax; mism[i] = the two differ. Returns the number of
    rows holding a non-finite score (then mism is meaningless)."""
    n = scores.shape[0]
    bad = 0
    for i in nb.prange(n):
        a = scores[i, 0]
        ia = 0
        b = scores[i, C]
        ib = 0
        fin = np.isfinite(a) and np.isfinite(b)
        for j in range(1, C):
            v = scores[i, j]
            w = scores[i, C + j]
            fin = fin and np.isfinite(v) and np.isfinite(w)
            if v > a:
                a = v
                ia = j
            if w > b:
                b = w
                ib = j
        mism[i] = ia != ib
        if not fin:
            bad += 1
    return bad

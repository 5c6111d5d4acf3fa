"""Compiled inner loops of the streamed NC metrics: one read of each block, no temporaries.

Both are memory- or branch-bound sweeps that NumPy would split into several temporaries
and passes. They run on one thread: the BLAS products around them (the block Gram matrix,
the stacked score GEMM) already use every core, a single core already runs the centring
at memory-copy speed, and on a shared machine a parallel loop waits for its slowest
(descheduled) thread.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, fastmath={"reassoc", "contract"})  # reassociation vectorizes the float64 sums
def centre_block(X, y, ref, Z, T, q):
    """Z = X - ref[y] (input dtype) and, from the same read, the class sums of Z and the row
    norms ||Z_i||^2, both accumulated in float64.

    X (n, d), y (n,) class indices, ref (C, d) in X's dtype; outputs Z (n, d), T (C, d)
    float64 (zeroed here), q (n,) float64.
    """
    n, d = X.shape
    T[:] = 0.0
    for i in range(n):
        c = y[i]
        xi = X[i]
        ri = ref[c]
        zi = Z[i]
        ti = T[c]
        s = 0.0
        for j in range(d):  # two simple loops vectorize; one fused loop does not
            z = xi[j] - ri[j]
            zi[j] = z
            s += np.float64(z) * np.float64(z)
        for j in range(d):
            ti[j] += np.float64(zi[j])
        q[i] = s


@nb.njit(cache=True)
def disagreements(scores, C, mism):
    """Row-wise argmax of scores[:, :C] (classifier) and scores[:, C:] (nearest centre),
    first index on ties as numpy.argmax; mism[i] = the two differ. Returns the number of
    rows holding a non-finite score (then mism is meaningless)."""
    n = scores.shape[0]
    bad = 0
    for i in range(n):
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

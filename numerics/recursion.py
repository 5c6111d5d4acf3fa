"""Compiled layer recursions over a matrix of pairs (the NNGP/NTK recursion's engine).

Given a scalar map ``(q1, q2, c) -> (A, Adot)`` (sympy expressions), generate one Numba
kernel that, for every entry (i, j) of a Gram matrix, runs the whole recursion

    k   <- w_0 G_ij / d + b_0,                       th <- k        (or G_ij + beta_0)
    A, Adot = map(q1[l, i], q2[l, j], k)
    k   <- w_{l+1} A + b_{l+1}
    th  <- k + w_{l+1} Adot th        (or  n_l A + beta_{l+1} + w_{l+1} Adot th)

in registers (one pass over memory, ``prange`` over rows, upper triangle only when
symmetric, the Gram buffer reused as output). The diagonal variances q[l, i] are computed
first by the same compiled map, so diagonal entries are bit-identical to them.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import sympy as sp

from limitlab.numerics import codegen

_q1, _q2, _c = sp.symbols("q1 q2 c", real=True)

_TEMPLATE = '''

@nb.njit(cache=True)
def diagonal(g, inv_dim, w, b, L):
    """q[l, i]: variance of the pre-activations of layer l+1 at input i."""
    n = g.shape[0]
    q = np.empty((L, n))
    for i in range(n):
        k = w[0] * g[i] * inv_dim + b[0]
        q[0, i] = k
        for l in range(1, L):
            a, _ = dualmap(k, k, k)
            k = w[l] * a + b[l]
            q[l, i] = k
    return q


@nb.njit(parallel=True, cache=True)
def recursion(G, q1, q2, inv_dim, w, b, beta, widths, standard, out_k, out_th, want_k, want_th, symmetric):
    L = q1.shape[0]
    n1, n2 = G.shape
    for i in nb.prange(n1):
        j0 = i if symmetric else 0
        for j in range(j0, n2):
            g = G[i, j]
            k = w[0] * g * inv_dim + b[0]
            if standard:
                th = g + beta[0]
            else:
                th = k
            for l in range(L):
                a, adot = dualmap(q1[l, i], q2[l, j], k)
                knew = w[l + 1] * a + b[l + 1]
                if standard:
                    th = widths[l] * a + beta[l + 1] + w[l + 1] * adot * th
                else:
                    th = knew + w[l + 1] * adot * th
                k = knew
            if want_k:
                out_k[i, j] = k
            if want_th:
                out_th[i, j] = th
    # strided writes of the lower triangle inside the loop would miss cache on every entry:
    # mirror it afterwards in cache-sized tiles instead
    if symmetric:
        if want_k:
            mirror_upper(out_k)
        if want_th:
            mirror_upper(out_th)


@nb.njit(parallel=True, cache=True)
def mirror_upper(A):
    n = A.shape[0]
    B = 64
    nb_ = (n + B - 1) // B
    for bi in nb.prange(nb_):
        i0 = bi * B
        i1 = min(n, i0 + B)
        for bj in range(bi, nb_):
            j0 = bj * B
            j1 = min(n, j0 + B)
            for i in range(i0, i1):
                for j in range(max(j0, i + 1), j1):
                    A[j, i] = A[i, j]
'''


_CLIP = '''
@nb.njit(cache=True, inline='always')
def dualmap(q1, q2, c):
    s = math.sqrt(q1 * q2)
    # |c| within rounding of sqrt(q1 q2) means parallel inputs: snap, since arccos would turn
    # an ulp of c into an angle of 1e-8 (e.g. a point of X1 repeated in X2)
    if q1 * q2 - c * c <= 16 * 2.220446049250313e-16 * q1 * q2:
        c = s if c > 0 else -s
    return _dualmap_raw(q1, q2, c)
'''
# cached modules are keyed by the templates' text, so editing them invalidates the cache
_VERSION = hashlib.sha256((_CLIP + _TEMPLATE).encode()).hexdigest()[:8]


def compile_dual_recursion(nngp_map: sp.Expr, ntk_map: sp.Expr, symbols: Sequence[sp.Symbol] = (_q1, _q2, _c),
                           cache_key: str = None):
    """Compile the recursion for a closed-form map; returns a module with ``diagonal``, ``recursion``.

    With ``cache_key`` (a hash of what determines the map), a module generated earlier is
    loaded from disk without redoing the symbolic work.
    """
    if cache_key is not None:
        mod = codegen.load_cached(f"dual_{_VERSION}_{cache_key}")
        if mod is not None:
            return mod
    q1, q2, c = symbols
    # clip the covariance to the Cauchy-Schwarz range: rounding can push |c| past sqrt(q1 q2)
    cc = sp.Symbol("cc", real=True)
    src = codegen.scalar_function_source("_dualmap_raw", [q1, q2, cc],
                                         [nngp_map.subs(c, cc), ntk_map.subs(c, cc)])

    return codegen.compile_module(src + "\n" + _CLIP + _TEMPLATE, tag="dual",
                                  alias=None if cache_key is None else f"dual_{_VERSION}_{cache_key}")

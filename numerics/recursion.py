"""Compiled layer recursions over a matrix of pairs (the NNGP/NTK recursion's engine).

Given a scalar map ``(q1, q2, c) -> (A, Adot)`` (sympy expressions), generate Numba code
that runs, for every entry (i, j) of a Gram matrix, the whole recursion

    k   <- w_0 G_ij / d + b_0,                       th <- x_0 G_ij + y_0
    A, Adot = map(q1[l, i], q2[l, j], k)
    k   <- w_{l+1} A + b_{l+1}
    th  <- u_l A + v_l + w_{l+1} Adot th

(ntk parametrization: x_0 = w_0/d, y_0 = b_0, u = w, v = b; standard: x_0 = 1, y_0 = beta_0,
u_l = n_l, v_l = beta_{l+1}). It runs row by row, one layer at a time over a row held in
cache, in a loop LLVM vectorizes: the map is written in s = sqrt(q) (computed once per input
and layer) and takes the Cauchy-Schwarz root sqrt(q1 q2 - c^2) as an argument, angles use
:mod:`limitlab.numerics.vecmath`, and nothing in the loop branches. Arc-cosine maps take
the pair angle theta = atan2(root, c) as an argument too, and their loop is a software
pipeline: the root and division of entry j + 32 run beside the polynomial of entry j (10 %
faster on the ReLU NTK than in one entry's order, where they queue behind each other).
``prange`` runs over rows; when symmetric only the upper triangle is computed (rows paired
for balance) and the caller mirrors it. The diagonal variances q[l, i] come first, from the
same compiled map with the same arithmetic as a snapped diagonal entry, so diagonal entries
equal them bit for bit.

Why the loops are a source template and not ordinary ``@njit`` code taking the generated map:
Numba's disk cache does not serve such code. Measured (Numba 0.68, two fresh processes each):
an ``@njit(cache=True)`` loop taking the map as a first-class function argument is a cache miss
in every process (its signature names the function object's type), and so is one closing over
the map; each new process would recompile the recursion (seconds per activation) where the
generated module loads from the cache. So :mod:`limitlab.numerics.codegen` writes the map and
the loops into one module, keyed by the hash of its source; the same holds for
:mod:`limitlab.theory.kernels.fused` and the DMFT single-site template.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import sympy as sp

from limitlab.numerics import codegen

_q1, _q2, _c = sp.symbols("q1 q2 c", real=True)

_HEAD = '''

@nb.njit(cache=True, error_model='numpy')
def diagonal(g, inv_dim, w, b, L):
    # q[l, i]: variance of the pre-activations of layer l+1 at input i
    n = g.shape[0]
    q = np.empty((L, n))
    for i in range(n):
        k = w[0] * g[i] * inv_dim + b[0]
        q[0, i] = k
        for l in range(1, L):
            s = math.sqrt(k)
            # c = s*s, exactly what `layer` snaps a diagonal entry to: the same arithmetic
            # makes diagonal entries bit-identical to q
            a, _ = _dualmap_raw(s, s, s * s, 0.0, 0.0)
            k = w[l] * a + b[l]
            q[l, i] = k
    return q


@nb.njit(cache=True, inline='always', error_model='numpy')
def _snap(c, t):
    # (c, sqrt(t^2 - c^2)) for t = sqrt(q1 q2). |c| within rounding of t means parallel
    # inputs: snap, since arccos would turn an ulp of c into an angle of 1e-8 (e.g. a point
    # of X1 repeated in X2)
    d = (t - c) * (t + c)
    near = d <= 16 * 2.220446049250313e-16 * (t * t)
    return (math.copysign(t, c) if near else c), (0.0 if near else math.sqrt(d))


@nb.njit(cache=True, inline='always', error_model='numpy')
def _step(k, th, j, a, adot, w, b, u, v):
    # entry j of a layer: k <- w A + b, th <- u A + v + w Adot th
    kn = w * a + b
    th[j] = u * a + v + w * adot * th[j]
    k[j] = kn


'''

# the map has no pair angle: one pass
_LAYER = '''

@nb.njit(cache=True, error_model='numpy', fastmath={'contract'})
def layer(k, th, s1, s2, w, b, u, v, S):
    # one layer along a row: k <- w A + b, th <- u A + v + w Adot th; branch-free, so LLVM
    # vectorizes it (no float reduction in here either: that needs reassociation); 'contract'
    # only fuses multiply-adds (one rounding instead of two). S, the pipelined loop's
    # scratch, is not used here: both layers share one signature
    for j in range(k.shape[0]):
        c, r = _snap(k[j], s1 * s2[j])
        a, adot = _dualmap_raw(s1, s2[j], c, r, 0.0)
        _step(k, th, j, a, adot, w, b, u, v)


'''

# the map takes the pair angle theta (arc-cosine kernels): a software pipeline
_LAYER_ANGLE = '''

_D = 32  # pipeline distance: entries whose root and division are in flight


@nb.njit(cache=True, inline='always', error_model='numpy')
def _pair(c, t):
    # the divider's half of an entry: the root and the angle's division
    c, r = _snap(c, t)
    x, off = _angle_reduce(r, c, t)
    return c, r, x, off


@nb.njit(cache=True, inline='always', error_model='numpy')
def _update(k, th, j, s1, s2j, c, r, x, off, w, b, u, v):
    a, adot = _dualmap_raw(s1, s2j, c, r, _angle_finish(x, off, c))
    _step(k, th, j, a, adot, w, b, u, v)


@nb.njit(cache=True, error_model='numpy', fastmath={'contract'})
def _pipelined(k, th, s1, s2, w, b, u, v, S0, S1, S2, S3, m):
    # one body: the root and division of entry j + _D (the divider unit) beside the
    # polynomial and update of entry j (the multiply-add units), which reads what the body
    # wrote _D entries ago; in one entry's order they queue behind each other. k[j + _D] is
    # read before the body at j + _D writes it. Separate 1-d scratch rows keep LLVM's alias
    # checks few enough for it to vectorize.
    for j in range(m - _D):
        c1, r1, x1, o1 = _pair(k[j + _D], s1 * s2[j + _D])
        S0[j + _D] = c1
        S1[j + _D] = r1
        S2[j + _D] = x1
        S3[j + _D] = o1
        _update(k, th, j, s1, s2[j], S0[j], S1[j], S2[j], S3[j], w, b, u, v)


@nb.njit(cache=True, error_model='numpy', fastmath={'contract'})
def layer(k, th, s1, s2, w, b, u, v, S):
    # one layer along a row: k <- w A + b, th <- u A + v + w Adot th; branch-free, so LLVM
    # vectorizes it; 'contract' only fuses multiply-adds (one rounding instead of two).
    # S: (4, >= len(k)) scratch
    m = k.shape[0]
    dd = min(_D, m)
    for j in range(dd):
        S[0, j], S[1, j], S[2, j], S[3, j] = _pair(k[j], s1 * s2[j])
    _pipelined(k, th, s1, s2, w, b, u, v, S[0], S[1], S[2], S[3], m)
    for j in range(m - dd, m):
        _update(k, th, j, s1, s2[j], S[0, j], S[1, j], S[2, j], S[3, j], w, b, u, v)


'''

_TAIL = '''

@nb.njit(cache=True, error_model='numpy')
def segment(G, i, j0, k, th, S, s1, s2, inv_dim, w, b, x0, y0, u, v):
    # the whole recursion for entries (i, j0:j0+len(k)) of G, into k (NNGP) and th (NTK)
    m = k.shape[0]
    for j in range(m):
        g = G[i, j0 + j]
        k[j] = w[0] * g * inv_dim + b[0]
        th[j] = x0 * g + y0
    for l in range(s1.shape[0]):
        layer(k, th, s1[l, i], s2[l, j0:j0 + m], w[l + 1], b[l + 1], u[l], v[l], S)


@nb.njit(cache=True, error_model='numpy')
def row(G, i, j0, k, th, S, s1, s2, inv_dim, w, b, x0, y0, u, v, out_k, out_th, want_k, want_th):
    # entries (i, j0:) into the outputs, through the work buffers k and th; returns 1 if any
    # is not finite (NaN propagates through the layers, so the final values tell). Copy and
    # test share one pass (an integer OR reduction, which vectorizes).
    m = G.shape[1] - j0
    k = k[:m]
    th = th[:m]
    segment(G, i, j0, k, th, S, s1, s2, inv_dim, w, b, x0, y0, u, v)
    bad = 0
    if want_k and want_th:
        ok = out_k[i, j0:]
        ot = out_th[i, j0:]
        for j in range(m):
            a = k[j]
            h = th[j]
            ok[j] = a
            ot[j] = h
            bad |= not (abs(a) < np.inf and abs(h) < np.inf)
    elif want_th:
        ot = out_th[i, j0:]
        for j in range(m):
            h = th[j]
            ot[j] = h
            bad |= not abs(h) < np.inf
    else:
        ok = out_k[i, j0:]
        for j in range(m):
            a = k[j]
            ok[j] = a
            bad |= not abs(a) < np.inf
    return bad


@nb.njit(parallel=True, cache=True)
def recursion(G, s1, s2, inv_dim, w, b, x0, y0, u, v, out_k, out_th, want_k, want_th, symmetric):
    # G -> outputs (G may be one of them: each entry is read before it is written); when
    # symmetric only the upper triangle is read and written. Returns the rows with a
    # non-finite value (empty when none).
    n1, n2 = G.shape
    flags = np.zeros(n1, dtype=np.int64)
    if not symmetric:
        for i in nb.prange(n1):
            k = np.empty(n2)
            th = np.empty(n2)
            S = np.empty((4, n2))
            flags[i] = row(G, i, 0, k, th, S, s1, s2, inv_dim, w, b, x0, y0, u, v, out_k, out_th, want_k, want_th)
        return np.nonzero(flags)[0]
    # symmetric: the upper triangle only (the caller mirrors it: see numerics.arrays.mirror_upper);
    # row p is paired with row n-1-p so every task has n+1 entries (the triangle's rows
    # shrink; the caller hands tasks out in small chunks)
    for p in nb.prange((n1 + 1) // 2):
        k = np.empty(n2)
        th = np.empty(n2)
        S = np.empty((4, n2))
        for r in range(2):
            # int64 throughout: the prange index is unsigned, and int - uint is a float
            i = np.int64(p) if r == 0 else np.int64(n1 - 1) - np.int64(p)
            if r == 1 and i == np.int64(p):
                break
            flags[i] = row(G, i, i, k, th, S, s1, s2, inv_dim, w, b, x0, y0, u, v, out_k, out_th, want_k, want_th)
    return np.nonzero(flags)[0]


'''
# cached modules are keyed by the templates' text, so editing them invalidates the cache
_VERSION = hashlib.sha256((_HEAD + _LAYER + _LAYER_ANGLE + _TAIL + codegen.header()).encode()).hexdigest()[:8]


def _split_roots(expr: sp.Expr) -> sp.Expr:
    '''sqrt(1 - c^2/(s1^2 s2^2)) -> sqrt(s1^2 s2^2 - c^2)/(s1 s2): the same root as the
    angle's, which common-subexpression elimination then computes once.'''
    def split(p):
        num, den = sp.together(p.base).as_numer_denom()
        return p if den == 1 else sp.Pow(num, p.exp) / sp.Pow(den, p.exp)
    return expr.replace(lambda p: p.is_Pow and p.base.is_Add and p.exp.is_Rational and p.exp.q == 2, split)


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
    # the kernel takes standard deviations s = sqrt(q), computed once per input and layer,
    # rather than a sqrt(q1 q2) per entry
    s1, s2 = sp.symbols("s1 s2", positive=True)
    cc = sp.Symbol("cc", real=True)
    r = sp.Symbol("r", nonnegative=True)
    sub = {q1: s1 ** 2, q2: s2 ** 2, c: cc}
    gap = s1 ** 2 * s2 ** 2 - cc ** 2

    def is_root(e):  # sqrt(max(s1^2 s2^2 - c^2, 0)), as stable_angles writes it
        return (e.is_Pow and e.exp == sp.S.Half and isinstance(e.base, sp.Max) and sp.S.Zero in e.base.args
                and sp.expand(sum(a for a in e.base.args if a != 0) - gap) == 0)

    def is_gap(e):  # max(s1^2 s2^2 - c^2, 0) itself (activations._cs_gap), not under a root
        return (isinstance(e, sp.Max) and sp.S.Zero in e.args
                and sp.expand(sum(a for a in e.args if a != 0) - gap) == 0)

    # that root becomes an argument, computed by the caller as sqrt((t - c)(t + c)), t = s1 s2:
    # exactly 0 for parallel inputs (c snapped to +-t), and without t^2 - c^2's cancellation;
    # the gap itself (maps written with it to avoid cancellation, e.g. erf's) becomes r^2
    maps = [codegen.stable_angles(_split_roots(m.subs(sub))).replace(is_root, lambda e: r).replace(is_gap, lambda e: r * r)
            for m in (nngp_map, ntk_map)]
    # the arc-cosine angle atan2(r, c) becomes an argument too: the layer loop computes it
    # with vecmath.angle's two halves (t = s1 s2 known: no octant swap) in a software pipeline
    theta = sp.Symbol("theta", nonnegative=True)
    angled = any(m.has(sp.atan2(r, cc)) for m in maps)
    maps = [m.xreplace({sp.atan2(r, cc): theta}) for m in maps]
    src = codegen.scalar_function_source("_dualmap_raw", [s1, s2, cc, r, theta], maps)
    template = _HEAD + (_LAYER_ANGLE if angled else _LAYER) + _TAIL
    return codegen.compile_module(src + "\n" + template, tag="dual",
                                  alias=None if cache_key is None else f"dual_{_VERSION}_{cache_key}")

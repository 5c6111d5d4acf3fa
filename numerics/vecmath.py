"""Branch-free arctangents that LLVM can vectorize inside Numba loops.

``math.atan2`` compiles to a libm call, which blocks SIMD vectorization of the loop around
it (Numba has no vector math library unless Intel SVML is installed). The arc-cosine
kernels (ReLU, abs, leaky ReLU, step, sign, erf, ...) evaluate one angle per entry and
layer, so the angle decides the speed of the whole recursion. Here atan2 is range-reduced
to |u| <= tan(pi/8) by selects only, then ``atan(u) = u + u z p(z)``, ``z = u^2``, with
``p`` the degree-10 polynomial interpolating ``(atan(u)/u - 1)/z`` at Chebyshev nodes of
[0, tan^2(pi/8)] (coefficients computed with mpmath at 50 digits; the fit is reproduced in
tests/numerics/test_vecmath.py). Error: about 1 ulp of the result (tested against
``math.atan2`` and 30-digit mpmath, including signed zeros' neighbours, 1e-300 and 1e300).
:func:`angle` is the arc-cosine kernels' special case: the angle between two vectors given
the product of their norms too, by the half-angle identity, with fewer selects.
"""
from __future__ import annotations

import numba as nb

# (atan(u)/u - 1)/u^2 on u^2 in [0, tan(pi/8)^2], low degree first
COEFFICIENTS = (-0.3333333333333333, 0.1999999999999552, -0.14285714284666542, 0.11111111015256361,
                -0.09090904578123903, 0.07692183190826087, -0.06664511447381948, 0.0585814891280221,
                -0.0508544973794026, 0.03923165829558719, -0.01917688711906226)
_TAN_PI_8 = 0.41421356237309503
_PI_4 = 0.7853981633974483
_PI_2 = 1.5707963267948966
_PI = 3.141592653589793


@nb.njit(cache=True, inline="always", error_model="numpy")
def _reduced(z):
    """p(z), with atan(u) = u + u z p(z) for z = u^2 <= tan(pi/8)^2."""
    # Estrin's scheme: a dependency chain of 4 multiply-adds instead of Horner's 10, so
    # successive loop iterations overlap (the loop is latency-bound otherwise)
    c = COEFFICIENTS
    z2 = z * z
    z4 = z2 * z2
    z8 = z4 * z4
    p01 = c[0] + c[1] * z
    p23 = c[2] + c[3] * z
    p45 = c[4] + c[5] * z
    p67 = c[6] + c[7] * z
    p89 = c[8] + c[9] * z
    p03 = p01 + p23 * z2
    p47 = p45 + p67 * z2
    p8a = p89 + c[10] * z2
    return p03 + p47 * z4 + p8a * z8


@nb.njit(cache=True, inline="always", error_model="numpy")
def atan2(y, x):
    """atan2(y, x) in [-pi, pi], branch-free (selects only), ~1 ulp; -0.0 counts as +0.0."""
    ax = abs(x)
    ay = abs(y)
    mx = max(ax, ay)
    mn = min(ax, ay)
    # atan(mn/mx) = pi/4 + atan((mn - mx)/(mn + mx)) keeps the argument within tan(pi/8)
    red = mn > _TAN_PI_8 * mx
    num = mn - mx if red else mn
    den = mn + mx if red else mx
    den = den if den > 0.0 else 1.0  # atan2(0, 0) = 0
    u = num / den
    z = u * u
    p = _reduced(z)
    # the quadrant fix-ups (+pi/4 if reduced, pi/2 - . if |y| > |x|, pi - . if x < 0, sign
    # of y) compose to off + sgn * atan(u); both come from the flags alone, in parallel with
    # the polynomial, and then cost one multiply-add at the end of the chain
    off = _PI_4 if red else 0.0
    sgn = 1.0
    swap = ay > ax
    off = _PI_2 - off if swap else off
    sgn = -sgn if swap else sgn
    neg = x < 0.0
    off = _PI - off if neg else off
    sgn = -sgn if neg else sgn
    neg_y = y < 0.0
    off = -off if neg_y else off
    sgn = -sgn if neg_y else sgn
    return off + sgn * (u + u * z * p)


@nb.njit(cache=True, inline="always", error_model="numpy")
def atan(x):
    """atan(x), branch-free."""
    return atan2(x, 1.0)


@nb.njit(cache=True, inline="always", error_model="numpy")
def angle(r, c, t):
    """The angle atan2(r, c) in [0, pi] between two vectors with |x||y| = t, x.y = c and
    Cauchy-Schwarz root r = sqrt(t^2 - c^2) >= 0 (arc-cosine kernels; Cho & Saul 2009).

    With t known, the half-angle identity tan(theta/2) = r/(t + c) needs no octant swap:
    theta = 2 atan(r/(t + |c|)) for c >= 0 and pi minus that for c < 0, the argument in
    [0, 1], reduced to tan(pi/8) as in :func:`atan2`. Fewer selects than ``atan2(r, c)`` in
    the kernels' innermost loop; within 2 ulp (t^2 finite, as the callers' r needs). t = 0 (a
    zero-variance input) gives 0.
    """
    u, off = angle_reduce(r, c, t)
    return angle_finish(u, off, c)


@nb.njit(cache=True, inline="always", error_model="numpy")
def angle_reduce(r, c, t):
    """:func:`angle`'s first half: the reduced argument u (the division) and the offset."""
    den = t + abs(c)
    red = r > _TAN_PI_8 * den
    num = r - den if red else r
    den = r + den if red else den
    den = den if den > 0.0 else 1.0
    # theta = off + sgn (u + u z p): 2 (pi/4 [reduced] + atan u), or pi minus that if c < 0
    off = _PI_2 if red else 0.0
    off = _PI - off if c < 0.0 else off
    return num / den, off


@nb.njit(cache=True, inline="always", error_model="numpy")
def angle_finish(u, off, c):
    """:func:`angle`'s second half: the polynomial. Apart, the two can run as a software
    pipeline (the division of one entry beside the polynomial of an earlier one)."""
    z = u * u
    p = _reduced(z)
    sgn = -2.0 if c < 0.0 else 2.0
    return off + sgn * (u + u * z * p)

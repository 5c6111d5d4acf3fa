"""Finite-width (1/n) corrections of MLPs: the NLO kernel K1 and the four-point vertex V.

Conventions (docs/finite_width.md). ``MLP(depth=L)`` with every hidden layer of width n;
pre-activations of layer l are z^l (l = 1..L hidden, l = L + 1 the scalar readout). The
*stochastic metric* of layer l + 1 is

    Ghat^{l+1}_ab = b_l + (w_l / n) sum_i phi(z^l_{i;a}) phi(z^l_{i;b}),   Ghat^1 = w_0 x_a.x_b / d + b_0,

with (w_l, b_l) = (weight_var, bias_var) of Dense layer l (0-based; Roberts, Yaida & Hanin
2022, "The Principles of Deep Learning Theory" (PDLT), write C_W = w_l, C_b = b_l). Given
Ghat^l, the n neurons of layer l are iid N(0, Ghat^l), and the readout is N(0, Ghat^{L+1}):
Ghat^{L+1} is exactly the readout-integrated empirical NNGP of one network that
``limitlab.verify.montecarlo.sample_kernels`` returns. Over random networks

    E[Ghat^l_ab]                   = K^l_ab + K1^l_ab / n + O(1/n^2),
    n Cov[Ghat^l_ab, Ghat^l_cd]    = V^l_(ab)(cd) + O(1/n),

K^l the limiting NNGP. The recursions (PDLT eqs. (4.90) for V and (4.115)/(4.118) for the
NLO metric K1, all widths equal; re-derived in docs/finite_width.md by the law of total
covariance and a second-order expansion of <phi_a phi_b>_G about G = K):

    V^{l+1}_(ab)(cd) = w^2 [<phi_a phi_b phi_c phi_d>_K - <phi_a phi_b>_K <phi_c phi_d>_K]
                       + w^2 sum_{e, g} d<phi_a phi_b>/dK_e  d<phi_c phi_d>/dK_g  V^l_(e)(g),
    K1^{l+1}_ab      = w [ sum_e d<phi_a phi_b>/dK_e K1^l_e + 1/2 sum_{e, g} d2<phi_a phi_b>/dK_e dK_g V^l_(e)(g) ],

sums over the independent entries e in {(aa), (bb), (ab)}, g in {(cc), (dd), (cd)};
K1^1 = 0 and V^1 = 0. The same forward pass serves both parametrizations, so these NNGP
quantities are the same for ``parametrization="ntk"`` and ``"standard"``.

The NTK (``parametrization="ntk"``, one input; PDLT ch. 8): per layer Theta (the limit),
Theta1 with E[Thetahat_ii] = Theta + Theta1 / n, and the fluctuation tensors A, B, D, F
(n Var[Thetahat_ii] -> A + 2 B), by :func:`_ntk_step`; the recursion and its derivation (law of
total covariance on the conditional NTK Ghat + (C_W/n) tr M) are in docs/finite_width.md.

Numerics (:mod:`limitlab.numerics.gaussian_moments`): one and two inputs by Mehler series of
the engine's Hermite coefficients (:func:`limitlab.numerics.gaussian.hermite_coefficients`,
interpolated in log q), whose covariance derivatives are shifted series of the same tables;
pairs too close to parallel for the series, and three or four inputs, by nested quadrature
with score-function derivatives (no derivatives of phi, so kinks are exact). The output's connected four-point function
is exact in the readout: z | Ghat ~ N(0, Ghat), so
E[z_a z_b z_c z_d]_conn = (V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)) / n + O(1/n^2).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import numba as nb
import numpy as np
import sympy as sp

from limitlab.numerics import gaussian, gaussian_moments
from limitlab.numerics import validation as validate
from limitlab.theory.kernels.mlp import MLP, _check_inputs

__all__ = ["finite_width", "FiniteWidth", "FiniteWidthLayer", "single_input_recursion", "single_input_closed_form",
           "MAX_FULL_INPUTS"]

# the full four-point vertex takes one r-dimensional quadrature per set of r distinct inputs,
# r <= 4 (its cost grows steeply with r: docs/finite_width.md has the figures): by default it is
# computed for up to three inputs, beyond that only K1 and the two-input blocks of V
MAX_FULL_INPUTS = 3
# inputs whose correlation at some layer is within this of +-1 have no finite score weights
# (the covariance derivatives of <phi_a phi_b> are singular there for kinked activations)
RHO_MAX = 1.0 - 1e-6


@dataclass(frozen=True)
class FiniteWidthLayer:
    """The finite-width quantities of the pre-activations of one layer (1-based; L + 1: the output)."""

    layer: int
    nngp: np.ndarray  # K^l (N, N)
    nngp_correction: np.ndarray  # K1^l (N, N)
    four_point: Optional[np.ndarray]  # V^l (N, N, N, N), or None when not computed
    # the NTK's single-input quantities (one value per input; None in the standard parametrization):
    # Theta^l_aa, Theta1^l_aa, and n Var[Thetahat^l_{ii;aa}] = A + 2 B (module docstring)
    ntk_diag: Optional[np.ndarray] = None
    ntk_correction_diag: Optional[np.ndarray] = None
    ntk_variance_diag: Optional[np.ndarray] = None
    ntk_tensors: Optional[dict] = None  # {"A", "B", "D", "F"}: (N,) each, single input


@dataclass(frozen=True)
class FiniteWidth:
    """``finite_width(net, X)``: K, K1 and V at the output and per layer (module docstring).

    ``layers[l - 1]`` holds layer l's pre-activations (l = 1..depth + 1); the top-level
    fields are those of the output (``layers[-1]``).
    """

    depth: int
    nngp: np.ndarray
    nngp_correction: np.ndarray
    four_point: Optional[np.ndarray]
    layers: tuple
    # the two-input blocks of V at the output: four_point_pairs[e, g, a, b] = V_(e)(g) for e, g in
    # ((aa), (bb), (ab)) -- all that K1 needs, computed even when the full V is not
    four_point_pairs: np.ndarray = None
    # the NTK at the output, single input (one value per input; None in the standard parametrization)
    ntk_diag: Optional[np.ndarray] = None
    ntk_correction_diag: Optional[np.ndarray] = None
    ntk_variance_diag: Optional[np.ndarray] = None

    def depth_to_width(self, width) -> float:
        """L / n, the ratio that controls the corrections (PDLT ch. 5)."""
        return self.depth / _width(width)

    def expected_nngp(self, width) -> np.ndarray:
        """E[Ghat] = K + K1 / n to order 1/n."""
        return self.nngp + self.nngp_correction / _width(width)

    def nngp_covariance(self, width) -> np.ndarray:
        """Cov[Ghat_ab, Ghat_cd] = V_(ab)(cd) / n to leading order."""
        return self._need_v() / _width(width)

    def connected_four_point(self, width=None) -> np.ndarray:
        """The output's connected four-point function: (V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)) / n
        (times n when ``width`` is None)."""
        V = self._need_v()
        out = V + V.transpose(0, 2, 1, 3) + V.transpose(0, 3, 2, 1)
        return out if width is None else out / _width(width)

    def excess_kurtosis(self, width=None) -> np.ndarray:
        """Per input, E[z^4] / E[z^2]^2 - 3 = 3 V_(aa)(aa) / (n K_aa^2) at order 1/n (times n when
        ``width`` is None)."""
        V = np.diagonal(self.four_point_pairs[0, 0])
        k = 3 * V / np.diagonal(self.nngp) ** 2
        return k if width is None else k / _width(width)

    def expected_ntk_diag(self, width) -> np.ndarray:
        """E[Thetahat_aa] = Theta_aa + Theta1_aa / n to order 1/n (per input)."""
        return self._need_ntk("expected_ntk_diag")[0] + self.ntk_correction_diag / _width(width)

    def ntk_variance(self, width) -> np.ndarray:
        """Var[Thetahat_aa] = (A + 2 B)_aa / n to leading order (per input)."""
        return self._need_ntk("ntk_variance")[1] / _width(width)

    def _need_ntk(self, what):
        if self.ntk_diag is None:
            raise ValueError(f"{what}: the NTK's 1/n quantities are computed for parametrization='ntk' only")
        return self.ntk_diag, self.ntk_variance_diag

    def _need_v(self):
        if self.four_point is None:
            raise ValueError(f"four_point: not computed for {self.nngp.shape[0]} inputs (more than "
                             f"MAX_FULL_INPUTS = {MAX_FULL_INPUTS}); pass four_point=True to compute it")
        return self.four_point


def _width(width) -> float:
    return validate.real(width, "width", at_least=1, finite=False)  # inf: the limit itself


# --------------------------------------------------------------------------------------
# one layer of the recursion
# --------------------------------------------------------------------------------------

_DIRECTIONS = [np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0]]),
               np.array([[0.0, 1.0], [1.0, 0.0]])]  # K_aa, K_bb, K_ab


def _two_input_moments(act, K):
    """Every one- and two-input quantity of a layer: M2 = <phi_a phi_b>, its derivatives D (3, N, N)
    in (K_aa, K_bb, K_ab) and H (3, 3, N, N), P4 (3, N, N) = (<phi_a^2 phi_b^2>, <phi_a^3 phi_b>,
    <phi_a phi_b^3>), and <phi_a^4>. By Mehler series (``gaussian_moments.pair_series``); pairs
    too close to parallel for the series go to nested quadrature (:func:`_pair_moments`)."""
    N = K.shape[0]
    I, J = np.triu_indices(N, 1)
    S, (m2, d1, d2, m4) = _series(act, K)
    i = np.arange(N)
    M2 = np.diag(m2)
    M2[I, J] = M2[J, I] = S[:, 0]
    P4 = np.zeros((3, N, N))
    P4[:, i, i] = m4
    P4[0, I, J] = P4[0, J, I] = S[:, 1]
    P4[1, I, J], P4[2, I, J], P4[1, J, I], P4[2, J, I] = S[:, 2], S[:, 3], S[:, 3], S[:, 2]
    D = np.zeros((3, N, N))
    D[0, i, i] = d1
    # at (a, b): (d/dK_aa, d/dK_bb, d/dK_ab); at (b, a) the first two swap
    D[0, I, J], D[1, I, J], D[2, I, J] = S[:, 4], S[:, 5], S[:, 6]
    D[0, J, I], D[1, J, I], D[2, J, I] = S[:, 5], S[:, 4], S[:, 6]
    H = np.zeros((3, 3, N, N))
    H[0, 0, i, i] = d2
    for (e, f), col in (((0, 0), 7), ((1, 1), 8), ((0, 1), 9), ((0, 2), 10), ((1, 2), 11), ((2, 2), 12)):
        H[e, f, I, J] = H[f, e, I, J] = S[:, col]
        ee, ff = (1 - e if e < 2 else 2), (1 - f if f < 2 else 2)  # (a, b) -> (b, a): K_aa <-> K_bb
        H[ee, ff, J, I] = H[ff, ee, J, I] = S[:, col]
    return M2, D, H, P4, m4


def _series(act, K):
    """``gaussian_moments.pair_series`` over the pairs a < b (row-major), with the pairs it flags
    (too close to parallel for the series) integrated by :func:`_pair_moments`; and the one-input
    (E[phi^2], d/dq, d2/dq2, E[phi^4])."""
    N = K.shape[0]
    q = np.diagonal(K).copy()
    I, J = np.triu_indices(N, 1)
    _check_corr(K, I, J)
    S, bad, diag = gaussian_moments.pair_series(act.__call__, q, I, J, K[I, J], act.kinks)
    for p in np.nonzero(bad)[0]:
        v, g, h, s22, s31, s13 = _pair_moments(act, K, I[p], J[p])
        S[p] = [v, s22, s31, s13, g[0], g[1], g[2], h[0, 0], h[1, 1], h[0, 1], h[0, 2], h[1, 2], h[2, 2]]
    return S, diag


@nb.njit(parallel=True, cache=True)
def _block_step(S, I, J, m2, d1, d2, m4, K1, Vb, w, b, Kn, K1n, Vn):
    """One layer of the two-input block recursion (module docstring) from the series S (P, 13)
    of gaussian_moments.SERIES: Kn, K1n (N, N) and Vn (3, 3, N, N), Vn[e, g, a, b] = V_(e)(g)
    with e, g in ((aa), (bb), (ab))."""
    N = m2.shape[0]
    w2 = w * w
    for a in nb.prange(N):
        Kn[a, a] = w * m2[a] + b
        K1n[a, a] = w * (d1[a] * K1[a, a] + 0.5 * d2[a] * Vb[0, 0, a, a])
        v = w2 * (m4[a] - m2[a] * m2[a]) + w2 * d1[a] * d1[a] * Vb[0, 0, a, a]
        for e in range(3):
            for g in range(3):
                Vn[e, g, a, a] = v
    for p in nb.prange(I.shape[0]):
        a, bb = I[p], J[p]
        s = S[p]
        Kn[a, bb] = Kn[bb, a] = w * s[0] + b
        H = np.empty((3, 3))
        H[0, 0], H[1, 1], H[2, 2] = s[7], s[8], s[12]
        H[0, 1] = H[1, 0] = s[9]
        H[0, 2] = H[2, 0] = s[10]
        H[1, 2] = H[2, 1] = s[11]
        acc = 0.0
        for e in range(3):
            for g in range(3):
                acc += H[e, g] * Vb[e, g, a, bb]
        K1n[a, bb] = K1n[bb, a] = w * (s[4] * K1[a, a] + s[5] * K1[bb, bb] + s[6] * K1[a, bb] + 0.5 * acc)
        # per pair e of (a, b): <phi phi> and its derivative in (K_aa, K_bb, K_ab); powers of (a, b)
        Dm = np.zeros((3, 3))
        Dm[0, 0] = d1[a]
        Dm[1, 1] = d1[bb]
        Dm[2, 0], Dm[2, 1], Dm[2, 2] = s[4], s[5], s[6]
        m2e = (m2[a], m2[bb], s[0])
        pa = (2, 0, 1)
        for e in range(3):
            for g in range(3):
                k = pa[e] + pa[g]  # power of phi_a in <phi_e phi_g>; phi_b's is 4 - k
                A4 = m4[a] if k == 4 else (m4[bb] if k == 0 else (s[1] if k == 2 else (s[2] if k == 3 else s[3])))
                t = 0.0
                for x in range(3):
                    for y in range(3):
                        t += Dm[e, x] * Dm[g, y] * Vb[x, y, a, bb]
                val = w2 * (A4 - m2e[e] * m2e[g] + t)
                Vn[e, g, a, bb] = val
                # the (b, a) orientation: (aa) <-> (bb)
                es = 1 - e if e < 2 else 2
                gs = 1 - g if g < 2 else 2
                Vn[es, gs, bb, a] = val


def _pair_moments(act, K, a, b):
    """For inputs a != b at covariance K: <phi_a phi_b>, its first derivatives (aa, bb, ab) and
    second derivatives (3 x 3), and <phi_a^2 phi_b^2>, <phi_a^3 phi_b>, <phi_a phi_b^3>."""
    cov = np.array([[K[a, a], K[a, b]], [K[a, b], K[b, b]]])
    kinks = [act.kinks, act.kinks]
    z, xi, w = gaussian_moments.nested_nodes(cov, kinks)
    pa, pb = act(z[:, 0]), act(z[:, 1])
    F = pa * pb
    Fw = F * w
    g, h = gaussian_moments.score_derivatives(cov, xi, Fw, _DIRECTIONS)
    return (float(Fw.sum()), g, h,
            float((F * F) @ w), float((pa ** 3 * pb) @ w), float((pa * pb ** 3) @ w))


def _four_moments(act, K, N, P4):
    """M4[a, b, c, d] = <phi_a phi_b phi_c phi_d>_K for all index quadruples (symmetric): on one or
    two distinct inputs from the two-input moments P4 (so that the full V and its two-input blocks
    agree to rounding), on three or four by nested quadrature."""
    M4 = np.empty((N,) * 4)
    for ms in itertools.combinations_with_replacement(range(N), 4):
        idx = sorted(set(ms))
        powers = [ms.count(i) for i in idx]
        if len(idx) == 1:
            v = P4[0, idx[0], idx[0]]
        elif len(idx) == 2:
            v = P4[{(2, 2): 0, (3, 1): 1, (1, 3): 2}[tuple(powers)], idx[0], idx[1]]
        else:
            fs = [(lambda p: (lambda t: act(t) ** p))(p) for p in powers]
            v = gaussian_moments.product_expectation(fs, K[np.ix_(idx, idx)], [act.kinks] * len(idx))
        for perm in set(itertools.permutations(ms)):
            M4[perm] = v
    return M4


def _layer_step(act, w, b, K, K1, V, full):
    """(K, K1, V) of layer l -> layer l + 1 (module docstring). ``full``: V as (N,)*4 (einsum over
    arrays, small N); else V holds the two-input blocks (3, 3, N, N) of _pair_block, updated by the
    fused pass _block_step (the two are checked against each other in the tests)."""
    N = K.shape[0]
    if not full:
        # the two-input blocks only: one fused pass over the pairs (no (3, 3, N, N) temporaries)
        S, (m2, d1, d2, m4) = _series(act, K)
        Kn, K1n, Vn = np.empty((N, N)), np.empty((N, N)), np.empty((3, 3, N, N))
        I, J = np.triu_indices(N, 1)
        _block_step(S, I, J, m2, d1, d2, m4, K1, V, float(w), float(b), Kn, K1n, Vn)
        return Kn, K1n, Vn
    M2, D, H, P4, m4 = _two_input_moments(act, K)
    Kn = w * M2 + b
    # K1: first-order propagation of K1 plus the second-order response to V (two-input blocks only)
    Vb = _pair_block(V, N)
    K1n = w * (D[0] * np.diagonal(K1)[:, None] + D[1] * np.diagonal(K1)[None, :] + D[2] * K1
               + 0.5 * np.einsum("egab,egab->ab", H, Vb))
    M4 = _four_moments(act, K, N, P4)
    U = (np.einsum("cd,xyc->xycd", D[0], np.einsum("xycc->xyc", V))
         + np.einsum("cd,xyd->xycd", D[1], np.einsum("xycc->xyc", V)) + D[2][None, None] * V)
    Uaa = np.einsum("aacd->acd", U)
    T = D[0][:, :, None, None] * Uaa[:, None] + D[1][:, :, None, None] * Uaa[None, :] + D[2][:, :, None, None] * U
    Vn = w * w * (M4 - M2[:, :, None, None] * M2[None, None]) + w * w * T
    return Kn, K1n, Vn


def _ntk_step(act, w, b, K, K1, V, state):
    """One layer of the single-input NTK recursion (docs/finite_width.md, "The NTK"), per input:
    (Theta, Theta1, A, B, D, F) at layer l, with K, K1, V (the diagonal entries) at layer l, ->
    layer l + 1. Moments at K^l by :func:`gaussian_moments.one_input_derivatives`:
    g = <phi^2>, p = <phi'^2> (value and K-derivatives), <phi^4>, <phi'^4>, <phi^2 phi'^2>, <z phi phi'>."""
    Th, Th1, A, B, D, F = state
    out = np.empty((6, K.size))
    dphi = act.derivative
    fs = [lambda z: act(z) ** 2, lambda z: dphi(z) ** 2, lambda z: act(z) ** 4, lambda z: dphi(z) ** 4,
          lambda z: (act(z) * dphi(z)) ** 2, lambda z: z * act(z) * dphi(z)]
    for a in range(K.size):
        m = gaussian_moments.one_input_derivatives(fs, K[a], act.kinks)
        (g, g1, _), (p, p1, p2) = m[0], m[1]
        m4, q4, c22, e = m[2, 0], m[3, 0], m[4, 0], m[5, 0] / K[a]
        th, v, d = Th[a], V[a], D[a]
        Kn = w * g + b
        K1n = w * (g1 * K1[a] + 0.5 * m[0, 2] * v)
        Vn = w * w * (m4 - g * g) + (w * g1) ** 2 * v
        # Hhat = (w/n) sum_i phi'(z_i)^2 Thetahat_ii: its conditional mean w p(Ghat) Thetabar (+ 2 w Fhat p' / n)
        hh = w * w * (th * th * (q4 - p * p) + (p1 * th) ** 2 * v + 2 * p * p1 * th * d + p * p * A[a])
        Dn = Vn + w * w * (th * (c22 - g * p) + g1 * (p1 * th * v + p * d))
        out[:, a] = (Kn + w * p * th,
                     K1n + w * (p1 * th * K1[a] + p * Th1[a] + p1 * d + 0.5 * p2 * th * v + 2 * F[a] * p1),
                     Vn + 2 * (Dn - Vn) + hh,
                     w * w * (q4 * th * th + p * p * B[a]),
                     Dn,
                     w * w * (c22 * th + e * e * F[a]))
    return tuple(out)


def _pair_block(V, N):
    """Vb[e, g, a, b] = V_(e)(g) for e, g in {(aa), (bb), (ab)} of the pair (a, b), from the full V."""
    i = np.arange(N)
    A, B = np.meshgrid(i, i, indexing="ij")
    pairs = [(A, A), (B, B), (A, B)]
    out = np.empty((3, 3, N, N))
    for e, (p, q) in enumerate(pairs):
        for g, (r, s) in enumerate(pairs):
            out[e, g] = V[p, q, r, s]
    return out


def _check_corr(K, I, J):
    """Refuse pairs (I[p], J[p]) whose correlation is within 1 - RHO_MAX of +-1."""
    rho = K[I, J] / np.sqrt(K[I, I] * K[J, J])
    bad = np.nonzero(np.abs(rho) > RHO_MAX)[0]
    if bad.size:
        a, b, r = I[bad[0]], J[bad[0]], rho[bad[0]]
        raise ValueError(f"X: inputs {a} and {b} are (anti)parallel at some layer (correlation {r:.9f}); the 1/n "
                         "corrections are computed for distinct directions (merge repeated inputs)")


def finite_width(net: MLP, X, *, four_point: Optional[bool] = None) -> FiniteWidth:
    """K, K1 and V of an MLP on the rows of X, at the output and per layer (module docstring).

    ``four_point``: compute the full vertex V (N^4 entries); default: when N <= MAX_FULL_INPUTS.
    Without it, K1 is computed from the two-input blocks of V, which close under the
    recursion (V^{l+1} on inputs {a, b} needs V^l on {a, b} only); ``four_point`` is then None
    and single entries come from ``finite_width(net, X[[a, b, c, d]])``.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a limitlab.theory.kernels.MLP, got {type(net).__name__}")
    X = np.asarray(_check_inputs(X, "X"), dtype=float)
    N, d = X.shape
    if len(np.unique(X, axis=0)) < N:
        raise ValueError("X: repeated rows; the 1/n corrections are computed for distinct inputs (pass each once)")
    full = N <= MAX_FULL_INPUTS if four_point is None else bool(four_point)
    act = net.activation
    w, b = net._w, net._b
    K = w[0] * (X @ X.T) / d + b[0]
    K1 = np.zeros((N, N))
    V = np.zeros((N,) * 4) if full else np.zeros((3, 3, N, N))
    ntk = net.parametrization == "ntk"
    i = np.arange(N)
    # the NTK of layer 1 is deterministic: Thetahat^1_ij = delta_ij Ghat^1 (PDLT ch. 8)
    state = (np.diagonal(K).copy(), *np.zeros((5, N))) if ntk else None
    layers = [_layer(1, K, K1, V, full, state)]
    for l in range(net.depth):
        Kd, K1d, Vd = np.diagonal(K).copy(), np.diagonal(K1).copy(), (V[i, i, i, i] if full else V[0, 0, i, i])
        K, K1, V = _layer_step(act, w[l + 1], b[l + 1], K, K1, V, full)
        if ntk:
            state = _ntk_step(act, float(w[l + 1]), float(b[l + 1]), Kd, K1d, Vd, state)
        layers.append(_layer(l + 2, K, K1, V, full, state))
    top = layers[-1]
    return FiniteWidth(net.depth, K, K1, V if full else None, tuple(layers), _pair_block(V, N) if full else V,
                       top.ntk_diag, top.ntk_correction_diag, top.ntk_variance_diag)


def _layer(l, K, K1, V, full, state):
    if state is None:
        return FiniteWidthLayer(l, K, K1, V if full else None)
    Th, Th1, A, B, D, F = state
    return FiniteWidthLayer(l, K, K1, V if full else None, Th, Th1, A + 2 * B, dict(A=A, B=B, D=D, F=F))


# --------------------------------------------------------------------------------------
# symbolic: the single-input recursion and the closed forms
# --------------------------------------------------------------------------------------

def single_input_recursion(activation):
    """The one-input recursion as sympy (PDLT eqs. (4.90), (4.115) with one input):

        K' = C_W <phi^2>_K + C_b,
        V' = C_W^2 (<phi^4>_K - <phi^2>_K^2) + (C_W d<phi^2>_K/dK)^2 V,
        K1' = C_W (d<phi^2>_K/dK K1 + 1/2 d2<phi^2>_K/dK^2 V),

    with <phi^p>_K = E[phi(sqrt(K) z)^p] evaluated by sympy where it can (polynomials, ReLU),
    else left as the Gaussian integral. Returns (dict of the three right-hand sides, symbols
    (K, V, K1, C_W, C_b)).
    """
    from limitlab.theory import activations as _act

    act = _act.get(activation)
    K, V, K1 = sp.symbols("K V K1", positive=True)
    Cw, Cb = sp.symbols("C_W C_b", nonnegative=True)
    zz = sp.Symbol("z", real=True)
    dens = sp.exp(-zz ** 2 / 2) / sp.sqrt(2 * sp.pi)

    def moment(p):
        integrand = (act.expr.subs(_act.x, sp.sqrt(K) * zz)) ** p * dens
        if act.has_closed_form:
            val = sp.integrate(sp.piecewise_fold(integrand), (zz, -sp.oo, sp.oo))
            if not val.has(sp.Integral):
                return sp.simplify(val)
        return sp.Integral(integrand, (zz, -sp.oo, sp.oo))

    m2, m4 = moment(2), moment(4)
    rhs = {"K": Cw * m2 + Cb,
           "V": Cw ** 2 * (m4 - m2 ** 2) + (Cw * sp.diff(m2, K)) ** 2 * V,
           "K1": Cw * (sp.diff(m2, K) * K1 + sp.Rational(1, 2) * sp.diff(m2, K, 2) * V)}
    return rhs, (K, V, K1, Cw, Cb)


def single_input_closed_form(activation: str, depth, width=None):
    """Closed forms of the one-input output statistics without biases (any weight_var):

    * linear: V^{L+1} / K^2 = 2 L, K1 = 0; ReLU: V^{L+1} / K^2 = 5 L, K1 = 0 (PDLT eqs. (5.59)-(5.62)
      at criticality; the ratio does not depend on C_W since both sides scale alike);
    * exactly at width n (Hanin & Nica 2020, "Products of many large random matrices and gradients
      in deep neural networks"; here from E[Ghat'^2 | Ghat] = (C_W/n)^2 Ghat^2 (n m4 + n(n-1) m2^2)):
      E[Ghat^{L+1 2}] / E[Ghat^{L+1}]^2 = (1 + c / n)^L with c = 2 (linear), 5 (ReLU), so the
      output's excess kurtosis is 3 ((1 + c/n)^L - 1) ~ 3 c L / n.

    Returns a dict of sympy expressions in L (and n): 'V_over_K2', 'K1', 'kurtosis' (order 1/n),
    'kurtosis_exact' (finite n).
    """
    closed = {"linear": 2, "identity": 2, "relu": 5}  # the only activations with closed forms
    c = closed[validate.choice(str(activation).lower(), "activation", closed)]
    L, n = sp.symbols("L n", positive=True)
    out = {"V_over_K2": c * L, "K1": sp.Integer(0), "kurtosis": 3 * c * L / n,
           "kurtosis_exact": 3 * ((1 + sp.Integer(c) / n) ** L - 1)}
    subs = {L: depth} if width is None else {L: depth, n: width}
    return {k: v.subs(subs) for k, v in out.items()}

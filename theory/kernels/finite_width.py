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

The NTK (PDLT ch. 8; both parametrizations): per layer Theta (the limit), Theta1 with
E[Thetahat_ii] = Theta + Theta1 / n, and the fluctuation tensors A, B, D, F (n Var[Thetahat_ii]
-> A + 2 B): per input (:func:`_ntk_step`), per pair of inputs (:func:`_ntk_pair_step`), and
A, D, B on every index quadruple (:func:`_ntk_four_point_step`, ``ntk_four_point``); the
recursion and its derivation (law of total covariance on the conditional NTK Ghat + (C_W/n) tr M)
are in docs/finite_width.md. The dNTK and ddNTKs per input: :mod:`.dntk`.

Numerics (:mod:`limitlab.numerics.gaussian_moments`): one and two inputs by Mehler series of
the engine's Hermite coefficients (:func:`limitlab.numerics.gaussian.hermite_coefficients`,
interpolated in log q), whose covariance derivatives are shifted series of the same tables;
pairs too close to parallel for the series by nested quadrature with score-function
derivatives (no derivatives of phi, so kinks are exact); three or four inputs, for smooth
activations, by the two-block Hermite series (``gaussian_moments.series_products``: one table per
pair of inputs, a short series per set), and otherwise by nested quadrature whose innermost level
is a fitted Gaussian smoothing of phi (``gaussian_moments.power_expectations``). The output's connected four-point function
is exact in the readout: z | Ghat ~ N(0, Ghat), so
E[z_a z_b z_c z_d]_conn = (V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)) / n + O(1/n^2).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numba as nb
import numpy as np
import sympy as sp

from limitlab.numerics import gaussian, gaussian_moments
from limitlab.numerics import validation as validate
from limitlab.theory.kernels.dntk import COEFFICIENTS as DNTK_STATE, DNTK, dntk_layer_step
from limitlab.theory.kernels.mlp import MLP, _check_inputs

__all__ = ["finite_width", "FiniteWidth", "FiniteWidthLayer", "single_input_recursion", "single_input_closed_form",
           "MAX_FULL_INPUTS", "MAX_FULL_SMOOTH_INPUTS", "MAX_NTK_PAIR_INPUTS"]

# the full four-point vertex needs one Gaussian expectation per set of r = 3 or 4 distinct inputs
# (C(N, 4) sets of four). For a smooth activation the two-block Hermite series sums them all from one
# table per pair of inputs (N = 32, depth 10: ~2 s); a kinked one (ReLU, ...) takes a nested quadrature
# per set (seconds each: docs/finite_width.md has the figures). By default V is computed for up to
# MAX_FULL_SMOOTH_INPUTS inputs of a smooth activation and MAX_FULL_INPUTS of a kinked one; beyond,
# only K1 and the two-input blocks of V (four_point=True computes it for any N)
MAX_FULL_INPUTS = 3
MAX_FULL_SMOOTH_INPUTS = 16
# inputs whose correlation at some layer is within this of +-1 have no finite score weights
# (the covariance derivatives of <phi_a phi_b> are singular there for kinked activations)
RHO_MAX = 1.0 - 1e-6
# the NTK's pair quantities (Mehler series per pair and layer, nested quadrature for pairs too close to
# parallel, a Python loop over the pairs): by default computed for up to this many inputs (beyond it,
# the single-input ones only)
MAX_NTK_PAIR_INPUTS = 16
# the two-input series: Hermite table length and the bound on every remainder (gaussian_moments.pair_series)
_TERMS, _TOL = 256, 1e-13


@dataclass(frozen=True)
class FiniteWidthLayer:
    """The finite-width quantities of the pre-activations of one layer (1-based; L + 1: the output)."""

    layer: int
    nngp: np.ndarray  # K^l (N, N)
    nngp_correction: np.ndarray  # K1^l (N, N)
    four_point: Optional[np.ndarray]  # V^l (N, N, N, N), or None when not computed
    # the NTK's single-input quantities (one value per input; None in the standard parametrization
    # without a width): Theta^l_aa, Theta1^l_aa, and n Var[Thetahat^l_{ii;aa}] = A + 2 B (module docstring)
    ntk_diag: Optional[np.ndarray] = None
    ntk_correction_diag: Optional[np.ndarray] = None
    ntk_variance_diag: Optional[np.ndarray] = None
    ntk_tensors: Optional[dict] = None  # {"A", "B", "D", "F"}: (N,) each, single input
    # the NTK on all pairs (None when not computed: ``finite_width(..., ntk_pairs=False)``):
    # Theta^l, Theta1^l (N, N) and ntk_covariance_pairs[e, g, a, b] = n Cov[Thetahat_{ii;e}, Thetahat_{ii;g}]
    # with e, g in ((aa), (bb), (ab)) (one neuron; the diagonals are the *_diag fields)
    ntk: Optional[np.ndarray] = None
    ntk_correction: Optional[np.ndarray] = None
    ntk_covariance_pairs: Optional[np.ndarray] = None
    # {"A", "D": (3, 3, N, N), "B": (4, 4, N, N), "F": (3, 2, 2, N, N)}: _ntk_pair_step's state per pair
    ntk_pair_tensors: Optional[dict] = None
    # the dNTK's and ddNTKs' 1/n coefficients, one input at a time (NTK parametrization;
    # limitlab.theory.kernels.dntk, docs/dntk.md): {"P", "Q", "R", "U1", "U2", "U3"}, (N,) each
    dntk: Optional[dict] = None
    # the NTK's fluctuations on every index quadruple (with the full V; smooth activations):
    # ntk_four_point[a, b, c, d] = n Cov[Thetahat_{ii;ab}, Thetahat_{ii;cd}] of one neuron, and PDLT
    # ch. 8's A, D, B (N, N, N, N) in index form (docs/finite_width.md, "The NTK on every quadruple")
    ntk_four_point: Optional[np.ndarray] = None
    ntk_four_point_tensors: Optional[dict] = None


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
    # the NTK at the output, single input (one value per input; None in the standard parametrization
    # without a width)
    ntk_diag: Optional[np.ndarray] = None
    ntk_correction_diag: Optional[np.ndarray] = None
    ntk_variance_diag: Optional[np.ndarray] = None
    # the NTK at the output on all pairs (FiniteWidthLayer; None when not computed)
    ntk: Optional[np.ndarray] = None
    ntk_correction: Optional[np.ndarray] = None
    ntk_covariance_pairs: Optional[np.ndarray] = None
    # standard parametrization: the hidden width n the NTK quantities were computed at (they depend
    # on it: docs/finite_width.md); None in the ntk parametrization
    width: Optional[float] = None
    # the dNTK and ddNTKs per layer, one input at a time (``dntk.DNTK``; NTK parametrization only)
    dntk: Optional[DNTK] = None
    # n Cov[Thetahat_{ii;ab}, Thetahat_{ii;cd}] on every index quadruple at the output (FiniteWidthLayer)
    ntk_four_point: Optional[np.ndarray] = None

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
        th = self._need_ntk("expected_ntk_diag", width)
        return th + self.ntk_correction_diag / _width(width)

    def ntk_variance(self, width) -> np.ndarray:
        """Var[Thetahat_aa] = (A + 2 B)_aa / n to leading order (per input)."""
        self._need_ntk("ntk_variance", width)
        return self.ntk_variance_diag / _width(width)

    def expected_ntk(self, width) -> np.ndarray:
        """E[Thetahat_ab] = Theta_ab + Theta1_ab / n to order 1/n (N, N)."""
        self._need_ntk("expected_ntk", width, pairs=True)
        return self.ntk + self.ntk_correction / _width(width)

    def ntk_covariance(self, width) -> np.ndarray:
        """Cov[Thetahat_e, Thetahat_g] = ntk_covariance_pairs[e, g] / n to leading order (3, 3, N, N)."""
        self._need_ntk("ntk_covariance", width, pairs=True)
        return self.ntk_covariance_pairs / _width(width)

    def _need_ntk(self, what, width, pairs=False):
        if self.ntk_diag is None:
            raise ValueError(f"{what}: the NTK's 1/n quantities need parametrization='ntk', or 'standard' with "
                             "the MLP's width=n")
        if pairs and self.ntk is None:
            raise ValueError(f"{what}: the NTK's pair quantities were not computed; pass ntk_pairs=True")
        if self.width is not None and _width(width) != self.width:
            raise ValueError(f"width: the standard parametrization's NTK quantities were computed at the MLP's "
                             f"width {self.width:g}, got {width!r}")
        return self.ntk_diag

    def _need_v(self):
        if self.four_point is None:
            raise ValueError(f"four_point: not computed for {self.nngp.shape[0]} inputs (the default stops at "
                             f"MAX_FULL_SMOOTH_INPUTS = {MAX_FULL_SMOOTH_INPUTS} for smooth activations, "
                             f"MAX_FULL_INPUTS = {MAX_FULL_INPUTS} for kinked ones); pass four_point=True to "
                             "compute it")
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
    _check_corr(K)
    S, bad, diag = gaussian_moments.pair_series(act.__call__, q, I, J, K[I, J], act.kinks, _TERMS, _TOL)
    for p in np.nonzero(bad)[0]:
        v, g, h, s22, s31, s13 = _flagged_pair_moments(act, K, I[p], J[p])
        S[p] = [v, s22, s31, s13, g[0], g[1], g[2], h[0, 0], h[1, 1], h[0, 1], h[0, 2], h[1, 2], h[2, 2]]
    return S, diag


@nb.njit(cache=True)
def _pair_update(s, a, bb, m2, d1, d4, K1, Vb, w, b, Kn, K1n, Vn):
    """One pair a != b of the two-input block recursion (module docstring) from its 13 SERIES s
    (gaussian_moments.SERIES): Kn, K1n at (a, b), (b, a) and Vn[:, :, a, b], Vn[:, :, b, a]."""
    w2 = w * w
    Kn[a, bb] = Kn[bb, a] = w * s[0] + b
    acc = (s[7] * Vb[0, 0, a, bb] + s[8] * Vb[1, 1, a, bb] + s[12] * Vb[2, 2, a, bb]
           + s[9] * (Vb[0, 1, a, bb] + Vb[1, 0, a, bb]) + s[10] * (Vb[0, 2, a, bb] + Vb[2, 0, a, bb])
           + s[11] * (Vb[1, 2, a, bb] + Vb[2, 1, a, bb]))
    K1n[a, bb] = K1n[bb, a] = w * (s[4] * K1[a, a] + s[5] * K1[bb, bb] + s[6] * K1[a, bb] + 0.5 * acc)
    # per pair e of (a, b): the derivative of <phi phi> in (K_aa, K_bb, K_ab), contracted with
    # the V blocks: U[e, y] = sum_x D[e, x] Vb[x, y]; then T[e, g] = sum_y U[e, y] D[g, y]
    da, db = d1[a], d1[bb]
    m2e = (m2[a], m2[bb], s[0])
    pa = (2, 0, 1)
    U = ((da * Vb[0, 0, a, bb], da * Vb[0, 1, a, bb], da * Vb[0, 2, a, bb]),
         (db * Vb[1, 0, a, bb], db * Vb[1, 1, a, bb], db * Vb[1, 2, a, bb]),
         (s[4] * Vb[0, 0, a, bb] + s[5] * Vb[1, 0, a, bb] + s[6] * Vb[2, 0, a, bb],
          s[4] * Vb[0, 1, a, bb] + s[5] * Vb[1, 1, a, bb] + s[6] * Vb[2, 1, a, bb],
          s[4] * Vb[0, 2, a, bb] + s[5] * Vb[1, 2, a, bb] + s[6] * Vb[2, 2, a, bb]))
    for e in range(3):
        Ue = U[e]
        T = (Ue[0] * da, Ue[1] * db, Ue[0] * s[4] + Ue[1] * s[5] + Ue[2] * s[6])
        for g in range(3):
            k = pa[e] + pa[g]  # power of phi_a in <phi_e phi_g>; phi_b's is 4 - k
            A4 = d4[a] if k == 4 else (d4[bb] if k == 0 else (s[1] if k == 2 else (s[2] if k == 3 else s[3])))
            val = w2 * (A4 - m2e[e] * m2e[g] + T[g])
            Vn[e, g, a, bb] = val
            # the (b, a) orientation: (aa) <-> (bb)
            es = 1 - e if e < 2 else 2
            gs = 1 - g if g < 2 else 2
            Vn[es, gs, bb, a] = val


_TILE = 32  # pairs (a, b) in tiles of 32 x 32: the mirrored writes (b, a) stay in cache


@nb.njit(parallel=True, cache=True)
def _block_step(A, G, q, m2, d1, d2, m4, K, K1, Vb, w, b, tol, kmax, Kn, K1n, Vn, ok):
    """One layer of the two-input block recursion (module docstring), fused with the series:
    per pair, gaussian_moments._series_pair, then :func:`_pair_update`, so no (P, 13) array is
    formed. A (5, N, K), G (N, K): the tables of gaussian_moments.pair_tables. Vn[e, g, a, b] =
    V_(e)(g) with e, g in ((aa), (bb), (ab)). ok[a, b] (a < b) False: the series needs more than
    kmax terms (those pairs are left to the caller)."""
    N = m2.shape[0]
    w2 = w * w
    for a in nb.prange(N):
        Kn[a, a] = w * m2[a] + b
        K1n[a, a] = w * (d1[a] * K1[a, a] + 0.5 * d2[a] * Vb[0, 0, a, a])
        v = w2 * (m4[a] - m2[a] * m2[a]) + w2 * d1[a] * d1[a] * Vb[0, 0, a, a]
        for e in range(3):
            for g in range(3):
                Vn[e, g, a, a] = v
    nt = (N + _TILE - 1) // _TILE
    ntiles = nt * (nt + 1) // 2
    for t in nb.prange(ntiles):
        # tile t -> (ta, tb), tb >= ta, in row-major order over the upper triangle
        tt = np.int64(t)
        ta = np.int64(0)
        while tt >= nt - ta:
            tt -= nt - ta
            ta += 1
        tb = ta + tt
        s = np.empty(13)
        scratch = np.empty(kmax + 2)
        for a in range(ta * _TILE, min((ta + 1) * _TILE, N)):
            for c in range(max(tb * _TILE, a + 1), min((tb + 1) * _TILE, N)):
                ok[a, c] = gaussian_moments._series_pair(A, G, a, c, q[a], q[c], K[a, c] / math.sqrt(q[a] * q[c]),
                                                         tol, kmax, scratch, s)
                if ok[a, c]:
                    _pair_update(s, a, c, m2, d1, m4, K1, Vb, w, b, Kn, K1n, Vn)


@nb.njit(cache=True)
def _first_parallel(K, rho_max):
    """The first pair a < b (row-major) whose correlation exceeds rho_max in modulus: (a, b, rho), or (-1, -1, 0)."""
    N = K.shape[0]
    for a in range(N):
        for bb in range(a + 1, N):
            r = K[a, bb] / math.sqrt(K[a, a] * K[bb, bb])
            if abs(r) > rho_max:
                return a, bb, r
    return -1, -1, 0.0


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


def _flagged_pair_moments(act, K, a, b):
    """:func:`_pair_moments` for a pair the series flag (too close to parallel), ReLU's <phi phi> and
    its derivatives from the closed form (:func:`_relu_pair_nngp`)."""
    v, g, h, s22, s31, s13 = _pair_moments(act, K, a, b)
    if _is_relu(act):
        v, g, h = _relu_pair_nngp(K, a, b)
    return v, g, h, s22, s31, s13


def _four_moments(act, K, N, P4, max_quadrature=None):
    """M4[a, b, c, d] = <phi_a phi_b phi_c phi_d>_K for all index quadruples (symmetric): on one or
    two distinct inputs from the two-input moments P4 (so that the full V and its two-input blocks
    agree to rounding); on three or four, for a smooth activation, by the two-block Hermite series
    (``gaussian_moments.series_four_point``: one table per pair of inputs, no quadrature per set),
    and otherwise, or for a set the series cannot sum (near-parallel inputs), by
    ``gaussian_moments.power_expectations``, one call per set of distinct inputs (the three
    multisets on a set of three share its quadrature)."""
    M4 = np.empty((N,) * 4)
    two = [(a, a, a, a) for a in range(N)] + [m for a, b in itertools.combinations(range(N), 2)
                                              for m in ((a, a, b, b), (a, a, a, b), (a, b, b, b))]
    vals = [P4[0, a, a] for a in range(N)] + [P4[k, a, b] for a, b in itertools.combinations(range(N), 2)
                                              for k in range(3)]
    _scatter_symmetric(M4, np.array(two, dtype=np.int64), np.array(vals))
    if N < 3:
        return M4
    if act.kinks:
        sets = np.array([m for m in itertools.combinations_with_replacement(range(N), 4) if len(set(m)) > 2],
                        dtype=np.int64)
        v, ok = np.zeros(len(sets)), np.zeros(len(sets), dtype=bool)
    else:
        sets, v, ok = gaussian_moments.series_four_point(act.__call__, K)
    todo = {}
    for t in np.nonzero(~ok)[0]:
        ms = tuple(sets[t])
        todo.setdefault(tuple(sorted(set(ms))), []).append(t)
    if max_quadrature is not None and len(todo) > max_quadrature:
        raise _QuadratureTooLong(len(todo))
    for idx, ts in todo.items():
        powers = [[list(sets[t]).count(i) for i in idx] for t in ts]
        v[ts] = gaussian_moments.power_expectations(act.__call__, K[np.ix_(idx, idx)], powers, act.kinks)
    _scatter_symmetric(M4, sets, v)
    return M4


_PERMUTATIONS = np.array(list(itertools.permutations(range(4))), dtype=np.int64)
# the default full V gives way to the two-input blocks (with a warning) when a layer would need more
# sets of inputs than this by nested quadrature (0.1-1 s each): inputs in d <= 2 (every set of four is
# linearly dependent at layer 1), near-duplicates, kinked activations
_MAX_DEFAULT_QUADRATURE = 8


class _QuadratureTooLong(Exception):
    pass


@nb.njit(parallel=True, cache=True)
def _scatter_symmetric(M4, sets, vals):
    """M4[any permutation of sets[t]] = vals[t] (distinct multisets: no two write one entry)."""
    for t in nb.prange(sets.shape[0]):
        for p in range(24):
            M4[sets[t, _PERMUTATIONS[p, 0]], sets[t, _PERMUTATIONS[p, 1]], sets[t, _PERMUTATIONS[p, 2]],
               sets[t, _PERMUTATIONS[p, 3]]] = vals[t]


def _layer_step(act, w, b, K, K1, V, full, max_quadrature=None):
    """(K, K1, V) of layer l -> layer l + 1 (module docstring). ``full``: V as (N,)*4 (einsum over
    arrays, small N); else V holds the two-input blocks (3, 3, N, N) of _pair_block, updated by the
    fused pass _block_step (the two are checked against each other in the tests)."""
    N = K.shape[0]
    if not full:
        # the two-input blocks only: one fused pass over the pairs (no (3, 3, N, N) temporaries)
        _check_corr(K)
        q = np.diagonal(K).copy()
        A, G, (m2, d1, d2, m4) = gaussian_moments.pair_tables(act.__call__, q, act.kinks, _TERMS)
        Kn, K1n, Vn = np.empty((N, N)), np.empty((N, N)), np.empty((3, 3, N, N))
        ok = np.ones((N, N), dtype=np.bool_)
        w, b = float(w), float(b)
        _block_step(A, G, q, m2, d1, d2, m4,
                    K, K1, V, w, b, _TOL, _TERMS - 4, Kn, K1n, Vn, ok)
        for a, c in zip(*np.nonzero(~ok)):  # too close to parallel for the series: nested quadrature
            v, g, h, s22, s31, s13 = _flagged_pair_moments(act, K, a, c)
            s = np.array([v, s22, s31, s13, g[0], g[1], g[2], h[0, 0], h[1, 1], h[0, 1], h[0, 2], h[1, 2], h[2, 2]])
            _pair_update(s, a, c, m2, d1, m4, K1, V, w, b, Kn, K1n, Vn)
        return Kn, K1n, Vn
    M2, D, H, P4, m4 = _two_input_moments(act, K)
    Kn = w * M2 + b
    # K1: first-order propagation of K1 plus the second-order response to V (two-input blocks only)
    Vb = _pair_block(V, N)
    K1n = w * (D[0] * np.diagonal(K1)[:, None] + D[1] * np.diagonal(K1)[None, :] + D[2] * K1
               + 0.5 * np.einsum("egab,egab->ab", H, Vb))
    M4 = _four_moments(act, K, N, P4, max_quadrature)
    Vn = np.empty((N,) * 4)
    _full_vertex_step(D, V, M4, M2, float(w), np.empty((N,) * 4), Vn)
    return Kn, K1n, Vn


@nb.njit(parallel=True, cache=True)
def _full_vertex_step(D, V, M4, M2, w, U, Vn):
    """Vn = w^2 (M4 - M2 (x) M2) + w^2 T, T the vertex V carried through the covariance
    derivatives D of <phi phi> on both pairs (module docstring):
    U[x, y, c, d] = D0[c, d] V[x, y, c, c] + D1[c, d] V[x, y, d, d] + D2[c, d] V[x, y, c, d],
    T[a, b, c, d] = D0[a, b] U[a, a, c, d] + D1[a, b] U[b, b, c, d] + D2[a, b] U[a, b, c, d]."""
    N = V.shape[0]
    for x in nb.prange(N):
        for y in range(N):
            for c in range(N):
                vc = V[x, y, c, c]
                for d in range(N):
                    U[x, y, c, d] = D[0, c, d] * vc + D[1, c, d] * V[x, y, d, d] + D[2, c, d] * V[x, y, c, d]
    w2 = w * w
    for a in nb.prange(N):
        for b in range(N):
            d0, d1, d2, m = D[0, a, b], D[1, a, b], D[2, a, b], M2[a, b]
            for c in range(N):
                for d in range(N):
                    Vn[a, b, c, d] = w2 * (M4[a, b, c, d] - m * M2[c, d]
                                           + d0 * U[a, a, c, d] + d1 * U[b, b, c, d] + d2 * U[a, b, c, d])


def _one_input_ntk_moments(act, K):
    """Per input (K: the variances, (N,)): (N, 6, 3) rows <phi^2>, <phi'^2> (value, d/dK, d2/dK2),
    <phi^4>, <phi'^4>, <phi^2 phi'^2>, <z phi phi'> (values in column 0), by
    :func:`gaussian_moments.one_input_derivatives_many`."""
    dphi = act.derivative
    fs = [lambda z: act(z) ** 2, lambda z: dphi(z) ** 2, lambda z: act(z) ** 4, lambda z: dphi(z) ** 4,
          lambda z: (act(z) * dphi(z)) ** 2, lambda z: z * act(z) * dphi(z)]
    return gaussian_moments.one_input_derivatives_many(fs, K, act.kinks)


def _ntk_step(m1, w, b, K, K1, V, state, lam=1.0, mu=0.0):
    """One layer of the single-input NTK recursion (docs/finite_width.md, "The NTK"), per input:
    (Theta, Theta1, A, B, D, F) at layer l, with K, K1, V (the diagonal entries) at layer l, ->
    layer l + 1. m1: :func:`_one_input_ntk_moments` at K^l (g = <phi^2>, p = <phi'^2> with their
    K-derivatives, <phi^4>, <phi'^4>, <phi^2 phi'^2>, <z phi phi'>). The layer's own term of the NTK
    is lam Ghat + mu (ntk parametrization: lam = 1, mu = 0; standard: :func:`_layer_weights`)."""
    Th, Th1, A, B, D, F = state
    out = np.empty((6, K.size))
    for a in range(K.size):
        m = m1[a]
        (g, g1, _), (p, p1, p2) = m[0], m[1]
        m4, q4, c22, e = m[2, 0], m[3, 0], m[4, 0], m[5, 0] / K[a]
        th, v, d = Th[a], V[a], D[a]
        Kn = w * g + b
        K1n = w * (g1 * K1[a] + 0.5 * m[0, 2] * v)
        Vn = w * w * (m4 - g * g) + (w * g1) ** 2 * v
        # Hhat = (w/n) sum_i phi'(z_i)^2 Thetahat_ii: its conditional mean w p(Ghat) Thetabar (+ 2 w Fhat p' / n)
        hh = w * w * (th * th * (q4 - p * p) + (p1 * th) ** 2 * v + 2 * p * p1 * th * d + p * p * A[a])
        X = w * w * (th * (c22 - g * p) + g1 * (p1 * th * v + p * d))  # n Cov[Hhat, Ghat]
        out[:, a] = (lam * Kn + mu + w * p * th,
                     lam * K1n + w * (p1 * th * K1[a] + p * Th1[a] + p1 * d + 0.5 * p2 * th * v + 2 * F[a] * p1),
                     lam * lam * Vn + 2 * lam * X + hh,
                     w * w * (q4 * th * th + p * p * B[a]),
                     lam * Vn + X,
                     w * w * (c22 * th + e * e * F[a]))
    return tuple(out)


# the NTK's pair recursion (docs/finite_width.md, "The NTK"): per pair (a, b) the symmetric entries
# E3 = ((aa), (bb), (ab)) (as in four_point_pairs) and, for the off-diagonal neuron pairs, the ordered
# entries O4 = ((aa), (bb), (ab), (ba)); local input 0 is a, 1 is b
_E3 = ((0, 0), (1, 1), (0, 1))
_O4 = ((0, 0), (1, 1), (0, 1), (1, 0))
_O4_T = (0, 1, 3, 2)  # (ab) <-> (ba)
_E3_OF = {(0, 0): 0, (1, 1): 1, (0, 1): 2, (1, 0): 2}  # an ordered pair's symmetric entry
_COUNT_A = (2, 0, 1, 1)  # powers of input a in the O4 entries


def _one_input_entries(ma, mb):
    """<phi phi> and <phi' phi'> on the pair's (aa), (bb) entries with their covariance derivatives,
    from the one-input moments of inputs a and b (:func:`_one_input_ntk_moments`); the (ab) slots
    are left to the caller: (Gp (3,), dGp (3, 3), Pp (3,), dP (3, 3), d2P (3, 3, 3))."""
    Gp, dGp = np.zeros(3), np.zeros((3, 3))
    Pp, dP, d2P = np.zeros(3), np.zeros((3, 3)), np.zeros((3, 3, 3))
    for e, one in enumerate((ma, mb)):
        Gp[e], dGp[e, e] = one[0, 0], one[0, 1]
        Pp[e], dP[e, e], d2P[e, e, e] = one[1]
    return Gp, dGp, Pp, dP, d2P


def _pair_ntk_moments(act, K, m1, a, b):
    """The two-input moments of the NTK pair recursion at covariance K (N, N) for inputs a != b; the
    one-input ones (m1: :func:`_one_input_ntk_moments`) where a quantity depends on one input only,
    so that the pair's (aa) entries follow the single-input recursion exactly. Nested quadrature
    (``gaussian_moments.nested_nodes``) with score-function covariance derivatives: no derivative of
    phi' is taken, so ReLU's step is exact. Returns a dict of arrays (docstring of _ntk_pair_step)."""
    cov = np.array([[K[a, a], K[a, b]], [K[a, b], K[b, b]]])
    z, xi, wts = gaussian_moments.nested_nodes(cov, [act.kinks, act.kinks])
    ph = (act(z[:, 0]), act(z[:, 1]))
    dp = (act.derivative(z[:, 0]), act.derivative(z[:, 1]))
    ma, mb = m1[a], m1[b]
    one = (ma, mb)
    # <phi phi> on E3 and its first derivatives in (K_aa, K_bb, K_ab)
    Gp, dGp, Pp, dP, d2P = _one_input_entries(ma, mb)
    F = ph[0] * ph[1] * wts
    g, _ = gaussian_moments.score_derivatives(cov, xi, F, _DIRECTIONS)
    Gp[2], dGp[2] = F.sum(), g
    F = dp[0] * dp[1] * wts
    g, h = gaussian_moments.score_derivatives(cov, xi, F, _DIRECTIONS)
    Pp[2], dP[2], d2P[2] = F.sum(), g, h
    # Mdp[e, g] = <phi'_e1 phi'_e2 phi_g1 phi_g2>, Q[k] = <phi'_a^k phi'_b^(4 - k)>
    Mdp = np.empty((3, 3))
    for e, (e1, e2) in enumerate(_E3):
        for gg, (g1, g2) in enumerate(_E3):
            if e == gg and e < 2:
                Mdp[e, gg] = one[e][4, 0]
            else:
                Mdp[e, gg] = (dp[e1] * dp[e2] * ph[g1] * ph[g2]) @ wts
    Q = np.array([mb[3, 0], (dp[0] * dp[1] ** 3) @ wts, (dp[0] ** 2 * dp[1] ** 2) @ wts,
                  (dp[0] ** 3 * dp[1]) @ wts, ma[3, 0]])
    # R[c, e1] = E[phi_c phi'_e1 K^-1 z] (= E[grad(phi_c phi'_e1)] by Stein): on one input <z phi phi'> / K
    R = np.zeros((2, 2, 2))
    Ki = np.linalg.inv(cov)
    for c in range(2):
        R[c, c, c] = one[c][5, 0] / cov[c, c]
        h2 = ph[c] * dp[1 - c] * wts
        R[c, 1 - c] = Ki @ (z.T @ h2)
    return dict(Gp=Gp, dGp=dGp, P=Pp, dP=dP, d2P=d2P, Mdp=Mdp, Q=Q, R=R)


# the functions of the NTK's pair moments (Hermite tables per input): phi, phi', phi^2, phi'^2, phi phi',
# phi'^2 phi, phi' phi^2, phi'^3, z phi, z phi'; and the pairs of them whose two-input expectations
# _pair_ntk_moments computes (Mdp's entries, Q_1..3, R's four)
_NTK_PRODUCTS = ((0, 0), (1, 1), (3, 2), (5, 0), (2, 3), (0, 5), (6, 1), (1, 6), (4, 4), (1, 7), (3, 3), (7, 1),
                 (8, 1), (0, 9), (9, 0), (1, 8))
_MDP_SLOTS = {(0, 1): 2, (0, 2): 3, (1, 0): 4, (1, 2): 5, (2, 0): 6, (2, 1): 7, (2, 2): 8}


def _is_relu(act) -> bool:
    return act.name == "relu" and tuple(act.params) == (0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _relu_pair_maps():
    """ReLU's <phi_a phi_b> (arc-cosine, Cho & Saul 2009) and <phi'_a phi'_b> = (pi - theta) / 2pi as
    functions of (q1, q2, c), each with its first and second derivatives, by sympy:
    (G, dG, d2G, P, dP, d2P)."""
    q1, q2, c = sp.symbols("q1 q2 c", positive=True)
    th = sp.acos(c / sp.sqrt(q1 * q2))
    G = (sp.sqrt(q1 * q2 - c * c) + (sp.pi - th) * c) / (2 * sp.pi)
    P = (sp.pi - th) / (2 * sp.pi)
    v = (q1, q2, c)
    f = lambda e: sp.lambdify(v, e, "numpy")  # noqa: E731
    return tuple(out for e in (G, P) for out in (f(e), [f(sp.diff(e, x)) for x in v],
                                                  [[f(sp.diff(e, x, y)) for y in v] for x in v]))


def _relu_pair_nngp(K, a, b):
    """ReLU's <phi_a phi_b>, its first and second derivatives in (K_aa, K_bb, K_ab) in closed form, for
    the pairs too close to parallel for the series: the nested quadrature's wedge there is thin (at
    correlation -0.99986 it was off by 9e-9 of a value 2.5e-7; the closed form matches 40-digit
    mpmath)."""
    G, dG, d2G, *_ = _relu_pair_maps()
    x = (K[a, a], K[b, b], K[a, b])
    return (float(G(*x)), np.array([float(f(*x)) for f in dG]),
            np.array([[float(f(*x)) for f in row] for row in d2G]))


def _relu_pair_ntk_moments(K, m1, a, b):
    """:func:`_pair_ntk_moments` for ReLU in closed form (for the pairs whose step tables converge too
    slowly for the series): with theta the angle of (a, b), <1_a 1_b> = (pi - theta) / 2pi,
    <1_a 1_b z_a z_b> = <relu_a relu_b>, <1_a 1_b z_a^2> = q_a (pi - theta + sin theta cos theta) / 2pi
    (polar coordinates over the wedge z_a, z_b > 0), and powers of the step are the step."""
    G, dG, _, P, dP1, d2P1 = _relu_pair_maps()
    x = (K[a, a], K[b, b], K[a, b])
    rho = x[2] / math.sqrt(x[0] * x[1])
    t = math.acos(rho)
    g, p = float(G(*x)), float(P(*x))
    both = np.array([[x[0], g], [g, x[1]]])  # E[1_a 1_b z z^T]
    both[0, 0] = x[0] * (math.pi - t + rho * math.sin(t)) / (2 * math.pi)
    both[1, 1] = x[1] * (math.pi - t + rho * math.sin(t)) / (2 * math.pi)
    ma, mb = m1[a], m1[b]
    one = (ma, mb)
    Gp, dGp, Pp, dP, d2P = _one_input_entries(ma, mb)
    Gp[2], Pp[2] = g, p
    dGp[2] = [float(f(*x)) for f in dG]
    dP[2] = [float(f(*x)) for f in dP1]
    d2P[2] = [[float(f(*x)) for f in row] for row in d2P1]
    Mdp = np.array([[ma[4, 0], both[1, 1], g], [both[0, 0], mb[4, 0], g], [both[0, 0], both[1, 1], g]])
    Q = np.array([mb[3, 0], p, p, p, ma[3, 0]])
    cov = np.array([[x[0], x[2]], [x[2], x[1]]])
    Ki = np.linalg.inv(cov)
    R = np.zeros((2, 2, 2))
    for c in range(2):
        R[c, c, c] = one[c][5, 0] / cov[c, c]
        R[c, 1 - c] = Ki @ both[:, c]
    return dict(Gp=Gp, dGp=dGp, P=Pp, dP=dP, d2P=d2P, Mdp=Mdp, Q=Q, R=R)


def _pair_ntk_moments_all(act, K, m1, I, J):
    """:func:`_pair_ntk_moments` for the pairs (I[p], J[p]) at once, by Mehler series
    (``gaussian_moments.product_series``: one Hermite table per function and input, covariance
    derivatives by the heat-equation shifts); pairs too close to parallel for the series in closed
    form for ReLU (:func:`_relu_pair_ntk_moments`), by nested quadrature otherwise. Returns a list
    of the moment dicts."""
    dphi = act.derivative
    fs = (act.__call__, dphi, lambda t: act(t) ** 2, lambda t: dphi(t) ** 2, lambda t: act(t) * dphi(t),
          lambda t: dphi(t) ** 2 * act(t), lambda t: dphi(t) * act(t) ** 2, lambda t: dphi(t) ** 3,
          lambda t: t * act(t), lambda t: t * dphi(t))
    q = np.diagonal(K).copy()
    A, R = gaussian_moments.product_tables(fs, q, act.kinks)
    vals, d1, d2, bad = gaussian_moments.product_series(A, R, q, I, J, K[I, J], _NTK_PRODUCTS,
                                                        first=((0, 0), (1, 1)), second=((1, 1),))
    relu = _is_relu(act)
    out = []
    for p, (a, b) in enumerate(zip(I, J)):
        if bad[p]:
            out.append(_relu_pair_ntk_moments(K, m1, a, b) if relu else _pair_ntk_moments(act, K, m1, a, b))
            continue
        v = vals[p]
        ma, mb = m1[a], m1[b]
        one = (ma, mb)
        Gp, dGp, Pp, dP, d2P = _one_input_entries(ma, mb)
        Gp[2], Pp[2] = v[0], v[1]
        dGp[2], dP[2], d2P[2] = d1[p, 0], d1[p, 1], d2[p, 0]
        Mdp = np.empty((3, 3))
        Mdp[0, 0], Mdp[1, 1] = ma[4, 0], mb[4, 0]
        for (e, g), s in _MDP_SLOTS.items():
            Mdp[e, g] = v[s]
        Q = np.array([mb[3, 0], v[9], v[10], v[11], ma[3, 0]])
        Rm = np.zeros((2, 2, 2))
        cov = np.array([[K[a, a], K[a, b]], [K[a, b], K[b, b]]])
        Ki = np.linalg.inv(cov)
        for c in range(2):
            Rm[c, c, c] = one[c][5, 0] / cov[c, c]
        Rm[0, 1] = Ki @ v[12:14]  # E[z phi_a phi'_b]
        Rm[1, 0] = Ki @ v[[14, 15]]  # E[z phi_b phi'_a]
        out.append(dict(Gp=Gp, dGp=dGp, P=Pp, dP=dP, d2P=d2P, Mdp=Mdp, Q=Q, R=Rm))
    return out


def _ntk_pair_step(m, w, lam, mu, K1, V, Kn, K1n, Vn, st):
    """One layer of the NTK pair recursion (docs/finite_width.md, "The NTK") for one pair (a, b):
    the state st at layer l -> layer l + 1. m: :func:`_pair_ntk_moments` at K^l; K1 (3,), V (3, 3):
    K1^l and V^l on E3; Kn, K1n (3,), Vn (3, 3) the same at layer l + 1. The state, over E3
    (Thetahat's entries (aa), (bb), (ab)) and O4 (ordered: (aa), (bb), (ab), (ba)):
    Th, Th1 (3,): Theta, Theta1; A (3, 3): n Cov[Thetabar_e, Thetabar_g]; D (3, 3):
    n Cov[Thetabar_e, Ghat_g]; B (4, 4): n E[Thetahat_{12;e} Thetahat_{12;g}] (neurons 1 != 2);
    F (3, 2, 2): F[e, c, d] = n E[Thetahat_{12;e} z_{1;c} z_{2;d}]."""
    Th, Th1, A, D, B, F = st["Th"], st["Th1"], st["A"], st["D"], st["B"], st["F"]
    Gp, dGp, P, dP, d2P, Mdp, Q, R = (m[k] for k in ("Gp", "dGp", "P", "dP", "d2P", "Mdp", "Q", "R"))
    w2 = w * w
    # the conditional mean of Thetahat_jj given z_j carries (1/n) (z^T K^-1 F_e K^-1 z - tr): a score
    # weight, 2 d/dt <.>_{K + t sym(F_e)}, so F enters Theta1 through its symmetric part on (aa, bb, ab)
    Fv = np.stack([F[:, 0, 0], F[:, 1, 1], 0.5 * (F[:, 0, 1] + F[:, 1, 0])], axis=1)
    Th_n = lam * Kn + mu + w * P * Th
    Th1_n = lam * K1n + w * (P * Th1 + Th * (dP @ K1) + np.einsum("ef,ef->e", dP, D)
                             + 0.5 * Th * np.einsum("efg,fg->e", d2P, V) + 2 * np.einsum("ef,ef->e", dP, Fv))
    TdP = Th[:, None] * dP  # d(P_e Theta_e)/dK_f at fixed Thetabar
    # X = n Cov[Hhat_e, Ghat_g], Y = n Cov[Hhat_e, Hhat_g] (Hhat = (w/n) sum_i phi'phi' Thetahat_ii)
    X = w2 * (Th[:, None] * (Mdp - P[:, None] * Gp[None, :]) + TdP @ V @ dGp.T + (P[:, None] * D) @ dGp.T)
    Mdd = np.array([[Q[_COUNT_A[e] + _COUNT_A[g]] for g in range(3)] for e in range(3)])
    C = TdP @ D.T * P[None, :]  # Theta_e sum_f dP[e, f] D[g, f] P_g
    Y = w2 * (np.outer(Th, Th) * (Mdd - np.outer(P, P)) + TdP @ V @ TdP.T + C + C.T + np.outer(P, P) * A)
    A_n = lam * lam * Vn + lam * (X + X.T) + Y
    D_n = lam * Vn + X
    Th4 = Th[[0, 1, 2, 2]]
    B_n = np.empty((4, 4))
    for e, (e1, e2) in enumerate(_O4):
        for g, (g1, g2) in enumerate(_O4):
            B_n[e, g] = w2 * (Th4[e] * Th4[g] * Q[_COUNT_A[e] + _COUNT_A[g]]
                              + P[_E3_OF[e1, g1]] * P[_E3_OF[e2, g2]] * B[e, g])
    F_n = np.empty((3, 2, 2))
    for e, (e1, e2) in enumerate(_E3):
        F_n[e] = w2 * (Th[e] * Mdp[e][[[0, 2], [2, 1]]] + R[:, e1] @ F[e] @ R[:, e2].T)
    return dict(Th=Th_n, Th1=Th1_n, A=A_n, D=D_n, B=B_n, F=F_n)


def _pair_state(Th3):
    """The NTK pair state of layer 1 (deterministic: Thetahat^1_ij = delta_ij Theta^1)."""
    return dict(Th=np.asarray(Th3, dtype=float), Th1=np.zeros(3), A=np.zeros((3, 3)), D=np.zeros((3, 3)),
                B=np.zeros((4, 4)), F=np.zeros((3, 2, 2)))


def _ntk_pair_fields(diag, pairs, N):
    """The (N, N) fields of one layer from the single-input state ``diag`` (Th, Th1, A, B, D, F: (N,)
    each) and the pair states {(a, b): state}: ntk, ntk_correction, ntk_covariance_pairs
    (3, 3, N, N) (n Cov[Thetahat_e, Thetahat_g] of one neuron, e, g in E3 of (a, b)), and the pair
    tensors A, D (3, 3, N, N), B (4, 4, N, N), F (3, 2, 2, N, N) in the (a, b) orientation."""
    Th, Th1, A, B, D, F = diag
    i = np.arange(N)
    out = dict(ntk=np.diag(Th), ntk_correction=np.diag(Th1), cov=np.zeros((3, 3, N, N)),
               A=np.zeros((3, 3, N, N)), D=np.zeros((3, 3, N, N)), B=np.zeros((4, 4, N, N)),
               F=np.zeros((3, 2, 2, N, N)))
    out["cov"][:, :, i, i] = A + 2 * B
    out["A"][:, :, i, i], out["D"][:, :, i, i], out["B"][:, :, i, i] = A, D, B
    out["F"][:, :, :, i, i] = F
    s3, s4 = [1, 0, 2], [1, 0, 3, 2]  # (a, b) -> (b, a): (aa) <-> (bb), (ab) <-> (ba)
    for (a, b), st in pairs.items():
        out["ntk"][a, b] = out["ntk"][b, a] = st["Th"][2]
        out["ntk_correction"][a, b] = out["ntk_correction"][b, a] = st["Th1"][2]
        Bs = st["B"]
        cov = st["A"] + Bs[:3, :3] + Bs[:3, [0, 1, 3]]
        for name, val in (("cov", cov), ("A", st["A"]), ("D", st["D"])):
            out[name][:, :, a, b] = val
            out[name][:, :, b, a] = val[np.ix_(s3, s3)]
        out["B"][:, :, a, b] = Bs
        out["B"][:, :, b, a] = Bs[np.ix_(s4, s4)]
        out["F"][:, :, :, a, b] = st["F"]
        # F[e, c, d] of (b, a): its (ab) entry is the (ba) entry of (a, b), F_(ba);cd = F_(ab);dc
        Fs = st["F"][s3][:, ::-1, ::-1].copy()
        Fs[2] = st["F"][2].T[::-1, ::-1]
        out["F"][:, :, :, b, a] = Fs
    return out


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


def _check_corr(K):
    """Refuse pairs of inputs whose correlation is within 1 - RHO_MAX of +-1."""
    a, b, r = _first_parallel(K, RHO_MAX)
    if a >= 0:
        raise ValueError(f"X: inputs {a} and {b} are (anti)parallel at some layer (correlation {r:.9f}); the 1/n "
                         "corrections are computed for distinct directions (merge repeated inputs)")


def _layer_weights(net: MLP, X):
    """The NTK's own term of each Dense layer l, lam_l Ghat^{l+1} + mu_l (docs/finite_width.md), and
    Theta^1, the deterministic NTK of layer 1; the width n for the standard parametrization (None in
    the ntk one). ntk: lam = 1, mu = 0, Theta^1 = K^1. standard (verify/montecarlo.py: gradients
    unweighted): the layer's term is a^l . a^l + beta = (n / w_l)(Ghat^{l+1} - b_l) + beta, so
    lam_l = n / w_l, mu_l = beta - n b_l / w_l, and Theta^1 = x . x' + beta."""
    L = net.depth
    if net.parametrization == "ntk":
        return np.ones(L + 1), np.zeros(L + 1), None, None
    if net._widths is None:
        return None, None, None, None
    n = float(net._widths[0])
    if np.any(net._widths != n):
        raise ValueError(f"width: the finite-width theory is for equal hidden widths, got {net.width!r}")
    w, b, beta = net._w, net._b, net._beta
    if np.any(w[1:] <= 0):
        raise ValueError(f"weight_var: the standard parametrization's finite-width NTK needs weight_var > 0 in "
                         f"every hidden and readout layer (it reads a^l . a^l off Ghat^(l+1)), got {net.weight_var!r}")
    lam = np.concatenate([[np.nan], n / w[1:]])
    mu = np.concatenate([[np.nan], beta[1:] - n * b[1:] / w[1:]])
    return lam, mu, X @ X.T + beta[0], n


def finite_width(net, X, *, four_point: Optional[bool] = None, ntk_pairs: Optional[bool] = None) -> FiniteWidth:
    """K, K1 and V of an MLP on the rows of X, at the output and per layer (module docstring), the
    NTK's 1/n quantities (docs/finite_width.md, "The NTK") and, in the NTK parametrization, the
    dNTK's and ddNTKs' (``.dntk``, one input at a time: docs/dntk.md).

    ``net``: an :class:`MLP`, or a stax network that is one (``stax.as_mlp``: Dense and one
    activation alternating, one hidden width; other architectures are refused with the layer named).

    ``four_point``: compute the full vertex V (N^4 entries); default: when N <= MAX_FULL_SMOOTH_INPUTS
    (16) for a smooth activation, N <= MAX_FULL_INPUTS (3) for one with kinks (ReLU, ...).
    Without it, K1 is computed from the two-input blocks of V, which close under the
    recursion (V^{l+1} on inputs {a, b} needs V^l on {a, b} only); ``four_point`` is then None
    and single entries come from ``finite_width(net, X[[a, b, c, d]])``.
    ``ntk_pairs``: compute the NTK's quantities on every pair of inputs (ntk, ntk_correction,
    ntk_covariance_pairs; one two-input quadrature per pair and layer); default: when
    N <= MAX_NTK_PAIR_INPUTS. The single-input ones (*_diag) are always computed. In the standard
    parametrization the NTK quantities need the MLP's ``width`` (they depend on it) and are
    computed at that width.
    """
    from limitlab.theory.kernels import stax

    if isinstance(net, stax.Layer):
        net = stax.as_mlp(net)  # a fully connected stax network; anything else: ValueError naming the layer
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a limitlab.theory.kernels.MLP or a fully connected stax network, got "
                        f"{type(net).__name__}")
    X = np.asarray(_check_inputs(X, "X"), dtype=float)
    N, d = X.shape
    if len(np.unique(X, axis=0)) < N:
        raise ValueError("X: repeated rows; the 1/n corrections are computed for distinct inputs (pass each once)")
    act = net.activation
    limit = MAX_FULL_INPUTS if act.kinks else MAX_FULL_SMOOTH_INPUTS
    full = N <= limit if four_point is None else bool(four_point)
    pairs_wanted = N <= MAX_NTK_PAIR_INPUTS if ntk_pairs is None else bool(ntk_pairs)
    w, b = net._w, net._b
    K = w[0] * (X @ X.T) / d + b[0]
    K1 = np.zeros((N, N))
    V = np.zeros((N,) * 4) if full else np.zeros((3, 3, N, N))
    lam, mu, Th0, width = _layer_weights(net, X)
    ntk = lam is not None
    i = np.arange(N)
    I, J = np.triu_indices(N, 1)
    state = pairs = dn = None
    if ntk:
        # the NTK of layer 1 is deterministic: Thetahat^1_ij = delta_ij Theta^1 (PDLT ch. 8)
        Th0 = K if Th0 is None else Th0
        state = (np.diagonal(Th0).copy(), *np.zeros((5, N)))
        if pairs_wanted:
            pairs = {(a, c): _pair_state((Th0[a, a], Th0[c, c], Th0[a, c])) for a, c in zip(I, J)}
    if ntk and net.parametrization == "ntk":
        dn = dict.fromkeys(DNTK_STATE, np.zeros(N))  # layer 1 is linear in its parameters: all zero
    nt4 = None
    if pairs is not None and full and not act.kinks:
        # the NTK's fluctuations on every index quadruple: layer 1 is deterministic
        nt4 = {k: np.zeros((N,) * 4) for k in ("A", "D", "B")}
    layers = [_layer(1, K, K1, V, full, state, pairs, dn, nt4)]
    for l in range(net.depth):
        Kd, K1d, Vd = np.diagonal(K).copy(), np.diagonal(K1).copy(), (V[i, i, i, i] if full else V[0, 0, i, i])
        zero = np.nonzero(~(Kd > 0))[0]
        if zero.size:
            # the covariance derivatives of <phi phi>_K (score weights ~ 1/K) have no limit there
            raise ValueError(f"X: row {zero[0]} has zero variance at layer {l + 1} (a zero input without biases): "
                             "its pre-activations are exactly 0 and the 1/n expansion is not defined there; "
                             "use bias_var > 0 or drop the row")
        Ko, K1o, Vo, Vbo = K, K1, V, (_pair_block(V, N) if full and pairs else V)
        try:
            K, K1, V = _layer_step(act, w[l + 1], b[l + 1], K, K1, V, full,
                                   _MAX_DEFAULT_QUADRATURE if four_point is None else None)
        except _QuadratureTooLong as err:
            import warnings

            warnings.warn(f"finite_width: the full V (four_point) was not computed: layer {l + 2} would need "
                          f"{err.args[0]} sets of inputs by nested quadrature (seconds each; inputs nearly "
                          "linearly dependent, e.g. in d <= 2); K1 and the two-input blocks of V are; pass "
                          "four_point=True to compute it anyway", RuntimeWarning, stacklevel=2)
            full, nt4 = False, None
            Vo = _pair_block(Vo, N)
            K, K1, V = _layer_step(act, w[l + 1], b[l + 1], Ko, K1o, Vo, full)
        if ntk:
            wl, lm, ml = float(w[l + 1]), float(lam[l + 1]), float(mu[l + 1])
            m1 = _one_input_ntk_moments(act, Kd)
            if dn is not None:
                Th, _, _, B, _, F = state
                dn = dntk_layer_step(act, wl, Kd, Th, B, F, dn)
            state = _ntk_step(m1, wl, float(b[l + 1]), Kd, K1d, Vd, state, lm, ml)
            if pairs:
                Vbn = _pair_block(V, N) if full else V
                moments = _pair_ntk_moments_all(act, Ko, m1, I, J)
                for (a, c), m in zip(zip(I, J), moments):
                    e3 = ([a, c, a], [a, c, c])
                    pairs[a, c] = _ntk_pair_step(m, wl, lm, ml, K1o[e3], Vbo[:, :, a, c], K[e3], K1[e3],
                                                 Vbn[:, :, a, c], pairs[a, c])
                if nt4 is not None:
                    nt4 = _ntk_four_point_step(act, Ko, m1, moments, I, J, layers[-1].ntk, Vo, V, nt4, wl, lm)
        layers.append(_layer(l + 2, K, K1, V, full, state, pairs, dn, nt4))
    top = layers[-1]
    dntk = None
    if dn is not None:
        per = {k: np.array([lay.dntk[k] for lay in layers]) for k in DNTK_STATE}
        fluct = {k: np.array([lay.ntk_tensors[k] for lay in layers]) for k in ("B", "F")}
        dntk = DNTK(net.depth, *(per[k] for k in DNTK_STATE), np.array([lay.ntk_diag for lay in layers]), fluct)
    return FiniteWidth(net.depth, K, K1, V if full else None, tuple(layers), _pair_block(V, N) if full else V,
                       top.ntk_diag, top.ntk_correction_diag, top.ntk_variance_diag, top.ntk, top.ntk_correction,
                       top.ntk_covariance_pairs, width, dntk, top.ntk_four_point)


def _left(Dr, T):
    """sum_f Dr[f, a, b] T[f, (c, d)] over f in ((aa), (bb), (ab)) of the first index pair: the first
    order response of a function of K on (a, b) (derivatives Dr in the slots K_aa, K_bb, K_ab, the
    last moving K_ab = K_ba together; one input: slot 0 only) contracted with a tensor T (N^4)."""
    i = np.arange(T.shape[0])
    Taa = T[i, i]  # T[a, a, c, d]
    return Dr[0][:, :, None, None] * Taa[:, None] + Dr[1][:, :, None, None] * Taa[None, :] + Dr[2][:, :, None, None] * T


def _right(Dr, T):
    """:func:`_left` on the second index pair."""
    return _left(Dr, T.transpose(2, 3, 0, 1)).transpose(2, 3, 0, 1)


def _ntk_four_moments(act, K, m1, moments, I, J):
    """Mdp[a, b, c, d] = <phi'_a phi'_b phi_c phi_d> and Q[a, b, c, d] = <phi'_a phi'_b phi'_c phi'_d>
    at K on every index quadruple: on one or two inputs from the one-input and pair moments of the
    NTK recursion (so that the pair blocks agree to rounding), on three or four by the two-block
    series (``gaussian_moments.series_products``, ``series_four_point`` of phi'). Returns
    (Mdp, Q, ok)."""
    N = K.shape[0]
    Mdp, Q = np.empty((N,) * 4), np.empty((N,) * 4)
    i = np.arange(N)
    Mdp[i, i, i, i], Q[i, i, i, i] = m1[:, 4, 0], m1[:, 3, 0]
    for (a, c), m in zip(zip(I, J), moments):
        for t in itertools.product((a, c), repeat=4):
            if len(set(t)) < 2:
                continue
            e = 0 if t[0] == t[1] == a else (1 if t[0] == t[1] == c else 2)
            g = 0 if t[2] == t[3] == a else (1 if t[2] == t[3] == c else 2)
            Mdp[t], Q[t] = m["Mdp"][e, g], m["Q"][t.count(a)]
    if N < 3:
        return Mdp, Q, True
    # every (e1 <= e2, g1 <= g2) on three or four inputs: phi' at e1, e2 (role 1), phi at g1, g2 (role 0);
    # for Q all four carry phi'. A multiset with roles is coded as the sorted 2 index + role.
    i1, i2 = np.triu_indices(N)
    e1, g1 = np.repeat(i1, i1.size), np.tile(i1, i1.size)
    e2, g2 = np.repeat(i2, i1.size), np.tile(i2, i1.size)
    idx = np.stack([e1, e2, g1, g2], axis=1)
    srt = np.sort(idx, axis=1)
    many = (np.diff(srt, axis=1) > 0).sum(axis=1) >= 2
    idx = idx[many]
    code_m = np.sort(2 * idx + np.array([1, 1, 0, 0]), axis=1)
    code_q = np.sort(2 * idx + 1, axis=1)
    base = (2 * N) ** np.arange(3, -1, -1)
    keys = np.concatenate([code_m @ base, code_q @ base])
    uniq, inv = np.unique(keys, return_inverse=True)
    codes = (uniq[:, None] // base[None, :]) % (2 * N)
    vals, ok = gaussian_moments.series_products((act.__call__, act.derivative), K, codes // 2, codes % 2)
    v = vals[inv.ravel()]
    vm, vq = v[:idx.shape[0]], v[idx.shape[0]:]
    a_, b_, c_, d_ = idx.T
    for x, y in ((a_, b_), (b_, a_)):
        for z, u in ((c_, d_), (d_, c_)):
            Mdp[x, y, z, u] = vm
    _scatter_symmetric(Q, idx, vq)
    return Mdp, Q, bool(ok.all())


def _ntk_four_point_step(act, K, m1, moments, I, J, Th, V, Vn, st, w, lam):
    """One layer of the NTK's fluctuation tensors on every index quadruple (docs/finite_width.md,
    "The NTK on every quadruple"): the pair recursion of :func:`_ntk_pair_step` with e = (a, b),
    g = (c, d) any index pairs. K, m1, moments (the pairs' NTK moments), Th (Theta^l, N x N), V: layer
    l; Vn: V^{l+1}; st: {"A", "D", "B"} at layer l. Returns them at layer l + 1, or None (with a
    warning) where the series cannot sum a set (inputs nearly parallel)."""
    import warnings

    N = K.shape[0]
    i = np.arange(N)
    P, dP = np.empty((N, N)), np.zeros((3, N, N))
    P[i, i], dP[0, i, i] = m1[:, 1, 0], m1[:, 1, 1]
    for (a, c), m in zip(zip(I, J), moments):
        P[a, c] = P[c, a] = m["P"][2]
        dP[:, a, c], dP[:, c, a] = m["dP"][2], m["dP"][2][[1, 0, 2]]
    G, dG, _, _, _ = _two_input_moments(act, K)
    Mdp, Q, ok = _ntk_four_moments(act, K, m1, moments, I, J)
    if not ok:
        warnings.warn("finite_width: the NTK's four-point tensors (ntk_four_point) were not computed: the two-block "
                      "series cannot sum some sets of inputs (nearly parallel at some layer)", RuntimeWarning,
                      stacklevel=3)
        return None
    A, D, B = st["A"], st["D"], st["B"]
    w2 = w * w
    ThE, ThG = Th[:, :, None, None], Th[None, None]
    PE, PG = P[:, :, None, None], P[None, None]
    LV = _left(dP, V)  # sum_f dP_e,f V_f,g
    X = w2 * (ThE * (Mdp - PE * G[None, None]) + _right(dG, ThE * LV) + _right(dG, PE * D))
    Y = w2 * (ThE * ThG * (Q - PE * PG) + ThE * ThG * _right(dP, LV) + ThE * PG * _left(dP, D.transpose(2, 3, 0, 1))
              + ThG * PE * _right(dP, D) + PE * PG * A)
    return dict(A=lam * lam * Vn + lam * (X + X.transpose(2, 3, 0, 1)) + Y, D=lam * Vn + X,
                B=w2 * (ThE * ThG * Q + P[:, None, :, None] * P[None, :, None, :] * B))


def _layer(l, K, K1, V, full, state, pairs, dn=None, nt4=None):
    if state is None:
        return FiniteWidthLayer(l, K, K1, V if full else None)
    Th, Th1, A, B, D, F = state
    single = (Th, Th1, A + 2 * B, dict(A=A, B=B, D=D, F=F))
    pair = (None,) * 4
    if pairs is not None:
        f = _ntk_pair_fields(state, pairs, K.shape[0])
        pair = (f["ntk"], f["ntk_correction"], f["cov"], {k: f[k] for k in ("A", "B", "D", "F")})
    cov4 = None if nt4 is None else nt4["A"] + nt4["B"] + nt4["B"].transpose(0, 1, 3, 2)
    return FiniteWidthLayer(l, K, K1, V if full else None, *single, *pair, dn, cov4, nt4)


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

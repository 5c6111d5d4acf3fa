"""Composable infinite-width layers (kernel side), channels-last, in neural-tangents' names.

``serial(Conv(8, (3, 3), padding="SAME"), Relu(), GlobalAvgPool(), Dense(1))`` builds a
network whose ``.nngp(X1, X2)``, ``.ntk(X1, X2)`` and ``.kernels(X1, X2)`` (a
:class:`~limitlab.theory.kernels.mlp.Kernels`) are the limiting NNGP and NTK of the
architecture as every width (channel count) goes to infinity, in the NTK parametrization
(neural-tangents' default): ``h = sqrt(weight_var / fan_in) W x + sqrt(bias_var) b`` with
``fan_in = in_chan`` for Dense and ``in_chan * prod(filter_shape)`` for Conv. Inputs are
float64 arrays ``(N, d)``, ``(N, T, C)``, ``(N, H, W, C)`` or ``(N, D, H, W, C)``.

Kernel state and the layer rules
--------------------------------
For inputs ``x`` of ``N1`` and ``x'`` of ``N2`` images with ``P`` pixels, a layer's state is the
covariance over pixel pairs ``K[n1, n2, s, s'] = E[h(x_n1)_s h(x'_n2)_s']`` of shape
``(N1, N2, *S, *S)`` (the spatial axes of ``s`` then those of ``s'``: neural-tangents'
``diagonal_spatial=False`` covariance, with its axes grouped instead of interleaved), the NTK
``Theta`` of the same shape, and the per-input covariances ``(N, *S, *S)`` of each side (the
diagonal blocks of ``K`` when ``X2 is None``), from which the activations read the variances.
The input layer is ``K = sum_c x_{s,c} x'_{s',c} / C``, ``Theta = 0``. Rules:

* Dense (per pixel): ``K' = w K + b``, ``Theta' = K' + w Theta`` (Lee et al. 2018, eq. 4;
  Jacot et al. 2018, Thm. 1; Novak et al. 2020, Neural Tangents, App. C).
* Conv: ``K'[s, s'] = w / |F| sum_{o in F} K[st s + o, st s' + o] + b`` over the filter's
  offsets ``F`` (the same offset on both members of the pair) of the zero-padded (SAME),
  wrapped (CIRCULAR) or unpadded (VALID) covariance, and ``Theta' = K' + w / |F| sum_o
  Theta[st s + o, st s' + o]`` (Novak et al. 2019, "Bayesian deep CNNs with many channels are
  GPs", eqs. (7) and (10); Arora et al. 2019, "On exact computation with an infinitely wide
  neural net", CNTK recursion eqs. (7)-(9)). Padding amounts follow XLA's SAME rule.
* Activation phi: ``K' = E[phi(u) phi(v)]``, ``Theta' = Theta * E[phi'(u) phi'(v)]`` with
  ``(u, v)`` centred Gaussian of variances ``K(x,s;x,s)``, ``K(x',s';x',s')`` and covariance
  ``K(x,s;x',s')`` (Jacot et al. 2018; Arora et al. 2019, eq. (9)); the maps are
  :mod:`limitlab.theory.kernels.dual`'s (closed forms evaluated by NumPy, every other
  activation by the Gaussian-expectation engine ``limitlab.numerics.gaussian``, 1e-10).
* AvgPool / SumPool: ``K'[s, s'] = sum_{o, o' in window} K[st s + o, st s' + o'] / |window|^2``
  (or without the division), both offsets independent (neural-tangents' AvgPool; the Myrtle
  kernels' pooling, Shankar et al. 2020).
* GlobalAvgPool / GlobalSumPool: the mean / sum over all pixel pairs ``(s, s')`` (Novak et al.
  2019's global-average-pooling readout; Arora et al. 2019's CNTK-GAP).
* Flatten: the mean of ``K[s, s]`` over the pixels (the trace / P: what a Dense layer on the
  flattened vector sees, neural-tangents' Flatten; Novak et al. 2019's vectorization readout,
  Arora et al. 2019's CNTK-V). Readouts and pools are cited by result: docs/architectures.md.
* FanInSum: the sum of the branches' kernels (residual CNNs, Garriga-Alonso et al. 2019);
  FanInConcat along the channel axis: their average weighted by the branches' channel counts
  (neural-tangents' convention); along a spatial axis: block-diagonal (independent branches),
  the branches' blocks on the diagonal.

Finite networks
---------------
Each layer also carries its finite-width network beside its kernel rule (``Layer._finite``, see
"finite side" below): init (N(0, 1) draws, NTK parametrization), forward pass on the array API
(Conv and pools as per-axis 0/1 selection matrices, then im2col and a matmul; Flatten a
reshape, consistent with the kernel rule's mean over pixels since the next Dense has fan_in
= P C) and a hand-written backward pass giving the exact per-network empirical NTK.
``limitlab.verify.networks`` samples ensembles of them (``sample_kernels``) for the verify checks.

Cost
----
The covariance is an ``N1 N2 P^2`` array. The patch sum over the filter's k = prod_i k_i
offsets, taken directly, costs ``O(N1 N2 P^2 k)``; since the offsets are a product over the
spatial axes, the sum is taken one axis at a time instead (axis i and its partner i' of the
pair together): each output is the sum of k_i strided slices of the (padded) array, one
vectorized NumPy add per tap, so a Conv layer costs ``O(N1 N2 P^2 sum_i k_i)`` (P the larger
of the input and output pixel counts), a pool ``O(N1 N2 P^2 sum_i 2 w_i)`` (its two offsets
are independent), Flatten and global pools ``O(N1 N2 P^2)``. An activation evaluates its
map once per entry, ``O(N1 N2 P^2)``, on the ``(N1 P) x (N2 P)`` matrix view of ``K`` (the
engine's matrix mode for numerical maps); the per-input covariances cost ``O((N1 + N2)
P^2)`` more. Memory: a few arrays of ``N1 N2 P^2`` float64.

Compiled paths and blocks: the Conv rule runs as one Numba pass per spatial axis on the
covariance in place (no padded copies, the bias / NTK sum fused in; the same operations in the
same order as the NumPy rule, so bit-identical), and on states of at least ``_COMPILED_MIN``
entries a closed-form activation runs as one Numba pass in the state's own layout (no
``(N1 P) x (N2 P)`` matrix copies; the NTK product fused in). ``kernels(..., batch_size=b)``
computes the pairs in ``b x b`` blocks (with X2 None only the blocks on and above the
diagonal), so the working set is a few ``b^2 P^2`` arrays whatever N; by default the blocks
hold at most ``_BLOCK_BYTES`` of covariance when every layer acts on each input alone.
Blocks and the compiled map agree with the one-block NumPy path to 1e-14 (tests).

The pair engine: chains of Conv, closed-form activations and pools ending in Flatten or a global
pool, on images of at least ``fused.FUSED_MIN_PIXELS`` pixels, are computed instead by
:mod:`limitlab.theory.kernels.fused` (one pair of images at a time, Conv and activation in one
pass, only the pairs a <= b when X2 is None; the same numbers to rounding), unless
``batch_size`` is given. docs/architectures.md compares the two paths; docs/benchmarks.md has
the measured figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numba as nb
import numpy as np
import sympy as sp

from limitlab.numerics import codegen, gaussian, recursion
from limitlab.numerics import validation as validate
from limitlab.theory import activations as _act
from limitlab.theory.kernels.dual import Dual
from limitlab.theory.kernels.mlp import MLP, Kernels, check_get

__all__ = [
    "serial", "parallel", "Dense", "Conv", "AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool",
    "Flatten", "Identity", "FanOut", "FanInSum", "FanInConcat", "Activation",
    "Relu", "LeakyRelu", "Abs", "ABRelu", "Erf", "Gelu", "Tanh", "Sigmoid", "Sigmoid_like", "Sin", "Cos",
    "Rbf", "Exp", "Gaussian", "Sign", "Monomial", "RectifiedMonomial", "Polynomial", "Hermite",
    "Softplus", "Silu", "Swish", "Elu", "Selu", "Mish", "Kernels", "as_mlp",
]

PADDINGS = ("VALID", "SAME", "CIRCULAR")


# ---------------------------------------------------------------------------------------
# kernel state
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _State:
    """Pixel-pair covariances of one layer's output (see the module docstring)."""

    nngp: np.ndarray                 # (N1, N2, *S, *S)
    ntk: Optional[np.ndarray]        # same shape, or None when only the NNGP is wanted
    cov1: Optional[np.ndarray]       # (N1, *S, *S); None when symmetric (X2 is None)
    cov2: Optional[np.ndarray]       # (N2, *S, *S); None when symmetric
    spatial: tuple                   # S
    width: int                       # channels of the finite network (FanInConcat weights)
    gaussian: bool                   # output of an affine layer (Dense/Conv), or sums/pools of them
    symmetric: bool

    @property
    def shape(self) -> tuple:
        return (self.nngp.shape[0], *self.spatial, self.width)

    def covs(self):
        """The per-input covariances (N, *S, *S) of both sides."""
        if self.symmetric:
            n = self.nngp.shape[0]
            flat = self.nngp.reshape(n, n, -1)
            blocks = flat[np.arange(n), np.arange(n)].reshape((n,) + self.spatial * 2)
            return blocks, blocks
        return self.cov1, self.cov2

    def map_all(self, f, f_ntk=None):
        """Apply f(array, batch_ndim) to every covariance; f_ntk to the NTK (default f)."""
        f_ntk = f if f_ntk is None else f_ntk
        return replace(self, nngp=f(self.nngp, 2), ntk=None if self.ntk is None else f_ntk(self.ntk, 2),
                       cov1=None if self.cov1 is None else f(self.cov1, 1),
                       cov2=None if self.cov2 is None else f(self.cov2, 1))


def _prod(t) -> int:
    return int(np.prod(t, dtype=np.int64)) if len(t) else 1


def _describe_shape(shape) -> str:
    names = {2: "(N, d)", 3: "(N, T, C)", 4: "(N, H, W, C)", 5: "(N, D, H, W, C)"}
    return names.get(len(shape), f"rank {len(shape)}")


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------

def _int_tuple(v, layer, arg, ndim=None):
    if validate.is_integer(v):
        v = (v,)
    try:
        t = tuple(v)
    except TypeError:
        raise TypeError(f"{layer}: {arg}: must be a tuple of positive integers, got {v!r}") from None
    if not t:
        raise ValueError(f"{layer}: {arg}: must have at least one entry, got {v!r}")
    t = tuple(validate.integer(e, f"{layer}: {arg} entries", minimum=1) for e in t)
    if ndim is not None and len(t) != ndim:
        raise ValueError(f"{layer}: {arg}: must have {ndim} entries (one per spatial axis of the filter/window), "
                         f"got {v!r}")
    return t


def _padding(p, layer):
    return validate.choice(p.upper() if isinstance(p, str) else p, f"{layer}: padding", PADDINGS)


def _variances(layer, weight_var, bias_var, W_std, b_std):
    def num(v, arg):
        return validate.real(v, f"{layer}: {arg}", at_least=0)

    if W_std is not None:
        if weight_var != 1.0:
            raise ValueError(f"{layer}: give weight_var or W_std (its square root), not both")
        weight_var = num(W_std, "W_std") ** 2
    if b_std is not None:
        if bias_var not in (0.0, None):
            raise ValueError(f"{layer}: give bias_var or b_std (its square root), not both")
        bias_var = num(b_std, "b_std") ** 2
    w = num(weight_var, "weight_var")
    b = 0.0 if bias_var is None else num(bias_var, "bias_var")
    return w, b


_UNSET = object()  # b_std not given (b_std=None given means "no bias", neural-tangents' spelling)


def _parametrization(parametrization, parameterization, layer):
    """'ntk' or 'standard', from limitlab's spelling or neural-tangents' (not both)."""
    if parametrization is not None and parameterization is not None and parametrization != parameterization:
        raise ValueError(f"{layer}: give parametrization or parameterization (neural-tangents' spelling), not both")
    p = parametrization if parametrization is not None else parameterization
    p = "ntk" if p is None else p
    return validate.choice(p, f"{layer}: parametrization", ("ntk", "standard"))


def _affine_args(self, layer, weight_var, bias_var, W_std, b_std, parametrization, parameterization):
    """Variances, parametrization and whether the layer has a bias (``bias_var=None`` or
    ``b_std=None`` given: none; it matters only in the standard parametrization, where a bias
    initialised at zero is still trained: neural-tangents' ``b_std=None`` vs ``0.0``)."""
    self.has_bias = bias_var is not None and b_std is not None
    self.weight_var, self.bias_var = _variances(layer, weight_var, bias_var, W_std,
                                                None if b_std is _UNSET else b_std)
    self.parametrization = _parametrization(parametrization, parameterization, layer)


def _affine_repr(self):
    standard = self.parametrization == "standard"
    b = "None" if standard and not self.has_bias else f"{self.bias_var:g}"
    return f"weight_var={self.weight_var:g}, bias_var={b}" + (", parametrization='standard'" if standard else "")


# ---------------------------------------------------------------------------------------
# spatial operators on covariances (batch axes first, then S, then S')
# ---------------------------------------------------------------------------------------

def _out_and_pads(n, k, st, padding):
    """Output length and (lo, hi) padding of one spatial axis (XLA's VALID/SAME rule)."""
    if padding == "VALID":
        return (n - k) // st + 1, (0, 0)
    out = -(-n // st)
    total = max((out - 1) * st + k - n, 0)
    return out, (total // 2, total - total // 2)


def _pad_axes(a, axes, pads, padding):
    if pads == (0, 0):
        return a
    width = [(0, 0)] * a.ndim
    for ax in axes:
        width[ax] = pads
    return np.pad(a, width, mode="wrap" if padding == "CIRCULAR" else "constant")


def _taps(a, ax, k, st, out):
    """[sum over o < k of a[..., st j + o, ...] along axis ax] for j < out, as a list of slices."""
    idx = [slice(None)] * a.ndim
    for o in range(k):
        idx[ax] = slice(o, o + st * (out - 1) + 1, st)
        yield tuple(idx)


def _conv_cov(a, bnd, filt, strides, padding):
    """(1/|F|) sum_o a[st s + o, st s' + o]: the same offset on both members of each pair."""
    d = len(filt)
    for i in range(d):
        ax1, ax2 = bnd + i, bnd + d + i
        n = a.shape[ax1]
        out, pads = _out_and_pads(n, filt[i], strides[i], padding)
        a = _pad_axes(a, (ax1, ax2), pads, padding)
        idx = [slice(None)] * a.ndim
        acc = None
        for o in range(filt[i]):
            sl = slice(o, o + strides[i] * (out - 1) + 1, strides[i])
            idx[ax1] = idx[ax2] = sl
            acc = a[tuple(idx)].copy() if acc is None else acc + a[tuple(idx)]
        a = acc / filt[i]
    return a


def _conv_cov_compiled(a, bnd, filt, strides, padding, w=1.0, b=0.0, add=None):
    """``w * _conv_cov(a, ...) + b`` (``+ add`` instead of ``+ b`` when add is given), with the
    same operations in the same order (taps summed in offset order, skipped where SAME pads a
    zero: x + 0 = x; then / k per axis), one compiled pass per spatial axis, no padded copies."""
    d = len(filt)
    a = np.ascontiguousarray(a, dtype=np.float64)
    for i in range(d):
        ax1, ax2 = bnd + i, bnd + d + i
        n = a.shape[ax1]
        out, (lo, _) = _out_and_pads(n, filt[i], strides[i], padding)
        shape = a.shape
        pre, mid, post = _prod(shape[:ax1]), _prod(shape[ax1 + 1:ax2]), _prod(shape[ax2 + 1:])
        last = i == d - 1
        mode = 0 if not last else (2 if add is not None else 1)
        new_shape = list(shape)
        new_shape[ax1] = new_shape[ax2] = out
        extra = np.ascontiguousarray(add, dtype=np.float64).reshape(pre, out, mid, out, post) \
            if mode == 2 else _EMPTY5
        kernel = _conv_axis_par if pre * out * mid * out * post >= _PARALLEL_MIN else _conv_axis_ser
        a = kernel(a.reshape(pre, n, mid, n, post), filt[i], strides[i], lo, out, padding == "CIRCULAR",
                   mode, w, b, extra).reshape(new_shape)
    return a


_EMPTY5 = np.zeros((1, 1, 1, 1, 1))
# passes over fewer entries run on one thread: waking Numba's OpenMP workers costs more there
# (on 2 shared cores, ~10 ms a pass: 16x slower on 8x8 images)
_PARALLEL_MIN = 1 << 22


def _conv_axis(src, k, st, lo, out, circular, mode, w, b, extra):
    """One axis pair (j, j') of _conv_cov on the view (pre, n, mid, n, post); mode 0: / k;
    1: w * (. / k) + b; 2: w * (. / k) + extra."""
    pre, n, mid, post = src.shape[0], src.shape[1], src.shape[2], src.shape[4]
    dst = np.empty((pre, out, mid, out, post))
    for pj in nb.prange(pre * out):
        p, j = pj // out, pj % out
        for m in range(mid):
            for jj in range(out):
                o0, o1 = 0, k  # the taps inside the image on both members (all when circular)
                if not circular:
                    o0 = max(0, lo - st * j, lo - st * jj)
                    o1 = min(k, n + lo - st * j, n + lo - st * jj)
                for q in range(post):
                    acc = 0.0
                    for o in range(o0, o1):
                        r1, r2 = st * j + o - lo, st * jj + o - lo
                        if circular:
                            r1, r2 = r1 % n, r2 % n
                        v = src[p, r1, m, r2, q]
                        acc = v if o == o0 else acc + v
                    acc = acc / k
                    if mode == 1:
                        acc = w * acc + b
                    elif mode == 2:
                        acc = w * acc + extra[p, j, m, jj, q]
                    dst[p, j, m, jj, q] = acc
    return dst


_conv_axis_par = nb.njit(parallel=True, cache=True)(_conv_axis)
_conv_axis_ser = nb.njit(cache=True)(_conv_axis)


def _pool_divisors(n, k, st, padding, average, normalize_edges):
    """What a pool divides each output's window sum by along one axis of n inputs: 1 (SumPool),
    the window size k, or with SAME padding and ``normalize_edges`` the in-image count."""
    out, (lo, _) = _out_and_pads(n, k, st, padding)
    if not average:
        return np.ones(out)
    if normalize_edges and padding == "SAME":
        return np.array([min(n, st * j - lo + k) - max(0, st * j - lo) for j in range(out)], dtype=float)
    return np.full(out, float(k))


def _pool_cov(a, bnd, window, strides, padding, average, normalize_edges):
    """sum_{o, o'} a[st s + o, st s' + o'] (/ |window|^2 or the counts at the edges)."""
    d = len(window)
    for i in range(d):
        n = a.shape[bnd + i]
        out, pads = _out_and_pads(n, window[i], strides[i], padding)
        count = _pool_divisors(n, window[i], strides[i], padding, average, normalize_edges)
        for ax in (bnd + i, bnd + d + i):
            a = _pad_axes(a, (ax,), pads, padding)
            acc = None
            for idx in _taps(a, ax, window[i], strides[i], out):
                acc = a[idx].copy() if acc is None else acc + a[idx]
            if average:
                shape = [1] * acc.ndim
                shape[ax] = out
                acc = acc / count.reshape(shape)
            a = acc
    return a


def _to_matrix(a, n1, n2, P):
    return a.reshape(n1, n2, P, P).transpose(0, 2, 1, 3).reshape(n1 * P, n2 * P)


def _from_matrix(m, n1, n2, spatial):
    P = _prod(spatial)
    return m.reshape(n1, P, n2, P).transpose(0, 2, 1, 3).reshape((n1, n2) + spatial * 2)


# ---------------------------------------------------------------------------------------
# finite side: the finite-width network of each layer (array API, per-input gradients)
# ---------------------------------------------------------------------------------------
# Every layer also builds its finite-width network for per-input shapes ``shape`` (the input
# without its batch axis, channels last: ``(*S, C)``, or a list of shapes between FanOut and
# FanIn) with ``layer._finite(shape, where)``: a :class:`_Finite` carrying the output shape,
# the shapes of the layer's parameters (N(0, 1) draws, NTK parametrization: the layer computes
# ``sqrt(weight_var / fan_in) W x + sqrt(bias_var) b``, Jacot et al. 2018, eq. 1; Novak et al.
# 2020, Neural Tangents, sec. 3), the forward pass and a hand-written backward pass. Arrays
# carry two batch axes, ``(B, N, *S, C)``: B networks (each with its own parameters, axis 0 of
# every parameter array) and N inputs. ``backward(params, cache, g, acc)`` takes
# ``g = df(x_n)/d(output)`` per input (the output of each input depends on that input only)
# and returns ``df(x_n)/d(input)``; it appends to ``acc`` the layer's part of the exact
# empirical NTK, ``sum_theta <df(x_n)/dtheta, df(x_m)/dtheta>`` (B, N, N) (Jacot et al. 2018,
# eq. 2). The array API has no convolution: Conv and the pools are linear maps along each
# spatial axis (0/1 selection matrices, exact in floating point), Conv then a matmul of the
# patches (im2col) with the filter.


# a parameter shape starting with PER_INPUT is per-input noise, not a parameter: its leading axis
# is the number of inputs N (Dropout's masks); it is drawn after the parameters and never trained
PER_INPUT = "N"


class _Finite:
    """A layer's finite network at given input shapes (see the comment above).

    ``forward(xp, params, x) -> (y, cache)``; ``backward(xp, params, cache, g, acc, need_input)``
    returns the input gradient (None when ``need_input`` is False) and appends NTK parts to acc
    (or, when acc is a :class:`ParamSink`, hands it each affine layer's patches and output
    gradients). ``init_scales[j]``: the standard deviation of parameter j at initialization
    (its N(0, 1) draws times it; 1.0 in the NTK parametrization).
    """

    def __init__(self, out_shape, param_shapes, forward, backward, floats=None, init_scales=None):
        self.out_shape, self.param_shapes = out_shape, list(param_shapes)
        self.forward, self.backward = forward, backward
        if floats is None:  # per-input floats held by the forward pass (memory estimates)
            shapes = out_shape if isinstance(out_shape, list) else [out_shape]
            floats = sum(_prod(s) for s in shapes)
        self.floats = int(floats)
        self.init_scales = [1.0] * len(self.param_shapes) if init_scales is None else list(init_scales)

    @property
    def n_params(self) -> int:
        return len(self.param_shapes)


class ParamSink:
    """What an affine layer's backward pass hands over instead of its NTK part, when ``acc`` is
    one: ``take(xp, params, A, G, mult, sd)`` with its parameters ``[W, b]``, patches A (B, N, P,
    F), output gradients G (B, N, P, O), the multipliers ``mult = (m_W, m_b)`` of the forward
    pass ``h = m_W A W + m_b b`` and ``sd = (s_W, s_b)``, the effective standard deviations
    ``sqrt(weight_var / fan_in)``, ``sqrt(bias_var)`` (limitlab.verify.networks' trainer: the
    parameter gradients, the layout of an abc-parametrization)."""

    def take(self, xp, params, A, G, mult, sd):  # pragma: no cover - abstract
        raise NotImplementedError


def _no_params_finite(out_shape, fwd, bwd):
    """A parameter-free layer: fwd(xp, x) -> y, bwd(xp, g) -> g_in (linear maps cache nothing)."""
    return _Finite(out_shape, [], lambda xp, params, x: (fwd(xp, x), None),
                   lambda xp, params, cache, g, acc, need: bwd(xp, g) if need else None)


def _fexpect_one(shape, name):
    if isinstance(shape, list):
        raise ValueError(f"{name}: receives {len(shape)} branches (from FanOut/parallel) of shapes {shape}; join "
                         "them first with FanInSum() or FanInConcat(), or map them with parallel(...)")
    return shape


def _fexpect_branches(shape, name):
    if not isinstance(shape, list):
        raise ValueError(f"{name}: expects several branches (after FanOut(n) or parallel(...)), got one input of "
                         f"per-input shape {shape}")
    return shape


def _fcheck_spatial(shape, window, padding, name, arg):
    d = len(window)
    if len(shape) - 1 != d:
        want = {1: "(N, T, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}.get(d, f"rank {d + 2}")
        raise ValueError(f"{name}: a {d}-D {arg} needs inputs of shape {want} (rank {d + 2}), got an input of "
                         f"shape (N, {', '.join(map(str, shape))}) (rank {len(shape) + 1})")
    if padding == "VALID":
        for n, f in zip(shape[:-1], window):
            if f > n:
                raise ValueError(f"{name}: {arg} {tuple(window)} is larger than the spatial shape {tuple(shape[:-1])}"
                                 f" of its input (shape (N, {', '.join(map(str, shape))})) with padding 'VALID'")


def _selection(n, k, st, padding):
    """(k * out, n) 0/1 matrix: row o * out + j picks input position st j + o - lo of one spatial
    axis (zero row outside the image for SAME, wrapped for CIRCULAR; XLA's padding amounts)."""
    out, (lo, _) = _out_and_pads(n, k, st, padding)
    M = np.zeros((k * out, n))
    for o in range(k):
        for j in range(out):
            p = st * j + o - lo
            if padding == "CIRCULAR":
                p %= n
            if 0 <= p < n:
                M[o * out + j, p] = 1.0
    return M, out


def _pool_matrix(n, k, st, padding, average, normalize_edges):
    """(out, n) matrix of one axis of a pool: the window sum, / k or / the in-image count."""
    S, out = _selection(n, k, st, padding)
    M = S.reshape(k, out, n).sum(axis=0)
    if average:
        M = M / _pool_divisors(n, k, st, padding, average, normalize_edges)[:, None]
    return M


def _xp_matrix(xp, M, like):
    import array_api_compat

    return xp.asarray(M, dtype=like.dtype, device=array_api_compat.device(like))


def _along(xp, M, x, ax):
    """M (m, n) applied along axis ax of x (length n there -> m)."""
    nd = x.ndim
    perm = [i for i in range(nd) if i != ax] + [ax]
    y = xp.matmul(xp.permute_dims(x, tuple(perm)), xp.matrix_transpose(M))
    return xp.permute_dims(y, tuple(list(range(ax)) + [nd - 1] + list(range(ax, nd - 1))))


def _shared_ntk(xp, A, G, cw, cb, mode=None):
    """NTK part of a weight shared over P positions, (B, N, N): ``cw sum_{p,p'} (A_p.A'_p')(G_p.G'_p')
    + cb (sum_p G_p).(sum_p' G'_p')`` for patches A (B, N, P, F) and output gradients G (B, N, P, O)
    (the Gram of the per-input gradients dW = A^T G, taken pairwise or with dW materialized,
    whichever costs fewer flops; ``mode="pairwise"``/``"materialized"`` forces one)."""
    B, N, P, F = A.shape
    O = G.shape[-1]
    gs = xp.sum(G, axis=2)
    out = cb * xp.matmul(gs, xp.matrix_transpose(gs)) if cb != 0.0 else None
    if mode is None:
        mode = "pairwise" if P == 1 or N * P * P * (F + O) <= P * F * O + N * F * O else "materialized"
    if mode == "pairwise":
        a = xp.reshape(A, (B, N * P, F))
        g = xp.reshape(G, (B, N * P, O))
        prod = xp.matmul(a, xp.matrix_transpose(a)) * xp.matmul(g, xp.matrix_transpose(g))
        w = xp.sum(xp.sum(xp.reshape(prod, (B, N, P, N, P)), axis=4), axis=2)
    else:
        J = xp.reshape(xp.matmul(xp.matrix_transpose(A), G), (B, N, F * O))
        w = xp.matmul(J, xp.matrix_transpose(J))
    w = cw * w
    return w if out is None else w + out


def _affine_finite(shape, k, out_dim, weight_var, bias_var, patches, patches_T, out_spatial, cond=None,
                   parametrization="ntk", has_bias=True):
    """Dense (k = 1, patches = the pixels) and Conv: h = m_W patches(x) W + m_b b.

    NTK parametrization: ``m_W = sqrt(w / (k C))``, ``m_b = sqrt(b)``, W and b N(0, 1) at init;
    standard parametrization (Sohl-Dickstein et al. 2020; neural-tangents' ``parameterization=
    "standard"`` with s = (1, 1)): ``m_W = 1``, ``m_b = 1`` (0 without a bias), W ~ N(0, w / (k C)),
    b ~ N(0, b). The same function at init; the NTK weighs each gradient Gram by m^2.
    With ``cond = N`` (the number of inputs) and M = N P_out rows of patches fewer than both
    fan_in and fan_out, W is never materialized: Gaussian conditioning as in
    limitlab.verify.montecarlo's ``method="conditional"`` (Yang 2019, "Tensor Programs I"),
    exact in distribution."""
    C = shape[-1]
    fan_in = k * C
    sw, sb = math.sqrt(weight_var / fan_in), math.sqrt(bias_var)
    if parametrization == "standard":
        mw, mb, init = 1.0, (1.0 if has_bias else 0.0), [sw, sb]
    else:
        mw, mb, init = sw, sb, [1.0, 1.0]
    cw, cb = mw * mw, mb * mb
    P_out = _prod(out_spatial)
    if cond is not None:
        M = int(cond) * P_out
        if M < fan_in and M < out_dim and M * (fan_in + out_dim) * 2 <= fan_in * out_dim:
            return _conditional_affine(fan_in, out_dim, sw, sb, cw, cb, patches, patches_T, out_spatial, M)

    def forward(xp, params, x):
        W, b = params
        A = patches(xp, x)  # (B, N, P_out, k C)
        N = A.shape[1]
        h = mw * xp.matmul(xp.reshape(A, (A.shape[0], N * P_out, fan_in)), W)
        if mb != 0.0:
            h = h + mb * b[:, None, :]
        return xp.reshape(h, (h.shape[0], N, *out_spatial, out_dim)), A

    def backward(xp, params, A, g, acc, need):
        W, _ = params
        B_, N = g.shape[0], g.shape[1]
        G = xp.reshape(g, (B_, N, P_out, out_dim))
        if isinstance(acc, ParamSink):
            acc.take(xp, params, A, G, (mw, mb), (sw, sb))
        else:
            acc.append(_shared_ntk(xp, A, G, cw, cb))
        if not need:
            return None
        gA = mw * xp.matmul(xp.reshape(G, (B_, N * P_out, out_dim)), xp.matrix_transpose(W))
        return patches_T(xp, xp.reshape(gA, (B_, N, P_out, fan_in)))

    fin = _Finite((*out_spatial, out_dim), [(fan_in, out_dim), (out_dim,)], forward, backward,
                  P_out * (fan_in + out_dim), init)
    fin.coef = (weight_var, bias_var)  # the readout's NNGP: (w / F) a.a' + b
    return fin


def _conditional_affine(F, O, sw, sb, cw, cb, patches, patches_T, out_spatial, M):
    """The affine layer by Gaussian conditioning on its M x F patch matrix A (M < F, O).

    With A^T = Q R (thin QR, Q: F x M), W = Q U + (I - Q Q^T) W' where U = Q^T W (M x O) and W'
    are independent N(0, 1) arrays: the forward pass needs only A W = R^T U; the backward pass
    G W^T = (G U^T) Q^T + V (I - Q Q^T) with V = G W'^T, whose rows have covariance G G^T given
    G (which does not depend on W'): V = R_g^T Z from G^T = Q_g R_g, Z (M x F) N(0, 1).
    Parameters: U (M, O), Z (M, F), b (O,). ``cw``, ``cb``: the NTK's weights of the gradient
    Grams (the parametrization's m_W^2, m_b^2); kernels only (it has no parameter gradients)."""
    P_out = _prod(out_spatial)

    def forward(xp, params, x):
        U, _, b = params
        A = patches(xp, x)
        N = A.shape[1]
        Am = xp.reshape(A, (A.shape[0], N * P_out, F))
        Q, R = xp.linalg.qr(xp.matrix_transpose(Am))
        h = sw * xp.matmul(xp.matrix_transpose(R), U) + sb * b[:, None, :]
        return xp.reshape(h, (h.shape[0], N, *out_spatial, O)), (A, Q)

    def backward(xp, params, cache, g, acc, need):
        U, Z, _ = params
        A, Q = cache
        B_, N = g.shape[0], g.shape[1]
        G = xp.reshape(g, (B_, N, P_out, O))
        if isinstance(acc, ParamSink):
            raise TypeError("a Gaussian-conditioning layer has no parameters to train; build with cond=None")
        acc.append(_shared_ntk(xp, A, G, cw, cb))
        if not need:
            return None
        Gm = xp.reshape(G, (B_, N * P_out, O))
        QT = xp.matrix_transpose(Q)
        _, Rg = xp.linalg.qr(xp.matrix_transpose(Gm))
        V = xp.matmul(xp.matrix_transpose(Rg), Z)
        V = V - xp.matmul(xp.matmul(V, Q), QT)
        gA = sw * (xp.matmul(xp.matmul(Gm, xp.matrix_transpose(U)), QT) + V)
        return patches_T(xp, xp.reshape(gA, (B_, N, P_out, F)))

    fin = _Finite((*out_spatial, O), [(M, O), (M, F), (O,)], forward, backward, P_out * (F + O) + F * M)
    fin.coef = (sw * sw * F, sb * sb)
    return fin


# ---------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------

class Layer:
    """Base class: a layer maps a kernel state (or a tuple of them, between FanOut and FanIn)."""

    n_in = 1   # 1: one state in; None: a tuple of states

    def _kernel(self, k, where: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, k, where: str):
        name = f"{self!r}{where}"
        if self.n_in == 1 and isinstance(k, tuple):
            raise ValueError(f"{name}: receives {len(k)} branches (from FanOut/parallel); join them first with "
                             "FanInSum() or FanInConcat(), or map them with parallel(...)")
        if self.n_in is None and not isinstance(k, tuple):
            raise ValueError(f"{name}: expects several branches (after FanOut(n) or parallel(...)), "
                             f"got one input of shape {k.shape}")
        return self._kernel(k, name)

    def _ffinite(self, shape, name: str, cond=None) -> _Finite:  # pragma: no cover - abstract
        raise NotImplementedError(f"{name}: no finite-width network")

    def _finite(self, shape, where: str, cond=None) -> _Finite:
        """The finite network of this layer on per-input shape ``shape`` (see "finite side");
        ``cond``: the number of inputs N for the Gaussian-conditioning sampler (None: weights)."""
        name = f"{self!r}{where}"
        if self.n_in == 1:
            _fexpect_one(shape, name)
        if self.n_in is None:
            _fexpect_branches(shape, name)
        return self._ffinite(shape, name, cond)

    # -- public ---------------------------------------------------------------------
    def kernels(self, X1, X2=None, get: Sequence[str] = ("nngp", "ntk"), batch_size=None, chunks=None) -> Kernels:
        """NNGP and NTK between the inputs X1 and X2 (X2=None: X1 with itself).

        Returns ``Kernels(nngp, ntk)``, each ``(N1, N2)`` when the network ends with a
        Flatten/global pool/Dense on flat inputs, else ``(N1, N2, *S, *S)``.

        ``batch_size``: the pairs are computed in blocks of batch_size x batch_size inputs, so
        that the working set (a few ``batch_size^2 P^2`` arrays) does not grow with N; with
        X2 None only the blocks on and above the diagonal (the rest by symmetry). None: blocks
        of at most _BLOCK_BYTES bytes of covariance when the network's layers act on each input
        alone (every layer here; LayerNorm only over axes without the batch), else one block.

        ``chunks`` (a tile size, a pair, or "auto"): lazy dask arrays of tiles instead
        (:func:`limitlab.theory.kernels.scale.lazy_kernels`; store them with ``write_kernels``).
        """
        if chunks is not None:
            from limitlab.theory.kernels.scale import lazy_kernels
            return lazy_kernels(self, X1, X2, get=get, chunks=chunks, dtype=np.float64)
        get = check_get(get)
        X1 = _check_inputs(X1, "X1")
        symmetric = X2 is None
        X2 = X1 if symmetric else _check_inputs(X2, "X2")
        if X1.shape[1:] != X2.shape[1:]:
            raise ValueError(f"X2: per-input shape {X2.shape[1:]} does not match X1's {X1.shape[1:]}")
        n1, n2 = X1.shape[0], X2.shape[0]
        fused_out = _fused_kernels(self, X1, X2, symmetric, get, batch_size)
        if fused_out is not None:
            return fused_out
        if batch_size is None:
            P = _prod(X1.shape[1:-1])
            b = max(1, math.isqrt(max(_BLOCK_BYTES // (8 * P * P), 1)))
            batch_size = b if max(n1, n2) > b and _per_input(self) else max(n1, n2)
        b = validate.integer(batch_size, "kernels: batch_size", minimum=1)
        if n1 <= b and n2 <= b:
            nngp, ntk, spatial = self._run(X1, X2, symmetric, get)
        else:  # blocks of pairs; with X2 None the lower blocks are the upper ones transposed
            nngp = ntk = None
            for i in range(0, n1, b):
                for j in range(0, n2, b):
                    if symmetric and j < i:
                        continue
                    same = symmetric and i == j
                    parts = self._run(X1[i:i + b], None if same else X2[j:j + b], same, get)
                    spatial = parts[2]
                    d = len(spatial)
                    perm = (1, 0) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))
                    if nngp is None and ntk is None:
                        full = (n1, n2) + spatial * 2
                        nngp, ntk = (None if a is None else np.empty(full) for a in parts[:2])
                    for dst, a in zip((nngp, ntk), parts[:2]):
                        if a is not None:
                            dst[i:i + b, j:j + b] = a
                            if symmetric and not same:
                                dst[j:j + b, i:i + b] = a.transpose(perm)
        if symmetric:  # exactly symmetric: sums over pixels (pools) round differently for (n, m), (m, n)
            d = len(spatial)
            perm = (1, 0) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))
            nngp, ntk = (None if a is None else 0.5 * (a + a.transpose(perm)) for a in (nngp, ntk))
        return Kernels(nngp, ntk)

    def _run(self, X1, X2, symmetric, get):
        """(nngp, ntk, output spatial shape) of one block (X2 None when symmetric)."""
        k = _input_state(X1, X1 if symmetric else X2, symmetric, "ntk" in get)
        out = self._apply(k, "")
        if isinstance(out, tuple):
            raise ValueError(f"{self!r}: the network ends with {len(out)} unjoined branches; "
                             "add FanInSum() or FanInConcat()")
        return (out.nngp if "nngp" in get else None), (out.ntk if "ntk" in get else None), out.spatial

    def nngp(self, X1, X2=None) -> np.ndarray:
        return self.kernels(X1, X2, get=("nngp",)).nngp

    def recursion(self) -> list:
        """The kernel recursion as sympy equations, ``K_l(s, s')`` and ``Theta_l(s, s')`` layer by
        layer (:mod:`limitlab.theory.kernels.layer_rules`)."""
        from limitlab.theory.kernels.layer_rules import recursion

        return recursion(self)

    def ntk(self, X1, X2=None) -> np.ndarray:
        return self.kernels(X1, X2, get=("ntk",)).ntk


# automatic blocks of pairs (Layer.kernels): at most this many bytes of one covariance array
_BLOCK_BYTES = 1 << 28


def _fused_kernels(net, X1, X2, symmetric, get, batch_size):
    """Kernels by :mod:`limitlab.theory.kernels.fused`'s pair engine (conv/pool/closed-form
    activation chains on images), then the flat layers after it by their rules; None when the
    network or the inputs are not for it (then the layer path runs) or when batch_size is
    given (blocks of pairs are the layer path's memory control; the pair engine's working set
    is per thread and does not grow with N)."""
    from limitlab.theory.kernels import fused

    if batch_size is not None:
        return None
    p = fused.plan(net, X1.shape)
    if p is None:
        return None
    want1 = "ntk" in get
    out = fused.run(p, X1, X2, symmetric, want1)
    if out is None:
        return None
    nngp, ntk, cov1, cov2 = out
    k = _State(nngp, ntk, cov1, cov2, (), p.width, p.gaussian, symmetric)
    tail = list(p.tail)
    while tail and type(tail[0][0]) is Dense and tail[0][0].parametrization == "ntk" \
            and tail[0][0].in_dim in (None, k.width):
        # Dense's rule on the output in place (the same operations: K' = w K + b, Theta' = K' +
        # w Theta), so that the peak memory stays the output's
        layer = tail.pop(0)[0]
        w, b = layer.weight_var, layer.bias_var
        for a in (nngp, cov1, cov2):
            if a is not None:
                a *= w
                a += b
        if ntk is not None:
            ntk *= w
            ntk += nngp
        k = replace(k, width=layer.out_dim, gaussian=True)
    for layer, where in tail:
        k = layer._apply(k, where)
    if isinstance(k, tuple):
        raise ValueError(f"{net!r}: the network ends with {len(k)} unjoined branches; add FanInSum() or FanInConcat()")
    nngp, ntk = k.nngp, k.ntk
    if symmetric and not (np.array_equal(nngp, nngp.T) and (ntk is None or np.array_equal(ntk, ntk.T))):
        nngp = 0.5 * (nngp + nngp.T)
        ntk = None if ntk is None else 0.5 * (ntk + ntk.T)
    return Kernels(nngp if "nngp" in get else None, ntk if want1 else None)


def _per_input(layer) -> bool:
    """Whether every layer of the network maps each pair of inputs on its own (so the pairs can
    be computed in blocks): the layers of this module, Dropout, GlobalSelfAttention, and LayerNorm
    over axes that cannot be the batch axis (positive ones, or -1); any other layer: False."""
    if isinstance(layer, _Combinator):
        return all(_per_input(sub) for sub in layer.layers)
    cls = type(layer)
    if cls.__module__ == __name__:
        return True
    if cls.__name__ == "LayerNorm":
        return all(a >= 1 or a == -1 for a in getattr(layer, "axis", (0,)))
    return cls.__name__ in ("Dropout", "GlobalSelfAttention")


def _check_inputs(X, name):
    X = validate.real_array(X, name, finite=False)  # the kind first, then the shape, then the entries
    if X.ndim < 2:
        raise ValueError(f"{name}: must have shape (N, d), (N, T, C), (N, H, W, C) or (N, D, H, W, C), "
                         f"got shape {X.shape}")
    if X.size == 0:
        raise ValueError(f"{name}: must be a non-empty array, got shape {X.shape}")
    return validate.real_array(X, name)


def _input_state(X1, X2, symmetric, want_ntk):
    """K[n1, n2, s, s'] = sum_c x1[n1, s, c] x2[n2, s', c] / C (neural-tangents' input kernel)."""
    spatial = tuple(X1.shape[1:-1])
    C = X1.shape[-1]
    P = _prod(spatial)
    n1, n2 = X1.shape[0], X2.shape[0]
    A1 = X1.reshape(n1 * P, C)
    if symmetric:
        G = A1 @ A1.T / C
        G = 0.5 * (G + G.T)  # exactly symmetric; the diagonal is unchanged
        cov1 = cov2 = None
    else:
        G = A1 @ X2.reshape(n2 * P, C).T / C
        cov1 = np.einsum("nsc,ntc->nst", X1.reshape(n1, P, C), X1.reshape(n1, P, C)) / C
        cov2 = np.einsum("nsc,ntc->nst", X2.reshape(n2, P, C), X2.reshape(n2, P, C)) / C
        cov1 = 0.5 * (cov1 + cov1.transpose(0, 2, 1))
        cov2 = 0.5 * (cov2 + cov2.transpose(0, 2, 1))
        cov1, cov2 = cov1.reshape((n1,) + spatial * 2), cov2.reshape((n2,) + spatial * 2)
    nngp = _from_matrix(G, n1, n2, spatial)
    return _State(nngp, np.zeros_like(nngp) if want_ntk else None, cov1, cov2, spatial, C, False, symmetric)


class Dense(Layer):
    """Fully connected layer over the channel axis (per pixel on spatial inputs).

    ``Dense(out_dim, weight_var=1.0, bias_var=0.0)``; ``W_std``/``b_std`` (standard deviations,
    neural-tangents' spelling) may be given instead. ``in_dim`` optionally declares the input
    channel count, checked against the input. Kernel rule: K' = w K + b, Theta' = K' + w Theta
    (Lee et al. 2018, eq. 4; Jacot et al. 2018, Thm. 1). ``parametrization="standard"``
    (``parameterization=`` accepted; Sohl-Dickstein et al. 2020, neural-tangents' formula with
    s = (1, 1)): Theta' = C K + w Theta + 1, C the input channel count, the 1 only with a bias
    (``bias_var=None`` or ``b_std=None``: none). neural-tangents' ``s`` (finite widths s n with
    the NTK divided by s) gives this same kernel at the base width n when the s are consistent
    across layers; here the width is the declared one (``verify.networks.at_width``).
    """

    def __init__(self, out_dim, weight_var=1.0, bias_var=0.0, *, W_std=None, b_std=_UNSET, in_dim=None,
                 parametrization=None, parameterization=None):
        self.out_dim = validate.integer(out_dim, "Dense: out_dim", minimum=1)
        _affine_args(self, "Dense", weight_var, bias_var, W_std, b_std, parametrization, parameterization)
        self.in_dim = None if in_dim is None else validate.integer(in_dim, "Dense: in_dim", minimum=1)

    def __repr__(self):
        return f"Dense({self.out_dim}, {_affine_repr(self)})"

    def _kernel(self, k, name):
        _check_declared(k, self.in_dim, "in_dim", name)
        w, b = self.weight_var, self.bias_var
        out = k.map_all(lambda a, _: w * a + b)
        if out.ntk is not None:
            if self.parametrization == "standard":
                # Sohl-Dickstein et al. 2020 (arXiv:2001.07301); neural-tangents' Dense(parameterization="standard"), s = (1, 1):
                # the gradient of W x is x, whose Gram is (input width) x the input kernel; + 1 for a bias
                ntk = k.width * k.nngp + w * k.ntk
                out = replace(out, ntk=ntk + 1.0 if self.has_bias else ntk)
            else:
                out = replace(out, ntk=out.nngp + w * k.ntk)
        return replace(out, width=self.out_dim, gaussian=True)

    def _ffinite(self, shape, name, cond=None):
        """Finite: h = sqrt(w / C) x W + sqrt(b) b per pixel (W shared over pixels), fan_in = C."""
        C = shape[-1]
        if self.in_dim is not None and self.in_dim != C:
            raise ValueError(f"{name}: declared in_dim={self.in_dim} but its input has {C} channels (per-input "
                             f"shape {tuple(shape)})")
        sp = tuple(shape[:-1])
        P = _prod(sp)

        def patches(xp, x):
            return xp.reshape(x, (x.shape[0], x.shape[1], P, C))

        def patches_T(xp, gA):
            return xp.reshape(gA, (gA.shape[0], gA.shape[1], *sp, C))

        return _affine_finite(shape, 1, self.out_dim, self.weight_var, self.bias_var, patches, patches_T, sp, cond,
                              self.parametrization, self.has_bias)


def _check_declared(k, declared, arg, name):
    if declared is None or declared == k.width:
        return
    shape = k.shape
    hint = ""
    if len(shape) >= 3 and shape[1] == declared:
        hint = (f"; axis 1 has {declared} entries: this looks channels-first (N, C, ...), but inputs are "
                "channels-last (N, ..., C), e.g. X.transpose(0, 2, 3, 1) for (N, C, H, W) images")
    raise ValueError(f"{name}: declared {arg}={declared} but its input has {k.width} channels (input shape "
                     f"{shape}, read as {_describe_shape(shape)}){hint}")


class Conv(Layer):
    """Convolution in 1, 2 or 3 spatial dimensions, channels-last, weights shared over positions.

    ``Conv(out_chan, filter_shape, strides=None, padding="VALID", weight_var=1.0, bias_var=0.0)``
    (``W_std``/``b_std`` accepted); padding ``"VALID"``, ``"SAME"`` (zeros) or ``"CIRCULAR"``
    (periodic); fan_in = in_chan * prod(filter_shape). Kernel rule (Novak et al. 2019, eqs. (7)
    and (10); Arora et al. 2019, CNTK eqs. (7)-(9)): K'[s, s'] = w/|F| sum_o K[st s + o, st s' + o]
    + b, Theta'[s, s'] = K'[s, s'] + w/|F| sum_o Theta[st s + o, st s' + o].
    ``parametrization="standard"`` (as :class:`Dense`): Theta'[s, s'] = C sum_o K[st s + o, st s'
    + o] + w/|F| sum_o Theta[st s + o, st s' + o] + 1 (the 1 only with a bias).
    """

    def __init__(self, out_chan, filter_shape, strides=None, padding="VALID", weight_var=1.0, bias_var=0.0, *,
                 W_std=None, b_std=_UNSET, in_chan=None, parametrization=None, parameterization=None):
        self.out_chan = validate.integer(out_chan, "Conv: out_chan", minimum=1)
        self.filter_shape = _int_tuple(filter_shape, "Conv", "filter_shape")
        d = len(self.filter_shape)
        self.strides = (1,) * d if strides is None else _int_tuple(strides, "Conv", "strides", d)
        self.padding = _padding(padding, "Conv")
        _affine_args(self, "Conv", weight_var, bias_var, W_std, b_std, parametrization, parameterization)
        self.in_chan = None if in_chan is None else validate.integer(in_chan, "Conv: in_chan", minimum=1)

    def __repr__(self):
        return (f"Conv({self.out_chan}, {self.filter_shape}, strides={self.strides}, padding={self.padding!r}, "
                f"{_affine_repr(self)})")

    def _kernel(self, k, name):
        _check_spatial(k, self.filter_shape, self.padding, name, "filter_shape")
        _check_declared(k, self.in_chan, "in_chan", name)
        w, b = self.weight_var, self.bias_var
        conv = lambda a, bnd, **kw: _conv_cov_compiled(a, bnd, self.filter_shape, self.strides,  # noqa: E731
                                                       self.padding, w, **kw)
        out = k.map_all(lambda a, bnd: conv(a, bnd, b=b), lambda a, bnd: a)
        if out.ntk is not None and self.parametrization == "standard":
            # neural-tangents' Conv(parameterization="standard"), s = (1, 1): fan_in x the patch-averaged input
            # covariance (the Gram of the patches), + w x the patch-averaged Theta, + 1 for a bias
            fan_in = k.width * _prod(self.filter_shape)
            grad = _conv_cov_compiled(k.nngp, 2, self.filter_shape, self.strides, self.padding, float(fan_in),
                                      b=1.0 if self.has_bias else 0.0)
            out = replace(out, ntk=conv(k.ntk, 2, add=grad))
        elif out.ntk is not None:  # w * conv(Theta) + K', as w * conv(Theta) then + K'
            out = replace(out, ntk=conv(k.ntk, 2, add=out.nngp))
        spatial = tuple(_out_and_pads(n, f, s, self.padding)[0]
                        for n, f, s in zip(k.spatial, self.filter_shape, self.strides))
        return replace(out, spatial=spatial, width=self.out_chan, gaussian=True)

    def _ffinite(self, shape, name, cond=None):
        """Finite: h = sqrt(w / (k C)) patches(x) W + sqrt(b) b, k = prod(filter_shape): im2col by
        0/1 selection matrices per spatial axis (zero rows: SAME padding; wrapped: CIRCULAR), the
        patch axes ordered (filter offsets..., channel) like W's rows."""
        _fcheck_spatial(shape, self.filter_shape, self.padding, name, "filter_shape")
        C = shape[-1]
        if self.in_chan is not None and self.in_chan != C:
            raise ValueError(f"{name}: declared in_chan={self.in_chan} but its input has {C} channels (per-input "
                             f"shape {tuple(shape)})")
        d = len(self.filter_shape)
        mats = [_selection(n, k, st, self.padding)
                for n, k, st in zip(shape[:-1], self.filter_shape, self.strides)]
        outs = tuple(out for _, out in mats)
        filt = self.filter_shape
        k = _prod(filt)
        P_out = _prod(outs)
        perm = (0, 1) + tuple(3 + 2 * i for i in range(d)) + tuple(2 + 2 * i for i in range(d)) + (2 + 2 * d,)
        inv = tuple(int(i) for i in np.argsort(perm))
        inter = sum(((f, o) for f, o in zip(filt, outs)), ())

        def patches(xp, x):
            B, N = x.shape[0], x.shape[1]
            for i, (M, _) in enumerate(mats):
                x = _along(xp, _xp_matrix(xp, M, x), x, 2 + i)
            x = xp.permute_dims(xp.reshape(x, (B, N, *inter, C)), perm)
            return xp.reshape(x, (B, N, P_out, k * C))

        def patches_T(xp, gA):
            B, N = gA.shape[0], gA.shape[1]
            y = xp.permute_dims(xp.reshape(gA, (B, N, *outs, *filt, C)), inv)
            y = xp.reshape(y, (B, N, *(f * o for f, o in zip(filt, outs)), C))
            for i, (M, _) in enumerate(mats):
                y = _along(xp, _xp_matrix(xp, M.T, y), y, 2 + i)
            return y

        return _affine_finite(shape, k, self.out_chan, self.weight_var, self.bias_var, patches, patches_T, outs, cond,
                              self.parametrization, self.has_bias)


def _check_spatial(k, window, padding, name, arg):
    d = len(window)
    shape = k.shape
    if len(k.spatial) != d:
        want = {1: "(N, T, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}.get(d, f"rank {d + 2}")
        raise ValueError(f"{name}: a {d}-D {arg} needs inputs of shape {want} (rank {d + 2}), got an input of "
                         f"shape {shape} (rank {len(shape)})")
    if padding == "VALID":
        for n, f in zip(k.spatial, window):
            if f > n:
                raise ValueError(f"{name}: {arg} {tuple(window)} is larger than the spatial shape {k.spatial} of its "
                                 f"input (shape {shape}) with padding 'VALID'; use padding 'SAME'/'CIRCULAR' or a "
                                 "smaller filter")


class _Pool(Layer):
    _average = True
    _name = "AvgPool"

    def __init__(self, window_shape, strides=None, padding="VALID", normalize_edges=False):
        self.window_shape = _int_tuple(window_shape, self._name, "window_shape")
        d = len(self.window_shape)
        self.strides = (1,) * d if strides is None else _int_tuple(strides, self._name, "strides", d)
        self.padding = _padding(padding, self._name)
        self.normalize_edges = validate.flag(normalize_edges, f"{self._name}: normalize_edges")

    def __repr__(self):
        return f"{self._name}({self.window_shape}, strides={self.strides}, padding={self.padding!r})"

    def _kernel(self, k, name):
        _check_spatial(k, self.window_shape, self.padding, name, "window_shape")
        out = k.map_all(lambda a, bnd: _pool_cov(a, bnd, self.window_shape, self.strides, self.padding,
                                                 self._average, self.normalize_edges))
        spatial = tuple(_out_and_pads(n, f, s, self.padding)[0]
                        for n, f, s in zip(k.spatial, self.window_shape, self.strides))
        return replace(out, spatial=spatial)

    def _ffinite(self, shape, name, cond=None):
        """Finite: y = the window sum (/ window size, or / in-image count), one axis at a time."""
        _fcheck_spatial(shape, self.window_shape, self.padding, name, "window_shape")
        mats = [_pool_matrix(n, k, st, self.padding, self._average, self.normalize_edges)
                for n, k, st in zip(shape[:-1], self.window_shape, self.strides)]

        def fwd(xp, x):
            for i, M in enumerate(mats):
                x = _along(xp, _xp_matrix(xp, M, x), x, 2 + i)
            return x

        def bwd(xp, g):
            for i, M in enumerate(mats):
                g = _along(xp, _xp_matrix(xp, M.T, g), g, 2 + i)
            return g

        return _no_params_finite((*(M.shape[0] for M in mats), shape[-1]), fwd, bwd)


class AvgPool(_Pool):
    """Average pooling ``AvgPool(window_shape, strides=None (= 1), padding="VALID", normalize_edges=False)``.

    K'[s, s'] = sum_{o, o'} K[st s + o, st s' + o'] / |window|^2 (neural-tangents AvgPool; with
    SAME padding and ``normalize_edges`` the division is by the in-image counts instead).
    """


class SumPool(_Pool):
    """Sum pooling ``SumPool(window_shape, strides=None (= 1), padding="VALID")``: as
    :class:`AvgPool` without the division."""

    _average = False
    _name = "SumPool"

    def __init__(self, window_shape, strides=None, padding="VALID"):
        super().__init__(window_shape, strides, padding)


class _GlobalPool(Layer):
    _average = True
    _name = "GlobalAvgPool"

    def __repr__(self):
        return f"{self._name}()"

    def _kernel(self, k, name):
        if not k.spatial:
            raise ValueError(f"{name}: needs inputs with spatial axes (N, T, C), (N, H, W, C) or (N, D, H, W, C), "
                             f"got shape {k.shape}")
        red = np.mean if self._average else np.sum
        out = k.map_all(lambda a, bnd: red(a, axis=tuple(range(bnd, a.ndim))))
        return replace(out, spatial=())

    def _ffinite(self, shape, name, cond=None):
        """Finite: the mean (sum) over all spatial positions."""
        if len(shape) < 2:
            raise ValueError(f"{name}: needs inputs with spatial axes (N, T, C), (N, H, W, C) or (N, D, H, W, C), "
                             f"got per-input shape {tuple(shape)}")
        sp, C = tuple(shape[:-1]), shape[-1]
        d, scale = len(sp), (1.0 / _prod(sp) if self._average else 1.0)

        def fwd(xp, x):
            s = xp.sum(x, axis=tuple(range(2, 2 + d)))
            return s * scale if self._average else s

        def bwd(xp, g):
            B, N = g.shape[0], g.shape[1]
            g = xp.broadcast_to(xp.reshape(g, (B, N) + (1,) * d + (C,)), (B, N, *sp, C))
            return g * scale if self._average else g

        return _no_params_finite((C,), fwd, bwd)


class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial positions: the kernel's mean over all pixel pairs (s, s')."""


class GlobalSumPool(_GlobalPool):
    """Sum over all spatial positions: the kernel's sum over all pixel pairs (s, s')."""

    _average = False
    _name = "GlobalSumPool"


class Flatten(Layer):
    """Flatten all non-batch axes; kernel: mean of K[s, s] over pixels (neural-tangents Flatten)."""

    def __repr__(self):
        return "Flatten()"

    def _kernel(self, k, name):
        if not k.spatial:
            return k
        P = _prod(k.spatial)

        def trace(a, bnd):
            flat = a.reshape(a.shape[:bnd] + (P, P))
            return np.trace(flat, axis1=-2, axis2=-1) / P

        return replace(k.map_all(trace), spatial=(), width=k.width * P, gaussian=False)

    def _ffinite(self, shape, name, cond=None):
        """Finite: the reshape to P C features; the next Dense has fan_in = P C, so its covariance is
        w/(P C) sum_{s,c} x_sc x'_sc = w * (the kernel rule's mean of K[s, s] over pixels)."""
        shape = tuple(shape)
        F = _prod(shape)
        return _no_params_finite((F,), lambda xp, x: xp.reshape(x, (x.shape[0], x.shape[1], F)),
                                 lambda xp, g: xp.reshape(g, (g.shape[0], g.shape[1], *shape)))


class Identity(Layer):
    """The identity layer."""

    def __repr__(self):
        return "Identity()"

    def _kernel(self, k, name):
        return k

    def _ffinite(self, shape, name, cond=None):
        return _no_params_finite(tuple(shape), lambda xp, x: x, lambda xp, g: g)


class FanOut(Layer):
    """``FanOut(n)``: n copies of its input, for parallel branches."""

    def __init__(self, num):
        self.num = validate.integer(num, "FanOut: num", minimum=1)

    def __repr__(self):
        return f"FanOut({self.num})"

    def _kernel(self, k, name):
        return (k,) * self.num

    def _ffinite(self, shape, name, cond=None):
        """Finite: n copies; backward, the branches' gradients add."""
        def bwd(xp, gs):
            out = gs[0]
            for g in gs[1:]:
                out = out + g
            return out

        return _no_params_finite([tuple(shape)] * self.num, lambda xp, x: [x] * self.num, bwd)


def _check_branches(ks, name, same_width):
    shapes = [k.shape for k in ks]
    key = (lambda s: s) if same_width else (lambda s: s[:-1])
    if any(key(s) != key(shapes[0]) for s in shapes[1:]):
        what = "shapes" if same_width else "shapes except the channel axis"
        raise ValueError(f"{name}: branches must have equal {what}, got {shapes}")


class FanInSum(Layer):
    """Sum of the branches: kernels add (independent, centred Gaussian branches)."""

    n_in = None

    def __repr__(self):
        return "FanInSum()"

    def _kernel(self, ks, name):
        _check_branches(ks, name, same_width=True)
        if len(ks) > 1 and not all(k.gaussian for k in ks):
            raise ValueError(f"{name}: every branch must end in a Dense/Conv layer (a centred Gaussian) for the "
                             f"kernels to add; branches ending Gaussian: {[k.gaussian for k in ks]}")
        return _combine(ks, [1.0] * len(ks), all(k.gaussian for k in ks))

    def _ffinite(self, shapes, name, cond=None):
        """Finite: the sum of the branches; backward, the same gradient to each."""
        if any(tuple(s) != tuple(shapes[0]) for s in shapes[1:]):
            raise ValueError(f"{name}: branches must have equal per-input shapes, got {[tuple(s) for s in shapes]}")

        def fwd(xp, xs):
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out

        return _no_params_finite(tuple(shapes[0]), fwd, lambda xp, g: [g] * len(shapes))


def _combine(ks, weights, gaussian_):
    def mix(get):
        vals = [get(k) for k in ks]
        if vals[0] is None:
            return None
        return sum(w * v for w, v in zip(weights, vals))

    return replace(ks[0], nngp=mix(lambda k: k.nngp), ntk=mix(lambda k: k.ntk), cov1=mix(lambda k: k.cov1),
                   cov2=mix(lambda k: k.cov2), gaussian=gaussian_)


class FanInConcat(Layer):
    """Concatenation ``FanInConcat(axis=-1)``: along the channel axis the kernels are averaged with
    the branches' channel counts; along a spatial axis (1, ..., d) the covariance is
    block-diagonal (pixels of different, independent Gaussian branches are uncorrelated)."""

    n_in = None

    def __init__(self, axis=-1):
        if not validate.is_integer(axis):  # a TypeError, as for any non-integer index
            raise TypeError(f"FanInConcat: axis: must be an integer, got {axis!r}")
        self.axis = int(axis)

    def __repr__(self):
        return f"FanInConcat(axis={self.axis})"

    def _kernel(self, ks, name):
        ndim = len(ks[0].shape)
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"{name}: axis {self.axis} is out of range for inputs of shape {ks[0].shape}")
        axis = self.axis % ndim
        if axis == ndim - 1:
            _check_branches(ks, name, same_width=False)
            widths = [k.width for k in ks]
            total = float(sum(widths))
            out = _combine(ks, [w / total for w in widths], False)
            return replace(out, width=int(sum(widths)))
        if axis == 0:
            raise ValueError(f"{name}: concatenation along the batch axis (axis 0) is not a layer; got inputs of "
                             f"shape {ks[0].shape}")
        return self._spatial(ks, axis - 1, name)

    def _ffinite(self, shapes, name, cond=None):
        """Finite: concatenation along the axis; backward, the gradient's slices."""
        shapes = [tuple(s) for s in shapes]
        ndim = len(shapes[0]) + 1  # with the batch axis N
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"{name}: axis {self.axis} is out of range for per-input shapes {shapes}")
        axis = self.axis % ndim
        if axis == 0:
            raise ValueError(f"{name}: concatenation along the batch axis (axis 0) is not a layer; got per-input "
                             f"shapes {shapes}")
        i = axis - 1  # per-input axis
        key = lambda s: s[:i] + s[i + 1:]  # noqa: E731
        if any(len(s) != len(shapes[0]) or key(s) != key(shapes[0]) for s in shapes[1:]):
            raise ValueError(f"{name}: branches must have equal per-input shapes except along axis {self.axis}, "
                             f"got {shapes}")
        sizes = [s[i] for s in shapes]
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        out = list(shapes[0])
        out[i] = int(offs[-1])

        def bwd(xp, g):
            parts = []
            for a, b in zip(offs[:-1], offs[1:]):
                idx = [slice(None)] * g.ndim
                idx[i + 2] = slice(int(a), int(b))
                parts.append(g[tuple(idx)])
            return parts

        return _no_params_finite(tuple(out), lambda xp, xs: xp.concat(xs, axis=i + 2), bwd)

    def _spatial(self, ks, i, name):
        """Along spatial axis i: the branches are independent, so pixel pairs from different
        branches have covariance 0 and the covariances are block-diagonal along (i, i')."""
        shapes = [k.shape for k in ks]
        key = lambda s: s[:1 + i] + s[2 + i:]  # noqa: E731
        if any(key(s) != key(shapes[0]) for s in shapes[1:]):
            raise ValueError(f"{name}: branches must have equal shapes except along axis {self.axis}, got {shapes}")
        if not all(k.gaussian for k in ks):
            raise ValueError(f"{name}: concatenating along a spatial axis needs every branch to end in a Dense/Conv "
                             f"layer (a centred Gaussian); branches ending Gaussian: {[k.gaussian for k in ks]}")
        d = len(ks[0].spatial)
        sizes = [k.spatial[i] for k in ks]
        offs = np.concatenate([[0], np.cumsum(sizes)])

        def blocks(get, bnd):
            mats = [get(k) for k in ks]
            if mats[0] is None:
                return None
            shape = list(mats[0].shape)
            shape[bnd + i] = shape[bnd + d + i] = int(offs[-1])
            out = np.zeros(shape)
            for m, a, b in zip(mats, offs[:-1], offs[1:]):
                idx = [slice(None)] * out.ndim
                idx[bnd + i] = idx[bnd + d + i] = slice(int(a), int(b))
                out[tuple(idx)] = m
            return out

        spatial = list(ks[0].spatial)
        spatial[i] = int(offs[-1])
        return replace(ks[0], nngp=blocks(lambda k: k.nngp, 2), ntk=blocks(lambda k: k.ntk, 2),
                       cov1=blocks(lambda k: k.cov1, 1), cov2=blocks(lambda k: k.cov2, 1), spatial=tuple(spatial),
                       gaussian=True)


class _Combinator(Layer):
    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"{self._name}: argument {i} must be a layer (Dense, Conv, Relu(), ...), got "
                                f"{layer!r}; note activation layers are called: Relu(), not Relu")
        self.layers = tuple(layers)

    def __repr__(self):
        return f"{self._name}({', '.join(map(repr, self.layers))})"


class _Serial(_Combinator):
    _name = "serial"
    n_in = 0  # anything

    def _apply(self, k, where):
        for i, layer in enumerate(self.layers):
            k = layer._apply(k, f" at {self._name}[{i}]{where}")
        return k

    def _finite(self, shape, where, cond=None):
        subs = []
        for i, layer in enumerate(self.layers):
            subs.append(layer._finite(shape, f" at {self._name}[{i}]{where}", cond))
            shape = subs[-1].out_shape
        return _chain_finite(shape, subs)


def _slices(subs):
    out, off = [], 0
    for f in subs:
        out.append(slice(off, off + f.n_params))
        off += f.n_params
    return out


def _chain_finite(out_shape, subs):
    """Sub-networks one after the other (serial)."""
    sl = _slices(subs)

    def forward(xp, params, x):
        caches = []
        for f, s in zip(subs, sl):
            x, c = f.forward(xp, params[s], x)
            caches.append(c)
        return x, caches

    def backward(xp, params, caches, g, acc, need):
        for j in range(len(subs) - 1, -1, -1):
            g = subs[j].backward(xp, params[sl[j]], caches[j], g, acc, need or j > 0)
        return g

    return _Finite(out_shape, sum((f.param_shapes for f in subs), []), forward, backward,
                   sum(f.floats for f in subs), sum((f.init_scales for f in subs), []))


class _Parallel(_Combinator):
    _name = "parallel"
    n_in = None

    def _kernel(self, ks, name):
        if len(ks) != len(self.layers):
            raise ValueError(f"{name}: has {len(self.layers)} branches but receives {len(ks)} inputs")
        where = name[len(repr(self)):]
        return tuple(layer._apply(k, f" at parallel[{i}]{where}") for i, (layer, k) in enumerate(zip(self.layers, ks)))

    def _ffinite(self, shapes, name, cond=None):
        """Finite: layer i on branch i."""
        if len(shapes) != len(self.layers):
            raise ValueError(f"{name}: has {len(self.layers)} branches but receives {len(shapes)} inputs")
        where = name[len(repr(self)):]
        subs = [layer._finite(s, f" at parallel[{i}]{where}", cond)
                for i, (layer, s) in enumerate(zip(self.layers, shapes))]
        sl = _slices(subs)

        def forward(xp, params, xs):
            outs = [f.forward(xp, params[s], x) for f, s, x in zip(subs, sl, xs)]
            return [o[0] for o in outs], [o[1] for o in outs]

        def backward(xp, params, caches, gs, acc, need):
            return [f.backward(xp, params[s], c, g, acc, need) for f, s, c, g in zip(subs, sl, caches, gs)]

        return _Finite([f.out_shape for f in subs], sum((f.param_shapes for f in subs), []), forward, backward,
                       sum(f.floats for f in subs), sum((f.init_scales for f in subs), []))


def _serial_items(layer, where=""):
    """[(layer, where)]: the layers of nested serials in order, each with the position string
    its errors name (as ``_Serial._apply`` builds it)."""
    if isinstance(layer, _Serial):
        return [item for i, sub in enumerate(layer.layers)
                for item in _serial_items(sub, f" at {layer._name}[{i}]{where}")]
    return [(layer, where)]


def as_mlp(net, name: str = "net"):
    """The :class:`limitlab.theory.kernels.MLP` that a fully connected stax network is:
    ``serial(Dense(n), act, ..., Dense(n), act, Dense(k))`` with one activation, equal hidden
    widths n and one parametrization (what the finite-width theory of PDLT covers). Anything
    else is a ValueError naming the first layer that does not fit."""
    if not isinstance(net, Layer):
        raise TypeError(f"{name}: expected a stax network (limitlab.theory.kernels.stax.serial(...)), "
                        f"got {type(net).__name__}")
    items = _serial_items(net)
    shape = "serial(Dense, activation, ..., Dense, activation, Dense)"
    for i, (layer, where) in enumerate(items):
        dense = i % 2 == 0
        if (type(layer) is not Dense) if dense else not isinstance(layer, Activation):
            raise ValueError(f"{name}: expected {'Dense' if dense else 'an activation'}{where}, got {layer!r}; "
                             f"finite-width corrections are computed for fully connected networks {shape}")
    if len(items) < 3 or len(items) % 2 == 0:
        raise ValueError(f"{name}: expected a fully connected network {shape}; got {len(items)} layers")
    dense, acts = items[0::2], items[1::2]
    first = acts[0][0].activation
    for layer, where in acts[1:]:
        if layer.activation.name != first.name or sp.simplify(layer.activation.expr - first.expr) != 0:
            raise ValueError(f"{name}: one activation for every layer is required; {layer!r}{where} differs from "
                             f"{acts[0][0]!r}")
    widths = sorted({layer.out_dim for layer, _ in dense[:-1]})
    if len(widths) > 1:
        raise ValueError(f"{name}: the 1/n theory takes every hidden layer of one width n; got widths {widths}")
    params = {layer.parametrization for layer, _ in dense}
    if len(params) > 1:
        raise ValueError(f"{name}: one parametrization for every Dense layer is required, got {sorted(params)}")
    biases = {layer.has_bias for layer, _ in dense}
    param = params.pop()
    if len(biases) > 1 and param == "standard":
        raise ValueError(f"{name}: in the standard parametrization every Dense layer needs a bias or none does")
    bias = None if biases == {False} else [layer.bias_var if layer.has_bias else 0.0 for layer, _ in dense]
    return MLP(len(acts), first, weight_var=[layer.weight_var for layer, _ in dense], bias_var=bias,
               parametrization=param, width=widths[0])


def serial(*layers) -> Layer:
    """Layers applied one after the other (neural-tangents ``stax.serial``)."""
    return _Serial(*layers)


def parallel(*layers) -> Layer:
    """Layer i applied to branch i of its input (after ``FanOut``), as neural-tangents ``stax.parallel``."""
    return _Parallel(*layers)


# ---------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------

class Activation(Layer):
    """An elementwise nonlinearity: ``Activation("tanh")``, ``Activation("erf", a=2.0)``,
    ``Activation(sympy_expr)`` or any :class:`limitlab.theory.activations.Activation`.

    Kernel rule per pixel pair (Jacot et al. 2018; Arora et al. 2019, eq. (9)):
    K' = E[phi(u) phi(v)], Theta' = Theta E[phi'(u) phi'(v)], (u, v) ~ N(0, [[q1, c], [c, q2]]),
    with the maps of :func:`limitlab.theory.kernels.dual` (closed forms) or the Gaussian engine.
    """

    def __init__(self, activation, **params):
        try:
            self.activation = _act.get(activation, **params)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"Activation: {exc}") from None
        self.dual = Dual(self.activation)

    def __repr__(self):
        return f"Activation({self.activation.name!r})"

    def _kernel(self, k, name):
        if not k.gaussian:
            raise ValueError(f"{name}: its input must be Gaussian, i.e. the output of a Dense/Conv layer (or sums/"
                             f"pools of them); put a Dense or Conv before the activation (input shape {k.shape})")
        n1, n2 = k.nngp.shape[:2]
        P = _prod(k.spatial)
        want1 = k.ntk is not None
        c1, c2 = k.covs()
        q1 = c1.reshape(n1, P * P)[:, :: P + 1].reshape(-1)
        q2 = c2.reshape(n2, P * P)[:, :: P + 1].reshape(-1)
        run = None
        if k.nngp.size >= _COMPILED_MIN and self.activation.has_closed_form and q1.all() and q2.all():
            run = _compiled_map(self.activation)
        if run is not None:  # the same numbers, one compiled pass, no matrix-layout copies
            nngp, ntk = _run_compiled(run, q1.reshape(n1, P), q2.reshape(n2, P), k, want1)
            if not np.all(np.isfinite(nngp)) or (want1 and not np.all(np.isfinite(ntk))):
                raise ValueError(f"{name}: the kernel map of {self.activation.name} is not finite for these inputs "
                                 "(e.g. gaussian(a, b > 0) needs 1 - 2 b q > 0); reduce weight_var or the input "
                                 "scale")
        else:
            C = _to_matrix(k.nngp, n1, n2, P)
            A, Ad = self._maps(q1, q2, C, k.symmetric, want1, name)
            nngp = _from_matrix(A, n1, n2, k.spatial)
            ntk = None if not want1 else k.ntk * _from_matrix(Ad, n1, n2, k.spatial)
        cov1 = cov2 = None
        if not k.symmetric:
            cov1, cov2 = (self._self_blocks(c, q.reshape(c.shape[0], P), k.spatial, name)
                          for c, q in ((c1, q1), (c2, q2)))
        return replace(k, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, gaussian=False)

    def _ffinite(self, shape, name, cond=None):
        """Finite: phi elementwise; backward, g * phi'(h) (phi' the a.e. derivative)."""
        act = self.activation

        def forward(xp, params, h):
            return act(h, xp), act.derivative(h, xp)

        def backward(xp, params, der, g, acc, need):
            return g * der if need else None

        return _Finite(tuple(shape), [], forward, backward, 2 * _prod(shape))

    def _self_blocks(self, cov, q, spatial, name):
        n, P = q.shape
        C = cov.reshape(n, P, P)
        if self.activation.has_closed_form:
            A = self._maps(q[:, :, None], q[:, None, :], C, True, False, name)[0]
        else:
            A = np.stack([self._maps(q[i], q[i], C[i], True, False, name)[0] for i in range(n)])
        return A.reshape((n,) + spatial * 2)

    def _maps(self, q1, q2, C, symmetric, want1, name):
        """(E[phi phi], E[phi' phi']) on the covariance matrix C (rows: q1, columns: q2).

        A pixel of zero variance (zero patches without bias) has u = 0 almost surely:
        E[phi(u) phi(v)] = phi(0) E[phi(v)] there, and its NTK entries are 0 (the output does
        not depend on the parameters), so E[phi' phi'] is set to 0 there.
        """
        if q1.ndim == 1:
            q1, q2 = q1[:, None], q2[None, :]
        z1, z2 = q1 == 0, q2 == 0
        zero = bool(z1.any() or z2.any())
        if zero:
            Z = z1 | z2
            q1, q2, C = np.where(z1, 1.0, q1), np.where(z2, 1.0, q2), np.where(Z, 0.0, C)
        A, Ad = self._maps_positive(q1, q2, C, symmetric, want1, name)
        if zero:
            A = np.where(Z, self._mean(np.where(z1, 0.0, q1)) * self._mean(np.where(z2, 0.0, q2)), A)
            Ad = None if Ad is None else np.where(Z, 0.0, Ad)
        return A, Ad

    def _mean(self, q):
        """E[phi(sqrt(q) z)], phi(0) at q = 0."""
        act = self.activation
        flat = q.reshape(-1)
        uq, inv = np.unique(flat, return_inverse=True)
        m = np.where(uq == 0, float(act(np.zeros(1))[0]), 0.0)
        pos = uq > 0
        if pos.any():
            m[pos] = gaussian.expect(lambda t: act(t), uq[pos], act.kinks)
        return m[inv].reshape(q.shape)

    def _maps_positive(self, q1, q2, C, symmetric, want1, name):
        act = self.activation
        if act.has_closed_form:
            A, Ad = _closed_map(act)(q1, q2, C)
            if symmetric:  # exactly symmetric (the closed form's rounding need not be)
                sw = (lambda m: m.swapaxes(-1, -2))  # noqa: E731
                A = 0.5 * (A + sw(A))
                Ad = 0.5 * (Ad + sw(Ad))
        else:
            A, Ad = gaussian.mehler_dual(lambda t: act(t), lambda t: act.derivative(t), q1[:, 0], q2[0], C, act.kinks,
                                         symmetric=symmetric, want=(True, want1))
        if not np.all(np.isfinite(A)) or (want1 and not np.all(np.isfinite(Ad))):
            raise ValueError(f"{name}: the kernel map of {act.name} is not finite for these inputs (e.g. "
                             "gaussian(a, b > 0) needs 1 - 2 b q > 0); reduce weight_var or the input scale")
        return A, Ad


_CLOSED_MAPS: dict = {}


def _closed_map(act):
    """A NumPy evaluator of the activation's closed-form maps (dual.py), in the stable form the
    compiled MLP recursion uses (limitlab.numerics.recursion): standard deviations s1, s2, the
    Cauchy-Schwarz root r = sqrt((t - c)(t + c)), t = s1 s2, shared by every root of the map,
    the pair angle atan2(r, c), and |c| within 16 ulps of t snapped to +-t (parallel inputs get
    angle 0, not the 1e-8 that arccos makes of one ulp)."""
    key = (act.name, act.params, sp.srepr(act.expr))
    if key not in _CLOSED_MAPS:
        A, Adot = act.closed_dual()
        s1, s2 = sp.symbols("s1 s2", positive=True)
        cc = sp.Symbol("cc", real=True)
        r = sp.Symbol("r", nonnegative=True)
        theta = sp.Symbol("theta", nonnegative=True)
        gap = s1 ** 2 * s2 ** 2 - cc ** 2

        def is_root(e):  # sqrt(max(s1^2 s2^2 - c^2, 0)), as codegen.stable_angles writes it
            return (e.is_Pow and e.exp == sp.S.Half and isinstance(e.base, sp.Max) and sp.S.Zero in e.base.args
                    and sp.expand(sum(a for a in e.base.args if a != 0) - gap) == 0)

        sub = {_act.q1: s1 ** 2, _act.q2: s2 ** 2, _act.c: cc}
        maps = [codegen.stable_angles(recursion._split_roots(m.subs(sub))).replace(is_root, lambda e: r)
                for m in (A, Adot)]
        maps = [m.xreplace({sp.atan2(r, cc): theta}) for m in maps]
        f = sp.lambdify((s1, s2, cc, r, theta), maps, modules=["numpy", "scipy"])

        def evaluate(q1, q2, c):
            s1_, s2_ = np.sqrt(q1), np.sqrt(q2)
            t = s1_ * s2_
            d = (t - c) * (t + c)
            near = d <= 16 * np.finfo(float).eps * (t * t)
            c = np.where(near, np.copysign(t, c), c)
            r_ = np.where(near, 0.0, np.sqrt(np.maximum(d, 0.0)))
            with np.errstate(divide="ignore", invalid="ignore"):
                out = f(s1_, s2_, c, r_, np.arctan2(r_, c))
            return tuple(np.broadcast_to(np.asarray(o, dtype=float), c.shape).copy() for o in out)

        evaluate.scalar = sp.lambdify((s1, s2, cc, r, theta), tuple(maps), modules=["numpy", "scipy"])
        evaluate.args, evaluate.maps = (s1, s2, cc, r, theta), tuple(maps)  # for other compilers (fused)
        _CLOSED_MAPS[key] = evaluate
    return _CLOSED_MAPS[key]


# The closed-form maps compiled (Numba) into one pass over the kernel state in its own layout
# (N1, N2, P, P): per entry exactly the operations of _closed_map's NumPy evaluator (the
# Cauchy-Schwarz snap, atan2, the lambdified map), the symmetric call's averaging of the
# (x, s; x', s') and (x', s'; x, s) entries, and the NTK product, with no (N1 P, N2 P) matrix
# copies or broadcast temporaries. Used on states of at least _COMPILED_MIN entries (smaller
# ones keep the NumPy path and skip the compile); equal to the NumPy path to libm rounding.
_COMPILED_MIN = 1 << 16
_COMPILED_MAPS: dict = {}


def _compiled_map(act):
    """The compiled kernel of act's closed-form maps, or None when its map does not compile."""
    key = (act.name, act.params, sp.srepr(act.expr))
    if key not in _COMPILED_MAPS:
        _COMPILED_MAPS[key] = None
        try:
            _COMPILED_MAPS[key] = _compile_closed_map(act)
        except Exception:  # a map Numba cannot type (e.g. a SciPy special function): NumPy path
            pass
    return _COMPILED_MAPS[key]


def _compile_closed_map(act):
    import numba as nb

    g = nb.njit(_closed_map(act).scalar, error_model="numpy")
    eps16 = 16 * np.finfo(float).eps

    @nb.njit(inline="always", error_model="numpy")
    def ev(s1, s2, c):
        t = s1 * s2
        d = (t - c) * (t + c)
        if d <= eps16 * (t * t):
            c, r = np.copysign(t, c), 0.0
        else:
            r = np.sqrt(max(d, 0.0))
        return g(s1, s2, c, r, np.arctan2(r, c))

    def run(q1, q2, K, T, want1, sym, A, Tout):
        n1, n2, P = K.shape[0], K.shape[1], K.shape[2]
        for blk in nb.prange(n1 * n2):
            a, b = blk // n2, blk % n2
            if sym and b < a:
                continue
            for s in range(P):
                s1 = np.sqrt(q1[a, s])
                for t in range(P):
                    if not sym:
                        x, xd = ev(s1, np.sqrt(q2[b, t]), K[a, b, s, t])
                        A[a, b, s, t] = x
                        if want1:
                            Tout[a, b, s, t] = T[a, b, s, t] * xd
                    elif a != b or t >= s:
                        x, xd = ev(s1, np.sqrt(q2[b, t]), K[a, b, s, t])
                        y, yd = ev(np.sqrt(q1[b, t]), np.sqrt(q2[a, s]), K[b, a, t, s])
                        v = 0.5 * (x + y)
                        A[a, b, s, t] = v
                        A[b, a, t, s] = v
                        if want1:
                            vd = 0.5 * (xd + yd)
                            Tout[a, b, s, t] = T[a, b, s, t] * vd
                            Tout[b, a, t, s] = T[b, a, t, s] * vd

    runs = (nb.njit(error_model="numpy")(run), nb.njit(parallel=True, error_model="numpy")(run))
    z = np.ones((1, 1))
    for r in runs:  # compile now, so a failure falls back at once
        r(z, z, z.reshape(1, 1, 1, 1), z.reshape(1, 1, 1, 1), True, True, np.empty((1, 1, 1, 1)),
          np.empty((1, 1, 1, 1)))
    return runs


def _run_compiled(run, q1, q2, k, want1):
    n1, n2 = k.nngp.shape[:2]
    P = q1.shape[1]
    K = np.ascontiguousarray(k.nngp).reshape(n1, n2, P, P)
    T = np.ascontiguousarray(k.ntk).reshape(n1, n2, P, P) if want1 else K
    A = np.empty_like(K)
    Tout = np.empty_like(K) if want1 else A
    run[K.size >= _PARALLEL_MIN](np.ascontiguousarray(q1), np.ascontiguousarray(q2), K, T, want1, k.symmetric, A,
                                Tout)
    shape = k.nngp.shape
    return A.reshape(shape), (Tout.reshape(shape) if want1 else None)


def Relu():
    """max(x, 0): arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6)."""
    return Activation("relu")


def LeakyRelu(alpha):
    """x for x > 0, alpha x otherwise (neural-tangents LeakyRelu)."""
    return Activation("leaky_relu", alpha=alpha)


def Abs():
    return Activation("abs")


def ABRelu(a, b):
    """a min(x, 0) + b max(x, 0) (neural-tangents ABRelu)."""
    return Activation("abrelu", a=a, b=b)


def Erf(a=1.0, b=1.0, c=0.0):
    """a erf(b x) + c (Williams 1997; neural-tangents Erf)."""
    return Activation("erf", a=a, b=b, c0=c)


def Sigmoid_like():
    return Activation("sigmoid_like")


def Gelu(approximate=False):
    """Exact GELU x Phi(x) (Tsuchida et al. 2020 kernel); ``approximate=True``: the tanh form,
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), through the Gaussian engine."""
    if approximate:
        x = sp.Symbol("x", real=True)
        expr = x * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Float("0.044715") * x ** 3))) / 2
        layer = Activation(_act.numerical(expr, name="gelu_tanh", kinks=()))
        return layer
    return Activation("gelu")


def Sin(a=1.0, b=1.0, c=0.0):
    return Activation("sin", a=a, b=b, c0=c)


def Cos(a=1.0, b=1.0, c=0.0):
    return Activation("cos", a=a, b=b, c0=c)


def Rbf(gamma=1.0):
    return Activation("rbf", gamma=gamma)


def Exp(a=1.0, b=1.0):
    return Activation("exp", a=a, b=b)


def Gaussian(a=1.0, b=-1.0):
    return Activation("gaussian", a=a, b=b)


def Sign():
    return Activation("sign")


def Monomial(degree):
    return Activation("monomial", degree=degree)


def RectifiedMonomial(degree):
    return Activation("rectified_monomial", degree=degree)


def Polynomial(coef):
    return Activation("polynomial", coefficients=list(coef))


def Hermite(degree):
    """He_n(x)/sqrt(n!) (normalized probabilists' Hermite polynomial)."""
    return Activation("hermite", degree=degree)


def Tanh():
    return Activation("tanh")


def Sigmoid():
    return Activation("sigmoid")


def Softplus():
    return Activation("softplus")


def Silu():
    return Activation("silu")


Swish = Silu


def Elu():
    return Activation("elu")


def Selu():
    return Activation("selu")


def Mish():
    return Activation("mish")

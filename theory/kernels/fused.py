"""The pair engine: convolutional kernels one pair of images at a time, in fused compiled passes.

The layer-by-layer path of :mod:`limitlab.theory.kernels.stax` carries the covariance of every
pair of a block of images, ``(n1, n2, *S, *S)``, through NumPy and Numba passes: each Conv
axis, each activation and each pool reads and writes the whole block. For the image
networks theorists benchmark (CNN-GP, CNTK, Myrtle: Novak et al. 2019; Arora et al. 2019;
Shankar et al. 2020) that is memory traffic, not arithmetic. This module computes the same
recursion (the rules in stax's module docstring) one pair of images ``(x, x')`` at a time,
with a fixed per-thread working set:

* the pairs are independent, so each thread takes pairs from a queue (``nogil`` Numba
  functions driven by a thread pool), and with ``X2 = None`` only the pairs ``a <= b`` are
  computed: half of what the block path does;
* a Conv and the activation after it are one pass: for each output row pair ``(i, i')`` the
  filter's taps are summed into an L1-resident row of ``W_out x W_out`` entries, then the
  kernel map (and the NTK product) is applied and written once (no pre-activation array);
* the covariances live in buffers already padded for the next layer (zeros for SAME, the
  wrapped entries for CIRCULAR), so the tap loops have no bounds tests and vectorize;
* the pair angle is :func:`limitlab.numerics.vecmath.angle` (branch-free, SIMD) instead of
  libm's atan2.

The activations need each image's pixel variances ``K(x, s; x, s)`` at their layer: the
pairs ``(a, a)`` are computed first (pre-activation covariance stored, its diagonal read),
then every other pair. A network takes this path when it is a ``serial`` (nested serials
allowed) of 1-D or 2-D ``Conv``, closed-form activations, ``AvgPool``/``SumPool``, ending the
spatial part with ``Flatten``/``GlobalAvgPool``/``GlobalSumPool`` (anything flat after it
runs on stax's layer rules), on inputs of at least ``FUSED_MIN_PIXELS`` pixels; everything
else (residual branches, LayerNorm, attention, numerical activations, 3-D) takes the layer
path. Both give the same numbers to rounding (tests/theory/kernels/test_fused.py).
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numba as nb
import numpy as np

from limitlab.numerics import codegen

__all__ = ["plan", "run", "FUSED_MIN_PIXELS"]

# smaller images keep the layer path: with a handful of pixels a whole block of pairs per
# NumPy call beats one pair per compiled call (docs/benchmarks.md has the crossover)
FUSED_MIN_PIXELS = 16


@dataclass
class _Op:
    kind: str                 # "conv", "pool", "act" (an activation not right after a conv)
    in_hw: tuple              # input (H, W) without padding
    out_hw: tuple             # output (H, W)
    pad: tuple                # (lo_h, hi_h, lo_w, hi_w) of the input buffer (what this op reads)
    circular: bool = False
    window: tuple = (1, 1)
    strides: tuple = (1, 1)
    w: float = 1.0            # conv: weight_var / |F|
    b: float = 0.0
    act: object = None        # conv (fused) or act: the map's compiled passes
    div_h: Optional[np.ndarray] = None   # pool: divisor per output index along H, W
    div_w: Optional[np.ndarray] = None
    act_slot: int = -1        # index of the per-image standard deviations this op's map reads


@dataclass
class Plan:
    ops: list
    terminal: str             # "flatten", "mean", "sum"
    tail: list                # [(layer, where)] applied to the flat state by stax's rules
    spatial_in: tuple         # (H, W) of the input, 1-D inputs as (1, T)
    width: int                # channels after the terminal (FanInConcat weights)
    gaussian: bool            # the terminal's output is Gaussian (an affine layer's, pooled)
    n_slots: int


def plan(net, X_shape) -> Optional[Plan]:
    """The fused plan of ``net`` on inputs of shape ``X_shape``, or None (layer path)."""
    from limitlab.theory.kernels import stax

    if len(X_shape) not in (3, 4):
        return None
    spatial = tuple(X_shape[1:-1])
    hw = (1, spatial[0]) if len(spatial) == 1 else spatial
    if hw[0] * hw[1] < FUSED_MIN_PIXELS:
        return None
    d = len(spatial)
    items = stax._serial_items(net)
    ops, gaussian, width, slots = [], False, X_shape[-1], 0
    for idx, (layer, where) in enumerate(items):
        cls = type(layer)
        if cls is stax.Conv or isinstance(layer, stax._Pool):
            if cls is stax.Conv:
                window, strides, padding = layer.filter_shape, layer.strides, layer.padding
            else:
                window, strides, padding = layer.window_shape, layer.strides, layer.padding
            if len(window) != d:
                return None
            if d == 1:
                window, strides = (1,) + tuple(window), (1,) + tuple(strides)
            outs, pads = [], []
            for n, k, st in zip(hw, window, strides):
                if padding == "VALID" and k > n:
                    return None  # the layer path raises its error
                out, pad = stax._out_and_pads(n, k, st, padding)
                outs.append(out)
                pads += list(pad)
            op = _Op("conv" if cls is stax.Conv else "pool", hw, tuple(outs), tuple(pads),
                     padding == "CIRCULAR", tuple(window), tuple(strides))
            if cls is stax.Conv:
                if layer.in_chan is not None and layer.in_chan != width \
                        or getattr(layer, "parametrization", "ntk") != "ntk":
                    return None  # (the standard parametrization's NTK rule: the layer path)
                op.w, op.b = layer.weight_var / (window[0] * window[1]), layer.bias_var
                gaussian, width = True, layer.out_chan
            else:
                op.div_h, op.div_w = (stax._pool_divisors(n, k, st, padding, layer._average, layer.normalize_edges)
                                      for n, k, st in zip(hw, window, strides))
            ops.append(op)
            hw = op.out_hw
        elif isinstance(layer, stax.Activation):
            if not gaussian or not layer.activation.has_closed_form:
                return None
            kern = _map_passes(layer.activation)
            if kern is None:
                return None
            prev = ops[-1] if ops else None
            if prev is not None and prev.kind == "conv" and prev.act is None:
                prev.act, prev.act_slot = kern, slots   # fused into the conv
            else:
                ops.append(_Op("act", hw, hw, (0, 0, 0, 0), act=kern, act_slot=slots))
            slots += 1
            gaussian = False
        elif cls in (stax.Flatten, stax.GlobalAvgPool, stax.GlobalSumPool):
            if not ops or ops[0].kind == "act":
                return None
            terminal = {stax.Flatten: "flatten", stax.GlobalAvgPool: "mean", stax.GlobalSumPool: "sum"}[cls]
            if cls is stax.Flatten:
                width, gaussian = width * hw[0] * hw[1], False
            # each op's input buffer is padded for it; the previous op writes into its interior
            return Plan(ops, terminal, items[idx + 1:], (1, spatial[0]) if d == 1 else spatial, width, gaussian,
                        slots)
        else:
            return None
    return None  # no terminal: the output keeps its spatial axes (layer path)


# ---------------------------------------------------------------------------------------
# compiled passes (one pair; flat padded buffers)
# ---------------------------------------------------------------------------------------

_MAP_PASSES: dict = {}


def _map_passes(act):
    """(conv+map, map-in-place) compiled passes of act's closed-form maps, or None if they do not compile."""
    from limitlab.theory.kernels import stax
    import sympy as sp

    key = (act.name, act.params, sp.srepr(act.expr))
    if key not in _MAP_PASSES:
        _MAP_PASSES[key] = None
        ev = stax._closed_map(act)
        try:
            mod = codegen.compile_module(codegen.scalar_function_source("g", ev.args, ev.maps) + _PASSES,
                                         tag="fused")
            passes = (mod.conv_map, mod.map_inplace)
            _warm(passes)
        except Exception:  # a map Numba cannot type: the layer path
            return None
        _MAP_PASSES[key] = passes
    return _MAP_PASSES[key]


def _warm(passes):
    """Compile (or load from Numba's disk cache) now, so a map that does not compile is known at once."""
    conv_map, map_inplace = passes
    one, z = np.ones(1), np.zeros(1)
    for t_zero, want_t in ((True, True), (False, True), (False, False)):
        conv_map(one, one, t_zero, want_t, 1, 1, 1, 1, 1, 1, 1, 1, 1.0, 0.0, one, one, z.copy(), z.copy(), 1, 1, 0,
                 0, z.copy(), z.copy())
    map_inplace(one.copy(), one.copy(), True, 1, 1, 1, 1, 0, 0, one, one)


# The passes that apply an activation's map, generated per activation with the map g (sympy ->
# codegen.scalar_function_source) in the same module: Numba's disk cache does not serve
# functions that take another compiled function as an argument (their type names its
# address), and a closure is not cached at all, so a module per map is what keeps the first
# call of a new Python process free of compilation (codegen.compile_module).
_PASSES = '''

from limitlab.numerics.vecmath import angle as _angle
from limitlab.theory.kernels.fused import _store, _taps, _tiles, _at

_EPS16 = 16 * np.finfo(np.float64).eps


@nb.njit(cache=True, inline="always", error_model="numpy")
def ev(s1, s2, c):
    # stax._closed_map's evaluator: |c| within 16 ulps of t = s1 s2 snaps to +-t; the pair
    # angle by vecmath (SIMD) instead of libm's atan2
    t = s1 * s2
    d = (t - c) * (t + c)
    near = d <= _EPS16 * (t * t)
    c = np.copysign(t, c) if near else c
    r = 0.0 if near else np.sqrt(max(d, 0.0))
    return g(s1, s2, c, r, _angle(r, c, t))


@nb.njit(cache=True, inline="always", error_model="numpy")
def block(kin, tin, w, b, case, s1t, s2t, outk, outt, n):
    # the map over one (i, i') block of n entries, flat and branch-free so that LLVM vectorizes
    # it: case 0, no NTK; 1, NTK = the pre-activation K (first affine layer); 2, NTK = K + w
    # Theta_in; 3, NTK = Theta_in (an activation not right after a conv)
    if case == 0:
        for m in range(n):
            x, xd = ev(s1t[m], s2t[m], w * kin[m] + b)
            outk[m] = x
    elif case == 1:
        for m in range(n):
            k = w * kin[m] + b
            x, xd = ev(s1t[m], s2t[m], k)
            outk[m] = x
            outt[m] = k * xd
    elif case == 2:
        for m in range(n):
            k = w * kin[m] + b
            x, xd = ev(s1t[m], s2t[m], k)
            outk[m] = x
            outt[m] = (k + w * tin[m]) * xd
    else:
        for m in range(n):
            x, xd = ev(s1t[m], s2t[m], kin[m])
            outk[m] = x
            outt[m] = tin[m] * xd


@nb.njit(cache=True, nogil=True, error_model="numpy")
def conv_map(Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, Ho, Wo, w, b, s1, s2, Kout, Tout, Hpo, Wpo, oh, ow,
             row, rowt):
    R = Wpi if sw == 1 else Wo
    n = (Wo - 1) * R + Wo
    s1t, s2t, outk, outt = _tiles(s1, s2, Ho, Wo, R)
    case = 0 if not want_t else (1 if t_zero else 2)
    for dlt in range(1 - Ho, Ho):  # along diagonals: row pair (i, i') reuses (i-1, i'-1)'s slabs
        for i in range(max(0, -dlt), min(Ho, Ho - dlt)):
            ii = i + dlt
            _taps(Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, i, ii, Wo, R, row, rowt)
            block(row, rowt, w, b, case, s1t[i], s2t[ii], outk, outt, n)
            _store(outk, outt, want_t, Kout, Tout, Hpo, Wpo, oh, ow, i, ii, Wo, R)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def map_inplace(K, T, want_t, H, W, Hp, Wp, oh, ow, s1, s2):
    # the map on the interior (offsets oh, ow) of K (and the NTK product on T), in place
    n = W * W
    s1t, s2t, outk, outt = _tiles(s1, s2, H, W, W)
    kin, tin = np.empty(n), np.empty(n)
    for i in range(H):
        for ii in range(H):
            for j in range(W):
                ob = _at(oh + i, oh + ii, ow + j, ow, Hp, Wp)
                ks, ts = K[ob:ob + W], T[ob:ob + W]
                for jj in range(W):
                    kin[j * W + jj] = ks[jj]
                    tin[j * W + jj] = ts[jj]
            block(kin, tin, 1.0, 0.0, 3 if want_t else 0, s1t[i], s2t[ii], outk, outt, n)
            _store(outk, outt, want_t, K, T, Hp, Wp, oh, ow, i, ii, W, W)
'''


# Buffers are flat (Hp, Hp', Wp, Wp') arrays: the two row axes first, so that the (j, j') plane of
# one row pair (i, i') is one contiguous Wp x Wp slab. A stride-1 filter tap is then one flat
# loop over the slab shifted by (v, v) (the entries past column W_out of each row are computed
# and dropped), and the map runs over the same flat layout ("rows" of stride R).

@nb.njit(inline="always", cache=True)
def _at(a, e, c, f, Hp, Wp):
    """Flat index of (row a, row' e, column c, column' f) in a (Hp, Hp, Wp, Wp) buffer."""
    return ((a * Hp + e) * Wp + c) * Wp + f


@nb.njit(nogil=True, cache=True)
def _tiles(s1, s2, H, W, R):
    """Per output row i, s1 of entry (j, j') (s1t[i, j R + j'] = s1[i W + j]) and per row i' s2
    (s2t[i', j R + j'] = s2[i' W + j']), 1 in the dropped columns j' >= W; two out rows."""
    n = (W - 1) * R + W
    s1t, s2t = np.ones((H, n)), np.ones((H, n))
    for i in range(H):
        for j in range(W):
            for jj in range(W):
                s1t[i, j * R + jj] = s1[i * W + j]
                s2t[i, j * R + jj] = s2[i * W + jj]
    return s1t, s2t, np.empty(n), np.empty(n)


@nb.njit(inline="always", cache=True)
def _store(outk, outt, want_t, Kout, Tout, Hp, Wp, oh, ow, i, ii, W, R):
    for j in range(W):
        ob = _at(oh + i, oh + ii, ow + j, ow, Hp, Wp)
        rb = j * R
        dst, src = Kout[ob:ob + W], outk[rb:rb + W]
        for jj in range(W):
            dst[jj] = src[jj]
        if want_t:
            dst, src = Tout[ob:ob + W], outt[rb:rb + W]
            for jj in range(W):
                dst[jj] = src[jj]


@nb.njit(inline="always", cache=True)
def _accumulate(dst, src, base, n):
    """dst[:n] += src[base:base + n]; through a slice, so the index is a non-negative loop
    counter (no wraparound test) and the loop vectorizes."""
    s = src[base:base + n]
    for m in range(n):
        dst[m] += s[m]


@nb.njit(nogil=True, inline="always", cache=True)
def _taps(Kin, Tin, t_zero, want_t, Hp, Wp, fh, fw, sh, sw, i, ii, Wo, R, row, rowt):
    """row[j R + j'] = sum_{u, v} Kin[sh i + u, sh i' + u, sw j + v, sw j' + v] (and Tin's): the
    same offset on both members of the pair (Novak et al. 2019, eq. (7))."""
    n = (Wo - 1) * R + Wo
    tt = want_t and not t_zero
    for m in range(n):
        row[m] = 0.0
    if tt:
        for m in range(n):
            rowt[m] = 0.0
    for u in range(fh):
        slab = _at(sh * i + u, sh * ii + u, 0, 0, Hp, Wp)
        for v in range(fw):
            if sw == 1:  # R = Wp: one flat loop over the slab shifted by (v, v)
                base = slab + v * Wp + v
                _accumulate(row, Kin, base, n)
                if tt:
                    _accumulate(rowt, Tin, base, n)
            else:
                for j in range(Wo):
                    base = slab + (sw * j + v) * Wp + v
                    rb = j * R
                    for jj in range(Wo):
                        row[rb + jj] += Kin[base + sw * jj]
                    if tt:
                        for jj in range(Wo):
                            rowt[rb + jj] += Tin[base + sw * jj]


@nb.njit(nogil=True, error_model="numpy", cache=True)
def _conv(Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, Ho, Wo, w, b, Kout, Tout, Hpo, Wpo, oh, ow, row,
          rowt):
    R = Wpi if sw == 1 else Wo
    n = (Wo - 1) * R + Wo
    for dlt in range(1 - Ho, Ho):  # along diagonals: row pair (i, i') reuses (i-1, i'-1)'s slabs
        for i in range(max(0, -dlt), min(Ho, Ho - dlt)):
            ii = i + dlt
            _taps(Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, i, ii, Wo, R, row, rowt)
            for m in range(n):
                row[m] = w * row[m] + b
            if want_t:
                if t_zero:
                    for m in range(n):
                        rowt[m] = row[m]
                else:
                    for m in range(n):
                        rowt[m] = row[m] + w * rowt[m]
            _store(row, rowt, want_t, Kout, Tout, Hpo, Wpo, oh, ow, i, ii, Wo, R)


@nb.njit(nogil=True, error_model="numpy", cache=True)
def _pool(Kin, Tin, want_t, Hpi, Wpi, wh, ww, sh, sw, Ho, Wo, div_h, div_w, Kout, Tout, Hpo, Wpo, oh, ow, row,
          rowt):
    """sum_{o, o'} K[st s + o, st s' + o'] / divisors: both offsets independent (pools)."""
    n = Wpi * Wpi
    slab_k, slab_t = np.empty(n), np.empty(n)
    for i in range(Ho):
        for ii in range(Ho):
            for m in range(n):
                slab_k[m] = 0.0
                slab_t[m] = 0.0
            for u in range(wh):
                for u2 in range(wh):
                    base = _at(sh * i + u, sh * ii + u2, 0, 0, Hpi, Wpi)
                    _accumulate(slab_k, Kin, base, n)
                    if want_t:
                        _accumulate(slab_t, Tin, base, n)
            dh = div_h[i] * div_h[ii]
            for j in range(Wo):
                ob = _at(oh + i, oh + ii, ow + j, ow, Hpo, Wpo)
                for jj in range(Wo):
                    acc = 0.0
                    acct = 0.0
                    for v in range(ww):
                        for v2 in range(ww):
                            q = (sw * j + v) * Wpi + sw * jj + v2
                            acc += slab_k[q]
                            acct += slab_t[q]
                    den = dh * div_w[j] * div_w[jj]
                    Kout[ob + jj] = acc / den
                    if want_t:
                        Tout[ob + jj] = acct / den


@nb.njit(nogil=True, cache=True)
def _wrap(K, H, W, lo_h, lo_w):
    """Fill the padding of K (4-D (Hp, Hp, Wp, Wp); interior (H, H, W, W) at (lo_h, lo_h, lo_w,
    lo_w)) with the periodic images."""
    Hp, Wp = K.shape[0], K.shape[2]
    for a in range(Hp):
        ia = (a - lo_h) % H + lo_h
        for e in range(Hp):
            ie = (e - lo_h) % H + lo_h
            for c in range(Wp):
                ic = (c - lo_w) % W + lo_w
                inner = ia == a and ie == e and ic == c
                for f in range(Wp):
                    if inner and lo_w <= f < lo_w + W:
                        continue
                    K[a, e, c, f] = K[ia, ie, ic, (f - lo_w) % W + lo_w]


@nb.njit(nogil=True, cache=True)
def _gram(xa, xbT, Hp, Wp, K):
    """K[a, e, c, f] = x_(a, c) . x'_(e, f) over the padded grid (xa (Hp Wp, C) with 1/C folded
    in, xbT (C, Hp Wp)): the input layer."""
    C = xa.shape[1]
    for a in range(Hp):
        for e in range(Hp):
            for c in range(Wp):
                base = _at(a, e, c, 0, Hp, Wp)
                dst = K[base:base + Wp]
                for f in range(Wp):
                    dst[f] = 0.0
                for ch in range(C):
                    x = xa[a * Wp + c, ch]
                    src = xbT[ch, e * Wp:(e + 1) * Wp]
                    for f in range(Wp):
                        dst[f] += x * src[f]


@nb.njit(nogil=True, cache=True)
def _reduce(K, H, W, kind):
    """flatten (0): the mean of K[s, s]; mean (1) / sum (2) over all pairs, slab by slab."""
    if kind == 0:
        acc = 0.0
        for i in range(H):
            for j in range(W):
                acc += K[_at(i, i, j, j, H, W)]
        return acc / (H * W)
    total = 0.0
    n = W * W
    for m in range(H * H):
        part = 0.0
        for q in range(n):
            part += K[m * n + q]
        total += part
    return total / (H * W) ** 2 if kind == 1 else total


@nb.njit(nogil=True, cache=True)
def _diag_std(K, H, W, Hp, Wp, oh, ow):
    s = np.empty(H * W)
    for i in range(H):
        for j in range(W):
            s[i * W + j] = np.sqrt(K[_at(oh + i, oh + i, ow + j, ow + j, Hp, Wp)])
    return s


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------

class _ZeroVariance(Exception):
    """A pixel of zero variance before an activation: the layer path handles that case."""


def _buffers(p: Plan, want_t):
    """Per-thread buffers: for op k its padded input (K, T, (Hp, Wp)) (flat (Hp Wp)^2 arrays),
    the last one the terminal's input; and two row scratches. Ops with the same input layout
    (size, padding, wrap) share buffers, alternating two (op k reads one, writes the other), so
    a deep network holds two sets per layout, not one per layer; the zero padding is never
    written, so it stays zero for every op that shares it."""
    keys = [(op.in_hw, op.pad, op.circular) for op in p.ops] + [(p.ops[-1].out_hw, (0, 0, 0, 0), False)]
    pool, bufs, dims = {}, [], []
    for k, key in enumerate(keys):
        (H, W), (lh, hh, lw, hw), _ = key
        H, W = H + lh + hh, W + lw + hw
        if (key, k % 2) not in pool:
            K = np.zeros((H * W) ** 2)
            pool[key, k % 2] = (K, np.zeros_like(K) if want_t else K, (H, W))
        bufs.append(pool[key, k % 2])
        dims.append((H, W))
    n = max(W * W for _, W in dims)  # a row block: at most one padded (Wp x Wp) slab
    return bufs, np.zeros(n), np.zeros(n)


def _pad_image(x, op: _Op):
    lh, hh, lw, hw = op.pad
    return np.pad(x, ((lh, hh), (lw, hw), (0, 0)), mode="wrap" if op.circular else "constant")


def _pair(p: Plan, xa, xb, sa, sb, want_t, scratch, record):
    """(K, Theta) of one pair at the terminal; ``record``: the slots' standard deviations (self pair)."""
    bufs, row, rowt = scratch
    K, T, (Hp, Wp) = bufs[0]
    # the input layer, K[s, s'] = x_s . x'_s' / C, over the padded grid (zero or wrapped rows)
    _gram(xa, xb, Hp, Wp, K)
    t_zero = True
    for k, op in enumerate(p.ops):
        Kin, Tin, (Hpi, Wpi) = bufs[k]
        Kout, Tout, (Hpo, Wpo) = bufs[k + 1]
        nxt = p.ops[k + 1] if k + 1 < len(p.ops) else None
        oh, ow = (nxt.pad[0], nxt.pad[2]) if nxt is not None else (0, 0)
        Ho, Wo = op.out_hw
        if op.kind == "conv":
            (fh, fw), (sh, sw) = op.window, op.strides
            if op.act is not None and record is None:
                op.act[0](Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, Ho, Wo, op.w, op.b, sa[op.act_slot],
                          sb[op.act_slot], Kout, Tout, Hpo, Wpo, oh, ow, row, rowt)
            else:
                _conv(Kin, Tin, t_zero, want_t, Hpi, Wpi, fh, fw, sh, sw, Ho, Wo, op.w, op.b, Kout, Tout, Hpo, Wpo,
                      oh, ow, row, rowt)
                if op.act is not None:
                    _self_map(op, Kout, Tout, want_t, Ho, Wo, Hpo, Wpo, oh, ow, record)
            t_zero = False
        elif op.kind == "pool":
            (wh, ww), (sh, sw) = op.window, op.strides
            _pool(Kin, Tin, want_t and not t_zero, Hpi, Wpi, wh, ww, sh, sw, Ho, Wo, op.div_h, op.div_w, Kout, Tout,
                  Hpo, Wpo, oh, ow, row, rowt)
        else:  # an activation after a pool: copy into the next buffer's interior, map in place
            for src, dst in ((Kin, Kout), (Tin, Tout)) if want_t else ((Kin, Kout),):
                dst.reshape(Hpo, Hpo, Wpo, Wpo)[oh:oh + Ho, oh:oh + Ho, ow:ow + Wo, ow:ow + Wo] = \
                    src.reshape(Ho, Ho, Wo, Wo)
            if record is None:
                op.act[1](Kout, Tout, want_t, Ho, Wo, Hpo, Wpo, oh, ow, sa[op.act_slot], sb[op.act_slot])
            else:
                _self_map(op, Kout, Tout, want_t, Ho, Wo, Hpo, Wpo, oh, ow, record)
        if nxt is not None and nxt.circular:
            for buf in ((Kout, Tout) if want_t else (Kout,)):
                _wrap(buf.reshape(Hpo, Hpo, Wpo, Wpo), Ho, Wo, oh, ow)
    K, T, (H, W) = bufs[-1]
    kind = {"flatten": 0, "mean": 1, "sum": 2}[p.terminal]
    return _reduce(K, H, W, kind), (_reduce(T, H, W, kind) if want_t and not t_zero else 0.0)


def _self_map(op, K, T, want_t, H, W, Hp, Wp, oh, ow, record):
    s = _diag_std(K, H, W, Hp, Wp, oh, ow)
    if not np.all(s > 0):
        raise _ZeroVariance
    record[op.act_slot] = s
    op.act[1](K, T, want_t, H, W, Hp, Wp, oh, ow, s, s)


def _chunks(n1, n2, symmetric, size):
    """(a, b0, b1): the pairs (a, b) for b0 <= b < b1, in chunks of about ``size`` pairs (b > a
    when symmetric), generated lazily: nothing of size N^2 is ever held but the output."""
    for a in range(n1):
        start = a + 1 if symmetric else 0
        for b0 in range(start, n2, size):
            yield a, b0, min(b0 + size, n2)


def run(p: Plan, X1, X2, symmetric, want_ntk, threads=None):
    """(nngp, ntk, cov1, cov2) at the terminal: (N1, N2) arrays and the self values (N1,), (N2,)
    (None when symmetric); None when a pixel has zero variance before an activation (the layer
    path handles that case). A progress bar (tqdm) shows when the call is long."""
    from tqdm.auto import tqdm

    from limitlab.numerics.arrays import single_threaded_blas

    H, W = p.spatial_in
    C = X1.shape[-1]
    first = p.ops[0]

    def images(X, left):  # padded for the first layer: (Hp Wp, C) with 1/C on the left, (C, Hp Wp) right
        X = X.reshape(X.shape[0], H, W, C)
        flat = [_pad_image(x, first).reshape(-1, C) for x in X]
        return [np.ascontiguousarray(f / C if left else f.T) for f in flat]

    left1, right1 = images(X1, True), images(X1, False)
    left2, right2 = (left1, right1) if symmetric else (images(X2, True), images(X2, False))
    n1, n2 = len(left1), len(right2)
    threads = threads or nb.get_num_threads()
    local = threading.local()

    def scratch():
        if not hasattr(local, "s"):
            local.s = _buffers(p, want_ntk)
        return local.s

    def self_pairs(left, right):
        def one(a):
            rec = [None] * p.n_slots
            return _pair(p, left[a], right[a], None, None, want_ntk, scratch(), rec), rec
        return one

    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2)) if want_ntk else None
    total = n1 * (n1 - 1) // 2 if symmetric else n1 * n2
    # ~ P_in^2 entry-updates a pair per conv layer; a bar when that is long (~ 1e10: tens of seconds)
    work = total * (H * W) ** 2 * max(1, sum(op.kind == "conv" for op in p.ops))
    bar = tqdm(total=total, desc="kernel pairs", unit="pair", disable=work < 1e10, leave=False)
    chunks = _chunks(n1, n2, symmetric, max(1, min(64, total // (8 * threads) or 1)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                task = next(chunks, None)
            if task is None:
                return
            a, b0, b1 = task
            for b in range(b0, b1):
                k, t = _pair(p, left1[a], right2[b], sa[a], sb[b], want_ntk, scratch(), None)
                nngp[a, b] = k
                if want_ntk:
                    ntk[a, b] = t
                if symmetric:  # the mirror, exactly
                    nngp[b, a] = k
                    if want_ntk:
                        ntk[b, a] = t
            bar.update(b1 - b0)

    try:
        with single_threaded_blas(), ThreadPoolExecutor(max_workers=threads) as pool:
            s1 = list(pool.map(self_pairs(left1, right1), range(n1)))
            s2 = s1 if symmetric else list(pool.map(self_pairs(left2, right2), range(n2)))
            sa, sb = [r[1] for r in s1], [r[1] for r in s2]
            for f in [pool.submit(worker) for _ in range(threads)]:
                f.result()
    except _ZeroVariance:
        return None
    finally:
        bar.close()
    selfv = np.array([r[0] for r in s1])
    if symmetric:
        idx = np.arange(n1)
        nngp[idx, idx] = selfv[:, 0]
        if want_ntk:
            ntk[idx, idx] = selfv[:, 1]
        return nngp, ntk, None, None
    return nngp, ntk, selfv[:, 0], np.array([r[0] for r in s2])[:, 0]

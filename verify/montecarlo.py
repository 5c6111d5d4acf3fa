"""The fast MLP sampler: empirical kernels of ensembles of finite MLPs.

Forward and backward passes, training and every other architecture live in the finite-network
engine :mod:`limitlab.verify.networks` (which draws the same MLPs from the same seeds: network
i's weights of ``serial(Dense(n, w, b), Relu(), Dense(1, w, b))`` are this module's
``MLP(1, "relu", w, b)`` ones); this module keeps the MLP-only kernel samplers, whose
Gaussian-conditioning path (below) is what makes MLP ensembles fast.

Networks are those of :class:`limitlab.theory.kernels.MLP` (neural-tangents' conventions,
Novak et al. 2020): ``depth`` hidden Dense->activation layers, then a Dense readout;
layer l computes ``h = sqrt(w_l/fan_in) a W + sqrt(b_l) beta`` with ``W, beta ~ N(0, 1)``.
Both parametrizations have the same function at initialization; they differ in what is
trained, hence in the NTK. The samplers keep *effective* weights
``sqrt(w_l/fan_in) W`` and a per-layer NTK coefficient:

* NTK parametrization: ``c_W = w_l/fan_in``, ``c_b = b_l``;
* standard parametrization: ``c_W = 1``, ``c_b = 1`` when the layer has a bias.

The empirical NTK of one network is exact (Jacot et al. 2018, eq. 2, written per layer;
no autodiff): ``Theta(x, x') = sum_l [c_W (a^{l-1}(x).a^{l-1}(x')) + c_b] (g^l(x).g^l(x'))``
with a^{l-1} the layer's input and g^l = df/dh^l the backpropagated signal (g = 1 at the
readout). The empirical NNGP of one network is the readout-integrated covariance
``w_{L+1} a^L(x).a^L(x')/n_L + b_{L+1}``: the output covariance over the readout weights
given the last hidden layer, exactly, with O(1/n) variance per network.

Two samplers give the same distribution of these per-network kernels:

* ``method="weights"`` materializes every weight matrix: O(N n^2) per layer.
* ``method="conditional"`` never materializes hidden-to-hidden weights. Given a layer's
  input ``a`` (N x m), ``W`` splits into ``Q U + (I - Q Q^T) W'`` with ``a^T = Q R`` (thin QR),
  ``U = Q^T W`` iid Gaussian and ``W'`` independent; the forward pass needs only ``U``
  (``a W = R^T U``) and the backward pass ``g W^T = (g U^T) Q^T + V (I - Q Q^T)`` with
  ``V = g W'^T`` sampled as ``R_g^T Z`` from the thin QR ``g^T = Q_g R_g``. Exact in
  distribution (Gaussian conditioning, as in Yang 2019, "Tensor Programs I", Lemma on
  conditioning), at O(N^2 n) per layer. Computed without QR: with the Cholesky factor
  ``L L^T = a a^T`` (the Gram matrix, also one of the NTK's terms), ``R = L^T`` and
  ``Q = a^T L^-T``, so ``a W = L U`` and ``g W^T = V + [(g U^T) - (V a^T) L^-T] L^-1 a``
  with ``V = L_g Z`` (``L_g L_g^T = g g^T``): five N x N x n products a hidden layer, Q never
  formed. A network whose Gram matrices are singular or ill-conditioned (more inputs than
  units; dead or proportional rows) is redone by thin QR from the same draws; repeated
  inputs are evaluated once. ``method="auto"`` picks it where it was measured faster (see
  :func:`_auto_method`).

For kernels, the weights sampler keeps each weight matrix as its N(0, 1) draws and applies
the scale to the (N x fan_out) products rather than to the matrix. On the NumPy backend,
chunks of networks run on worker threads (as many as Numba's), each on single-threaded BLAS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from limitlab.numerics import arrays
from limitlab.numerics import validation as validate
from limitlab.theory import activations as _act
from limitlab.verify.backend import Backend, get_backend

__all__ = ["NetworkSpec", "as_spec", "network_seeds", "KernelSamples", "sample_kernels"]

SeedLike = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]


# --------------------------------------------------------------------------------------
# The network description
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkSpec:
    """Finite-width MLP description: what the engine needs from an ``MLP`` plus its widths."""

    depth: int
    activation: object
    weight_var: tuple  # depth + 1 values
    bias_var: Optional[tuple]  # depth + 1 values, or None (no biases)
    parametrization: str
    widths: tuple  # depth hidden widths
    n_outputs: int = 1

    @property
    def has_bias(self) -> bool:
        return self.bias_var is not None

    def fan_ins(self, d: int) -> list:
        return [d] + list(self.widths)

    def coefficients(self, d: int):
        """Per Dense layer (c_W, c_b): the NTK weight of its weight and bias gradients."""
        out = []
        for l, fan in enumerate(self.fan_ins(d)):
            w = self.weight_var[l]
            b = 0.0 if self.bias_var is None else self.bias_var[l]
            if self.parametrization == "ntk":
                out.append((w / fan, b))
            else:
                out.append((1.0, 1.0 if self.has_bias else 0.0))
        return out


def _layer_values(value, name, n, allow_none=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name}: must be given, got None")
    vals = np.atleast_1d(validate.real_array(value, name, at_least=0))
    if vals.ndim != 1 or vals.size not in (1, n):
        raise ValueError(f"{name}: must be a number or {n} numbers (one per Dense layer), got {value!r}")
    return tuple(float(v) for v in np.broadcast_to(vals, (n,)))


def as_spec(mlp=None, width=None, *, depth=None, activation=None, weight_var=1.0, bias_var=0.0,
            parametrization="ntk", n_outputs: int = 1) -> NetworkSpec:
    """A :class:`NetworkSpec` from an ``MLP`` (theory object) and a width, or from keywords.

    ``width`` overrides the MLP's own ``width``; it is a positive integer or one per hidden layer.
    """
    if isinstance(mlp, NetworkSpec):
        spec = mlp
        if width is None:
            return spec
        depth, activation, weight_var = spec.depth, spec.activation, spec.weight_var
        bias_var, parametrization, n_outputs = spec.bias_var, spec.parametrization, spec.n_outputs
    elif mlp is not None:
        for attr in ("depth", "activation", "weight_var", "bias_var", "parametrization"):
            if not hasattr(mlp, attr):
                raise TypeError(f"mlp: expected an MLP-like object with .{attr}, got {type(mlp).__name__}")
        depth, activation, weight_var = mlp.depth, mlp.activation, mlp.weight_var
        bias_var, parametrization = mlp.bias_var, mlp.parametrization
        if width is None:
            width = getattr(mlp, "width", None)
    depth = validate.integer(depth, "depth", minimum=1)
    validate.choice(parametrization, "parametrization", ("ntk", "standard"))
    if width is None:
        raise ValueError("width: a finite network needs a hidden width (a positive integer), got None")
    widths = np.atleast_1d(np.asarray(width))
    if widths.ndim != 1 or widths.size not in (1, depth) or widths.dtype.kind not in "iu" and not np.all(
            widths == np.round(widths)):
        raise ValueError(f"width: expected a positive integer or {depth} of them, got {width!r}")
    widths = tuple(validate.integer(int(v), "width", minimum=1) for v in np.broadcast_to(widths, (depth,)))
    return NetworkSpec(depth, _act.get(activation), _layer_values(weight_var, "weight_var", depth + 1),
                       _layer_values(bias_var, "bias_var", depth + 1, allow_none=True), parametrization, widths,
                       validate.integer(n_outputs, "n_outputs", minimum=1))


def network_seeds(seed: SeedLike, n: int) -> np.ndarray:
    """One 63-bit seed per network: network i's weights never depend on the batching."""
    if isinstance(seed, np.random.Generator):
        return seed.integers(0, 2 ** 63 - 1, size=n, dtype=np.int64)
    if seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        return (ss.generate_state(n, dtype=np.uint64) >> np.uint64(1)).astype(np.int64)
    raise TypeError(f"seed: expected an int, a numpy Generator or SeedSequence, got {type(seed).__name__}")


def _check_X(X, name, d=None) -> np.ndarray:
    X = validate.real_array(X, name, finite=False)  # the kind first, then the shape, then the entries
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: must be a non-empty array of shape (N, d), got shape {X.shape}")
    X = validate.real_array(X, name)
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name}: feature dimension {X.shape[1]} does not match the networks' input dimension {d}")
    return X


def _T(xp, a):
    return xp.matrix_transpose(a)


def _gram(xp, a):
    return xp.matmul(a, _T(xp, a))


def _split(xp, normals, shapes):
    """Views of consecutive segments of (B, count) normals reshaped to (B, *shape)."""
    out, off = [], 0
    B = normals.shape[0]
    for shape in shapes:
        k = int(np.prod(shape))
        out.append(xp.reshape(normals[:, off:off + k], (B, *shape)))
        off += k
    return out


def _assemble(xp, spec, coef, acts, gs, d_in, A=None, G=None):
    """NNGP and NTK (B, N, N) from the layer inputs acts[0..L] and signals gs[0..L-1]; ``A[l]``
    and ``G[l]``, where given (not None), are the Gram matrices of acts[l] and gs[l] already
    computed."""
    L = spec.depth
    A = [_gram(xp, a) if A is None or A[l] is None else A[l] for l, a in enumerate(acts)]
    w_out = spec.weight_var[L]
    b_out = 0.0 if spec.bias_var is None else spec.bias_var[L]
    nngp = (w_out / acts[L].shape[-1]) * A[L] + b_out
    cW, cb = coef[L]
    ntk = cW * A[L] + cb
    for l in range(L):
        Gl = _gram(xp, gs[l]) if G is None or G[l] is None else G[l]
        cW, cb = coef[l]
        ntk = ntk + (cW * A[l] + cb) * Gl
    return nngp, ntk


def _slice_cross(nngp, ntk, N1, cross):
    if not cross:
        return nngp, ntk
    return nngp[:, :N1, N1:], ntk[:, :N1, N1:]


# --------------------------------------------------------------------------------------
# Materialized-weights sampler for kernels (method="weights")
# --------------------------------------------------------------------------------------

def _act_and_derivative(act, h, xp, bk):
    """(phi(h), phi'(h)). ReLU on NumPy in one pass each, ``max(h, 0)`` and the mask ``h > 0``
    (a boolean array: multiplying by it gives exactly what multiplying by phi' = 1.0 / 0.0
    gives); the activation's own array functions otherwise."""
    if bk.name == "numpy" and act.name == "relu" and tuple(act.params) == (0.0, 1.0):
        return np.maximum(h, 0.0), h > 0
    return act(h, xp), act.derivative(h, xp)


def _normals(bk: Backend, seeds, count: int, scratch=None):
    """``bk.normals(seeds, count)``; on NumPy in float64 with a ``scratch`` namespace (one per
    worker thread), the same streams written into a buffer reused across calls, which spares
    the kernel zeroing fresh pages for every chunk (tens of MB a chunk)."""
    if scratch is None or bk.name != "numpy" or bk.dtype not in (None, np.float64):
        return bk.normals(seeds, count)
    B = len(seeds)
    buf = getattr(scratch, "normals", None)
    if buf is None or buf.shape[0] < B or buf.shape[1] != count:
        buf = scratch.normals = np.empty((B, count), dtype=np.float64)
    out = buf[:B]
    for i, s in enumerate(seeds):
        np.random.default_rng(int(s)).standard_normal(out=out[i])
    return out


def _weights_kernels(spec: NetworkSpec, X: np.ndarray, bk: Backend, seeds, scratch=None):
    """Per-network (NNGP, NTK, outputs) of materialized networks (the draws of
    ``limitlab.verify.networks.FiniteNetworks.sample`` for the same MLP), evaluated without forming
    the scaled weights.

    Each weight matrix is kept as its N(0, 1) draws ``Z``; its scale ``s = sqrt(w/fan_in)``
    is applied to the (N x fan_out) products instead of the (fan_in x fan_out) matrix:
    ``h = s (a Z) + sqrt(b) beta`` forward and ``g^l = (g^{l+1} Z^T) (s phi'(h^l))`` backward
    (equal to the engine's path up to floating-point rounding).
    """
    xp, act = bk.xp, spec.activation
    N, d = X.shape
    L = spec.depth
    bias = spec.has_bias
    fans = spec.fan_ins(d)
    outs = list(spec.widths) + [1]
    shapes = []
    for fi, fo in zip(fans, outs):
        shapes.append((fi, fo))
        if bias:
            shapes.append((fo,))
    z = _split(xp, _normals(bk, seeds, sum(int(np.prod(s)) for s in shapes), scratch), shapes)
    Z = z[0::2] if bias else z
    beta = z[1::2] if bias else [None] * (L + 1)
    scale = [math.sqrt(spec.weight_var[l] / fans[l]) for l in range(L + 1)]
    Xb = bk.asarray(X)
    a = Xb
    acts, ders = [Xb], []
    for l in range(L):
        h = xp.matmul(a, Z[l])
        h *= scale[l]
        if bias:
            h += math.sqrt(spec.bias_var[l]) * beta[l][:, None, :]
        a, der = _act_and_derivative(act, h, xp, bk)
        del h
        acts.append(a)
        ders.append(der)
    v = Z[L][..., 0]  # (B, n_L): the readout's draws
    f = scale[L] * xp.matmul(a, Z[L])[..., 0]
    if bias:
        f = f + math.sqrt(spec.bias_var[L]) * beta[L]
    # backward: g^L = s_L v phi'(h^L); g^l = (g^{l+1} Z_l^T) (s_l phi'(h^l)), Z_l the weights of layer l
    g = (scale[L] * v)[:, None, :] * ders[L - 1]
    gs = [g]
    for l in range(L - 1, 0, -1):
        g = xp.matmul(g, _T(xp, Z[l]))
        g *= ders[l - 1]
        g *= scale[l]
        gs.append(g)
    del z, Z, ders
    nngp, ntk = _assemble(xp, spec, spec.coefficients(d), acts, gs[::-1], d)
    return nngp, ntk, f


# --------------------------------------------------------------------------------------
# Gaussian-conditioning sampler (method="conditional")
# --------------------------------------------------------------------------------------

# largest accepted ||L||_F ||L^-1||_F of a layer input's Gram factor (bounds sqrt(cond_2(a a^T))):
# beyond it a network is redone by thin QR, which is stable at any rank
_COND_LIMIT = 1e4


def _conditional_draws(spec: NetworkSpec, N: int, d: int):
    """Shapes of a network's draws, in a fixed order: layer-1 weights (bias row last), per
    hidden-to-hidden layer U and Z, the readout (bias last)."""
    L, n, bias = spec.depth, spec.widths, spec.has_bias
    fans = spec.fan_ins(d)
    shapes = [(d + bias, n[0])]
    for l in range(1, L):
        m = fans[l] + bias
        shapes += [(min(m, N), n[l]), (min(n[l], N), m)]
    shapes.append((fans[L] + bias,))
    return shapes


def _conditional_first_layer(spec, Xb, bk, z):
    xp = bk.xp
    d = Xb.shape[-1]
    W1 = z[0]
    h = math.sqrt(spec.weight_var[0] / d) * xp.matmul(Xb, W1[:, :d, :])
    if spec.has_bias:
        h = h + math.sqrt(spec.bias_var[0]) * W1[:, d:, :]
    return h


def _conditional_readout(spec, acts, ders, z, xp):
    """Outputs and the readout's backpropagated signal g^L."""
    L, bias = spec.depth, spec.has_bias
    fL = acts[L].shape[-1]
    v = z[-1]
    s = math.sqrt(spec.weight_var[L] / fL)
    f = s * xp.matmul(acts[L], v[:, :fL, None])[..., 0]
    if bias:
        f = f + math.sqrt(spec.bias_var[L]) * v[:, fL:]
    return f, (s * v[:, None, :fL]) * ders[L - 1]


def _tril_matmul(xp, bk: Backend, Lc, M):
    """Lc @ M for lower-triangular Lc (B, N, N): on NumPy in four row bands, each skipping the
    zero upper block (5/8 of the dense product's flops; BLAS's own trmm is slower here)."""
    N = Lc.shape[-1]
    if bk.name != "numpy" or N < 64:
        return xp.matmul(Lc, M)
    out = np.empty(Lc.shape[:-1] + M.shape[-1:], dtype=np.result_type(Lc, M))
    step = -(-N // 4)
    for i in range(0, N, step):
        e = min(i + step, N)
        np.matmul(Lc[..., i:e, :e], M[..., :e, :], out=out[..., i:e, :])
    return out


def _tril_inv(xp, bk: Backend, Lc):
    """Inverse of lower-triangular Lc (B, N, N): on NumPy by 2 x 2 blocks,
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]`` down to 64 x 64 (a third of
    the flops of a general inverse; NumPy has no triangular inverse)."""
    N = Lc.shape[-1]
    if bk.name != "numpy" or N <= 64:
        return xp.linalg.inv(Lc)
    k = N // 2
    A, D = _tril_inv(xp, bk, Lc[..., :k, :k]), _tril_inv(xp, bk, Lc[..., k:, k:])
    out = np.zeros_like(Lc)
    out[..., :k, :k] = A
    out[..., k:, k:] = D
    out[..., k:, :k] = -np.matmul(D, np.matmul(Lc[..., k:, :k], A))
    return out


def _conditional_start(spec: NetworkSpec, Xb, bk: Backend, z):
    """What both conditional samplers start from: (xp, activation, N, d, depth, networks B, bias,
    fan-ins, first layer's pre-activations)."""
    N, d = Xb.shape
    return (bk.xp, spec.activation, N, d, spec.depth, z[0].shape[0], spec.has_bias, spec.fan_ins(d),
            _conditional_first_layer(spec, Xb, bk, z))


def _conditional_cholesky(spec: NetworkSpec, Xb, bk: Backend, z):
    """(NNGP, NTK, outputs, ok) by Gaussian conditioning with Cholesky factors of Gram matrices.

    Layer l's input ``at`` (N x m, with the bias as a constant column) has Gram ``G = at at^T = L L^T``;
    then ``Q = at^T L^-T`` is an orthonormal basis of its row space (``at^T = Q L^T``: the thin
    QR with R = L^T), and with ``U = Q^T W`` the forward pass is ``at W = L U``. Backward, with
    ``V = L_g Z`` (``L_g L_g^T = g g^T``), ``g W^T = (g U^T) Q^T + V (I - Q Q^T)
    = V + [(g U^T) - (V at^T) L^-T] L^-1 at``: Q is never formed, and every product is a GEMM
    of N x N by N x n or N x n by n x N. ``ok[i]`` is False where a factor of network i is
    ill-conditioned (its result is then not used); a failed factorization raises.
    """
    xp, act, N, d, L, B, bias, fans, h = _conditional_start(spec, Xb, bk, z)
    acts, ders = [xp.broadcast_to(Xb, (B, N, d))], []
    A, Linvs = [None] * (L + 1), [None] * L
    ok = np.ones(B, dtype=bool)
    for l in range(1, L + 1):
        a, der = _act_and_derivative(act, h, xp, bk)
        del h
        acts.append(a)
        ders.append(der)
        if l == L:
            break
        sigma = math.sqrt(spec.weight_var[l] / fans[l])
        Ga = _gram(xp, a)
        A[l] = Ga
        c = (math.sqrt(spec.bias_var[l]) / sigma if sigma > 0 else 0.0) if bias else 0.0
        Lc = xp.linalg.cholesky(Ga + c * c if c != 0.0 else Ga)
        Li = _tril_inv(xp, bk, Lc)
        Linvs[l] = Li
        cond = xp.sqrt(xp.sum(xp.reshape(Lc * Lc, (B, -1)), axis=1) * xp.sum(xp.reshape(Li * Li, (B, -1)), axis=1))
        ok &= np.asarray(bk.to_numpy(cond)) <= _COND_LIMIT
        U = z[1 + 2 * (l - 1)]
        h = _tril_matmul(xp, bk, Lc, U)
        h *= sigma
    f, g = _conditional_readout(spec, acts, ders, z, xp)
    gs, G = [g], [None] * L
    for l in range(L - 1, 0, -1):
        sigma = math.sqrt(spec.weight_var[l] / fans[l])
        c = (math.sqrt(spec.bias_var[l]) / sigma if sigma > 0 else 0.0) if bias else 0.0
        U, Z = z[1 + 2 * (l - 1)], z[2 + 2 * (l - 1)]
        a, Li, n_in = acts[l], Linvs[l], fans[l]
        Gg = _gram(xp, g)
        G[l] = Gg
        Lg = xp.linalg.cholesky(Gg)
        # a backend that returns NaN for a failed factorization (CuPy) rather than raising
        ok &= np.isfinite(np.asarray(bk.to_numpy(xp.sum(xp.linalg.diagonal(Lg), axis=-1))))
        V = _tril_matmul(xp, bk, Lg, Z)  # (B, N, m): g W'^T in distribution
        T2 = xp.matmul(V[..., :n_in], _T(xp, a))  # V at^T
        if bias:
            T2 = T2 + c * V[..., n_in:]
        M = xp.matmul(g, _T(xp, U)) - xp.matmul(T2, _T(xp, Li))
        g = V[..., :n_in] + xp.matmul(xp.matmul(M, Li), a)
        g *= ders[l - 1]
        g *= sigma
        gs.append(g)
    gs = gs[::-1]
    nngp, ntk = _assemble(xp, spec, spec.coefficients(d), acts, gs, d, A=A, G=G)
    return nngp, ntk, f, ok


def _qr_positive(xp, M):
    """Thin QR with R's diagonal made >= 0 (columns of Q and rows of R flipped together): then
    R^T is the Cholesky factor of M^T M where that exists, and the QR and Cholesky paths give
    the same numbers from the same draws."""
    Q, R = xp.linalg.qr(M)
    r = R.shape[-2]
    sgn = xp.where(xp.linalg.diagonal(R[..., :r, :r]) < 0, -1.0, 1.0)
    sgn = xp.astype(sgn, R.dtype)
    return Q * sgn[..., None, :], R * sgn[..., :, None]


def _conditional_qr(spec: NetworkSpec, Xb, bk: Backend, z):
    """Per-network (NNGP, NTK, outputs) by Gaussian conditioning with thin QR factorizations
    (stable at any rank: more inputs than units, duplicate or dependent rows); see the module
    docstring."""
    xp, act, N, d, L, B, bias, fans, h = _conditional_start(spec, Xb, bk, z)
    acts, ders, Qs = [xp.broadcast_to(Xb, (B, N, d))], [], []
    for l in range(1, L + 1):
        a = act(h, xp)
        acts.append(a)
        ders.append(act.derivative(h, xp))
        if l == L:
            break
        sigma = math.sqrt(spec.weight_var[l] / fans[l])
        at = a
        if bias:  # the bias as one more input column, scaled to the weights' variance
            c = math.sqrt(spec.bias_var[l]) / sigma if sigma > 0 else 0.0
            at = xp.concat([a, c * xp.ones((B, N, 1), dtype=bk.dtype, device=bk.device)], axis=-1)
        Q, R = _qr_positive(xp, _T(xp, at))  # at^T = Q R, Q (B, m, r)
        Qs.append(Q)
        U = z[1 + 2 * (l - 1)]
        h = sigma * xp.matmul(_T(xp, R), U)
    f, g = _conditional_readout(spec, acts, ders, z, xp)
    gs = [g]
    for l in range(L - 1, 0, -1):
        sigma = math.sqrt(spec.weight_var[l] / fans[l])
        Q = Qs[l - 1]
        U, Z = z[1 + 2 * (l - 1)], z[2 + 2 * (l - 1)]
        t = xp.matmul(xp.matmul(g, _T(xp, U)), _T(xp, Q))
        _, Rg = _qr_positive(xp, _T(xp, g))  # g^T = Q_g R_g: V = g W'^T ~ R_g^T Z
        V = xp.matmul(_T(xp, Rg), Z)
        V = V - xp.matmul(xp.matmul(V, Q), _T(xp, Q))
        g = (sigma * (t + V))[..., :fans[l]] * ders[l - 1]
        gs.append(g)
    gs = gs[::-1]
    nngp, ntk = _assemble(xp, spec, spec.coefficients(d), acts, gs, d)
    return nngp, ntk, f


def _conditional_kernels(spec: NetworkSpec, X: np.ndarray, bk: Backend, seeds, scratch=None):
    """Per-network (NNGP, NTK, outputs) by Gaussian conditioning; see the module docstring.

    Cholesky factors of the N x N Gram matrices where every hidden width is at least N and
    every factor is well conditioned; otherwise (per network, so that a network's result
    never depends on the batching) thin QR factorizations, from the same draws.
    """
    xp = bk.xp
    N, d = X.shape
    B = len(seeds)
    shapes = _conditional_draws(spec, N, d)
    z = _split(xp, _normals(bk, seeds, sum(int(np.prod(s)) for s in shapes), scratch), shapes)
    Xb = bk.asarray(X)
    if N > min(spec.widths):  # rank-deficient Gram matrices: QR throughout
        return _conditional_qr(spec, Xb, bk, z)
    try:
        nngp, ntk, f, ok = _conditional_cholesky(spec, Xb, bk, z)
    except Exception as exc:  # a failed Cholesky factorization (a singular Gram matrix)
        if not _is_linalg_error(exc):
            raise
        if B == 1:
            return _conditional_qr(spec, Xb, bk, z)
        ok = None
    if ok is not None and ok.all():
        return nngp, ntk, f
    parts = []
    for i in range(B):  # network by network: its own Cholesky factors if they serve, else QR
        if ok is not None and ok[i]:
            parts.append((nngp[i:i + 1], ntk[i:i + 1], f[i:i + 1]))
            continue
        zi = [t[i:i + 1] for t in z]
        r = None
        if ok is None:  # the batch's factorization failed somewhere: this network's own
            try:
                *r, oki = _conditional_cholesky(spec, Xb, bk, zi)
                r = tuple(r) if oki[0] else None
            except Exception as exc:
                if not _is_linalg_error(exc):
                    raise
                r = None
        parts.append(r if r is not None else _conditional_qr(spec, Xb, bk, zi))
    return tuple(xp.concat([p[k] for p in parts], axis=0) for k in range(3))


def _is_linalg_error(exc) -> bool:
    """A failed factorization, whichever the backend: NumPy's LinAlgError, torch's
    torch.linalg.LinAlgError (a RuntimeError), CuPy's."""
    return isinstance(exc, np.linalg.LinAlgError) or "LinAlgError" in type(exc).__name__ or \
        "positive-definite" in str(exc) or "not positive definite" in str(exc)


# --------------------------------------------------------------------------------------
# Ensembles of kernels
# --------------------------------------------------------------------------------------

@dataclass
class KernelSamples:
    """Per-network empirical kernels of an ensemble (host NumPy arrays)."""

    nngp: np.ndarray  # (S, N1, N2) readout-integrated NNGP of each network
    ntk: np.ndarray  # (S, N1, N2) exact empirical NTK of each network
    outputs: np.ndarray  # (S, N1 + N2) outputs f(x) at initialization (X2's rows after X1's)
    width: tuple
    seed: object
    backend: str
    method: str
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def n_networks(self) -> int:
        return int(self.ntk.shape[0])

    @staticmethod
    def _mean_se(a):
        S = a.shape[0]
        return a.mean(axis=0), a.std(axis=0, ddof=1) / math.sqrt(S) if S > 1 else np.full(a.shape[1:], np.inf)

    def nngp_mean(self):
        """(mean, standard error) of the NNGP over networks."""
        return self._mean_se(self.nngp)

    def ntk_mean(self):
        """(mean, standard error) of the NTK over networks."""
        return self._mean_se(self.ntk)

    def output_cov(self):
        """(covariance, standard error) of the raw outputs across the ensemble: f(x) f(x')
        averaged over networks (the outputs have mean zero exactly)."""
        f = self.outputs
        return self._mean_se(f[:, :, None] * f[:, None, :])


def _auto_method(N: int, widths) -> str:
    """The faster sampler on the CPU, by measurement (NumPy, float64, ReLU depth 3, 2 shared
    cores, December 2026; weights time / conditional time per network): at N = n/4 conditional
    is faster (n = 256: 1.16x, 1024: 1.26x, 2048: 1.28x), at N = 3n/8 (n = 1024: 0.88x) and
    N = n/2 (n = 256, 1024, 2048: 0.64x, 0.69x, 0.59x) slower; docs/benchmarks.md. Conditional
    costs ~10 N^2 n per hidden layer plus N x N factorizations and N (2n + 1) draws, weights
    4 N n^2 and n^2 draws."""
    return "conditional" if 4 * N <= min(widths) else "weights"


def _auto_batch(bk: Backend, spec: NetworkSpec, N: int, d: int, method: str, n_networks: int) -> int:
    n = max(spec.widths)
    L = spec.depth
    per = (3 * L + 4) * N * n + N * N * (L + 4)
    per += (d + 1) * n + (L * 2 * (n + 1) * min(N, n) if method == "conditional" else L * (n + 1) * n)
    per *= 8 if "64" in str(bk.dtype) else 4
    return max(1, min(n_networks, bk.batch_budget() // max(per, 1)))


def _cpu_workers(bk: Backend, n_networks: int) -> int:
    """Worker threads for the NumPy backend (as many as Numba's, at most one per network);
    1 for the other backends, which batch on their device."""
    if bk.name != "numpy" or n_networks < 2:
        return 1
    import numba

    return max(1, min(numba.get_num_threads(), n_networks))


def sample_kernels(mlp, X1, X2=None, *, width=None, n_networks: int = 64, seed: SeedLike = 0, backend="auto",
                   method: str = "auto", batch_size: Optional[int] = None, progress: bool = False,
                   keep_device: bool = False) -> KernelSamples:
    """Empirical NNGP and NTK of ``n_networks`` independent finite MLPs on X1 (and X2).

    ``mlp`` is a ``limitlab.theory.kernels.MLP`` (or a :class:`NetworkSpec`); ``width`` is
    the hidden width (defaults to the MLP's). Network i's weights depend only on
    ``(seed, i)``, never on ``batch_size`` or ``method``'s batching.
    """
    import time

    spec = as_spec(mlp, width)
    validate.choice(method, "method", ("auto", "weights", "conditional"))
    X1 = _check_X(X1, "X1")
    N1 = X1.shape[0]
    X = X1 if X2 is None else np.concatenate([X1, _check_X(X2, "X2", X1.shape[1])])
    N, d = X.shape
    bk = get_backend(backend)
    n_networks = validate.integer(n_networks, "n_networks", minimum=1)
    # repeated inputs: the networks are evaluated once per distinct input (the kernels' rows and
    # columns of a repeated input are copies); for the conditional sampler this keeps the Gram
    # matrices nonsingular. Distinct rows keep their order of first appearance.
    Xu, expand = X, None
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    if len(first) < N:
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        Xu, expand = X[first[order]], rank[np.ravel(inverse)]
    Nu = Xu.shape[0]
    method = _auto_method(Nu, spec.widths) if method == "auto" else method
    seeds = network_seeds(seed, n_networks)
    bs = (validate.integer(batch_size, "batch_size", minimum=1) if batch_size
          else _auto_batch(bk, spec, Nu, d, method, n_networks))
    nngps, ntks, fs = [], [], []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        import sys

        bar = tqdm(total=n_networks, desc="networks", file=sys.stderr, disable=not sys.stderr.isatty())
    import threading

    scratch = threading.local()  # per worker thread: the weights sampler's normals buffer

    idx = None if expand is None else bk.xp.asarray(expand, device=bk.device)

    def chunk(sd):
        if method == "weights":
            nngp, ntk, f = _weights_kernels(spec, Xu, bk, sd, scratch)
        else:
            nngp, ntk, f = _conditional_kernels(spec, Xu, bk, sd, scratch)
        if idx is not None:
            take = bk.xp.take
            nngp = take(take(nngp, idx, axis=1), idx, axis=2)
            ntk = take(take(ntk, idx, axis=1), idx, axis=2)
            f = take(f, idx, axis=1)
        nngp, ntk = _slice_cross(nngp, ntk, N1, X2 is not None)
        if not keep_device:
            nngp, ntk, f = bk.to_numpy(nngp), bk.to_numpy(ntk), bk.to_numpy(f)
        return nngp, ntk, f

    workers = _cpu_workers(bk, n_networks)
    if workers > 1 and not batch_size:
        # chunks small enough for every worker to have several, and memory for all in flight
        bs = max(1, min(max(1, bs // workers), -(-n_networks // (4 * workers))))
    starts = range(0, n_networks, bs)
    if workers > 1:
        # NumPy: whole chunks of networks on worker threads (NumPy's random streams, BLAS and
        # ufuncs release the GIL), each on single-threaded BLAS: independent single-threaded
        # products beat one threaded BLAS at these sizes, and do not collapse when the cores
        # are shared (a threaded BLAS spin-waits on busy cores)
        from concurrent.futures import ThreadPoolExecutor

        with arrays.single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(chunk, seeds[s:s + bs]) for s in starts]
            for fut, s in zip(futures, starts):
                nngp, ntk, f = fut.result()
                nngps.append(nngp), ntks.append(ntk), fs.append(f)
                if bar is not None:
                    bar.update(len(seeds[s:s + bs]))
    else:
        for s in starts:
            nngp, ntk, f = chunk(seeds[s:s + bs])
            nngps.append(nngp), ntks.append(ntk), fs.append(f)
            if bar is not None:
                bar.update(len(seeds[s:s + bs]))
    if bar is not None:
        bar.close()
    cat = (lambda parts: bk.xp.concat(parts, axis=0)) if keep_device else (lambda parts: np.concatenate(parts))
    bk.synchronize()
    return KernelSamples(cat(nngps), cat(ntks), cat(fs), spec.widths, seed if isinstance(seed, (int, np.integer))
                         else None, bk.name, method, time.perf_counter() - t0, {"batch_size": bs})

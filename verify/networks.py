"""Finite-width networks of any ``limitlab.theory.kernels.stax`` description, and their empirical kernels.

One description, three products: ``net = serial(Conv(8, (3,)), Relu(), Flatten(), Dense(1))``
gives the limiting NNGP/NTK (``net.kernels(X)``), the finite network of width n
(:func:`at_width`: every hidden Dense/Conv gets n outputs, channels counting as width, attention
its output, key/value dimensions or heads (see :func:`at_width`), and the final Dense readout
one), its per-network empirical kernels (:func:`sample_kernels`), which converge to the limit
as n grows, and its gradient-descent training (:func:`train`: the one trainer of the verify
checks, in the layers' own parametrizations or an abc-parametrization of Yang & Hu 2021).

Conventions (those of :mod:`limitlab.verify.montecarlo`, extended to every layer):

* NTK parametrization (Jacot et al. 2018, eq. 1; Novak et al. 2020, Neural Tangents, sec. 3):
  a Dense/Conv layer computes ``sqrt(weight_var / fan_in) W x + sqrt(bias_var) b`` with
  ``W, b ~ N(0, 1)`` and ``fan_in = in_chan * prod(filter_shape)``; every layer draws its bias
  (a zero ``bias_var`` multiplies it by 0), so ``serial(Dense(n, w, b), Relu(), Dense(1, w, b))``
  and montecarlo's ``MLP(1, "relu", w, b)`` draw the same numbers in the same order: per
  layer, ``W`` (fan_in x fan_out, row-major; for Conv the rows run over (filter offsets...,
  input channel)) then ``b``, layers in the order of the forward pass. A standard-parametrized
  layer (``parametrization="standard"``) holds the same draws times ``sqrt(weight_var /
  fan_in)``, ``sqrt(bias_var)`` and computes ``W x + b``. Per-input noise (Dropout's masks,
  ``stax.PER_INPUT``) is drawn after every parameter.
* Seeds: network i's parameters are the stream ``backend.normals([seeds[i]], count)`` with
  ``seeds = montecarlo.network_seeds(seed, n_networks)``: same seed, same networks, whatever
  the batching (NumPy and array-api-strict share NumPy's streams; torch and CuPy have their own).
* Empirical NNGP of one network: the readout-integrated covariance, the covariance of the
  output over the readout's parameters given the penultimate features ``a``:
  ``(w_out / F) a(x).a(x') + b_out`` (O(n^-1/2) fluctuations, exact mean at the penultimate
  layer).
* Empirical NTK of one network: exact, ``Theta(x, x') = sum over parameter tensors of
  <df(x)/dtheta, df(x')/dtheta>`` (Jacot et al. 2018, eq. 2) from the hand-written backward
  pass of each layer in stax.py (no autodiff): for a weight shared over positions (Conv, Dense
  on pixels) ``c_W sum_{p,p'} (A_p(x).A_p'(x')) (g_p(x).g_p'(x')) + c_b (sum_p g_p(x)).(sum_p'
  g_p'(x'))`` with patches A, output gradients g, ``c_W = w / fan_in``, ``c_b = b``.

Flatten is the reshape (the next Dense then has fan_in = P C: the covariance is the kernel
rule's mean over pixels, as in neural-tangents); FanInConcat along channels concatenates
branches of width n each, so the limit to compare with is that of ``at_width(net, n)``
(whose concatenation weights are equal), which :func:`limit` returns.

Cost per network (N inputs, P pixels, widths n, filter size k): a Conv layer's forward pass
``O(N P k n^2)``, its NTK part ``min(N^2 P^2 (k n + n), N P k n^2 + N^2 k n^2)``; the im2col
selection matrices add ``O(N P_in P_out k n)`` per layer (cheap for images with fewer pixels
than channels). Networks run in batches sized to a 256 MB budget (30% of free memory on a GPU).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitlab.numerics import arrays
from limitlab.numerics import validation as validate
from limitlab.theory.kernels import stax
from limitlab.theory.kernels.attention import GlobalSelfAttention
from limitlab.verify.backend import Backend, get_backend
from limitlab.verify.montecarlo import KernelSamples, SeedLike, network_seeds

__all__ = ["at_width", "limit", "FiniteNetworks", "sample_kernels", "TrainResult", "train"]


def _check_net(net):
    if not isinstance(net, stax.Layer):
        raise TypeError(f"net: expected a stax layer (serial(...), Dense(...), ...), got {type(net).__name__}")


def _leaves(net) -> list:
    """The layers of nested serials, in order (parallel branches stay one element)."""
    if isinstance(net, stax._Serial):
        return [leaf for layer in net.layers for leaf in _leaves(layer)]
    return [net]


def at_width(net, width: Optional[int] = None, n_outputs: int = 1):
    """The finite network's description: every Dense/Conv's out_dim/out_chan set to ``width``
    (declared in_dim/in_chan dropped, as they name the original widths) except the readout, the
    final Dense, which gets ``n_outputs`` outputs (1: a scalar network). ``width=None`` keeps
    the declared widths.

    GlobalSelfAttention: ``n_chan_out = width``; with ``linear_scaling=True`` also ``n_chan_key =
    n_chan_val = width`` and ``n_heads`` as declared (the logits ``Q K^T / (C d_k)`` concentrate
    on ``c(x)`` as d_k and C grow, Hron et al. 2020); with ``linear_scaling=False`` (identity
    mechanism) ``n_heads = width`` and ``n_chan_key``/``n_chan_val`` as declared (each head's
    logits ``Q K^T / (C sqrt(d_k))`` stay Gaussian at any d_k, so only the average over heads
    converges to the kernel rule's expectation; growing d_k and d_v as well would cost n^3)."""
    _check_net(net)
    if width is not None:
        width = validate.integer(width, "width", minimum=1)
    n_outputs = validate.integer(n_outputs, "n_outputs", minimum=1)
    leaves = _leaves(net)
    readout = leaves[-1]
    if type(readout) is not stax.Dense:
        raise ValueError(f"net: the last layer must be a Dense readout (Dense(1)) for a scalar output, got "
                         f"{readout!r}")

    def rebuild(layer):
        if layer is readout:
            new = copy.copy(layer)
            new.out_dim = n_outputs
            if width is not None:
                new.in_dim = None
            return new
        if isinstance(layer, stax._Combinator):
            new = copy.copy(layer)
            new.layers = tuple(rebuild(sub) for sub in layer.layers)
            return new
        if width is not None and isinstance(layer, stax.Dense):
            new = copy.copy(layer)
            new.out_dim, new.in_dim = width, None
            return new
        if width is not None and isinstance(layer, stax.Conv):
            new = copy.copy(layer)
            new.out_chan, new.in_chan = width, None
            return new
        if width is not None and isinstance(layer, GlobalSelfAttention):
            new = copy.copy(layer)
            new.n_chan_out = width
            if layer.linear_scaling:  # logits concentrate as d_k grows; heads as declared
                new.n_chan_key = new.n_chan_val = width
            else:  # each head's logits stay Gaussian: only the average over heads concentrates
                new.n_heads = width
            return new
        return layer

    return rebuild(net)


def limit(net, X1, X2=None, width: Optional[int] = None):
    """The limiting ``Kernels(nngp, ntk)`` that :func:`sample_kernels` at ``width`` converges to
    (stax's kernels of ``at_width(net, width)``: only FanInConcat's weights can differ from net's)."""
    return at_width(net, width).kernels(X1, X2)


def _split_body(net):
    """(body, readout) of an ``at_width`` description."""
    leaves = _leaves(net)
    body = stax.serial(*leaves[:-1]) if len(leaves) > 1 else stax.Identity()
    return body, leaves[-1]


class FiniteNetworks:
    """B finite networks of one stax description (effective parameters as N(0, 1) draws).

    ``params[j]`` has shape ``(B, *param_shapes[j])``; the last two are the readout's W (F, 1)
    and b (1,). Build with :meth:`sample`.
    """

    def __init__(self, net, in_shape, params, backend: Backend, seeds):
        self.net, self.in_shape, self.params, self.backend = net, tuple(in_shape), list(params), backend
        self.seeds = np.asarray(seeds)
        self.body_desc, self.readout_desc = _split_body(net)
        self.body, self.readout = _setup(self.body_desc, self.readout_desc, self.in_shape)

    @staticmethod
    def structure(net, in_shape):
        """(body, readout) finite setups of an ``at_width`` description on per-input shape ``in_shape``."""
        return _setup(*_split_body(net), tuple(in_shape))

    @classmethod
    def sample(cls, net, in_shape, n_networks: int = 1, seed: SeedLike = 0, backend="auto",
               width: Optional[int] = None, seeds=None, n_inputs: Optional[int] = None) -> "FiniteNetworks":
        """``n_networks`` networks of ``at_width(net, width)`` for inputs of per-input shape ``in_shape``
        (``n_inputs``: the number of inputs, needed only by per-input noise: Dropout in train mode)."""
        _check_net(net)
        in_shape = tuple(validate.integer(int(s), "in_shape entries", minimum=1) for s in in_shape)
        net._finite(in_shape, "")  # the description as given must fit the inputs (declared in_dim, ...)
        fin = at_width(net, width)
        bk = get_backend(backend)
        seeds = (network_seeds(seed, validate.integer(n_networks, "n_networks", minimum=1)) if seeds is None
                 else np.asarray(seeds))
        body, readout = _setup(*_split_body(fin), in_shape)
        params = _draw(bk, seeds, body.param_shapes + readout.param_shapes, body.init_scales + readout.init_scales,
                       n_inputs)
        return cls(fin, in_shape, params, bk, seeds)

    @property
    def n_networks(self) -> int:
        return int(self.params[0].shape[0])

    def _x(self, X, name="X"):
        X = stax._check_inputs(X, name)
        if X.shape[1:] != self.in_shape:
            raise ValueError(f"{name}: per-input shape {X.shape[1:]} does not match the networks' {self.in_shape}")
        xp, bk = self.backend.xp, self.backend
        Xb = bk.asarray(X)
        return xp.broadcast_to(xp.reshape(Xb, (1, *Xb.shape)), (self.n_networks, *Xb.shape))

    def forward(self, X, params=None):
        """Outputs (B, N) on inputs X (N, *in_shape); ``params`` replaces the networks' parameters."""
        params = self.params if params is None else list(params)
        xp = self.backend.xp
        nb = self.body.n_params
        a, _ = self.body.forward(xp, params[:nb], self._x(X))
        f, _ = self.readout.forward(xp, params[nb:], a)
        return f[..., 0]

    def kernels(self, X1, X2=None):
        """Per-network (NNGP, NTK, outputs): (B, N1, N2), (B, N1, N2) and (B, N1 + N2), on the backend."""
        X1 = stax._check_inputs(X1, "X1")
        N1 = X1.shape[0]
        X = X1 if X2 is None else np.concatenate([X1, stax._check_inputs(X2, "X2")])
        nngp, ntk, f = _kernels(self.backend, self.body, self.readout, self.params, self._x(X))
        if X2 is not None:
            nngp, ntk = nngp[:, :N1, N1:], ntk[:, :N1, N1:]
        return nngp, ntk, f


def _setup(body_desc, readout_desc, in_shape, cond=None):
    body = body_desc._finite(in_shape, "", cond)
    feat = body.out_shape
    if isinstance(feat, list) or len(feat) != 1:
        raise ValueError(f"{readout_desc!r} (the readout): needs flat features (N, F), got per-input shape {feat}; "
                         "add Flatten() or GlobalAvgPool() before it")
    return body, readout_desc._finite(feat, " (the readout)")


def _draw(bk: Backend, seeds, shapes, scales=None, n_inputs: Optional[int] = None):
    """Per-network parameters, ``scales[j]`` (default 1) times N(0, 1) draws: one stream per
    network, consumed in the order of ``shapes``, the per-input noise (shapes starting with
    ``stax.PER_INPUT``, its N(0, 1) draws for ``n_inputs`` inputs) after every parameter, so
    that a network's parameters do not depend on the number of inputs."""
    xp = bk.xp
    noise = [bool(s) and s[0] == stax.PER_INPUT for s in shapes]
    if any(noise) and n_inputs is None:
        raise ValueError("n_inputs: the network draws per-input noise (Dropout in train mode); give the number of "
                         "inputs it will be evaluated on")
    full = [(n_inputs, *s[1:]) if nz else tuple(s) for s, nz in zip(shapes, noise)]
    order = [j for j in range(len(full)) if not noise[j]] + [j for j in range(len(full)) if noise[j]]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in full]
    z = bk.normals(seeds, sum(sizes))
    out, off = [None] * len(full), 0
    for j in order:
        a = xp.reshape(z[:, off:off + sizes[j]], (len(seeds), *full[j]))
        scale = 1.0 if scales is None or noise[j] else float(scales[j])
        out[j] = a if scale == 1.0 else scale * a
        off += sizes[j]
    return out


def _kernels(bk, body, readout, params, x):
    """(NNGP, NTK, outputs) of the networks ``params`` on the batched inputs x (B, N, ...)."""
    xp = bk.xp
    nb = body.n_params
    a, cache_b = body.forward(xp, params[:nb], x)
    f, cache_r = readout.forward(xp, params[nb:], a)
    B, N, F = a.shape
    r = readout.param_shapes  # [(F, 1), (1,)]
    assert r == [(F, 1), (1,)]
    w_out, b_out = readout.coef
    nngp = (w_out / F) * xp.matmul(a, xp.matrix_transpose(a)) + b_out
    acc = []
    g = readout.backward(xp, params[nb:], cache_r, xp.ones((B, N, 1), dtype=a.dtype, device=_device(a)), acc, True)
    body.backward(xp, params[:nb], cache_b, g, acc, False)
    ntk = acc[0]
    for part in acc[1:]:
        ntk = ntk + part
    return nngp, ntk, f[..., 0]


def _device(a):
    import array_api_compat

    return array_api_compat.device(a)


def _auto_batch(bk: Backend, body, readout, N: int, n_networks: int) -> int:
    n_par = sum(int(np.prod([N if d == stax.PER_INPUT else d for d in s], dtype=np.int64))
                for s in body.param_shapes + readout.param_shapes)
    per = 8 * (2 * n_par + 4 * N * (body.floats + readout.floats))
    return max(1, min(n_networks, bk.batch_budget() // max(per, 1)))


def sample_kernels(net, X1, X2=None, *, width: Optional[int] = None, n_networks: int = 64, seed: SeedLike = 0,
                   backend="auto", method: str = "auto", batch_size: Optional[int] = None,
                   keep_device: bool = False) -> KernelSamples:
    """Empirical NNGP and NTK of ``n_networks`` independent finite networks ``at_width(net, width)``
    on X1 (and X2), as montecarlo.sample_kernels' :class:`KernelSamples` (``width`` the tuple of
    the hidden width, ``meta`` the batch size, the per-input shape and the architecture).

    ``method="weights"`` materializes every parameter (the networks of
    :meth:`FiniteNetworks.sample`, same draws); ``"conditional"`` samples each Dense/Conv layer
    whose N P_out patch rows are fewer than its fan-in and fan-out by Gaussian conditioning
    (stax's ``_conditional_affine``: exact in distribution, O(N P n) normals instead of
    O(k n^2)); ``"auto"``: conditional for N <= 64 inputs (batched QR is slow beyond), else
    weights. Network i's parameters depend only on ``(seed, i, method)``, never on ``batch_size``."""
    _check_net(net)
    validate.choice(method, "method", ("auto", "weights", "conditional"))
    X1 = stax._check_inputs(X1, "X1")
    N1 = X1.shape[0]
    if X2 is not None:
        X2 = stax._check_inputs(X2, "X2")
        if X2.shape[1:] != X1.shape[1:]:
            raise ValueError(f"X2: per-input shape {X2.shape[1:]} does not match X1's {X1.shape[1:]}")
    X = X1 if X2 is None else np.concatenate([X1, X2])
    in_shape = X.shape[1:]
    net._finite(in_shape, "")  # validates the description as given
    fin = at_width(net, width)
    bk = get_backend(backend)
    n_networks = validate.integer(n_networks, "n_networks", minimum=1)
    seeds = network_seeds(seed, n_networks)
    if method == "auto":
        method = "conditional" if X.shape[0] <= 64 else "weights"
    body, readout = _setup(*_split_body(fin), in_shape, X.shape[0] if method == "conditional" else None)
    bs = (validate.integer(batch_size, "batch_size", minimum=1) if batch_size
          else _auto_batch(bk, body, readout, X.shape[0], n_networks))
    xp = bk.xp
    Xb = bk.asarray(X)
    t0 = time.perf_counter()
    parts = []
    # the products are small (N P rows): on the CPU, single-threaded BLAS (threaded BLAS spin-waits
    # on shared cores, as montecarlo notes); on a GPU the context is a no-op for the device
    with arrays.single_threaded_blas():
        for s in range(0, n_networks, bs):
            sd = seeds[s:s + bs]
            params = _draw(bk, sd, body.param_shapes + readout.param_shapes, body.init_scales + readout.init_scales,
                           X.shape[0])
            x = xp.broadcast_to(xp.reshape(Xb, (1, *Xb.shape)), (len(sd), *Xb.shape))
            nngp, ntk, f = _kernels(bk, body, readout, params, x)
            if X2 is not None:
                nngp, ntk = nngp[:, :N1, N1:], ntk[:, :N1, N1:]
            if not keep_device:
                nngp, ntk, f = bk.to_numpy(nngp), bk.to_numpy(ntk), bk.to_numpy(f)
            parts.append((nngp, ntk, f))
    cat = (lambda i: xp.concat([p[i] for p in parts], axis=0)) if keep_device else (
        lambda i: np.concatenate([p[i] for p in parts]))
    bk.synchronize()
    widths = () if width is None else (int(width),)
    return KernelSamples(cat(0), cat(1), cat(2), widths, seed if isinstance(seed, (int, np.integer)) else None,
                         bk.name, method, time.perf_counter() - t0,
                         {"batch_size": bs, "in_shape": tuple(in_shape), "architecture": repr(fin)})


# --------------------------------------------------------------------------------------
# Gradient-descent training
# --------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """Records of full-batch gradient descent, one row per network (host NumPy arrays)."""

    steps: np.ndarray  # (T,) recorded step indices (0 = initialization)
    f_train: np.ndarray  # (S, T, N, k) outputs on the training inputs
    loss: np.ndarray  # (S, T) the MSE loss (without weight decay)
    f_test: Optional[np.ndarray] = None  # (S, T, M, k) outputs on X_test
    ntk_train: Optional[np.ndarray] = None  # (S, T, N, N) empirical NTK of the dynamics, record "ntk"
    features: Optional[np.ndarray] = None  # (S, T, N, F) a layer's outputs (flattened), record "features"
    readout: Optional[np.ndarray] = None  # (S, T, F, k) effective readout weights m_W W, record "readout"
    lr: float = 0.0
    seed: object = None
    backend: str = "numpy"
    parametrization: str = "layers"


class _Layout(stax.ParamSink):
    """Which parameters are affine weights and biases, with their multipliers (from one backward pass)."""

    def __init__(self, params):
        self.index = {id(p): j for j, p in enumerate(params)}
        self.info = {}

    def take(self, xp, params, A, G, mult, sd):
        W, b = params
        self.info[self.index[id(W)]] = ("W", mult[0], sd[0])
        self.info[self.index[id(b)]] = ("b", mult[1], sd[1])


class _Gradients(stax.ParamSink):
    """dLoss/dtheta of every affine parameter: ``m_W A^T G`` and ``m_b sum G`` over inputs and pixels
    (G = dLoss/dh: the backward pass seeded with dLoss/df)."""

    def __init__(self, params):
        self.index = {id(p): j for j, p in enumerate(params)}
        self.grads = [None] * len(params)

    def take(self, xp, params, A, G, mult, sd):
        W, b = params
        B, N, P, F = A.shape
        O = G.shape[-1]
        Gm = xp.reshape(G, (B, N * P, O))
        self.grads[self.index[id(W)]] = mult[0] * xp.matmul(xp.matrix_transpose(xp.reshape(A, (B, N * P, F))), Gm)
        if mult[1] != 0.0:
            self.grads[self.index[id(b)]] = mult[1] * xp.sum(Gm, axis=1)


class _WeightedNTK(stax.ParamSink):
    """The NTK of the gradient-descent dynamics: each parameter's gradient Gram weighted by its
    rate over the base rate (1 for every parameter in the layers' own parametrization)."""

    def __init__(self, params, weights):
        self.index = {id(p): j for j, p in enumerate(params)}
        self.weights, self.parts = weights, []

    def take(self, xp, params, A, G, mult, sd):
        wW, wb = (self.weights[self.index[id(p)]] for p in params)
        self.parts.append(stax._shared_ntk(xp, A, G, wW * mult[0] ** 2, wb * mult[1] ** 2))


def _abc_of(parametrization, n_affine):
    """None (the layers' own parametrization) or an ABC with one entry per affine layer."""
    from limitlab.theory.dynamics import parametrizations as prm

    if parametrization in (None, "layers"):
        return None
    if isinstance(parametrization, str):
        if parametrization.lower() not in prm.PRESETS:
            raise ValueError(f"parametrization: expected 'layers' (each Dense/Conv's own: ntk or standard), one of "
                             f"{', '.join(prm.PRESETS)} (Yang & Hu 2021 presets) or an ABC, got {parametrization!r}")
        return prm.preset(parametrization, n_affine - 1)
    if isinstance(parametrization, prm.ABC):
        p = parametrization
    elif isinstance(parametrization, (tuple, list)) and len(parametrization) == 3:
        p = prm._normalise(*parametrization)
    else:
        raise TypeError(f"parametrization: expected 'layers', a preset name, an ABC or (a, b, c), got "
                        f"{parametrization!r}")
    if len(p.a) != n_affine:
        raise ValueError(f"parametrization: the abc-parametrization has {len(p.a)} layers but the network has "
                         f"{n_affine} Dense/Conv layers (a and b need one exponent per affine layer, input first)")
    return p


def _abc_scales(abc, layout, n: int, lr: float, n_params: int):
    """Per parameter (init factor kappa, rate rho) of the abc-parametrization ``abc`` at width n.

    Yang & Hu 2021 (Tensor Programs IV), sec. 3, eq. (1)-(2) / Table 1: layer l's weights are
    ``W^l = n^{-a_l} w^l``, ``w^l ~ N(0, n^{-2 b_l})``, trained at rate ``eta n^{-c}``; here
    ``W^l = sqrt(weight_var / F~_l) n^{-a_l} w^l`` with ``F~_l`` the fan-in without its width
    factor (d for the input layer, k for a k-tap conv on n channels), so ``ntp`` is the layers'
    NTK parametrization exactly. On a layer that computes ``m A theta`` with ``theta ~ s z``
    (``m s = sqrt(w / F)``): ``kappa = n^{[l > 1]/2 - a_l - b_l}`` multiplies theta's init and
    theta moves at rate ``rho = eta n^{-c} m_abc^2 / m^2`` (SGD depends only on a_l + b_l and
    2 a_l + c: their eq. (5)). Biases are weights on a constant input 1: hidden layers' take the
    input layer's (a_1, b_1); the readout's has init Theta(1) and rate eta (a + b = 0, 2 a + c = 0:
    Tensor Programs V, Table 3's output bias)."""
    affine = sorted(j for j, v in layout.items() if v[0] == "W")
    kappa, rho = [1.0] * n_params, [0.0] * n_params
    a = [float(v) for v in abc.a]
    b = [float(v) for v in abc.b]
    c = float(abc.c)
    L = len(a) - 1
    for l, j in enumerate(affine):
        _, m, s = layout[j]
        if m == 0.0:
            raise ValueError(f"parametrization: affine layer {l} has weight_var 0 (no weights to rescale)")
        wf = 1.0 if l > 0 else 0.0
        kappa[j] = n ** (wf / 2 - a[l] - b[l])
        rho[j] = lr * n ** (-c) * s * s * n ** (wf - 2 * a[l]) / (m * m)
        _, mb, sb = layout[j + 1]
        if mb != 0.0:
            if l < L:
                kappa[j + 1] = n ** (-a[0] - b[0])
                rho[j + 1] = lr * n ** (-c - 2 * a[0]) * sb * sb / (mb * mb)
            else:
                rho[j + 1] = lr * sb * sb / (mb * mb)
    return kappa, rho


def _outputs_of(y, N):
    return validate.rows(y, "y", N).reshape(N, -1)


def train(net, X, y, *, lr: float, steps: int, width: Optional[int] = None, parametrization="layers",
          n_networks: int = 1, seed: SeedLike = 0, backend="auto", X_test=None, record_every: Optional[int] = None,
          record_steps=None, record=(), features_at: Optional[int] = None, loss_scale: str = "mean",
          weight_decay: float = 0.0, init=None, batch_size: Optional[int] = None, callback=None,
          progress: bool = False) -> TrainResult:
    """Full-batch gradient descent of ``n_networks`` finite networks ``at_width(net, width)``
    (readout with k = y's columns outputs) on the MSE loss, on any array backend.

    Loss ``1/(2N) sum_i ||f(x_i) - y_i||^2`` (``loss_scale="mean"``, neural-tangents'
    ``gradient_descent_mse``: the limit is df/dt = -lr Theta (f - y) / N) or ``1/2 sum``
    (``"sum"``), plus ``weight_decay/2 ||theta||^2`` over the trained parameters.
    ``parametrization``: ``"layers"`` trains each Dense/Conv in its own parametrization (ntk or
    standard, every parameter at rate lr); an abc-parametrization (Yang & Hu 2021, sec. 3) is a
    preset name of :mod:`limitlab.theory.dynamics.parametrizations` (``"sp"``, ``"ntp"``,
    ``"mup"``, ``"mf"``), an ``ABC`` or ``(a, b, c)`` with one exponent per affine layer, input
    first: it rescales each parameter's init and rate (see :func:`_abc_scales`; needs ``width``).

    Records at ``record_steps`` (default every ``record_every``, default steps // 100, and the
    last): outputs and loss always; ``record`` may add ``"ntk"`` (the empirical NTK of the
    dynamics on X, scalar outputs), ``"features"`` (the output of the first ``features_at``
    layers of the flattened serial, default all but the readout) and ``"readout"``.
    ``init``: the initial parameters instead of draws, one array per parameter (engine layout:
    Dense W (fan_in, fan_out), b (fan_out,)), with or without the network axis, taken as they
    are (an abc-parametrization then sets only the rates). ``callback(step,
    record)`` gets each recorded step's host arrays as they are recorded; ``progress`` shows a
    bar of the steps (on a terminal). Network i's draws depend only on (seed, i), never on the
    batching.
    """
    _check_net(net)
    validate.positive(lr, "lr")
    steps = validate.integer(steps, "steps", minimum=0)
    validate.choice(loss_scale, "loss_scale", ("mean", "sum"))
    validate.real(weight_decay, "weight_decay", at_least=0)
    bad = set(record) - {"ntk", "features", "readout"}
    if isinstance(record, str) or bad:
        raise ValueError(f"record: expected a collection of 'ntk', 'features', 'readout', got {record!r}")
    X = stax._check_inputs(X, "X")
    N = X.shape[0]
    Y = _outputs_of(y, N)
    k = Y.shape[1]
    if "ntk" in record and k != 1:
        raise ValueError(f"record: the NTK is recorded for scalar outputs; y has {k} columns")
    Xt = None
    if X_test is not None:
        Xt = stax._check_inputs(X_test, "X_test")
        if Xt.shape[1:] != X.shape[1:]:
            raise ValueError(f"X_test: per-input shape {Xt.shape[1:]} does not match X's {X.shape[1:]}")
    if record_steps is None:
        every = (max(1, steps // 100) if record_every is None
                 else validate.integer(record_every, "record_every", minimum=1))
        record_steps = set(range(0, steps + 1, every)) | {steps}
    record_steps = sorted(set(int(t) for t in record_steps))
    if record_steps and (record_steps[0] < 0 or record_steps[-1] > steps):
        raise ValueError(f"record_steps: must lie in [0, {steps}], got {record_steps}")
    net._finite(X.shape[1:], "")  # the description as given must fit the inputs
    fin = at_width(net, width, n_outputs=k)
    leaves = _leaves(fin)
    in_shape = X.shape[1:]
    subs, shape = [], in_shape
    for i, leaf in enumerate(leaves):
        subs.append(leaf._finite(shape, f" at layer {i}"))
        shape = subs[-1].out_shape
    n_leaves = len(leaves)
    f_at = n_leaves - 1 if features_at is None else int(features_at)
    if not 0 <= f_at < n_leaves:
        raise ValueError(f"features_at: must lie in [0, {n_leaves - 1}] (layers of the flattened serial), got "
                         f"{features_at!r}")
    slices, off = [], 0
    for f in subs:
        slices.append(slice(off, off + f.n_params))
        off += f.n_params
    shapes = sum((f.param_shapes for f in subs), [])
    scales = sum((f.init_scales for f in subs), [])
    bk = get_backend(backend)
    xp = bk.xp
    n_networks = validate.integer(n_networks, "n_networks", minimum=1)
    seeds = network_seeds(seed, n_networks)
    n_test = 0 if Xt is None else Xt.shape[0]
    if batch_size is None:
        per = 8 * (4 * sum(int(np.prod([N if d == stax.PER_INPUT else d for d in s])) for s in shapes)
                   + 4 * (N + n_test) * sum(f.floats for f in subs))
        batch_size = max(1, min(n_networks, bk.batch_budget() // max(per, 1)))
    bs = validate.integer(batch_size, "batch_size", minimum=1)
    Xb, Yb = bk.asarray(X), bk.asarray(Y)
    Xtb = None if Xt is None else bk.asarray(Xt)
    scale = 1.0 / N if loss_scale == "mean" else 1.0

    def run(params, x, upto=n_leaves):
        caches, outs = [], (x if f_at == 0 else None)
        for j in range(upto):
            x, c = subs[j].forward(xp, params[slices[j]], x)
            caches.append(c)
            if j == f_at - 1:
                outs = x
        return x, caches, outs

    def backward(params, caches, g, sink):
        for j in range(n_leaves - 1, -1, -1):
            g = subs[j].backward(xp, params[slices[j]], caches[j], g, sink, j > 0)

    def batched(a, B):
        return xp.broadcast_to(xp.reshape(a, (1, *a.shape)), (B, *a.shape))

    abc, kappa, rho, layout = None, None, None, None
    recs = {key: [] for key in ("f", "loss", "ft", "ntk", "feat", "ro")}
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=(steps + 1) * -(-n_networks // bs), desc="training steps", file=sys.stderr,
                   disable=not sys.stderr.isatty())
    # small products: single-threaded BLAS on the CPU, as in sample_kernels (a no-op for a GPU)
    with arrays.single_threaded_blas():
        for s0 in range(0, n_networks, bs):
            sd = seeds[s0:s0 + bs]
            B = len(sd)
            params = _draw(bk, sd, shapes, scales, N)
            if layout is None:  # which parameters are affine weights/biases, with their multipliers
                probe = _Layout(params)
                out, caches, _ = run(params, batched(Xb, B))
                backward(params, caches, xp.ones(out.shape, dtype=out.dtype, device=_device(out)), probe)
                layout = probe.info
                n_affine = sum(v[0] == "W" for v in layout.values())
                abc = _abc_of(parametrization, n_affine)
                if abc is None:
                    kappa, rho = [1.0] * len(shapes), [float(lr) if j in layout else 0.0 for j in range(len(shapes))]
                else:
                    if width is None:
                        raise ValueError("width: an abc-parametrization scales with the width n; give width=n")
                    kappa, rho = _abc_scales(abc, layout, int(width), float(lr), len(shapes))
                readout_W = max(j for j, v in layout.items() if v[0] == "W")
            if init is not None:
                if len(init) != len(shapes):
                    raise ValueError(f"init: expected {len(shapes)} arrays (one per parameter), got {len(init)}")
                params = []
                for j, (a, shp) in enumerate(zip(init, shapes)):
                    a = np.asarray(a, dtype=float)
                    if a.shape == tuple(shp):
                        a = np.broadcast_to(a, (n_networks, *shp))
                    if a.shape != (n_networks, *shp):
                        raise ValueError(f"init[{j}]: expected shape {tuple(shp)} or {(n_networks, *shp)}, got {a.shape}")
                    params.append(bk.asarray(np.ascontiguousarray(a[s0:s0 + B])))
            else:
                params = [p if kappa[j] == 1.0 else kappa[j] * p for j, p in enumerate(params)]
            x = batched(Xb, B)
            xt = None if Xtb is None else batched(Xtb, B)
            rows = {key: [] for key in recs}
            rec = set(record_steps)
            for t in range(steps + 1):
                if bar is not None:
                    bar.update(1)
                f, caches, feat = run(params, x)
                r = f - Yb
                if t in rec:
                    loss = 0.5 * scale * xp.sum(xp.reshape(r * r, (B, -1)), axis=1)
                    row = {"f": bk.to_numpy(f), "loss": bk.to_numpy(loss)}
                    if xt is not None:
                        row["ft"] = bk.to_numpy(run(params, xt)[0])
                    if "ntk" in record:
                        sink = _WeightedNTK(params, [q / lr for q in rho])
                        backward(params, caches, xp.ones(f.shape, dtype=f.dtype, device=_device(f)), sink)
                        ntk = sink.parts[0]
                        for part in sink.parts[1:]:
                            ntk = ntk + part
                        row["ntk"] = bk.to_numpy(ntk)
                    if "features" in record:
                        row["feat"] = bk.to_numpy(xp.reshape(feat, (B, N, -1)))
                    if "readout" in record:
                        row["ro"] = layout[readout_W][1] * bk.to_numpy(params[readout_W])
                    for key, v in row.items():
                        rows[key].append(v)
                    if callback is not None:
                        callback(t, {key: v for key, v in row.items()})
                if t == steps:
                    break
                sink = _Gradients(params)
                backward(params, caches, scale * r, sink)
                for j, g in enumerate(sink.grads):
                    if g is None or rho[j] == 0.0:
                        continue
                    if weight_decay:
                        g = g + weight_decay * params[j]
                    params[j] = params[j] - rho[j] * g
            for key, v in rows.items():
                if v:
                    recs[key].append(np.stack(v, axis=1))
    if bar is not None:
        bar.close()
    cat = lambda key: np.concatenate(recs[key]) if recs[key] else None  # noqa: E731
    name = "layers" if abc is None else (parametrization if isinstance(parametrization, str) else repr(abc))
    return TrainResult(np.asarray(record_steps), cat("f"), cat("loss"), cat("ft"), cat("ntk"), cat("feat"),
                       cat("ro"), float(lr), seed if isinstance(seed, (int, np.integer)) else None, bk.name, name)

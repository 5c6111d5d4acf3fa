"""Finite-width networks of any ``limitlab.theory.kernels.stax`` description, and their empirical kernels.

One description, three products: ``net = serial(Conv(8, (3,)), Relu(), Flatten(), Dense(1))``
gives the limiting NNGP/NTK (``net.kernels(X)``), the finite network of width n
(:func:`at_width`: every hidden Dense/Conv gets n outputs, channels counting as width, attention
its output, key/value dimensions or heads (see :func:`at_width`), and the final Dense readout
one) and its per-network empirical kernels (:func:`sample_kernels`),
which converge to the limit as n grows.

Conventions (those of :mod:`limitlab.verify.montecarlo`, extended to every layer):

* NTK parametrization (Jacot et al. 2018, eq. 1; Novak et al. 2020, Neural Tangents, sec. 3):
  a Dense/Conv layer computes ``sqrt(weight_var / fan_in) W x + sqrt(bias_var) b`` with
  ``W, b ~ N(0, 1)`` and ``fan_in = in_chan * prod(filter_shape)``; every layer draws its bias
  (a zero ``bias_var`` multiplies it by 0), so ``serial(Dense(n, w, b), Relu(), Dense(1, w, b))``
  and montecarlo's ``MLP(1, "relu", w, b)`` draw the same numbers in the same order: per
  layer, ``W`` (fan_in x fan_out, row-major; for Conv the rows run over (filter offsets...,
  input channel)) then ``b``, layers in the order of the forward pass.
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
from typing import Optional

import numpy as np

from limitlab.numerics import arrays
from limitlab.theory.kernels import stax
from limitlab.theory.kernels.attention import GlobalSelfAttention
from limitlab.verify.backend import Backend, get_backend
from limitlab.verify.montecarlo import KernelSamples, SeedLike, network_seeds

__all__ = ["at_width", "limit", "FiniteNetworks", "sample_kernels"]


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def _check_net(net):
    if not isinstance(net, stax.Layer):
        raise TypeError(f"net: expected a stax layer (serial(...), Dense(...), ...), got {type(net).__name__}")


def _leaves(net) -> list:
    """The layers of nested serials, in order (parallel branches stay one element)."""
    if isinstance(net, stax._Serial):
        return [leaf for layer in net.layers for leaf in _leaves(layer)]
    return [net]


def at_width(net, width: Optional[int] = None):
    """The finite network's description: every Dense/Conv's out_dim/out_chan set to ``width``
    (declared in_dim/in_chan dropped, as they name the original widths) except the readout, the
    final Dense, which gets 1 output. ``width=None`` keeps the declared widths (readout: 1).

    GlobalSelfAttention: ``n_chan_out = width``; with ``linear_scaling=True`` also ``n_chan_key =
    n_chan_val = width`` and ``n_heads`` as declared (the logits ``Q K^T / (C d_k)`` concentrate
    on ``c(x)`` as d_k and C grow, Hron et al. 2020); with ``linear_scaling=False`` (identity
    mechanism) ``n_heads = width`` and ``n_chan_key``/``n_chan_val`` as declared (each head's
    logits ``Q K^T / (C sqrt(d_k))`` stay Gaussian at any d_k, so only the average over heads
    converges to the kernel rule's expectation; growing d_k and d_v as well would cost n^3)."""
    _check_net(net)
    if width is not None:
        width = _positive_int(width, "width")
    leaves = _leaves(net)
    readout = leaves[-1]
    if type(readout) is not stax.Dense:
        raise ValueError(f"net: the last layer must be a Dense readout (Dense(1)) for a scalar output, got "
                         f"{readout!r}")

    def rebuild(layer):
        if layer is readout:
            new = copy.copy(layer)
            new.out_dim = 1
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
               width: Optional[int] = None, seeds=None) -> "FiniteNetworks":
        """``n_networks`` networks of ``at_width(net, width)`` for inputs of per-input shape ``in_shape``."""
        _check_net(net)
        in_shape = tuple(_positive_int(int(s), "in_shape entries") for s in in_shape)
        net._finite(in_shape, "")  # the description as given must fit the inputs (declared in_dim, ...)
        fin = at_width(net, width)
        bk = get_backend(backend)
        seeds = network_seeds(seed, _positive_int(n_networks, "n_networks")) if seeds is None else np.asarray(seeds)
        body, readout = _setup(*_split_body(fin), in_shape)
        return cls(fin, in_shape, _draw(bk, seeds, body.param_shapes + readout.param_shapes), bk, seeds)

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


def _draw(bk: Backend, seeds, shapes):
    """Per-network N(0, 1) parameters: one stream per network, consumed in the order of ``shapes``."""
    xp = bk.xp
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    z = bk.normals(seeds, sum(sizes))
    out, off = [], 0
    for s, k in zip(shapes, sizes):
        out.append(xp.reshape(z[:, off:off + k], (len(seeds), *s)))
        off += k
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
    n_par = sum(int(np.prod(s, dtype=np.int64)) for s in body.param_shapes + readout.param_shapes)
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
    if method not in ("auto", "weights", "conditional"):
        raise ValueError(f"method: expected 'auto', 'weights' or 'conditional', got {method!r}")
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
    n_networks = _positive_int(n_networks, "n_networks")
    seeds = network_seeds(seed, n_networks)
    if method == "auto":
        method = "conditional" if X.shape[0] <= 64 else "weights"
    body, readout = _setup(*_split_body(fin), in_shape, X.shape[0] if method == "conditional" else None)
    bs = (_positive_int(batch_size, "batch_size") if batch_size
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
            params = _draw(bk, sd, body.param_shapes + readout.param_shapes)
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

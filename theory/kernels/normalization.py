"""Normalization and dropout layers for :mod:`limitlab.theory.kernels.stax` (kernel side).

Both act on stax's kernel state: the pixel-pair covariance ``K[n1, n2, s, s']`` of shape
``(N1, N2, *S, *S)``, the NTK ``Theta`` of the same shape and the per-input covariances
``(N, *S, *S)``; inputs are channels-last ``(N, *S, C)`` with the batch first.

LayerNorm (Ba, Kiros & Hinton 2016, "Layer normalization", eq. (4)): ``y = (h - mu) / sqrt(eps
+ sigma^2)`` with the mean ``mu`` and variance ``sigma^2`` taken over ``axis`` (which must
contain the channel axis). As the channel count goes to infinity with ``h`` a centred Gaussian
(the output of a Dense/Conv layer), the channel average of ``h`` tends to 0 and that of ``h^2``
at pixel ``s`` to ``K(x, s; x, s)``, so the normalizer of input ``x`` at pixel ``s`` tends to

    v(x, s) = eps + mean over the normalized spatial axes (and the batch, if normalized) of K(x, s; x, s)

(the pixels sharing ``s``'s coordinates on the axes not normalized), and the layer divides by a
deterministic constant (Hron et al. 2020, "Infinite attention: NNGP and NTK for deep attention
networks", ICML, arXiv:2006.10540, its discussion of layer normalisation, cited by topic: no
equation number was checked, see docs/architectures.md; neural-tangents ``stax.LayerNorm``):

    K'[x, x', s, s'] = K[x, x', s, s'] / sqrt(v(x, s) v(x', s')),   Theta' = Theta / sqrt(v(x, s) v(x', s')).

The input must be Gaussian (the output of Dense/Conv, pools or sums of them, or of another
LayerNorm): after an activation the channel mean tends to ``E[phi(h)] != 0``, which the kernel
state does not carry, so that case raises (as neural-tangents does).

Dropout (Srivastava et al. 2014, "Dropout: a simple way to prevent neural networks from
overfitting", JMLR, Sec. 2; neural-tangents ``stax.Dropout``): ``rate`` is the keep
probability. ``mode="test"`` is the identity. ``mode="train"``: ``y = m h / rate`` with i.i.d.
Bernoulli(rate) masks per input, pixel and channel, so ``E[y y'] = E[h h']`` off the diagonal
and ``E[h^2] / rate`` on it: the entries ``(x, s; x, s)`` of the per-input covariances, and of
``K`` and ``Theta`` when X2 is None (the same batch on both sides), are multiplied by ``1/rate``.

Finite side (``_ffinite``, as stax's layers; see stax's "finite side" comment): LayerNorm is
the finite normalization itself, ``y = (h - mean h) / sqrt(eps + var h)`` over the normalized
channel (and spatial) axes of each input, no parameters (Ba et al. 2016, eq. (4), without the
gain and bias; neural-tangents' LayerNorm), with the exact backward pass
``dL/dh = (g - mean g - y mean(g y)) / sqrt(eps + var h)``. Its channel average converges to
the kernel rule's normalizer at rate n^-1/2 (the mean subtraction adds an O(1/n) bias).
Normalizing over the batch axis couples the inputs (the network is then not a function of
each input), so it has no finite network. Dropout in "test" mode is the identity; in "train"
mode each network draws one Bernoulli(rate) mask per input, pixel and channel (per-input noise,
``stax.PER_INPUT``, held fixed), so its ensemble converges to the kernel rule above.
"""
from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np

from limitlab.numerics import validation as validate
from limitlab.theory.kernels.stax import PER_INPUT, Layer, _Finite, _no_params_finite, _prod

__all__ = ["LayerNorm", "Dropout"]


def _check_batch_channel(layer, batch_axis, channel_axis):
    for arg, v, ok in (("batch_axis", batch_axis, (0,)), ("channel_axis", channel_axis, (-1,))):
        if not validate.is_integer(v):
            raise TypeError(f"{layer}: {arg}: must be an integer, got {v!r}")
        if int(v) not in ok:
            raise ValueError(f"{layer}: limitlab.stax is batch-first and channels-last; {arg} must be {ok[0]}, "
                             f"got {v!r}")


class LayerNorm(Layer):
    """Layer normalization ``LayerNorm(axis=-1, eps=1e-12)`` (neural-tangents' name and arguments).

    ``axis``: an int or a tuple of ints indexing the input's axes ``(N, *S, C)`` (negative from
    the end); it must contain the channel axis (-1); spatial axes (and the batch axis 0) may be
    added, as in neural-tangents. ``eps >= 0`` is added to the variance. Kernel rule (module
    docstring; Ba et al. 2016, eq. (4); Hron et al. 2020):
    ``K' = K / sqrt(v(x, s) v(x', s'))``, ``Theta' = Theta / sqrt(v(x, s) v(x', s'))``,
    ``v(x, s) = eps + mean_{normalized axes} K(x, s; x, s)``.
    """

    def __init__(self, axis=-1, eps=1e-12, batch_axis=0, channel_axis=-1):
        if validate.is_integer(axis):
            axis = (int(axis),)
        try:
            axis = tuple(axis)
        except TypeError:
            raise TypeError(f"LayerNorm: axis: must be an integer or a tuple of integers, got {axis!r}") from None
        if not axis or not all(map(validate.is_integer, axis)):
            raise TypeError(f"LayerNorm: axis: must be an integer or a non-empty tuple of integers, got {axis!r}")
        self.axis = tuple(int(a) for a in axis)
        self.eps = validate.real(eps, "LayerNorm: eps", at_least=0)
        _check_batch_channel("LayerNorm", batch_axis, channel_axis)

    def __repr__(self):
        axis = self.axis[0] if len(self.axis) == 1 else self.axis
        return f"LayerNorm(axis={axis}, eps={self.eps:g})"

    def _axes(self, k, name):
        """The normalized axes as (batch?, spatial indices i), checked against the input's shape."""
        shape = k.shape
        ndim = len(shape)
        canon = []
        for a in self.axis:
            if not -ndim <= a < ndim:
                raise ValueError(f"{name}: axis {a} is out of range for an input of shape {shape} (rank {ndim})")
            canon.append(a % ndim)
        if len(set(canon)) != len(canon):
            raise ValueError(f"{name}: axis {self.axis} repeats an axis of the input of shape {shape}")
        if ndim - 1 not in canon:
            raise ValueError(f"{name}: axis {self.axis} must include the channel axis (-1 = {ndim - 1}) of its input "
                             f"of shape {shape}: only the channel average converges in the infinite-width limit")
        return 0 in canon, tuple(a - 1 for a in canon if 0 < a < ndim - 1)

    def _kernel(self, k, name):
        if not k.gaussian:
            raise NotImplementedError(
                f"{name}: LayerNorm's limit is implemented for Gaussian inputs only (the output of a Dense/Conv "
                f"layer, pools or sums of them), as in neural-tangents; after an activation the channel mean "
                f"tends to E[phi(h)] != 0. Put a Dense or Conv before the LayerNorm (input shape {k.shape})")
        batch, spatial_axes = self._axes(k, name)
        c1, c2 = k.covs()
        d = len(k.spatial)
        P = _prod(k.spatial)

        def normalizer(cov):
            n = cov.shape[0]
            v = cov.reshape(n, P * P)[:, :: P + 1].reshape((n,) + k.spatial) + self.eps
            red = ((0,) if batch else ()) + tuple(1 + i for i in spatial_axes)
            if red:
                v = np.broadcast_to(v.mean(axis=red, keepdims=True), v.shape)
            if not np.all(v > 0):
                raise ValueError(f"{name}: an input has zero variance at some pixel and eps=0, so the normalization "
                                 f"divides by zero (input shape {k.shape}); use eps > 0")
            return np.sqrt(v)

        r1 = normalizer(c1)
        r2 = r1 if k.symmetric else normalizer(c2)
        one = (1,) * d

        def outer(a, b):  # (Na, *S), (Nb, *S) -> (Na, Nb, *S, *S)
            return a.reshape((a.shape[0], 1) + a.shape[1:] + one) * b.reshape((1, b.shape[0]) + one + b.shape[1:])

        den = outer(r1, r2)
        nngp = k.nngp / den
        ntk = None if k.ntk is None else k.ntk / den
        cov1 = cov2 = None
        if not k.symmetric:
            def own(r):  # (N, *S) -> (N, *S, *S)
                return r.reshape(r.shape + one) * r.reshape((r.shape[0],) + one + r.shape[1:])

            cov1, cov2 = k.cov1 / own(r1), k.cov2 / own(r2)
        return replace(k, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    def _ffinite(self, shape, name, cond=None):
        """Finite: ``y = (h - mu) / s``, ``s = sqrt(eps + sigma^2)``, the mean ``mu`` and (biased)
        variance ``sigma^2`` over the normalized axes of each input (Ba et al. 2016, eq. (4)); no
        parameters. Backward: ``dL/dh = (g - mean g - y mean(g y)) / s`` over the same axes."""
        shape = tuple(shape)
        full = ("N",) + shape
        ndim = len(full)
        desc = f"(N, {', '.join(map(str, shape))})"
        canon = []
        for a in self.axis:
            if not -ndim <= a < ndim:
                raise ValueError(f"{name}: axis {a} is out of range for an input of shape {desc} (rank {ndim})")
            canon.append(a % ndim)
        if len(set(canon)) != len(canon):
            raise ValueError(f"{name}: axis {self.axis} repeats an axis of the input of shape {desc}")
        if ndim - 1 not in canon:
            raise ValueError(f"{name}: axis {self.axis} must include the channel axis (-1 = {ndim - 1}) of its input "
                             f"of shape {desc}: only the channel average converges in the infinite-width limit")
        if 0 in canon:
            raise NotImplementedError(
                f"{name}: normalizing over the batch axis 0 couples the inputs (the output for one input depends on "
                f"the others), so there is no finite network of per-input functions (input shape {desc}); the "
                f"kernel side supports it")
        axes = tuple(sorted(a + 1 for a in canon))  # (B, N, *S, C): per-input axis a -> array axis a + 1
        eps = self.eps

        def forward(xp, params, h):
            mu = xp.mean(h, axis=axes, keepdims=True)
            c = h - mu
            s = xp.sqrt(xp.mean(c * c, axis=axes, keepdims=True) + eps)
            y = c / s
            return y, (y, s)

        def backward(xp, params, cache, g, acc, need):
            if not need:
                return None
            y, s = cache
            return (g - xp.mean(g, axis=axes, keepdims=True) - y * xp.mean(g * y, axis=axes, keepdims=True)) / s

        return _Finite(shape, [], forward, backward, 2 * _prod(shape))


class Dropout(Layer):
    """Dropout ``Dropout(rate, mode="train")``: ``rate`` in (0, 1] is the keep probability
    (neural-tangents' convention). ``mode="test"``: the identity. ``mode="train"``: the entries
    ``(x, s; x, s)`` of the per-input covariances, and of ``K`` and ``Theta`` when ``X2`` is None,
    times ``1/rate`` (Srivastava et al. 2014, Sec. 2: independent masks, ``E[m^2]/rate^2 = 1/rate``).
    With ``X2`` given, ``K(X1, X2)`` is unchanged (independent masks for the two batches),
    even when X2 holds the same values as X1: pass ``X2=None`` for the same-batch kernel.
    Unlike neural-tangents, Dropout directly on the inputs is allowed: the same rule holds there
    (the input kernel is a channel average too).

    Finite networks (``limitlab.verify.networks``): ``mode="test"`` is the identity;
    ``mode="train"`` multiplies by a mask drawn per network and per input (the i-th input of a
    batch gets the i-th mask: the number of masks is the batch's), held fixed (also in training).
    """

    def __init__(self, rate, mode="train"):
        self.rate = validate.real(rate, "Dropout: rate", above=0, at_most=1, meaning="the keep probability")
        self.mode = validate.choice(mode, "Dropout: mode", ("train", "test"))

    def __repr__(self):
        return f"Dropout({self.rate:g}, mode={self.mode!r})"

    def _kernel(self, k, name):
        if self.mode == "test":
            return k
        f = 1.0 / self.rate
        P = _prod(k.spatial)

        def own(cov):  # (N, *S, *S): scale the diagonal (n, s; n, s)
            n = cov.shape[0]
            out = cov.reshape(n, P * P).copy()
            out[:, :: P + 1] *= f
            return out.reshape(cov.shape)

        def pairs(a):  # (N, N, *S, *S): scale (n, n, s, s)
            if a is None:
                return None
            n = a.shape[0]
            out = a.reshape(n * n, P * P).copy()
            out[:: n + 1, :: P + 1] *= f
            return out.reshape(a.shape)

        if k.symmetric:
            return replace(k, nngp=pairs(k.nngp), ntk=pairs(k.ntk), gaussian=False)
        return replace(k, cov1=own(k.cov1), cov2=own(k.cov2), gaussian=False)

    def _ffinite(self, shape, name, cond=None):
        """Finite: "test" mode, the identity. "train" mode: ``y = m h / rate``, ``m = [z < Phi^-1(rate)]``
        Bernoulli(rate) from per-input N(0, 1) noise z (one mask per network, input, pixel and
        channel, drawn with the network and held fixed; ``stax.PER_INPUT``); backward ``g m / rate``.
        The mask carries no parameter, so the NTK has no part of its own."""
        if self.mode == "test":
            return _no_params_finite(tuple(shape), lambda xp, x: x, lambda xp, g: g)
        shape = tuple(shape)
        rate = self.rate
        cut = NormalDist().inv_cdf(rate) if rate < 1.0 else math.inf

        def forward(xp, params, h):
            (z,) = params
            if z.shape[:2] != h.shape[:2]:
                raise ValueError(f"{name}: its masks were drawn for {z.shape[1]} inputs, got {h.shape[1]}")
            m = xp.astype(z < cut, h.dtype) / rate
            return h * m, m

        def backward(xp, params, m, g, acc, need):
            return g * m if need else None

        return _Finite(shape, [(PER_INPUT, *shape)], forward, backward, 2 * _prod(shape))

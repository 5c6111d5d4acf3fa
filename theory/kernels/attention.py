"""Multi-head global self-attention for :mod:`limitlab.theory.kernels.stax` (kernel side).

``GlobalSelfAttention(n_chan_out, n_chan_key, n_chan_val, n_heads, linear_scaling=True, ...)``
in neural-tangents' argument order, weights as variances (``key_weight_var``, ...) or as
neural-tangents' standard deviations (``W_key_std``, ...). Attention is over all spatial
positions (flattened, ``P`` of them) of each input ``(N, *S, C)``, ``C`` the input channels.
The finite layer (NTK parametrization, neural-tangents' ``GlobalSelfAttention``), per head h::

    Q = x W_Q, K = x W_K, V = x W_V                        (W_* i.i.d. N(0, 1))
    A_h = f(sqrt(q k) Q K^T / (C d_k^a)),  a = 1 (linear_scaling) or 1/2
    y = sqrt(o v / (d_v H C)) [A_1 V_1, ..., A_H V_H] W_O + sqrt(b) beta

with ``q, k, v, o, b`` the query/key/value/output/bias variances, ``d_k = n_chan_key``,
``d_v = n_chan_val``, ``H = n_heads``, ``f`` the attention mechanism (softmax over the key
positions, identity, abs or relu); with ``linear_scaling`` the key and query weights are tied
(``W_Q = W_K``). The kernels below are the limits as ``H``, ``d_k``, ``d_v`` and the input
width go to infinity (Hron, Bahri, Sohl-Dickstein & Novak 2020, "Infinite attention: NNGP and
NTK for deep attention networks", ICML, arXiv:2006.10540: the multi-head limit as the number of
heads grows, cited by result since no equation number was checked, see docs/architectures.md;
neural-tangents 0.6.5 ``stax.GlobalSelfAttention``),
written with the per-input covariance ``c(x)[s, t] = K(x, s; x, t)`` and ``K``, ``Theta`` the
input kernels:

* ``linear_scaling=True`` (the d^-1 scaling with tied keys/queries; every mechanism): the
  logits converge to the deterministic ``sqrt(q k) c(x)[s, t]``, so the attention weights are
  the constants ``G(x)[s, t] = f(sqrt(q k) c(x)[s, t])`` (softmax over t) and the output is a
  fixed linear map of the values:

      K'[x, x', s, s'] = o v sum_{t, t'} G(x)[s, t] K[x, x', t, t'] G(x')[s', t'] + b
      Theta'           = o v G(x) Theta G(x')^T + b + 2 (K' - b)

  (the value and output weights each contribute ``K' - b``; the tied key/query weights
  contribute nothing in the limit).
* ``linear_scaling=False`` with ``attention_mechanism="identity"`` (the standard d^-1/2
  scaling): the logits are a centred Gaussian process with covariance
  ``q k K[x, x', s, s'] K[x, x', t, t']``, independent of the values, and

      K' = q k o v S(x, x') K + b,              S(x, x') = sum_{t, t'} K[x, x', t, t']^2
      Theta' = q k o v (2 (sum_{t,t'} K Theta) K + S (Theta + 4 K)) + b.

* ``linear_scaling=False`` with softmax/abs/relu has no closed form (Hron et al. 2020; neural-
  tangents raises too): NotImplementedError.

Positional embeddings (``pos_emb_type="sum"`` or ``"concat"``): a fixed random embedding of
covariance ``R[s, t] = decay(sum_i |s_i - t_i|^p)`` (``decay=None``: ``R = I``), times
``pos_emb_weight_var``, is added to (or concatenated with) the inputs of the keys/queries (and
of the values when ``val_pos_emb``); every input covariance ``c``, ``K``, ``Theta`` seen by
those is replaced by ``w_in c + w_pe R`` with ``(w_in, w_pe) = (1, pos_emb_weight_var)`` for
"sum" and ``(C / (C + C_pe), pos_emb_weight_var C_pe / (C + C_pe))`` for "concat" (the
NTK-parametrized weights see the concatenated width; ``C_pe = n_chan_pos_emb`` or ``C``), as in
neural-tangents (Hron et al. 2020, their section on positional encodings).

Cost: the weights ``G`` are ``N P^2``; ``K'`` is two batched ``P x P`` matrix products per input
pair, ``O(N1 N2 P^3)``.

Finite side (``_ffinite``, beside the kernel rule as in stax; the formula above): the query/key
(tied with ``linear_scaling``), value and output maps are stax's affine finite layers (N(0, 1)
weights, drawn in the order W_Q [, W_K], W_V, W_O, each followed by its bias draw: only the
output's bias is used, ``sqrt(b) beta``; the projections' are multiplied by 0), so the
conditional (Gaussian-conditioning) sampler applies to each of them; ``Q~ = x W_Q / sqrt(C)``,
``A_h = f(sqrt(q k) Q~_h K~_h^T / d_k^a)``, ``y = sqrt(o v / (H d_v)) [A_h V~_h]_h W_O +
sqrt(b) beta``. The backward pass is written out: ``dV~_h = A_h^T dZ_h``, ``dA_h = dZ_h V~_h^T``,
the logits' gradient ``f'(L) dA`` (softmax: ``A (dA - sum_t A dA)``), ``dQ~_h = c dL K~_h``,
``dK~_h = c dL^T Q~_h``. The finite network converges to the kernel rule as the widths grow:
with ``linear_scaling`` the logits concentrate as ``d_k`` grows (``n_heads`` may stay fixed); with
the d^-1/2 scaling the logits of each head stay Gaussian and only their average over heads
concentrates, so ``n_heads`` must grow (``limitlab.verify.networks.at_width`` does each).
Positional embeddings have no finite side yet (NotImplementedError).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from limitlab.numerics import validation as validate
from limitlab.theory.kernels.normalization import _check_batch_channel
from limitlab.theory.kernels.stax import Layer, _affine_finite, _Finite, _prod

__all__ = ["GlobalSelfAttention"]

MECHANISMS = ("softmax", "identity", "abs", "relu")
POS_EMB_TYPES = ("none", "sum", "concat")


def _var(layer, var, var_arg, std, std_arg, default=1.0):
    def num(v, arg):
        return validate.real(v, f"{layer}: {arg}", at_least=0)

    if std is not None:
        if var != default:
            raise ValueError(f"{layer}: give {var_arg} or {std_arg} (its square root), not both")
        return num(std, std_arg) ** 2
    return None if var is None else num(var, var_arg)


def _softmax(a):
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


_MECH = {
    "softmax": _softmax,
    "identity": lambda a: a,
    "abs": np.abs,
    "relu": lambda a: np.maximum(a, 0.0),
}


def _xp_softmax(xp, a):
    a = a - xp.max(a, axis=-1, keepdims=True)
    e = xp.exp(a)
    return e / xp.sum(e, axis=-1, keepdims=True)


def _mechanism_finite(mech):
    """(f, backward) on the array API: f(xp, L) -> A; back(xp, L, A, gA) -> gL."""
    if mech == "softmax":
        return _xp_softmax, lambda xp, L, A, gA: A * (gA - xp.sum(A * gA, axis=-1, keepdims=True))
    if mech == "identity":
        return (lambda xp, L: L), (lambda xp, L, A, gA: gA)
    if mech == "abs":
        return (lambda xp, L: xp.abs(L)), (lambda xp, L, A, gA: gA * xp.sign(L))
    return ((lambda xp, L: xp.where(L > 0, L, xp.zeros_like(L))),
            (lambda xp, L, A, gA: xp.where(L > 0, gA, xp.zeros_like(gA))))


class GlobalSelfAttention(Layer):
    """Multi-head scaled dot-product self-attention over all spatial positions.

    ``GlobalSelfAttention(n_chan_out, n_chan_key, n_chan_val, n_heads, linear_scaling=True,
    key_weight_var=1.0, value_weight_var=1.0, query_weight_var=1.0, out_weight_var=1.0,
    bias_var=None, attention_mechanism="softmax", pos_emb_type="none", pos_emb_p_norm=2,
    pos_emb_decay_fn=None, n_chan_pos_emb=None, pos_emb_weight_var=1.0, val_pos_emb=False)``
    (neural-tangents' order; its ``W_key_std``, ``W_value_std``, ``W_query_std``, ``W_out_std``,
    ``b_std``, ``W_pos_emb_std`` standard deviations are accepted as keywords). ``bias_var=None``:
    no bias. Kernel rules: the module docstring (Hron et al. 2020, ICML). Implemented limits:
    ``linear_scaling=True`` with every mechanism, ``linear_scaling=False`` with "identity";
    other combinations raise NotImplementedError when the kernel is asked for.
    """

    def __init__(self, n_chan_out, n_chan_key, n_chan_val, n_heads, linear_scaling=True, key_weight_var=1.0,
                 value_weight_var=1.0, query_weight_var=1.0, out_weight_var=1.0, bias_var=None,
                 attention_mechanism="softmax", pos_emb_type="none", pos_emb_p_norm=2, pos_emb_decay_fn=None,
                 n_chan_pos_emb=None, pos_emb_weight_var=1.0, val_pos_emb=False, batch_axis=0, channel_axis=-1, *,
                 W_key_std=None, W_value_std=None, W_query_std=None, W_out_std=None, b_std=None,
                 W_pos_emb_std=None):
        L = "GlobalSelfAttention"
        self.n_chan_out, self.n_chan_key, self.n_chan_val, self.n_heads = (
            validate.integer(v, f"{L}: {arg}", minimum=1) for arg, v in (
                ("n_chan_out", n_chan_out), ("n_chan_key", n_chan_key), ("n_chan_val", n_chan_val),
                ("n_heads", n_heads)))
        self.linear_scaling = validate.flag(linear_scaling, f"{L}: linear_scaling")
        self.key_weight_var = _var(L, key_weight_var, "key_weight_var", W_key_std, "W_key_std")
        self.value_weight_var = _var(L, value_weight_var, "value_weight_var", W_value_std, "W_value_std")
        self.query_weight_var = _var(L, query_weight_var, "query_weight_var", W_query_std, "W_query_std")
        self.out_weight_var = _var(L, out_weight_var, "out_weight_var", W_out_std, "W_out_std")
        self.bias_var = _var(L, bias_var, "bias_var", b_std, "b_std", default=None)
        self.pos_emb_weight_var = _var(L, pos_emb_weight_var, "pos_emb_weight_var", W_pos_emb_std, "W_pos_emb_std")
        # names in any case, as neural-tangents' enums accept them
        self.attention_mechanism = validate.choice(
            attention_mechanism.lower() if isinstance(attention_mechanism, str) else attention_mechanism,
            f"{L}: attention_mechanism", MECHANISMS)
        self.pos_emb_type = validate.choice(pos_emb_type.lower() if isinstance(pos_emb_type, str) else pos_emb_type,
                                            f"{L}: pos_emb_type", POS_EMB_TYPES)
        self.pos_emb_p_norm = validate.positive(pos_emb_p_norm, f"{L}: pos_emb_p_norm")
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise TypeError(f"{L}: pos_emb_decay_fn must be None or a function of the distance array, "
                            f"got {pos_emb_decay_fn!r}")
        self.pos_emb_decay_fn = pos_emb_decay_fn
        self.n_chan_pos_emb = None if n_chan_pos_emb is None else validate.integer(
            n_chan_pos_emb, f"{L}: n_chan_pos_emb", minimum=1)
        self.val_pos_emb = validate.flag(val_pos_emb, f"{L}: val_pos_emb")
        _check_batch_channel(L, batch_axis, channel_axis)

    def __repr__(self):
        return (f"GlobalSelfAttention({self.n_chan_out}, {self.n_chan_key}, {self.n_chan_val}, {self.n_heads}, "
                f"linear_scaling={self.linear_scaling}, attention_mechanism={self.attention_mechanism!r}, "
                f"pos_emb_type={self.pos_emb_type!r})")

    # -- finite side ----------------------------------------------------------------
    def _ffinite(self, shape, name, cond=None):
        """Finite: the multi-head attention of the module docstring ("Finite side"): projections
        and output as stax affine layers, the per-head mixing and its backward written out."""
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"{name}: attends over spatial positions, so it needs inputs of shape (N, T, C), "
                             f"(N, H, W, C) or (N, D, H, W, C); got per-input shape {shape}")
        mech = self.attention_mechanism
        if not self.linear_scaling and mech != "identity":
            raise NotImplementedError(
                f"{name}: linear_scaling=False with attention_mechanism={mech!r} has no closed-form limiting kernel "
                f"to converge to (Hron et al. 2020); use linear_scaling=True, or attention_mechanism='identity'")
        if self.pos_emb_type != "none":
            raise NotImplementedError(f"{name}: pos_emb_type={self.pos_emb_type!r}: positional embeddings have no "
                                      f"finite network yet; use pos_emb_type='none' (input shape (N, "
                                      f"{', '.join(map(str, shape))}))")
        sp, C = shape[:-1], shape[-1]
        P = _prod(sp)
        H, dk, dv, O = self.n_heads, self.n_chan_key, self.n_chan_val, self.n_chan_out
        tied = self.linear_scaling
        scale = math.sqrt(self.query_weight_var * self.key_weight_var) / (dk if tied else math.sqrt(dk))
        b = 0.0 if self.bias_var is None else self.bias_var
        f, f_back = _mechanism_finite(mech)

        def pix(xp, x):  # (B, N, *S, C) -> (B, N, P, C)
            return xp.reshape(x, (x.shape[0], x.shape[1], P, x.shape[-1]))

        def pix_T(xp, g):
            return xp.reshape(g, (g.shape[0], g.shape[1], *sp, g.shape[-1]))

        def flat(xp, z):
            return z

        proj = lambda width: _affine_finite(shape, 1, width, 1.0, 0.0, pix, pix_T, (P,), cond)  # noqa: E731
        subs = [proj(H * dk)] + ([] if tied else [proj(H * dk)]) + [proj(H * dv)]
        subs.append(_affine_finite((P, H * dv), 1, O, self.out_weight_var * self.value_weight_var, b, flat, flat, sp,
                                   cond))
        offs = [0]
        for s_ in subs:
            offs.append(offs[-1] + s_.n_params)
        par = lambda params, i: params[offs[i]:offs[i + 1]]  # noqa: E731

        def heads(xp, h, d):  # (B, N, P, H d) -> (B, N, H, P, d)
            return xp.permute_dims(xp.reshape(h, (h.shape[0], h.shape[1], P, H, d)), (0, 1, 3, 2, 4))

        def unheads(xp, h):  # (B, N, H, P, d) -> (B, N, P, H d)
            y = xp.permute_dims(h, (0, 1, 3, 2, 4))
            return xp.reshape(y, (y.shape[0], y.shape[1], P, H * y.shape[-1]))

        def forward(xp, params, x):
            caches = []
            outs = []
            for i in range(len(subs) - 1):
                y, c = subs[i].forward(xp, par(params, i), x)
                outs.append(y)
                caches.append(c)
            Qh = heads(xp, outs[0], dk)
            Kh = Qh if tied else heads(xp, outs[1], dk)
            Vh = heads(xp, outs[-1], dv)
            L = scale * xp.matmul(Qh, xp.matrix_transpose(Kh))  # (B, N, H, P, P)
            A = f(xp, L)
            Z = unheads(xp, xp.matmul(A, Vh))
            y, c = subs[-1].forward(xp, par(params, len(subs) - 1), Z)
            caches.append(c)
            return y, (caches, Qh, Kh, Vh, L, A)

        def backward(xp, params, cache, g, acc, need):
            caches, Qh, Kh, Vh, L, A = cache
            gZ = subs[-1].backward(xp, par(params, len(subs) - 1), caches[-1], g, acc, True)
            gZ = heads(xp, gZ, dv)
            gV = xp.matmul(xp.matrix_transpose(A), gZ)
            gL = scale * f_back(xp, L, A, xp.matmul(gZ, xp.matrix_transpose(Vh)))
            gQ = xp.matmul(gL, Kh)
            gK = xp.matmul(xp.matrix_transpose(gL), Qh)
            grads = [unheads(xp, gQ + gK)] if tied else [unheads(xp, gQ), unheads(xp, gK)]
            grads.append(unheads(xp, gV))
            gx = None
            for i, gi in enumerate(grads):
                r = subs[i].backward(xp, par(params, i), caches[i], gi, acc, need)
                gx = r if gx is None else gx + r
            return gx if need else None

        floats = P * (C + 2 * H * dk + H * dv + 2 * H * P + H * dv + O) + sum(s_.floats for s_ in subs)
        return _Finite((*sp, O), sum((s_.param_shapes for s_ in subs), []), forward, backward, floats)

    # -- pieces -----------------------------------------------------------------------
    def _pos_cov(self, spatial, name):
        """R[s, t] over the flattened positions (C order), or None without embeddings."""
        if self.pos_emb_type == "none":
            return None
        P = _prod(spatial)
        if self.pos_emb_decay_fn is None:
            return np.eye(P)
        grids = np.indices(spatial).reshape(len(spatial), P).astype(float)
        D = sum(np.abs(g[:, None] - g[None, :]) ** self.pos_emb_p_norm for g in grids)
        R = np.asarray(self.pos_emb_decay_fn(D), dtype=float)
        if R.shape != (P, P) or not np.all(np.isfinite(R)):
            raise ValueError(f"{name}: pos_emb_decay_fn must map the ({P}, {P}) distance array to a finite array of "
                             f"the same shape, got shape {R.shape}")
        return R

    def _interp_weights(self, width, name):
        pe = self.pos_emb_weight_var
        if self.pos_emb_type == "sum":
            if self.n_chan_pos_emb is not None and self.n_chan_pos_emb != width:
                raise ValueError(f"{name}: pos_emb_type='sum' adds the embeddings to the inputs, so n_chan_pos_emb "
                                 f"must be None or the input's channel count {width}, got {self.n_chan_pos_emb}")
            return 1.0, pe
        c_pe = width if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        total = float(width + c_pe)
        return width / total, pe * c_pe / total

    def _kernel(self, k, name):
        if not k.spatial:
            raise ValueError(f"{name}: attends over spatial positions, so it needs inputs of shape (N, T, C), "
                             f"(N, H, W, C) or (N, D, H, W, C); got shape {k.shape}")
        mech = self.attention_mechanism
        if not self.linear_scaling and mech != "identity":
            raise NotImplementedError(
                f"{name}: linear_scaling=False with attention_mechanism={mech!r} has no closed-form limiting kernel "
                f"(Hron et al. 2020; neural-tangents raises too); use linear_scaling=True, or "
                f"attention_mechanism='identity' with linear_scaling=False")
        n1, n2 = k.nngp.shape[:2]
        P = _prod(k.spatial)
        c1, c2 = (c.reshape(c.shape[0], P, P) for c in k.covs())
        K = k.nngp.reshape(n1, n2, P, P)
        T = None if k.ntk is None else k.ntk.reshape(n1, n2, P, P)
        R = self._pos_cov(k.spatial, name)
        if R is None:
            interp = (lambda a: a)  # noqa: E731
        else:
            w_in, w_pe = self._interp_weights(k.width, name)
            interp = (lambda a: w_in * a + w_pe * R)  # noqa: E731
        qk = self.query_weight_var * self.key_weight_var
        ov = self.out_weight_var * self.value_weight_var
        b = 0.0 if self.bias_var is None else self.bias_var
        val = interp if self.val_pos_emb else (lambda a: a)  # noqa: E731
        if self.linear_scaling:
            f = _MECH[mech]
            G1 = f(math.sqrt(qk) * interp(c1))
            G2 = G1 if k.symmetric else f(math.sqrt(qk) * interp(c2))
            G2t = np.swapaxes(G2, -1, -2)

            def pair(A):  # (n1, n2, P, P) -> G1 A G2^T
                return np.matmul(np.matmul(G1[:, None], A), G2t[None])

            def own(G, c):
                return np.matmul(np.matmul(G, c), np.swapaxes(G, -1, -2))

            nngp = ov * pair(val(K)) + b
            ntk = None if T is None else ov * pair(val(T)) + b + 2.0 * (nngp - b)
            cov1 = cov2 = None
            if not k.symmetric:
                cov1, cov2 = ov * own(G1, val(c1)) + b, ov * own(G2, val(c2)) + b
        else:
            std2 = qk * ov
            Ki = interp(K)
            dot12 = np.sum(Ki * val(K), axis=(2, 3), keepdims=True)
            nngp = std2 * dot12 * Ki + b
            ntk = None
            if T is not None:
                Ti = interp(T)
                if self.val_pos_emb or R is None:
                    t = 2.0 * np.sum(Ki * Ti, axis=(2, 3), keepdims=True)
                else:
                    t = np.sum(Ki * T, axis=(2, 3), keepdims=True) + np.sum(K * Ti, axis=(2, 3), keepdims=True)
                ntk = std2 * (t * Ki + dot12 * (Ti + 4.0 * Ki)) + b
            cov1 = cov2 = None
            if not k.symmetric:
                def own(c):
                    ci = interp(c)
                    return std2 * np.sum(ci * val(c), axis=(1, 2), keepdims=True) * ci + b

                cov1, cov2 = own(c1), own(c2)
        shape2 = (n1, n2) + k.spatial * 2
        reshape_own = (lambda c: None if c is None else c.reshape((c.shape[0],) + k.spatial * 2))  # noqa: E731
        return replace(k, nngp=nngp.reshape(shape2), ntk=None if ntk is None else ntk.reshape(shape2),
                       cov1=reshape_own(cov1), cov2=reshape_own(cov2), width=self.n_chan_out, gaussian=True)

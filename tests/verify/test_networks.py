"""Finite stax networks (verify/networks.py and the finite side of theory/kernels/stax.py) against
independent computations: loop-written convolutions and pools, finite-difference Jacobians,
the limiting kernels, the MLP engine (verify/montecarlo.py) and the array-api-strict backend."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.theory.kernels import MLP, Dropout, GlobalSelfAttention, LayerNorm
from limitlab.theory.kernels import stax
from limitlab.verify import montecarlo as mc
from limitlab.verify import networks as nw

WB = dict(weight_var=1.5, bias_var=0.1)


# --------------------------------------------------------------------------------------
# the forward pass against loops written from the definitions
# --------------------------------------------------------------------------------------

def _pads(n, k, st, padding):
    """XLA's rule, written out: VALID none; SAME/CIRCULAR out = ceil(n / st), lo = total // 2."""
    if padding == "VALID":
        return (n - k) // st + 1, 0
    out = math.ceil(n / st)
    total = max((out - 1) * st + k - n, 0)
    return out, total // 2


def _pixel(x, pos, padding):
    """x[pos] of one image (*S, C) with zero (SAME) or periodic (CIRCULAR) extension."""
    sp = x.shape[:-1]
    if padding == "CIRCULAR":
        pos = tuple(p % n for p, n in zip(pos, sp))
    if all(0 <= p < n for p, n in zip(pos, sp)):
        return x[pos]
    return np.zeros(x.shape[-1])


def _loop_conv(x, W, b, strides, padding, weight_var, bias_var):
    """h[s] = sqrt(w / (k C)) sum_{o, c} x[st s + o - lo, c] W[o, c] + sqrt(b) b, one image."""
    filt = W.shape[:-2]
    C = x.shape[-1]
    geo = [_pads(n, k, st, padding) for n, k, st in zip(x.shape[:-1], filt, strides)]
    out = np.zeros(tuple(o for o, _ in geo) + (W.shape[-1],))
    scale = math.sqrt(weight_var / (C * np.prod(filt)))
    for s in itertools.product(*(range(o) for o, _ in geo)):
        acc = np.zeros(W.shape[-1])
        for off in itertools.product(*(range(k) for k in filt)):
            pos = tuple(st * si + oi - lo for si, oi, st, (_, lo) in zip(s, off, strides, geo))
            acc += _pixel(x, pos, padding) @ W[off]
        out[s] = scale * acc + math.sqrt(bias_var) * b
    return out


def _loop_pool(x, window, strides, padding, average, normalize_edges=False):
    geo = [_pads(n, k, st, padding) for n, k, st in zip(x.shape[:-1], window, strides)]
    out = np.zeros(tuple(o for o, _ in geo) + (x.shape[-1],))
    for s in itertools.product(*(range(o) for o, _ in geo)):
        acc, count = 0.0, 0
        for off in itertools.product(*(range(k) for k in window)):
            pos = tuple(st * si + oi - lo for si, oi, st, (_, lo) in zip(s, off, strides, geo))
            acc = acc + _pixel(x, pos, padding)
            count += all(0 <= p < n for p, n in zip(pos, x.shape[:-1]))
        out[s] = acc / (count if normalize_edges else np.prod(window)) if average else acc
    return out


def _run_layer(layer, x, params):
    """One layer's finite forward pass on a batch of images x (N, *S, C), one network."""
    fin = layer._finite(x.shape[1:], "")
    import array_api_compat.numpy as xp

    y, _ = fin.forward(xp, [p[None] for p in params], x[None])
    return np.asarray(y[0])


CONV_CASES = [((7, 3), (3,), (1,), "VALID"), ((7, 3), (3,), (2,), "SAME"), ((6, 2), (4,), (3,), "CIRCULAR"),
              ((5, 4, 2), (3, 2), (2, 1), "SAME"), ((4, 5, 2), (3, 3), (1, 2), "CIRCULAR"),
              ((3, 4, 3, 2), (2, 2, 3), (1, 2, 1), "SAME"), ((3, 3, 3, 1), (2, 2, 2), (1, 1, 1), "VALID"),
              ((3, 2), (5,), (1,), "CIRCULAR")]  # a filter wider than the sequence wraps more than once


@pytest.mark.parametrize("shape,filt,strides,padding", CONV_CASES)
def test_conv_forward_equals_loops_over_positions_and_offsets(shape, filt, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + shape)
    layer = stax.Conv(3, filt, strides=strides, padding=padding, **WB)
    C = shape[-1]
    W = rng.standard_normal(filt + (C, 3))
    b = rng.standard_normal(3)
    y = _run_layer(layer, x, [W.reshape(-1, 3), b])
    for n in range(2):
        np.testing.assert_allclose(y[n], _loop_conv(x[n], W, b, strides, padding, 1.5, 0.1), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cls,normalize", [(stax.AvgPool, False), (stax.AvgPool, True), (stax.SumPool, False)])
@pytest.mark.parametrize("shape,window,strides,padding", [((6, 5, 2), (2, 3), (2, 1), "SAME"),
                                                          ((7, 2), (3,), (2,), "VALID"),
                                                          ((5, 2), (2,), (1,), "CIRCULAR")])
def test_pools_equal_loops(cls, normalize, shape, window, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape)
    layer = cls(window, strides, padding, normalize) if cls is stax.AvgPool else cls(window, strides, padding)
    y = _run_layer(layer, x, [])
    for n in range(2):
        ref = _loop_pool(x[n], window, strides, padding, cls is stax.AvgPool, normalize and padding == "SAME")
        np.testing.assert_allclose(y[n], ref, rtol=1e-13, atol=1e-14)


def test_flatten_global_pools_and_concat_forward():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(_run_layer(stax.Flatten(), x, []), x.reshape(2, -1))
    np.testing.assert_allclose(_run_layer(stax.GlobalAvgPool(), x, []), x.mean(axis=(1, 2)), rtol=1e-14)
    np.testing.assert_allclose(_run_layer(stax.GlobalSumPool(), x, []), x.sum(axis=(1, 2)), rtol=1e-14)
    net = stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.Relu()), stax.FanInConcat(axis=1))
    np.testing.assert_array_equal(_run_layer(net, x, []), np.concatenate([x, np.maximum(x, 0)], axis=1))


@pytest.mark.parametrize("axis,eps", [(-1, 1e-12), ((1, -1), 0.3), ((1, 2, 3), 1e-12)])
def test_layernorm_forward_is_the_normalization_over_its_axes(axis, eps):
    """y = (h - mean) / sqrt(var + eps) over the axes (Ba et al. 2016, eq. (4)), np.var written out."""
    x = np.random.default_rng(12).standard_normal((3, 4, 2, 5)) * 2.0 + 0.7
    ax = tuple(a % 4 for a in ((axis,) if isinstance(axis, int) else axis))
    mu = x.mean(axis=ax, keepdims=True)
    ref = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=ax, keepdims=True) + eps)
    np.testing.assert_allclose(_run_layer(LayerNorm(axis, eps), x, []), ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(_run_layer(Dropout(0.3, "test"), x, []), x)


@pytest.mark.parametrize("linear,mech", [(True, "softmax"), (True, "relu"), (True, "abs"), (True, "identity"),
                                         (False, "identity")])
def test_attention_forward_equals_the_per_head_formula(linear, mech):
    """y = sqrt(o v / (d_v H C)) [A_1 x W_V1, ..., A_H x W_VH] W_O + sqrt(b) beta with A_h =
    f(sqrt(q k) (x W_Qh)(x W_Kh)^T / (C d_k^a)), written per input and head with loops (Hron et al.
    2020; neural-tangents' GlobalSelfAttention), parameters in the drawn order W_Q b [W_K b] W_V b W_O b."""
    rng = np.random.default_rng(13)
    N, S, C, H, dk, dv, O = 2, (2, 3), 3, 2, 4, 5, 6
    q, k, v, o, b = 1.3, 0.8, 1.1, 0.9, 0.2
    x = rng.standard_normal((N, *S, C))
    layer = GlobalSelfAttention(O, dk, dv, H, linear, k, v, q, o, b, mech)
    WQ = rng.standard_normal((C, H * dk))
    WK = WQ if linear else rng.standard_normal((C, H * dk))
    WV, WO, beta = rng.standard_normal((C, H * dv)), rng.standard_normal((H * dv, O)), rng.standard_normal(O)
    z = lambda m: rng.standard_normal(m)  # noqa: E731  (the projections' unused biases)
    params = [WQ, z(H * dk)] + ([] if linear else [WK, z(H * dk)]) + [WV, z(H * dv), WO, beta]
    y = _run_layer(layer, x, params)
    f = {"softmax": lambda a: np.exp(a) / np.exp(a).sum(-1, keepdims=True), "relu": lambda a: np.maximum(a, 0),
         "abs": np.abs, "identity": lambda a: a}[mech]
    for n in range(N):
        xs = x[n].reshape(-1, C)  # positions flattened in C order
        heads = []
        for h in range(H):
            cols = slice(h * dk, (h + 1) * dk)
            logits = math.sqrt(q * k) * (xs @ WQ[:, cols]) @ (xs @ WK[:, cols]).T / (C * dk ** (1.0 if linear else 0.5))
            heads.append(f(logits) @ (xs @ WV[:, h * dv:(h + 1) * dv]))
        ref = math.sqrt(o * v / (dv * H * C)) * np.concatenate(heads, axis=1) @ WO + math.sqrt(b) * beta
        np.testing.assert_allclose(y[n], ref.reshape(*S, O), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# the empirical NTK against the Gram of a finite-difference Jacobian
# --------------------------------------------------------------------------------------

def _fd_ntk(nets, X, eps=1e-5):
    """Theta = J J^T with J the central-difference Jacobian of the outputs in every N(0, 1)
    parameter (NTK parametrization: the trained variables are the draws), all networks at once."""
    P = [np.array(p, dtype=float) for p in nets.params]
    cols = []
    for j, p in enumerate(P):
        for idx in np.ndindex(p.shape[1:]):
            plus, minus = list(P), list(P)
            plus[j], minus[j] = p.copy(), p.copy()
            plus[j][(slice(None),) + idx] += eps
            minus[j][(slice(None),) + idx] -= eps
            cols.append((np.asarray(nets.forward(X, plus)) - np.asarray(nets.forward(X, minus))) / (2 * eps))
    J = np.stack(cols, axis=-1)  # (B, N, n_params)
    return np.einsum("bnp,bmp->bnm", J, J)


FD_NETS = {
    "conv": (stax.serial(stax.Conv(3, (3, 2), strides=(2, 1), padding="SAME", **WB), stax.Erf(),
                         stax.Conv(3, (2, 2), padding="CIRCULAR", **WB), stax.Tanh(), stax.Flatten(),
                         stax.Dense(1, **WB)), (5, 4, 2)),
    "conv3d": (stax.serial(stax.Conv(2, (2, 2, 2), padding="SAME", **WB), stax.Gelu(), stax.GlobalAvgPool(),
                           stax.Dense(1, **WB)), (3, 3, 2, 1)),
    "residual": (stax.serial(stax.Conv(3, (3,), padding="SAME", **WB),
                             stax.FanOut(2),
                             stax.parallel(stax.serial(stax.Relu(), stax.Conv(3, (3,), padding="SAME", **WB)),
                                           stax.Identity()),
                             stax.FanInSum(), stax.Tanh(), stax.Flatten(), stax.Dense(1, **WB)), (5, 2)),
    "pooled": (stax.serial(stax.Conv(3, (2, 2), padding="VALID", **WB), stax.Erf(),
                           stax.AvgPool((2, 2), padding="SAME", normalize_edges=True),
                           stax.FanOut(2),
                           stax.parallel(stax.Dense(2, **WB), stax.Conv(3, (2, 2), padding="SAME", **WB)),
                           stax.FanInConcat(), stax.Tanh(), stax.SumPool((2, 1), strides=(2, 1)),
                           stax.GlobalAvgPool(), stax.Dense(1, **WB)), (4, 5, 2)),
    "layernorm": (stax.serial(stax.Conv(3, (2,), padding="SAME", **WB), LayerNorm(), stax.Erf(),
                              stax.Dense(3, **WB), LayerNorm(axis=(1, -1), eps=1e-3), stax.Tanh(), Dropout(0.7, "test"),
                              stax.Flatten(), stax.Dense(1, **WB)), (4, 2)),
    "attention-softmax": (stax.serial(stax.Dense(3, **WB),
                                      stax.FanOut(2),
                                      stax.parallel(GlobalSelfAttention(3, 2, 2, 2, True, 1.3, 0.9, 1.1, 1.2, 0.1),
                                                    stax.Identity()),
                                      stax.FanInSum(), LayerNorm(), stax.Tanh(), stax.GlobalAvgPool(),
                                      stax.Dense(1, **WB)), (4, 2)),
    "attention-identity": (stax.serial(stax.Conv(3, (2, 1), padding="SAME", **WB),
                                       GlobalSelfAttention(3, 2, 2, 2, False, 1.3, 0.9, 1.1, 1.2, 0.1, "identity"),
                                       stax.Tanh(), stax.Flatten(), stax.Dense(1, **WB)), (2, 3, 2)),
    # standard parametrization (the trained variables are the weights themselves): with and without biases
    "standard-mlp": (stax.serial(stax.Dense(4, **WB, parametrization="standard"), stax.Erf(),
                                 stax.Dense(4, 1.5, None, parametrization="standard"), stax.Tanh(),
                                 stax.Dense(1, **WB, parametrization="standard")), (3,)),
    "standard-cnn-pool": (stax.serial(stax.Conv(3, (2, 2), padding="SAME", **WB, parametrization="standard"),
                                      stax.Relu(), stax.AvgPool((2, 2)),
                                      stax.Conv(3, (2, 1), **WB, parametrization="standard"), stax.Erf(),
                                      stax.GlobalAvgPool(), stax.Dense(1, **WB, parametrization="standard")),
                          (4, 5, 2)),
    "attention-relu-abs": (stax.serial(stax.Dense(3, **WB),
                                       GlobalSelfAttention(3, 2, 2, 2, True, 1.3, 0.9, 1.1, 1.2, None, "relu"),
                                       GlobalSelfAttention(3, 2, 2, 1, True, attention_mechanism="abs"),
                                       stax.Flatten(), stax.Dense(1, **WB)), (3, 2)),
}


@pytest.mark.parametrize("name", sorted(FD_NETS))
def test_empirical_ntk_equals_finite_difference_jacobian_gram(name):
    net, shape = FD_NETS[name]
    X = np.random.default_rng(3).standard_normal((3,) + shape)
    nets = nw.FiniteNetworks.sample(net, shape, n_networks=2, seed=11, backend="numpy")
    nngp, ntk, f = (np.asarray(a) for a in nets.kernels(X))
    ref = _fd_ntk(nets, X)
    scale = np.abs(ref).max()
    assert np.abs(ntk - ref).max() <= 1e-6 * scale
    # and the NNGP is the readout's part of it: (w / F) a.a' + b from the penultimate features
    import array_api_compat.numpy as xp

    a, _ = nets.body.forward(xp, nets.params[:nets.body.n_params], X[None].repeat(2, 0))
    a = np.asarray(a)
    np.testing.assert_allclose(nngp, 1.5 / a.shape[-1] * np.einsum("bnf,bmf->bnm", a, a) + 0.1, rtol=1e-12)
    np.testing.assert_allclose(f, np.asarray(nets.forward(X)), rtol=1e-12)


def test_both_ntk_contractions_of_a_shared_weight_equal_the_per_input_gradient_gram():
    """Pairwise sum and materialized dW = A^T G per input: both equal the Gram of dW written out."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(4)
    A, G = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 5, 6))
    dW = np.einsum("bnpf,bnpo->bnfo", A, G).reshape(2, 3, -1)
    ref = 0.7 * np.einsum("bnk,bmk->bnm", dW, dW) + 0.2 * np.einsum("bno,bmo->bnm", G.sum(2), G.sum(2))
    for mode in ("pairwise", "materialized", None):
        np.testing.assert_allclose(stax._shared_ntk(xp, A, G, 0.7, 0.2, mode), ref, rtol=1e-12)


# --------------------------------------------------------------------------------------
# the MLP engine, the limit, the conditional sampler, backends, seeds
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,activation,parametrization", [(1, "relu", "ntk"), (2, "erf", "ntk"),
                                                                (2, "gelu", "standard")])
def test_mlp_kernels_equal_montecarlo_for_the_same_draws(depth, activation, parametrization):
    """The MLP samplers of verify/montecarlo.py draw the engine's networks (same seeds, same order)."""
    X = np.random.default_rng(5).standard_normal((4, 5))
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(7, **WB, parametrization=parametrization), stax.Activation(activation)]
    net = stax.serial(*layers, stax.Dense(1, **WB, parametrization=parametrization))
    ours = nw.sample_kernels(net, X, width=16, n_networks=6, seed=3, backend="numpy", method="weights")
    ref = mc.sample_kernels(MLP(depth, activation, **WB, parametrization=parametrization), X, width=16,
                            n_networks=6, seed=3, backend="numpy", method="weights")
    for a, b in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk), (ours.outputs, ref.outputs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def _limit_test(samples, theory):
    """max over entries of |ensemble mean - theory| / SE."""
    m = samples.mean(0)
    se = samples.std(0, ddof=1) / math.sqrt(samples.shape[0])
    return np.max(np.abs(m - theory) / se)


@pytest.mark.parametrize("name", ["cnn-gp", "cntk-pool", "resnet", "layernorm", "attention"])
def test_ensemble_mean_converges_to_the_stax_limit(name):
    from limitlab.verify.kernels import architectures as arch

    net, X = arch.architecture(name), arch.inputs(name)
    K = nw.limit(net, X)
    ks = nw.sample_kernels(net, X, width=256, n_networks=400, seed=1, backend="numpy")
    for emp, th in ((ks.nngp, K.nngp), (ks.ntk, K.ntk)):
        # statistical agreement: the 1/n bias at width 256 is well inside 5 SE (SE ~ 0.1/sqrt(400) rel.)
        assert _limit_test(emp, th) < 5.0
        assert _limit_test(emp, 1.1 * th) > 5.0  # the same criterion rejects a 10% error


def _transformer():
    """A post-norm transformer block on a Conv stem: residual 2-head softmax attention (linear
    scaling), LayerNorm over (positions, channels), a per-position Dense + ReLU, GlobalAvgPool."""
    att = GlobalSelfAttention(1, 1, 1, 2, True, 1.5, 1.5, 1.5, 1.5, 0.1, "softmax")
    return stax.serial(stax.Conv(1, (1,), **WB), stax.FanOut(2), stax.parallel(att, stax.Identity()), stax.FanInSum(),
                       LayerNorm(axis=(1, -1)), stax.Dense(1, **WB), stax.Relu(), stax.GlobalAvgPool(),
                       stax.Dense(1, **WB))


def test_at_width_scales_attention_dims_with_linear_scaling_and_heads_without():
    lin = GlobalSelfAttention(3, 4, 5, 2, True)
    sq = GlobalSelfAttention(3, 4, 5, 2, False, attention_mechanism="identity")
    a, b = (nw.at_width(stax.serial(layer, stax.GlobalAvgPool(), stax.Dense(7)), 64).layers[0] for layer in (lin, sq))
    assert (a.n_chan_out, a.n_chan_key, a.n_chan_val, a.n_heads) == (64, 64, 64, 2)
    assert (b.n_chan_out, b.n_chan_key, b.n_chan_val, b.n_heads) == (64, 4, 5, 64)
    assert (lin.n_chan_out, lin.n_chan_key, sq.n_heads) == (3, 4, 2)  # the description is not changed


def test_transformer_block_ensemble_mean_converges_to_the_stax_limit():
    from limitlab.verify.kernels import architectures as arch

    net, X = _transformer(), arch.inputs("resnet")
    K = nw.limit(net, X)
    ks = nw.sample_kernels(net, X, width=256, n_networks=400, seed=1, backend="numpy")
    assert ks.method == "conditional"
    for emp, th in ((ks.nngp, K.nngp), (ks.ntk, K.ntk)):
        assert _limit_test(emp, th) < 5.0
        assert _limit_test(emp, 1.1 * th) > 5.0


def test_square_root_scaled_identity_attention_converges_like_one_over_width():
    """d^-1/2 scaling: each head's logits stay Gaussian, so the ensemble mean carries an O(1/H)
    bias (H = width heads; measured ~7/n on the NNGP, up to ~16/n on the NTK). The Richardson
    extrapolation (4 m(256) - m(64)) / 3 removes it: within 5 SE of the limit, 10% off outside,
    while the width-64 mean alone is outside (the bias is real and shrinks)."""
    from limitlab.verify.kernels import architectures as arch

    att = GlobalSelfAttention(1, 1, 1, 1, False, 1.0, 1.5, 1.0, 1.5, 0.1, "identity")
    net = stax.serial(stax.Conv(1, (1,), **WB), att, stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, **WB))
    X = arch.inputs("resnet")
    K = nw.limit(net, X)
    lo, hi = (nw.sample_kernels(net, X, width=n, n_networks=1600, seed=s, backend="numpy")
              for n, s in ((64, 1), (256, 2)))
    assert nw.at_width(net, 256).layers[1].n_heads == 256
    for a, b, th in ((lo.nngp, hi.nngp, K.nngp), (lo.ntk, hi.ntk, K.ntk)):
        ext = (4 * b.mean(0) - a.mean(0)) / 3
        se = np.sqrt(16 * b.var(0, ddof=1) / len(b) + a.var(0, ddof=1) / len(a)) / 3
        assert np.max(np.abs(ext - th) / se) < 5.0
        assert np.max(np.abs(ext - 1.1 * th) / se) > 5.0
        assert _limit_test(a, th) > 5.0


def test_conditional_sampler_matches_materialized_weights_for_attention_and_layernorm():
    """As below, for the transformer block: the conditional sampler conditions the attention's
    query/key, value and output maps (2 inputs x 4 positions = 8 rows < n = 24 < 2n)."""
    from limitlab.verify.kernels import architectures as arch

    X = arch.inputs("resnet")[:2]
    w = nw.sample_kernels(_transformer(), X, width=24, n_networks=4000, seed=1, backend="numpy", method="weights")
    c = nw.sample_kernels(_transformer(), X, width=24, n_networks=4000, seed=2, backend="numpy", method="conditional")
    fin = nw.at_width(_transformer(), 24)
    body, _ = nw.FiniteNetworks.structure(fin, X.shape[1:])
    cond_body = fin._finite(X.shape[1:], "", 2)
    assert len(cond_body.param_shapes) > len(body.param_shapes)  # U, Z, b per conditioned map
    for a, b in ((w.nngp, c.nngp), (w.ntk, c.ntk)):
        zm = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        sev = [((x - x.mean(0)) ** 2).std(0) / math.sqrt(len(x)) for x in (a, b)]
        zv = (a.var(0) - b.var(0)) / np.sqrt(sev[0] ** 2 + sev[1] ** 2)
        assert np.abs(zm).max() < 4.5 and np.abs(zv).max() < 4.5, (zm, zv)
    assert np.sqrt(w.ntk[:, 0, 0].var()) > 0.1 * abs(w.ntk[:, 0, 0].mean())


def test_conditional_sampler_matches_materialized_weights_in_distribution():
    """Means and variances of the per-network kernels agree (two-sample z-scores) where the
    conditional sampler applies (2 inputs: 4 patch rows < fan-in 3n and fan-out n)."""
    from limitlab.verify.kernels import architectures as arch

    net, X = arch.architecture("cnn-gp"), arch.inputs("cnn-gp")[:2]
    w = nw.sample_kernels(net, X, width=24, n_networks=6000, seed=1, backend="numpy", method="weights")
    c = nw.sample_kernels(net, X, width=24, n_networks=6000, seed=2, backend="numpy", method="conditional")
    assert c.method == "conditional" and w.method == "weights"
    for a, b in ((w.nngp, c.nngp), (w.ntk, c.ntk)):
        zm = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        sev = [((x - x.mean(0)) ** 2).std(0) / math.sqrt(len(x)) for x in (a, b)]
        zv = (a.var(0) - b.var(0)) / np.sqrt(sev[0] ** 2 + sev[1] ** 2)
        assert np.abs(zm).max() < 4.5 and np.abs(zv).max() < 4.5, (zm, zv)
    # and the variance would be seen: one network's NTK fluctuates by ~40% at this width
    assert np.sqrt(w.ntk[:, 0, 0].var()) > 0.2 * abs(w.ntk[:, 0, 0].mean())


@pytest.mark.parametrize("name", ["residual", "layernorm", "attention-softmax", "attention-identity"])
@pytest.mark.parametrize("method", ["weights", "conditional"])
def test_array_api_strict_matches_numpy(method, name):
    pytest.importorskip("array_api_strict")
    net, shape = FD_NETS[name]
    X = np.random.default_rng(6).standard_normal((3,) + shape)
    a = nw.sample_kernels(net, X, width=12, n_networks=4, seed=2, backend="numpy", method=method)
    b = nw.sample_kernels(net, X, width=12, n_networks=4, seed=2, backend="array-api-strict", method=method)
    assert b.backend == "array-api-strict"
    for x, y in ((a.nngp, b.nngp), (a.ntk, b.ntk), (a.outputs, b.outputs)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_seeds_batches_and_cross_kernels():
    net, shape = FD_NETS["pooled"]
    X = np.random.default_rng(7).standard_normal((4,) + shape)
    a = nw.sample_kernels(net, X, width=5, n_networks=5, seed=9, backend="numpy", batch_size=2)
    b = nw.sample_kernels(net, X, width=5, n_networks=5, seed=9, backend="numpy")
    np.testing.assert_array_equal(a.ntk, b.ntk)  # network i depends on (seed, i) only
    c = nw.sample_kernels(net, X, width=5, n_networks=5, seed=10, backend="numpy")
    assert not np.allclose(a.ntk, c.ntk)
    d = nw.sample_kernels(net, X[:2], X[2:], width=5, n_networks=5, seed=9, backend="numpy")
    np.testing.assert_allclose(d.ntk, a.ntk[:, :2, 2:], rtol=1e-12)
    np.testing.assert_allclose(d.nngp, a.nngp[:, :2, 2:], rtol=1e-12)
    assert a.ntk.shape == (5, 4, 4) and a.outputs.shape == (5, 4) and a.width == (5,)


def test_bad_inputs_name_the_layer_argument_and_shape():
    X = np.zeros((2, 6, 2))
    with pytest.raises(ValueError, match=r"Conv.*serial\[0\].*filter_shape.*\(N, H, W, C\).*\(N, 6, 2\)"):
        nw.sample_kernels(stax.serial(stax.Conv(3, (2, 2)), stax.Flatten(), stax.Dense(1)), X, width=4, n_networks=1)
    with pytest.raises(ValueError, match=r"readout.*flat features.*\(5, 4\)"):
        nw.sample_kernels(stax.serial(stax.Conv(3, (2,)), stax.Relu(), stax.Conv(4, (1,)), stax.Dense(1)), X,
                          n_networks=1)
    with pytest.raises(ValueError, match=r"last layer must be a Dense readout.*GlobalAvgPool"):
        nw.sample_kernels(stax.serial(stax.Conv(3, (2,)), stax.GlobalAvgPool()), X, width=4, n_networks=1)
    with pytest.raises(ValueError, match=r"FanInSum.*equal per-input shapes.*\(5, 4\).*\(6, 2\)"):
        net = stax.serial(stax.FanOut(2), stax.parallel(stax.Conv(4, (2,)), stax.Identity()), stax.FanInSum(),
                          stax.Flatten(), stax.Dense(1))
        nw.sample_kernels(net, X, n_networks=1)
    with pytest.raises(ValueError, match=r"Dense.*serial\[1\].*declared in_dim=3.*12 channels.*\(12,\)"):
        nw.sample_kernels(stax.serial(stax.Flatten(), stax.Dense(4, in_dim=3), stax.Dense(1)), X, n_networks=1)
    with pytest.raises(ValueError, match=r"Relu|relu.*receives 2 branches"):
        nw.sample_kernels(stax.serial(stax.FanOut(2), stax.Relu(), stax.Dense(1)), X, n_networks=1)
    with pytest.raises(ValueError, match="method"):
        nw.sample_kernels(stax.Dense(1), X[:, 0], n_networks=1, method="autodiff")
    with pytest.raises(ValueError, match=r"X: per-input shape \(6, 3\).*\(6, 2\)"):
        nets = nw.FiniteNetworks.sample(stax.serial(stax.Flatten(), stax.Dense(1)), (6, 2), seed=0, backend="numpy")
        nets.forward(np.zeros((2, 6, 3)))
    with pytest.raises(TypeError, match="net: expected a stax layer"):
        nw.sample_kernels("relu", X, n_networks=1)


def test_layer_options_without_a_finite_network_say_so():
    X = np.ones((2, 4, 3))
    tail = (stax.Flatten(), stax.Dense(1))
    with pytest.raises(NotImplementedError, match=r"LayerNorm.*serial\[1\].*batch axis 0.*\(N, 4, 5\)"):
        nw.sample_kernels(stax.serial(stax.Dense(5), LayerNorm(axis=(0, -1)), *tail), X, n_networks=1)
    with pytest.raises(ValueError, match=r"LayerNorm.*serial\[1\].*must include the channel axis.*\(N, 4, 5\)"):
        nw.sample_kernels(stax.serial(stax.Dense(5), LayerNorm(axis=1), *tail), X, n_networks=1)
    with pytest.raises(ValueError, match=r"LayerNorm.*axis 3 is out of range.*\(N, 4, 5\)"):
        nw.sample_kernels(stax.serial(stax.Dense(5), LayerNorm(axis=(3, -1)), *tail), X, n_networks=1)
    with pytest.raises(NotImplementedError, match=r"GlobalSelfAttention.*serial\[0\].*pos_emb_type='sum'.*"
                                                  r"\(N, 4, 3\)"):
        nw.sample_kernels(stax.serial(GlobalSelfAttention(2, 2, 2, 1, pos_emb_type="sum"), *tail), X, n_networks=1)
    with pytest.raises(NotImplementedError, match=r"GlobalSelfAttention.*linear_scaling=False with "
                                                  r"attention_mechanism='softmax'"):
        nw.sample_kernels(stax.serial(GlobalSelfAttention(2, 2, 2, 1, False), *tail), X, n_networks=1)
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.*spatial positions.*per-input shape \(3,\)"):
        nw.sample_kernels(stax.serial(GlobalSelfAttention(2, 2, 2, 1), stax.Dense(1)), X[:, 0], n_networks=1)


def test_a_lone_dense_readout_is_the_linear_model_whose_kernels_are_exact():
    """f(x) = sqrt(w/d) x.W + sqrt(b) beta: NNGP = NTK = w x.x'/d + b for every network."""
    X = np.random.default_rng(8).standard_normal((3, 4))
    ks = nw.sample_kernels(stax.Dense(5, 2.0, 0.3), X, n_networks=3, seed=0, backend="numpy")
    for k in (ks.nngp, ks.ntk):
        np.testing.assert_allclose(k, np.broadcast_to(2.0 * X @ X.T / 4 + 0.3, (3, 3, 3)), rtol=1e-13)


# --------------------------------------------------------------------------------------
# the standard parametrization and Dropout in train mode: ensembles against the limit
# --------------------------------------------------------------------------------------

def test_standard_parametrization_ensemble_converges_to_its_width_dependent_limit():
    """Standard parametrization (Sohl-Dickstein et al. 2020): the NNGP is the NTK
    parametrization's, the NTK grows with the declared width n; the ensemble mean of the finite
    networks' NTK at width n is the stax kernel of ``at_width(net, n)`` (to O(1/n))."""
    std = dict(WB, parametrization="standard")
    net = stax.serial(stax.Conv(4, (2,), padding="SAME", **std), stax.Relu(), stax.AvgPool((2,)),
                      stax.Flatten(), stax.Dense(1, **std))
    X = np.random.default_rng(9).standard_normal((3, 4, 2))
    K = nw.limit(net, X, width=256)
    ntk_param = nw.limit(stax.serial(stax.Conv(4, (2,), padding="SAME", **WB), stax.Relu(), stax.AvgPool((2,)),
                                     stax.Flatten(), stax.Dense(1, **WB)), X, width=256)
    np.testing.assert_allclose(K.nngp, ntk_param.nngp, rtol=1e-12)
    assert np.all(K.ntk > 20 * ntk_param.ntk)  # ~ n / (2 w) times larger
    ks = nw.sample_kernels(net, X, width=256, n_networks=300, seed=2, backend="numpy")
    for emp, th in ((ks.nngp, K.nngp), (ks.ntk, K.ntk)):
        assert _limit_test(emp, th) < 5.0
        assert _limit_test(emp, 1.05 * th) > 5.0  # power: a 5% error is rejected


def test_dropout_train_mode_ensemble_converges_to_the_kernel_rule():
    """Dropout(rate) in train mode: the finite networks' masks (one per input) scale only the
    same-input entries by 1/rate in the limit (Srivastava et al. 2014; the stax kernel rule)."""
    net = stax.serial(stax.Dense(8, **WB), stax.Relu(), Dropout(0.6), stax.Dense(8, **WB), stax.Erf(),
                      Dropout(0.8), stax.Dense(1, **WB))
    X = np.random.default_rng(10).standard_normal((3, 5))
    K = nw.limit(net, X)
    test_mode = nw.limit(stax.serial(stax.Dense(8, **WB), stax.Relu(), stax.Dense(8, **WB), stax.Erf(),
                                     stax.Dense(1, **WB)), X)
    assert np.all(np.abs(np.diag(K.ntk) / np.diag(test_mode.ntk) - 1) > 0.1)  # the masks matter
    ks = nw.sample_kernels(net, X, width=512, n_networks=300, seed=4, backend="numpy")
    for emp, th in ((ks.nngp, K.nngp), (ks.ntk, K.ntk)):
        assert _limit_test(emp, th) < 5.0
        assert _limit_test(emp, 1.05 * th) > 5.0
    # masks drawn after the parameters: the weights do not depend on the number of inputs
    a = nw.FiniteNetworks.sample(net, (5,), 2, seed=1, backend="numpy", n_inputs=3, width=4)
    b = nw.FiniteNetworks.sample(net, (5,), 2, seed=1, backend="numpy", n_inputs=7, width=4)
    for p, q, shape in zip(a.params, b.params, a.body.param_shapes + a.readout.param_shapes):
        if shape[0] != stax.PER_INPUT:
            np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="n_inputs.*Dropout"):
        nw.FiniteNetworks.sample(net, (5,), 2, seed=1, backend="numpy")


# --------------------------------------------------------------------------------------
# gradient-descent training
# --------------------------------------------------------------------------------------

TRAIN_NETS = {
    "mlp": (stax.serial(stax.Dense(24, 1.4, 0.3), stax.Tanh(), stax.Dense(24, 1.4, 0.3), stax.Tanh(),
                        stax.Dense(1, 1.4, 0.3)), (4,), "layers"),
    "mlp-standard": (stax.serial(stax.Dense(24, 1.4, 0.3, parametrization="standard"), stax.Gelu(),
                                 stax.Dense(1, 1.4, 0.3, parametrization="standard")), (4,), "layers"),
    "cnn-pool": (stax.serial(stax.Conv(6, (2,), padding="SAME", **WB), stax.Relu(), stax.AvgPool((2,)),
                             LayerNorm(), stax.Conv(6, (2,), **WB), stax.Erf(), stax.GlobalAvgPool(),
                             stax.Dense(1, **WB)), (4, 2), "layers"),
    "mlp-mup": (stax.serial(stax.Dense(24, 1.4, 0.3), stax.Tanh(), stax.Dense(24, 1.4, 0.3), stax.Tanh(),
                            stax.Dense(1, 1.4, 0.3)), (4,), "mup"),
    "mlp-sp": (stax.serial(stax.Dense(24, 1.4, 0.3, parametrization="standard"), stax.Tanh(),
                           stax.Dense(1, 1.4, 0.3, parametrization="standard")), (4,), "sp"),
}


@pytest.mark.parametrize("name", sorted(TRAIN_NETS))
def test_one_small_gradient_step_moves_outputs_by_minus_lr_ntk_residual(name):
    """f(theta - lr grad) - f(theta) = -lr/N Theta (f - y) + O(lr^2), Theta the recorded NTK of the
    dynamics: gradients, rates (abc multipliers included) and the NTK share one convention."""
    net, shape, par = TRAIN_NETS[name]
    X = np.random.default_rng(3).standard_normal((3, *shape))
    y = np.array([0.5, -1.0, 2.0])
    errs = []
    for lr in (1e-4, 5e-5):
        r = nw.train(net, X, y, lr=lr, steps=1, width=24, parametrization=par, n_networks=2, seed=4,
                     record=("ntk",), backend="numpy")
        f0, f1, ntk = r.f_train[:, 0, :, 0], r.f_train[:, 1, :, 0], r.ntk_train[:, 0]
        pred = -lr / 3 * np.einsum("bij,bj->bi", ntk, f0 - y)
        errs.append(np.max(np.abs(f1 - f0 - pred)))
        assert errs[-1] < 1e-2 * np.max(np.abs(pred))
    assert errs[1] < 0.3 * errs[0]  # the remainder is O(lr^2): it falls 4x when lr halves


def test_ntp_preset_is_the_layers_ntk_parametrization_and_mup_is_bordelon_pehlevans_network():
    """Yang & Hu 2021's ntp preset trains exactly as the NTK-parametrized layers; the mup preset
    (readout weight_var 1/gamma0^2, rate dt gamma0^2) is Bordelon & Pehlevan 2022's muP network,
    written out here: h = W0 x / sqrt(D), f = w . tanh(h) / (gamma0 N), every parameter moved by
    dt gamma0^2 N sum_mu (y - f)_mu df_mu/dtheta."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4, 5)), rng.standard_normal(4)
    net, _, _ = TRAIN_NETS["mlp"]
    a = nw.train(net, X, y, lr=0.1, steps=5, width=24, n_networks=2, seed=1, backend="numpy")
    b = nw.train(net, X, y, lr=0.1, steps=5, width=24, parametrization="ntp", n_networks=2, seed=1, backend="numpy")
    np.testing.assert_allclose(a.f_train, b.f_train, rtol=1e-12, atol=1e-14)
    N, D, g, dt = 32, 5, 0.7, 0.2
    W0_init, w_init = rng.standard_normal((N, D)), rng.standard_normal(N)
    W0, w, fs = W0_init, w_init, []
    for _ in range(6):
        h = W0 @ X.T / math.sqrt(D)
        f = w @ np.tanh(h) / (g * N)
        fs.append(f)
        delta = y - f
        gw = np.tanh(h) @ delta / (g * N)
        gW0 = ((w[:, None] * (1 - np.tanh(h) ** 2) / (g * N)) * delta) @ X / math.sqrt(D)
        w, W0 = w + dt * g * g * N * gw, W0 + dt * g * g * N * gW0
    mup = stax.serial(stax.Dense(1), stax.Tanh(), stax.Dense(1, weight_var=1 / g ** 2))
    # the engine's muP readout variable is w / sqrt(N) (init n^-1/2 in its NTK-parametrized Dense)
    init = [W0_init.T, np.zeros(N), w_init[:, None] / math.sqrt(N), np.zeros(1)]
    r = nw.train(mup, X, y, lr=dt * g * g, steps=5, width=N, parametrization="mup", loss_scale="sum",
                 record_every=1, backend="numpy", init=init)
    np.testing.assert_allclose(r.f_train[0, :, :, 0], np.array(fs), rtol=1e-12, atol=1e-14)


def test_training_a_wide_ntk_network_follows_its_linearization():
    """Lee et al. 2019: at large width in the NTK parametrization, GD ~ the linear model with the initial NTK."""
    X = np.random.default_rng(7).standard_normal((3, 4))
    y = np.array([1.0, -0.5, 0.3])
    net = stax.serial(stax.Dense(1, 1.0, 0.1), stax.Erf(), stax.Dense(1, 1.0, 0.1))
    res = nw.train(net, X, y, lr=1.0, steps=40, width=2048, n_networks=2, seed=3, record_every=10, record=("ntk",),
                   backend="numpy")
    assert res.f_train.shape == (2, 5, 3, 1) and res.loss.shape == (2, 5)
    for s in range(2):
        K = res.ntk_train[s, 0]
        f0 = res.f_train[s, 0, :, 0]
        for k, t in enumerate(res.steps):
            # discrete GD of the linear model: f_t - y = (I - lr K / N)^t (f_0 - y)
            lin = y + np.linalg.matrix_power(np.eye(3) - K / 3, int(t)) @ (f0 - y)
            assert np.max(np.abs(res.f_train[s, k, :, 0] - lin)) < 0.03
    assert np.all(res.loss[:, -1] < 0.2 * res.loss[:, 0])
    rel = np.abs(res.ntk_train[:, -1] - res.ntk_train[:, 0]).max() / np.abs(res.ntk_train[:, 0]).max()
    assert rel < 0.05  # lazy training: the NTK barely moves


def test_training_records_batches_backends_and_weight_decay():
    pytest.importorskip("array_api_strict")
    net, shape, _ = TRAIN_NETS["cnn-pool"]
    X = np.random.default_rng(2).standard_normal((3, *shape))
    Y = np.random.default_rng(3).standard_normal((3, 2))
    kw = dict(lr=0.05, steps=4, width=5, n_networks=3, seed=6, record=("features", "readout"), record_every=2,
              X_test=X[:2] + 0.1, weight_decay=0.01)
    a = nw.train(net, X, Y, backend="numpy", **kw)
    b = nw.train(net, X, Y, backend="array-api-strict", batch_size=2, **kw)
    for key in ("f_train", "f_test", "loss", "features", "readout"):
        np.testing.assert_allclose(getattr(b, key), getattr(a, key), rtol=1e-10, atol=1e-13)
    assert a.f_train.shape == (3, 3, 3, 2) and a.features.shape == (3, 3, 3, 5) and a.readout.shape == (3, 3, 5, 2)
    inputs = nw.train(net, X, Y, lr=0.05, steps=1, width=5, record=("features",), features_at=0, backend="numpy")
    np.testing.assert_array_equal(inputs.features[0, 0], X.reshape(3, -1))  # the output of no layer: the input
    # weight decay: one step on the readout alone (a lone Dense) is W (1 - lr wd) - lr grad
    lone = stax.Dense(1, 1.0, 0.0, parametrization="standard")
    Xs = np.random.default_rng(4).standard_normal((5, 3))
    r = nw.train(lone, Xs, np.ones(5), lr=0.1, steps=1, weight_decay=0.5, record=("readout",), backend="numpy")
    W0 = r.readout[0, 0, :, 0]
    grad = Xs.T @ (Xs @ W0 - 1.0) / 5
    np.testing.assert_allclose(r.readout[0, 1, :, 0], W0 * (1 - 0.05) - 0.1 * grad, rtol=1e-12)


def test_training_bad_inputs_name_the_argument():
    net, shape, _ = TRAIN_NETS["mlp"]
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"^lr: must be a finite number > 0, got -1.0$"):
        nw.train(net, X, np.ones(3), lr=-1.0, steps=2)
    with pytest.raises(ValueError, match=r"^y: must have shape \(3,\) or \(3, k\), got shape \(4,\)$"):
        nw.train(net, X, np.ones(4), lr=0.1, steps=2)
    with pytest.raises(ValueError, match=r"^y: must be finite, got nan$"):
        nw.train(net, X, np.array([0.0, np.nan, 1.0]), lr=0.1, steps=2)
    with pytest.raises(ValueError, match=r"^steps: must be an integer >= 0, got -1$"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="width.*abc"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, parametrization="mup")
    with pytest.raises(ValueError, match="parametrization.*2 layers.*3 Dense/Conv"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, width=8, parametrization=([0, 0], [0, 0.5], 1))
    with pytest.raises(ValueError, match="parametrization.*'layers'"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, width=8, parametrization="ntk-ish")
    with pytest.raises(ValueError, match="record"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, record=("hessian",))
    with pytest.raises(ValueError, match="record_steps"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, record_steps=[5])
    with pytest.raises(ValueError, match="init"):
        nw.train(net, X, np.ones(3), lr=0.1, steps=1, init=[np.ones(2)])


@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.sampled_from(["layers", "mup", "sp"]))
@settings(max_examples=8, deadline=None)
def test_trained_network_i_depends_only_on_seed_and_i(seed, batch_size, parametrization):
    """Network i's draws and trajectory come from (seed, i) alone: not from the batching or the
    number of networks trained beside it."""
    net, shape, _ = TRAIN_NETS["mlp"]
    X = np.random.default_rng(1).standard_normal((3, *shape))
    kw = dict(lr=0.05, steps=3, width=6, parametrization=parametrization, seed=seed, backend="numpy")
    a = nw.train(net, X, np.ones(3), n_networks=3, batch_size=batch_size, **kw)
    b = nw.train(net, X, np.ones(3), n_networks=2, **kw)
    np.testing.assert_array_equal(a.f_train[:2], b.f_train)

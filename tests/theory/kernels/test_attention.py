"""limitlab.theory.kernels.attention: GlobalSelfAttention on the stax kernel state.

Checked against (1) neural-tangents 0.6.5 (fixture tests/fixtures/stax_extra_kernels.npz, made
by tests/fixtures/make_stax_extra_fixtures.py), (2) closed forms computed here from the inputs
(identity attention; uniform softmax attention = global average pooling), (3) a finite
multi-head Monte Carlo attention layer, and (4) exact properties (permutation equivariance
over positions, symmetry, PSD, the std/variance spellings).
"""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.stax_cases import DECAYS, check_case, load  # tests/ is on pytest's pythonpath
from limitlab.theory.kernels import stax
from limitlab.theory.kernels.attention import GlobalSelfAttention
from limitlab.theory.kernels.normalization import LayerNorm

FIX_PATH = Path(__file__).parents[2] / "fixtures" / "stax_extra_kernels.npz"
FIX, CASES = load(FIX_PATH.name)
MECHS = ["softmax", "identity", "abs", "relu"]
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINE = [c for c in CASES if "attention" in json.dumps(c["layers"]).lower() or c["key"].startswith("attn_")]


def test_fixture_covers_every_supported_combination():
    keys = {c["key"] for c in MINE}
    assert len(keys) >= 12 and "transformer_block" in keys and "spatial_out_attention" in keys
    text = json.dumps([c["layers"] for c in MINE])
    for word in ("SOFTMAX", "IDENTITY", "ABS", "RELU", '"SUM"', '"CONCAT"', "exp_half", "val_pos_emb"):
        assert word in text


@pytest.mark.parametrize("case", MINE, ids=[c["key"] for c in MINE])
def test_matches_neural_tangents_to_1e10(case):
    check_case(FIX, case)


# ---------------------------------------------------------------------------------------
# closed forms from the inputs
# ---------------------------------------------------------------------------------------

def _grams(X1, X2):
    C = X1.shape[-1]
    return (np.einsum("nsc,mtc->nmst", X1, X2) / C, np.einsum("nsc,ntc->nst", X1, X1) / C,
            np.einsum("nsc,ntc->nst", X2, X2) / C)


def test_identity_attention_on_inputs_is_a_product_of_grams():
    """linear_scaling, identity: K' = o v sqrt(q k)^2 c(x) K c(x')^T + b, Theta' = 2 (K' - b) + b."""
    rng = np.random.default_rng(0)
    X1, X2 = rng.standard_normal((3, 5, 4)), rng.standard_normal((2, 5, 4))
    q, k_, v, o, b = 0.7, 1.9, 1.3, 0.8, 0.2
    layer = GlobalSelfAttention(6, 6, 6, 2, True, k_, v, q, o, b, "identity")
    K, c1, c2 = _grams(X1, X2)
    want = o * v * q * k_ * np.einsum("nsp,nmpr,mtr->nmst", c1, K, c2) + b
    got = layer.kernels(X1, X2)
    for ours, ref in ((got.nngp, want), (got.ntk, 2 * (want - b) + b)):
        np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=1e-14 * np.max(np.abs(ref)))


def test_sqrt_scaled_identity_attention_on_inputs():
    """linear_scaling=False, identity: K' = q k o v S K + b with S = sum_{t,t'} K^2, Theta' = 4 q k o v S K + b."""
    rng = np.random.default_rng(1)
    X1, X2 = rng.standard_normal((3, 4, 2, 3)), rng.standard_normal((2, 4, 2, 3))
    q, k_, v, o, b = 1.1, 0.6, 1.4, 0.9, 0.05
    layer = GlobalSelfAttention(6, 6, 6, 2, False, W_key_std=k_ ** 0.5, W_query_std=q ** 0.5, W_value_std=v ** 0.5,
                                W_out_std=o ** 0.5, b_std=b ** 0.5, attention_mechanism="IDENTITY")
    K = np.einsum("nhwc,mijc->nmhwij", X1, X2) / 3
    S = np.sum(K ** 2, axis=(2, 3, 4, 5), keepdims=True)
    got = layer.kernels(X1, X2)
    for ours, want in ((got.nngp, q * k_ * o * v * S * K + b), (got.ntk, 4 * q * k_ * o * v * S * K + b)):
        # entries near 0 (K + b cancelling) to rounding relative to the largest entry
        np.testing.assert_allclose(ours, want, rtol=1e-13, atol=1e-14 * np.max(np.abs(want)))


@given(seed=st.integers(0, 2 ** 31), ov=st.floats(0.2, 3.0), b=st.floats(0.0, 1.0))
@SETTINGS
def test_uniform_softmax_attention_is_global_average_pooling(seed, ov, b):
    """With zero key variance the softmax weights are 1/P: every output pixel is the mean of the values,
    K'[s, s'] = o v mean_{t,t'} K + b, which is GlobalAvgPool's kernel, and
    Theta' = o v mean Theta + 2 o v mean K + b."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, 5, 2))
    body = [stax.Conv(4, (2,), padding="SAME", bias_var=0.1), stax.Relu(), stax.Conv(4, (3,), padding="CIRCULAR")]
    att = stax.serial(*body, GlobalSelfAttention(4, 4, 4, 1, key_weight_var=0.0, value_weight_var=ov, bias_var=b))
    pooled = stax.serial(*body, stax.GlobalAvgPool()).kernels(X)
    got = att.kernels(X)
    want = ov * pooled.nngp[:, :, None, None] + b
    np.testing.assert_allclose(got.nngp, np.broadcast_to(want, got.nngp.shape), rtol=1e-13)
    want_ntk = ov * pooled.ntk[:, :, None, None] + 2 * ov * pooled.nngp[:, :, None, None] + b
    np.testing.assert_allclose(got.ntk, np.broadcast_to(want_ntk, got.ntk.shape), rtol=1e-13)


def test_monte_carlo_multi_head_softmax_attention():
    """A finite linear-scaling softmax attention layer (tied keys/queries, NTK parametrization) on
    fixed inputs: with d_k = 4000 the attention weights are within ~1.6% of their limit, and the
    expectation over W_O with H d_v = 6000 value channels leaves an O(1/sqrt(6000)) ~ 1.3% error."""
    rng = np.random.default_rng(3)
    N, P, C = 3, 5, 4
    X = rng.standard_normal((N, P, C))
    q, k_, v, o = 1.5, 2.0, 1.2, 0.9
    H, dk, dv = 60, 4000, 100
    acc = np.zeros((N, N, P, P))
    for _ in range(H):
        WK = rng.standard_normal((C, dk))
        keys = X @ WK                                                   # (N, P, dk)
        logits = np.sqrt(q * k_) * keys @ keys.transpose(0, 2, 1) / (C * dk)
        A = np.exp(logits - logits.max(-1, keepdims=True))
        A /= A.sum(-1, keepdims=True)
        V = X @ rng.standard_normal((C, dv))                            # (N, P, dv)
        AV = A @ V
        acc += np.einsum("nsj,mtj->nmst", AV, AV)                       # E over W_O of y y', per head
    emp = o * v * acc / (dv * H * C)
    lim = GlobalSelfAttention(8, 8, 8, 8, True, k_, v, q, o).nngp(X)
    np.testing.assert_allclose(emp, lim, atol=0.06 * np.max(np.abs(lim)))
    # the attention is not uniform here: pooling all positions would be far off
    uniform = o * v * lim.mean(axis=(2, 3), keepdims=True) / (o * v)
    assert np.max(np.abs(lim - np.broadcast_to(uniform, lim.shape))) > 0.2 * np.max(np.abs(lim))


def test_std_and_variance_spellings_agree():
    X = np.random.default_rng(4).standard_normal((3, 4, 2))
    a = GlobalSelfAttention(4, 4, 4, 2, True, 1.44, 0.81, 0.64, 1.21, 0.09, "relu")
    b = GlobalSelfAttention(4, 4, 4, 2, True, W_key_std=1.2, W_value_std=0.9, W_query_std=0.8, W_out_std=1.1,
                            b_std=0.3, attention_mechanism="RELU")
    ka, kb = a.kernels(X), b.kernels(X)
    np.testing.assert_allclose(ka.nngp, kb.nngp, rtol=1e-14)
    np.testing.assert_allclose(ka.ntk, kb.ntk, rtol=1e-14)


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------

@st.composite
def attention_layers(draw, equivariant=False):
    linear = draw(st.booleans())
    mech = draw(st.sampled_from(MECHS)) if linear else "identity"
    pos = draw(st.sampled_from(["none", "sum", "concat"]))
    decay = None if equivariant else draw(st.sampled_from([None, DECAYS["exp_half"], DECAYS["inverse"]]))
    return GlobalSelfAttention(6, 6, 6, 3, linear, draw(st.floats(0.2, 2.0)), draw(st.floats(0.2, 2.0)),
                               attention_mechanism=mech, bias_var=draw(st.sampled_from([None, 0.1])),
                               pos_emb_type=pos, pos_emb_decay_fn=decay, val_pos_emb=draw(st.booleans()),
                               pos_emb_weight_var=draw(st.floats(0.1, 2.0)))


@given(layer=attention_layers(equivariant=True), seed=st.integers(0, 2 ** 31), data=st.data())
@SETTINGS
def test_attention_is_equivariant_to_permuting_positions(layer, seed, data):
    """Per-position layers and global attention (no or one-hot positional embeddings) commute with any
    permutation pi of the positions: K(pi X)[s, s'] = K(X)[pi s, pi s']."""
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((3, 6, 2)), rng.standard_normal((2, 6, 2))
    perm = np.array(data.draw(st.permutations(range(6))))
    net = stax.serial(stax.Dense(5, 1.5, 0.1), stax.Relu(), stax.Dense(5), layer, stax.Erf(), stax.Dense(3))
    k, kp = net.kernels(X1, X2), net.kernels(X1[:, perm], X2[:, perm])
    for K, Kp in ((k.nngp, kp.nngp), (k.ntk, kp.ntk)):
        np.testing.assert_allclose(Kp, K[:, :, perm][:, :, :, perm], rtol=1e-12, atol=1e-13 * np.max(np.abs(K)))


@given(layer=attention_layers(), seed=st.integers(0, 2 ** 31))
@SETTINGS
def test_attention_kernels_are_symmetric_psd_and_both_paths_agree(layer, seed):
    X = np.random.default_rng(seed).standard_normal((4, 3, 2, 2))
    net = stax.serial(stax.Conv(4, (2, 2), padding="SAME", bias_var=0.1), stax.Relu(), stax.Conv(4, (1, 1)),
                      LayerNorm(), layer)
    k, k2 = net.kernels(X), net.kernels(X, X)
    for K, K2 in ((k.nngp, k2.nngp), (k.ntk, k2.ntk)):
        M = K.reshape(4, 4, 6, 6).transpose(0, 2, 1, 3).reshape(24, 24)
        assert np.array_equal(M, M.T)
        ev = np.linalg.eigvalsh(M)
        assert ev[0] >= -1e-11 * ev[-1]
        np.testing.assert_allclose(K2, K, rtol=1e-11, atol=1e-12 * np.max(np.abs(K)))


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["softmax", "abs", "relu"])
def test_sqrt_scaling_without_closed_form_is_refused(mech):
    net = stax.serial(stax.Conv(4, (2,)), GlobalSelfAttention(4, 4, 4, 2, False, attention_mechanism=mech))
    with pytest.raises(NotImplementedError, match=rf"GlobalSelfAttention.*serial\[1\].*linear_scaling=False with "
                                                  rf"attention_mechanism='{mech}'"):
        net.kernels(np.ones((2, 5, 3)))


def test_flat_inputs_are_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.*spatial positions.*\(2, 4\)"):
        stax.serial(stax.Dense(4), GlobalSelfAttention(4, 4, 4, 2)).kernels(np.ones((2, 3)))


def test_positional_embedding_misuse():
    X = np.ones((2, 5, 3))
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.*n_chan_pos_emb must be None or the input's channel "
                                         r"count 4, got 7"):
        stax.serial(stax.Conv(4, (1,)), GlobalSelfAttention(4, 4, 4, 2, pos_emb_type="SUM",
                                                            n_chan_pos_emb=7)).kernels(X)
    with pytest.raises(ValueError, match=r"pos_emb_decay_fn must map the \(5, 5\) distance array"):
        GlobalSelfAttention(4, 4, 4, 2, pos_emb_type="sum", pos_emb_decay_fn=lambda d: d[0]).kernels(X)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(n_heads=0), ValueError, "GlobalSelfAttention: n_heads: must be an integer >= 1, got 0"),
    (dict(n_chan_key=2.5), ValueError, "GlobalSelfAttention: n_chan_key: must be an integer >= 1, got 2.5"),
    (dict(attention_mechanism="sigmoid"), ValueError, "GlobalSelfAttention: attention_mechanism: must be one of 'softmax'"),
    (dict(pos_emb_type="rotary"), ValueError, "GlobalSelfAttention: pos_emb_type: must be one of 'none'"),
    (dict(key_weight_var=2.0, W_key_std=1.0), ValueError, "give key_weight_var or W_key_std"),
    (dict(bias_var=0.1, b_std=0.1), ValueError, "give bias_var or b_std"),
    (dict(out_weight_var=-1.0), ValueError, "GlobalSelfAttention: out_weight_var: must be a finite number >= 0"),
    (dict(linear_scaling=1), TypeError, "GlobalSelfAttention: linear_scaling: must be True or False"),
    (dict(pos_emb_decay_fn=3.0), TypeError, "GlobalSelfAttention: pos_emb_decay_fn must be None or a function"),
    (dict(channel_axis=1), ValueError, "GlobalSelfAttention: .* channel_axis must be -1"),
])
def test_bad_arguments(kwargs, exc, msg):
    base = dict(n_chan_out=4, n_chan_key=4, n_chan_val=4, n_heads=2)
    with pytest.raises(exc, match=msg):
        GlobalSelfAttention(**{**base, **kwargs})

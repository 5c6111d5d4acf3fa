"""limitlab.theory.kernels.normalization: LayerNorm and Dropout on the stax kernel state.

Checked against (1) neural-tangents 0.6.5 (fixture tests/fixtures/stax_extra_kernels.npz, made
by tests/fixtures/make_stax_extra_fixtures.py), (2) closed forms computed here from the inputs,
(3) a finite-width Monte Carlo LayerNorm, and (4) exact properties (invariance to the input
scale, unit normalized variance, symmetry, PSD).
"""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.stax_cases import check_case, load  # tests/ is on pytest's pythonpath
from limitlab.theory.kernels import stax
from limitlab.theory.kernels.normalization import Dropout, LayerNorm

FIX_PATH = Path(__file__).parents[2] / "fixtures" / "stax_extra_kernels.npz"
FIX, CASES = load(FIX_PATH.name)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINE = [c for c in CASES if c["key"].startswith(("ln_", "dropout_"))]


def test_fixture_is_small_and_covers_the_layers():
    assert FIX_PATH.stat().st_size < 1_000_000
    assert len([c for c in MINE if c["key"].startswith("ln_")]) >= 6
    assert len([c for c in MINE if c["key"].startswith("dropout_")]) >= 3


@pytest.mark.parametrize("case", MINE, ids=[c["key"] for c in MINE])
def test_matches_neural_tangents_to_1e10(case):
    check_case(FIX, case)


# ---------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------

def test_layernorm_after_dense_is_the_cosine_kernel():
    """Dense then LayerNorm on flat inputs: K / sqrt(K(x,x) K(x',x')), from the inputs directly."""
    rng = np.random.default_rng(0)
    X1, X2 = rng.standard_normal((4, 6)), rng.standard_normal((3, 6))
    w, b, eps = 1.7, 0.3, 0.05
    net = stax.serial(stax.Dense(5, w, b), LayerNorm(eps=eps))
    k = net.kernels(X1, X2)
    K = w * X1 @ X2.T / 6 + b
    q1, q2 = w * np.sum(X1 ** 2, 1) / 6 + b + eps, w * np.sum(X2 ** 2, 1) / 6 + b + eps
    want = K / np.sqrt(np.outer(q1, q2))
    np.testing.assert_allclose(k.nngp, want, rtol=1e-14)
    # Theta = K' + 0 before the LayerNorm (Dense on inputs), divided by the same normalizer
    np.testing.assert_allclose(k.ntk, want, rtol=1e-14)


def test_layernorm_over_spatial_axes_divides_by_the_mean_pixel_variance():
    """1x1 conv then LayerNorm(axis=(1, 2, -1)) on images: v(x) = eps + mean_s K(x,s;x,s) over all pixels,
    or per column with axis=(1, -1)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 4, 5, 2)) * rng.uniform(0.5, 2.0, (3, 4, 5, 1))
    w, eps = 1.3, 1e-3
    G = w * np.einsum("nhwc,mijc->nmhwij", X, X) / 2          # the 1x1 conv's covariance, no bias
    q = w * np.sum(X ** 2, -1) / 2                            # (N, H, W)
    for axis, v in (((1, 2, -1), np.broadcast_to(q.mean((1, 2), keepdims=True), q.shape)),
                    ((1, -1), np.broadcast_to(q.mean(1, keepdims=True), q.shape))):
        net = stax.serial(stax.Conv(4, (1, 1), weight_var=w), LayerNorm(axis=axis, eps=eps))
        r = np.sqrt(v + eps)
        want = G / (r[:, None, :, :, None, None] * r[None, :, None, None, :, :])
        np.testing.assert_allclose(net.nngp(X), want, rtol=1e-13)


def test_layernorm_monte_carlo_finite_width():
    """A finite Dense(n) + LayerNorm network's empirical kernel tends to the limit: with n = 40000
    channels the relative error of the channel average is O(n^-1/2) ~ 0.5%."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 5))
    n, w, b = 40000, 2.0, 0.5
    W = rng.standard_normal((5, n)) * np.sqrt(w / 5)
    H = X @ W + np.sqrt(b) * rng.standard_normal(n)
    Y = (H - H.mean(1, keepdims=True)) / np.sqrt(H.var(1, keepdims=True) + 1e-12)
    emp = Y @ Y.T / n
    lim = stax.serial(stax.Dense(n, w, b), LayerNorm()).nngp(X)
    np.testing.assert_allclose(emp, lim, atol=0.03)
    assert np.max(np.abs(emp - lim)) > 0  # a statistical check, not an identity


def test_dropout_test_mode_is_the_identity_and_train_mode_scales_the_diagonal():
    rng = np.random.default_rng(3)
    X1, X2 = rng.standard_normal((4, 5, 2)), rng.standard_normal((3, 5, 2))
    base = [stax.Conv(6, (2,), padding="SAME", weight_var=1.5, bias_var=0.1), stax.Relu()]
    ref11, ref12 = stax.serial(*base).kernels(X1), stax.serial(*base).kernels(X1, X2)
    test11 = stax.serial(*base, Dropout(0.5, "test")).kernels(X1)
    assert np.array_equal(test11.nngp, ref11.nngp) and np.array_equal(test11.ntk, ref11.ntk)
    rate = 0.8
    tr11, tr12 = (stax.serial(*base, Dropout(rate)).kernels(*a) for a in ((X1,), (X1, X2)))
    assert np.array_equal(tr12.nngp, ref12.nngp) and np.array_equal(tr12.ntk, ref12.ntk)
    n, P = 4, 5
    diag = np.zeros((n, n, P, P), dtype=bool)
    diag[np.arange(n)[:, None], np.arange(n)[:, None], np.arange(P), np.arange(P)] = True
    for ours, ref in ((tr11.nngp, ref11.nngp), (tr11.ntk, ref11.ntk)):
        np.testing.assert_allclose(ours[diag], ref[diag] / rate, rtol=1e-15)
        assert np.array_equal(ours[~diag], ref[~diag])
    # the per-input covariances carry the factor into later layers: the X1-X2 block of the
    # symmetric call on the stacked batch equals the explicit X1, X2 call (different inputs:
    # independent masks), through a conv and a ReLU that read the variances
    net = stax.serial(*base, Dropout(rate), stax.Conv(3, (2,), weight_var=1.2, bias_var=0.1), stax.Relu(),
                      stax.GlobalAvgPool(), stax.Dense(1))
    both, cross = net.kernels(np.concatenate([X1, X2])), net.kernels(X1, X2)
    for K, C in ((both.nngp, cross.nngp), (both.ntk, cross.ntk)):
        np.testing.assert_allclose(K[:4, 4:], C, rtol=1e-13)
    no_drop = stax.serial(*base, stax.Conv(3, (2,), weight_var=1.2, bias_var=0.1), stax.Relu(),
                          stax.GlobalAvgPool(), stax.Dense(1)).kernels(X1, X2)
    assert np.max(np.abs(no_drop.nngp - cross.nngp)) > 1e-3 * np.max(np.abs(cross.nngp))


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------

@st.composite
def ln_nets(draw):
    """Conv / Dense nets with a LayerNorm after an affine layer, on (N, H, W, C) images."""
    layers = [stax.Conv(4, (2, 2), padding=draw(st.sampled_from(["SAME", "CIRCULAR"])),
                        weight_var=draw(st.floats(0.5, 2.5)), bias_var=0.0)]
    axis = draw(st.sampled_from([-1, (1, -1), (2, 3), (1, 2, -1)]))
    layers.append(LayerNorm(axis=axis, eps=0.0))
    if draw(st.booleans()):
        layers += [draw(st.sampled_from([stax.Relu(), stax.Erf()])), stax.Conv(4, (2, 2), padding="SAME",
                                                                                 bias_var=0.2)]
    return stax.serial(*layers), axis


@given(net_axis=ln_nets(), seed=st.integers(0, 2 ** 31), scale=st.floats(1e-3, 1e3))
@SETTINGS
def test_layernorm_kernels_are_invariant_to_the_input_scale(net_axis, seed, scale):
    """Without biases before it and eps = 0, LayerNorm removes the input scale exactly."""
    net, _ = net_axis
    X = np.random.default_rng(seed).standard_normal((3, 4, 3, 2))
    k, ks = net.kernels(X), net.kernels(scale * X)
    np.testing.assert_allclose(ks.nngp, k.nngp, rtol=1e-12, atol=1e-13 * np.max(np.abs(k.nngp)))
    np.testing.assert_allclose(ks.ntk, k.ntk, rtol=1e-12, atol=1e-13 * np.max(np.abs(k.ntk)))


@given(seed=st.integers(0, 2 ** 31), axis=st.sampled_from([-1, (1, -1), (2, 3), (1, 2, -1)]),
       w=st.floats(0.3, 3.0), b=st.floats(0.0, 1.0))
@SETTINGS
def test_layernorm_normalized_variance_is_one(seed, axis, w, b):
    """After LayerNorm(eps=0) the pixel variances K(x,s;x,s), averaged over the normalized spatial
    axes, are exactly 1."""
    X = np.random.default_rng(seed).standard_normal((3, 4, 3, 2))
    K = stax.serial(stax.Conv(4, (2, 2), padding="SAME", weight_var=w, bias_var=b),
                    LayerNorm(axis=axis, eps=0.0)).nngp(X)
    q = np.einsum("nnhwhw->nhw", K)
    sp = tuple(a for a in ((axis,) if isinstance(axis, int) else axis) if a in (1, 2))
    np.testing.assert_allclose(q.mean(axis=sp) if sp else q, 1.0, rtol=1e-13)


@given(net_axis=ln_nets(), seed=st.integers(0, 2 ** 31))
@SETTINGS
def test_layernorm_kernels_are_symmetric_psd_and_both_paths_agree(net_axis, seed):
    net, _ = net_axis
    X = np.random.default_rng(seed).standard_normal((4, 3, 3, 2))
    k, k2 = net.kernels(X), net.kernels(X, X)
    for K, K2 in ((k.nngp, k2.nngp), (k.ntk, k2.ntk)):
        M = K.reshape(4, 4, 9, 9).transpose(0, 2, 1, 3).reshape(36, 36)
        assert np.array_equal(M, M.T)
        ev = np.linalg.eigvalsh(M)
        assert ev[0] >= -1e-12 * ev[-1]
        np.testing.assert_allclose(K2, K, rtol=1e-12, atol=1e-12 * np.max(np.abs(K)))


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def test_layernorm_after_an_activation_is_refused():
    X = np.ones((2, 5, 3))
    net = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Relu(), LayerNorm())
    with pytest.raises(NotImplementedError, match=r"LayerNorm.*serial\[2\].*Gaussian inputs.*\(2, 5, 8\)"):
        net.kernels(X)


@pytest.mark.parametrize("make, exc, msg", [
    (lambda: LayerNorm(axis=(1, 2)), ValueError, r"axis \(1, 2\) must include the channel axis .* \(3, 5, 4, 2\)"),
    (lambda: LayerNorm(axis=(4, -1)), ValueError, r"axis 4 is out of range .* \(3, 5, 4, 2\)"),
    (lambda: LayerNorm(axis=(3, -1)), ValueError, r"repeats an axis"),
])
def test_layernorm_bad_axis_names_the_shape(make, exc, msg):
    X = np.random.default_rng(0).standard_normal((3, 5, 4, 3))
    with pytest.raises(exc, match=msg):
        stax.serial(stax.Conv(2, (1, 1)), make()).kernels(X)


@pytest.mark.parametrize("make, exc, msg", [
    (lambda: LayerNorm(eps=-1.0), ValueError, "LayerNorm: eps: must be a finite number >= 0"),
    (lambda: LayerNorm(axis="channels"), TypeError, "LayerNorm: axis: must be an integer"),
    (lambda: LayerNorm(axis=1.5), TypeError, "LayerNorm: axis: must be an integer"),
    (lambda: LayerNorm(channel_axis=1), ValueError, "LayerNorm: .* channel_axis must be -1"),
    (lambda: LayerNorm(batch_axis=1), ValueError, "LayerNorm: .* batch_axis must be 0"),
    (lambda: Dropout(0.0), ValueError, r"Dropout: rate: must be a finite number in \(0, 1\], got 0.0 \(the keep probability\)"),
    (lambda: Dropout(1.5), ValueError, r"Dropout: rate"),
    (lambda: Dropout(0.5, "eval"), ValueError, "Dropout: mode: must be one of 'train', 'test', got 'eval'"),
])
def test_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_layernorm_zero_variance_without_eps():
    X = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"LayerNorm.*zero variance.*eps=0.*\(2, 4, 5\)"):
        stax.serial(stax.Conv(5, (1,)), LayerNorm(eps=0.0)).kernels(X)


def test_dropout_on_the_inputs_scales_the_input_gram_diagonal():
    """y_c = m_c x_c / rate: E[y . y / d] = |x|^2 / (d rate) on the diagonal, x . x' / d off it."""
    X = np.random.default_rng(5).standard_normal((4, 6))
    rate = 0.6
    K = stax.serial(Dropout(rate), stax.Dense(3, 1.0, 0.0)).nngp(X)
    G = X @ X.T / 6
    np.testing.assert_allclose(K, G + np.diag(np.diag(G)) * (1 / rate - 1), rtol=1e-14)

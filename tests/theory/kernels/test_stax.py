"""limitlab.theory.kernels.stax: composable infinite-width layers (kernel side).

Checked against (1) neural-tangents 0.6.5 on 29 architectures, Myrtle-5/7/10 among them (fixture made by
tests/fixtures/make_stax_fixtures.py), (2) limitlab's MLP, (3) closed forms computed here from
the images themselves (im2col patches, explicitly pooled images), and (4) exact properties
(symmetry, PSD, circular translation invariance, pooling identities).
"""
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.stax_cases import check_case, load  # tests/ is on pytest's pythonpath
from limitlab.theory.kernels import MLP
from limitlab.theory.kernels import stax

FIX, CASES = load("stax_kernels.npz")
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rel_err(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


# ---------------------------------------------------------------------------------------
# (1) neural-tangents
# ---------------------------------------------------------------------------------------

def test_fixture_is_small_and_broad():
    assert (Path(__file__).parents[2] / "fixtures" / "stax_kernels.npz").stat().st_size < 2_000_000
    assert len(CASES) >= 20


def test_fixture_has_the_myrtle_networks():
    """Myrtle-5/7/10 (Shankar et al. 2020) on 8x8x3 images: 3x3 SAME conv + ReLU stages, 2x2
    average pools, a final pool to 1x1 (a 2x2 pool + Flatten, or GlobalAvgPool), Dense(10)."""
    by_key = {c["key"]: c for c in CASES}
    for depth, n_conv in ((5, 4), (7, 6), (10, 9)):
        case = by_key[f"myrtle{depth}"]
        assert case["input"] == "img8" and FIX["img8_X1"].shape == (4, 8, 8, 3)
        names = [layer[0] for layer in case["layers"]]
        assert names.count("Conv") == n_conv and names.count("Relu") == n_conv and names[-1] == "Dense"
        assert all(layer[2]["padding"] == "SAME" and layer[1][1] == [3, 3] for layer in case["layers"]
                   if layer[0] == "Conv")


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_matches_neural_tangents_to_1e10(case):
    check_case(FIX, case, batch_size=64)  # the layer path (test_fused.py: the pair engine)


# ---------------------------------------------------------------------------------------
# (2) limitlab's MLP
# ---------------------------------------------------------------------------------------

# relu and erf only: each closed form compiles an MLP module once per machine (cached on disk,
# shared with test_mlp); the other closed forms are checked against the engine below
@pytest.mark.parametrize("act, layer", [("relu", stax.Relu), ("erf", stax.Erf)])
def test_serial_dense_equals_mlp_to_1e12(act, layer):
    X1 = np.random.default_rng(1).standard_normal((6, 5))
    X2 = np.random.default_rng(2).standard_normal((4, 5))
    w, b = [1.7, 2.1, 0.9, 1.3], [0.1, 0.0, 0.3, 0.05]
    net = stax.serial(*[stax.Dense(64, w[i], b[i]) if j == 0 else layer() for i in range(3) for j in range(2)],
                      stax.Dense(1, w[3], b[3]))
    mlp = MLP(3, act, weight_var=w, bias_var=b)
    for args in ((X1,), (X1, X2)):
        ours, ref = net.kernels(*args), mlp.kernels(*args)
        for o, r in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
            assert o.shape == r.shape
            np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12 * np.max(np.abs(r)))


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_as_mlp_gives_the_mlp_with_the_same_kernels(param):
    """as_mlp(serial(Dense, act, ..., Dense)) is the MLP of the same variances, widths and
    parametrization: its kernels equal the stax network's (computed by the layer path)."""
    X = np.random.default_rng(4).standard_normal((5, 3))
    w, b = [1.7, 2.1, 0.9], [0.1, 0.0, 0.3]
    net = stax.serial(stax.Dense(32, w[0], b[0], parametrization=param), stax.Relu(),
                      stax.serial(stax.Dense(32, w[1], b[1], parametrization=param), stax.Relu()),
                      stax.Dense(1, w[2], b[2], parametrization=param))
    mlp = stax.as_mlp(net)
    assert (mlp.depth, mlp.activation.name, mlp.parametrization) == (2, "relu", param)
    ours, ref = net.kernels(X), mlp.kernels(X)
    np.testing.assert_allclose(ref.nngp, ours.nngp, rtol=1e-12)
    np.testing.assert_allclose(ref.ntk, ours.ntk, rtol=1e-12)


@pytest.mark.parametrize("net, match", [
    (stax.serial(stax.Conv(4, (2,)), stax.Relu(), stax.Dense(1)), r"expected Dense at serial\[0\]"),
    (stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(4), stax.Tanh(), stax.Dense(1)), "one activation"),
    (stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(8), stax.Relu(), stax.Dense(1)), "one width"),
    (stax.serial(stax.Dense(4), stax.Relu()), "fully connected"),
    (stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(4, parametrization="standard"), stax.Relu(),
                 stax.Dense(1)), "one parametrization"),
])
def test_as_mlp_names_the_layer_that_is_not_fully_connected(net, match):
    with pytest.raises(ValueError, match=match):
        stax.as_mlp(net)


def test_numerical_activation_matches_mlp_quadrature():
    """tanh has no closed form: both go through the Gaussian engine (1e-10 vs mpmath)."""
    X = np.random.default_rng(3).standard_normal((5, 4))
    net = stax.serial(stax.Dense(8, 1.5, 0.1), stax.Tanh(), stax.Dense(8, 1.5, 0.1), stax.Tanh(),
                      stax.Dense(1, 1.5, 0.1))
    ours, ref = net.kernels(X), MLP(2, "tanh", 1.5, 0.1).kernels(X)
    for o, r in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
        np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-10 * np.max(np.abs(r)))


def test_expression_activation_matches_closed_form_in_a_cnn():
    """erf given as a sympy expression runs through the Gaussian engine, Erf() through its closed form."""
    x = sp.Symbol("x")
    X = np.random.default_rng(4).standard_normal((3, 5, 4, 2))
    body = lambda act: stax.serial(stax.Conv(4, (2, 2), padding="SAME", bias_var=0.1), act,  # noqa: E731
                                   stax.Conv(4, (3, 2), padding="CIRCULAR", bias_var=0.1), stax.Relu(),
                                   stax.GlobalAvgPool(), stax.Dense(1))
    ours = body(stax.Activation(sp.erf(x))).kernels(X)
    ref = body(stax.Erf()).kernels(X)
    assert not stax.Activation(sp.erf(x)).activation.has_closed_form
    for o, r in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
        np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-10 * np.max(np.abs(r)))


@given(seed=st.integers(0, 2 ** 31), act=st.sampled_from(["relu", "erf", "tanh"]),
       hw=st.tuples(st.integers(1, 4), st.integers(1, 4)), depth=st.integers(1, 3))
@SETTINGS
def test_1x1_conv_net_with_gap_is_the_pixel_average_of_the_mlp_kernel(seed, act, hw, depth):
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((3, *hw, 3)), rng.standard_normal((2, *hw, 3))
    w, b = 1.6, 0.2
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(8, (1, 1), weight_var=w, bias_var=b), stax.Activation(act)]
    net = stax.serial(*layers, stax.Conv(1, (1, 1), weight_var=w, bias_var=b), stax.GlobalAvgPool())
    P = hw[0] * hw[1]
    ref = MLP(depth, act, weight_var=w, bias_var=b).kernels(X1.reshape(-1, 3), X2.reshape(-1, 3))
    ours = net.kernels(X1, X2)
    for o, r in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
        r = r.reshape(3, P, 2, P).mean(axis=(1, 3))
        np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12 * np.max(np.abs(r)))


# ---------------------------------------------------------------------------------------
# (3) closed forms from the images
# ---------------------------------------------------------------------------------------

def _pads(n, k, s, padding):
    if padding == "VALID":
        return (n - k) // s + 1, 0, 0
    out = -(-n // s)
    tot = max((out - 1) * s + k - n, 0)
    return out, tot // 2, tot - tot // 2


def _patches(X, filt, strides, padding):
    """(N, n_out..., prod(filt) * C) patch vectors, by explicit padding and loops over positions."""
    d = len(filt)
    sizes = [_pads(X.shape[1 + i], filt[i], strides[i], padding) for i in range(d)]
    width = [(0, 0)] + [(lo, hi) for _, lo, hi in sizes] + [(0, 0)]
    Xp = np.pad(X, width, mode="wrap" if padding == "CIRCULAR" else "constant")
    outs = [o for o, _, _ in sizes]
    P = np.empty((X.shape[0], *outs, int(np.prod(filt)) * X.shape[-1]))
    for pos in np.ndindex(*outs):
        sl = tuple(slice(p * s, p * s + f) for p, s, f in zip(pos, strides, filt))
        P[(slice(None), *pos)] = Xp[(slice(None), *sl)].reshape(X.shape[0], -1)
    return P


@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 3), padding=st.sampled_from(["VALID", "SAME", "CIRCULAR"]),
       data=st.data())
@SETTINGS
def test_first_conv_layer_is_the_im2col_gram(seed, d, padding, data):
    """One conv on the inputs: K(s, s') = w patch(x, s).patch(x', s') / (C |F|) + b (fan_in = C |F|)."""
    shape = tuple(data.draw(st.integers(2, 5)) for _ in range(d))
    filt = tuple(data.draw(st.integers(1, n)) for n in shape)
    strides = tuple(data.draw(st.integers(1, 3)) for _ in range(d))
    rng = np.random.default_rng(seed)
    C = 2
    X1, X2 = rng.standard_normal((3, *shape, C)), rng.standard_normal((2, *shape, C))
    w, b = 1.7, 0.3
    k = stax.Conv(5, filt, strides, padding, w, b).kernels(X1, X2)
    P1, P2 = _patches(X1, filt, strides, padding), _patches(X2, filt, strides, padding)
    F = P1.shape[-1]
    # (N1, N2, S, S') with our grouped layout
    ref = w * np.tensordot(P1, P2, axes=([-1], [-1])) / F + b
    ref = np.moveaxis(ref, 1 + d, 1)
    np.testing.assert_allclose(k.nngp, ref, rtol=1e-13, atol=1e-13 * np.max(np.abs(ref)))
    np.testing.assert_allclose(k.ntk, ref, rtol=1e-13, atol=1e-13 * np.max(np.abs(ref)))  # Theta^1 = K^1


def _pooled_images(X, window, strides, padding, average, normalize_edges=False):
    d = len(window)
    sizes = [_pads(X.shape[1 + i], window[i], strides[i], padding) for i in range(d)]
    width = [(0, 0)] + [(lo, hi) for _, lo, hi in sizes] + [(0, 0)]
    mode = "wrap" if padding == "CIRCULAR" else "constant"
    Xp = np.pad(X, width, mode=mode)
    inside = np.pad(np.ones(X.shape[1:-1]), width[1:-1], mode="constant")
    outs = [o for o, _, _ in sizes]
    Y = np.empty((X.shape[0], *outs, X.shape[-1]))
    for pos in np.ndindex(*outs):
        sl = tuple(slice(p * s, p * s + f) for p, s, f in zip(pos, strides, window))
        tot = Xp[(slice(None), *sl)].sum(axis=tuple(range(1, d + 1)))
        if average:
            tot = tot / (inside[sl].sum() if normalize_edges and padding == "SAME" else np.prod(window))
        Y[(slice(None), *pos)] = tot
    return Y


@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 3), padding=st.sampled_from(["VALID", "SAME", "CIRCULAR"]),
       kind=st.sampled_from(["avg", "sum", "avg_normalized"]), data=st.data())
@SETTINGS
def test_pooling_is_averaging_the_images(seed, d, padding, kind, data):
    """Pooling on the inputs = the Gram of the explicitly pooled images (then a Dense layer)."""
    shape = tuple(data.draw(st.integers(2, 5)) for _ in range(d))
    window = tuple(data.draw(st.integers(1, n)) for n in shape)
    strides = tuple(data.draw(st.integers(1, 3)) for _ in range(d))
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((3, *shape, 2)), rng.standard_normal((2, *shape, 2))
    if kind == "sum":
        pool = stax.SumPool(window, strides, padding)
    else:
        pool = stax.AvgPool(window, strides, padding, normalize_edges=kind == "avg_normalized")
    net = stax.serial(pool, stax.Dense(3, 1.4, 0.2))
    args = (window, strides, padding, kind != "sum", kind == "avg_normalized")
    Y1, Y2 = _pooled_images(X1, *args), _pooled_images(X2, *args)
    ref = 1.4 * np.moveaxis(np.tensordot(Y1, Y2, axes=([-1], [-1])), 1 + d, 1) / 2 + 0.2
    np.testing.assert_allclose(net.nngp(X1, X2), ref, rtol=1e-13, atol=1e-13 * np.max(np.abs(ref)))


def test_pool_identities_after_nonlinear_layers():
    X = np.random.default_rng(5).standard_normal((3, 4, 6, 2))
    body = [stax.Conv(4, (3, 3), padding="SAME", bias_var=0.1), stax.Relu(), stax.Conv(4, (2, 2), padding="SAME")]
    gap = stax.serial(*body, stax.GlobalAvgPool()).kernels(X)
    whole = stax.serial(*body, stax.AvgPool((4, 6)), stax.Flatten()).kernels(X)
    gsp = stax.serial(*body, stax.GlobalSumPool()).kernels(X)
    whole_sum = stax.serial(*body, stax.SumPool((4, 6)), stax.Flatten()).kernels(X)
    for a, b_ in ((gap, whole), (gsp, whole_sum)):
        np.testing.assert_allclose(a.nngp, b_.nngp, rtol=1e-13)
        np.testing.assert_allclose(a.ntk, b_.ntk, rtol=1e-13)
    np.testing.assert_allclose(gsp.nngp, 24 ** 2 * gap.nngp, rtol=1e-13)


# ---------------------------------------------------------------------------------------
# (4) properties
# ---------------------------------------------------------------------------------------

@st.composite
def cnns(draw):
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        layers.append(stax.Conv(4, (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                                padding=draw(st.sampled_from(["SAME", "CIRCULAR"])),
                                weight_var=draw(st.floats(0.5, 2.0)), bias_var=draw(st.floats(0.0, 0.5))))
        layers.append(stax.Activation(draw(st.sampled_from(["relu", "erf", "abs", "gelu"]))))
        if draw(st.booleans()):
            layers.append(stax.AvgPool((2, 2), padding=draw(st.sampled_from(["SAME", "CIRCULAR"]))))
    layers.append(draw(st.sampled_from([stax.GlobalAvgPool(), stax.Flatten()])))
    layers.append(stax.Dense(1, 1.0, 0.1))
    return stax.serial(*layers)


@given(net=cnns(), seed=st.integers(0, 2 ** 31))
@SETTINGS
def test_symmetric_psd_and_the_explicit_x2_path_agrees(net, seed):
    X = np.random.default_rng(seed).standard_normal((5, 4, 3, 2))
    k = net.kernels(X)
    k2 = net.kernels(X, X)
    off = ~np.eye(5, dtype=bool)
    for K, K2 in ((k.nngp, k2.nngp), (k.ntk, k2.ntk)):
        assert np.array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev[0] >= -1e-12 * ev[-1]
        np.testing.assert_allclose(K2[off], K[off], rtol=1e-12, atol=1e-12 * np.max(np.abs(K)))
        np.testing.assert_allclose(np.diag(K2), np.diag(K), rtol=1e-12)


@given(seed=st.integers(0, 2 ** 31), shifts=st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)),
                                                     min_size=5, max_size=5),
       f=st.tuples(st.integers(1, 4), st.integers(1, 3)), act=st.sampled_from(["relu", "erf", "tanh"]))
@SETTINGS
def test_circular_convs_are_translation_invariant(seed, shifts, f, act):
    """With circular convs, rolling the pixels of every input (each by its own shift) leaves the
    kernel after global pooling unchanged; after Flatten (which pairs pixel s with s) a common
    shift leaves it unchanged and shifting one side only changes it."""
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((3, 5, 4, 2)), rng.standard_normal((2, 5, 4, 2))
    body = [stax.Conv(4, (f[0], 3), padding="CIRCULAR", bias_var=0.1), stax.Activation(act),
            stax.Conv(4, f[::-1], padding="CIRCULAR"), stax.Relu()]
    gap = stax.serial(*body, stax.GlobalAvgPool(), stax.Dense(1))
    flat = stax.serial(*body, stax.Flatten(), stax.Dense(1))
    each = lambda X, sh: np.stack([np.roll(x, s, axis=(0, 1)) for x, s in zip(X, sh)])  # noqa: E731
    a, b_ = gap.kernels(X1, X2), gap.kernels(each(X1, shifts[:3]), each(X2, shifts[3:]))
    for o, r in ((a.nngp, b_.nngp), (a.ntk, b_.ntk)):
        np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12 * np.max(np.abs(r)))
    sh = shifts[0]
    a, b_ = flat.kernels(X1, X2), flat.kernels(each(X1, [sh] * 3), each(X2, [sh] * 2))
    for o, r in ((a.nngp, b_.nngp), (a.ntk, b_.ntk)):
        np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12 * np.max(np.abs(r)))
    if sh[0] % 5 or sh[1] % 4:
        assert not np.allclose(flat.nngp(X1, each(X2, [sh] * 2)), a.nngp, rtol=1e-6)


def test_std_and_variance_spellings_agree():
    X = np.random.default_rng(6).standard_normal((3, 5, 2))
    a = stax.serial(stax.Conv(4, (2,), W_std=1.3, b_std=0.4), stax.Relu(), stax.Flatten(), stax.Dense(1, W_std=0.7))
    b_ = stax.serial(stax.Conv(4, (2,), weight_var=1.3 ** 2, bias_var=0.4 ** 2), stax.Relu(), stax.Flatten(),
                     stax.Dense(1, 0.7 ** 2))
    np.testing.assert_array_equal(a.ntk(X), b_.ntk(X))


def test_residual_identity_branch_adds_the_kernel():
    """FanOut -> parallel(f, Identity) -> FanInSum is K_f + K (independent Gaussian branches)."""
    X = np.random.default_rng(7).standard_normal((3, 4, 4, 2))
    stem = stax.Conv(4, (3, 3), padding="SAME", bias_var=0.1)
    branch = stax.serial(stax.Relu(), stax.Conv(4, (3, 3), padding="SAME"))
    res = stax.serial(stem, stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum()).kernels(X)
    a, b_ = stax.serial(stem, branch).kernels(X), stem.kernels(X)
    np.testing.assert_allclose(res.nngp, a.nngp + b_.nngp, rtol=1e-14)
    np.testing.assert_allclose(res.ntk, a.ntk + b_.ntk, rtol=1e-14)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def test_wrong_input_rank_names_layer_and_shape():
    net = stax.serial(stax.Dense(3), stax.Relu(), stax.Conv(4, (3, 3)))
    with pytest.raises(ValueError, match=r"Conv\(4, \(3, 3\).* at serial\[2\]: a 2-D filter_shape needs inputs of "
                                         r"shape \(N, H, W, C\) \(rank 4\), got an input of shape \(2, 7, 3\)"):
        net.kernels(np.ones((2, 7, 5)))


def test_channels_first_input_is_named():
    net = stax.serial(stax.Conv(4, (3, 3), in_chan=3), stax.Relu(), stax.GlobalAvgPool())
    with pytest.raises(ValueError, match=r"serial\[0\]: declared in_chan=3 but its input has 8 channels \(input shape "
                                         r"\(2, 3, 8, 8\).*looks channels-first"):
        net.kernels(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    net.kernels(np.random.default_rng(0).standard_normal((2, 8, 8, 3)))  # channels-last is fine


def test_incompatible_parallel_branches():
    net = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.FanOut(2),
                      stax.parallel(stax.Conv(4, (3, 3)), stax.Identity()), stax.FanInSum())
    with pytest.raises(ValueError, match=r"FanInSum\(\) at serial\[3\]: branches must have equal shapes, "
                                         r"got \[\(2, 3, 4, 4\), \(2, 5, 6, 4\)\]"):
        net.kernels(np.ones((2, 5, 6, 2)))
    with pytest.raises(ValueError, match=r"parallel\(.*at serial\[1\]: has 3 branches but receives 2 inputs"):
        stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.Identity(), stax.Identity())).kernels(
            np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"Relu|relu.*receives 2 branches"):
        stax.serial(stax.Dense(2), stax.FanOut(2), stax.Relu()).kernels(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"ends with 2 unjoined branches"):
        stax.serial(stax.Dense(2), stax.FanOut(2)).kernels(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"every branch must end in a Dense/Conv"):
        stax.serial(stax.Dense(2), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Identity()),
                    stax.FanInSum()).kernels(np.ones((2, 3)))


def test_filter_larger_than_input_with_valid_padding():
    with pytest.raises(ValueError, match=r"Conv\(4, \(5, 2\).* at serial\[0\]: filter_shape \(5, 2\) is larger than "
                                         r"the spatial shape \(4, 4\) of its input \(shape \(2, 4, 4, 1\)\) with "
                                         r"padding 'VALID'"):
        stax.serial(stax.Conv(4, (5, 2))).kernels(np.ones((2, 4, 4, 1)))
    assert stax.Conv(4, (5, 2), padding="SAME").nngp(np.ones((2, 4, 4, 1))).shape == (2, 2, 4, 4, 4, 4)


@pytest.mark.parametrize("make, msg", [
    (lambda: stax.Conv(4, (3, 3), padding="FULL"),
     r"Conv: padding: must be one of 'VALID', 'SAME', 'CIRCULAR', got 'FULL'"),
    (lambda: stax.AvgPool((2, 2), padding="REFLECT"), r"AvgPool: padding: must be one of"),
    (lambda: stax.Conv(4, (3, 3), strides=(1,)), r"Conv: strides: must have 2 entries"),
    (lambda: stax.Conv(0, (3, 3)), r"Conv: out_chan: must be an integer >= 1, got 0"),
    (lambda: stax.Dense(3, weight_var=-1.0), r"Dense: weight_var: must be a finite number >= 0"),
    (lambda: stax.Dense(3, weight_var=2.0, W_std=1.0), r"Dense: give weight_var or W_std"),
    (lambda: stax.Activation("nope"), r"Activation: activation: unknown name 'nope'"),
])
def test_bad_arguments(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_bad_inputs():
    net = stax.serial(stax.Conv(2, (2, 2)), stax.Relu(), stax.Flatten(), stax.Dense(1))
    with pytest.raises(ValueError, match=r"X2: per-input shape \(3, 3, 1\) does not match X1's \(3, 3, 2\)"):
        net.kernels(np.ones((2, 3, 3, 2)), np.ones((2, 3, 3, 1)))
    with pytest.raises(ValueError, match=r"X1: must be finite, got nan"):
        net.kernels(np.full((2, 3, 3, 2), np.nan))
    with pytest.raises(TypeError, match=r"X1: must be real numbers, got dtype <U1"):
        net.kernels(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"Activation\('relu'\) at serial\[1\]: its input must be Gaussian"):
        stax.serial(stax.Flatten(), stax.Relu()).kernels(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"serial: argument 1 must be a layer.*Relu\(\), not Relu"):
        stax.serial(stax.Dense(2), stax.Relu)


# ---------------------------------------------------------------------------------------
# every activation; zero-variance pixels
# ---------------------------------------------------------------------------------------

_PARAMS = {"polynomial": {"coefficients": [0.1, -0.5, 0.3]}, "monomial": {"degree": 2}, "hermite": {"degree": 3},
           "rectified_monomial": {"degree": 2}, "gaussian": {"a": 1.0, "b": -0.5}}


@pytest.mark.parametrize("name", sorted(set(__import__("limitlab.theory.activations", fromlist=["x"]).available())))
def test_every_activation_closed_form_matches_the_gaussian_engine(name):
    """Each closed form, as this module evaluates it (the stable angle form), against the same
    activation's expression through the Gaussian-expectation engine (1e-10 vs mpmath)."""
    from limitlab.theory import activations

    act = activations.get(name, **_PARAMS.get(name, {}))
    X1 = np.random.default_rng(8).standard_normal((3, 3, 2, 2))
    X2 = np.random.default_rng(9).standard_normal((2, 3, 2, 2))
    net = lambda a: stax.serial(stax.Conv(3, (2, 2), padding="SAME", weight_var=0.8, bias_var=0.1), a,  # noqa: E731
                                stax.Conv(3, (2, 1), padding="CIRCULAR", weight_var=0.8), stax.GlobalAvgPool(),
                                stax.Dense(1))
    ours = net(stax.Activation(act)).kernels(X1, X2)
    assert np.all(np.isfinite(ours.nngp)) and np.all(np.isfinite(ours.ntk))
    if not act.has_closed_form or name in ("sign", "step"):
        # sign/step are discontinuous: the engine's derivative series is the distributional one
        # (not the a.e. derivative 0 of the convention), and sympy's sign has no array form there
        return
    engine = net(stax.Activation(activations.numerical(act.expr, kinks=act.kinks))).kernels(X1, X2)
    for o, r in ((ours.nngp, engine.nngp), (ours.ntk, engine.ntk)):
        np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-10 * np.max(np.abs(r)))


@pytest.mark.parametrize("act", [stax.Relu(), stax.Erf(1.0, 1.0, 0.3), stax.Tanh(), stax.Gelu(), stax.Sigmoid_like()])
def test_zero_pixels_without_bias_are_the_limit(act):
    """Zero patches without bias give zero variance; the kernel there is phi(0) E[phi(v)] (and an
    all-zero image has a zero NTK row), the limit of inputs tending to zero."""
    X = np.random.default_rng(10).standard_normal((3, 5, 4, 1))
    X[:, :2] = 0.0
    X[0] = 0.0
    net = stax.serial(stax.Conv(4, (2, 2), padding="SAME"), act, stax.Conv(4, (2, 2)), stax.GlobalAvgPool(),
                      stax.Dense(1))
    k = net.kernels(X)
    if float(act.activation(np.zeros(1))[0]) == 0.0:  # phi(0) = 0: nothing of the zero image reaches the output
        assert np.all(k.nngp[0] == 0.0) and np.all(k.ntk[0] == 0.0)
    Xe = np.where(X == 0.0, 1e-9, X)
    ke = net.kernels(Xe)
    for o, r in ((k.nngp, ke.nngp), (k.ntk, ke.ntk)):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-7 * np.max(np.abs(r)))
    k2 = net.kernels(X[1:], X)
    np.testing.assert_allclose(k2.nngp, k.nngp[1:], rtol=1e-12, atol=1e-15)


def test_spatial_concat_then_global_sum_pool_is_the_sum_over_branches():
    X = np.random.default_rng(11).standard_normal((3, 4, 5, 2))
    stem = stax.Conv(4, (3, 3), padding="SAME", bias_var=0.1)
    b1 = stax.serial(stax.Relu(), stax.Conv(4, (2, 2), padding="SAME"))
    b2 = stax.Conv(4, (2, 3), strides=(2, 1), padding="SAME")
    cat = stax.serial(stem, stax.FanOut(2), stax.parallel(b1, b2), stax.FanInConcat(axis=1), stax.GlobalSumPool())
    k = cat.kernels(X)
    parts = [stax.serial(stem, b, stax.GlobalSumPool()).kernels(X) for b in (b1, b2)]
    np.testing.assert_allclose(k.nngp, parts[0].nngp + parts[1].nngp, rtol=1e-13)
    np.testing.assert_allclose(k.ntk, parts[0].ntk + parts[1].ntk, rtol=1e-13)
    with pytest.raises(ValueError, match=r"FanInConcat\(axis=2\) at serial\[3\]: branches must have equal shapes "
                                         r"except along axis 2, got \[\(3, 4, 5, 4\), \(3, 2, 5, 4\)\]"):
        stax.serial(stem, stax.FanOut(2), stax.parallel(b1, b2), stax.FanInConcat(axis=2)).kernels(X)
    with pytest.raises(ValueError, match=r"concatenation along the batch axis"):
        stax.serial(stem, stax.FanOut(2), stax.FanInConcat(axis=0)).kernels(X)


def test_nngp_only_and_ntk_only_calls_match_the_full_call():
    X1 = np.random.default_rng(12).standard_normal((3, 4, 3, 2))
    X2 = np.random.default_rng(13).standard_normal((2, 4, 3, 2))
    net = stax.serial(stax.Conv(4, (2, 2), padding="SAME", bias_var=0.1), stax.Tanh(), stax.AvgPool((2, 2)),
                      stax.Conv(4, (2, 2)), stax.Relu(), stax.Flatten(), stax.Dense(1))
    full = net.kernels(X1, X2)
    np.testing.assert_array_equal(net.nngp(X1, X2), full.nngp)
    np.testing.assert_array_equal(net.ntk(X1, X2), full.ntk)
    assert net.kernels(X1, get="nngp").ntk is None


def test_relu_diagonal_is_the_exact_length_map():
    """On the batch diagonal (where neural-tangents is ~1e-8 off) ReLU's NNGP is q' = w q / 2 + b
    and its NTK t' = q' + w t / 2, exactly, per pixel; with 1x1 convs every pixel follows it."""
    X = np.random.default_rng(14).standard_normal((3, 4, 3, 2))
    w, b = [1.7, 2.1, 0.9], [0.1, 0.3, 0.05]
    net = stax.serial(stax.Conv(4, (1, 1), weight_var=w[0], bias_var=b[0]), stax.Relu(),
                      stax.Conv(4, (1, 1), weight_var=w[1], bias_var=b[1]), stax.Relu(),
                      stax.Conv(1, (1, 1), weight_var=w[2], bias_var=b[2]), stax.Flatten())
    q = w[0] * np.mean(X ** 2, axis=-1) + b[0]
    t = q.copy()
    for i in (1, 2):
        q = w[i] * q / 2 + b[i]
        t = q + w[i] * t / 2
    k = net.kernels(X)
    np.testing.assert_allclose(np.diag(k.nngp), q.mean(axis=(1, 2)), rtol=1e-14)
    np.testing.assert_allclose(np.diag(k.ntk), t.mean(axis=(1, 2)), rtol=1e-14)


# ---------------------------------------------------------------------------------------
# compiled hot paths and blocks of pairs: the same numbers as the NumPy rules
# ---------------------------------------------------------------------------------------

def test_compiled_conv_equals_numpy_rule():
    """_conv_cov_compiled (one Numba pass per axis, no padded copies) = w * _conv_cov + b (or
    + an addend) exactly, over 1-3 spatial axes, every padding, strides, both batch ranks."""
    rng = np.random.default_rng(0)
    for d in (1, 2, 3):
        for pad in ("SAME", "VALID", "CIRCULAR"):
            for _ in range(3):
                spatial = tuple(int(n) for n in rng.integers(3, 6, size=d))
                filt = tuple(int(f) for f in rng.integers(1, 4, size=d))
                strides = tuple(int(s) for s in rng.integers(1, 3, size=d))
                for bnd in (1, 2):
                    a = rng.standard_normal(tuple(int(n) for n in rng.integers(1, 4, size=bnd)) + spatial * 2)
                    ref = stax._conv_cov(a, bnd, filt, strides, pad)
                    add = rng.standard_normal(ref.shape)
                    assert np.array_equal(stax._conv_cov_compiled(a, bnd, filt, strides, pad, 1.7, b=0.3),
                                          1.7 * ref + 0.3)
                    assert np.array_equal(stax._conv_cov_compiled(a, bnd, filt, strides, pad, 1.7, add=add),
                                          1.7 * ref + add)


def _myrtle5_8x8(b_std=0.2):
    conv = lambda: stax.Conv(4, (3, 3), padding="SAME", W_std=2 ** 0.5, b_std=b_std)  # noqa: E731
    pool = lambda: stax.AvgPool((2, 2), (2, 2))  # noqa: E731
    return stax.serial(conv(), stax.Relu(), conv(), stax.Relu(), pool(), conv(), stax.Relu(), pool(), conv(),
                       stax.Relu(), pool(), stax.Flatten(), stax.Dense(10, W_std=2 ** 0.5))


def test_compiled_activation_and_blocks_equal_numpy_path(monkeypatch):
    """The compiled ReLU map (states >= _COMPILED_MIN entries) and blocks of pairs (batch_size)
    give the NumPy path's numbers to 1e-14, symmetric and cross calls, NNGP and NTK."""
    rng = np.random.default_rng(1)
    X1, X2 = rng.standard_normal((5, 8, 8, 3)), rng.standard_normal((3, 8, 8, 3))
    net = _myrtle5_8x8()
    from limitlab.theory.kernels import fused

    monkeypatch.setattr(fused, "FUSED_MIN_PIXELS", 1 << 62)  # the layer path throughout
    monkeypatch.setattr(stax, "_COMPILED_MIN", 1 << 62)
    ref = [net.kernels(X1), net.kernels(X1, X2)]
    monkeypatch.setattr(stax, "_COMPILED_MIN", 0)
    for bs in (None, 1, 2):
        got = [net.kernels(X1, batch_size=bs), net.kernels(X1, X2, batch_size=bs)]
        for g, r in zip(got, ref):
            for a, b in ((g.nngp, r.nngp), (g.ntk, r.ntk)):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14 * np.max(np.abs(b)))
        assert np.array_equal(got[0].ntk, got[0].ntk.T)
    assert stax._per_input(net)
    from limitlab.theory.kernels import LayerNorm
    assert not stax._per_input(stax.serial(stax.Conv(2, (1, 1)), LayerNorm(axis=(0, -1))))


# the standard parametrization (Dense/Conv parametrization="standard") against neural-tangents' kernels
# (tests/fixtures/make_stax_extra_fixtures.py, cases std_*: with and without biases, pooling, strides)
STD_FIX, STD_CASES = load("stax_extra_kernels.npz")
STD_CASES = [c for c in STD_CASES if c["key"].startswith("std_")]


@pytest.mark.parametrize("case", STD_CASES, ids=[c["key"] for c in STD_CASES])
def test_standard_parametrization_matches_neural_tangents_to_1e10(case):
    check_case(STD_FIX, case)


def test_standard_parametrization_ntk_is_mlps_and_its_spellings():
    """A standard Dense MLP's NTK is MLP(parametrization="standard", width=n)'s (Sohl-Dickstein et
    al. 2020); neural-tangents' spelling parameterization= and b_std=None (no bias) are accepted."""
    X = np.random.default_rng(6).standard_normal((4, 3))
    net = stax.serial(stax.Dense(32, 1.5, 0.1, parametrization="standard"), stax.Erf(),
                      stax.Dense(1, 1.5, 0.1, parameterization="standard"))
    ref = MLP(1, "erf", weight_var=1.5, bias_var=0.1, parametrization="standard", width=32).kernels(X)
    k = net.kernels(X)
    np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-12)
    np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-12)
    nob = stax.Dense(1, W_std=1.2, b_std=None, parametrization="standard")
    assert not nob.has_bias and "bias_var=None" in repr(nob)
    np.testing.assert_allclose(nob.ntk(X), X @ X.T, rtol=1e-12)  # the input Gram, no +1 of a bias
    np.testing.assert_allclose(stax.Dense(1, parametrization="standard").ntk(X), X @ X.T + 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="Dense: parametrization: must be one of 'ntk', 'standard', got 'mup'"):
        stax.Dense(1, parametrization="mup")
    with pytest.raises(ValueError, match="not both"):
        stax.Conv(1, (2,), parametrization="ntk", parameterization="standard")

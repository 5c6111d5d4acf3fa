"""The pair engine (limitlab.theory.kernels.fused) against neural-tangents' fixtures and the
layer path of stax, which it must equal to rounding on every network it takes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures.stax_cases import build, check_case, load  # tests/ is on pytest's pythonpath
from limitlab.theory.kernels import fused, stax

FIX, CASES = load("stax_kernels.npz")


def _plannable(case):
    X = FIX[f"{case['input']}_X1"]
    old = fused.FUSED_MIN_PIXELS
    fused.FUSED_MIN_PIXELS = 0
    try:
        return fused.plan(build(["serial", case["layers"]]), X.shape) is not None
    finally:
        fused.FUSED_MIN_PIXELS = old


FUSED_CASES = [c for c in CASES if _plannable(c)]


@pytest.fixture
def every_size(monkeypatch):
    """The pair engine on every image size (by default only from FUSED_MIN_PIXELS pixels)."""
    monkeypatch.setattr(fused, "FUSED_MIN_PIXELS", 0)


def test_the_catalogue_exercises_the_pair_engine():
    """CNN-GP, CNTK and Myrtle networks of the catalogue take the pair engine (>= 10 of them)."""
    keys = {c["key"] for c in FUSED_CASES}
    assert len(FUSED_CASES) >= 10, keys
    assert any("myrtle" in k for k in keys)


@pytest.mark.parametrize("case", FUSED_CASES, ids=[c["key"] for c in FUSED_CASES])
def test_pair_engine_matches_neural_tangents_to_1e10(case, every_size):
    """The fixture's NNGP and NTK (X1 vs X2 and X1 with itself) to 1e-10, through the pair engine."""
    net = build(["serial", case["layers"]])
    assert fused.plan(net, FIX[f"{case['input']}_X1"].shape) is not None
    check_case(FIX, case)


def _layer_path(net, X1, X2=None):
    return net.kernels(X1, X2, batch_size=X1.shape[0] + (0 if X2 is None else X2.shape[0]))


ACTS = [stax.Relu, stax.Erf, lambda: stax.ABRelu(-0.5, 1.5)]


def _window(draw, spatial, kmax):
    """A filter or pooling window, strides and a padding that fit ``spatial``; the output shape."""
    k = tuple(draw(st.integers(1, kmax)) for _ in spatial)
    s = tuple(draw(st.integers(1, 2)) for _ in spatial)
    pad = draw(st.sampled_from(["SAME", "VALID", "CIRCULAR"]))
    if pad == "VALID" and any(a > n for a, n in zip(k, spatial)):
        pad = "SAME"
    return k, s, pad, [stax._out_and_pads(n, a, t, pad)[0] for n, a, t in zip(spatial, k, s)]


@st.composite
def conv_nets(draw):
    """Random chains of Conv / closed-form activation / pools ending in a flatten or global pool."""
    d = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(5, 9))
    spatial = [size] * d
    layers, gaussian, convs = [], False, 0
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "act"]))
        if kind == "act" and not gaussian:
            kind = "conv"
        if kind == "conv":
            f, s, pad, spatial = _window(draw, spatial, 3)
            layers.append(stax.Conv(3, f, s, pad, weight_var=draw(st.floats(0.5, 2.5)),
                                    bias_var=draw(st.sampled_from([0.0, 0.3]))))
            gaussian, convs = True, convs + 1
            if draw(st.booleans()):
                layers.append(draw(st.sampled_from(ACTS))())
                gaussian = False
        elif kind == "pool":
            w, s, pad, spatial = _window(draw, spatial, 2)
            avg = draw(st.booleans())
            layers.append(stax.AvgPool(w, s, pad, normalize_edges=draw(st.booleans())) if avg
                          else stax.SumPool(w, s, pad))
        else:
            layers.append(draw(st.sampled_from(ACTS))())
            gaussian = False
    if convs == 0:
        layers.insert(0, stax.Conv(2, (2,) * d, padding="SAME"))
    layers.append(draw(st.sampled_from([stax.Flatten, stax.GlobalAvgPool, stax.GlobalSumPool]))())
    if draw(st.booleans()):
        layers += [stax.Dense(2, weight_var=1.5, bias_var=0.1), stax.Relu(), stax.Dense(1)]
    return stax.serial(*layers), d, size


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_nets(), st.integers(0, 2 ** 16))
def test_pair_engine_equals_the_layer_path(monkeypatch_net, seed):
    """On random conv/pool/activation chains (1-D and 2-D, every padding, strides, biases), the
    pair engine's NNGP and NTK equal the layer path's to 1e-13 of the kernel scale, with X2
    None (exactly symmetric) and with X2 given."""
    net, d, size = monkeypatch_net
    rng = np.random.default_rng(seed)
    shape = (size,) * d + (2,)
    X1, X2 = rng.standard_normal((3,) + shape), rng.standard_normal((2,) + shape)
    old = fused.FUSED_MIN_PIXELS
    fused.FUSED_MIN_PIXELS = 0
    try:
        assert fused.plan(net, X1.shape) is not None
        for a, b in ((X1, None), (X1, X2)):
            ours, ref = net.kernels(a, b), _layer_path(net, a, b)
            for x, y in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
                assert x.shape == y.shape
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13 * np.abs(y).max())
            if b is None:
                assert np.array_equal(ours.nngp, ours.nngp.T) and np.array_equal(ours.ntk, ours.ntk.T)
    finally:
        fused.FUSED_MIN_PIXELS = old


def test_large_images_take_the_pair_engine_by_default():
    """From FUSED_MIN_PIXELS pixels the default call is the pair engine; equal to the layer path."""
    net = stax.serial(stax.Conv(8, (3, 3), padding="SAME", weight_var=2.0), stax.Relu(),
                      stax.AvgPool((2, 2), (2, 2)), stax.Conv(8, (3, 3), padding="SAME", weight_var=2.0),
                      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    X = np.random.default_rng(3).standard_normal((3, 12, 12, 3))
    assert 12 * 12 >= fused.FUSED_MIN_PIXELS and fused.plan(net, X.shape) is not None
    k, ref = net.kernels(X), _layer_path(net, X)
    np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-13)
    np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-13)
    only = net.kernels(X, get=("nngp",))
    assert only.ntk is None and np.array_equal(only.nngp, k.nngp)


def test_networks_outside_the_engine_are_left_to_the_layer_path(every_size):
    """Residual branches, numerical activations, LayerNorm, spatial outputs and 3-D inputs: no plan."""
    X = np.zeros((2, 6, 6, 3))
    conv = stax.Conv(2, (3, 3), padding="SAME")
    assert fused.plan(stax.serial(conv, stax.Activation("tanh"), stax.GlobalAvgPool()), X.shape) is None
    assert fused.plan(stax.serial(conv, stax.Relu()), X.shape) is None  # ends spatial
    assert fused.plan(stax.serial(stax.FanOut(2), stax.parallel(conv, conv), stax.FanInSum(), stax.Flatten()),
                      X.shape) is None
    assert fused.plan(stax.serial(stax.Conv(2, (3, 3, 3)), stax.Flatten()), np.zeros((2, 4, 4, 4, 1)).shape) is None
    assert fused.plan(stax.serial(stax.Conv(2, (7, 7)), stax.Flatten()), X.shape) is None  # the layer path's error
    with pytest.raises(ValueError, match="larger than the spatial shape"):
        stax.serial(stax.Conv(2, (7, 7)), stax.Flatten()).nngp(X)


def test_zero_variance_pixels_fall_back_to_the_layer_path(every_size):
    """A zero image without bias has zero-variance pixels: the layer path's limit (phi(0) E phi) is used."""
    net = stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.Relu(), stax.Flatten())
    X = np.random.default_rng(0).standard_normal((3, 5, 5, 2))
    X[1] = 0.0
    k, ref = net.kernels(X), _layer_path(net, X)
    np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-13, atol=1e-15)


def test_standard_parametrization_takes_the_layer_path(every_size):
    """A Conv in the standard parametrization (its own NTK rule) is left to the layer path."""
    net = stax.serial(stax.Conv(2, (3, 3), padding="SAME", parametrization="standard"), stax.Relu(), stax.Flatten())
    assert fused.plan(net, (2, 6, 6, 3)) is None

"""The MLP kernel samplers against closed forms, the finite-network engine and themselves (the
engine itself is checked against finite-difference Jacobians in test_networks.py)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.verify import montecarlo as mc

RNG = np.random.default_rng(7)
X3 = RNG.standard_normal((3, 4))


def _arccos_relu(X, w=2.0):
    """Depth-1 ReLU NNGP and NTK without bias (Cho & Saul 2009, degree 1 and 0), NTK parametrization."""
    d = X.shape[1]
    K1 = w * X @ X.T / d
    q = np.sqrt(np.diag(K1))
    cos = np.clip(K1 / np.outer(q, q), -1, 1)
    th = np.arccos(cos)
    nngp = w * np.outer(q, q) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
    kdot = w * (np.pi - th) / (2 * np.pi)
    return nngp, nngp + kdot * K1


@pytest.mark.parametrize("method", ["weights", "conditional"])
def test_depth1_relu_ensemble_matches_arccos_kernel(method):
    X = X3
    nngp_th, ntk_th = _arccos_relu(X)
    spec = mc.as_spec(None, 512, depth=1, activation="relu", weight_var=2.0, bias_var=None)
    ks = mc.sample_kernels(spec, X, n_networks=400, seed=11, backend="numpy", method=method)
    for emp, th in ((ks.nngp, nngp_th), (ks.ntk, ntk_th)):
        mean, se = emp.mean(0), emp.std(0, ddof=1) / math.sqrt(emp.shape[0])
        # depth 1: both estimators are exactly unbiased (the first layer is exactly Gaussian)
        assert np.all(np.abs(mean - th) <= 4.5 * se), (mean - th) / se


def test_depth1_standard_parametrization_ntk_adds_width_times_nngp():
    """Standard parametrization, depth 1, no bias: Theta = x.x' Kdot + n E[phi phi] (Sohl-Dickstein et al. 2020),
    Kdot = w E[phi' phi'] (the readout gradient norm) and n E[phi phi] = n NNGP / w."""
    X = X3
    n = 256
    spec = mc.as_spec(None, n, depth=1, activation="relu", weight_var=2.0, bias_var=None, parametrization="standard")
    ks = mc.sample_kernels(spec, X, n_networks=300, seed=2, backend="numpy")
    nngp_th, ntk_th = _arccos_relu(X)
    K1 = 2.0 * X @ X.T / X.shape[1]
    kdot = (ntk_th - nngp_th) / K1
    # per unit: readout term a.a' = n E[phi phi] = n nngp/w; input term x.x' * sum_i v_i^2 phi'phi' = x.x' n kdot / w * w
    th = (X @ X.T) * kdot + n * nngp_th / 2.0
    emp = ks.ntk
    mean, se = emp.mean(0), emp.std(0, ddof=1) / math.sqrt(emp.shape[0])
    assert np.all(np.abs(mean - th) <= 4.5 * se)
    from limitlab.theory.kernels import MLP  # and the theory's standard-parametrization formula agrees

    np.testing.assert_allclose(MLP(1, "relu", weight_var=2.0, bias_var=None, parametrization="standard",
                                   width=n).ntk(X), th, rtol=1e-9)


def test_conditional_and_weights_samplers_have_the_same_distribution_at_tiny_width():
    # width 5, depth 3: finite-width effects of tens of percent, so a wrong conditioning shows
    spec = mc.as_spec(None, 5, depth=3, activation="relu", weight_var=1.5, bias_var=0.2)
    a = mc.sample_kernels(spec, X3, n_networks=12000, seed=1, method="weights", backend="numpy")
    b = mc.sample_kernels(spec, X3, n_networks=12000, seed=2, method="conditional", backend="numpy")
    for q in ("nngp", "ntk"):
        x, y = getattr(a, q), getattr(b, q)
        for fx, fy in ((x, y), (x * x, y * y)):
            z = (fx.mean(0) - fy.mean(0)) / np.sqrt(fx.var(0) / len(fx) + fy.var(0) / len(fy))
            assert np.all(np.abs(z) < 4.5), (q, z)
    # and the finite-width mean differs from infinite width here (the test has power)
    from limitlab.theory.kernels import MLP

    th = MLP(3, "relu", weight_var=1.5, bias_var=0.2).ntk(X3)
    assert np.max(np.abs(a.ntk.mean(0) / th - 1)) > 0.05


@pytest.mark.parametrize("method", ["weights", "conditional"])
def test_network_samples_do_not_depend_on_batch_size(method):
    spec = mc.as_spec(None, 16, depth=2, activation="erf")
    a = mc.sample_kernels(spec, X3, n_networks=7, seed=5, method=method, batch_size=7, backend="numpy")
    b = mc.sample_kernels(spec, X3, n_networks=7, seed=5, method=method, batch_size=2, backend="numpy")
    np.testing.assert_array_equal(a.ntk, b.ntk)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    c = mc.sample_kernels(spec, X3, n_networks=7, seed=6, method=method, backend="numpy")
    assert not np.allclose(a.ntk, c.ntk)


def test_cross_kernels_are_blocks_of_the_joint_kernel():
    spec = mc.as_spec(None, 16, depth=2, activation="tanh", bias_var=0.1)
    X2 = RNG.standard_normal((2, 4))
    for method in ("weights", "conditional"):
        cross = mc.sample_kernels(spec, X3, X2, n_networks=3, seed=0, method=method, backend="numpy")
        joint = mc.sample_kernels(spec, np.concatenate([X3, X2]), n_networks=3, seed=0, method=method,
                                  backend="numpy")
        np.testing.assert_allclose(cross.ntk, joint.ntk[:, :3, 3:], rtol=1e-10)
        np.testing.assert_allclose(cross.nngp, joint.nngp[:, :3, 3:], rtol=1e-10)


def test_array_api_strict_backend_gives_numpys_numbers():
    pytest.importorskip("array_api_strict")
    spec = mc.as_spec(None, 32, depth=2, activation="gelu", bias_var=0.1, parametrization="standard")
    for method in ("weights", "conditional"):
        a = mc.sample_kernels(spec, X3, n_networks=3, seed=1, method=method, backend="numpy")
        b = mc.sample_kernels(spec, X3, n_networks=3, seed=1, method=method, backend="array-api-strict")
        np.testing.assert_allclose(b.ntk, a.ntk, rtol=1e-10)
        np.testing.assert_allclose(b.nngp, a.nngp, rtol=1e-10)


def test_output_covariance_of_the_ensemble_estimates_the_nngp():
    spec = mc.as_spec(None, 256, depth=1, activation="relu", weight_var=2.0, bias_var=None)
    ks = mc.sample_kernels(spec, X3, n_networks=3000, seed=9, backend="numpy")
    cov, se = ks.output_cov()
    nngp_th, _ = _arccos_relu(X3)
    assert np.all(np.abs(cov - nngp_th) < 4.5 * se)


@given(st.integers(min_value=0, max_value=2 ** 31), st.integers(min_value=1, max_value=9))
@settings(max_examples=20, deadline=None)
def test_network_seeds_are_prefix_stable(seed, n):
    a = mc.network_seeds(seed, n)
    b = mc.network_seeds(seed, n + 3)
    np.testing.assert_array_equal(a, b[:n])
    assert np.all(a >= 0)


def test_bad_inputs_raise_clear_errors():
    spec = mc.as_spec(None, 8, depth=1, activation="relu")
    with pytest.raises(ValueError, match=r"^width: must be an integer >= 1, got 0$"):
        mc.as_spec(None, 0, depth=1, activation="relu")
    with pytest.raises(ValueError, match="width"):
        mc.as_spec(None, None, depth=1, activation="relu")
    with pytest.raises(ValueError, match=r"^parametrization: must be one of 'ntk', 'standard', got 'mup'$"):
        mc.as_spec(None, 8, depth=1, activation="relu", parametrization="mup")
    with pytest.raises(ValueError, match=r"^weight_var: must be finite and >= 0, got -1.0$"):
        mc.as_spec(None, 8, depth=1, activation="relu", weight_var=-1.0)
    with pytest.raises(ValueError, match=r"^X1: must be finite, got nan$"):
        mc.sample_kernels(spec, np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="X1"):
        mc.sample_kernels(spec, np.ones(3))
    with pytest.raises(ValueError, match=r"^n_networks: must be an integer >= 1, got 0$"):
        mc.sample_kernels(spec, X3, n_networks=0)
    with pytest.raises(ValueError, match=r"^method: must be one of 'auto', 'weights', 'conditional', got 'autodiff'$"):
        mc.sample_kernels(spec, X3, method="autodiff")
    with pytest.raises(ValueError, match="backend"):
        mc.sample_kernels(spec, X3, backend="jax")
    with pytest.raises(TypeError, match="seed"):
        mc.network_seeds("abc", 2)
    with pytest.raises(TypeError, match="mlp"):
        mc.as_spec(object(), 8)


def test_theory_mlp_is_accepted_and_its_width_used():
    from limitlab.theory.kernels import MLP

    m = MLP(2, "erf", weight_var=1.2, bias_var=0.1, parametrization="standard", width=32)
    spec = mc.as_spec(m)
    assert spec.widths == (32, 32) and spec.parametrization == "standard" and spec.weight_var == (1.2,) * 3
    assert mc.as_spec(m, 64).widths == (64, 64)
    ks = mc.sample_kernels(m, X3, n_networks=2, backend="numpy")
    assert ks.ntk.shape == (2, 3, 3) and ks.width == (32, 32)


# --------------------------------------------------------------------------------------
# The conditional sampler's Cholesky path, its QR fallback and repeated inputs
# --------------------------------------------------------------------------------------

def _draws(spec, N, d, seeds):
    bk = mc.get_backend("numpy")
    shapes = mc._conditional_draws(spec, N, d)
    return bk, mc._split(np, bk.normals(seeds, sum(int(np.prod(s)) for s in shapes)), shapes)


@pytest.mark.parametrize("activation,bias_var,N", [("relu", 0.1, 80), ("erf", None, 70), ("gelu", 0.3, 5)])
def test_conditional_cholesky_path_equals_thin_qr_path_on_the_same_draws(activation, bias_var, N):
    """With R's diagonal made positive, R^T is the Gram matrix's Cholesky factor: the two ways of
    conditioning are the same map from draws to kernels (N >= 64 exercises the banded products)."""
    spec = mc.as_spec(None, 2 * N + 7, depth=3, activation=activation, weight_var=1.6, bias_var=bias_var)
    X = np.random.default_rng(N).standard_normal((N, 6))
    bk, z = _draws(spec, N, 6, [3, 4])
    nngp, ntk, f, ok = mc._conditional_cholesky(spec, X, bk, z)
    assert ok.all()
    q_nngp, q_ntk, q_f = mc._conditional_qr(spec, X, bk, z)
    np.testing.assert_allclose(ntk, q_ntk, rtol=1e-9, atol=1e-12 * np.abs(q_ntk).max())
    np.testing.assert_allclose(nngp, q_nngp, rtol=1e-9, atol=1e-12 * np.abs(q_nngp).max())
    np.testing.assert_allclose(f, q_f, rtol=1e-9, atol=1e-12 * np.abs(q_f).max())


def _z(x, y):
    """z-scores of the difference of the per-entry means of two independent samples."""
    return (x.mean(0) - y.mean(0)) / np.sqrt(x.var(0, ddof=1) / len(x) + y.var(0, ddof=1) / len(y))


_X5 = np.random.default_rng(3).standard_normal((3, 5))
_RELU3 = dict(depth=3, activation="relu", bias_var=0.2)


def test_conditional_sampler_nngp_diagonal_is_the_limit_and_a_2_percent_variance_error_fails():
    """ReLU: E[|a^l(x)|^2 / n] follows the limit exactly at any width (E[relu(h)^2 | q] = q/2 is
    linear in q), so the mean of the NNGP diagonal is the limit's; a 2% error in one hidden
    layer's weight variance moves it by exactly 2% (expected z about 8 here)."""
    from limitlab.theory.kernels import MLP

    S = 4000
    lim = np.diag(MLP(3, "relu", weight_var=1.8, bias_var=0.2).nngp(_X5))
    for wv, ok in ((1.8, True), ((1.8, 1.8 * 1.02, 1.8, 1.8), False)):
        ks = mc.sample_kernels(mc.as_spec(None, 768, weight_var=wv, **_RELU3), _X5, n_networks=S, seed=2,
                               method="conditional", backend="numpy")
        d = np.diagonal(ks.nngp, axis1=1, axis2=2)
        z = (d.mean(0) - lim) / (d.std(0, ddof=1) / math.sqrt(S))
        assert np.all(np.abs(z) < 4.5) if ok else np.all(z > 4.5), (wv, z)


@pytest.mark.slow
def test_conditional_and_weights_samplers_agree_and_a_2_percent_variance_error_fails():
    """Means and second moments of every entry of both kernels agree between the samplers
    (width 192, 16000 networks each); the same statistics reject a conditional sampler whose
    hidden layer has a 2% wrong weight variance (expected z about 6)."""
    S = 16000
    spec = mc.as_spec(None, 192, weight_var=1.8, **_RELU3)
    w = mc.sample_kernels(spec, _X5, n_networks=S, seed=1, method="weights", backend="numpy")
    c = mc.sample_kernels(spec, _X5, n_networks=S, seed=2, method="conditional", backend="numpy")
    for q in ("nngp", "ntk"):
        x, y = getattr(w, q), getattr(c, q)
        for fx, fy in ((x, y), (x * x, y * y)):
            assert np.all(np.abs(_z(fx, fy)) < 4.5), (q, _z(fx, fy))
    bad = mc.sample_kernels(mc.as_spec(None, 192, weight_var=(1.8, 1.8 * 1.02, 1.8, 1.8), **_RELU3), _X5,
                            n_networks=S, seed=2, method="conditional", backend="numpy")
    for fx, fy in ((bad.nngp, w.nngp), (bad.nngp ** 2, w.nngp ** 2)):
        assert np.all(_z(fx, fy)[np.diag_indices(3)] > 4.5)


def test_conditional_sampler_with_repeated_inputs():
    """Repeated rows (and X2 sharing rows with X1) give exactly the kernels of the distinct rows,
    copied; the QR fallback (the Gram matrices of repeated rows are singular) is exact too."""
    rng = np.random.default_rng(5)
    U = rng.standard_normal((4, 5))
    X = U[[0, 1, 0, 2, 3, 1, 1]]
    spec = mc.as_spec(None, 64, depth=3, activation="relu", weight_var=2.0, bias_var=0.1)
    a = mc.sample_kernels(spec, X, n_networks=5, seed=3, method="conditional", backend="numpy")
    b = mc.sample_kernels(spec, U, n_networks=5, seed=3, method="conditional", backend="numpy")
    inv = np.array([0, 1, 0, 2, 3, 1, 1])
    assert np.all(np.isfinite(a.ntk))
    np.testing.assert_array_equal(a.ntk, b.ntk[:, inv][:, :, inv])
    np.testing.assert_array_equal(a.nngp, b.nngp[:, inv][:, :, inv])
    np.testing.assert_array_equal(a.outputs, b.outputs[:, inv])
    c = mc.sample_kernels(spec, U[:2], U[[1, 3, 0]], n_networks=5, seed=3, method="conditional", backend="numpy")
    e = mc.sample_kernels(spec, U[[0, 1, 3]], n_networks=5, seed=3, method="conditional", backend="numpy")
    np.testing.assert_array_equal(c.ntk, e.ntk[:, :2][:, :, [1, 2, 0]])
    np.testing.assert_array_equal(c.outputs, e.outputs[:, [0, 1, 1, 2, 0]])
    # the sampler itself on repeated rows: Cholesky fails, every network is redone by QR, and
    # its kernels at a repeated input are that input's (to rounding)
    nngp, ntk, f = mc._conditional_kernels(spec, X, mc.get_backend("numpy"), [11, 12, 13])
    assert np.all(np.isfinite(ntk))
    np.testing.assert_allclose(ntk[:, 0, 0], ntk[:, 2, 2], rtol=1e-10)
    np.testing.assert_allclose(ntk[:, 1, :], ntk[:, 6, :], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f[:, 1], f[:, 5], rtol=1e-10)


def test_conditional_qr_fallback_on_singular_grams_has_the_right_distribution():
    """ReLU without bias is positively homogeneous: inputs x and 2x give proportional rows at
    every layer (singular Gram matrices, not caught by removing repeated rows). The fallback
    keeps the exact scaling and matches the weights sampler in distribution."""
    x = np.random.default_rng(8).standard_normal((2, 4))
    X = np.concatenate([x, 2 * x[:1]])
    spec = mc.as_spec(None, 12, depth=3, activation="relu", weight_var=2.0, bias_var=None)
    c = mc.sample_kernels(spec, X, n_networks=6000, seed=4, method="conditional", backend="numpy")
    np.testing.assert_allclose(c.nngp[:, 2, 2], 4 * c.nngp[:, 0, 0], rtol=1e-9)
    np.testing.assert_allclose(c.ntk[:, 2, 1], 2 * c.ntk[:, 0, 1], rtol=1e-9)
    w = mc.sample_kernels(spec, X, n_networks=6000, seed=5, method="weights", backend="numpy")
    for q in ("nngp", "ntk"):
        x_, y_ = getattr(w, q), getattr(c, q)
        for fx, fy in ((x_, y_), (x_ * x_, y_ * y_)):
            assert np.all(np.abs(_z(fx, fy)) < 4.5), (q, _z(fx, fy))


def test_conditional_fallbacks_do_not_depend_on_batch_size():
    # width 6, ReLU: many networks have singular or ill-conditioned Gram matrices (dead units)
    spec = mc.as_spec(None, 6, depth=3, activation="relu", bias_var=None)
    X = np.random.default_rng(2).standard_normal((4, 3))
    runs = [mc.sample_kernels(spec, X, n_networks=9, seed=5, method="conditional", batch_size=bs, backend="numpy")
            for bs in (9, 4, 1)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.ntk, runs[0].ntk)
        np.testing.assert_array_equal(r.outputs, runs[0].outputs)

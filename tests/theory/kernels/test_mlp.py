"""MLP kernels: properties (hypothesis), the numerical path against closed forms, bad input."""
import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from limitlab.theory import activations as A
from limitlab.theory.kernels import MLP

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)
inputs = arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(1, 4)), elements=finite).filter(
    lambda X: np.all(np.sum(X * X, axis=1) > 1e-3))
CLOSED = ["relu", "erf", "gelu", "abs", "sin"]
params = st.fixed_dictionaries({"depth": st.integers(1, 4), "activation": st.sampled_from(CLOSED),
                                "weight_var": st.floats(0.5, 2.5), "bias_var": st.floats(0.0, 0.5)})


@SETTINGS
@given(inputs, params)
def test_kernels_are_symmetric_psd_and_cauchy_schwarz(X, p):
    k = MLP(**p).kernels(X)
    for K in k:
        np.testing.assert_array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev.min() >= -1e-10 * max(ev.max(), 1.0)
        d = np.diag(K)
        assert np.all(K ** 2 <= np.outer(d, d) * (1 + 1e-12) + 1e-300)


@SETTINGS
@given(inputs, inputs, params)
def test_cross_kernel_is_the_transpose_of_the_swapped_one(X1, X2, p):
    if X1.shape[1] != X2.shape[1]:
        X2 = np.resize(X2, (X2.shape[0], X1.shape[1])) + 0.5
    m = MLP(**p)
    a, b = m.kernels(X1, X2), m.kernels(X2, X1)
    np.testing.assert_allclose(a.nngp, b.nngp.T, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(a.ntk, b.ntk.T, rtol=1e-13, atol=1e-14)
    # the symmetric path (X2=None) and the general path agree on the same inputs
    np.testing.assert_allclose(m.kernels(X1, X1.copy()).ntk, m.kernels(X1).ntk, rtol=1e-13, atol=1e-14)


@SETTINGS
@given(inputs, st.floats(0.1, 10), st.floats(0.1, 10), st.integers(1, 4))
def test_relu_without_bias_is_positively_homogeneous(X, a, b, depth):
    m = MLP(depth, "relu", weight_var=2.0, bias_var=0.0)
    x1, x2 = X[:1], X[1:2]
    cos = (x1 @ x2.T).item() / np.sqrt((x1 @ x1.T).item() * (x2 @ x2.T).item())
    if abs(cos) > 0.999:
        # near-parallel inputs: the angle is ill-conditioned (1e-16 in c is ~1e-8 in theta),
        # so the identity holds to ~1e-9, not 1e-12
        return
    for K, Ks in zip(m.kernels(x1, x2), m.kernels(a * x1, b * x2)):
        np.testing.assert_allclose(Ks, a * b * K, rtol=1e-12)


@SETTINGS
@given(params)
def test_ntk_dominates_nngp_on_the_diagonal(p):
    X = np.random.default_rng(0).standard_normal((5, 3))
    k = MLP(**p).kernels(X)
    assert np.all(np.diag(k.ntk) >= np.diag(k.nngp) * (1 - 1e-14))


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh", "sin"])
def test_strictly_positive_definite_on_the_sphere_for_non_polynomial_activations(activation):
    """Jacot et al. 2018, Prop. 2: distinct points on the sphere give a positive definite NTK."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True) / np.sqrt(3)
    K = MLP(2, activation, bias_var=0.1).ntk(X)
    assert np.linalg.eigvalsh(K).min() > 1e-8 * np.trace(K)


def test_polynomial_activation_kernel_is_singular_beyond_its_rank():
    """Contrast: identity activation gives a rank <= d kernel (no bias), so the sphere test has power."""
    X = np.random.default_rng(1).standard_normal((12, 3))
    K = MLP(2, "identity", bias_var=0.0).ntk(X)
    assert np.linalg.eigvalsh(K).min() < 1e-10 * np.trace(K)


@pytest.mark.parametrize("name,expr", [("erf", sp.erf(A.x)), ("gelu", A.x * (1 + sp.erf(A.x / sp.sqrt(2))) / 2),
                                       ("relu", sp.Piecewise((A.x, A.x > 0), (0, True)))])
def test_quadrature_path_matches_closed_form(name, expr):
    """The compiled quadrature path (Mehler series + nested quadrature), forced on an activation with a
    closed form by giving it as an expression, reproduces the closed form to 1e-10."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 4)) * np.array([0.1, 1, 3, 10])
    # near-parallel pairs (|rho| ~ 1 - 1e-7) exercise the nested-quadrature fallback; exactly
    # parallel ones are ill-conditioned for any arccos closed form (a 1e-16 error in rho is
    # 1e-8 in theta), so they cannot serve as a 1e-10 reference
    X = np.vstack([X, X[:2] * 1.3 + 1e-3 * rng.standard_normal((2, 4))])
    closed = MLP(3, name, weight_var=1.7, bias_var=0.1).kernels(X)
    numeric = MLP(3, expr, weight_var=1.7, bias_var=0.1).kernels(X)
    assert not MLP(3, expr).activation.has_closed_form
    for a, b in zip(numeric, closed):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


@pytest.mark.parametrize("name,expr", [
    ("erf", sp.erf(A.x)),
    pytest.param("gelu", A.x * (1 + sp.erf(A.x / sp.sqrt(2))) / 2, marks=pytest.mark.slow)])
def test_interpolated_tables_path_matches_closed_form(name, expr):
    """Many distinct input norms (two decades): the Hermite tables come from Chebyshev
    interpolation in log q; the kernels still reproduce the closed form to 1e-10, in the
    symmetric, cross and NNGP-only paths."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 5)) * 10.0 ** rng.uniform(-0.5, 1.5, (60, 1))
    X2 = rng.standard_normal((40, 5)) * 10.0 ** rng.uniform(-0.5, 1.5, (40, 1))
    closed, numeric = MLP(3, name, weight_var=1.7, bias_var=0.1), MLP(3, expr, weight_var=1.7, bias_var=0.1)
    for args in [(X,), (X, X2)]:
        for a, b in zip(numeric.kernels(*args), closed.kernels(*args)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    np.testing.assert_allclose(numeric.nngp(X), closed.nngp(X), rtol=1e-10, atol=1e-10 * np.abs(closed.nngp(X)).max())


def test_float32_on_request():
    X = np.random.default_rng(0).standard_normal((7, 3))
    k64 = MLP(3, "relu").kernels(X)
    k32 = MLP(3, "relu").kernels(X, dtype=np.float32)
    assert k32.nngp.dtype == np.float32 and k32.ntk.dtype == np.float32
    np.testing.assert_allclose(k32.ntk, k64.ntk, rtol=1e-5)


def test_symbolic_closed_form_matches_numbers():
    m = MLP(2, "relu", weight_var=2, bias_var=sp.Rational(1, 10))
    nngp, ntk = m.symbolic()
    g11, g22, g12 = m.symbols
    X = np.array([[1.0, 0.5], [-0.3, 2.0]])
    G = X @ X.T / 2
    subs = {g11: G[0, 0], g22: G[1, 1], g12: G[0, 1]}
    k = m.kernels(X)
    assert abs(float(nngp.subs(subs)) - k.nngp[0, 1]) < 1e-12
    assert abs(float(ntk.subs(subs)) - k.ntk[0, 1]) < 1e-12
    assert sp.latex(nngp) and len(m.recursion()) == 5


@pytest.mark.parametrize("kwargs,arg", [
    ({"depth": 0}, "depth"), ({"depth": 2.5}, "depth"), ({"depth": 2, "weight_var": -1.0}, "weight_var"),
    ({"depth": 2, "bias_var": [0.1, 0.2]}, "bias_var"), ({"depth": 2, "activation": "nope"}, "activation"),
    ({"depth": 2, "activation": sp.Symbol("a") * sp.Symbol("b")}, "activation"),
    ({"depth": 2, "parametrization": "mup"}, "parametrization"), ({"depth": 2, "width": 0}, "width"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        MLP(**kwargs)


@pytest.mark.parametrize("X1,X2,arg", [
    (np.array([1.0, 2.0]), None, "X1"), (np.array([[1.0, np.nan]]), None, "X1"),
    (np.ones((2, 3)), np.ones((2, 4)), "X2"), (np.ones((2, 3)), np.array([[np.inf, 0, 0]]), "X2"),
    (np.array([["a", "b"]]), None, "X1"), (np.ones((0, 3)), None, "X1"),
])
def test_bad_inputs_name_the_argument(X1, X2, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        MLP(2, "relu").kernels(X1, X2)


def test_standard_parametrization_ntk_needs_a_width():
    with pytest.raises(ValueError, match="width"):
        MLP(2, "relu", parametrization="standard").ntk(np.ones((2, 3)))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 131, 700])  # 700: the Gram by row bands
@pytest.mark.parametrize("activation", ["relu", "erf", "gelu"])
def test_symmetric_path_agrees_with_the_cross_path_to_rounding(n, activation):
    # The symmetric path (band-GEMM upper triangle, rows paired p with n-1-p, mirrored), the
    # general X1 != X2 path, and X2 given as the very same array (numpy may then take BLAS syrk
    # for X @ X.T) sum the Gram's products in different orders. Nothing promises bit-equality
    # between BLAS paths; what holds is agreement to rounding: each Gram entry differs by at most
    # d u |x| |x'| (Higham, Accuracy and Stability, eq. 3.5), and the three Lipschitz layer maps
    # amplify that by a modest factor. 1e-12 of the kernel's scale is ~4500 ulp: a bound on
    # rounding, yet 1e4 times tighter than any real error of the maps (quadrature accuracy 1e-10).
    X = np.random.default_rng(n).standard_normal((n, 5))
    m = MLP(3, activation, weight_var=1.7, bias_var=0.2)
    sym, cross = m.kernels(X), m.kernels(X, X.copy())
    same = m.kernels(X, X)
    for a, b, c in zip(sym, cross, same):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(c, b, rtol=1e-12, atol=1e-12 * scale)
        assert np.array_equal(a, a.T)  # the symmetric path mirrors: exactly symmetric


def test_cross_path_differs_from_a_wrong_gram_beyond_the_rounding_bound():
    # the bound above is not vacuous: a relative perturbation of one input of 1e-9 (far below
    # any physical change, far above rounding) is detected by the same tolerance
    X = np.random.default_rng(3).standard_normal((64, 5))
    Y = X.copy()
    Y[7] *= 1 + 1e-9
    m = MLP(3, "erf", weight_var=1.7, bias_var=0.2)
    a, b = m.ntk(X), m.ntk(X, Y)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


@pytest.mark.parametrize("activation", ["relu", "erf", "abs", "gelu"])
def test_zero_input_without_bias_gets_its_exact_limit(activation):
    # phi(0) = 0 and no bias: the network maps 0 to 0 for every parameter, so the output and
    # its gradient vanish there, and both kernels' row of the zero input is exactly 0
    X = np.random.default_rng(0).standard_normal((5, 3))
    X[2] = 0.0
    k = MLP(3, activation, bias_var=None).kernels(X)
    for K in k:
        assert np.all(K[2] == 0.0) and np.all(K[:, 2] == 0.0)
        assert np.all(np.isfinite(K)) and np.all(np.diagonal(K)[[0, 1, 3, 4]] > 0)


def test_undefined_kernel_at_zero_variance_is_a_clear_error():
    # relu^3's map divides by the variance: at a zero input without bias it has no value
    X = np.random.default_rng(0).standard_normal((4, 3))
    X[1] = 0.0
    with pytest.raises(ValueError, match="X1.*bias_var"):
        MLP(2, A.rectified_monomial(3), bias_var=None).ntk(X)
    assert np.all(np.isfinite(MLP(2, A.rectified_monomial(3), bias_var=0.1).ntk(X)))


@pytest.mark.parametrize("method", ["kernels", "nngp", "ntk"])
def test_complex_inputs_are_a_type_error_naming_the_argument(method):
    # they used to lose their imaginary part silently
    X = np.random.default_rng(0).standard_normal((3, 2))
    m = MLP(2, "relu")
    with pytest.raises(TypeError, match="X1: expected a real array.*complex128"):
        getattr(m, method)(X + 1j)
    with pytest.raises(TypeError, match="X2: expected a real array.*complex64"):
        getattr(m, method)(X, (X + 0j).astype(np.complex64))
    with pytest.raises(TypeError, match="X1: expected a real array"):
        getattr(m, method)(X.astype(complex))  # even with zero imaginary part


@pytest.mark.parametrize("X1,X2,arg,msg", [
    (np.ones((3, 0)), None, "X1", "non-empty"), (np.ones((2, 3)), np.ones((0, 3)), "X2", "non-empty"),
    (np.ones((2, 3, 1)), None, "X1", r"shape \(N, d\), got shape \(2, 3, 1\)"),
    (np.ones(3), None, "X1", r"got shape \(3,\)"), (np.float64(1.0), None, "X1", r"got shape \(\)"),
    (np.ones((2, 3)), np.ones((2, 3, 1)), "X2", "shape"),
    (np.array([[1.0, -np.inf]]), None, "X1", "non-finite"), (np.ones((2, 3)), np.full((1, 3), np.nan), "X2", "non-finite"),
    (np.ones((2, 3)), np.ones((2, 2)), "X2", "feature dimension 2 does not match X1's 3"),
    (np.array([[None, 1.0]], dtype=object), None, "X1", "numeric"),
])
def test_more_bad_inputs_name_the_argument_and_what_is_allowed(X1, X2, arg, msg):
    for act in ("relu", "tanh"):  # the compiled and the quadrature path
        with pytest.raises((ValueError, TypeError), match=f"{arg}: .*{msg}"):
            MLP(2, act).kernels(X1, X2)


def test_neural_tangents_spellings_are_accepted():
    """W_std, b_std are standard deviations (weight_var = W_std**2), parameterization= is
    parametrization=, as in neural-tangents' stax.Dense."""
    X = np.random.default_rng(4).standard_normal((5, 3))
    ref = MLP(2, "erf", weight_var=2.25, bias_var=0.01, parametrization="standard", width=64).kernels(X)
    nt = MLP(2, "erf", W_std=1.5, b_std=0.1, parameterization="standard", width=64)
    assert nt.weight_var == 2.25 and nt.bias_var == pytest.approx(0.01, rel=1e-15) and nt.parametrization == "standard"
    for a, b in zip(nt.kernels(X), ref):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    # one value per Dense layer, and b_std=None (no bias) as in neural-tangents
    per = MLP(2, "relu", W_std=[1.0, 2.0, 0.5], b_std=None)
    np.testing.assert_array_equal(per._w, [1.0, 4.0, 0.25])
    assert per.bias_var is None and np.all(per._beta == 0)
    # defaults unchanged, and the resolved network can be copied with dataclasses.replace
    from dataclasses import replace
    d = MLP(2)
    assert (d.weight_var, d.bias_var, d.parametrization) == (1.0, 0.0, "ntk")
    assert replace(nt, weight_var=1.0).weight_var == 1.0


@pytest.mark.parametrize("kwargs,msg", [
    ({"weight_var": 2.0, "W_std": 1.0}, r"weight_var, W_std: give one of the two spellings.*weight_var = W_std\*\*2"),
    ({"bias_var": 0.1, "b_std": 0.1}, "bias_var, b_std: give one"),
    ({"bias_var": None, "b_std": None}, "bias_var, b_std: give one"),
    ({"parametrization": "ntk", "parameterization": "ntk"}, "parametrization, parameterization: give one"),
    ({"parameterization": "mup"}, "parameterization: must be 'ntk' or 'standard', got 'mup'"),
    ({"W_std": -1.0}, "W_std: a standard deviation must be a finite number >= 0"),
    ({"b_std": "big"}, "b_std: a standard deviation"),
])
def test_both_spellings_or_bad_aliases_are_a_value_error(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        MLP(2, "relu", **kwargs)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_float32_inputs_give_float32_kernels_rounded_once(activation):
    """The inputs' precision is followed (float32 in, float32 out), computed in float64: each
    entry is the float64 result of the same (exactly upcast) inputs, correctly rounded."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    X[1] = X[0] * np.float32(1.0001)  # near-parallel: a float32 Gram matrix would be 1e-4 off here
    m = MLP(3, activation, 2.0, 0.1)
    k32, k64 = m.kernels(X), m.kernels(X.astype(np.float64))
    for a, b in zip(k32, k64):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(np.float32))
    assert m.ntk(X, X[:3]).dtype == np.float32 and m.nngp(X.astype(np.float16)).dtype == np.float32
    assert m.ntk(X, X[:3].astype(np.float64)).dtype == np.float64  # mixed: the wider
    assert m.ntk(X.astype(np.float64), dtype=np.float32).dtype == np.float32  # explicit dtype wins
    assert m.ntk(np.ones((2, 3), dtype=np.int64)).dtype == np.float64
    with pytest.raises(ValueError, match="dtype: must be one of float64, float32, got float16"):
        m.ntk(X, dtype=np.float16)


@SETTINGS
@given(st.floats(0.1, 3.0), st.one_of(st.none(), st.floats(0.0, 1.0)), st.sampled_from(["ntk", "standard"]))
def test_neural_tangents_spellings_are_the_squared_variances(w_std, b_std, param):
    X = np.random.default_rng(6).standard_normal((4, 3))
    a = MLP(2, "relu", W_std=w_std, b_std=b_std, parameterization=param, width=8).kernels(X)
    b = MLP(2, "relu", w_std ** 2, None if b_std is None else b_std ** 2, param, width=8).kernels(X)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)

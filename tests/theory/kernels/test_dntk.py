"""dntk_single_input: the dNTK's and ddNTKs' 1/n statistics (P, Q, R, U1, U2, U3 per layer) against
30-digit mpmath, closed forms, and finite networks whose dH, ddI and ddII are computed per network
(Hessian-vector products by a forward-over-backward pass, below) -- docs/dntk.md."""
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.numerics import gaussian
from limitlab.theory.kernels import MLP
from limitlab.theory.kernels.dntk import DNTK, dntk_layer_step, dntk_single_input

X1 = np.array([[1.0, -0.5, 2.0]])

# --------------------------------------------------------------------------------------
# 30-digit reference: the recursion with phi'' and phi''' taken directly (not in the
# integrated-by-parts forms of the code); ReLU's a.e. phi'' = phi''' = 0
# --------------------------------------------------------------------------------------

MP_ACTS = {  # phi, phi', phi'', phi''', kinks
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2, lambda x: -2 * mp.tanh(x) / mp.cosh(x) ** 2,
             lambda x: (4 * mp.tanh(x) ** 2 - 2 / mp.cosh(x) ** 2) / mp.cosh(x) ** 2, ()),
    "erf": (mp.erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x * x), lambda x: -4 * x / mp.sqrt(mp.pi) * mp.exp(-x * x),
            lambda x: (8 * x * x - 4) / mp.sqrt(mp.pi) * mp.exp(-x * x), ()),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), lambda x: 1 / (1 + mp.exp(-x)),
                 lambda x: mp.exp(-x) / (1 + mp.exp(-x)) ** 2,
                 lambda x: mp.exp(-x) * (mp.exp(-x) - 1) / (1 + mp.exp(-x)) ** 3, ()),
    "relu": (lambda x: max(x, 0), lambda x: mp.mpf(1) if x > 0 else mp.mpf(0), lambda x: mp.mpf(0),
             lambda x: mp.mpf(0), (0.0,)),
    "linear": (lambda x: x, lambda x: mp.mpf(1), lambda x: mp.mpf(0), lambda x: mp.mpf(0), ()),
}


def _mp_dntk(activation, depth, w, b, q1):
    """(P, Q, R, U1, U2, U3, Theta, B, F) per layer 1..depth+1 at 30 digits."""
    f, df, ddf, d3f, kinks = MP_ACTS[activation]
    with mp.workdps(30):
        def E(h, K):
            return gaussian.mp_expect(h, K, kinks=kinks, dps=30)

        K = mp.mpf(q1)
        Th = K
        P = Q = R = U1 = U2 = U3 = B = F = mp.mpf(0)
        out = [(P, Q, R, U1, U2, U3, Th, B, F)]
        for _ in range(depth):
            g, p, q4 = E(lambda x: f(x) ** 2, K), E(lambda x: df(x) ** 2, K), E(lambda x: df(x) ** 4, K)
            c22, e = E(lambda x: (f(x) * df(x)) ** 2, K), E(lambda x: x * f(x) * df(x), K)
            a, c = E(lambda x: ddf(x) * df(x) ** 2 * f(x), K), E(lambda x: ddf(x) * f(x), K)
            bz = E(lambda x: x * ddf(x) * df(x), K)
            s22, s2 = E(lambda x: (ddf(x) * df(x)) ** 2, K), E(lambda x: ddf(x) ** 2, K)
            t3, t1 = E(lambda x: d3f(x) * df(x) ** 3, K), E(lambda x: d3f(x) * df(x), K)
            al2 = E(lambda x: (f(x) * df(x) + Th * ddf(x) * df(x)) ** 2, K)
            za = E(lambda x: x * (f(x) * df(x) + Th * ddf(x) * df(x)), K) / K
            W2 = mp.mpf(w) ** 2
            Bn = W2 * (q4 * Th ** 2 + p * p * B)
            P, Q, R, U1, U2, U3 = (
                W2 * (c22 * Th + a * Th ** 2 + F * e * (e + Th * bz) / K ** 2 + P * p * e / K),
                W2 * (a * Th ** 2 + B * c * p + Q * p * e / K),
                W2 * (a * Th ** 2 + t3 * Th ** 3 + B * p * (c + Th * t1) + Q * p * za + R * p * p),
                Bn + W2 * (s22 * Th ** 3 + B * Th * s2 * p + U1 * p * p),
                W2 * (Th * al2 + F * za * za + 2 * P * p * za + U2 * p * p),
                W2 * (s22 * Th ** 3 + U3 * p * p))
            B, F = Bn, W2 * (c22 * Th + (e / K) ** 2 * F)
            K = w * g + b
            Th = K + w * p * Th
            out.append((P, Q, R, U1, U2, U3, Th, B, F))
        return np.array([[float(v) for v in row] for row in out])


def _table(r, a=0):
    return np.stack([r.P[:, a], r.Q[:, a], r.R[:, a], r.U1[:, a], r.U2[:, a], r.U3[:, a], r.ntk[:, a],
                     r.ntk_fluctuations["B"][:, a], r.ntk_fluctuations["F"][:, a]], axis=1)


@pytest.mark.parametrize("activation,w,b", [("tanh", 1.5, 0.1), ("relu", 1.5, 0.1), ("softplus", 1.2, 0.0),
                                            pytest.param("erf", 2.0, 0.05, marks=pytest.mark.slow)])
def test_recursion_matches_30_digit_mpmath_with_direct_derivatives(activation, w, b):
    """P, Q, R, U1, U2, U3, Theta, B, F at every layer (depth 3, with biases) against the recursion
    evaluated with 30-digit mpmath moments and phi'', phi''' themselves (the code takes the dNTK's
    phi'' moments, and phi''' always, in integrated-by-parts form, so this also checks those
    identities; ReLU: the a.e. phi'' = phi''' = 0)."""
    depth = 3
    q1 = w * float(X1[0] @ X1[0]) / 3 + b
    r = dntk_single_input(MLP(depth, activation, weight_var=w, bias_var=b), X1)
    ref = _mp_dntk(activation, depth, w, b, q1)
    got = _table(r)
    scale = np.abs(ref).max(axis=0)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * scale.max())
    if activation == "relu":  # no phi'' anywhere: Q = R = U3 = 0
        for v in (r.Q, r.R, r.U3):
            np.testing.assert_allclose(v[:, 0], 0.0, atol=1e-13 * scale.max())


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "softplus", "linear"])
def test_ntk_and_its_fluctuations_equal_finite_widths(activation):
    """The NTK quantities the recursion carries are those of MLP.ntk and finite_width (B, F)."""
    from limitlab.theory.kernels import finite_width

    net = MLP(3, activation, weight_var=1.3, bias_var=0.2)
    X = np.array([[1.0, -0.5], [0.2, 0.9]])
    r = dntk_single_input(net, X)
    np.testing.assert_allclose(r.ntk[-1], np.diagonal(net.ntk(X)), rtol=1e-12)
    for a in range(2):
        fw = finite_width(net, X[a:a + 1])
        for l, lay in enumerate(fw.layers):
            assert r.ntk[l, a] == pytest.approx(lay.ntk_diag[0], rel=1e-12)
            for k in ("B", "F"):
                assert r.ntk_fluctuations[k][l, a] == pytest.approx(lay.ntk_tensors[k][0], rel=1e-11, abs=1e-300)


@pytest.mark.parametrize("activation", ["tanh", "erf", "softplus", "relu", "linear"])
def test_one_hidden_layer_closed_forms(activation):
    """Depth 1, by hand (v the readout's standard normals, q = K^1, s = sqrt(w_1 / n)):
    dH = 2 s^3 q sum_j v_j phi_j phi'_j^2 + s^3 q^2 sum_j v_j^3 phi''_j phi'_j^2,
    H g = s^2 (q v_j phi'_j^2 on v_j; (phi'_j phi_j + q v_j^2 phi''_j phi'_j) e_j on the first layer's row j),
    ddI = 3 s^4 q^2 sum_j v_j^2 phi''_j phi_j phi'_j^2 + s^4 q^3 sum_j v_j^4 phi'''_j phi'_j^3, so, exactly at
    every n: n E[dH f] = w_1^2 (2 q <phi^2 phi'^2> + 3 q^2 <phi'' phi'^2 phi>),
    n E[ddI] = 3 w_1^2 (q^2 <phi'' phi'^2 phi> + q^3 <phi''' phi'^3>),
    n E[ddII] = w_1^2 (q^2 <phi'^4> + q <phi^2 phi'^2> + 2 q^2 <phi'' phi'^2 phi> + 3 q^3 <phi''^2 phi'^2>);
    here with phi'' and phi''' evaluated directly at 30 digits."""
    w0, w1, b0, b1 = 1.4, 1.7, 0.3, 0.2
    net = MLP(1, activation, weight_var=[w0, w1], bias_var=[b0, b1])
    q = w0 * float(X1[0] @ X1[0]) / 3 + b0
    f, df, ddf, d3f, kinks = MP_ACTS[activation]
    with mp.workdps(30):
        def E(h):
            return gaussian.mp_expect(h, q, kinks=kinks)

        c22, a = E(lambda x: (f(x) * df(x)) ** 2), E(lambda x: ddf(x) * df(x) ** 2 * f(x))
        t3, q4, s22 = E(lambda x: d3f(x) * df(x) ** 3), E(lambda x: df(x) ** 4), E(lambda x: (ddf(x) * df(x)) ** 2)
        ref = [float(w1 ** 2 * (2 * q * c22 + 3 * q * q * a)), float(3 * w1 ** 2 * (q * q * a + q ** 3 * t3)),
               float(w1 ** 2 * (q * q * q4 + q * c22 + 2 * q * q * a + 3 * q ** 3 * s22))]
    r = dntk_single_input(net, X1)
    got = [r.output[0], r.ddI_output[0], r.ddII_output[0]]
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13 * max(map(abs, ref)))


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_deep_linear_closed_forms(depth):
    """phi = identity, C_W = 1, no biases, q = |x|^2 / d: Theta^l = l q, B^l = (l-1) l (2l-1) q^2 / 6,
    F^l = l (l-1) q^2 / 2, and the recursion reduces to P' = q Theta + F + P, U1' = B' + U1,
    U2' = q Theta + F + 2 P + U2 (Q = R = U3 = 0), solved by hand:
    P^l = (l-1) l (l+1) q^2 / 6, U1^l = U2^l = (l-1) l^2 (l+1) q^2 / 12, so at the output
    n E[dH f] -> L (L+1) (L+2) q^2 / 3 and n E[ddII] -> L (L+1)^2 (L+2) q^2 / 6 (depth 1: 2 q^2 and
    2 q^2, the closed forms above)."""
    q = float(X1[0] @ X1[0]) / 3
    r = dntk_single_input(MLP(depth, "linear", weight_var=1.0, bias_var=0.0), X1)
    l = np.arange(1, depth + 2)
    tol = dict(rtol=1e-12, atol=1e-13 * depth ** 4 * q * q)
    np.testing.assert_allclose(r.P[:, 0], (l - 1) * l * (l + 1) * q * q / 6, **tol)
    for v in (r.U1, r.U2):
        np.testing.assert_allclose(v[:, 0], (l - 1) * l ** 2 * (l + 1) * q * q / 12, **tol)
    for v in (r.Q, r.R, r.U3):
        np.testing.assert_allclose(v[:, 0], 0.0, atol=tol["atol"])
    L = depth
    assert r.output[0] == pytest.approx(L * (L + 1) * (L + 2) * q * q / 3, rel=1e-12)
    assert r.ddII_output[0] == pytest.approx(L * (L + 1) ** 2 * (L + 2) * q * q / 6, rel=1e-12)


def test_relu_vanishing_terms_and_weight_var_scaling():
    """ReLU without biases: every phi'' moment vanishes, so Q = R = U3 = 0; K^l and Theta^l scale
    like C_W^l (one weight variance for all layers), B^l and F^l like C_W^(2l), so P^l, U1^l and U2^l
    (quadratic in them, times C_W^2) like C_W^(2l)."""
    r1 = dntk_single_input(MLP(4, "relu", weight_var=1.0, bias_var=0.0), X1)
    r2 = dntk_single_input(MLP(4, "relu", weight_var=2.0, bias_var=0.0), X1)
    for v in (r1.Q, r1.R, r1.U3):
        np.testing.assert_allclose(v, 0.0, atol=1e-14 * np.abs(r1.P).max())
    l = np.arange(2, 6)
    for v1, v2 in ((r1.P, r2.P), (r1.U1, r2.U1), (r1.U2, r2.U2)):
        np.testing.assert_allclose(v2[1:, 0] / v1[1:, 0], 2.0 ** (2 * l), rtol=1e-12)


def test_layer_step_is_the_recursion_and_inputs_are_separate():
    """dntk_layer_step reproduces one row from the previous; rows of X are independent inputs."""
    net = MLP(3, "gelu", weight_var=1.1, bias_var=0.05)
    X = np.array([[1.0, -0.5], [0.2, 0.9], [1.0, -0.5]])
    r = dntk_single_input(net, X)
    np.testing.assert_array_equal(_table(r, 0), _table(r, 2))
    # one input alone against it among others: the moments of all inputs are interpolated in log q
    # together (gaussian_moments.one_input_derivatives_many, checked to 2e-14 of scale)
    np.testing.assert_allclose(_table(r, 1), _table(dntk_single_input(net, X[1:2])), rtol=1e-13)
    from limitlab.theory import activations

    act = activations.get("gelu")
    K1 = 1.1 * np.mean(X * X, axis=1) + 0.05
    K2 = 1.1 * np.array([gaussian.expect(lambda z: act(z) ** 2, k, act.kinks) for k in K1]) + 0.05
    keys = ("P", "Q", "R", "U1", "U2", "U3")
    state = {k: getattr(r, k)[1] for k in keys}
    nxt = dntk_layer_step("gelu", 1.1, K2, r.ntk[1], r.ntk_fluctuations["B"][1], r.ntk_fluctuations["F"][1], state)
    for k in keys:
        np.testing.assert_allclose(nxt[k], getattr(r, k)[2], rtol=1e-9, err_msg=k)
    with pytest.raises(ValueError, match="state"):
        dntk_layer_step("gelu", 1.1, K2, r.ntk[1], 0.0, 0.0, {"S": 1.0})


def test_result_helpers_and_bad_input():
    r = dntk_single_input(MLP(2, "tanh", weight_var=1.5, bias_var=0.1), X1)
    assert isinstance(r, DNTK) and r.P.shape == (3, 1) and r.U2.shape == (3, 1)
    assert r.expected_dntk_output(64)[0] == pytest.approx(r.output[0] / 64)
    assert r.ntk_velocity(64, lr=0.5)[0] == pytest.approx(-r.output[0] / 64)
    dI, dII = r.expected_ddntk_output(64)
    assert dI[0] == pytest.approx(3 * r.R[-1, 0] / 64) and dII[0] == pytest.approx(r.ddII_output[0] / 64)
    assert r.expected_dntk_output(np.inf)[0] == 0
    with pytest.raises(ValueError, match="parametrization"):
        dntk_single_input(MLP(2, "tanh", parametrization="standard"), X1)
    with pytest.raises(TypeError, match="net"):
        dntk_single_input("tanh", X1)
    with pytest.raises(ValueError, match="X"):
        dntk_single_input(MLP(2, "tanh"), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="width"):
        r.expected_dntk_output(0)
    with pytest.raises(ValueError, match="lr"):
        r.ntk_velocity(64, lr=-1.0)
    # a zero input without biases has no 1/n expansion (zero variance): refused, not NaN
    with pytest.raises(ValueError, match="row 0 has zero variance at layer 1"):
        dntk_single_input(MLP(3, "tanh", weight_var=1.5, bias_var=0.0), np.zeros((1, 3)))


@settings(max_examples=20, deadline=None)
@given(activation=st.sampled_from(["tanh", "relu", "gelu", "erf", "softplus", "selu", "linear"]),
       depth=st.integers(1, 4), w=st.floats(0.3, 3.0), b=st.floats(0.0, 1.0), scale=st.floats(0.1, 3.0))
def test_readout_weight_var_enters_as_its_square_and_ddii_is_nonnegative(activation, depth, w, b, scale):
    """The readout's C_W multiplies every output coefficient by C_W^2 (each has four readout
    factors) and leaves the hidden layers alone; U1 >= B (U1 - B is the mean of |Hess(z_i) g_j|^2
    beyond the readout part) and U1 + U2 + U3 >= 0 (ddII = |H g|^2) at every layer."""
    base = [w] * (depth + 1)
    r1 = dntk_single_input(MLP(depth, activation, weight_var=base, bias_var=b), X1)
    r2 = dntk_single_input(MLP(depth, activation, weight_var=base[:-1] + [w * scale], bias_var=b), X1)
    t1, t2 = _table(r1), _table(r2)
    np.testing.assert_allclose(t2[:-1], t1[:-1], rtol=1e-13, atol=0)
    np.testing.assert_allclose(t2[-1, :6], scale ** 2 * t1[-1, :6], rtol=1e-12, atol=1e-300)
    size = np.abs(t1[:, :6]).max() + 1e-300
    assert np.all(r1.U1 - r1.ntk_fluctuations["B"] >= -1e-12 * size)
    assert np.all(r1.U1 + r1.U2 + r1.U3 >= -1e-12 * size)


# --------------------------------------------------------------------------------------
# Finite networks: exact per-network Hessian-vector products (independent reference, NumPy)
# --------------------------------------------------------------------------------------

NP_ACTS = {  # phi, phi', phi'' (ReLU: the a.e. Hessian, phi'' = 0)
    "tanh": (np.tanh, lambda z: 1 / np.cosh(z) ** 2, lambda z: -2 * np.tanh(z) / np.cosh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0) * 1.0, lambda z: 0.0 * z),
    "linear": (lambda z: z, lambda z: np.ones_like(z), lambda z: np.zeros_like(z)),
}


def _draw(rng, B, n, depth, d, n_out=1):
    """B networks' standard normal weights Om[l] (B, out, in) and biases be[l] (B, out)."""
    dims = [d] + [n] * depth + [n_out]
    return ([rng.standard_normal((B, dims[l + 1], dims[l])) for l in range(depth + 1)],
            [rng.standard_normal((B, dims[l + 1])) for l in range(depth + 1)])


def _forward(Om, be, x, act, w, b):
    phi = act[0]
    a, z = [np.broadcast_to(x, (Om[0].shape[0], x.size))], []
    for l in range(len(Om)):
        z.append(np.sqrt(w[l] / a[l].shape[1]) * np.einsum("boi,bi->bo", Om[l], a[l]) + np.sqrt(b[l]) * be[l])
        if l + 1 < len(Om):
            a.append(phi(z[-1]))
    return a, z  # a[l]: the input of Dense l; z[l]: its output (layer l + 1's pre-activations)


def _backward(Om, a, z, k, act, w):
    """delta[l] = d z_top,k / d z[l]."""
    L = len(Om)
    delta = [None] * L
    delta[-1] = np.zeros_like(z[-1])
    delta[-1][:, k] = 1.0
    for l in range(L - 1, 0, -1):
        delta[l - 1] = act[1](z[l - 1]) * np.sqrt(w[l] / a[l].shape[1]) * np.einsum("boi,bo->bi", Om[l], delta[l])
    return delta


class _Net:
    """One batch of networks at one input: gradients and Hessian-vector products of the top layer's
    neurons as parameter-space vectors in factored form, per Dense layer l a weight block
    U A^T + V C^T and a bias block (standard normal coordinates: lambda = 1)."""

    def __init__(self, Om, be, x, act, w, b):
        self.Om, self.act, self.w, self.b = Om, act, w, b
        self.a, self.z = _forward(Om, be, x, act, w, b)
        self.L = len(Om)
        self.s = [np.sqrt(w[l] / self.a[l].shape[1]) for l in range(self.L)]
        self._delta = {}

    def delta(self, k):
        if k not in self._delta:
            self._delta[k] = _backward(self.Om, self.a, self.z, k, self.act, self.w)
        return self._delta[k]

    def grad(self, k):
        d = self.delta(k)
        return [(self.s[l] * d[l], self.a[l], None, None, np.sqrt(self.b[l]) * d[l]) for l in range(self.L)]

    def hess_vec(self, i, k):
        """Hess(z_i) g_k: the backward pass of z_i differentiated along g_k (forward over reverse)."""
        _, dphi, ddphi = self.act
        a, z, s, Om, L = self.a, self.z, self.s, self.Om, self.L
        di, dk = self.delta(i), self.delta(k)
        A2 = [np.sum(a[l] ** 2, 1) for l in range(L)]
        zd, ad = [], [np.zeros_like(a[0])]  # tangents of z[l] and a[l] along g_k
        for l in range(L):
            zd.append((s[l] ** 2 * A2[l] + self.b[l])[:, None] * dk[l] + s[l] * np.einsum("boi,bi->bo", Om[l], ad[l]))
            if l + 1 < L:
                ad.append(dphi(z[l]) * zd[-1])
        dd = [None] * L  # tangent of delta_i
        dd[-1] = np.zeros_like(di[-1])
        for l in range(L - 1, 0, -1):
            back = s[l] * np.einsum("boi,bo->bi", Om[l], di[l])
            dd[l - 1] = ddphi(z[l - 1]) * zd[l - 1] * back + dphi(z[l - 1]) * s[l] * (
                s[l] * a[l] * np.sum(dk[l] * di[l], 1)[:, None] + np.einsum("boi,bo->bi", Om[l], dd[l]))
        return [(s[l] * dd[l], a[l], s[l] * di[l], ad[l], np.sqrt(self.b[l]) * dd[l]) for l in range(L)]


def _dot(X, Y):
    """Inner product of two factored parameter-space vectors (per network)."""
    def d(u, v):
        return 0.0 if u is None or v is None else np.sum(u * v, 1)

    out = 0.0
    for (U1, A1, V1, C1, b1), (U2, A2, V2, C2, b2) in zip(X, Y):
        out = out + d(U1, U2) * d(A1, A2) + d(U1, V2) * d(A1, C2) + d(V1, U2) * d(C1, A2) + d(V1, V2) * d(C1, C2) \
            + d(b1, b2)
    return out


def _shifted(Om, be, g, e):
    """The parameters moved by e along the factored vector g (a gradient: V = None)."""
    return ([o + e * U[:, :, None] * A[:, None, :] for o, (U, A, _, _, _) in zip(Om, g)],
            [o + e * bb for o, (_, _, _, _, bb) in zip(be, g)])


def exact_dntk(Om, be, x, act, w, b, i0, i1, i2):
    """Per network dH_{i0 i1 i2} = g_i1 . Hess(z_i0) g_i2 (top-layer neurons), and z_top."""
    net = _Net(Om, be, x, act, w, b)
    return _dot(net.grad(i1), net.hess_vec(i0, i2)), net.z[-1]


def exact_ddntk(Om, be, x, act, w, b, i0, i1, i2, i3, e=1e-4):
    """Per network (ddI_{i0 i1 i2 i3}, ddII_{i0 i1 i2 i3}). ddII = (Hess(z_i0) g_i2).(Hess(z_i1) g_i3)
    exactly; ddI = z_i0'''[g_i1, g_i2, g_i3] from a central difference of the exact dH_{i0 i1 i2}
    along g_i3, whose derivative is ddI + (H_i1 g_i3).(H_i0 g_i2) + (H_i0 g_i1).(H_i2 g_i3)."""
    net = _Net(Om, be, x, act, w, b)
    ddII = _dot(net.hess_vec(i0, i2), net.hess_vec(i1, i3))
    g3 = net.grad(i3)
    dp, _ = exact_dntk(*_shifted(Om, be, g3, e), x, act, w, b, i0, i1, i2)
    dm, _ = exact_dntk(*_shifted(Om, be, g3, -e), x, act, w, b, i0, i1, i2)
    extra = _dot(net.hess_vec(i1, i3), net.hess_vec(i0, i2)) + _dot(net.hess_vec(i0, i1), net.hess_vec(i2, i3))
    return (dp - dm) / (2 * e) - extra, ddII


def _flat(g):
    """A factored vector as dense arrays (tests of the reference only)."""
    dense = [U[:, :, None] * A[:, None, :] + (0 if V is None else V[:, :, None] * C[:, None, :])
             for U, A, V, C, _ in g]
    return dense + [bb for *_, bb in g]


def test_reference_hessian_vector_products_match_finite_differences():
    """The reference's Hess(z_i) g_k against (g_i(theta + e g_k) - g_i(theta - e g_k)) / (2 e): the
    error falls like e^2 (~1e-8 relative at e = 1e-5); dH_{ijk} is symmetric in (j, k); the
    factored inner products equal the dense ones; ddI is symmetric in its last three indices
    (to the difference quotient's accuracy)."""
    rng = np.random.default_rng(1)
    x, w, b = X1[0], [1.5, 1.2, 0.9, 1.1], [0.1, 0.2, 0.05, 0.3]
    act = NP_ACTS["tanh"]
    Om, be = _draw(rng, 5, 6, 3, 3, n_out=3)
    net = _Net(Om, be, x, act, w, b)
    for i, k in ((0, 0), (0, 1), (1, 2)):
        hv = _flat(net.hess_vec(i, k))
        errs = []
        for e in (1e-4, 1e-5):
            gp = _flat(_Net(*_shifted(Om, be, net.grad(k), e), x, act, w, b).grad(i))
            gm = _flat(_Net(*_shifted(Om, be, net.grad(k), -e), x, act, w, b).grad(i))
            scale = max(np.max(np.abs(h)) for h in hv)
            errs.append(max(np.max(np.abs((p - m) / (2 * e) - h)) for p, m, h in zip(gp, gm, hv)) / scale)
        assert errs[1] < 1e-7 and errs[1] < errs[0] / 30, (i, k, errs)
        dense = sum(np.sum(u * u, axis=tuple(range(1, u.ndim))) for u in hv)
        np.testing.assert_allclose(_dot(net.hess_vec(i, k), net.hess_vec(i, k)), dense, rtol=1e-12)
    v1, _ = exact_dntk(Om, be, x, act, w, b, 0, 1, 2)
    v2, _ = exact_dntk(Om, be, x, act, w, b, 0, 2, 1)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    t1, _ = exact_ddntk(Om, be, x, act, w, b, 0, 1, 2, 2)
    t2, _ = exact_ddntk(Om, be, x, act, w, b, 0, 2, 1, 2)
    t3, _ = exact_ddntk(Om, be, x, act, w, b, 0, 2, 2, 1)
    # to the difference quotient's accuracy (its e^2 term: ~2e-7 of the largest value at e = 1e-4)
    np.testing.assert_allclose(t1, t2, rtol=0, atol=1e-6 * np.abs(t1).max())
    np.testing.assert_allclose(t1, t3, rtol=0, atol=1e-6 * np.abs(t1).max())


def _simulate(activation, depth, w, b, n, S, seed, which="output", chunk=2000):
    """Per-network samples and their mean and SE: at the output (``which="output"``) of n dH f,
    n ddI, n ddII; at the top hidden layer (a network of depth - 1 hidden layers and n outputs) of
    n dH_{001} z_1 (-> P), n dH_{011} z_0 (-> Q), n ddI_{0011} (-> R), n ddII_{0011} (-> U1),
    n ddII_{0101} (-> U2), n ddII_{0110} (-> U3)."""
    rng = np.random.default_rng(seed)
    act, x = NP_ACTS[activation], X1[0]
    out = []
    for start in range(0, S, chunk):
        B = min(chunk, S - start)
        if which == "output":
            Om, be = _draw(rng, B, n, depth, x.size)
            dH, z = exact_dntk(Om, be, x, act, w, b, 0, 0, 0)
            ddI, ddII = exact_ddntk(Om, be, x, act, w, b, 0, 0, 0, 0)
            out.append(np.stack([dH * z[:, 0], ddI, ddII], axis=1) * n)
        else:
            Om, be = _draw(rng, B, n, depth - 1, x.size, n_out=n)
            wl, bl = w[:depth], b[:depth]
            net = _Net(Om, be, x, act, wl, bl)
            z = net.z[-1]
            h00, h01, h10, h11 = (net.hess_vec(i, k) for i, k in ((0, 0), (0, 1), (1, 0), (1, 1)))
            ddI, _ = exact_ddntk(Om, be, x, act, wl, bl, 0, 0, 1, 1)
            out.append(np.stack([_dot(net.grad(0), h01) * z[:, 1], _dot(net.grad(1), h01) * z[:, 0], ddI,
                                 _dot(h01, h01), _dot(h00, h11), _dot(h01, h10)], axis=1) * n)
    y = np.concatenate(out)
    return y.mean(axis=0), y.std(axis=0) / np.sqrt(y.shape[0])


def _extrapolate(ns, means, ses):
    """Weighted least-squares fit of y(n) = y_inf + c / n, per column: (y_inf, its SE)."""
    ns = np.asarray(ns, float)
    means, ses = np.atleast_2d(np.asarray(means, float).T).T, np.atleast_2d(np.asarray(ses, float).T).T
    ys, ss = [], []
    for m, s in zip(means.T, ses.T):
        A = np.stack([np.ones_like(ns), 1 / ns], axis=1) / s[:, None]
        cov = np.linalg.inv(A.T @ A)
        ys.append((cov @ A.T @ (m / s))[0])
        ss.append(np.sqrt(cov[0, 0]))
    return np.array(ys), np.array(ss)


def _theory_output(r):
    return np.array([r.output[0], r.ddI_output[0], r.ddII_output[0]])


def test_one_hidden_layer_simulation_is_exact_at_small_width():
    """Depth 1 (tanh, biases): n E[dH f], n E[ddI] and n E[ddII] equal the theory at every width
    (the closed forms above are exact), so narrow networks suffice: 10^5 networks at n = 4 and at
    n = 16 agree within 4 SE and reject each theory value 10% off."""
    w, b = [1.4, 1.7], [0.3, 0.2]
    theory = _theory_output(dntk_single_input(MLP(1, "tanh", weight_var=w, bias_var=b), X1))
    for n in (4, 16):
        m, se = _simulate("tanh", 1, w, b, n, 100_000, seed=n, chunk=20_000)
        assert np.all(np.abs(m - theory) < 4 * se), (n, m, se, theory)
        for wrong in (0.9, 1.1):
            assert np.all(np.abs(m - wrong * theory) > 4 * se), (n, wrong, m, se, theory)


def test_dntk_and_ddntk_match_simulation_depth_two():
    """Depth 2, tanh with biases: n E[dH f], n E[ddI], n E[ddII] at n = 16, 32 (3 x 10^4 networks
    each), extrapolated linearly in 1/n, within 4 SE of 2 P + Q, 3 R and U1 + U2 + U3; zero is
    rejected for each."""
    w, b = [1.5, 1.5, 1.5], [0.1, 0.1, 0.1]
    theory = _theory_output(dntk_single_input(MLP(2, "tanh", weight_var=w, bias_var=b), X1))
    ns = (16, 32)
    est = [_simulate("tanh", 2, w, b, n, 30_000, seed=10 + n) for n in ns]
    y, se = _extrapolate(ns, [e[0] for e in est], [e[1] for e in est])
    assert np.all(np.abs(y - theory) < 4 * se), (y, se, theory, est)
    assert np.all(np.abs(y) > 4 * se)


@pytest.mark.slow
@pytest.mark.parametrize("activation,w,b,S", [("tanh", 1.5, 0.1, 60_000), ("relu", 2.0, 0.1, 60_000)])
def test_dntk_10_percent_off_is_rejected_by_simulation(activation, w, b, S):
    """Depth 3 (output) and the top hidden layer (P, Q, R, U1, U2, U3 separately): networks at
    n = 32, 64, 128, fitted as y_inf + c / n; the output's 2 P + Q within 4 SE and 0.9 x, 1.1 x
    rejected at 4 SE; the output's ddNTKs (tanh: the fit over n = 64, 128, the 1/n^2 terms being
    large at n = 32) and the hidden layer's six coefficients within 4 SE. ReLU: the a.e. ddNTKs,
    ddII only (a difference quotient of dH crosses kinks), and its Q = R = U3 = 0 fall like 1/n."""
    depth = 3
    w, b = [w] * (depth + 1), [b] * (depth + 1)
    r = dntk_single_input(MLP(depth, activation, weight_var=w, bias_var=b), X1)
    ns = (32, 64, 128)
    est = [_simulate(activation, depth, w, b, n, S, seed=100 + n) for n in ns]
    theory = _theory_output(r)
    y, se = _extrapolate(ns, [e[0][0] for e in est], [e[1][0] for e in est])
    assert abs(y[0] - theory[0]) < 4 * se[0], (y, se, theory, est)
    for wrong in (0.9, 1.1):
        assert abs(y[0] - wrong * theory[0]) > 4 * se[0], (wrong, y, se, theory)
    y, se = _extrapolate(ns[1:], [e[0][1:] for e in est[1:]], [e[1][1:] for e in est[1:]])
    cols = [1] if activation == "relu" else [0, 1]
    assert np.all(np.abs(y - theory[1:])[cols] < 4 * se[cols]), (y, se, theory, est)
    hid = [_simulate(activation, depth, w, b, n, S // 4, seed=200 + n, which="hidden") for n in ns]
    ref = np.array([getattr(r, k)[-2, 0] for k in ("P", "Q", "R", "U1", "U2", "U3")])
    y, se = _extrapolate(ns, [h[0] for h in hid], [h[1] for h in hid])
    cols = [0, 1, 3, 4, 5] if activation == "relu" else list(range(6))
    assert np.all(np.abs(y - ref)[cols] < 4 * se[cols]), (y, se, ref, hid)

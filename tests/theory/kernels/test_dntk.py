"""dntk_single_input: the dNTK's 1/n statistics (P, Q per layer; n E[dH f] -> 2 P + Q at the output)
against 30-digit mpmath, closed forms, and finite networks whose dH = g^T Hess(f) g is computed
exactly (forward-over-backward pass, below) -- docs/dntk.md."""
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.numerics import gaussian
from limitlab.theory.kernels import MLP
from limitlab.theory.kernels.dntk import DNTK, dntk_layer_step, dntk_single_input

X1 = np.array([[1.0, -0.5, 2.0]])

# --------------------------------------------------------------------------------------
# 30-digit reference: the recursion with the phi'' moments taken directly (not in the
# integrated-by-parts form of the code); ReLU's a.e. phi'' = 0
# --------------------------------------------------------------------------------------

MP_ACTS = {  # phi, phi', phi'', kinks
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2, lambda x: -2 * mp.tanh(x) / mp.cosh(x) ** 2, ()),
    "erf": (mp.erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x * x),
            lambda x: -4 * x / mp.sqrt(mp.pi) * mp.exp(-x * x), ()),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), lambda x: 1 / (1 + mp.exp(-x)),
                 lambda x: mp.exp(-x) / (1 + mp.exp(-x)) ** 2, ()),
    "relu": (lambda x: max(x, 0), lambda x: mp.mpf(1) if x > 0 else mp.mpf(0), lambda x: mp.mpf(0), (0.0,)),
}


def _mp_dntk(activation, depth, w, b, q1):
    """(P, Q, Theta, B, F) per layer 1..depth+1 at 30 digits."""
    f, df, ddf, kinks = MP_ACTS[activation]
    with mp.workdps(30):
        def E(h, K):
            return gaussian.mp_expect(h, K, kinks=kinks, dps=30)

        K = mp.mpf(q1)
        Th, B, F, P, Q = K, mp.mpf(0), mp.mpf(0), mp.mpf(0), mp.mpf(0)
        out = [(P, Q, Th, B, F)]
        for _ in range(depth):
            g = E(lambda x: f(x) ** 2, K)
            p = E(lambda x: df(x) ** 2, K)
            q4 = E(lambda x: df(x) ** 4, K)
            c22 = E(lambda x: (f(x) * df(x)) ** 2, K)
            e = E(lambda x: x * f(x) * df(x), K)
            a = E(lambda x: ddf(x) * df(x) ** 2 * f(x), K)
            bz = E(lambda x: x * ddf(x) * df(x), K)
            c = E(lambda x: ddf(x) * f(x), K)
            W2 = mp.mpf(w) ** 2
            P, Q = (W2 * (c22 * Th + a * Th ** 2 + F * e * (e + Th * bz) / K ** 2 + P * p * e / K),
                    W2 * (a * Th ** 2 + B * c * p + Q * p * e / K))
            B, F = W2 * (q4 * Th ** 2 + p * p * B), W2 * (c22 * Th + (e / K) ** 2 * F)
            K = w * g + b
            Th = K + w * p * Th
            out.append((P, Q, Th, B, F))
        return np.array([[float(v) for v in row] for row in out])


@pytest.mark.parametrize("activation,w,b", [("tanh", 1.5, 0.1), ("relu", 1.5, 0.1), ("softplus", 1.2, 0.0),
                                            pytest.param("erf", 2.0, 0.05, marks=pytest.mark.slow)])
def test_recursion_matches_30_digit_mpmath_with_direct_second_derivatives(activation, w, b):
    """P, Q, Theta, B, F at every layer (depth 3, with biases) against the recursion evaluated with
    30-digit mpmath moments and phi'' itself (the code never evaluates phi'': it uses the Stein
    forms of docs/dntk.md, so this also checks those identities; for ReLU phi'' = 0 a.e.)."""
    depth = 3
    q1 = w * float(X1[0] @ X1[0]) / 3 + b
    r = dntk_single_input(MLP(depth, activation, weight_var=w, bias_var=b), X1)
    ref = _mp_dntk(activation, depth, w, b, q1)
    got = np.stack([r.P[:, 0], r.Q[:, 0], r.ntk[:, 0], r.ntk_fluctuations["B"][:, 0], r.ntk_fluctuations["F"][:, 0]],
                   axis=1)
    scale = np.abs(ref).max(axis=0)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * scale.max())
    if activation == "relu":
        np.testing.assert_allclose(r.Q[:, 0], 0.0, atol=1e-13 * scale[0])


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
def test_one_hidden_layer_closed_form(activation):
    """Depth 1, by hand: dH = 2 (w_1/n) q sum_j v_j phi_j phi'_j^2 + (w_1/n)^(3/2) q^2 sum_j v_j^3 phi''_j phi'_j^2
    (v the readout's standard normals, q = K^1), so n E[dH f] = w_1^2 (2 q <phi^2 phi'^2> + 3 q^2
    <phi'' phi'^2 phi>) exactly at every n; here with phi'' evaluated directly at 30 digits."""
    w0, w1, b0, b1 = 1.4, 1.7, 0.3, 0.2
    net = MLP(1, activation, weight_var=[w0, w1], bias_var=[b0, b1])
    q = w0 * float(X1[0] @ X1[0]) / 3 + b0
    f, df, ddf, kinks = MP_ACTS.get(activation, (lambda x: x, lambda x: mp.mpf(1), lambda x: mp.mpf(0), ()))
    with mp.workdps(30):
        c22 = gaussian.mp_expect(lambda x: (f(x) * df(x)) ** 2, q, kinks=kinks)
        a = gaussian.mp_expect(lambda x: ddf(x) * df(x) ** 2 * f(x), q, kinks=kinks)
        ref = float(w1 ** 2 * (2 * q * c22 + 3 * q * q * a))
    assert dntk_single_input(net, X1).output[0] == pytest.approx(ref, rel=1e-11)


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_deep_linear_closed_form(depth):
    """phi = identity, C_W = 1, no biases, q = |x|^2 / d: Theta^l = l q, F^l = l (l-1) q^2 / 2, so
    P^{l+1} = q Theta^l + F^l + P^l gives P^l = (l-1) l (l+1) q^2 / 6, Q^l = 0 and
    n E[dH f] -> 2 P^{L+1} = L (L+1) (L+2) q^2 / 3 (depth 1: 2 q^2, exactly, by hand)."""
    q = float(X1[0] @ X1[0]) / 3
    r = dntk_single_input(MLP(depth, "linear", weight_var=1.0, bias_var=0.0), X1)
    l = np.arange(1, depth + 2)
    np.testing.assert_allclose(r.P[:, 0], (l - 1) * l * (l + 1) * q * q / 6, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.Q[:, 0], 0.0, atol=1e-13 * depth ** 3 * q * q)
    L = depth
    assert r.output[0] == pytest.approx(L * (L + 1) * (L + 2) * q * q / 3, rel=1e-12)


def test_relu_q_vanishes_and_p_scales_with_weight_var_cubed():
    """ReLU without biases: every phi'' moment vanishes, so Q = 0; K^l and Theta^l scale like C_W^l
    (one weight variance for all layers), F^l like C_W^(2l), so P^l (quadratic in them, times C_W^2)
    like C_W^(2l)."""
    r1 = dntk_single_input(MLP(4, "relu", weight_var=1.0, bias_var=0.0), X1)
    r2 = dntk_single_input(MLP(4, "relu", weight_var=2.0, bias_var=0.0), X1)
    np.testing.assert_allclose(r1.Q, 0.0, atol=1e-14 * np.abs(r1.P).max())
    l = np.arange(1, 6)
    np.testing.assert_allclose(r2.P[1:, 0] / r1.P[1:, 0], 2.0 ** (2 * l[1:]), rtol=1e-12)


def test_layer_step_is_the_recursion_and_inputs_are_separate():
    """dntk_layer_step reproduces one row from the previous; rows of X are independent inputs."""
    net = MLP(3, "gelu", weight_var=1.1, bias_var=0.05)
    X = np.array([[1.0, -0.5], [0.2, 0.9], [1.0, -0.5]])
    r = dntk_single_input(net, X)
    np.testing.assert_array_equal(r.P[:, 0], r.P[:, 2])
    single = dntk_single_input(net, X[1:2])
    np.testing.assert_allclose(r.P[:, 1], single.P[:, 0], rtol=1e-14)
    from limitlab.theory import activations

    act = activations.get("gelu")
    K1 = 1.1 * np.mean(X * X, axis=1) + 0.05
    K2 = 1.1 * np.array([gaussian.expect(lambda z: act(z) ** 2, k, act.kinks) for k in K1]) + 0.05
    B, F = r.ntk_fluctuations["B"][1], r.ntk_fluctuations["F"][1]
    P, Q = dntk_layer_step("gelu", 1.1, K2, r.ntk[1], B, F, r.P[1], r.Q[1])
    np.testing.assert_allclose(P, r.P[2], rtol=1e-9)
    np.testing.assert_allclose(Q, r.Q[2], rtol=1e-9)


def test_result_helpers_and_bad_input():
    r = dntk_single_input(MLP(2, "tanh", weight_var=1.5, bias_var=0.1), X1)
    assert isinstance(r, DNTK) and r.P.shape == (3, 1)
    assert r.expected_dntk_output(64)[0] == pytest.approx(r.output[0] / 64)
    assert r.ntk_velocity(64, learning_rate=0.5)[0] == pytest.approx(-r.output[0] / 64)
    assert r.expected_dntk_output(np.inf)[0] == 0
    with pytest.raises(ValueError, match="parametrization"):
        dntk_single_input(MLP(2, "tanh", parametrization="standard"), X1)
    with pytest.raises(TypeError, match="net"):
        dntk_single_input("tanh", X1)
    with pytest.raises(ValueError, match="X"):
        dntk_single_input(MLP(2, "tanh"), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="width"):
        r.expected_dntk_output(0)
    # a zero input without biases: every layer's kernel and dNTK vanish (no division by K = 0)
    z = dntk_single_input(MLP(3, "tanh", weight_var=1.5, bias_var=0.0), np.zeros((1, 3)))
    assert np.all(z.P == 0) and np.all(z.Q == 0)


@settings(max_examples=20, deadline=None)
@given(activation=st.sampled_from(["tanh", "relu", "gelu", "erf", "softplus", "selu", "linear"]),
       depth=st.integers(1, 4), w=st.floats(0.3, 3.0), b=st.floats(0.0, 1.0), scale=st.floats(0.1, 3.0))
def test_readout_weight_var_enters_as_its_square(activation, depth, w, b, scale):
    """The readout's C_W multiplies the output's P and Q by C_W^2 (both are quadratic in the readout
    weights: E[dH f] has four readout factors) and leaves the hidden layers alone."""
    base = [w] * (depth + 1)
    r1 = dntk_single_input(MLP(depth, activation, weight_var=base, bias_var=b), X1)
    r2 = dntk_single_input(MLP(depth, activation, weight_var=base[:-1] + [w * scale], bias_var=b), X1)
    np.testing.assert_allclose(r2.P[:-1], r1.P[:-1], rtol=1e-13, atol=0)
    np.testing.assert_allclose(r2.output, scale ** 2 * r1.output, rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------------------------------
# Finite networks: an exact per-network dNTK (independent reference, NumPy)
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


def _grads(Om, be, x, act, w, b, k):
    a, z = _forward(Om, be, x, act, w, b)
    d = _backward(Om, a, z, k, act, w)
    return ([np.sqrt(w[l] / a[l].shape[1]) * d[l][:, :, None] * a[l][:, None, :] for l in range(len(Om))]
            + [np.sqrt(b[l]) * d[l] for l in range(len(Om))])


def exact_dntk(Om, be, x, act, w, b, i0, i1, i2):
    """Per network dH_{i0 i1 i2} = g_i1^T Hess(z_i0) g_i2 (top-layer neurons; standard normal
    coordinates, where the NTK parametrization's lambda is 1), by differentiating the backward
    pass of z_i0 along g_i2 (forward-mode over reverse-mode, written out for the MLP); and z_top."""
    _, dphi, ddphi = act
    a, z = _forward(Om, be, x, act, w, b)
    L = len(Om)
    s = [np.sqrt(w[l] / a[l].shape[1]) for l in range(L)]
    A2 = [np.sum(a[l] ** 2, 1) for l in range(L)]
    d0, d1, d2 = (_backward(Om, a, z, k, act, w) for k in (i0, i1, i2))
    # tangent of the forward pass along V = g_i2: V's weight part is s_l d2[l] a[l]^T, its bias part sqrt(b_l) d2[l]
    zd, ad = [], [np.zeros_like(a[0])]
    for l in range(L):
        zd.append((w[l] / a[l].shape[1] * A2[l] + b[l])[:, None] * d2[l] + s[l] * np.einsum("boi,bi->bo", Om[l], ad[l]))
        if l + 1 < L:
            ad.append(dphi(z[l]) * zd[-1])
    # tangent of the backward pass of z_i0
    dd = [None] * L
    dd[-1] = np.zeros_like(d0[-1])
    for l in range(L - 1, 0, -1):
        back = s[l] * np.einsum("boi,bo->bi", Om[l], d0[l])
        dd[l - 1] = ddphi(z[l - 1]) * zd[l - 1] * back + dphi(z[l - 1]) * s[l] * (
            s[l] * a[l] * np.sum(d2[l] * d0[l], 1)[:, None] + np.einsum("boi,bo->bi", Om[l], dd[l]))
    # g_i1 . (tangent of g_i0): weights s_l^2 [(d1.dd)|a|^2 + (d1.d0)(a.adot)], biases b_l d1.dd
    out = 0.0
    for l in range(L):
        out = out + (w[l] / a[l].shape[1] * A2[l] + b[l]) * np.sum(d1[l] * dd[l], 1) \
            + s[l] ** 2 * np.sum(d1[l] * d0[l], 1) * np.sum(a[l] * ad[l], 1)
    return out, z[-1]


def test_exact_dntk_reference_matches_finite_differences_of_gradients():
    """The reference's dH_{ijk} against (g_j . (g_i(theta + e g_k) - g_i(theta - e g_k))) / (2 e):
    the error falls like e^2 (1e-6 relative at e = 1e-4, 1e-8 at 1e-5); symmetric in (j, k)."""
    rng = np.random.default_rng(1)
    x, w, b = X1[0], [1.5, 1.2, 0.9, 1.1], [0.1, 0.2, 0.05, 0.3]
    act = NP_ACTS["tanh"]
    Om, be = _draw(rng, 5, 6, 3, 3, n_out=3)
    for i, j, k in ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 0, 2)):
        v, _ = exact_dntk(Om, be, x, act, w, b, i, j, k)
        gj, gk = _grads(Om, be, x, act, w, b, j), _grads(Om, be, x, act, w, b, k)
        errs = []
        for e in (1e-4, 1e-5):
            L = len(Om)
            shift = lambda sgn: ([o + sgn * e * u for o, u in zip(Om, gk[:L])], [o + sgn * e * u for o, u in zip(be, gk[L:])])  # noqa: E731
            gp, gm = _grads(*shift(1), x, act, w, b, i), _grads(*shift(-1), x, act, w, b, i)
            fd = sum(np.sum(u * (p - m), axis=tuple(range(1, u.ndim))) for u, p, m in zip(gj, gp, gm)) / (2 * e)
            errs.append(np.max(np.abs(fd - v) / np.abs(v)))
        assert errs[1] < 1e-7 and errs[1] < errs[0] / 30, (i, j, k, errs)
    v1, _ = exact_dntk(Om, be, x, act, w, b, 0, 1, 2)
    v2, _ = exact_dntk(Om, be, x, act, w, b, 0, 2, 1)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)


def _simulate(activation, depth, w, b, n, S, seed, which="output", chunk=2000):
    """Per-network samples of n dH f (``which="output"``), or at the top hidden layer of the network
    (depth - 1 hidden layers, n outputs), of n dH_{001} z_1 (-> P) and n dH_{011} z_0 (-> Q)."""
    rng = np.random.default_rng(seed)
    act, x = NP_ACTS[activation], X1[0]
    out = []
    for start in range(0, S, chunk):
        B = min(chunk, S - start)
        if which == "output":
            Om, be = _draw(rng, B, n, depth, x.size)
            v, z = exact_dntk(Om, be, x, act, w, b, 0, 0, 0)
            out.append(n * v * z[:, 0])
        else:
            Om, be = _draw(rng, B, n, depth - 1, x.size, n_out=n)
            vp, z = exact_dntk(Om, be, x, act, w[:depth], b[:depth], 0, 0, 1)
            vq, _ = exact_dntk(Om, be, x, act, w[:depth], b[:depth], 0, 1, 1)
            out.append(np.stack([n * vp * z[:, 1], n * vq * z[:, 0]], axis=1))
    y = np.concatenate(out)
    return y.mean(axis=0), y.std(axis=0) / np.sqrt(y.shape[0])


def _extrapolate(ns, means, ses):
    """Weighted least-squares fit of y(n) = y_inf + c / n: (y_inf, its SE)."""
    ns, means, ses = np.asarray(ns, float), np.asarray(means, float), np.asarray(ses, float)
    A = np.stack([np.ones_like(ns), 1 / ns], axis=1) / ses[:, None]
    cov = np.linalg.inv(A.T @ A)
    coef = cov @ A.T @ (means / ses)
    return coef[0], np.sqrt(cov[0, 0])


def test_one_hidden_layer_simulation_is_exact_at_small_width():
    """Depth 1 (tanh, biases): n E[dH f] equals the theory at every width (the closed form above is
    exact), so narrow networks suffice: 10^5 networks at n = 4 and at n = 16 agree within 4 SE and
    reject the theory 10% off."""
    w, b = [1.4, 1.7], [0.3, 0.2]
    theory = dntk_single_input(MLP(1, "tanh", weight_var=w, bias_var=b), X1).output[0]
    for n in (4, 16):
        m, se = _simulate("tanh", 1, w, b, n, 100_000, seed=n, chunk=20_000)
        assert abs(m - theory) < 4 * se, (n, m, se, theory)
        for wrong in (0.9, 1.1):
            assert abs(m - wrong * theory) > 4 * se, (n, wrong, m, se, theory)


def test_dntk_matches_simulation_depth_two():
    """Depth 2, tanh with biases: n E[dH f] at n = 16, 32 (3 x 10^4 networks each), extrapolated
    linearly in 1/n, within 4 SE of 2 P + Q; the infinite-width-free guess 0 is rejected."""
    w, b = [1.5, 1.5, 1.5], [0.1, 0.1, 0.1]
    theory = dntk_single_input(MLP(2, "tanh", weight_var=w, bias_var=b), X1).output[0]
    ns = (16, 32)
    est = [_simulate("tanh", 2, w, b, n, 30_000, seed=10 + n) for n in ns]
    y, se = _extrapolate(ns, [e[0] for e in est], [e[1] for e in est])
    assert abs(y - theory) < 4 * se, (y, se, theory, est)
    assert abs(y) > 4 * se


@pytest.mark.slow
@pytest.mark.parametrize("activation,w,b,S", [("tanh", 1.5, 0.1, 60_000), ("relu", 2.0, 0.1, 60_000)])
def test_dntk_10_percent_off_is_rejected_by_simulation(activation, w, b, S):
    """Depth 3 (output) and the top hidden layer (P and Q separately): networks at n = 32, 64, 128,
    fitted as y_inf + c / n; the output's 2 P + Q within 4 SE and 0.9 x, 1.1 x rejected at 4 SE;
    the hidden layer's P and Q within 4 SE (ReLU's Q = 0: its samples fall like 1/n)."""
    depth = 3
    w, b = [w] * (depth + 1), [b] * (depth + 1)
    r = dntk_single_input(MLP(depth, activation, weight_var=w, bias_var=b), X1)
    ns = (32, 64, 128)
    est = [_simulate(activation, depth, w, b, n, S, seed=100 + n) for n in ns]
    y, se = _extrapolate(ns, [e[0] for e in est], [e[1] for e in est])
    theory = r.output[0]
    assert abs(y - theory) < 4 * se, (y, se, theory, est)
    for wrong in (0.9, 1.1):
        assert abs(y - wrong * theory) > 4 * se, (wrong, y, se, theory)
    hid = [_simulate(activation, depth, w, b, n, S // 4, seed=200 + n, which="hidden") for n in ns]
    for k, ref in ((0, r.P[-2, 0]), (1, r.Q[-2, 0])):
        y, se = _extrapolate(ns, [h[0][k] for h in hid], [h[1][k] for h in hid])
        assert abs(y - ref) < 4 * se, (k, y, se, ref, hid)

"""Power of the built-in kernel checks at their default sizes: right theory accepted, wrong ones rejected."""
from functools import lru_cache

import numpy as np
import pytest

from limitlab.verify import stats
from limitlab.verify.kernels import checks as kc
from limitlab.verify.registry import Context, Measurement, all_checks


@lru_cache(maxsize=None)
def _simulated(activation, depth, parametrization, seed):
    return tuple(tuple(kc.measure(Context(n, kc.SAMPLES, seed, "numpy"), activation, depth, parametrization))
                 for n in kc.SIZES)


def _with_theory(ms_by_size, theory):
    """The same samples judged against theory(width) -> (nngp, ntk) (quantities: nngp pairs, then ntk pairs),
    each quantity with the check's own bias rate."""
    out = []
    for n, ms in zip(kc.SIZES, ms_by_size):
        K, T = theory(n)
        vals = [K[i, j] for i, j in kc.PAIRS] + [T[i, j] for i, j in kc.PAIRS]
        out.append([Measurement(m.quantity, v, m.samples, bias_rate=m.bias_rate) for m, v in zip(ms, vals)])
    return out


def _verdict(ms):
    return stats.verdict(kc.SIZES, ms, rate=-0.5, bias_rate=1.0, n_boot=60)


def _wrong_theories(activation, depth, parametrization):
    right = lambda n: kc.theory_values(activation, depth, parametrization, n)  # noqa: E731
    other = "standard" if parametrization == "ntk" else "ntk"

    def wrong_param(n):
        K, T = kc._theory_cached(activation, depth, other, n)
        return K, (T / n if other == "standard" else T)

    def wrong_depth(n, dd):
        return kc.theory_values(activation, depth + dd, parametrization, n)

    return {
        "x1.02": lambda n: tuple(1.02 * a for a in right(n)),
        "x0.98": lambda n: tuple(0.98 * a for a in right(n)),
        "depth+1": lambda n: wrong_depth(n, 1),
        **({"depth-1": lambda n: wrong_depth(n, -1)} if depth > 1 else {}),
        "other parametrization": wrong_param,
    }, right


def _assert_power(activation, depth, parametrization, seed):
    ms = _simulated(activation, depth, parametrization, seed)
    wrong, right = _wrong_theories(activation, depth, parametrization)
    v = _verdict(_with_theory(ms, right))
    assert v.passed, v.reason
    for label, th in wrong.items():
        vw = _verdict(_with_theory(ms, th))
        assert not vw.passed, f"{label} accepted"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_depth3_ntk_check_accepts_right_and_rejects_wrong_theories(seed):
    _assert_power("relu", 3, "ntk", seed)


@pytest.mark.parametrize("seed", [3])
def test_gelu_depth1_standard_check_accepts_right_and_rejects_wrong_theories(seed):
    _assert_power("gelu", 1, "standard", seed)


@pytest.mark.slow
@pytest.mark.parametrize("activation", kc.ACTIVATIONS)
@pytest.mark.parametrize("depth", kc.DEPTHS)
@pytest.mark.parametrize("parametrization", kc.PARAMETRIZATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_kernel_check_has_power(activation, depth, parametrization, seed):
    _assert_power(activation, depth, parametrization, seed)


def test_registry_has_every_kernel_check_with_a_default_subset():
    names = [n for n, c in all_checks().items()
             if n.startswith("kernels.") and not {"architectures", "finite-width"} & set(c.tags)]
    assert len(names) == len(kc.ACTIVATIONS) * len(kc.DEPTHS) * len(kc.PARAMETRIZATIONS)
    families = [n for n, c in all_checks().items() if "architectures" in c.tags]
    assert sorted(families) == ["kernels.attention", "kernels.cnn-gp", "kernels.cntk-pool", "kernels.layernorm",
                                "kernels.resnet"]
    defaults = [n for n in names if all_checks()[n].default]
    assert 3 <= len(defaults) <= 8
    c = all_checks()["kernels.tanh.d3.standard"]
    assert c.rate == -0.5 and c.bias_rate == 1.0 and c.sizes == kc.SIZES


def test_inputs_have_the_documented_geometry():
    X = kc.INPUTS
    d = X.shape[1]
    np.testing.assert_allclose(np.sum(X * X, 1) / d, [1.0, 1.0, 1.5])
    G = X @ X.T
    cos = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
    np.testing.assert_allclose([cos[0, 1], cos[0, 2]], [0.6, -0.4], atol=1e-12)


def test_quick_run_of_one_check_passes_on_numpy_and_array_api_strict():
    pytest.importorskip("array_api_strict")
    for backend in ("numpy", "array-api-strict"):
        ms = [kc.measure(Context(n, 64, 0, backend), "erf", 1, "ntk") for n in (64, 128, 256)]
        v = stats.verdict((64, 128, 256), ms, rate=-0.5, n_boot=20, min_size=kc.MIN_WIDTH)
        assert v.passed, (backend, v.reason)
        v = stats.verdict((64, 256), ms[::2], rate=-0.5, n_boot=20, min_size=kc.MIN_WIDTH)
        assert v.inconclusive and not v.passed  # a slope through two points decides nothing


def _rejected_factors(ms_by_size, activation, depth, parametrization, corrected, part="nngp"):
    """Factors f of a theory f * K (``part`` "nngp": the NNGP quantities only; "ntk": the NTK's) that
    the verdict rejects: against the theory without its 1/n term and the generic allowance
    (bias_rate 1), or with it and bias_rate 2 (the check's rule)."""
    Q = len(kc.PAIRS)
    grid = np.round(np.arange(0.990, 1.0101, 0.001), 4)
    out = set()
    for f in grid:
        ms = []
        for n, mm in zip(kc.SIZES, ms_by_size):
            th = kc.theory_values(activation, depth, parametrization, n, corrected=corrected)[part == "ntk"]
            mm = mm[:Q] if part == "nngp" else mm[Q:]
            ms.append([Measurement(m.quantity, f * th[i, j], m.samples, bias_rate=2.0 if corrected else None)
                       for m, (i, j) in zip(mm, kc.PAIRS)])
        if not stats.verdict(kc.SIZES, ms, rate=-0.5, bias_rate=1.0, n_boot=10).passed:
            out.add(float(f))
    return out


def test_predicted_nngp_correction_sharpens_the_verdict():
    """With the NNGP's 1/n term predicted (K + K1/n, bias_rate 2), every wrong factor the generic
    O(1/n) allowance rejects is still rejected, and smaller ones too (relu depth 3, default sizes:
    seed 0 adds 0.994 and 1.010, seed 1 adds 1.006; docs/finite_width.md)."""
    gained = 0
    for seed in (0, 1, 2):
        ms = _simulated("relu", 3, "ntk", seed)
        limit = _rejected_factors(ms, "relu", 3, "ntk", corrected=False)
        sharp = _rejected_factors(ms, "relu", 3, "ntk", corrected=True)
        assert 1.0 not in sharp
        assert limit <= sharp, sorted(limit - sharp)
        gained += len(sharp - limit)
    assert gained >= 2


def test_kernel_checks_carry_the_predicted_nngp_correction():
    """The NNGP theory of a check at width n is K + K1/n, K1 from theory.kernels.finite_width."""
    from limitlab.theory.kernels import finite_width

    n = 256
    K, _ = kc.theory_values("tanh", 3, "ntk", n)
    K0, _ = kc.theory_values("tanh", 3, "ntk", n, corrected=False)
    fw = finite_width(kc.kernel_spec("tanh", 3, "ntk"), kc.INPUTS, four_point=False)
    np.testing.assert_allclose(K, fw.expected_nngp(n), rtol=1e-14)
    np.testing.assert_allclose(K0, fw.nngp, rtol=1e-12)
    ms = kc.measure(Context(n, 8, 0, "numpy"), "tanh", 3, "ntk")
    assert all(m.bias_rate == kc.NNGP_BIAS_RATE for m in ms if m.quantity.startswith("nngp"))


def test_predicted_ntk_correction_sharpens_the_verdict():
    """With the NTK's 1/n term predicted (Theta + Theta1/n, bias_rate 2), every wrong factor of the
    NTK that the generic O(1/n) allowance rejects is still rejected, and smaller ones too (relu depth
    3 ntk, default sizes, the 6 NTK quantities: seed 0 adds 1.006-1.008, seed 1 0.993 and 1.007,
    seed 2 0.991 and 0.992; docs/finite_width.md, "Sharper kernel checks")."""
    gained = 0
    for seed in (0, 1, 2):
        ms = _simulated("relu", 3, "ntk", seed)
        limit = _rejected_factors(ms, "relu", 3, "ntk", corrected=False, part="ntk")
        sharp = _rejected_factors(ms, "relu", 3, "ntk", corrected=True, part="ntk")
        assert 1.0 not in sharp
        assert limit <= sharp, sorted(limit - sharp)
        gained += len(sharp - limit)
    assert gained >= 4


def test_kernel_checks_carry_the_predicted_ntk_correction():
    """The NTK theory of a check at width n is Theta + Theta1/n on every entry (finite_width's
    expected_ntk), in the standard parametrization (Theta(n) + Theta1(n)/n)/n, each NTK quantity with
    bias_rate 2; the correction is not zero (GELU depth 3) and vanishes at depth 1."""
    from limitlab.theory.kernels import finite_width

    n = 256
    for p in kc.PARAMETRIZATIONS:
        _, T = kc.theory_values("gelu", 3, p, n)
        _, T0 = kc.theory_values("gelu", 3, p, n, corrected=False)
        net = kc.kernel_spec("gelu", 3, p, width=n)
        fw = finite_width(net, kc.INPUTS, four_point=False)
        scale = n if p == "standard" else 1
        np.testing.assert_allclose(T * scale, fw.expected_ntk(n), rtol=1e-13)
        np.testing.assert_allclose(T0 * scale, net.ntk(kc.INPUTS), rtol=1e-12)
        assert np.all(np.abs(T - T0) > 1e-5 * np.abs(T0))
        ms = kc.measure(Context(64, 4, 0, "numpy"), "gelu", 3, p)
        assert all(m.bias_rate == kc.NTK_BIAS_RATE for m in ms if m.quantity.startswith("ntk"))
        _, T1 = kc.theory_values("gelu", 1, p, n)
        np.testing.assert_allclose(T1, kc.theory_values("gelu", 1, p, n, corrected=False)[1], rtol=1e-12)

"""The finite-width verify checks (kernels.finite-width.*): the 1/n theory accepted, wrong ones rejected.

Power measured on the shared 2-core machine (docs/finite_width.md, "Verify"): the four-point
check rejects a vertex off by 10% at its quick sizes and 40k networks, by 2% with 200k networks
(slow test); the mean check, whose one-network spread grows like sqrt(n V), rejects a doubled K1.
The NTK's variance and pair-covariance checks reject a theory off by 10% at their quick sizes,
by 2% at their full ones (slow); the NTK's mean check rejects Theta1 off by 20% (0.8x) at its quick sizes, by 10% at its
full ones (slow).
"""
from functools import lru_cache

import numpy as np
import pytest

from limitlab.theory.kernels import finite_width
from limitlab.verify import stats
from limitlab.verify.kernels import checks as kc
from limitlab.verify.kernels import finite_width as fwc
from limitlab.verify.montecarlo import sample_kernels
from limitlab.verify.registry import Context, Measurement, all_checks


@lru_cache(maxsize=None)
def _simulated(kind, activation, sizes, samples, seed):
    fn = fwc.measure_mean if kind == "mean" else fwc.measure_four_point
    return tuple(tuple(fn(Context(n, samples, seed, "numpy"), activation)) for n in sizes)


def _verdict(kind, sizes, ms, factor=1.0):
    ms = [[Measurement(m.quantity, factor * m.theory, m.samples) for m in mm] for mm in ms]
    return stats.verdict(sizes, ms, rate=0.5 if kind == "mean" else None, bias_rate=1.0, n_boot=30,
                         min_size=fwc.MIN_WIDTH)


def test_checks_are_registered_with_their_rules():
    checks = all_checks()
    for act in fwc.NETWORKS:
        m, f = checks[f"kernels.finite-width.nngp-mean.{act}"], checks[f"kernels.finite-width.four-point.{act}"]
        assert m.rate == 0.5 and m.bias_rate == 1.0 and min(m.quick_sizes) >= m.min_size
        assert f.rate is None and f.bias_rate == 1.0 and f.quick_samples == fwc.FOUR_QUICK_SAMPLES
        assert "finite-width" in m.tags and "finite-width" in f.tags


def test_four_point_check_quick_accepts_the_vertex_and_rejects_10_percent():
    sizes = fwc.FOUR_QUICK_SIZES
    ms = _simulated("four", "tanh", sizes, fwc.FOUR_QUICK_SAMPLES, 0)
    v = _verdict("four", sizes, ms)
    assert v.passed, v.reason
    assert len(v.quantities) == 15  # V on at most two distinct inputs: 3 + 3 x 4 entries
    for f in (0.9, 1.1):
        assert not _verdict("four", sizes, ms, f).passed, f


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_four_point_check_rejects_a_vertex_off_by_2_percent(seed):
    sizes = fwc.FOUR_QUICK_SIZES
    ms = _simulated("four", "tanh", sizes, 200_000, seed)
    assert _verdict("four", sizes, ms).passed
    for f in (0.98, 1.02):
        assert not _verdict("four", sizes, ms, f).passed, f


def test_nngp_mean_check_accepts_K1_and_rejects_a_doubled_correction():
    sizes = fwc.MEAN_QUICK_SIZES
    ms = _simulated("mean", "relu", sizes, fwc.MEAN_QUICK_SAMPLES, 0)
    v = _verdict("mean", sizes, ms)
    assert v.passed, v.reason
    assert not _verdict("mean", sizes, ms, 2.0).passed
    assert not _verdict("mean", sizes, ms, 0.0).passed  # the infinite-width theory: no 1/n term


def test_three_input_entries_of_the_vertex_match_simulation():
    """Entries V_(ab)(cd) on three distinct inputs (three-dimensional quadrature), which the check does
    not compare, against n Cov of 40k networks at width 256 (z-test, Bonferroni over 6 entries)."""
    net = fwc.spec("tanh")
    fw = finite_width(net, kc.INPUTS, four_point=True)
    n, S = 256, 40_000
    ks = sample_kernels(net, kc.INPUTS, width=n, n_networks=S, seed=7)
    m = fw.expected_nngp(n)
    D = ks.nngp - m[None]
    entries = [(0, 0, 1, 2), (1, 1, 0, 2), (2, 2, 0, 1), (0, 1, 0, 2), (0, 1, 1, 2), (0, 2, 1, 2)]
    z = stats.z_quantile(1e-3, len(entries))
    for a, b, c, d in entries:
        s = n * D[:, a, b] * D[:, c, d]
        se = s.std(ddof=1) / np.sqrt(S)
        # O(1/n) bias of n Cov: at most ~1/n relative here (the check's sizes measure it)
        assert abs(s.mean() - fw.four_point[a, b, c, d]) <= z * se + abs(fw.four_point[a, b, c, d]) / n, (a, b, c, d)


def test_three_input_entries_of_the_ntk_covariance_match_simulation():
    """Entries n Cov[Thetahat_ab, Thetahat_cd] on three distinct inputs (FiniteWidth.ntk_four_point,
    the NTK recursion on every index quadruple), which the ntk-covariance check does not compare,
    against 40k networks at width 256 (z-test, Bonferroni over 6 entries, plus the O(1/n) bias)."""
    net = fwc.spec("tanh")
    fw = finite_width(net, kc.INPUTS, four_point=True, ntk_pairs=True)
    n, S = 256, 40_000
    ks = sample_kernels(net, kc.INPUTS, width=n, n_networks=S, seed=8)
    D = ks.ntk - fw.expected_ntk(n)[None]
    C = fw.ntk_four_point
    entries = [(0, 0, 1, 2), (1, 1, 0, 2), (2, 2, 0, 1), (0, 1, 0, 2), (0, 1, 1, 2), (0, 2, 1, 2)]
    z = stats.z_quantile(1e-3, len(entries))
    for a, b, c, d in entries:
        s = n * D[:, a, b] * D[:, c, d]
        se = s.std(ddof=1) / np.sqrt(S)
        assert abs(s.mean() - C[a, b, c, d]) <= z * se + abs(C[a, b, c, d]) / n, (a, b, c, d, s.mean(), se, C[a, b, c, d])


# ---- the NTK's single-input 1/n theory: ntk-variance (A + 2B) and ntk-mean (Theta1) ----

@lru_cache(maxsize=None)
def _ntk_simulated(activation, sizes, samples, seed):
    """Per size, the check's ensemble: (NTK (S, N, N), NNGP diagonal (S, N)) (shared by the tests)."""
    return tuple(fwc.ntk_samples(Context(n, samples, seed, "numpy"), activation) for n in sizes)


def _ntk_verdict(kind, activation, sizes, samples, seed, factor=1.0):
    """The check's verdict on its simulation, against its theory with the compared coefficient
    (A + 2B or Theta1) multiplied by ``factor``."""
    fn = {"variance": fwc.measure_ntk_variance, "covariance": fwc.measure_ntk_covariance,
          "mean": fwc.measure_ntk_mean}[kind]
    ms = [[Measurement(m.quantity, factor * m.theory, m.samples) for m in fn(Context(n, samples, seed, "numpy"),
                                                                                activation, samples=smp)]
          for n, smp in zip(sizes, _ntk_simulated(activation, sizes, samples, seed))]
    return stats.verdict(sizes, ms, rate=None, bias_rate=1.0, min_size=fwc.MIN_WIDTH)


def test_ntk_checks_are_registered_with_their_rules():
    checks = all_checks()
    names = sorted(n for n, c in checks.items() if "ntk" in c.tags and "finite-width" in c.tags)
    assert names == ["kernels.finite-width.ntk-covariance.relu", "kernels.finite-width.ntk-covariance.tanh",
                     "kernels.finite-width.ntk-mean.gelu", "kernels.finite-width.ntk-mean.relu",
                     "kernels.finite-width.ntk-variance.relu",
                     "kernels.finite-width.ntk-variance.tanh"]
    for n in names:
        c = checks[n]
        assert c.rate is None and c.bias_rate == 1.0 and not c.default
        assert min(c.quick_sizes) >= c.min_size == fwc.MIN_WIDTH and c.seconds_quick is not None
    assert checks["kernels.finite-width.ntk-variance.relu"].quick_sizes == fwc.NTK_VAR_QUICK_SIZES
    assert checks["kernels.finite-width.ntk-mean.gelu"].quick_samples == fwc.NTK_MEAN_QUICK_SAMPLES


def test_ntk_theory_of_the_checks_is_finite_widths():
    """The checks compare with FiniteWidth's single-input NTK theory; ReLU's Theta1 is 0 (why the mean
    check runs GELU), GELU's is a large fraction of the NTK's spread."""
    from limitlab.theory.kernels import MLP

    th = fwc.ntk_theory("relu")
    fw = finite_width(fwc.spec("relu"), kc.INPUTS, four_point=False)
    np.testing.assert_array_equal(th["variance"], fw.ntk_variance_diag)
    np.testing.assert_allclose(th["theta"], np.diag(MLP(3, "relu", weight_var=2.0, bias_var=0.0).ntk(kc.INPUTS)),
                               rtol=1e-12)
    assert np.all(np.abs(th["theta1"]) < 1e-12 * th["theta"])
    g = fwc.ntk_theory("gelu")
    assert np.all(g["theta1"] / np.sqrt(g["variance"]) > 0.5)


def test_ntk_variance_check_quick_accepts_A_plus_2B_and_rejects_10_percent():
    """tanh at the quick sizes (32, 64, 128; 40k networks): A + 2B accepted, 0.9x and 1.1x rejected
    (seeds 0-2 measured; ReLU in the slow test)."""
    args = ("tanh", fwc.NTK_VAR_QUICK_SIZES, fwc.NTK_VAR_QUICK_SAMPLES, 0)
    v = _ntk_verdict("variance", *args)
    assert v.passed, v.reason
    assert len(v.quantities) == 3
    for f in (0.9, 1.1):
        assert not _ntk_verdict("variance", *args, factor=f).passed, f


def test_ntk_covariance_check_quick_accepts_the_pair_covariances_and_rejects_10_percent():
    """tanh at the quick sizes, the same ensemble as the variance test: the 15 entries of one neuron's
    n Cov[Thetahat_e, Thetahat_g] on at most two inputs (FiniteWidth.ntk_covariance_pairs) accepted,
    0.9x and 1.1x rejected (seed 0 also rejects 0.95x and 1.05x)."""
    args = ("tanh", fwc.NTK_VAR_QUICK_SIZES, fwc.NTK_VAR_QUICK_SAMPLES, 0)
    v = _ntk_verdict("covariance", *args)
    assert v.passed, v.reason
    assert len(v.quantities) == 15
    # its (aa)(aa) entries are the variance check's quantities
    var = _ntk_verdict("variance", *args)
    for a in range(3):
        q = next(q for q in v.quantities if q.quantity == f"C[({a}{a})({a}{a})]")
        assert q.mean == pytest.approx(var.quantities[a].mean, rel=1e-12)
        assert q.theory == pytest.approx(var.quantities[a].theory, rel=1e-12)
    for f in (0.9, 1.1):
        assert not _ntk_verdict("covariance", *args, factor=f).passed, f


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_ntk_variance_check_quick_relu_rejects_10_percent(seed):
    args = ("relu", fwc.NTK_VAR_QUICK_SIZES, fwc.NTK_VAR_QUICK_SAMPLES, seed)
    assert _ntk_verdict("variance", *args).passed
    for f in (0.9, 1.1):
        assert not _ntk_verdict("variance", *args, factor=f).passed, f


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_ntk_variance_and_covariance_checks_full_reject_2_percent(activation):
    """The full sizes (32, 128, 512; 200k networks, 2.5-3.5 min): A + 2B and the pair covariances
    accepted, 0.98x and 1.02x rejected (seed 0; the allowance leaves 3/4 of a wrong factor at sizes
    4x apart)."""
    args = (activation, fwc.NTK_VAR_SIZES, fwc.NTK_VAR_SAMPLES, 0)
    for kind in ("variance", "covariance"):
        assert _ntk_verdict(kind, *args).passed, kind
        for f in (0.98, 1.02):
            assert not _ntk_verdict(kind, *args, factor=f).passed, (kind, f)


def test_ntk_mean_check_quick_accepts_Theta1_and_rejects_20_percent():
    """GELU at the quick sizes (16, 32, 64; 50k networks), all six entries: Theta1 accepted; 0 (the
    infinite-width theory), 0.5x, 0.8x, 1.5x and 2x rejected. 1.2x was rejected for one seed in
    three (the measured mean lies below Theta1 at these widths), 10% needs the full sizes."""
    args = ("gelu", fwc.NTK_MEAN_QUICK_SIZES, fwc.NTK_MEAN_QUICK_SAMPLES, 0)
    v = _ntk_verdict("mean", *args)
    assert v.passed, v.reason
    assert len(v.quantities) == 6
    for f in (0.0, 0.5, 0.8, 1.5, 2.0):
        assert not _ntk_verdict("mean", *args, factor=f).passed, f


@pytest.mark.slow  # 9 s; the GELU mean check above runs the same machinery in the default suite
def test_ntk_mean_check_quick_relu_tests_Theta1_on_the_pairs():
    """ReLU (Theta1_aa = 0, Theta1_ab not) at the quick sizes: accepted; 0, 0.5x, 1.5x, 2x and 1.3x
    of the pairs' Theta1 rejected (seeds 0, 1 measured), e.g. (02): -2.02 +- 0.09 at n = 64 against
    -2.09 (seed 0)."""
    args = ("relu", fwc.NTK_MEAN_QUICK_SIZES, fwc.NTK_MEAN_QUICK_SAMPLES, 0)
    v = _ntk_verdict("mean", *args)
    assert v.passed, v.reason
    for f in (0.0, 0.5, 1.5, 2.0):
        assert not _ntk_verdict("mean", *args, factor=f).passed, f


@pytest.mark.slow
def test_ntk_mean_check_full_rejects_10_percent():
    """GELU at the full sizes (16, 32, 64; 800k networks, ~3 min), all six entries: Theta1 accepted,
    0.9x and 1.1x rejected (seed 0, n = 64: 0.591 +- 0.005 against Theta1_00 = 0.604, 0.2995 +- 0.0024
    against Theta1_01 = 0.3051)."""
    args = ("gelu", fwc.NTK_MEAN_SIZES, fwc.NTK_MEAN_SAMPLES, 0)
    v = _ntk_verdict("mean", *args)
    assert v.passed, v.reason
    for f in (0.9, 1.1):
        assert not _ntk_verdict("mean", *args, factor=f).passed, f


def test_ntk_mean_control_variate_cuts_the_variance():
    """The NNGP control variate removes most of one network's NTK fluctuation: at width 16 the
    variance of the compared value on the diagonal is below half that of n (Thetahat - Theta)
    (measured 0.38; the limit of the ratio is 1 - D^2 / (V (A + 2B)) = 0.27, 0.29 for the first two
    inputs, the third)."""
    n = fwc.NTK_MEAN_QUICK_SIZES[0]
    ntk, G = _ntk_simulated("gelu", fwc.NTK_MEAN_QUICK_SIZES, fwc.NTK_MEAN_QUICK_SAMPLES, 0)[0]
    th = fwc.ntk_theory("gelu")
    P = fwc.pairs()
    plain = np.stack([n * (ntk[:, a, b] - th["ntk"][a, b]) for a, b in P], 1)
    y = np.stack([m.samples for m in fwc.measure_ntk_mean(Context(n, G.shape[0], 0), "gelu", samples=(ntk, G))], 1)
    ratio = y.var(0) / plain.var(0)
    diag = [k for k, (a, b) in enumerate(P) if a == b]
    assert np.all((0.2 < ratio[diag]) & (ratio[diag] < 0.5)), ratio
    assert np.all(ratio < 0.5), ratio  # off the diagonal too (measured 0.17 to 0.30)

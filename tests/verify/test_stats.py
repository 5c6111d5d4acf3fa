"""The verdict rule on synthetic ensembles whose truth is known."""
import math

import numpy as np
import pytest

from limitlab.verify import stats
from limitlab.verify.registry import Measurement

SIZES = (256, 1024, 4096)
TRUTH = np.array([1.0, 0.6, -0.3, 1.4])


def _ensemble(rng, truth=TRUTH, sizes=SIZES, S=512, noise=3.0, bias=2.0, noise_rate=-0.5, claimed=None):
    """Samples with per-sample fluctuation noise*n^noise_rate (correlated across quantities) and a bias/n."""
    claimed = truth if claimed is None else claimed
    out = []
    for n in sizes:
        common = rng.standard_normal((S, 1))
        own = rng.standard_normal((S, truth.size))
        s = truth + bias * np.abs(truth) / n + noise * n ** noise_rate * np.abs(truth) * (0.7 * common + 0.7 * own)
        th = claimed(n) if callable(claimed) else claimed
        out.append([Measurement(f"q{i}", th[i], s[:, i]) for i in range(truth.size)])
    return out


def test_z_quantile_matches_normal_tables():
    assert stats.z_quantile(0.05) == pytest.approx(1.959964, abs=1e-6)
    assert stats.z_quantile(0.05, 5) == pytest.approx(2.575829, abs=1e-6)  # 0.01 two-sided
    with pytest.raises(ValueError, match="alpha"):
        stats.z_quantile(1.5)


def test_loglog_slope_recovers_a_power_law():
    n = np.array([10, 100, 1000])
    assert stats.loglog_slope(n, 3 * n ** -0.5) == pytest.approx(-0.5)


def test_right_theory_is_accepted_nearly_always():
    fails = 0
    for seed in range(60):
        v = stats.verdict(SIZES, _ensemble(np.random.default_rng(seed)), rate=-0.5, n_boot=60, seed=seed)
        fails += not v.passed
    assert fails <= 2  # the rule's false-rejection rate is ~alpha per level test plus a rare slope miss


@pytest.mark.parametrize("factor", [1.02, 0.98])
def test_theory_wrong_by_two_percent_is_rejected_for_every_seed(factor):
    for seed in range(20):
        ms = _ensemble(np.random.default_rng(seed), claimed=TRUTH * factor)
        v = stats.verdict(SIZES, ms, rate=-0.5, n_boot=40, seed=seed)
        assert not v.passed
        assert "level" in v.reason


def test_wrong_rate_is_rejected_by_the_slope_test():
    # fluctuations decaying like n^-0.25 instead of n^-0.5, theory exactly right
    for seed in range(5):
        ms = _ensemble(np.random.default_rng(seed), noise_rate=-0.25, bias=0.0)
        v = stats.verdict(SIZES, ms, rate=-0.5, n_boot=60, seed=seed)
        assert v.slope_ok is False and not v.passed, v.slope
        assert abs(v.slope + 0.25) < 0.05


def test_a_theory_off_by_a_constant_fails_both_tests():
    ms = _ensemble(np.random.default_rng(0), claimed=TRUTH + 0.2)
    v = stats.verdict(SIZES, ms, rate=-0.5, n_boot=60)
    assert not v.passed and v.slope_ok is False  # the RMS error stops decreasing


def test_bias_allowance_accepts_a_true_one_over_n_bias():
    # bias 40/n: at n=4096 ~1% of the value, many standard errors; the allowance extrapolates it from n=1024
    for seed in range(10):
        ms = _ensemble(np.random.default_rng(seed), bias=40.0)
        v = stats.verdict(SIZES, ms, rate=-0.5, n_boot=40, seed=seed)
        assert v.passed, v.reason
        q = v.quantities[0]
        assert q.allowance == pytest.approx(abs(q.mean[1] - q.theory[1]) / 4)
        # without the smaller size (one size only) the same numbers are rejected
        v1 = stats.verdict(SIZES[-1:], ms[-1:], rate=-0.5)
        assert not v1.passed and v1.slope is None


def test_rtol_floor_accepts_a_deterministic_estimate_within_the_floor():
    ms = [[Measurement("x", 1.0, np.full(4, 1.0), rtol_floor=1e-4)] for n in (1, 2, 4)]
    ms[-1][0].samples[:] = 1.00009
    assert stats.verdict((1, 2, 4), ms, rate=None).passed
    ms[-1][0].samples[:] = 1.0003
    assert not stats.verdict((1, 2, 4), ms, rate=None).passed


def test_sizes_are_sorted_and_mismatched_quantities_rejected():
    ms = _ensemble(np.random.default_rng(1))
    a = stats.verdict(SIZES, ms, rate=-0.5, n_boot=20)
    b = stats.verdict(SIZES[::-1], ms[::-1], rate=-0.5, n_boot=20)
    assert a.slope == pytest.approx(b.slope) and a.passed == b.passed
    bad = [ms[0], ms[1][:2], ms[2]]
    with pytest.raises(ValueError, match="quantities"):
        stats.verdict(SIZES, bad)
    with pytest.raises(ValueError, match="sizes"):
        stats.verdict(SIZES, ms[:2])


def test_verdict_serializes_to_plain_types():
    v = stats.verdict(SIZES, _ensemble(np.random.default_rng(2)), rate=-0.5, n_boot=20)
    d = v.to_dict()
    import json

    json.dumps(d)
    assert d["quantities"][0]["quantity"] == "q0" and math.isfinite(d["slope"])


def _limit_zero(errors, S=16, sd=1e-4, seed=0):
    rng = np.random.default_rng(seed)
    return [[Measurement("NC1", 0.0, e + sd * rng.standard_normal(S))] for e in errors]


def test_limit_zero_quantity_passes_only_when_its_error_falls_fast_enough():
    sizes = (400, 1600, 6400)
    # falling like size^-1/2 (and faster): within the decay rule with bias_rate 0.5
    v = stats.verdict(sizes, _limit_zero([0.024, 0.012, 0.006]), rate=None, bias_rate=0.5)
    assert v.passed and v.quantities[0].limit_zero and v.quantities[0].basis == "+bias allowance"
    # stalled at a non-zero plateau (an equilibrium that is not the limit): fails
    v = stats.verdict(sizes, _limit_zero([0.024, 0.0065, 0.006]), rate=None, bias_rate=0.5)
    assert not v.passed and v.quantities[0].basis == "outside"
    # falling, but slower than claimed: fails
    v = stats.verdict(sizes, _limit_zero([0.024, 0.012, 0.008]), rate=None, bias_rate=0.5)
    assert not v.passed


def test_tolerance_parts_add_up_and_the_basis_names_the_part_needed():
    rng = np.random.default_rng(3)
    v = stats.verdict(SIZES, _ensemble(rng), rate=-0.5)
    for q in v.quantities:
        assert q.tolerance == pytest.approx(q.z_se + q.allowance + q.floor) and q.floor == 0.0
        assert q.basis in ("z*SE", "+bias allowance")
        assert q.zscore == pytest.approx(q.error / q.se[-1])
    # a deterministic estimate off by 1e-6 relative passes only through its rtol floor
    ms = [[Measurement("objective", 2.0, [2.0 + 2e-6, 2.0 + 2e-6 + 1e-15], rtol_floor=1e-4)] for _ in SIZES]
    q = stats.verdict(SIZES, ms, rate=None).quantities[0]
    assert q.passed and q.basis == "+rtol floor" and q.floor == pytest.approx(2e-4)


def test_sizes_below_min_size_or_a_rate_from_two_sizes_are_inconclusive():
    rng = np.random.default_rng(1)
    ens = _ensemble(rng)
    v = stats.verdict(SIZES, ens, rate=-0.5, min_size=512)
    assert v.inconclusive and not v.passed and v.status == "inconclusive" and "min_size 512" in v.reason
    v = stats.verdict(SIZES[1:], ens[1:], rate=-0.5)
    assert v.inconclusive and not v.passed and "at least 3 sizes" in v.reason and v.slope_ok is None
    v = stats.verdict(SIZES[1:], ens[1:], rate=None)  # no rate declared: two sizes decide the level
    assert v.passed and not v.inconclusive
    wrong = _ensemble(np.random.default_rng(2), claimed=TRUTH * 1.05)
    v = stats.verdict(SIZES[1:], wrong[1:], rate=-0.5)  # a level failure is a failure, not inconclusive
    assert not v.passed and not v.inconclusive and v.status == "fail"


def test_a_quantity_may_carry_its_own_bias_rate():
    """Measurement.bias_rate overrides the check's: the allowance is the error at the next-smaller size
    times (n_{K-1}/n_K)^rate (here 1/4 and 1/16 for sizes 4x apart)."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal(400)
    sizes = (64, 256)
    mk = lambda rate: [[Measurement("q", 0.0, 1.0 + s, bias_rate=rate)], [Measurement("q", 0.0, s, bias_rate=rate)]]  # noqa: E731
    e = abs(float(np.mean(1.0 + s)))
    assert stats.verdict(sizes, mk(None), rate=None).quantities[0].allowance == pytest.approx(e / 4)
    assert stats.verdict(sizes, mk(2.0), rate=None).quantities[0].allowance == pytest.approx(e / 16)

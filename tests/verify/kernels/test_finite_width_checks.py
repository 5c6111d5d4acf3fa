"""The finite-width verify checks (kernels.finite-width.*): the 1/n theory accepted, wrong ones rejected.

Power measured on the shared 2-core machine (docs/finite_width.md, "Verify"): the four-point
check rejects a vertex off by 10% at its quick sizes and 40k networks, by 2% with 200k networks
(slow test); the mean check, whose one-network spread grows like sqrt(n V), rejects a doubled K1.
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

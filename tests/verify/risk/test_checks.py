"""The risk verify checks: registered, runnable at small sizes, and the verdict rule tells a
right theory from a wrong one on the cheap linear-ridge check."""
import numpy as np
import pytest

from limitlab.verify import stats
from limitlab.verify.registry import Context, Measurement, get_check
from limitlab.verify.risk import checks, simulate


@pytest.mark.parametrize("name, rate", [("risk.random-features", -0.5), ("risk.linear-ridge", -0.5),
                                        ("risk.kernel-ridge", None)])
def test_checks_are_registered(name, rate):
    c = get_check(name)
    assert c.sizes[0] >= 100 and c.samples >= 2 and c.rate == rate


def test_random_features_check_runs_at_a_small_size():
    ms = get_check("risk.random-features").run(Context(size=40, samples=2, seed=0))
    assert [m.quantity for m in ms] == [f"risk[{p[0]}]" for p in checks.RF_POINTS]
    for m in ms:
        assert m.samples.shape == (2,) and np.all(np.isfinite(m.samples)) and m.theory > 0
        assert abs(m.samples.mean() - m.theory) < 0.5 * m.theory


def test_kernel_ridge_check_runs_at_a_small_size():
    ms = get_check("risk.kernel-ridge").run(Context(size=100, samples=6, seed=0))
    (m,) = ms
    se = m.samples.std(ddof=1) / np.sqrt(m.samples.size)
    # statistical error plus the eigenframework's finite-n correction (a few % at n = 100)
    assert abs(m.samples.mean() - m.theory) < 4 * se + 0.1 * m.theory


def _linear_measurements(factor, sizes=(100, 200, 400), S=24):
    from limitlab.theory.risk.linear_ridge import linear_ridge

    out = []
    for p in sizes:
        rng = np.random.default_rng(p)
        row = []
        for name, g, lam in checks.LINEAR_POINTS:
            th = factor * linear_ridge(g, lam, **checks.LINEAR_TARGET).risk
            s = [simulate.linear_ridge_regression(p, g, lam, **checks.LINEAR_TARGET, seed=rng) for _ in range(S)]
            row.append(Measurement(name, th, s))
        out.append(row)
    return sizes, out


@pytest.mark.slow
def test_verdict_passes_the_right_theory_and_fails_a_10_percent_error():
    sizes, ms = _linear_measurements(1.0)
    assert stats.verdict(sizes, ms, rate=-0.5).passed
    sizes, ms = _linear_measurements(1.1)
    assert not stats.verdict(sizes, ms, rate=-0.5).passed


def test_simulators_take_generators_and_seeds_reproducibly():
    a = simulate.random_features_regression(30, 1.0, 2.0, 0.1, seed=5)
    b = simulate.random_features_regression(30, 1.0, 2.0, 0.1, seed=np.random.default_rng(5))
    assert a == b

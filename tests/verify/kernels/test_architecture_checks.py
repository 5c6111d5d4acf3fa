"""Power of the architecture checks (kernels.cnn-gp, kernels.cntk-pool, kernels.resnet, kernels.layernorm,
kernels.attention) at their quick sizes and samples: the stax limit is accepted, a theory off by 2% either
way is rejected."""
from functools import lru_cache

import numpy as np
import pytest

from limitlab.verify import stats
from limitlab.verify.kernels import architectures as arch
from limitlab.verify.registry import Context, Measurement, all_checks, select

NAMES = sorted(arch.ARCHITECTURES)


@lru_cache(maxsize=None)
def _simulated(name, seed):
    fam = arch.ARCHITECTURES[name]
    return tuple(tuple(arch.measure(Context(n, fam.quick_samples, seed, "numpy"), name)) for n in fam.quick_sizes)


def _verdict(name, ms, scale=1.0):
    fam = arch.ARCHITECTURES[name]
    ms = [[Measurement(m.quantity, scale * m.theory, m.samples) for m in mm] for mm in ms]
    return stats.verdict(fam.quick_sizes, ms, rate=-0.5, bias_rate=1.0, n_boot=60, min_size=fam.min_size)


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_at_quick_sizes_and_rejects_a_2_percent_error(name):
    ms = _simulated(name, 0)
    v = _verdict(name, ms)
    assert v.passed and v.status == "pass", v.reason
    assert abs(v.slope + 0.5) < 0.1  # one network's RMS error ~ width^-1/2
    for scale in (1.02, 0.98):
        vw = _verdict(name, ms, scale)
        assert not vw.passed and vw.status == "fail", f"theory x{scale} accepted"


def test_checks_are_registered_with_min_size_and_only_the_cntk_in_the_default_set():
    checks = all_checks()
    defaults = {c.name for c in select(None)}
    for name in NAMES:
        c = checks[f"kernels.{name}"]
        fam = arch.ARCHITECTURES[name]
        assert c.min_size == fam.min_size and c.min_size_reason and min(c.quick_sizes) >= c.min_size
        assert c.rate == -0.5 and c.bias_rate == 1.0 and c.seconds_quick is not None
        assert (c.name in defaults) == c.default == (name == "cntk-pool")
        assert np.all([s2 == 4 * s1 for s1, s2 in zip(c.quick_sizes, c.quick_sizes[1:])])


def test_check_function_runs_through_the_registry_and_below_min_size_is_inconclusive():
    c = all_checks()["kernels.cntk-pool"]
    sizes = (8, 16, 32)
    ms = [c.run(Context(n, 64, 1, "numpy")) for n in sizes]
    assert [m.quantity for m in ms[0]][:2] == ["nngp[0,0]", "nngp[0,1]"] and len(ms[0]) == 12
    v = stats.verdict(sizes, ms, rate=-0.5, n_boot=20, min_size=c.min_size)
    assert v.inconclusive and not v.passed

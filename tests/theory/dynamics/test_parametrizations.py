"""abc-classification (Yang & Hu 2021) against the paper's stated presets and symmetry."""
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from limitlab.theory.dynamics.parametrizations import classify, mup_scalings, mup_table, preset, require_trainable, \
    symmetry


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_presets_reproduce_yang_hu_regimes(depth):
    # Yang & Hu 2021 sec. 3: muP and MF learn features (r = 0); NTP is a kernel regime with r = 1/2;
    # SP with lr ~ 1/n is a kernel regime (r = 1/2 for L >= 2, 3/2 for L = 1); SP with lr ~ 1 is unstable
    mup = classify(*_abc(preset("mup", depth)))
    assert mup.stable and mup.feature_learning and mup.r == 0
    ntp = classify(*_abc(preset("ntp", depth)))
    assert ntp.stable and ntp.kernel_regime and ntp.r == Fraction(1, 2)
    sp = classify(*_abc(preset("sp", depth)))
    assert sp.stable and sp.kernel_regime and sp.r == (Fraction(3, 2) if depth == 1 else Fraction(1, 2))
    p = preset("sp", depth)
    assert not classify(p.a, p.b, 0).stable


def test_mean_field_is_mup_for_two_layers():
    mf = classify(*_abc(preset("mf", 1)))
    assert mf.stable and mf.feature_learning
    # MF = muP up to the SGD symmetry with t = 1/2
    mup = preset("mup", 1)
    assert symmetry(mup, Fraction(1, 2)) == preset("mf", 1)


def _abc(p):
    return p.a, p.b, p.c


@given(st.integers(1, 5), st.sampled_from(["sp", "ntp", "mup"]), st.fractions(-2, 2, max_denominator=4))
def test_sgd_symmetry_preserves_the_classification(depth, name, t):
    p = preset(name, depth)
    a, b = classify(*_abc(p)), classify(*_abc(symmetry(p, t)))
    assert (a.stable, a.nontrivial, a.r, a.regime) == (b.stable, b.nontrivial, b.r, b.regime)


def test_unstable_parametrization_refuses_training():
    p = preset("sp", 2)
    with pytest.raises(ValueError, match="unstable"):
        require_trainable(p.a, p.b, 0)
    with pytest.raises(ValueError, match="b"):
        classify([0, 0], [0], 0)


def test_mup_table_matches_tensor_programs_v_table_3():
    sgd, adam = mup_table("sgd"), mup_table("adam")
    assert sgd["hidden"] == (-1, 0, 0) and adam["hidden"] == (-1, 0, -1)
    assert sgd["input"][2] == 1 and adam["input"][2] == 0
    assert sgd["output"] == (-1, -1, 1) and adam["output"] == (-1, -1, 0)
    layers = mup_scalings(1024, 256, depth=3, optimizer="adam")
    assert [l["kind"] for l in layers] == ["input", "hidden", "hidden", "output"]
    assert layers[1]["lr"] == pytest.approx(0.25) and layers[3]["multiplier"] == pytest.approx(0.25)

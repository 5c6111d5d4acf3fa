"""Signal propagation: fixed points and susceptibilities against closed forms and known values."""
import math

import numpy as np
import pytest

from limitlab.theory.kernels import MLP
from limitlab.theory.kernels.signal_propagation import correlation_map, edge_of_chaos, length_map, signal_propagation


def test_selu_has_the_self_normalizing_fixed_point():
    """Klambauer et al. 2017: with w = 1, b = 0, variance 1 maps to itself."""
    sp_ = signal_propagation("selu", 1.0, 0.0)
    assert sp_.converged and abs(sp_.q_star - 1) < 1e-12


@pytest.mark.parametrize("w,b", [(1.5, 0.3), (1.0, 0.5)])
def test_relu_fixed_point_and_chi1_closed_form(w, b):
    """ReLU: q* = b / (1 - w/2) and chi_1 = w/2 (E[relu(u)^2] = q/2, E[step^2] = 1/2)."""
    sp_ = signal_propagation("relu", w, b)
    assert abs(sp_.q_star - b / (1 - w / 2)) < 1e-12 * sp_.q_star
    assert abs(sp_.chi_1 - w / 2) < 1e-13
    assert sp_.c_star == 1.0 and sp_.phase == "ordered"


def test_erf_chi1_closed_form():
    """erf: E[erf'(u)^2] = (4/pi) / sqrt(1 + 4 q)."""
    w, b = 2.5, 0.2
    sp_ = signal_propagation("erf", w, b)
    assert abs(sp_.chi_1 - w * 4 / math.pi / math.sqrt(1 + 4 * sp_.q_star)) < 1e-12
    # q* is a fixed point of the closed-form length map
    assert abs(w * 2 / math.pi * math.asin(2 * sp_.q_star / (1 + 2 * sp_.q_star)) + b - sp_.q_star) < 1e-12


def test_chi_q_is_the_slope_of_the_length_map():
    sp_ = signal_propagation("tanh", 1.8, 0.1)
    h = 1e-5 * sp_.q_star
    slope = (length_map("tanh", sp_.q_star + h, 1.8, 0.1) - length_map("tanh", sp_.q_star - h, 1.8, 0.1)) / (2 * h)
    assert abs(slope - sp_.chi_q) < 1e-8


def test_chaotic_phase_has_a_stable_correlation_below_one():
    sp_ = signal_propagation("tanh", 4.0, 0.1)
    assert sp_.phase == "chaotic" and sp_.chi_1 > 1 and sp_.c_star < 1
    assert abs(correlation_map("tanh", sp_.c_star, sp_.q_star, 4.0, 0.1) - sp_.c_star) < 1e-11
    assert sp_.chi_c < 1  # the fixed point c* is stable


def test_edge_of_chaos_is_critical_and_matches_deep_kernel_behaviour():
    bs = np.array([0.0, 0.05, 0.2])
    ws, ok = edge_of_chaos("tanh", bs)
    assert ok and abs(ws[0] - 1.0) < 1e-12
    for w, b in zip(ws[1:], bs[1:]):
        assert abs(signal_propagation("tanh", w, b).chi_1 - 1) < 1e-9
    # monotone: more bias needs more weight variance (Schoenholz et al. 2017, Fig. 1)
    assert np.all(np.diff(ws) > 0)


def test_q_star_is_the_deep_limit_of_the_kernel_diagonal():
    """The NNGP diagonal of a deep network converges to q* (ordered phase)."""
    w, b = 1.2, 0.3
    sp_ = signal_propagation("erf", w, b)
    X = np.array([[0.3, -1.2, 2.0]])
    k = MLP(40, "erf", weight_var=w, bias_var=b).nngp(X)
    assert abs(k[0, 0] - sp_.q_star) < 1e-10


def test_bad_input():
    with pytest.raises(ValueError, match="weight_var"):
        signal_propagation("tanh", -1.0, 0.0)
    with pytest.raises(ValueError, match="c:"):
        correlation_map("tanh", 1.5, 1.0)

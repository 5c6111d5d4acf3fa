"""Signal propagation: fixed points and susceptibilities against closed forms and known values."""
import math

import numpy as np
import pytest

from limitlab.theory.kernels import MLP
from limitlab.theory.kernels.signal_propagation import correlation_map, edge_of_chaos, length_map, signal_propagation


def test_selu_has_the_self_normalizing_fixed_point():
    """Klambauer et al. 2017: with w = 1, b = 0, variance 1 maps to itself."""
    sp_ = signal_propagation("selu", 1.0, 0.0)
    assert sp_.solver.converged and abs(sp_.q_star - 1) < 1e-12


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


@pytest.mark.parametrize("activation,chi_per_w", [("relu", 0.5), (("leaky_relu", {"alpha": 0.2}), 0.52),
                                                  ("abs", 1.0), (("abrelu", {"a": -0.3, "b": 0.7}), 0.29)])
def test_edge_of_chaos_of_positively_homogeneous_activations_is_the_same_at_every_bias(activation, chi_per_w):
    """phi(x) = a min(x, 0) + b max(x, 0): E[phi'(sqrt(q) z)^2] = (a^2 + b^2)/2 at every q, so
    chi_1 = w (a^2 + b^2)/2 whatever q* and the edge is w = 2/(a^2 + b^2) at every bias_var
    (ReLU: w = 2; Schoenholz et al. 2017, sec. 4). This used to raise ZeroDivisionError."""
    from limitlab.theory import activations as A

    act = A.get(activation) if isinstance(activation, str) else A.get(activation[0], **activation[1])
    ws, ok = edge_of_chaos(act, [0.0, 0.1, 2.0])
    assert ok and np.allclose(ws, 1 / chi_per_w, rtol=1e-14, atol=0)
    w, ok1 = edge_of_chaos(act, 0.3)
    assert ok1 and isinstance(w, float) and abs(w - 1 / chi_per_w) <= 1e-14 / chi_per_w
    # chi_1 = w * chi_per_w at an ordered point, from the general (q*-iterating) code
    assert abs(signal_propagation(act, 0.8 / chi_per_w, 0.3).chi_1 - 0.8) < 1e-13


@pytest.mark.parametrize("activation", ["step", "sign"])
def test_step_and_sign_have_no_edge_of_chaos(activation):
    """Their a.e. derivative is 0 (chi_1 = 0 at every w) while their correlation maps, 1/4 +
    arcsin(c)/(2 pi) and (2/pi) arcsin(c), have infinite slope at c = 1: no critical w."""
    with pytest.raises(ValueError, match=f"activation: {activation} has no edge of chaos.*every weight_var"):
        edge_of_chaos(activation, [0.0, 0.1])
    # the infinite slope, seen in the correlation map: its difference quotient at 1 grows like 1/sqrt(h)
    q = signal_propagation(activation, 1.0, 0.1).q_star
    slopes = [(1 - correlation_map(activation, 1 - h, q, 1.0, 0.1)) / h for h in (1e-4, 1e-6)]
    assert slopes[1] > 9 * slopes[0] > 9


def test_tanh_exactly_at_the_edge_of_chaos_gives_the_limits_not_nan():
    """w = 1, b = 0: q* = 0 (reached only as q_l ~ 1/l), chi_1 = chi_q = chi_c = phi'(0)^2 w = 1,
    c* = 1 and infinite depth scales; the ordered side tends to these values."""
    sp_ = signal_propagation("tanh", 1.0, 0.0)
    assert (sp_.q_star, sp_.chi_1, sp_.chi_q, sp_.c_star, sp_.chi_c) == (0.0, 1.0, 1.0, 1.0, 1.0)
    assert sp_.xi_q == math.inf and sp_.xi_c == math.inf
    assert sp_.phase == "critical" and sp_.solver.converged
    near = signal_propagation("tanh", 1 - 1e-6, 0.0)
    for f in ("q_star", "chi_1", "chi_q", "c_star", "chi_c"):
        assert abs(getattr(near, f) - getattr(sp_, f)) < 1e-5, f
    assert near.xi_q > 1e5 and near.xi_c > 1e5
    half = signal_propagation("tanh", 0.5, 0.0)  # the ordered side: q* = 0 exactly, chi = w
    assert (half.q_star, half.chi_1, half.c_star, half.phase) == (0.0, 0.5, 1.0, "ordered")
    assert abs(half.xi_q - 1 / math.log(2)) < 1e-15
    # not where the length map leaves 0: x + x^3 at w = 1 has q* = 0 unstable
    from limitlab.theory import activations as A
    cubic = signal_propagation(A.x + A.x ** 3, 1.0, 0.0)
    assert cubic.q_star != 0.0 and cubic.phase != "critical"

"""Layer-peeled model (Fang et al. 2021): the symmetric reduction against direct
optimization of W and H, the balanced ETF, and minority collapse."""
import numpy as np
import pytest
from scipy.optimize import minimize

from limitlab.theory.collapse import lpm_loss, minority_collapse


def _direct(R, kA, kB, E=1.0, D=6, seeds=(0, 1)):
    """Minimize the LPM over full W, H (C x D), both norm constraints active by rescaling."""
    C = kA + kB
    n = np.array([R] * kA + [1.0] * kB)

    def f(v):
        W, H = v[:C * D].reshape(C, D), v[C * D:].reshape(C, D)
        W = W * np.sqrt(C * E / np.sum(W * W))
        H = H * np.sqrt(C * E / np.sum(H * H))
        return lpm_loss(W, H, n)

    best = min((minimize(f, np.random.default_rng(s).standard_normal(2 * C * D), method="L-BFGS-B",
                         options=dict(maxiter=20000)) for s in seeds), key=lambda r: r.fun)
    W = best.x[:C * D].reshape(C, D)
    U = W / np.linalg.norm(W, axis=1)[:, None]
    return best.fun, (U @ U.T)[kA:, kA:][np.triu_indices(kB, 1)].mean()


def test_lpm_loss_is_the_sample_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    W, H = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    n = np.array([5.0, 2.0, 1.0])
    Z = H @ W.T
    ce = [-Z[k, k] + np.log(np.sum(np.exp(Z[k]))) for k in range(3)]
    assert lpm_loss(W, H, n) == pytest.approx(np.dot(n, ce) / 8, rel=1e-14)


def test_balanced_optimum_is_a_simplex_etf():
    m = minority_collapse(1.0, 3, 3, E_W=3.0, E_H=3.0)
    assert m.majority_cosine == pytest.approx(-1 / 5, abs=1e-6)
    assert m.minority_cosine == pytest.approx(-1 / 5, abs=1e-6)
    assert m.cross_cosine == pytest.approx(-1 / 5, abs=1e-6)
    assert m.majority_norm_sq == pytest.approx(3.0, rel=1e-6)
    assert np.linalg.eigvalsh(m.gram).min() > -1e-9  # a realizable Gram matrix


@pytest.mark.parametrize("R", [4.0, 20.0])
def test_symmetric_reduction_matches_direct_optimization(R):
    m = minority_collapse(R, 2, 2, E_W=3.0, E_H=3.0)
    loss, cos = _direct(R, 2, 2, E=3.0)
    # both are feasible points (the reduced Gram is PSD), the reduction never worse
    assert m.loss <= loss * (1 + 1e-9) and m.loss == pytest.approx(loss, rel=1e-5)
    assert m.minority_cosine == pytest.approx(cos, abs=1e-3)


def test_minority_angle_shrinks_with_imbalance_and_collapses():
    angles = [minority_collapse(R, 5, 5, E_W=3.0, E_H=3.0).minority_angle for R in (1.0, 3.0, 10.0, 30.0, 100.0)]
    assert all(a > b for a, b in zip(angles, angles[1:]))
    assert angles[0] == pytest.approx(np.arccos(-1 / 9), abs=1e-5)
    assert angles[-1] < 1e-2  # Fang et al. Thm 5: minority classifiers merge


def test_vanishing_minority_classifiers_are_reported_as_coinciding():
    m = minority_collapse(5.0, 5, 5)  # E_W = E_H = 1: minority classifiers shrink to zero
    assert m.minority_norm_sq < 1e-8 and m.minority_distance_sq < 1e-8
    assert m.minority_angle == 0.0


@pytest.mark.parametrize("kwargs, match", [(dict(ratio=0.0), "ratio"), (dict(ratio=2.0, k_A=0), "k_A"),
                                           (dict(ratio=2.0, E_W=-1.0), "E_W")])
def test_bad_input_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        minority_collapse(**kwargs)

"""Tests of limitlab.numerics.solvers against closed-form roots and fixed points."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.numerics.solvers import ConvergenceError, SolverResult, find_root, fixed_point


def test_fixed_point_of_cosine_is_the_dottie_number():
    res = fixed_point(np.cos, 1.0, tol=1e-15)
    assert isinstance(res, SolverResult) and res.converged
    assert abs(res.value - 0.7390851332151607) < 1e-14  # Dottie number (closed tables, OEIS A003957)
    assert res.residual <= 1e-14


def test_fixed_point_is_elementwise_over_arrays():
    a = np.linspace(0.5, 4.0, 50)
    # x = sqrt(a + x)  has the fixed point (1 + sqrt(1 + 4a)) / 2
    res = fixed_point(lambda x: np.sqrt(a + x), np.ones_like(a), tol=1e-14)
    assert res.converged and res.value.shape == a.shape
    np.testing.assert_allclose(res.value, (1 + np.sqrt(1 + 4 * a)) / 2, rtol=1e-13)


def test_damping_makes_an_oscillating_map_converge():
    # x -> 3 - 2x has |slope| = 2 (undamped iteration diverges); fixed point 1
    assert not fixed_point(lambda x: 3 - 2 * x, 0.0, maxiter=50).converged
    res = fixed_point(lambda x: 3 - 2 * x, 0.0, damping=0.7, tol=1e-14)
    assert res.converged and abs(res.value - 1.0) < 1e-12


def test_fixed_point_complex_stieltjes_transform_of_semicircle():
    # g = 1/(-z - g) is the semicircle Stieltjes transform, g = (-z + sqrt(z^2 - 4))/2, Im g > 0
    z = 0.3 + 1.0j
    res = fixed_point(lambda g: 1.0 / (-z - g), 1j, damping=0.3, tol=1e-15)
    exact = (-z + np.sqrt(z * z - 4)) / 2
    exact = exact if exact.imag > 0 else (-z - np.sqrt(z * z - 4)) / 2
    assert res.converged and abs(res.value - exact) < 1e-13


def test_strict_raises_convergence_error_with_result():
    with pytest.raises(ConvergenceError) as err:
        fixed_point(lambda x: x + 1.0, 0.0, maxiter=5, strict=True)
    assert not err.value.result.converged and err.value.result.iterations == 5


@pytest.mark.parametrize("kwargs, arg", [(dict(damping=1.0), "damping"), (dict(tol=-1.0), "tol"),
                                         (dict(maxiter=0), "maxiter")])
def test_fixed_point_bad_arguments_are_named(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        fixed_point(np.cos, 1.0, **kwargs)


def test_find_root_of_cubic_matches_closed_form():
    res = find_root(lambda x: x ** 3 - 2.0, bracket=(0.0, 2.0))
    assert res.converged and abs(res.value - 2 ** (1 / 3)) < 4e-16 * 2
    assert res.residual < 1e-14


def test_find_root_vectorized_brackets():
    c = np.linspace(0.1, 100.0, 1000)
    res = find_root(lambda x: np.log(x) - np.log(c), bracket=(np.full_like(c, 1e-3), np.full_like(c, 1e3)))
    assert res.converged
    np.testing.assert_allclose(res.value, c, rtol=1e-14)


def test_find_root_without_sign_change_raises():
    with pytest.raises(ValueError, match="bracket"):
        find_root(lambda x: x * x + 1.0, bracket=(-1.0, 1.0))


def test_find_root_strict_with_too_few_iterations_raises():
    with pytest.raises(ConvergenceError):
        find_root(lambda x: np.tanh(x - 0.3), bracket=(-50.0, 50.0), maxiter=3, strict=True)


@settings(max_examples=60, deadline=None)
@given(r=st.floats(-5, 5), k=st.floats(0.01, 50), lo=st.floats(6, 100), hi=st.floats(6, 100))
def test_find_root_finds_the_unique_root_of_a_monotone_function(r, k, lo, hi):
    res = find_root(lambda x: np.arctan(k * (x - r)) + 0.1 * (x - r), bracket=(r - lo, r + hi), strict=True)
    assert abs(res.value - r) <= 1e-13 * (1 + abs(r)) / min(k, 1.0) + 1e-14


def test_results_carry_one_solver_object_and_old_names_warn():
    # one diagnostics object (SolverResult) on every iterative result; the flat names read through, deprecated
    from dataclasses import dataclass

    from limitlab.numerics.solvers import HasSolver, SolverResult

    @dataclass
    class Result(HasSolver):
        solver: SolverResult

    r = Result(SolverResult(1.0, 1e-3, 7, False, message="stalled"))
    for name, value in (("converged", False), ("iterations", 7), ("residual", 1e-3), ("message", "stalled")):
        with pytest.warns(DeprecationWarning, match=f"Result.{name} is deprecated; use Result.solver.{name}"):
            assert getattr(r, name) == value
    assert r.solver.check(False, "who") is r.solver
    with pytest.raises(ConvergenceError, match="^who: stalled$"):
        r.solver.check(True, "who")

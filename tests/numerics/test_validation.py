"""numerics/validation.py: one message style, "<name>: must be <allowed>, got <value>", and no bool as a number."""
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from limitlab.numerics import validation as validate


@given(st.integers(-10**6, 10**6), st.integers(-100, 100))
def test_integer_accepts_exactly_the_integers_at_or_above_the_minimum(v, minimum):
    if v >= minimum:
        assert validate.integer(v, "n", minimum=minimum) == v
        assert type(validate.integer(np.int64(v), "n", minimum=minimum)) is int
    else:
        with pytest.raises(ValueError, match=rf"^n: must be an integer >= {minimum}, got {v}$"):
            validate.integer(v, "n", minimum=minimum)


@pytest.mark.parametrize("bad", [True, False, 2.0, "3", None, np.float64(2.0)])
def test_integer_refuses_bool_float_and_strings(bad):
    with pytest.raises(ValueError, match=r"^depth: must be an integer >= 1, got .* \(number of hidden layers\)$"):
        validate.integer(bad, "depth", minimum=1, meaning="number of hidden layers")


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_real_bounds_are_strict_or_inclusive_as_named(v):
    inside = np.isfinite(v) and 0.0 <= v < 1.0
    if inside:
        assert validate.real(v, "damping", at_least=0.0, below=1.0) == v
    else:
        with pytest.raises(ValueError, match=r"^damping: must be a finite number in \[0, 1\), got "):
            validate.real(v, "damping", at_least=0.0, below=1.0)


def test_real_refuses_bool_nan_and_allows_inf_only_when_asked():
    for bad in (True, np.nan, "1", None, 1j):
        with pytest.raises(ValueError, match="^tol: must be a finite number > 0, got"):
            validate.positive(bad, "tol")
    assert validate.real(np.inf, "x", above=0.0, finite=False) == np.inf
    with pytest.raises(ValueError, match="not NaN"):
        validate.real(np.nan, "x", finite=False)


def test_choice_and_flag():
    assert validate.choice("ntk", "get", ("nngp", "ntk")) == "ntk"
    with pytest.raises(ValueError, match="^get: must be one of 'nngp', 'ntk', got 'x'$"):
        validate.choice("x", "get", ("nngp", "ntk"))
    with pytest.raises(ValueError, match="got"):
        validate.choice([1], "get", ("nngp",))  # unhashable: refused, not a TypeError from `in`
    assert validate.flag(np.bool_(True), "strict") is True
    with pytest.raises(TypeError, match="^strict: must be True or False, got 1$"):
        validate.flag(1, "strict")


def test_real_array_names_the_first_bad_entry_and_refuses_complex():
    np.testing.assert_array_equal(validate.real_array([1, 2], "psi1", above=0.0), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^psi1: must be finite and > 0, got -2.0$"):
        validate.real_array([1.0, -2.0, -3.0], "psi1", above=0.0)
    with pytest.raises(ValueError, match=r"^ridge: must be finite and >= 0, got nan$"):
        validate.real_array(np.nan, "ridge", at_least=0.0)
    with pytest.raises(TypeError, match="^y: must be real, got complex dtype complex128"):
        validate.real_array(np.array([1 + 1j]), "y")
    with pytest.raises(TypeError, match="^y: must be real numbers, got dtype <U1"):
        validate.real_array(["a"], "y")
    a = validate.real_array([np.inf, np.nan], "x", finite=False)  # kind only
    assert np.isinf(a[0]) and np.isnan(a[1])


def test_rows_checks_the_shape_before_the_entries():
    assert validate.rows([1, 2, 3], "y", 3).shape == (3,)
    assert validate.rows(np.ones((3, 2)), "y", 3).dtype == np.float64
    for bad in (np.ones(2), np.ones((2, 3)), np.ones((3, 1, 1)), np.full(2, np.nan)):
        shape = re.escape(str(bad.shape))
        with pytest.raises(ValueError, match=rf"^y: must have shape \(3,\) or \(3, k\), got shape {shape}$"):
            validate.rows(bad, "y", 3)
    with pytest.raises(ValueError, match=r"^y: must be finite, got inf$"):
        validate.rows([0.0, np.inf, 1.0], "y", 3)
    with pytest.raises(TypeError, match="^y: must be real"):
        validate.rows(np.ones(3, dtype=complex), "y", 3)


def test_dtype_is_one_of_the_allowed_dtypes():
    assert validate.dtype("float32", "dtype", (np.float64, np.float32)) == np.float32
    with pytest.raises(ValueError, match=r"^dtype: must be one of float64, float32, got int64$"):
        validate.dtype(np.int64, "dtype", (np.float64, np.float32))
    with pytest.raises(TypeError, match=r"^dtype: must be one of float64, got 'no such type'$"):
        validate.dtype("no such type", "dtype", (np.float64,))


def test_renamed_keywords_warn_and_refuse_both():
    @validate.renamed(learning_rate="lr")
    def f(x, lr=1.0):
        return x * lr

    assert f(2.0, lr=3.0) == 6.0
    with pytest.warns(DeprecationWarning, match="^f: the keyword learning_rate is deprecated; use lr$"):
        assert f(2.0, learning_rate=3.0) == 6.0
    with pytest.raises(TypeError, match="got both learning_rate"):
        f(2.0, learning_rate=3.0, lr=3.0)

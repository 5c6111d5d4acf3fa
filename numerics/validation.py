"""Checks of arguments at the public boundary: one message style for the whole package.

Every layer (numerics, theory, verify) imports these; none knows about networks. A failed
check raises ``ValueError`` (``TypeError`` where the kind of object is wrong: a complex
array where a real one is needed) whose message reads

    ``<name>: must be <what is allowed>, got <the value>`` [`` (<what the argument means>)``]

so that the argument, what is allowed and what was given are always said the same way.
``bool`` is never accepted as a number (``True`` is an ``int`` to Python, not a width).
"""
from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np

__all__ = ["is_integer", "integer", "real", "positive", "flag", "choice", "real_array", "rows", "dtype", "renamed"]


def _bounds(lo, lo_open, hi, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def _outside(v, lo, lo_open, hi, hi_open) -> bool:
    return ((lo is not None and (v <= lo if lo_open else v < lo))
            or (hi is not None and (v >= hi if hi_open else v > hi)))


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), ``bool`` excluded: the test for callers
    that must raise something other than ``integer``'s ``ValueError`` (a ``TypeError``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(value, name: str, minimum=None, maximum=None, meaning: str = "") -> int:
    """``value`` as an ``int`` if it is an integer (Python or NumPy, not bool) in [minimum, maximum].

    ``meaning`` (e.g. ``"number of hidden layers"``) ends the message, in parentheses.
    """
    if not is_integer(value) or _outside(value, minimum, False, maximum, False):
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name}: must be an integer{_bounds(minimum, False, maximum, False)}, got {value!r}{what}")
    return int(value)


def real(value, name: str, *, above=None, at_least=None, below=None, at_most=None, finite: bool = True,
         meaning: str = "") -> float:
    """``value`` as a ``float`` if it is a real number (not bool) within the given bounds.

    ``above``/``below`` are strict bounds, ``at_least``/``at_most`` inclusive ones; ``finite=False``
    lets ``inf`` through (never NaN).
    """
    lo, lo_open = (above, True) if above is not None else (at_least, False)
    hi, hi_open = (below, True) if below is not None else (at_most, False)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = not np.isnan(v) and (np.isfinite(v) or not finite) and not _outside(v, lo, lo_open, hi, hi_open)
    if not ok:
        what = f" ({meaning})" if meaning else ""
        kind = "a finite number" if finite else "a number (not NaN)"
        raise ValueError(f"{name}: must be {kind}{_bounds(lo, lo_open, hi, hi_open)}, got {value!r}{what}")
    return v


def positive(value, name: str, meaning: str = "") -> float:
    """A finite real number > 0."""
    return real(value, name, above=0.0, meaning=meaning)


def flag(value, name: str) -> bool:
    """``True`` or ``False`` (NumPy's bool too), nothing that merely converts to one."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def choice(value, name: str, allowed):
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def real_array(value, name: str, *, above=None, at_least=None, finite: bool = True) -> np.ndarray:
    """``value`` as a float64 array (any shape, scalars too) of real numbers, every entry finite
    (unless ``finite=False``: then nothing is checked but the kind) and > ``above`` or >= ``at_least``.

    A complex value is a ``TypeError`` (a silent cast would drop its imaginary part), and so is
    anything not numeric; the message of a ``ValueError`` shows the first offending entry.
    """
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be real numbers, got {type(value).__name__}") from None
    if raw.dtype.kind == "c":
        raise TypeError(f"{name}: must be real, got complex dtype {raw.dtype} (its imaginary part would be dropped; "
                        "pass the real part explicitly if that is what is meant)")
    if raw.dtype.kind not in "biuf":
        raise TypeError(f"{name}: must be real numbers, got dtype {raw.dtype}")
    a = raw.astype(np.float64, copy=False)
    if not finite:
        return a
    bad = ~np.isfinite(a)
    if above is not None:
        bad |= a <= above
    elif at_least is not None:
        bad |= a < at_least
    if np.any(bad):
        v = float(a[bad].ravel()[0]) if a.ndim else float(a)
        rule = _bounds(above if above is not None else at_least, above is not None, None, False)
        raise ValueError(f"{name}: must be finite{' and' + rule if rule else ''}, got {v!r}")
    return a


def rows(value, name: str, n: int) -> np.ndarray:
    """``value`` as a finite float64 array of shape ``(n,)`` or ``(n, k)``: one number or one row
    per each of ``n`` points (targets, right-hand sides). The shape is checked before the entries."""
    a = real_array(value, name, finite=False)
    if a.ndim not in (1, 2) or a.shape[0] != n:
        raise ValueError(f"{name}: must have shape ({n},) or ({n}, k), got shape {a.shape}")
    return real_array(a, name)


def dtype(value, name: str, allowed) -> np.dtype:
    """``value`` as a NumPy dtype if it is one of ``allowed`` (``TypeError`` if it names no dtype)."""
    names = ", ".join(np.dtype(a).name for a in allowed)
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name}: must be one of {names}, got {value!r}") from None
    if dt not in [np.dtype(a) for a in allowed]:
        raise ValueError(f"{name}: must be one of {names}, got {dt.name}")
    return dt


def renamed(**old_to_new):
    """Decorator: keyword arguments renamed ``old=new``; the old keywords still work, with a
    DeprecationWarning, and giving both is a TypeError."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}: got both {old} (the deprecated name) and {new}")
                    warnings.warn(f"{fn.__name__}: the keyword {old} is deprecated; use {new}", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return deco

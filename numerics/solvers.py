"""Shared fixed-point and root solvers, vectorized over arrays of independent problems.

The self-consistent equations of the pillars go through these two entry points (one
exception, with its measured reason in its module docstring: the random-features risk's
compiled Newton on a closed-form derivative, several times faster on its grids):

* :func:`fixed_point` — damped iteration ``x <- (1 - damping) fn(x) + damping x`` until
  ``|fn(x) - x| <= tol (1 + |x|)`` elementwise (real or complex arrays, any shape);
* :func:`find_root` — a bracketed scalar root of ``fn`` on ``[a, b]`` (Illinois regula
  falsi with a bisection safeguard, so the bracket shrinks at least geometrically and
  no root outside the bracket can be returned), vectorized: ``a``, ``b`` may be arrays
  of independent brackets and ``fn`` is evaluated on the whole array at once.

Both return a :class:`SolverResult` (value, residual, iterations, converged, message) and
raise :class:`ConvergenceError` (carrying the result) when ``strict=True`` and some element
did not converge. Bad arguments raise ValueError/TypeError naming the argument.

The same :class:`SolverResult` is the diagnostics object of every iterative result in the
package: a result (DMFT, signal propagation, random-features risk) has a ``solver`` field
holding it, and ``strict=True`` raises through :meth:`SolverResult.check`.

References: Dahlquist & Bjorck, "Numerical Methods" (1974), sec. 6.2 (Illinois method);
Brent, "Algorithms for Minimization without Derivatives" (1973), ch. 4 (safeguarding).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from limitlab.numerics import validation as validate

__all__ = ["SolverResult", "ConvergenceError", "HasSolver", "fixed_point", "find_root"]


@dataclass
class SolverResult:
    """Outcome of an iterative solve.

    value: the solution (array shaped like the input, or a float for scalar input);
    residual: |fn(x) - x| (fixed point) or |fn(x)| (root), shaped like ``value``;
    iterations: iterations used (the maximum over elements);
    converged: True when every element met the tolerance (``converged_mask`` per element);
    message: why it did not converge ("" when it did).
    """

    value: Any
    residual: Any
    iterations: int
    converged: bool
    converged_mask: Any = None
    message: str = ""

    def __bool__(self):  # `if result:` reads as "did it converge"
        return bool(self.converged)

    def check(self, strict: bool, who: str) -> "SolverResult":
        """``self``; with ``strict`` a :class:`ConvergenceError` ``"<who>: <message>"`` when not converged."""
        if strict and not self.converged:
            raise ConvergenceError(f"{who}: {self.message or 'did not converge'}", self)
        return self


class HasSolver:
    """Base of results that carry a ``solver`` field (a :class:`SolverResult`).

    The flat names that some results used to have (``result.converged``, ``.iterations``,
    ``.residual``, ``.message``) read through to ``result.solver``, with a DeprecationWarning.
    """

    def _solver_alias(self, name):
        warnings.warn(f"{type(self).__name__}.{name} is deprecated; use {type(self).__name__}.solver.{name}",
                      DeprecationWarning, stacklevel=3)
        return getattr(self.solver, name)

    converged = property(lambda self: self._solver_alias("converged"), doc="Deprecated: ``solver.converged``.")
    iterations = property(lambda self: self._solver_alias("iterations"), doc="Deprecated: ``solver.iterations``.")
    residual = property(lambda self: self._solver_alias("residual"), doc="Deprecated: ``solver.residual``.")
    message = property(lambda self: self._solver_alias("message"), doc="Deprecated: ``solver.message``.")


class ConvergenceError(RuntimeError):
    """A strict solve did not converge; ``.result`` holds the last iterate."""

    def __init__(self, message: str, result: SolverResult):
        super().__init__(message)
        self.result = result


def _pack(value, residual, it, mask, scalar, what):
    conv = bool(np.all(mask))
    msg = "" if conv else f"{int(np.size(mask) - np.count_nonzero(mask))} element(s) did not converge ({what})"
    if scalar:
        return SolverResult(value.item(), residual.item(), it, conv, bool(mask.item()), msg)
    return SolverResult(value, residual, it, conv, mask, msg)


def fixed_point(fn: Callable, x0, damping: float = 0.0, tol: float = 1e-12, maxiter: int = 10_000,
                strict: bool = False) -> SolverResult:
    """Solve x = fn(x) by damped iteration, elementwise over arrays.

    ``x_{k+1} = (1 - damping) fn(x_k) + damping x_k``; damping in [0, 1) trades speed for
    stability on oscillating maps. Elements stop updating once
    ``|fn(x) - x| <= tol (1 + |x|)``, so a vectorized ``fn`` over a grid of independent
    problems costs only as many iterations as the slowest point. ``fn`` must accept and
    return an array shaped like ``x0`` (real or complex).
    """
    if not callable(fn):
        raise TypeError(f"fn: must be callable, got {type(fn).__name__}")
    validate.real(damping, "damping", at_least=0.0, below=1.0)
    validate.positive(tol, "tol")
    validate.integer(maxiter, "maxiter", minimum=1)
    x = np.array(x0, dtype=np.result_type(np.asarray(x0).dtype, np.float64), copy=True)
    scalar = x.ndim == 0
    x = np.atleast_1d(x)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x0: must be finite, got {x0!r}")

    def call(v):
        out = np.asarray(fn(v.reshape(()) if scalar else v))
        if out.shape != (() if scalar else v.shape):
            raise ValueError(f"fn: returned shape {out.shape}, expected {v.shape if not scalar else ()}")
        return np.atleast_1d(out)

    active = np.ones(x.shape, dtype=bool)
    residual = np.full(x.shape, np.inf)
    it = 0
    for it in range(1, maxiter + 1):
        fx = call(x)
        if fx.dtype.kind == "c" and x.dtype.kind != "c":
            x = x.astype(complex)
        res = np.abs(fx - x)
        residual = np.where(active, res, residual)
        done = res <= tol * (1.0 + np.abs(x))
        bad = ~np.isfinite(fx)
        newly = active & (done | bad)
        # converged elements take fn(x) (one more step is free and at least as good)
        x = np.where(newly & ~bad, fx, x)
        step = (1.0 - damping) * fx + damping * x
        x = np.where(active & ~newly, step, x)
        active &= ~(done | bad)
        if not active.any():
            break
    mask = residual <= tol * (1.0 + np.abs(x))
    result = _pack(x, residual, it, mask, scalar, f"|fn(x) - x| > {tol:g} (1 + |x|) after {it} iterations")
    return result.check(strict, "fixed_point")


def find_root(fn: Callable, bracket, tol: float = 1e-14, rtol: float = 4 * np.finfo(float).eps,
              maxiter: int = 200, strict: bool = False) -> SolverResult:
    """Root of a real function on a sign-changing bracket, vectorized over brackets.

    ``bracket = (a, b)`` with ``fn(a)`` and ``fn(b)`` of opposite signs (or zero);
    ``a``, ``b`` may be arrays (broadcast together) of independent problems, and ``fn``
    is called on the whole array of current points. Illinois steps with a bisection
    step whenever the bracket did not halve in two iterations; each element stops when
    ``|b - a| <= tol + rtol |x|`` or ``fn(x) == 0``. Raises ValueError when some bracket
    does not change sign (no silent wrong root).
    """
    if not callable(fn):
        raise TypeError(f"fn: must be callable, got {type(fn).__name__}")
    try:
        a, b = bracket
    except (TypeError, ValueError):
        raise TypeError(f"bracket: must be a pair (a, b), got {bracket!r}") from None
    validate.real(tol, "tol", at_least=0.0)
    validate.real(rtol, "rtol", at_least=0.0)
    if tol == 0 and rtol == 0:
        raise ValueError("tol, rtol: at least one must be > 0, got 0 and 0")
    validate.integer(maxiter, "maxiter", minimum=1)
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    scalar = a.ndim == 0
    a, b = np.atleast_1d(a).copy(), np.atleast_1d(b).copy()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"bracket: ends must be finite, got {bracket!r}")

    def call(v):
        out = np.atleast_1d(np.asarray(fn(v.reshape(()) if scalar else v), dtype=float))
        if out.shape != v.shape:
            raise ValueError(f"fn: returned shape {out.shape}, expected {v.shape}")
        return out

    fa, fb = call(a), call(b)
    if np.any(~np.isfinite(fa)) or np.any(~np.isfinite(fb)):
        raise ValueError("bracket: fn is not finite at an end of the bracket")
    nochange = np.sign(fa) * np.sign(fb) > 0
    if nochange.any():
        i = int(np.flatnonzero(nochange)[0])
        raise ValueError(f"bracket: fn does not change sign on [{a[i]!r}, {b[i]!r}] "
                         f"(fn = {fa[i]!r}, {fb[i]!r}); {int(nochange.sum())} bracket(s) affected")
    # x: best point so far; the bracket [a, b] always holds the root
    x = np.where(np.abs(fa) <= np.abs(fb), a, b)
    fx = np.where(np.abs(fa) <= np.abs(fb), fa, fb)
    active = (fa != 0) & (fb != 0)
    x = np.where(fa == 0, a, np.where(fb == 0, b, x))
    fx = np.where(~active, 0.0, fx)
    width_old = 2.0 * np.abs(b - a)  # no forced bisection on the first step
    side = np.zeros(a.shape, dtype=np.int8)  # which end was kept last time (Illinois)
    it = 0
    for it in range(1, maxiter + 1):
        if not active.any():
            it -= 1
            break
        width = np.abs(b - a)
        mid = 0.5 * (a + b)
        # converged, or the bracket is down to adjacent floats (it cannot shrink further)
        small = (width <= tol + rtol * np.maximum(np.abs(a), np.abs(b))) | (mid == a) | (mid == b)
        active &= ~small
        if not active.any():
            break
        denom = fb - fa
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b - fb * (b - a) / denom
        # bisection safeguard: when the secant point is off, or the last step did not halve the
        # bracket (so the bracket at least halves every two iterations)
        slow = width > 0.5 * width_old
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        use_bis = slow | ~np.isfinite(c) | (c <= lo) | (c >= hi)
        c = np.where(use_bis, 0.5 * (a + b), c)
        c = np.where(active, c, x)
        fc = np.where(active, call(np.where(active, c, a)), fx)
        if np.any(active & ~np.isfinite(fc)):
            raise ValueError("fn: returned a non-finite value inside the bracket")
        width_old = width
        # update the bracket: replace the end with the same sign as fc
        same_a = np.sign(fc) == np.sign(fa)
        new_a = np.where(active & same_a, c, a)
        new_fa = np.where(active & same_a, fc, fa)
        new_b = np.where(active & ~same_a, c, b)
        new_fb = np.where(active & ~same_a, fc, fb)
        # Illinois: halve the stored value at an end retained twice in a row
        keep_b = active & same_a
        keep_a = active & ~same_a
        new_fb = np.where(keep_b & (side == 1), 0.5 * new_fb, new_fb)
        new_fa = np.where(keep_a & (side == -1), 0.5 * new_fa, new_fa)
        side = np.where(keep_b, 1, np.where(keep_a, -1, side)).astype(np.int8)
        a, fa, b, fb = new_a, new_fa, new_b, new_fb
        x = np.where(active, c, x)
        fx = np.where(active, fc, fx)
        active &= fc != 0
    width = np.abs(b - a)
    mid = 0.5 * (a + b)
    mask = (fx == 0) | (width <= tol + rtol * np.maximum(np.abs(a), np.abs(b))) | (mid == a) | (mid == b) | ~active
    mask &= np.isfinite(x)
    # return the best of the last point and the bracket ends, by the true |fn| (Illinois halving
    # alters the stored end values)
    cands = np.stack([x, a, b])
    vals = np.abs(np.stack([call(x), call(a), call(b)]))
    best = np.argmin(np.where(np.isfinite(vals), vals, np.inf), axis=0)
    x = np.take_along_axis(cands, best[None], 0)[0]
    residual = np.take_along_axis(vals, best[None], 0)[0]
    result = _pack(x, residual, it, mask, scalar, f"bracket wider than tol after {it} iterations")
    return result.check(strict, "find_root")

"""Signal propagation in deep random networks (mean-field theory of the NNGP recursion).

Poole et al. 2016, "Exponential expressivity in deep neural networks through transient
chaos", eqs. (3)-(5); Schoenholz et al. 2017, "Deep Information Propagation", eqs. (4)-(9);
Klambauer et al. 2017, "Self-Normalizing Neural Networks", Thm. 1 (SELU).

    length map     q_{l+1} = w E[phi(sqrt(q_l) z)^2] + b,       fixed point q*
    chi_1          = w E[phi'(sqrt(q*) z)^2]                     (order < 1 < chaos)
    chi_q          = dq_{l+1}/dq_l at q*  = w E[z phi phi'(sqrt q* z)] / sqrt(q*)   (Stein)
    correlation    c_{l+1} = (w E[phi(u) phi(v)] + b) / q*,  u, v ~ N(0, q* [[1, c], [c, 1]])
    chi_c          = w E[phi'(u) phi'(v)] at the fixed point c*
    depth scales   xi_q = -1/log chi_q,  xi_c = -1/log chi_c
    edge of chaos  the curve chi_1(w, b) = 1 in the (weight_var, bias_var) plane.

Limits returned rather than NaN: at b = 0 with phi(0) = 0 and w phi'(0)^2 <= 1 (tanh at
w <= 1, exactly critical at w = 1) q* = 0 and the fields are their q -> 0 limits (xi = inf
where chi = 1); positively homogeneous activations (ReLU, leaky ReLU, abs) have chi_1 = w
E[phi'^2] at every q*, so their edge is one weight variance at every bias (ReLU: 2); step
and sign have none (a ValueError says why). See docs/kernels.md, "Signal propagation".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from limitlab.numerics import gaussian
from limitlab.numerics import validation as validate
from limitlab.numerics.solvers import HasSolver, SolverResult, find_root, fixed_point
from limitlab.theory import activations as _act
from limitlab.theory.kernels.dual import Dual

__all__ = ["SignalPropagation", "signal_propagation", "length_map", "correlation_map", "edge_of_chaos"]


@dataclass
class SignalPropagation(HasSolver):
    """Mean-field quantities at the length-map fixed point (see the module docstring).

    ``solver`` reports the fixed-point iteration of q* (and the root of c*): converged,
    iterations, residual, message.
    """

    q_star: float
    chi_1: float
    chi_q: float
    c_star: float
    chi_c: float
    xi_q: float
    xi_c: float
    phase: str  # "ordered" (chi_1 < 1), "chaotic" (chi_1 > 1) or "critical"
    solver: SolverResult


def length_map(activation, q, weight_var=1.0, bias_var=0.0):
    """q -> w E[phi(sqrt(q) z)^2] + b, elementwise over arrays (broadcast)."""
    act = _act.get(activation)
    q, w, b = np.broadcast_arrays(validate.real_array(q, "q", at_least=0.0), validate.real_array(weight_var, "weight_var", at_least=0.0),
                                  validate.real_array(bias_var, "bias_var", at_least=0.0))
    return w * gaussian.expect(lambda t: act(t) ** 2, q, act.kinks) + b


def _q_star(act, w, b, q0=1.0, tol=1e-14, maxiter=20_000):
    w, b = np.broadcast_arrays(np.asarray(w, float), np.asarray(b, float))
    return fixed_point(lambda q: length_map(act, np.maximum(q, 0.0), w, b), np.full(w.shape, float(q0)),
                       tol=tol, maxiter=maxiter)


def correlation_map(activation, c, q_star, weight_var=1.0, bias_var=0.0):
    """c -> (w E[phi(u) phi(v)] + b) / q* for u, v with variance q* and correlation c."""
    d = Dual(_act.get(activation))
    c = np.asarray(c, dtype=float)
    if np.any(np.abs(c) > 1):
        raise ValueError(f"c: correlations must lie in [-1, 1], got {c!r}")
    A, _ = d.evaluate(q_star, q_star, c * q_star)
    return (weight_var * A + bias_var) / q_star


def signal_propagation(activation, weight_var=1.0, bias_var=0.0, tol: float = 1e-13,
                       maxiter: int = 20_000, strict: bool = False) -> SignalPropagation:
    """q*, chi_1, chi_q, c*, chi_c and the depth scales for one (weight_var, bias_var).

    ``strict=True`` raises ``ConvergenceError`` when q* or c* was not found."""
    act = _act.get(activation)
    w = float(validate.real_array(weight_var, "weight_var", at_least=0.0))
    b = float(validate.real_array(bias_var, "bias_var", at_least=0.0))
    res = _q_star(act, w, b, tol=tol, maxiter=maxiter)
    q = float(res.value)
    at_zero = _critical_at_zero(act, w, b, q)
    if at_zero is not None:
        return at_zero
    if not res.converged or not math.isfinite(q) or q <= 0:
        nan = float("nan")
        phase = "unbounded" if q > 1 else "collapsed"
        solver = SolverResult(q, float(res.residual), res.iterations, False,
                              message=res.message or f"the length map has no positive fixed point ({phase})")
        return SignalPropagation(q if math.isfinite(q) else math.inf, nan, nan, nan, nan, nan, nan, phase,
                                 solver.check(strict, "signal_propagation"))
    s = math.sqrt(q)
    chi_1 = w * gaussian.expect(lambda t: act.derivative(t) ** 2, q, act.kinks)
    chi_q = w * gaussian.expect(lambda t: (t / s) * act(t) * act.derivative(t), q, act.kinks) / s
    d = Dual(act)
    # c = 1 is always fixed; it is the attractor iff chi_1 <= 1 (Poole et al. 2016, sec. 3).
    # Otherwise the stable c* < 1 is the root of map(c) - c on [-1, 1 - delta], a sign change
    # since map(-1) >= -1 and the slope at 1 is chi_1 > 1.
    converged_c, message_c = True, ""
    if chi_1 <= 1 + 1e-12:
        c_star = 1.0
    else:
        g = lambda cc: correlation_map(act, cc, q, w, b) - cc  # noqa: E731
        hi = 1 - 1e-6
        if g(-1.0) == 0:
            c_star = -1.0
        else:
            cres = find_root(g, (-1.0, hi), tol=tol)
            c_star, converged_c, message_c = float(cres.value), cres.converged, cres.message
    _, Adot = d.evaluate(q, q, c_star * q)
    chi_c = w * float(Adot)
    xi = lambda chi: math.inf if chi >= 1 or chi <= 0 else -1.0 / math.log(chi)  # noqa: E731
    phase = "critical" if abs(chi_1 - 1) < 1e-9 else ("ordered" if chi_1 < 1 else "chaotic")
    solver = SolverResult(q, float(res.residual), res.iterations, bool(res.converged and converged_c),
                          message=res.message or (f"c*: {message_c}" if message_c else ""))
    return SignalPropagation(q, chi_1, chi_q, c_star, chi_c, xi(chi_q), xi(chi_c), phase,
                             solver.check(strict, "signal_propagation"))


def _phi0(act):
    zero = np.zeros(1)
    return float(act(zero)[0]), float(act.derivative(zero)[0])


def _critical_at_zero(act, w, b, q_last):
    """The exact fixed point q* = 0 of the ordered side and the edge, or None.

    With b = 0, phi(0) = 0 and w phi'(0)^2 <= 1 (tanh at w <= 1), q = 0 is a fixed point of
    the length map, approached geometrically at rate w phi'(0)^2, and only algebraically
    (q_l ~ 1/l) exactly at the edge of chaos w phi'(0)^2 = 1, where iteration stops short
    of it. The quantities are the q -> 0 limits, from phi(sqrt(q) z) = phi'(0) sqrt(q) z +
    o(sqrt q): chi_1 = chi_q = chi_c = w phi'(0)^2, c* = 1 (chi_1 <= 1: Poole et al. 2016,
    sec. 3), xi = -1/log chi, infinite at the edge (Schoenholz et al. 2017, eq. 9: there
    signals propagate to any depth). Applies only where iteration from q = 1 was heading to
    0 (its last iterate q_last below 1e-3 and the map still decreasing there).
    """
    phi0, dphi0 = _phi0(act)
    chi = w * dphi0 ** 2
    if b != 0 or phi0 != 0.0 or dphi0 == 0.0 or chi > 1 + 1e-12 or not (0 <= q_last < 1e-3):
        return None
    if q_last > 1e-12 and not length_map(act, q_last, w, 0.0) < q_last:
        return None  # a positive fixed point below 1e-3, not 0
    xi = math.inf if chi >= 1 else -1.0 / math.log(chi) if chi > 0 else 0.0
    phase = "critical" if abs(chi - 1) < 1e-9 else "ordered"
    return SignalPropagation(0.0, chi, chi, 1.0, chi, xi, xi, phase, SolverResult(0.0, 0.0, 0, True))


def edge_of_chaos(activation, bias_var, weight_var_bracket=(0.5, 10.0), tol: float = 1e-12):
    """(weight_var, converged): the critical line chi_1 = 1 at each bias_var, by bracketed root finding."""
    act = _act.get(activation)
    b = np.atleast_1d(validate.real_array(bias_var, "bias_var", at_least=0.0))
    # E[phi'(sqrt(q) z)^2] at three scales: zero means chi_1 = 0 for every w (step, sign); one
    # constant means phi' is scale free (ReLU, leaky ReLU, abs: phi positively homogeneous),
    # so chi_1 = w E[phi'^2] whatever q*, and the edge is w = 1/E[phi'^2] at every b (ReLU:
    # chi_1 = w/2, w = 2; Schoenholz et al. 2017, sec. 4; at w = 2, b > 0 the length map grows
    # without bound: q* is infinite on the edge itself)
    m = gaussian.expect(lambda t: act.derivative(t) ** 2, np.array([1e-2, 1.0, 1e2]), act.kinks)
    if np.all(m == 0):
        raise ValueError(
            f"activation: {act.name} has no edge of chaos: its almost-everywhere derivative is 0, so chi_1 = "
            "w E[phi'^2] = 0 for every weight_var, while its correlation map (a multiple of arcsin(c) plus a "
            "constant) has infinite slope at c = 1, so inputs decorrelate at every weight_var > 0: no weight "
            "variance is critical")
    if np.all(np.abs(m - m[1]) <= 1e-13 * m[1]):
        out = np.full(b.shape, 1.0 / m[1])
        return out if np.ndim(bias_var) else float(out[0]), True

    # bias_var = 0 with phi(0) = 0: q* = 0 on the ordered side and chi_1 = w phi'(0)^2 there,
    # a limit that iteration only reaches algebraically (q_l ~ 1/l at criticality)
    phi0, dphi0 = _phi0(act)
    closed = (b == 0) & (phi0 == 0.0) & (dphi0 != 0.0)

    def chi_minus_one(w):
        res = _q_star(act, w, b[~closed], maxiter=5000)
        q = np.where(res.converged_mask, res.value, 1e300)
        return w * gaussian.expect(lambda t: act.derivative(t) ** 2, q, act.kinks) - 1

    lo, hi = weight_var_bracket
    out = np.full(b.shape, np.nan)
    if np.any(closed):
        out[closed] = 1.0 / dphi0 ** 2
    ok = True
    if np.any(~closed):
        n = int(np.count_nonzero(~closed))
        res = find_root(chi_minus_one, (np.full(n, lo), np.full(n, hi)), tol=tol)
        out[~closed] = res.value
        ok = res.converged
    return out if np.ndim(bias_var) else float(out[0]), ok

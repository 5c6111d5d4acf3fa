"""The dual (kernel map) of an activation: E[phi(u)phi(v)] and E[phi'(u)phi'(v)].

(u, v) is centred Gaussian with Var u = q1, Var v = q2, Cov(u, v) = c. Closed forms come
from the activation (theory/activations.py, with sources); for every other activation the
symbolic form is the unevaluated Gaussian integral and its Mehler (Hermite) series
(Daniely, Frostig, Singer 2016, "Toward deeper understanding of neural networks", sec. 4;
O'Donnell 2014, Prop. 11.31), and the numbers come from limitlab.numerics.gaussian.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import sympy as sp

from limitlab.numerics import gaussian
from limitlab.numerics import validation as validate
from limitlab.theory import activations as _act
from limitlab.theory.activations import c, q1, q2

__all__ = ["Dual", "dual", "q1", "q2", "c"]

z1, z2 = sp.symbols("z1 z2", real=True)
k_ = sp.Symbol("k", integer=True, nonnegative=True)


@dataclass(frozen=True)
class Dual:
    """Kernel map of one activation. ``nngp`` (E[phi phi]) and ``derivative`` (E[phi' phi']) are
    sympy expressions in (q1, q2, c); ``ntk`` is a deprecated alias of ``derivative``."""

    activation: _act.Activation

    @property
    def closed_form(self) -> bool:
        return self.activation.has_closed_form

    @cached_property
    def integral(self) -> tuple:
        """The defining Gaussian integrals (unevaluated), for any activation."""
        rho = c / sp.sqrt(q1 * q2)
        u = sp.sqrt(q1) * z1
        v = sp.sqrt(q2) * (rho * z1 + sp.sqrt(1 - rho ** 2) * z2)
        dens = sp.exp(-(z1 ** 2 + z2 ** 2) / 2) / (2 * sp.pi)
        phi, dphi = self.activation.expr, self.activation.derivative_expr
        lims = ((z1, -sp.oo, sp.oo), (z2, -sp.oo, sp.oo))
        return (sp.Integral(phi.subs(_act.x, u) * phi.subs(_act.x, v) * dens, *lims),
                sp.Integral(dphi.subs(_act.x, u) * dphi.subs(_act.x, v) * dens, *lims))

    @cached_property
    def series(self) -> tuple:
        """Mehler series: sum_k alpha_k(q1) alpha_k(q2) rho^k with alpha_k(q) = E[phi(sqrt(q) z) He_k(z)]/sqrt(k!)."""
        alpha = sp.Function("alpha")
        rho = c / sp.sqrt(q1 * q2)
        s0 = sp.Sum(alpha(k_, q1) * alpha(k_, q2) * rho ** k_, (k_, 0, sp.oo))
        s1 = sp.Sum(k_ * alpha(k_, q1) * alpha(k_, q2) * rho ** (k_ - 1), (k_, 1, sp.oo)) / sp.sqrt(q1 * q2)
        return s0, s1

    @cached_property
    def _closed(self):
        return self.activation.closed_dual(q1, q2, c)

    @cached_property
    def _numpy_closed(self):
        return sp.lambdify((q1, q2, c), [self.nngp, self.derivative], modules=["numpy", "scipy"])

    @property
    def nngp(self) -> sp.Expr:
        """E[phi(u) phi(v)]: closed form if known, else the unevaluated integral."""
        return self._closed[0] if self._closed else self.integral[0]

    @property
    def derivative(self) -> sp.Expr:
        """E[phi'(u) phi'(v)] (a.e. derivative; the K-dot of the NTK recursion, not an NTK):
        closed form if known, else the unevaluated integral."""
        return self._closed[1] if self._closed else self.integral[1]

    @property
    def ntk(self) -> sp.Expr:
        """Deprecated alias of :attr:`derivative` (E[phi' phi'] is the derivative kernel, not an NTK)."""
        warnings.warn("Dual.ntk is deprecated: it is the derivative kernel E[phi'(u) phi'(v)], not an NTK; "
                      "use Dual.derivative", DeprecationWarning, stacklevel=2)
        return self.derivative

    def evaluate(self, q1_, q2_, c_, tol: float = 1e-13):
        """Numeric (E[phi phi], E[phi' phi']) on broadcast arrays of q1, q2, c (float64)."""
        a, b, cc = np.broadcast_arrays(*(validate.real_array(v, name, finite=False)
                                         for name, v in (("q1", q1_), ("q2", q2_), ("c", c_))))
        _check_cov(a, b, cc)
        if self.closed_form:
            f = self._numpy_closed
            s = np.sqrt(a * b)
            out = f(a, b, np.clip(cc, -s, s))
            return tuple(np.broadcast_to(np.asarray(o, dtype=float), a.shape).copy() for o in out)
        act = self.activation
        phi, dphi = (lambda t: act(t)), (lambda t: act.derivative(t))
        flat = [np.ravel(v) for v in (a, b, cc)]
        o0, o1 = gaussian.mehler_dual(phi, dphi, *flat, act.kinks, tol=tol, pairs=True)
        return o0.reshape(a.shape), o1.reshape(a.shape)


def _check_cov(a, b, cc):
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(cc))):
        raise ValueError("q1, q2, c: must be finite")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("q1, q2: variances must be > 0")
    if np.any(cc * cc > a * b * (1 + 1e-12)):
        raise ValueError("c: must satisfy c^2 <= q1 q2 (a covariance)")


def dual(activation, **params) -> Dual:
    """The kernel map of ``activation`` (a name, a sympy expression in one symbol, or an Activation)."""
    return Dual(_act.get(activation, **params))

"""Activations, each with its kernel map (dual) beside it.

An :class:`Activation` carries

* ``expr`` — the activation as a plain sympy expression in the symbol :data:`x`;
* ``__call__`` / ``derivative`` — array-API evaluation (NumPy, CuPy, PyTorch, …) used by
  the Monte Carlo networks of ``limitlab.verify``;
* ``closed_dual(q1, q2, c)`` — where one exists, the pair
  ``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` for centred Gaussian ``(u, v)`` with
  ``Var u = q1, Var v = q2, Cov(u, v) = c`` as sympy expressions. ``phi'`` is the
  almost-everywhere derivative, as autodiff and neural-tangents use it (so ``sign`` and
  ``step`` have a zero derivative kernel).

Sources of the closed forms (see docs/kernels.md): Cho & Saul 2009 (arc-cosine kernels,
ReLU / step / rectified monomials); Williams 1997 (erf); Tsuchida et al. 2020 (GELU);
Novak et al. 2020, Neural Tangents (ABReLU, Sin, Exp, Gaussian, Sign conventions);
Isserlis 1918 (polynomials). Everything else is evaluated numerically by
``limitlab.numerics.gaussian``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional, Sequence

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from limitlab.numerics import arrays
from limitlab.numerics import validation as validate

x = sp.Symbol("x", real=True)
q1, q2, c = sp.symbols("q1 q2 c", real=True)

__all__ = ["Activation", "get", "available", "x", "q1", "q2", "c"]


def _num(v):
    """A parameter as an exact rational when it is a simple one (0.1 -> 1/10), else a Float."""
    r = sp.nsimplify(v)
    if isinstance(r, sp.Rational) and max(abs(r.p), r.q) < 10 ** 6 or not isinstance(r, sp.Rational) and r.is_number \
            and len(str(r)) < 20:
        return r
    return sp.Float(v, 17)


def _theta(q1_, q2_, c_):
    return sp.acos(c_ / sp.sqrt(q1_ * q2_))


def _arccos_J(n: int, th):
    """Cho & Saul 2009, eq. (7): J_n(theta) = (-1)^n sin^(2n+1) (1/sin d/dtheta)^n ((pi - theta)/sin)."""
    t = sp.Symbol("t", real=True)
    f = (sp.pi - t) / sp.sin(t)
    for _ in range(n):
        f = sp.diff(f, t) / sp.sin(t)
    J = sp.simplify((-1) ** n * sp.sin(t) ** (2 * n + 1) * f)
    return J.subs(t, th)


def _cs_gap(q1_, q2_, c_):
    """q1 q2 - c^2 (>= 0, Cauchy-Schwarz) as max(., 0): one unflattened term, which the compiled
    path (numerics.recursion) replaces by r^2, r = sqrt((t - c)(t + c)), t = sqrt(q1 q2), its
    Cauchy-Schwarz root computed without cancellation (0 for parallel inputs)."""
    return sp.Max(q1_ * q2_ - c_ ** 2, 0)


def _gaussian_pair_moment(f_u: sp.Expr, f_v: sp.Expr, q1_, q2_, c_) -> sp.Expr:
    """E[f(u) g(v)] for polynomials f, g by Isserlis: write v = (c/q1) u + s z, z independent."""
    u, z = sp.symbols("u_ z_", real=True)
    s2 = q2_ - c_ ** 2 / q1_
    poly = sp.Poly(sp.expand(f_u.subs(x, u) * f_v.subs(x, c_ / q1_ * u + z)), u, z)
    total = sp.Integer(0)
    for (a, b), coef in poly.terms():
        if a % 2 or b % 2:
            continue
        total += coef * q1_ ** sp.Rational(a, 2) * sp.factorial2(a - 1) * s2 ** sp.Rational(b, 2) * sp.factorial2(b - 1)
    return sp.factor(sp.cancel(sp.expand(total)))


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity with its symbolic form, numerics and kernel map."""

    name: str
    expr: sp.Expr
    params: tuple = ()
    kinks: tuple = (0.0,)
    _xp_fn: Optional[Callable] = field(default=None, repr=False, compare=False)
    _xp_deriv: Optional[Callable] = field(default=None, repr=False, compare=False)
    _dual: Optional[Callable] = field(default=None, repr=False, compare=False)
    # numerically stable but equal form for compiled scalar code (None: use expr)
    _stable_expr: Optional[sp.Expr] = field(default=None, repr=False, compare=False)

    # -- symbolic -----------------------------------------------------------------
    @cached_property
    def derivative_expr(self) -> sp.Expr:
        """phi'(x), the almost-everywhere derivative."""
        d = sp.diff(self.expr, x)
        # sign/step: derivative is a distribution; a.e. it is zero (neural-tangents' convention)
        d = d.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
        return sp.piecewise_fold(d)

    @property
    def has_closed_form(self) -> bool:
        return self._dual is not None

    def closed_dual(self, q1_=q1, q2_=q2, c_=c):
        """(E[phi(u)phi(v)], E[phi'(u)phi'(v)]) in closed form, or None."""
        if self._dual is None:
            return None
        return self._dual(q1_, q2_, c_)

    @cached_property
    def scalar_exprs(self) -> tuple:
        """(phi, phi') as sympy expressions suitable for compiled scalar code."""
        base = self._stable_expr if self._stable_expr is not None else self.expr
        d = sp.diff(base, x).replace(sp.DiracDelta, lambda *a: sp.Integer(0))
        return base, sp.piecewise_fold(d)

    # -- numeric (array API) ----------------------------------------------------------
    def __call__(self, z, xp=None):
        xp = xp or arrays.namespace(z)
        if self._xp_fn is not None:
            return self._xp_fn(z, xp)
        return self._lambdified(self.scalar_exprs[0], xp)(z)

    def derivative(self, z, xp=None):
        xp = xp or arrays.namespace(z)
        if self._xp_deriv is not None:
            return self._xp_deriv(z, xp)
        return self._lambdified(self.scalar_exprs[1], xp)(z)

    def _lambdified(self, expr, xp):
        mapping = {
            name: getattr(xp, name)
            for name in ("exp", "tanh", "log", "sqrt", "sin", "cos", "abs", "sinh", "cosh", "expm1", "log1p")
            if hasattr(xp, name)
        }
        mapping["erf"] = lambda t: arrays.erf(t, xp)
        mapping["Abs"] = xp.abs
        f = sp.lambdify(x, _piecewise_to_where(expr), modules=[mapping, {"where": xp.where, "pi": math.pi}])
        return lambda z: f(z) + xp.zeros_like(z)  # constants broadcast to z's shape

    def __repr__(self) -> str:
        return f"Activation({self.name})"


def _piecewise_to_where(expr):
    """Rewrite Piecewise as nested `where` calls so lambdify works with any namespace."""
    where = sp.Function("where")

    def conv(e):
        if isinstance(e, sp.Piecewise):
            out = conv(e.args[-1][0])
            for val, cond in reversed(e.args[:-1]):
                out = where(cond, conv(val), out)
            return out
        if e.args:
            return e.func(*[conv(a) for a in e.args])
        return e

    return conv(expr)


# ----------------------------------------------------------------------------------
# Closed-form families
# ----------------------------------------------------------------------------------

def abrelu(a: float = 0.0, b: float = 1.0, name: Optional[str] = None) -> Activation:
    """phi(x) = a min(x, 0) + b max(x, 0) (neural-tangents ABRelu; Cho & Saul 2009 degree 1)."""
    a_, b_ = _num(a), _num(b)

    def dual(q1_, q2_, c_):
        th = _theta(q1_, q2_, c_)
        nngp = a_ * b_ * c_ + (b_ - a_) ** 2 * sp.sqrt(q1_ * q2_) * (sp.sin(th) + (sp.pi - th) * sp.cos(th)) / (2 * sp.pi)
        ntk = a_ * b_ + (b_ - a_) ** 2 * (sp.pi - th) / (2 * sp.pi)
        return nngp, ntk

    expr = sp.Piecewise((b_ * x, x > 0), (a_ * x, True))
    return Activation(
        name or f"abrelu({a},{b})", expr, (a, b), (0.0,),
        lambda z, xp: a * xp.minimum(z, 0.0) + b * xp.maximum(z, 0.0),
        lambda z, xp: xp.where(z > 0, b + 0.0 * z, a + 0.0 * z),
        dual,
    )


def rectified_monomial(degree: int) -> Activation:
    """phi(x) = max(x, 0)^n; arc-cosine kernel of degree n (Cho & Saul 2009, eqs. 6-7)."""
    n = validate.integer(degree, "degree", minimum=0)

    def dual(q1_, q2_, c_):
        th = _theta(q1_, q2_, c_)
        nngp = (q1_ * q2_) ** sp.Rational(n, 2) * _arccos_J(n, th) / (2 * sp.pi)
        if n == 0:
            return nngp, sp.Integer(0)
        ntk = n ** 2 * (q1_ * q2_) ** sp.Rational(n - 1, 2) * _arccos_J(n - 1, th) / (2 * sp.pi)
        return nngp, ntk

    expr = sp.Piecewise((x ** n if n else 1, x > 0), (0, True))
    return Activation(
        "step" if n == 0 else f"rectified_monomial({n})", expr, (n,), (0.0,),
        lambda z, xp: xp.where(z > 0, z ** n if n else 1.0 + 0.0 * z, 0.0 * z),
        lambda z, xp: xp.where(z > 0, n * z ** (n - 1) if n else 0.0 * z, 0.0 * z),
        dual,
    )


def sign() -> Activation:
    """phi(x) = sign(x): E = (2/pi) arcsin(rho); a.e. derivative zero (neural-tangents Sign)."""

    def dual(q1_, q2_, c_):
        return 2 / sp.pi * sp.asin(c_ / sp.sqrt(q1_ * q2_)), sp.Integer(0)

    return Activation(
        "sign", sp.sign(x), (), (0.0,), lambda z, xp: xp.sign(z), lambda z, xp: 0.0 * z, dual,
    )


def erf(a: float = 1.0, b: float = 1.0, c0: float = 0.0, name: Optional[str] = None) -> Activation:
    """phi(x) = a erf(b x) + c0 (Williams 1997; neural-tangents Erf)."""
    a_, b_, c_0 = _num(a), _num(b), _num(c0)

    def dual(q1_, q2_, c_):
        # Williams 1997: (2/pi) asin(2b^2 c / sqrt(d1 d2)) and 4b^2/(pi sqrt(d1 d2 - 4b^4 c^2)),
        # d = 1 + 2b^2 q. Written with d1 d2 - 4b^4 c^2 = 1 + 2b^2 (q1 + q2) + 4b^4 (q1 q2 - c^2)
        # (asin(x / sqrt(x^2 + y^2)) = atan(x / y), y > 0): as printed, d1 d2 - 4b^4 c^2 cancels
        # to 1 + 4q from terms of 4q^2 on the diagonal (all digits gone at q = 1e8, zero or
        # negative, hence NaN, beyond); here every term is >= 0, and the compiled path takes
        # q1 q2 - c^2 as the square of its Cauchy-Schwarz root, computed without cancellation
        rest = 1 + 2 * b_ ** 2 * (q1_ + q2_) + 4 * b_ ** 4 * _cs_gap(q1_, q2_, c_)
        nngp = a_ ** 2 * 2 / sp.pi * sp.atan(2 * b_ ** 2 * c_ / sp.sqrt(rest)) + c_0 ** 2
        ntk = a_ ** 2 * b_ ** 2 * 4 / sp.pi / sp.sqrt(rest)
        return nngp, ntk

    return Activation(
        name or f"erf({a},{b},{c0})", a_ * sp.erf(b_ * x) + c_0, (a, b, c0), (),
        lambda z, xp: a * arrays.erf(b * z, xp) + c0,
        lambda z, xp: a * b * 2.0 / math.sqrt(math.pi) * xp.exp(-(b * z) ** 2),
        dual,
    )


def sin(a: float = 1.0, b: float = 1.0, c0: float = 0.0, name: Optional[str] = None) -> Activation:
    """phi(x) = a sin(b x + c0) (neural-tangents Sin)."""
    a_, b_, c_0 = _num(a), _num(b), _num(c0)

    def dual(q1_, q2_, c_):
        minus = sp.exp(-b_ ** 2 * (q1_ + q2_ - 2 * c_) / 2)
        plus = sp.exp(-b_ ** 2 * (q1_ + q2_ + 2 * c_) / 2)
        nngp = a_ ** 2 / 2 * (minus - sp.cos(2 * c_0) * plus)
        ntk = a_ ** 2 * b_ ** 2 / 2 * (minus + sp.cos(2 * c_0) * plus)
        return nngp, ntk

    return Activation(
        name or f"sin({a},{b},{c0})", a_ * sp.sin(b_ * x + c_0), (a, b, c0), (),
        lambda z, xp: a * xp.sin(b * z + c0), lambda z, xp: a * b * xp.cos(b * z + c0), dual,
    )


def cos(a: float = 1.0, b: float = 1.0, c0: float = 0.0) -> Activation:
    """phi(x) = a cos(b x + c0) = a sin(b x + c0 + pi/2) (neural-tangents Cos)."""
    s = sin(a, b, c0 + math.pi / 2)
    a_, b_, c_0 = _num(a), _num(b), _num(c0)
    return Activation(
        f"cos({a},{b},{c0})", a_ * sp.cos(b_ * x + c_0), (a, b, c0), (),
        lambda z, xp: a * xp.cos(b * z + c0), lambda z, xp: -a * b * xp.sin(b * z + c0),
        lambda q1_, q2_, c_: _cos_dual(a_, b_, c_0, q1_, q2_, c_),
    )


def _cos_dual(a_, b_, c_0, q1_, q2_, c_):
    minus = sp.exp(-b_ ** 2 * (q1_ + q2_ - 2 * c_) / 2)
    plus = sp.exp(-b_ ** 2 * (q1_ + q2_ + 2 * c_) / 2)
    return a_ ** 2 / 2 * (minus + sp.cos(2 * c_0) * plus), a_ ** 2 * b_ ** 2 / 2 * (minus - sp.cos(2 * c_0) * plus)


def exp(a: float = 1.0, b: float = 1.0) -> Activation:
    """phi(x) = a exp(b x) (neural-tangents Exp)."""
    a_, b_ = _num(a), _num(b)

    def dual(q1_, q2_, c_):
        e = sp.exp(b_ ** 2 * (q1_ + q2_ + 2 * c_) / 2)
        return a_ ** 2 * e, a_ ** 2 * b_ ** 2 * e

    return Activation(
        f"exp({a},{b})", a_ * sp.exp(b_ * x), (a, b), (),
        lambda z, xp: a * xp.exp(b * z), lambda z, xp: a * b * xp.exp(b * z), dual,
    )


def gaussian(a: float = 1.0, b: float = -1.0) -> Activation:
    """phi(x) = a exp(b x^2) (neural-tangents Gaussian); needs 1 - 2 b q > 0."""
    a_, b_ = _num(a), _num(b)

    def dual(q1_, q2_, c_):
        det = (1 - 2 * b_ * q1_) * (1 - 2 * b_ * q2_) - 4 * b_ ** 2 * c_ ** 2
        nngp = a_ ** 2 / sp.sqrt(det)
        # E[u v e^{b u^2 + b v^2}] = c / det^{3/2}: the covariance of the tilted Gaussian
        ntk = 4 * a_ ** 2 * b_ ** 2 * c_ / det ** sp.Rational(3, 2)
        return nngp, ntk

    return Activation(
        f"gaussian({a},{b})", a_ * sp.exp(b_ * x ** 2), (a, b), (),
        lambda z, xp: a * xp.exp(b * z * z), lambda z, xp: 2 * a * b * z * xp.exp(b * z * z), dual,
    )


def gelu() -> Activation:
    """phi(x) = x Phi(x) (exact GELU); kernel of Tsuchida et al. 2020, as in neural-tangents Gelu."""

    def dual(q1_, q2_, c_):
        # Tsuchida et al. 2020 with delta^2 = (1 + q1)(1 + q2) - c^2 written 1 + q1 + q2 +
        # (q1 q2 - c^2) and (1 - q1 q2)/(p1 p2) + 1 written (2 + q1 + q2)/(p1 p2): terms >= 0,
        # no cancellation at large q (as printed, delta^2 is lost at q = 1e8; see erf)
        p1, p2 = q1_ + 1, q2_ + 1
        delta2 = 1 + q1_ + q2_ + _cs_gap(q1_, q2_, c_)
        delta = sp.sqrt(delta2)
        ang = sp.atan(c_ / delta)
        # (c^2 + q1 q2 delta^2)/(p1 p2 delta) split in two, so no product of four variances overflows
        nngp = (c_ ** 2 / (p1 * p2 * delta) + q1_ / p1 * (q2_ / p2) * delta + c_ * ang) / (2 * sp.pi) + c_ / 4
        ntk = c_ / delta / (2 * sp.pi) * (1 / delta2 + (2 + q1_ + q2_) / (p1 * p2)) + sp.Rational(1, 4) + ang / (2 * sp.pi)
        return nngp, ntk

    expr = x * (1 + sp.erf(x / sp.sqrt(2))) / 2
    return Activation(
        "gelu", expr, (), (),
        lambda z, xp: 0.5 * z * (1.0 + arrays.erf(z / arrays.SQRT2, xp)),
        lambda z, xp: 0.5 * (1.0 + arrays.erf(z / arrays.SQRT2, xp)) + z * xp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
        dual,
    )


def polynomial(coefficients: Sequence[float], name: Optional[str] = None) -> Activation:
    """phi(x) = sum_k coefficients[k] x^k; kernel map by Isserlis' theorem."""
    coefficients = [_num(a) for a in coefficients]
    if not coefficients:
        raise ValueError("coefficients: need at least one coefficient, got an empty sequence")
    expr = sum((a * x ** k for k, a in enumerate(coefficients)), sp.Integer(0))

    def dual(q1_, q2_, c_):
        d = sp.diff(expr, x)
        return _gaussian_pair_moment(expr, expr, q1_, q2_, c_), _gaussian_pair_moment(d, d, q1_, q2_, c_)

    fc = [float(a) for a in coefficients]

    def fn(z, xp):
        out = 0.0 * z
        for a in reversed(fc):
            out = out * z + a
        return out

    def deriv(z, xp):
        out = 0.0 * z
        for k in range(len(fc) - 1, 0, -1):
            out = out * z + k * fc[k]
        return out

    return Activation(name or f"polynomial({','.join(map(str, fc))})", expr, tuple(fc), (), fn, deriv, dual)


def monomial(degree: int) -> Activation:
    """phi(x) = x^n (neural-tangents Monomial)."""
    n = validate.integer(degree, "degree", minimum=0)
    return polynomial([0] * n + [1], name=f"monomial({n})")


def hermite(degree: int) -> Activation:
    """phi(x) = He_n(x)/sqrt(n!), the normalized probabilists' Hermite polynomial."""
    n = validate.integer(degree, "degree", minimum=0)
    coeffs = sp.Poly(sp.hermite_prob(n, x) / sp.sqrt(sp.factorial(n)), x).all_coeffs()[::-1]
    return polynomial(coeffs, name=f"hermite({n})")


def identity() -> Activation:
    return polynomial([0, 1], name="identity")


# ----------------------------------------------------------------------------------
# Activations without a closed-form kernel: evaluated by the Gaussian-expectation engine
# ----------------------------------------------------------------------------------

def _softplus_stable(t):
    return sp.Piecewise((t + log1p(sp.exp(-t)), t > 0), (log1p(sp.exp(t)), True))


def numerical(expr: sp.Expr, name: Optional[str] = None, kinks: Sequence[float] = (0.0,),
              stable_expr: Optional[sp.Expr] = None, xp_fn=None, xp_deriv=None) -> Activation:
    """An activation given as a sympy expression in one symbol, without a closed-form dual."""
    if not isinstance(expr, sp.Expr):
        raise TypeError(f"activation: expected a sympy expression, got {type(expr).__name__}")
    free = expr.free_symbols
    if len(free) > 1:
        raise ValueError(
            f"activation: an expression must have exactly one free symbol, got {sorted(map(str, free))}")
    if free:
        (sym,) = free
        expr = expr.subs(sym, x)
    return Activation(name or str(expr), expr, (), tuple(float(k) for k in kinks), xp_fn, xp_deriv, None, stable_expr)


def _named_numerical():
    sig = lambda t: 1 / (1 + sp.exp(-t))  # noqa: E731
    alpha_selu = sp.Float("1.6732632423543772848170429916717")
    lam_selu = sp.Float("1.0507009873554804934193349852946")

    def elu_expr(alpha, scale=1):
        return scale * sp.Piecewise((x, x > 0), (alpha * (sp.exp(x) - 1), True))

    def elu_stable(alpha, scale=1):
        return scale * sp.Piecewise((x, x > 0), (alpha * expm1(x), True))

    return {
        "tanh": lambda: numerical(sp.tanh(x), "tanh", kinks=(),
                                  xp_fn=lambda z, xp: xp.tanh(z),
                                  xp_deriv=lambda z, xp: 1.0 - xp.tanh(z) ** 2),
        "sigmoid": lambda: numerical(sig(x), "sigmoid", kinks=(),
                                     xp_fn=lambda z, xp: 0.5 * (1.0 + xp.tanh(0.5 * z)),
                                     xp_deriv=lambda z, xp: 0.25 * (1.0 - xp.tanh(0.5 * z) ** 2)),
        "softplus": lambda: numerical(sp.log(1 + sp.exp(x)), "softplus", kinks=(),
                                      stable_expr=_softplus_stable(x),
                                      xp_fn=lambda z, xp: xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))),
                                      xp_deriv=lambda z, xp: 0.5 * (1.0 + xp.tanh(0.5 * z))),
        "silu": lambda: numerical(x * sig(x), "silu", kinks=(),
                                  xp_fn=lambda z, xp: z * 0.5 * (1.0 + xp.tanh(0.5 * z)),
                                  xp_deriv=lambda z, xp: _silu_deriv(z, xp)),
        "elu": lambda: numerical(elu_expr(1), "elu", stable_expr=elu_stable(1),
                                 xp_fn=lambda z, xp: xp.where(z > 0, z, xp.expm1(xp.minimum(z, 0.0))),
                                 xp_deriv=lambda z, xp: xp.where(z > 0, 1.0 + 0.0 * z, xp.exp(xp.minimum(z, 0.0)))),
        "selu": lambda: numerical(elu_expr(alpha_selu, lam_selu), "selu", stable_expr=elu_stable(alpha_selu, lam_selu),
                                  xp_fn=lambda z, xp: float(lam_selu) * xp.where(
                                      z > 0, z, float(alpha_selu) * xp.expm1(xp.minimum(z, 0.0))),
                                  xp_deriv=lambda z, xp: float(lam_selu) * xp.where(
                                      z > 0, 1.0 + 0.0 * z, float(alpha_selu) * xp.exp(xp.minimum(z, 0.0)))),
        "mish": lambda: numerical(x * sp.tanh(sp.log(1 + sp.exp(x))), "mish", kinks=(),
                                  stable_expr=x * sp.tanh(_softplus_stable(x)),
                                  xp_fn=lambda z, xp: z * xp.tanh(_xp_softplus(z, xp)),
                                  xp_deriv=_mish_deriv),
    }


def _xp_softplus(z, xp):
    return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z)))


def _mish_deriv(z, xp):
    t = xp.tanh(_xp_softplus(z, xp))
    return t + z * (1.0 - t * t) * 0.5 * (1.0 + xp.tanh(0.5 * z))


def _silu_deriv(z, xp):
    s = 0.5 * (1.0 + xp.tanh(0.5 * z))
    return s * (1.0 + z * (1.0 - s))


_CLOSED = {
    "relu": lambda: abrelu(0.0, 1.0, name="relu"),
    "abs": lambda: abrelu(-1.0, 1.0, name="abs"),
    "step": lambda: rectified_monomial(0),
    "sign": sign,
    "sigmoid_like": lambda: erf(0.5, 1 / 2.4020563531719796, 0.5, name="sigmoid_like"),
    "identity": identity,
    "linear": identity,
    "gelu": gelu,
}
_FAMILIES = {
    "erf": lambda a=1.0, b=1.0, c0=0.0: erf(a, b, c0, name="erf" if (a, b, c0) == (1.0, 1.0, 0.0) else None),
    "sin": lambda a=1.0, b=1.0, c0=0.0: sin(a, b, c0, name="sin" if (a, b, c0) == (1.0, 1.0, 0.0) else None),
    "cos": cos,
    "exp": exp,
    "gaussian": gaussian,
    "leaky_relu": lambda alpha=0.01: abrelu(alpha, 1.0, name=f"leaky_relu({alpha})"),
    "abrelu": abrelu,
    "rectified_monomial": rectified_monomial,
    "monomial": monomial,
    "polynomial": polynomial,
    "hermite": hermite,
    "rbf": lambda gamma=1.0: sin(math.sqrt(2.0), math.sqrt(2.0 * gamma), math.pi / 4, name=f"rbf({gamma})"),
}
_NUMERICAL = _named_numerical()
_NUMERICAL["swish"] = _NUMERICAL["silu"]


def available() -> list:
    """Names accepted by :func:`get` (families take parameters: ``get("leaky_relu", alpha=0.1)``)."""
    return sorted(set(_CLOSED) | set(_FAMILIES) | set(_NUMERICAL))


def get(activation, **params) -> Activation:
    """Resolve an activation given by name, as a sympy expression, or as an Activation."""
    if isinstance(activation, Activation):
        if params:
            raise TypeError("activation: parameters can only be given with a name")
        return activation
    if isinstance(activation, sp.Expr):
        if params:
            raise TypeError("activation: parameters can only be given with a name")
        return numerical(activation)
    if isinstance(activation, str):
        key = activation.strip().lower().replace("-", "_")
        if key in _FAMILIES:
            return _FAMILIES[key](**params)
        table = _CLOSED if key in _CLOSED else _NUMERICAL if key in _NUMERICAL else None
        if table is None:
            raise ValueError(f"activation: unknown name {activation!r}; allowed: {', '.join(available())}, "
                             "or a sympy expression in one symbol")
        if params:
            raise TypeError(f"activation: {activation!r} takes no parameters, got {sorted(params)}")
        return table[key]()
    raise TypeError(f"activation: expected a name, a sympy expression or an Activation, got {type(activation).__name__}")

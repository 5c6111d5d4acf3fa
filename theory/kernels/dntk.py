"""The dNTK and ddNTKs of wide MLPs at order 1/n, one input (Roberts, Yaida & Hanin 2022, "The
Principles of Deep Learning Theory" (PDLT), ch. 11): the statistics that drive the NTK's change
in training.

Conventions (docs/dntk.md): ``MLP(depth=L)``, NTK parametrization, every hidden width n, one input
x, pre-activations z^l_i of layer l (1..L hidden, L + 1 the scalar output f). With the NTK
parametrization's learning-rate tensor lambda (c_W = w_l / fan_in on the weights of Dense layer l,
c_b = b_l on its biases: Thetahat = sum_mu lambda_mu (df/dtheta_mu)^2 is the NTK of
``limitlab.verify.montecarlo.sample_kernels``), the dNTK and ddNTKs of layer l are

    dH_{i0 i1 i2}        = sum lambda lambda (d2 z_i0)(dz_i1)(dz_i2),
    ddI_{i0 i1 i2 i3}    = sum lambda lambda lambda (d3 z_i0)(dz_i1)(dz_i2)(dz_i3),
    ddII_{i1 i2 i3 i4}   = sum lambda lambda lambda (d2 z_i1 / dmu1 dmu3)(d2 z_i2 / dmu2 dmu3)
                           (dz_i3 / dmu1)(dz_i4 / dmu2);

at the output, in the coordinates where lambda = 1 (g = grad f, H = Hess f): dH = g^T H g,
ddII = |H g|^2, ddI = f'''[g, g, g]. Under gradient flow on (f - y)^2 / 2 with the one input,
dThetahat/dt = -2 eta (f - y) dH. E[dH] = 0 (it is odd in the readout); the leading statistics,
with coefficients re-derived here (docs/dntk.md):

    n E[dH_{i0 i1 i2} z_i3]   -> (d01 d23 + d02 d13) P + d03 d12 Q,
    n E[ddI_{i0 i1 i2 i3}]    -> (d01 d23 + d02 d13 + d03 d12) R,
    n E[ddII_{i1 i2 i3 i4}]   -> d12 d34 U1 + d13 d24 U2 + d14 d23 U3,

so at the output n E[dH f] -> 2 P + Q, n E[ddI] -> 3 R, n E[ddII] -> U1 + U2 + U3, and the NTK's
mean velocity at initialization is -2 eta (2 P + Q) / n. The recursion (C_W = w_l, moments <.>
over z ~ N(0, K^l), layer-l quantities on the right, all zero at layer 1;
alpha = phi phi' + Theta phi'' phi', p = <phi'^2>, e = <z phi phi'> / K, e' = <z alpha> / K):

    P' = C_W^2 [ <phi^2 phi'^2> Theta + <phi'' phi'^2 phi> Theta^2 + F e e' + P p e ],
    Q' = C_W^2 [ <phi'' phi'^2 phi> Theta^2 + B <phi'' phi> p + Q p e ],
    R' = C_W^2 [ <phi'' phi'^2 phi> Theta^2 + <phi''' phi'^3> Theta^3 + B p (<phi'' phi> + Theta <phi''' phi'>)
                 + Q p e' + R p^2 ],
    U1' = B' + C_W^2 [ <phi''^2 phi'^2> Theta^3 + B Theta <phi''^2> p + U1 p^2 ],
    U2' = C_W^2 [ Theta <alpha^2> + F e'^2 + 2 P p e' + U2 p^2 ],
    U3' = C_W^2 [ <phi''^2 phi'^2> Theta^3 + U3 p^2 ],

with Theta, B, F the NTK's limit and fluctuation tensors (docs/finite_width.md, "The NTK"), which
``finite_width``'s NTK recursion supplies (it runs :func:`dntk_layer_step` in its layer loop). The dNTK's phi'' moments are taken in the
integrated-by-parts (Stein) form, E[h'(z) s(z)] = E[z h s] / K - E[h s'], so only phi and phi'
are evaluated (exact for smooth phi; for ReLU-like activations they vanish, the delta of phi''
sitting where z = phi = 0); phi''' enters only as <phi''' phi'^3> = <z phi'' phi'^3> / K
- 3 <phi''^2 phi'^2> and <phi''' phi'> = <z phi'' phi'> / K - <phi''^2>. The ddNTKs contain
phi''^2, whose smooth limit diverges at a kink: for kinked activations they are the a.e. ones
(phi'' = 0 at the kink, the Hessian a ReLU network has almost everywhere). Moments by
:func:`limitlab.numerics.gaussian_moments.one_input_derivatives` (the engine's graded 1-D rule, cut
at the kinks).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from limitlab.numerics import gaussian_moments
from limitlab.numerics import validation as validate
from limitlab.theory.kernels.mlp import MLP, _check_inputs

__all__ = ["dntk_single_input", "dntk_layer_step", "DNTK", "COEFFICIENTS"]

COEFFICIENTS = ("P", "Q", "R", "U1", "U2", "U3")


@dataclass(frozen=True)
class DNTK:
    """``dntk_single_input(net, X)``: the dNTK's and ddNTKs' 1/n coefficients per layer and input
    (module docstring).

    Arrays are (depth + 1, N): row l - 1 is layer l (1-based; the last row is the output), column
    a the input X[a]. ``ntk`` is Theta^l (the limiting NTK of layer l's pre-activations),
    ``ntk_fluctuations`` B^l and F^l (docs/finite_width.md), which the recursion carries.
    """

    depth: int
    P: np.ndarray  # n E[dH_{i0 i1 i2} z_i3] -> (d01 d23 + d02 d13) P + d03 d12 Q
    Q: np.ndarray
    R: np.ndarray  # n E[ddI_{i0 i1 i2 i3}] -> (d01 d23 + d02 d13 + d03 d12) R
    U1: np.ndarray  # n E[ddII_{i1 i2 i3 i4}] -> d12 d34 U1 + d13 d24 U2 + d14 d23 U3
    U2: np.ndarray
    U3: np.ndarray
    ntk: np.ndarray
    ntk_fluctuations: dict  # {"B": (depth + 1, N), "F": (depth + 1, N)}

    @property
    def output(self) -> np.ndarray:
        """2 P + Q at the output, per input: n E[dH f] -> 2 P^{L+1} + Q^{L+1}."""
        return 2 * self.P[-1] + self.Q[-1]

    @property
    def ddI_output(self) -> np.ndarray:
        """3 R at the output: n E[ddI] -> 3 R^{L+1} (the third derivative of f on three gradients)."""
        return 3 * self.R[-1]

    @property
    def ddII_output(self) -> np.ndarray:
        """U1 + U2 + U3 at the output: n E[|Hess(f) g|^2] -> U1 + U2 + U3."""
        return self.U1[-1] + self.U2[-1] + self.U3[-1]

    def expected_dntk_output(self, width) -> np.ndarray:
        """E[dH f] = (2 P + Q) / n to leading order (per input)."""
        return self.output / _width(width)

    def expected_ddntk_output(self, width):
        """(E[ddI], E[ddII]) = (3 R, U1 + U2 + U3) / n to leading order (per input)."""
        n = _width(width)
        return self.ddI_output / n, self.ddII_output / n

    def ntk_velocity(self, width, lr=1.0) -> np.ndarray:
        """E[dThetahat/dt] at initialization under gradient flow on (f(x) - y)^2 / 2 with the one
        input x (any target y: E[dH] = 0): -2 eta (2 P + Q) / n to leading order."""
        eta = validate.real(lr, "lr", at_least=0)
        return -2 * eta * self.expected_dntk_output(width)


def _width(width) -> float:
    return validate.real(width, "width", at_least=1, finite=False)


@lru_cache(maxsize=None)
def _second_derivative(act):
    """phi'' as a NumPy function: the a.e. second derivative of the activation's expression (a
    kink's delta dropped, as ``Activation.derivative_expr`` drops a jump's)."""
    from limitlab.theory import activations

    expr = sp.diff(act.scalar_exprs[0], activations.x, 2).replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    return act._lambdified(sp.piecewise_fold(expr), np)


def _moments(act, K):
    """Per input, at z ~ N(0, K): <phi^2>, <phi'^2>, <phi'^4>, <phi^2 phi'^2>, <z phi phi'>,
    <z phi phi'^3>, <z^2 phi'^2>, <phi''^2 phi'^2>, <z phi'' phi'^3>, <phi''^2>."""
    phi, dphi, ddphi = act, act.derivative, _second_derivative(act)
    fs = [lambda z: phi(z) ** 2, lambda z: dphi(z) ** 2, lambda z: dphi(z) ** 4, lambda z: (phi(z) * dphi(z)) ** 2,
          lambda z: z * phi(z) * dphi(z), lambda z: z * phi(z) * dphi(z) ** 3, lambda z: (z * dphi(z)) ** 2,
          lambda z: (ddphi(z) * dphi(z)) ** 2, lambda z: z * ddphi(z) * dphi(z) ** 3, lambda z: ddphi(z) ** 2]
    out = np.zeros((len(fs), K.size))
    pos = K > 0  # K = 0: z = 0, and every quantity below is multiplied by Theta = 0 (docs/dntk.md)
    if pos.any():
        # all inputs at once, interpolated in log q: one rule evaluation per node set, not per input
        out[:, pos] = gaussian_moments.one_input_derivatives_many(fs, K[pos], act.kinks)[:, :, 0].T
    return out


def dntk_layer_step(activation, weight_var, K, Theta, B, F, state: dict) -> dict:
    """One layer of the recursion (module docstring), per input: K, Theta, B, F and ``state``
    (a dict of P, Q, R, U1, U2, U3; missing keys count as 0) at layer l, ``weight_var`` the
    C_W = w_l of Dense layer l; returns the dict at layer l + 1."""
    from limitlab.theory import activations

    act = activations.get(activation)
    K, Theta, B, F = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (K, Theta, B, F))
    unknown = set(state) - set(COEFFICIENTS)
    if unknown:
        raise ValueError(f"state: unknown keys {sorted(unknown)}; allowed: {', '.join(COEFFICIENTS)}")
    st = [np.broadcast_to(np.asarray(state.get(k, 0.0), dtype=float), K.shape) for k in COEFFICIENTS]
    return dict(zip(COEFFICIENTS, _step(float(weight_var), K, Theta, B, F, st, _moments(act, K))))


def _step(w, K, Th, B, F, st, m):
    P, Q, R, U1, U2, U3 = st
    _, p, q4, c22, e, zpd3, z2d2, s22, zdd3, s2 = m
    Ks = np.where(K > 0, K, 1.0)  # K = 0 layers have Theta = B = F = ... = 0: their terms vanish
    e = e / Ks  # <z phi phi'> / K
    a = (zpd3 / Ks - q4) / 3  # <phi'' phi'^2 phi>
    bz = z2d2 / (2 * Ks) - p / 2  # <z phi'' phi'>
    c = e - p  # <phi'' phi>
    t3 = zdd3 / Ks - 3 * s22  # <phi''' phi'^3>
    t1 = bz / Ks - s2  # <phi''' phi'>
    ea = e + Th * bz / Ks  # <z alpha> / K, alpha = phi phi' + Theta phi'' phi'
    w2 = w * w
    Bn = w2 * (q4 * Th ** 2 + p * p * B)
    return (w2 * (c22 * Th + a * Th ** 2 + F * e * ea + P * p * e),
            w2 * (a * Th ** 2 + B * c * p + Q * p * e),
            w2 * (a * Th ** 2 + t3 * Th ** 3 + B * p * (c + Th * t1) + Q * p * ea + R * p * p),
            Bn + w2 * (s22 * Th ** 3 + B * Th * s2 * p + U1 * p * p),
            w2 * (Th * (c22 + 2 * Th * a + Th ** 2 * s22) + F * ea * ea + 2 * P * p * ea + U2 * p * p),
            w2 * (s22 * Th ** 3 + U3 * p * p))


def dntk_single_input(net: MLP, X) -> DNTK:
    """P, Q, R, U1, U2, U3 (and Theta, B, F) for layers l = 1..depth + 1, each row of X taken on
    its own (module docstring); ``net`` in the NTK parametrization. The same numbers as
    ``finite_width(net, X).dntk``, whose NTK recursion supplies Theta, B and F."""
    from limitlab.theory.kernels.finite_width import finite_width

    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a limitlab.theory.kernels.MLP, got {type(net).__name__}")
    if net.parametrization != "ntk":
        raise ValueError(f"net: the dNTK's 1/n statistics are computed for parametrization='ntk', "
                         f"got {net.parametrization!r}")
    X = np.asarray(_check_inputs(X, "X"), dtype=float)
    # one input at a time: repeated rows are one input (finite_width takes distinct rows)
    U, inv = np.unique(X, axis=0, return_inverse=True)
    out = finite_width(net, U, four_point=False, ntk_pairs=False).dntk
    inv = inv.ravel()
    return DNTK(out.depth, *(getattr(out, k)[:, inv] for k in COEFFICIENTS), out.ntk[:, inv],
                {k: v[:, inv] for k, v in out.ntk_fluctuations.items()})

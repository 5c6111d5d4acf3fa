"""The dNTK of wide MLPs at order 1/n, one input (Roberts, Yaida & Hanin 2022, "The Principles of
Deep Learning Theory" (PDLT), ch. 11): the statistics that drive the NTK's change in training.

Conventions (docs/dntk.md): ``MLP(depth=L)``, NTK parametrization, every hidden width n, one input
x, pre-activations z^l_i of layer l (1..L hidden, L + 1 the scalar output f). With the NTK
parametrization's learning-rate tensor lambda (c_W = w_l / fan_in on the weights of Dense layer l,
c_b = b_l on its biases: Thetahat = sum_mu lambda_mu (df/dtheta_mu)^2 is the NTK of
``limitlab.verify.montecarlo.sample_kernels``), the dNTK of layer l is

    dH^l_{i0 i1 i2} = sum_{mu, nu} lambda_mu lambda_nu (d2 z_i0 / dtheta_mu dtheta_nu)(dz_i1 / dtheta_mu)(dz_i2 / dtheta_nu),

and for the output dH = g^T Hess(f) g in the coordinates where lambda = 1 (g = grad f). Under
gradient flow on (f - y)^2 / 2 with the one input, dThetahat/dt = -2 eta (f - y) dH. The dNTK has
mean zero (it is odd in the readout) and its leading statistic is its correlation with the
pre-activations, with two coefficients per layer (PDLT's P and Q, re-derived here):

    n E[dH^l_{i0 i1 i2} z^l_i3] = (d_{i0 i1} d_{i2 i3} + d_{i0 i2} d_{i1 i3}) P^l + d_{i0 i3} d_{i1 i2} Q^l + O(1/n),

so that n E[dH f] -> 2 P^{L+1} + Q^{L+1} at the output, and the NTK's mean velocity at
initialization is E[dThetahat/dt] = -2 eta (2 P + Q) / n + O(1/n^2).

The recursion (derived in docs/dntk.md by conditioning on layer l; C_W = w_l, moments <.> over
z ~ N(0, K^l), layer-l quantities on the right, P^1 = Q^1 = 0):

    P^{l+1} = C_W^2 [ <phi^2 phi'^2> Theta + <phi'' phi'^2 phi> Theta^2
                      + F <z phi phi'> (<z phi phi'> + Theta <z phi'' phi'>) / K^2 + P <phi'^2> <z phi phi'> / K ],
    Q^{l+1} = C_W^2 [ <phi'' phi'^2 phi> Theta^2 + B <phi'' phi> <phi'^2> + Q <phi'^2> <z phi phi'> / K ],

with Theta, B, F the NTK's limit and fluctuation tensors (docs/finite_width.md, "The NTK"), carried
here by their own leading-order recursion. The phi'' moments are taken in the integrated-by-parts
(Stein) form, E[h'(z) s(z)] = E[z h s] / K - E[h s'], so only phi and phi' are evaluated:

    <phi'' phi'^2 phi> = (<z phi phi'^3> / K - <phi'^4>) / 3,
    <z phi'' phi'>     = <z^2 phi'^2> / (2 K) - <phi'^2> / 2,
    <phi'' phi>        = <z phi phi'> / K - <phi'^2>,

exact for smooth phi and the smooth limit for kinked ones: for ReLU and leaky ReLU all three
vanish (the delta of phi'' sits where z = phi = 0), as the a.e. Hessian of such a network says.
Moments by :func:`limitlab.numerics.gaussian_moments.one_input_derivatives` (the engine's graded
1-D rule, cut at the kinks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from limitlab.numerics import gaussian_moments
from limitlab.numerics import validation as validate
from limitlab.theory.kernels.mlp import MLP, _check_inputs

__all__ = ["dntk_single_input", "dntk_layer_step", "DNTK"]


@dataclass(frozen=True)
class DNTK:
    """``dntk_single_input(net, X)``: the dNTK's 1/n coefficients per layer and input (module docstring).

    Arrays are (depth + 1, N): row l - 1 is layer l (1-based; the last row is the output), column
    a the input X[a]. ``ntk`` is Theta^l (the limiting NTK of layer l's pre-activations),
    ``ntk_fluctuations`` B^l and F^l (docs/finite_width.md), which the recursion carries.
    """

    depth: int
    P: np.ndarray
    Q: np.ndarray
    ntk: np.ndarray
    ntk_fluctuations: dict  # {"B": (depth + 1, N), "F": (depth + 1, N)}

    @property
    def output(self) -> np.ndarray:
        """2 P + Q at the output, per input: n E[dH f] -> 2 P^{L+1} + Q^{L+1}."""
        return 2 * self.P[-1] + self.Q[-1]

    def expected_dntk_output(self, width) -> np.ndarray:
        """E[dH f] = (2 P + Q) / n to leading order (per input)."""
        return self.output / _width(width)

    def ntk_velocity(self, width, learning_rate=1.0) -> np.ndarray:
        """E[dThetahat/dt] at initialization under gradient flow on (f(x) - y)^2 / 2 with the one
        input x (any target y: E[dH] = 0): -2 eta (2 P + Q) / n to leading order."""
        eta = validate.real(learning_rate, "learning_rate", at_least=0)
        return -2 * eta * self.expected_dntk_output(width)


def _width(width) -> float:
    return validate.real(width, "width", at_least=1, finite=False)


def _moments(act, K):
    """Per input: <phi^2>, <phi'^2>, <phi'^4>, <phi^2 phi'^2>, <z phi phi'>, <z phi phi'^3>, <z^2 phi'^2> at K."""
    phi, dphi = act, act.derivative
    fs = [lambda z: phi(z) ** 2, lambda z: dphi(z) ** 2, lambda z: dphi(z) ** 4, lambda z: (phi(z) * dphi(z)) ** 2,
          lambda z: z * phi(z) * dphi(z), lambda z: z * phi(z) * dphi(z) ** 3, lambda z: (z * dphi(z)) ** 2]
    out = np.zeros((len(fs), K.size))
    for a, k in enumerate(K):
        if k > 0:  # K = 0: z = 0, and every quantity below is multiplied by Theta = 0 (docs/dntk.md)
            out[:, a] = gaussian_moments.one_input_derivatives(fs, k, act.kinks)[:, 0]
    return out


def dntk_layer_step(activation, weight_var, K, Theta, B, F, P, Q):
    """(P, Q) of layer l -> layer l + 1 (module docstring), per input: K, Theta, B, F, P, Q are the
    layer-l values (arrays over inputs), ``weight_var`` the C_W = w_l of Dense layer l."""
    from limitlab.theory import activations

    act = activations.get(activation)
    K, Theta, B, F, P, Q = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (K, Theta, B, F, P, Q))
    m = _moments(act, K)
    return _step(float(weight_var), K, Theta, B, F, P, Q, m)


def _step(w, K, Th, B, F, P, Q, m):
    _, p, q4, c22, e, zpd3, z2d2 = m
    Ks = np.where(K > 0, K, 1.0)  # K = 0 layers have Theta = B = F = P = Q = 0: their terms vanish
    e = e / Ks  # <z phi phi'> / K
    a = (zpd3 / Ks - q4) / 3  # <phi'' phi'^2 phi>
    bz = z2d2 / (2 * Ks) - p / 2  # <z phi'' phi'>
    c = e - p  # <phi'' phi>
    w2 = w * w
    Pn = w2 * (c22 * Th + a * Th ** 2 + F * e * (e + Th * bz / Ks) + P * p * e)
    Qn = w2 * (a * Th ** 2 + B * c * p + Q * p * e)
    return Pn, Qn


def dntk_single_input(net: MLP, X) -> DNTK:
    """P^l and Q^l (and Theta^l, B^l, F^l) for l = 1..depth + 1, each row of X taken on its own
    (module docstring); ``net`` in the NTK parametrization."""
    from limitlab.theory import activations

    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a limitlab.theory.kernels.MLP, got {type(net).__name__}")
    if net.parametrization != "ntk":
        raise ValueError(f"net: the dNTK's 1/n statistics are computed for parametrization='ntk', "
                         f"got {net.parametrization!r}")
    X = np.asarray(_check_inputs(X, "X"), dtype=float)
    N, d = X.shape
    act = activations.get(net.activation)
    w, b = net._w, net._b
    K = w[0] * np.einsum("ad,ad->a", X, X) / d + b[0]
    # layer 1 is linear in its parameters: dH^1 = 0, Thetahat^1 = Ghat^1 = K^1 exactly
    Th, B, F, P, Q = K.copy(), *np.zeros((4, N))
    rows = [(Th, B, F, P, Q)]
    for l in range(1, net.depth + 1):
        m = _moments(act, K)
        P, Q = _step(float(w[l]), K, Th, B, F, P, Q, m)
        g, p, q4, c22, e = m[:5]
        Ks = np.where(K > 0, K, 1.0)
        # the NTK's leading recursion (docs/finite_width.md, "The NTK"), with the same moments
        B, F = w[l] ** 2 * (q4 * Th ** 2 + p * p * B), w[l] ** 2 * (c22 * Th + (e / Ks) ** 2 * F)
        K = w[l] * g + b[l]
        Th = K + w[l] * p * Th
        rows.append((Th, B, F, P, Q))
    Th, B, F, P, Q = (np.array(r) for r in zip(*rows))
    return DNTK(net.depth, P, Q, Th, {"B": B, "F": F})

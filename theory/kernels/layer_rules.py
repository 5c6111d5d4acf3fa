"""The stax layers' kernel rules as sympy equations: ``net.recursion()`` prints a network's recursion.

Layer ``l`` maps the covariance ``K_{l-1}(x, s, x', s')`` of inputs ``x, x'`` at pixels
``s, s'`` and the NTK ``Theta_{l-1}(x, s, x', s')`` of its input to ``K_l``, ``Theta_l``
(``K_l(x, x')`` once flat) (the rules of :mod:`limitlab.theory.kernels.stax`'s module
docstring, with its sources); ``s, s'`` are pixel (multi-)indices, ``o_j`` the offsets of a
filter or pooling window, ``P`` the number of pixels. The equations are plain sympy (``Eq``
of applied ``Function``s, ``Sum`` over offsets and pixels, the activation's dual maps of
:func:`limitlab.theory.kernels.dual` substituted), so users can keep working on them.
"""
from __future__ import annotations

import sympy as sp

from limitlab.theory import activations as _act

__all__ = ["recursion"]

s, s2 = sp.symbols("s s'")
x, x2 = sp.symbols("x x'")
j, j2 = sp.symbols("j j'", integer=True, positive=True)
o = sp.IndexedBase("o")
P = sp.Symbol("P", integer=True, positive=True)


def _K(l):
    return sp.Function(f"K_{l}"), sp.Function(f"Theta_{l}")


def _at(f, flat, a=s, b=s2, xa=x, xb=x2):
    """f at inputs (xa, xb) and pixels (a, b): K(x, s, x', s'); K(x, x') once flat."""
    return f(xa, xb) if flat else f(xa, a, xb, b)


def _rule(layer, l, flat):
    """([Eq(K_l, ...), Eq(Theta_l, ...)], flat after the layer) of one layer."""
    from limitlab.theory.kernels import stax

    K0, T0 = _K(l - 1)
    K1, T1 = _K(l)
    name = type(layer).__name__
    if isinstance(layer, (stax.Dense, stax.Conv)):
        if getattr(layer, "parametrization", "ntk") != "ntk":
            raise NotImplementedError(f"recursion(): {layer!r}: the sympy rule covers the 'ntk' parametrization")
        w, b = sp.nsimplify(layer.weight_var), sp.nsimplify(layer.bias_var)
        if isinstance(layer, stax.Dense):  # per pixel (Lee et al. 2018, eq. 4)
            k, t = _at(K0, flat), _at(T0, flat)
        else:  # the same offset on both members (Novak et al. 2019, eq. (7); Arora et al. 2019, eqs. (7)-(9))
            F = sp.prod(layer.filter_shape)
            st = layer.strides[0] if len(set(layer.strides)) == 1 else sp.Symbol("st")  # per-axis strides
            k = sp.Sum(_at(K0, flat, st * s + o[j], st * s2 + o[j]), (j, 1, F)) / F
            t = sp.Sum(_at(T0, flat, st * s + o[j], st * s2 + o[j]), (j, 1, F)) / F
        return [sp.Eq(_at(K1, flat), w * k + b), sp.Eq(_at(T1, flat), _at(K1, flat) + w * t)], flat
    if isinstance(layer, stax.Activation):  # Jacot et al. 2018; Arora et al. 2019, eq. (9)
        sub = {_act.q1: _at(K0, flat, s, s, x, x), _act.q2: _at(K0, flat, s2, s2, x2, x2), _act.c: _at(K0, flat)}
        return [sp.Eq(_at(K1, flat), layer.dual.nngp.subs(sub, simultaneous=True)),
                sp.Eq(_at(T1, flat), _at(T0, flat) * layer.dual.derivative.subs(sub, simultaneous=True))], flat
    if isinstance(layer, stax._Pool) and not flat:  # both offsets independent
        W = sp.prod(layer.window_shape)
        st = layer.strides[0] if len(set(layer.strides)) == 1 else sp.Symbol("st")
        norm = sp.Integer(W) ** 2 if layer._average else sp.Integer(1)

        def pooled(f):
            return sp.Sum(f(x, st * s + o[j], x2, st * s2 + o[j2]), (j, 1, W), (j2, 1, W)) / norm
        return [sp.Eq(_at(K1, False), pooled(K0)), sp.Eq(_at(T1, False), pooled(T0))], False
    if isinstance(layer, stax._GlobalPool) and not flat:
        norm = P ** 2 if layer._average else sp.Integer(1)

        def glob(f):
            return sp.Sum(f(x, s, x2, s2), (s, 1, P), (s2, 1, P)) / norm
        return [sp.Eq(K1(x, x2), glob(K0)), sp.Eq(T1(x, x2), glob(T0))], True
    if isinstance(layer, stax.Flatten) and not flat:
        return [sp.Eq(K1(x, x2), sp.Sum(K0(x, s, x2, s), (s, 1, P)) / P),
                sp.Eq(T1(x, x2), sp.Sum(T0(x, s, x2, s), (s, 1, P)) / P)], True
    if isinstance(layer, stax.Identity) or isinstance(layer, stax.Flatten):
        return [sp.Eq(_at(K1, flat), _at(K0, flat)), sp.Eq(_at(T1, flat), _at(T0, flat))], flat
    raise NotImplementedError(
        f"recursion(): {layer!r} ({name}) has no sympy rule here; the printed recursion covers serial chains of "
        "Dense, Conv, AvgPool/SumPool, GlobalAvgPool/GlobalSumPool, Flatten, Identity and activations (the rules of "
        "the other layers are in docs/architectures.md)")


def recursion(net, flat=None) -> list:
    """The network's recursion, two equations (NNGP, NTK) a layer, from the input layer
    ``K_0(x, s, x', s') = x_s . x'_s' / C``, ``Theta_0 = 0`` (``K_0(x, x') = x . x' / d`` on
    flat inputs: ``flat=True``; default: flat when the first layer is a Dense)."""
    from limitlab.theory.kernels import stax

    layers = [layer for layer, _ in stax._serial_items(net)]
    if flat is None:
        flat = bool(layers) and isinstance(layers[0], stax.Dense)
    K0, T0 = _K(0)
    C = sp.Symbol("d" if flat else "C", positive=True)
    dot = sp.Symbol("x \\cdot x'" if flat else "x_s \\cdot x'_{s'}")
    eqs = [sp.Eq(_at(K0, flat), dot / C), sp.Eq(_at(T0, flat), 0)]
    for l, layer in enumerate(layers, start=1):
        rule, flat = _rule(layer, l, flat)
        eqs += rule
    return eqs

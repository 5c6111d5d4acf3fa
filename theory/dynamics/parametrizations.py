"""abc-parametrizations of MLPs and their infinite-width classification (Yang & Hu 2021).

An MLP with L hidden layers of width n has layers l = 1 .. L+1 with weights
``W^l = n^{-a_l} w^l``, ``w^l ~ N(0, n^{-2 b_l})`` and SGD learning rate ``eta n^{-c}``
(Yang & Hu 2021, "Feature Learning in Infinite-Width Neural Networks", sec. 3). The input
fan-in d is fixed, so layer 1 does not sum over n. With their Definition 3.2::

    r = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c) + c - 1 + min_{l=1..L} (2 a_l + [l = 1])

Theorem 3.3 (stable iff): a_1 + b_1 = 0; a_l + b_l = 1/2 (2 <= l <= L);
a_{L+1} + b_{L+1} >= 1/2; r >= 0; 2 a_{L+1} + c >= 1; a_{L+1} + b_{L+1} + r >= 1.
Theorem 3.4 (nontrivial iff, when stable): a_{L+1} + b_{L+1} + r = 1 or 2 a_{L+1} + c = 1.
Theorem 3.5: a nontrivial stable parametrization learns features iff r = 0 and is in the
kernel regime iff r > 0. Symmetry (sec. 3, eq. (5)): for SGD, (a_l, b_l, c) ->
(a_l + t, b_l - t, c - 2t) changes nothing.

The muP tables follow Yang et al. 2022 ("Tensor Programs V", Table 3 and Table 8) and are
rederived here from the same scaling rules: every update moves every pre-activation by
Theta(1) (SGD: an update sums over fan-in coordinates; Adam normalises each entry).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from limitlab.numerics import validation as validate

__all__ = ["ABC", "Classification", "classify", "preset", "PRESETS", "symmetry", "mup_table",
           "mup_scalings", "require_trainable"]


def _frac(v, name):
    validate.real(v, name)
    return Fraction(v).limit_denominator(10_000) if not isinstance(v, Fraction) else v


@dataclass(frozen=True)
class ABC:
    """Per-layer exponents a, b (length L+1) and the learning-rate exponent c."""

    a: tuple
    b: tuple
    c: Fraction

    @property
    def depth(self) -> int:
        return len(self.a) - 1


@dataclass(frozen=True)
class Classification:
    """Result of :func:`classify`: stability, nontriviality, r and the regime."""

    stable: bool
    nontrivial: bool
    r: Fraction
    regime: str  # "feature learning", "kernel", "trivial" or "unstable"
    reasons: tuple  # the violated conditions when unstable / trivial

    @property
    def feature_learning(self) -> bool:
        return self.regime == "feature learning"

    @property
    def kernel_regime(self) -> bool:
        return self.regime == "kernel"


def _normalise(a, b, c):
    a = list(a) if isinstance(a, (list, tuple, np.ndarray)) else None
    if a is None:
        raise TypeError("a: expected a sequence of L+1 exponents (layers 1..L+1)")
    if not isinstance(b, (list, tuple, np.ndarray)) or len(b) != len(a):
        raise ValueError(f"b: expected a sequence of {len(a)} exponents like a, got {b!r}")
    if len(a) < 2:
        raise ValueError(f"a: needs at least 2 layers (L >= 1 hidden layer), got {len(a)}")
    a = tuple(_frac(v, f"a[{i}]") for i, v in enumerate(a))
    b = tuple(_frac(v, f"b[{i}]") for i, v in enumerate(b))
    return ABC(a, b, _frac(c, "c"))


def classify(a: Sequence, b: Sequence, c) -> Classification:
    """Yang & Hu 2021, Def. 3.2 and Theorems 3.3-3.5: stable?, nontrivial?, r, regime (SGD)."""
    p = _normalise(a, b, c)
    a, b, c, L = p.a, p.b, p.c, p.depth
    half = Fraction(1, 2)
    r = min(a[L] + b[L], 2 * a[L] + c) + c - 1 + min(2 * a[l] + (1 if l == 0 else 0) for l in range(L))
    reasons = []
    if a[0] + b[0] != 0:
        reasons.append(f"a_1 + b_1 = {a[0] + b[0]} != 0 (input-layer preactivations not Theta(1) at init)")
    for l in range(1, L):
        if a[l] + b[l] != half:
            reasons.append(f"a_{l + 1} + b_{l + 1} = {a[l] + b[l]} != 1/2 (hidden preactivations not Theta(1))")
    if a[L] + b[L] < half:
        reasons.append(f"a_{L + 1} + b_{L + 1} = {a[L] + b[L]} < 1/2 (output blows up at init)")
    if r < 0:
        reasons.append(f"r = {r} < 0 (features blow up during training)")
    if 2 * a[L] + c < 1:
        reasons.append(f"2 a_{L + 1} + c = {2 * a[L] + c} < 1 (output updates blow up)")
    if a[L] + b[L] + r < 1:
        reasons.append(f"a_{L + 1} + b_{L + 1} + r = {a[L] + b[L] + r} < 1 (output updates blow up)")
    stable = not reasons
    nontrivial = stable and (a[L] + b[L] + r == 1 or 2 * a[L] + c == 1)
    if not stable:
        regime = "unstable"
    elif not nontrivial:
        regime = "trivial"
        reasons.append("a_{L+1} + b_{L+1} + r != 1 and 2 a_{L+1} + c != 1 (the function does not move)")
    else:
        regime = "feature learning" if r == 0 else "kernel"
    return Classification(stable, nontrivial, r, regime, tuple(reasons))


def preset(name: str, depth: int) -> ABC:
    """The named abc-parametrization for ``depth`` hidden layers (Yang & Hu 2021, sec. 3 and Table 1).

    ``"sp"``: standard, a = 0, b = (0, 1/2, ..., 1/2), c = 1 (the largest stable SGD rate);
    ``"ntp"``: NTK, a = (0, 1/2, ..., 1/2), b = 0, c = 0; ``"mup"``: a = (-1/2, 0, ..., 0, 1/2),
    b = 1/2, c = 0; ``"mf"``: mean field, two-layer only, a = (0, 1), b = 0, c = -1.
    """
    validate.integer(depth, "depth", minimum=1)
    h = Fraction(1, 2)
    L = int(depth)
    key = str(name).lower()
    if key == "sp":
        return ABC((Fraction(0),) * (L + 1), (Fraction(0),) + (h,) * L, Fraction(1))
    if key == "ntp":
        return ABC((Fraction(0),) + (h,) * L, (Fraction(0),) * (L + 1), Fraction(0))
    if key == "mup":
        return ABC((-h,) + (Fraction(0),) * (L - 1) + (h,), (h,) * (L + 1), Fraction(0))
    if key == "mf":
        if L != 1:
            raise ValueError(f"depth: the mean-field parametrization is defined for depth 1 (two layers), got {depth}")
        return ABC((Fraction(0), Fraction(1)), (Fraction(0), Fraction(0)), Fraction(-1))
    raise ValueError(f"name: unknown parametrization {name!r}; choose one of {sorted(PRESETS)}")


PRESETS = ("sp", "ntp", "mup", "mf")


def symmetry(p: ABC, t) -> ABC:
    """Yang & Hu 2021, eq. (5): (a_l + t, b_l - t, c - 2t) trains identically under SGD."""
    t = _frac(t, "t")
    return ABC(tuple(v + t for v in p.a), tuple(v - t for v in p.b), p.c - 2 * t)


def require_trainable(a, b, c):
    """Raise ValueError when training (a, b, c) at large width would be unstable or trivial."""
    cl = classify(a, b, c)
    if not cl.stable or not cl.nontrivial:
        raise ValueError(f"(a, b, c): {cl.regime} parametrization cannot be trained at infinite width: "
                         + "; ".join(cl.reasons))
    return cl


# exponents of the width n in (init variance, multiplier, learning rate), "all multipliers 1" form
_MUP = {
    "sgd": {"input": (0, 0, 1), "hidden": (-1, 0, 0), "output": (-2, 0, -1), "bias": (0, 0, 1),
            "output_bias": (0, 0, 0)},
    "adam": {"input": (0, 0, 0), "hidden": (-1, 0, -1), "output": (-2, 0, -1), "bias": (0, 0, 0),
             "output_bias": (0, 0, 0)},
}
# the same with the output multiplier 1/n and init variance 1/n (Tensor Programs V, Table 3)
_MUP_MULT = {
    "sgd": {"output": (-1, -1, 1)},
    "adam": {"output": (-1, -1, 0)},
}
_SP = {"input": (0, 0, 0), "hidden": (-1, 0, 0), "output": (-1, 0, 0), "bias": (0, 0, 0), "output_bias": (0, 0, 0)}


def mup_table(optimizer: str = "sgd", output_multiplier: bool = True) -> dict:
    """Width exponents of muP per kind of tensor: {kind: (init_var, multiplier, learning_rate)}.

    Each entry is the power of the width n (input fan-in d fixed). Tensor Programs V
    (Yang et al. 2022), Table 3: hidden init var 1/n; SGD rates input n, hidden 1, output
    n (with output multiplier 1/n); Adam rates input 1, hidden 1/n, output 1.
    ``output_multiplier=False`` gives the equivalent form with multiplier 1 and output
    init variance 1/n^2 (then the output rate is 1/n for both optimizers).
    """
    opt = str(optimizer).lower()
    if opt not in _MUP:
        raise ValueError(f"optimizer: must be 'sgd' or 'adam', got {optimizer!r}")
    table = dict(_MUP[opt])
    if output_multiplier:
        table.update(_MUP_MULT[opt])
    return table


def mup_scalings(width, base_width, depth: int, optimizer: str = "sgd", output_multiplier: bool = True) -> list:
    """Per-layer numbers for a muP MLP of ``depth`` hidden layers at ``width``, tuned at ``base_width``.

    Returns one dict per layer (input, hidden..., output) with ``init_var`` (multiplying
    1/fan_in for the input layer and the base-width variance otherwise), ``multiplier`` and
    ``lr`` (multiplying the base learning rate), all as (width / base_width)^exponent: a
    configuration tuned at base_width transfers to width (microsoft/mup convention).
    """
    validate.positive(width, "width")
    validate.positive(base_width, "base_width")
    validate.integer(depth, "depth", minimum=1)
    ratio = float(width) / float(base_width)
    table = mup_table(optimizer, output_multiplier)
    kinds = ["input"] + ["hidden"] * (depth - 1) + ["output"]
    return [{"layer": i + 1, "kind": k, "init_var": ratio ** table[k][0], "multiplier": ratio ** table[k][1],
             "lr": ratio ** table[k][2]} for i, k in enumerate(kinds)]

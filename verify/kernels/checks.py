"""Built-in verify checks of the limiting kernels (NNGP and NTK of MLPs).

One check per (activation, depth, parametrization): an ensemble of finite MLPs at each
width gives, per network, the readout-integrated empirical NNGP and the exact empirical
NTK on a few fixed inputs; every entry of the upper triangle is one quantity, compared
with ``limitlab.theory.kernels.MLP``. Standard-parametrization NTKs grow with the width,
so they are compared divided by the width (quantity ``ntk/width[i,j]``), against the
finite-width standard-parametrization formula of the same width.

The fluctuation of one network's kernel is O(n^-1/2) (Hanin & Nica 2020; Roberts, Yaida &
Hanin 2022, ch. 8 and 11): rate -0.5. The ensemble-mean bias is O(1/n), but its 1/n term is
predicted (``limitlab.theory.kernels.finite_width``), so the theory value at width n carries it
and the remaining bias is O(1/n^2): every quantity carries bias_rate 2, and the verdict's
allowance (the error at the next-smaller size, extrapolated) shrinks from a quarter to a
sixteenth of that error at sizes 4x apart (docs/finite_width.md, "Sharper kernel checks"). The
NNGP: E[Ghat] = K + K1/n + O(1/n^2) (PDLT eq. (4.115)); the NTK: E[Thetahat] = Theta + Theta1/n
+ O(1/n^2) (PDLT ch. 8; ``FiniteWidth.ntk_correction``), in the standard parametrization
Theta(n) + Theta1(n)/n with both computed at the width n (Theta1(n) = O(n): the remainder is
still 1/n^2 relative).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

__all__ = ["INPUTS", "kernel_spec", "measure", "theory_values", "nngp_correction", "ntk_correction",
           "ACTIVATIONS", "DEPTHS", "PARAMETRIZATIONS"]

ACTIVATIONS = ("relu", "erf", "tanh", "gelu")
DEPTHS = (1, 3)
PARAMETRIZATIONS = ("ntk", "standard")
WEIGHT_VAR = 1.5
BIAS_VAR = 0.1
SIZES = (256, 1024, 4096)
SAMPLES = 512
QUICK_SIZES = (128, 512, 2048)
QUICK_SAMPLES = 256
# below this width the 1/n expansion behind the bias allowance and the n^-1/2 rate is not a small
# correction: the kernel's fluctuations are governed by depth/width (Hanin & Nica 2020), and
# 64 keeps depth/width <= 3/64 ~ 0.05 for the registered depths
# a theory that carries its 1/n term (the NNGP's K + K1/n, the NTK's Theta + Theta1/n): what
# remains of its bias is O(1/n^2)
NNGP_BIAS_RATE = 2.0
NTK_BIAS_RATE = 2.0
MIN_WIDTH = 64
MIN_WIDTH_REASON = ("the 1/n expansion (bias allowance, n^-1/2 rate) needs depth/width small (Hanin & Nica 2020); "
                    "64 keeps it <= 3/64")
# measured seconds of the quick sizes on the shared 2-core machine (rough; load-dependent)
SECONDS_QUICK = {1: 1.5, 3: 4.0}
DEFAULT = {("relu", 3, "ntk"), ("erf", 1, "standard"), ("tanh", 3, "ntk"), ("gelu", 1, "ntk"),
           ("relu", 1, "standard"), ("gelu", 3, "standard")}


def _inputs() -> np.ndarray:
    """Three inputs in d = 8 with x.x/d = 1, 1, 1.5 and correlations ~0.6, ~0, ~-0.4."""
    rng = np.random.default_rng(20180620)  # fixed: Jacot et al.'s arXiv date
    d = 8
    Z = np.linalg.qr(rng.standard_normal((d, 3)))[0].T  # orthonormal rows
    X = np.stack([Z[0], 0.6 * Z[0] + 0.8 * Z[1], -0.4 * Z[0] + np.sqrt(1 - 0.16) * Z[2]])
    return X * np.sqrt(d) * np.sqrt(np.array([1.0, 1.0, 1.5]))[:, None]


INPUTS = _inputs()
PAIRS = [(i, j) for i in range(INPUTS.shape[0]) for j in range(i, INPUTS.shape[0])]


def kernel_spec(activation: str, depth: int, parametrization: str, width=None, weight_var=WEIGHT_VAR,
                bias_var=BIAS_VAR):
    """The theory object of a check (``width`` only matters for the standard NTK)."""
    from limitlab.theory.kernels import MLP

    return MLP(depth, activation, weight_var=weight_var, bias_var=bias_var, parametrization=parametrization,
               width=width)


@lru_cache(maxsize=None)
def _theory_cached(activation, depth, parametrization, width):
    k, t = kernel_spec(activation, depth, parametrization, width).kernels(INPUTS)
    return np.asarray(k), np.asarray(t)


@lru_cache(maxsize=None)
def _finite_width(activation: str, depth: int, parametrization: str = "ntk", width=None, ntk_pairs: bool = False):
    from limitlab.theory.kernels import finite_width

    return finite_width(kernel_spec(activation, depth, parametrization, width), INPUTS, four_point=False,
                        ntk_pairs=ntk_pairs)


def nngp_correction(activation: str, depth: int) -> np.ndarray:
    """K1 on INPUTS: E[Ghat] = K + K1/n + O(1/n^2) (the same in both parametrizations)."""
    return _finite_width(activation, depth).nngp_correction


def ntk_correction(activation: str, depth: int, parametrization: str = "ntk", width=None) -> np.ndarray:
    """Theta1 (N, N) on INPUTS: E[Thetahat] = Theta + Theta1/n + O(1/n^2); in the standard
    parametrization Theta1(n), computed at ``width`` (docs/finite_width.md, "Standard
    parametrization: the convention")."""
    return _finite_width(activation, depth, parametrization, None if parametrization == "ntk" else int(width),
                         True).ntk_correction


def theory_values(activation: str, depth: int, parametrization: str, width: int, corrected: bool = True):
    """(NNGP, NTK in the check's normalization) on INPUTS: NTK/width in the standard parametrization;
    with the predicted 1/n terms, K + K1/width and Theta + Theta1/width (``corrected=False``: K and
    Theta, the limit, or in the standard parametrization Theta(width))."""
    k, t = _theory_cached(activation, depth, parametrization, int(width))
    if corrected:
        k = k + nngp_correction(activation, depth) / width
        t = t + ntk_correction(activation, depth, parametrization, width) / width
    return k, (t / width if parametrization == "standard" else t)


def measure(ctx: Context, activation: str, depth: int, parametrization: str, theory=None) -> list:
    """Measurements of one check at ctx.size; ``theory(width) -> (nngp, ntk)`` overrides the theory
    (tests use it to prove the verdict's power against wrong theories). The NNGP quantities carry
    bias_rate NNGP_BIAS_RATE, the NTK's NTK_BIAS_RATE: their theory includes the predicted 1/n term."""
    from limitlab.verify.montecarlo import sample_kernels

    n = ctx.size
    spec = kernel_spec(activation, depth, parametrization, width=n)
    ks = sample_kernels(spec, INPUTS, width=n, n_networks=ctx.samples, seed=ctx.rng, backend=ctx.backend)
    K, T = theory(n) if theory is not None else theory_values(activation, depth, parametrization, n)
    ntk = ks.ntk / n if parametrization == "standard" else ks.ntk
    tname = "ntk/width" if parametrization == "standard" else "ntk"
    out = [Measurement(f"nngp[{i},{j}]", K[i, j], ks.nngp[:, i, j], bias_rate=NNGP_BIAS_RATE) for i, j in PAIRS]
    out += [Measurement(f"{tname}[{i},{j}]", T[i, j], ntk[:, i, j], bias_rate=NTK_BIAS_RATE) for i, j in PAIRS]
    return out


def _register(activation, depth, parametrization):
    pname = "ntk" if parametrization == "ntk" else "standard"
    name = f"kernels.{activation}.d{depth}.{pname}"

    def fn(ctx: Context):
        return measure(ctx, activation, depth, parametrization)

    fn.__name__ = name.replace(".", "_")
    check(name, sizes=SIZES, quick_sizes=QUICK_SIZES, samples=SAMPLES, quick_samples=QUICK_SAMPLES, rate=-0.5,
          bias_rate=1.0, default=(activation, depth, parametrization) in DEFAULT,
          tags=("kernels", activation, f"depth{depth}", parametrization), min_size=MIN_WIDTH,
          min_size_reason=MIN_WIDTH_REASON, seconds_quick=SECONDS_QUICK[depth],
          description=f"NNGP and NTK of a depth-{depth} {activation} MLP, {parametrization} parametrization "
                      f"(weight_var={WEIGHT_VAR}, bias_var={BIAS_VAR})")(fn)


for _a in ACTIVATIONS:
    for _d in DEPTHS:
        for _p in PARAMETRIZATIONS:
            _register(_a, _d, _p)

from limitlab.verify.kernels import architectures  # noqa: E402,F401  (conv/pool/residual checks)
from limitlab.verify.kernels import finite_width  # noqa: E402,F401  (the 1/n theory: K1 and V)

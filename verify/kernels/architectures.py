"""Verify checks of the limiting kernels of convolutional, pooled, residual, layer-normalized and
attention architectures.

One stax description per family gives both sides of each check: its limiting NNGP and NTK
(``limitlab.theory.kernels.stax``) and its finite networks at width n (every hidden Dense/Conv
with n channels, a Dense(1) readout; :mod:`limitlab.verify.networks`), whose per-network
readout-integrated empirical NNGP and exact empirical NTK on a few fixed inputs are the
samples; every entry of the upper triangle of each kernel is one quantity.

* ``kernels.cnn-gp``: two VALID 1-D Conv + ReLU layers, Flatten, Dense(1) (Novak et al. 2019,
  "Bayesian deep CNNs with many channels are GPs"; the Flatten readout, not a pool).
* ``kernels.cntk-pool``: a 2-D SAME Conv + ReLU layer, GlobalAvgPool, Dense(1), NTK included
  (Arora et al. 2019, "On exact computation with an infinitely wide neural net", CNTK-GAP).
* ``kernels.resnet``: a Conv stem, one residual block ``FanOut(2) -> parallel(serial(Relu(),
  Conv), Identity()) -> FanInSum()``, ReLU, GlobalAvgPool, Dense(1) (He et al. 2016's block in
  neural-tangents' combinators; its kernel is the sum of the branches' kernels).
* ``kernels.layernorm``: a SAME 1-D Conv, LayerNorm over the channels, ReLU, GlobalAvgPool,
  Dense(1) (Ba, Kiros & Hinton 2016, "Layer normalization", eq. (4); its limit divides by the
  deterministic normalizer ``sqrt(eps + K(x, s; x, s))``, Hron et al. 2020).
* ``kernels.attention``: 2-head softmax GlobalSelfAttention with linear scaling (tied
  keys/queries; output, key and value dimensions n, 2 heads) on the inputs, ReLU,
  GlobalAvgPool, Dense(1) (Hron, Bahri, Sohl-Dickstein & Novak 2020, "Infinite attention: NNGP
  and NTK for deep attention networks": the logits concentrate on ``sqrt(q k) c(x)``). The
  attention acts on the inputs (2 channels) rather than after a Conv stem: with a stem the
  attention's maps are n x n (2.5x the normals per network) and one network's entries fluctuate
  1.3x more (measured), so the power asked would need 2048 networks and ~6 s; the finite tests in
  tests/verify/test_networks.py cover attention after a stem (a transformer block).

The fluctuation of one network's kernel is O(n^-1/2) and the ensemble-mean bias O(1/n), as for
MLPs (Hanin & Nica 2020; Roberts, Yaida & Hanin 2022, ch. 8 and 11): rate -0.5, bias_rate 1.
Sizes grow by 4x so that the bias allowance of the verdict (the error at the next-smaller size
times 1/4) stays well below a 2% theory error; the sample counts give each check the power to
reject a theory scaled by 1.02 (tests/verify/kernels/test_architecture_checks.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

__all__ = ["ARCHITECTURES", "architecture", "inputs", "theory_values", "measure", "pairs"]

WEIGHT_VAR = 1.5
BIAS_VAR = 0.1


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    input_shape: tuple  # (N, *spatial, C)
    sizes: tuple
    quick_sizes: tuple
    samples: int
    quick_samples: int
    min_size: int
    min_size_reason: str
    seconds_quick: float


def _net(name):
    from limitlab.theory.kernels import stax

    wb = dict(weight_var=WEIGHT_VAR, bias_var=BIAS_VAR)
    if name == "cnn-gp":
        return stax.serial(stax.Conv(1, (3,), padding="VALID", **wb), stax.Relu(),
                           stax.Conv(1, (3,), padding="VALID", **wb), stax.Relu(), stax.Flatten(), stax.Dense(1, **wb))
    if name == "cntk-pool":
        return stax.serial(stax.Conv(1, (3, 3), padding="SAME", **wb), stax.Relu(), stax.GlobalAvgPool(),
                           stax.Dense(1, **wb))
    if name == "resnet":
        block = stax.serial(stax.FanOut(2),
                            stax.parallel(stax.serial(stax.Relu(), stax.Conv(1, (3,), padding="SAME", **wb)),
                                          stax.Identity()),
                            stax.FanInSum())
        return stax.serial(stax.Conv(1, (3,), padding="SAME", **wb), block, stax.Relu(), stax.GlobalAvgPool(),
                           stax.Dense(1, **wb))
    if name == "layernorm":
        from limitlab.theory.kernels import LayerNorm

        return stax.serial(stax.Conv(1, (3,), padding="SAME", **wb), LayerNorm(), stax.Relu(), stax.GlobalAvgPool(),
                           stax.Dense(1, **wb))
    if name == "attention":
        from limitlab.theory.kernels import GlobalSelfAttention

        att = GlobalSelfAttention(1, 1, 1, 2, linear_scaling=True, key_weight_var=WEIGHT_VAR,
                                  value_weight_var=WEIGHT_VAR, query_weight_var=WEIGHT_VAR, out_weight_var=WEIGHT_VAR,
                                  bias_var=BIAS_VAR, attention_mechanism="softmax")
        return stax.serial(att, stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, **wb))
    raise KeyError(name)


_DEPTH_REASON = ("the 1/n expansion (bias allowance, n^-1/2 rate) needs depth/width small (Hanin & Nica 2020); "
                 "{m} keeps it <= {d}/{m} for this architecture's {d} hidden layers")

# sizes x4 apart: the verdict's bias allowance at the largest size is a quarter of the error at the
# next one, so a 2% theory error leaves 1.5% against z * SE; 1024 networks give SE <= 0.3% per entry
# at width 512 (relative sd of one network's kernel entry ~ 2 / sqrt(width), measured)
SIZES = (64, 256, 1024)
QUICK_SIZES = (32, 128, 512)
ARCHITECTURES = {
    "cnn-gp": Family("cnn-gp", "two VALID Conv(3)+ReLU layers, Flatten, Dense(1) on 3 sequences of 6x2",
                     (3, 6, 2), SIZES, QUICK_SIZES, 2048, 1024, 32, _DEPTH_REASON.format(m=32, d=2), 1.5),
    "cntk-pool": Family("cntk-pool", "SAME Conv(3x3)+ReLU, GlobalAvgPool, Dense(1) on 3 images of 4x4x2",
                        (3, 4, 4, 2), SIZES, QUICK_SIZES, 2048, 1024, 32, _DEPTH_REASON.format(m=32, d=1), 1.5),
    "resnet": Family("resnet", "Conv stem, residual block FanOut/parallel(Relu+Conv, Identity)/FanInSum, ReLU, "
                               "GlobalAvgPool, Dense(1) on 3 sequences of 4x2",
                     (3, 4, 2), SIZES, QUICK_SIZES, 2048, 1024, 32, _DEPTH_REASON.format(m=32, d=2), 2.0),
    "layernorm": Family("layernorm", "SAME Conv(3), LayerNorm over channels, ReLU, GlobalAvgPool, Dense(1) on 3 "
                                     "sequences of 4x2",
                        (3, 4, 2), SIZES, QUICK_SIZES, 2048, 1024, 32, _DEPTH_REASON.format(m=32, d=1), 1.0),
    # one network's entries fluctuate by ~2.3/sqrt(width) (measured); a 2% error still ends 1.5-1.9
    # tolerances away at the quick sizes (measured over 4 seeds; cnn-gp and resnet: 1.4-1.7)
    "attention": Family("attention", "2-head softmax GlobalSelfAttention (linear scaling; output/key/value dims n) "
                                     "on the inputs, ReLU, GlobalAvgPool, Dense(1) on 3 sequences of 4x2",
                        (3, 4, 2), SIZES, QUICK_SIZES, 2048, 1024, 32, _DEPTH_REASON.format(m=32, d=1), 2.0),
}


# in the quick default set of `limitlab verify`: the CNTK of Arora et al. 2019 (conv + global pooling),
# one architecture beside the MLPs, ~1-2 s
DEFAULT = ("cntk-pool",)


def architecture(name: str):
    """The stax description of a family (hidden widths are set by the check's size)."""
    return _net(name)


@lru_cache(maxsize=None)
def _inputs(name):
    shape = ARCHITECTURES[name].input_shape
    rng = np.random.default_rng(20190401)  # fixed: Arora et al.'s arXiv month
    X = rng.standard_normal(shape)
    # the entries of each image have mean square 1, 1, 1.5 (images of different norms)
    X = X / np.sqrt(np.mean(X ** 2, axis=tuple(range(1, X.ndim)), keepdims=True))
    X = X * np.sqrt(np.array([1.0, 1.0, 1.5]).reshape((-1,) + (1,) * (X.ndim - 1)))
    X.setflags(write=False)
    return X


def inputs(name: str) -> np.ndarray:
    """The fixed inputs of a family (read-only)."""
    return _inputs(name)


def pairs(name: str):
    N = ARCHITECTURES[name].input_shape[0]
    return [(i, j) for i in range(N) for j in range(i, N)]


@lru_cache(maxsize=None)
def _theory(name):
    from limitlab.verify.networks import limit

    k = limit(_net(name), _inputs(name))
    return np.asarray(k.nngp), np.asarray(k.ntk)


def theory_values(name: str):
    """(NNGP, NTK) limits on the family's inputs."""
    return _theory(name)


def measure(ctx: Context, name: str, theory=None) -> list:
    """Measurements of one check at ctx.size; ``theory() -> (nngp, ntk)`` overrides the theory
    (tests use it to prove the verdict's power against wrong theories)."""
    from limitlab.verify.networks import sample_kernels

    ks = sample_kernels(_net(name), _inputs(name), width=ctx.size, n_networks=ctx.samples, seed=ctx.rng,
                        backend=ctx.backend)
    K, T = theory() if theory is not None else theory_values(name)
    P = pairs(name)
    out = [Measurement(f"nngp[{i},{j}]", K[i, j], ks.nngp[:, i, j]) for i, j in P]
    out += [Measurement(f"ntk[{i},{j}]", T[i, j], ks.ntk[:, i, j]) for i, j in P]
    return out


def _register(fam: Family):
    def fn(ctx: Context):
        return measure(ctx, fam.name)

    fn.__name__ = f"kernels_{fam.name.replace('-', '_')}"
    check(f"kernels.{fam.name}", sizes=fam.sizes, quick_sizes=fam.quick_sizes, samples=fam.samples,
          quick_samples=fam.quick_samples, rate=-0.5, bias_rate=1.0, default=fam.name in DEFAULT,
          tags=("kernels", "architectures", fam.name), min_size=fam.min_size, min_size_reason=fam.min_size_reason,
          seconds_quick=fam.seconds_quick,
          description=f"NNGP and NTK of {fam.description} (stax limit; weight_var={WEIGHT_VAR}, "
                      f"bias_var={BIAS_VAR})")(fn)


for _fam in ARCHITECTURES.values():
    _register(_fam)

"""The verdict rule: when does a simulation agree with a theory? (docs/verify.md, "Verdicts")

A check measures Q quantities at sizes n_1 < ... < n_K (widths, dimensions); at each size
each quantity has a theory value T and S independent sample estimates s_1..s_S (one per
network / regression). The check **passes** only if both hold:

(a) **Level at the largest size.** For every quantity, with mean m, standard error
    SE = std(s)/sqrt(S) and error e(n) = m - T at size n,

        |e(n_K)| <= z * SE(n_K) + |e(n_{K-1})| * (n_{K-1}/n_K)^bias_rate + rtol_floor * |T|.

    The middle term allows the finite-width bias of the ensemble mean (~ n^-bias_rate,
    bias_rate = 1 for networks; a Measurement may carry its own, e.g. 2 where the theory
    includes the predicted 1/n term) extrapolated from the next-smaller size; z is the two-sided
    normal quantile at family-wise level ``alpha`` over the Q quantities (Bonferroni).

(b) **Rate.** The pooled RMS error of one sample, r(n) = sqrt(mean_q mean_s (s - T)^2), is
    fitted as log r = c + slope * log n by least squares, and

        |slope - rate| <= z_slope * SE_boot(slope) + margin,

    with SE_boot from ``n_boot`` bootstrap resamplings of the samples (networks resampled
    jointly across quantities) and ``margin`` (default 0.1) covering the sub-leading
    corrections over the size range. Skipped when the check declares no rate.

**Inconclusive** (never "pass"): a size below the check's ``min_size`` (outside the
asymptotic regime both rules assume), or, for a check that declares a rate, fewer than
three sizes (a slope through two points has no error to test) when (a) holds. A level
failure with enough sizes is a failure whatever the rate test would say.

Each quantity records the parts of its tolerance (``z_se``, ``allowance``, ``floor``), its
z-score error/SE, and ``basis``: the smallest tolerance it needed ("z*SE", "+bias
allowance", "+rtol floor"), so a report can say why it passed. A theory value of exactly
0 is a limit reached only as the size grows (the limit-zero rule): its tolerance has no
relative floor, so (a) says the error fell at least like size^-bias_rate from n_{K-1} to n_K.

A theory that is off by a constant fraction, has the wrong depth or the wrong
parametrization fails (a) once SE(n_K) is small against the error (tests/verify/test_stats.py
and tests/verify/kernels prove this at the default sizes), and gross errors also fail (b):
their RMS error stops decreasing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

__all__ = ["QuantityResult", "Verdict", "verdict", "z_quantile", "loglog_slope", "ALPHA", "SLOPE_MARGIN", "Z_SLOPE"]

ALPHA = 1e-3  # family-wise false-rejection level of (a) per check
Z_SLOPE = 3.0
SLOPE_MARGIN = 0.1


def z_quantile(alpha: float, n_tests: int = 1) -> float:
    """Two-sided normal quantile at level alpha split over n_tests (Bonferroni)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")
    return NormalDist().inv_cdf(1.0 - alpha / (2 * max(1, n_tests)))


@dataclass
class QuantityResult:
    """One quantity across sizes, and its level test (a) at the largest size."""

    quantity: str
    sizes: list
    theory: list  # theory per size (standard-parametrization NTKs depend on the width)
    mean: list
    se: list
    rms: list  # RMS error of one sample per size
    n_samples: list
    allowance: float = 0.0  # extrapolated finite-size bias allowed at the largest size
    tolerance: float = 0.0  # total tolerance at the largest size: z_se + allowance + floor
    passed: bool = True
    z_se: float = 0.0  # z * SE at the largest size
    floor: float = 0.0  # rtol_floor * |theory| at the largest size
    rtol_floor: float = 0.0
    basis: str = ""  # the smallest part of the tolerance the error needed: z*SE, +bias allowance, +rtol floor

    @property
    def error(self) -> float:
        return self.mean[-1] - self.theory[-1]

    @property
    def zscore(self) -> float:
        """error / SE at the largest size (inf for a zero SE and a non-zero error)."""
        se = self.se[-1]
        if se > 0:
            return self.error / se
        return 0.0 if self.error == 0 else math.copysign(math.inf, self.error)

    @property
    def limit_zero(self) -> bool:
        """Theory exactly 0: a limit, judged by the decay of the error (module docstring)."""
        return self.theory[-1] == 0.0


@dataclass
class Verdict:
    passed: bool
    quantities: list
    z: float
    rate: Optional[float]
    slope: Optional[float] = None
    slope_se: Optional[float] = None
    slope_tolerance: Optional[float] = None
    slope_ok: Optional[bool] = None
    pooled_rms: list = field(default_factory=list)
    reason: str = ""
    inconclusive: bool = False  # sizes too small or too few to decide (never a pass)
    min_size: int = 1
    alpha: float = 0.0

    @property
    def status(self) -> str:
        return "inconclusive" if self.inconclusive else ("pass" if self.passed else "fail")

    def to_dict(self) -> dict:
        return asdict(self)


def loglog_slope(sizes, values) -> float:
    """Least-squares slope of log(values) against log(sizes)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def _pooled_rms(samples_by_size, theory_by_size, idx=None):
    out = []
    for k, (samp, th) in enumerate(zip(samples_by_size, theory_by_size)):
        tot, cnt = 0.0, 0
        for q, s in enumerate(samp):
            if idx is not None:
                s = s[idx[k] % s.size]
            tot += float(np.sum((s - th[q]) ** 2))
            cnt += s.size
        out.append(math.sqrt(tot / cnt))
    return out


def verdict(sizes: Sequence[int], measurements: Sequence[Sequence], rate: Optional[float] = -0.5,
            bias_rate: float = 1.0, alpha: float = ALPHA, z_slope: float = Z_SLOPE, slope_margin: float = SLOPE_MARGIN,
            n_boot: int = 200, seed: int = 0, min_size: int = 1) -> Verdict:
    """Apply the rule of the module docstring; ``measurements[k]`` is the list of
    :class:`~limitlab.verify.registry.Measurement` at ``sizes[k]``; sizes below ``min_size``
    make the verdict inconclusive."""
    if len(sizes) != len(measurements) or not sizes:
        raise ValueError(f"sizes: need one list of measurements per size, got {len(sizes)} sizes and "
                         f"{len(measurements)} lists")
    order = np.argsort(np.asarray(sizes, float), kind="stable")
    sizes = [int(sizes[i]) for i in order]
    measurements = [list(measurements[i]) for i in order]
    names = [m.quantity for m in measurements[-1]]
    for k, ms in enumerate(measurements):
        if [m.quantity for m in ms] != names:
            raise ValueError(f"measurements: the quantities at size {sizes[k]} differ from those at size {sizes[-1]}")
    Q = len(names)
    z = z_quantile(alpha, Q)
    quantities, all_ok = [], True
    for q, name in enumerate(names):
        th, mean, se, rms, ns = [], [], [], [], []
        for ms in measurements:
            m = ms[q]
            s = m.samples
            S = s.size
            if S == 0:
                raise ValueError(f"measurements: quantity {name!r} has no samples")
            th.append(m.theory)
            mean.append(float(s.mean()))
            se.append(float(s.std(ddof=1) / math.sqrt(S)) if S > 1 else math.inf)
            rms.append(float(np.sqrt(np.mean((s - m.theory) ** 2))))
            ns.append(int(S))
        allowance = 0.0
        if len(sizes) > 1:
            own = measurements[-1][q].bias_rate  # a quantity's own rate overrides the check's
            allowance = abs(mean[-2] - th[-2]) * (sizes[-2] / sizes[-1]) ** (bias_rate if own is None else own)
        rtol_floor = measurements[-1][q].rtol_floor
        floor = rtol_floor * abs(th[-1])
        z_se = z * se[-1]
        tol = z_se + allowance + floor
        err = abs(mean[-1] - th[-1])
        ok = bool(err <= tol) and all(map(math.isfinite, mean))
        basis = ("outside" if not ok else "z*SE" if err <= z_se else "+bias allowance" if err <= z_se + allowance
                 else "+rtol floor")
        all_ok &= ok
        quantities.append(QuantityResult(name, sizes, th, mean, se, rms, ns, allowance, tol, ok, z_se, floor,
                                         rtol_floor, basis))
    v = Verdict(all_ok, quantities, z, rate, min_size=int(min_size), alpha=alpha)
    if not all_ok:
        bad = [qr.quantity for qr in quantities if not qr.passed]
        v.reason = f"level: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} outside tolerance at {sizes[-1]}"
    below = [n for n in sizes if n < min_size]
    if below:  # outside the asymptotic regime: neither rule can decide
        v.passed, v.inconclusive = False, True
        v.reason = (f"inconclusive: size {', '.join(map(str, below))} below the check's min_size {min_size}"
                    + (f" ({v.reason})" if v.reason else ""))
    elif all_ok and rate is not None and len(sizes) < 3:
        v.passed, v.inconclusive = False, True
        v.reason = (f"inconclusive: the rate test needs at least 3 sizes, got {len(sizes)} "
                    f"({', '.join(map(str, sizes))}); the level test passed")
    samples = [[m.samples for m in ms] for ms in measurements]
    theories = [[m.theory for m in ms] for ms in measurements]
    v.pooled_rms = _pooled_rms(samples, theories)
    if rate is not None and len(sizes) > 1 and all(r > 0 for r in v.pooled_rms):  # with 2 sizes: shown, not judged
        v.slope = loglog_slope(sizes, v.pooled_rms)
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            idx = [rng.integers(0, max(s.size for s in samp), size=max(s.size for s in samp)) for samp in samples]
            r = _pooled_rms(samples, theories, idx)
            if all(x > 0 for x in r):
                boots.append(loglog_slope(sizes, r))
        v.slope_se = float(np.std(boots, ddof=1)) if len(boots) > 1 else 0.0
        v.slope_tolerance = z_slope * v.slope_se + slope_margin
        if len(sizes) < 3:
            return v
        v.slope_ok = bool(abs(v.slope - rate) <= v.slope_tolerance)
        if not v.slope_ok and not v.inconclusive:
            v.passed = False
            v.reason = (v.reason + "; " if v.reason else "") + (
                f"rate: slope {v.slope:.3f} vs expected {rate:g} (tolerance {v.slope_tolerance:.3f})")
    return v

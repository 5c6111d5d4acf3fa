"""Verify checks of the random-feature and kernel risk pillar.

* ``risk.random-features`` — Mei & Montanari's asymptotic risk against simulated RF ridge
  regressions on the sphere at d = 100..800 (ReLU, an under- and an over-parametrized point).
* ``risk.linear-ridge`` — Hastie et al.'s risk against simulated isotropic ridge regressions.
* ``risk.kernel-ridge`` — kernel ridge regression with the limiting NTK of an MLP
  (``limitlab.theory.kernels.MLP(...).ntk``) on sphere data against the eigenframework
  prediction from the kernel's exact Funk–Hecke spectrum. At full sizes (256 regressions per
  size) it FAILS: the eigenframework is ~2% above the simulated risk at n = 400..1600 on S^3,
  a real limit of the framework there, not a bug (see the check and docs/verify.md).

The test risk of one random-features or linear regression fluctuates by O(size^-1/2) around
its limit (and the test-set average adds O(size^-1/2) noise): rate -0.5. The kernel-ridge
check has no rate test (see there).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

from . import simulate

__all__ = ["RF_POINTS", "LINEAR_POINTS", "KERNEL_SETUP", "kernel_ridge_theory", "kernel_ridge_sample"]

# (name, psi1, psi2, ridge); signal F1^2 = 1, F*^2 = 0.2, tau^2 = 0.1, ReLU
RF_POINTS = (("psi1=0.5", 0.5, 1.5, 1e-3), ("psi1=3", 3.0, 1.5, 1e-3))
RF_TARGET = dict(signal=1.0, nonlinear_signal=0.2, noise=0.1)
# (name, gamma, ridge); signal r^2 = 1, noise sigma^2 = 0.5
LINEAR_POINTS = (("gamma=0.5,ridge=0.2", 0.5, 0.2), ("gamma=2,ridge=0", 2.0, 0.0), ("gamma=2,ridge=0.5", 2.0, 0.5))
LINEAR_TARGET = dict(signal=1.0, noise=0.5)
# kernel ridge: NTK of a depth-2 ReLU MLP (with bias, so every eigenvalue is positive) on S^{d-1}
KERNEL_SETUP = dict(d=4, depth=2, weight_var=1.0, bias_var=0.1, ridge=1e-3, noise=0.05,
                    target_power={1: 0.5, 2: 0.3, 3: 0.2}, max_degree=600)


@check("risk.random-features", sizes=(100, 200, 400, 800), quick_sizes=(100, 200, 400), samples=8,
       quick_samples=6, rate=-0.5, size_name="d", default=True, min_size=50, seconds_quick=10.0,
       min_size_reason="proportional asymptotics: at d = 50 the smaller model has psi1 d = 25 features",
       description="Mei-Montanari RF ridge risk vs simulated RF regression on the sphere (ReLU)")
def _random_features(ctx: Context):
    from limitlab.theory.risk import random_features

    out = []
    for name, psi1, psi2, ridge in RF_POINTS:
        theory = random_features(psi1, psi2, ridge, "relu", **RF_TARGET).risk
        samples = [simulate.random_features_regression(ctx.size, psi1, psi2, ridge, "relu", **RF_TARGET,
                                                       seed=ctx.rng, n_test=4 * ctx.size)
                   for _ in range(ctx.samples)]
        out.append(Measurement(f"risk[{name}]", theory, samples))
    return out


@check("risk.linear-ridge", sizes=(100, 200, 400, 800), quick_sizes=(100, 200, 400), samples=16, quick_samples=8,
       rate=-0.5, size_name="p", default=True, min_size=50, seconds_quick=6.0,
       min_size_reason="proportional asymptotics: at p = 50 the under-parametrized point has n = 100 samples",
       description="Hastie et al. isotropic ridge/ridgeless risk vs simulated least squares")
def _linear_ridge(ctx: Context):
    from limitlab.theory.risk.linear_ridge import linear_ridge

    out = []
    for name, gamma, ridge in LINEAR_POINTS:
        theory = linear_ridge(gamma, ridge, **LINEAR_TARGET).risk
        samples = [simulate.linear_ridge_regression(ctx.size, gamma, ridge, **LINEAR_TARGET, seed=ctx.rng)
                   for _ in range(ctx.samples)]
        out.append(Measurement(f"risk[{name}]", theory, samples))
    return out


def _mlp():
    from limitlab.theory.kernels import MLP

    s = KERNEL_SETUP
    return MLP(s["depth"], "relu", weight_var=s["weight_var"], bias_var=s["bias_var"])


@lru_cache(maxsize=None)
def _spectrum():
    from limitlab.theory.risk.sphere_spectra import dot_product_kernel, sphere_spectrum

    s = KERNEL_SETUP
    return sphere_spectrum(dot_product_kernel(_mlp(), "ntk"), s["d"], s["max_degree"], nodes=4 * s["max_degree"])


def kernel_ridge_theory(n):
    """Eigenframework test MSE (noisy test labels) of the KERNEL_SETUP problem at n samples."""
    from limitlab.theory.risk.eigenlearning import kernel_ridge

    s = KERNEL_SETUP
    spec = _spectrum()
    lam, mult = spec.eigenvalues, spec.multiplicities
    # eigenvalues below the quadrature's absolute accuracy (~1e-14 k(1)) carry no information
    keep = lam > 1e-13 * spec.trace
    target = np.zeros(lam.size)
    for l, p in s["target_power"].items():
        target[l] = math.sqrt(p)
    if not np.all(keep[list(s["target_power"])]):
        raise RuntimeError("kernel-ridge check: a target degree has a non-positive eigenvalue")
    # the spectrum's tail (degrees above max_degree and dropped eigenvalues; eigenvalues ~1e-12, far
    # below kappa ~ 5e-5) enters sum lambda/(lambda + kappa) as tail/kappa: an extra ridge equal to its
    # trace, k(1) - sum N lambda = 5.3e-4, half the ridge 1e-3 (leaving it out put the theory ~0.4% high).
    # Exact within the eigenframework (the tail's L_i <= 5e-8), and what the regression does: with the
    # kernel cut at degree 30 or 80 plus (ridge + tail) I, the simulated risk moves by 1.6e-5 and 4e-7
    # (n = 800, 200 paired regressions; tests/verify/risk/test_checks.py)
    tail = max(spec.trace - float(np.sum(lam[keep] * mult[keep])), 0.0)
    return kernel_ridge(lam[keep], target[keep], n, s["ridge"] + tail, s["noise"],
                        multiplicities=mult[keep]).test_risk


def kernel_ridge_sample(n, rng, n_test=None):
    """Test MSE (noisy labels) of one kernel ridge regression with the limiting NTK, n points on S^{d-1}."""
    from limitlab.theory.risk.sphere_spectra import legendre_d, multiplicity

    s = KERNEL_SETUP
    d = s["d"]
    model = _mlp()
    z = rng.standard_normal(d)
    z /= np.linalg.norm(z)
    L = max(s["target_power"])

    def target(X):
        t = X @ z / math.sqrt(d)  # cosine with z (|x| = sqrt d)
        P = legendre_d(L, d, t)
        return sum(math.sqrt(p * multiplicity(d, l)) * P[l] for l, p in s["target_power"].items())

    n_test = n_test or 4 * n  # test-set noise then shrinks like the regression's own fluctuation
    X = simulate.sphere(n, d, rng)
    Xt = simulate.sphere(n_test, d, rng)
    sd = math.sqrt(s["noise"])
    y = target(X) + sd * rng.standard_normal(n)
    yt = target(Xt) + sd * rng.standard_normal(n_test)
    test, _ = simulate.kernel_ridge_regression(lambda A, B: model.ntk(A, B), X, y, Xt, yt, s["ridge"])
    return test


# No rate test here: the test MSE mixes the excess risk, whose fluctuations fall faster than
# n^-1/2 as it decays (measured slope -1.1 over n = 100..800), with test-set noise ~ n^-1/2, so
# the RMS error follows no single power law over these sizes; the level test (a) decides.
#
# Samples: one regression's test MSE scatters by 3.2% (n = 800) and 4.6% (n = 400). With 256 per
# size, z*SE at n = 800 is ~0.6% and a theory off by a constant 2% gets a bias allowance of ~1%
# (half the n = 400 error), so it is rejected (~1.6% tolerance; measured on one full run: the
# theory x 0.98, matching the simulation, passes, x 0.96 and x 1.0 fail); with the former 16 samples the
# tolerance was ~3.7% and a 2% error passed unseen. Known and open: the eigenframework itself is
# 1.9% above the simulation at n = 400 and 800 (200 regressions each: -5.8 and -8.2 SE; +6% at
# n = 100, -0.2% at 200), so at full sizes this check fails. Located (docs/verify.md): with the
# kernel cut at degree 10 or 20 (+ tail as ridge) Gaussian features reproduce the theory (+0.06%,
# -0.19%) while the sphere's harmonics do so only at degree 10 (-0.3%), not at 20 (-1.8%): the
# degree 11-20 harmonics on S^3 (eigenvalues below kappa, 2805 of them for 800 points) are not
# Gaussian-equivalent, which the framework assumes.
@check("risk.kernel-ridge", sizes=(100, 200, 400, 800), quick_sizes=(100, 200, 400), samples=256, quick_samples=8,
       rate=None, size_name="n", default=True, min_size=50, seconds_quick=6.0,
       min_size_reason="the eigenframework is an n -> infinity statement; below 50 samples not even the target's "
                       "degree-1 and -2 harmonics (4 + 9 functions on S^3) are well resolved",
       description="KRR with the limiting NTK of a ReLU MLP on the sphere vs the eigenframework")
def _kernel_ridge(ctx: Context):
    theory = kernel_ridge_theory(ctx.size)
    samples = [kernel_ridge_sample(ctx.size, ctx.rng) for _ in range(ctx.samples)]
    return [Measurement("test_mse", theory, samples)]

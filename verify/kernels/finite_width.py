"""Verify checks of the finite-width (1/n) theory of MLPs (``limitlab.theory.kernels.finite_width``).

Each network of an ensemble at width n gives its readout-integrated empirical NNGP Ghat on
the three inputs of the kernel checks (``checks.INPUTS``); every entry of the upper triangle
is one Ghat_p, p = (a, b).

* ``kernels.finite-width.nngp-mean.<act>``: per network, n (Ghat_p - K_p); theory K1_p
  (Roberts, Yaida & Hanin 2022, PDLT eq. (4.115)): E[Ghat] = K + K1/n + O(1/n^2), so the
  ensemble mean tends to K1 with a bias O(1/n) (bias_rate 1), while one network's value
  spreads like sqrt(n V) (rate +0.5).
* ``kernels.finite-width.four-point.<act>``: per network and pair of entries (p, q),
  n (Ghat_p - m_p)(Ghat_q - m_q) with m = K + K1/n the predicted mean; theory V_(p)(q)
  (PDLT eq. (4.90)): n Cov -> V with a bias O(1/n) (bias_rate 1). The entries are those on at
  most two distinct inputs (the blocks K1 is made of; entries on three inputs are compared with
  simulation in tests/verify/kernels/test_finite_width_checks.py). No rate test: one network's
  product spreads O(1), but with heavy tails at these depth/width (ReLU's kurtosis grows like
  (1 + 5/n)^L), whose decay makes the fitted slope of its RMS error drift from 0.

The NTK parametrization's empirical NTK Thetahat_aa of one input a (the output's, readout
included; ``FiniteWidth.ntk_*``, docs/finite_width.md, "The NTK (single input)"), on each of the
three inputs:

* ``kernels.finite-width.ntk-variance.<act>``: per network, n (Thetahat_aa - m_a)^2 with m =
  Theta + Theta1/n the predicted mean; theory A + 2B (n Var[Thetahat_aa] -> A + 2B, PDLT ch. 8's
  A and B); bias O(1/n) (bias_rate 1); no rate test (heavy tails, as for the four-point check).
* ``kernels.finite-width.ntk-covariance.<act>``: the same on pairs of inputs, as the four-point
  check for the NNGP: per network and pair of entries (p, q), n (Thetahat_p - m_p)(Thetahat_q -
  m_q) with m = Theta + Theta1/n on every entry (``FiniteWidth.ntk`` and ``ntk_correction``);
  theory ``FiniteWidth.ntk_covariance_pairs`` (one output neuron's n Cov), the 15 entries on at
  most two distinct inputs (its (aa)(aa) entries are the variance check's A + 2B).
* ``kernels.finite-width.ntk-mean.<act>``: per network and entry p = (a, b) of the upper
  triangle, n (Thetahat_p - Theta_p) - beta_p n (Ghat_p - K_p - K1_p/n); theory Theta1_p
  (E[Thetahat] = Theta + Theta1/n + O(1/n^2), ``FiniteWidth.ntk_correction``). The second term has
  mean O(1/n) (the NNGP's own 1/n theory, checked by nngp-mean), so it leaves the limit Theta1
  unchanged; it is a control variate: with beta_p = D_pp / V_pp (n Cov[Thetahat_p, Ghat_p] -> D,
  n Var[Ghat_p] -> V; ``ntk_pair_tensors``, ``four_point_pairs``) it removes the part of the NTK's
  fluctuation carried by the NNGP's, on one input asymptotically a fraction D^2 / (V (A + 2B)) of
  the variance (0.73 for the GELU network; measured at n = 16-64: 2.5-3.3x fewer networks for the
  same SE on the diagonal, 3.4-6x off it at n = 16). Bias O(1/n) (bias_rate 1).
  No rate test: one network's value spreads like sqrt(n) only asymptotically; at these widths
  n^2 Var[Thetahat] = n (A + 2B) + O(1) with the O(1) part as large as the first (n Var is twice
  A + 2B at n = 16), and the RMS error's fitted slope was 0.25, not 0.5 (widths 16-64).
  ReLU's Theta1 is exactly 0 on one input (with or without biases: <phi'^2> and <phi^2>/K are
  constant), so its check tests Theta1 on the pairs only (the diagonal's error must stay within
  the noise); critical tanh's is 0.1 of the NTK's spread sqrt(A + 2B), which no affordable
  ensemble resolves; GELU at weight_var 1 without biases has Theta1 / sqrt(A + 2B) = 0.68, 0.68,
  0.56 on the three inputs.

The networks are critical (PDLT ch. 5: ReLU at C_W = 2, tanh at C_W = 1, no biases; the NTK
mean check's GELU aside) and of depth ``DEPTH``, so that both K1 and the propagated part of V
(and of the NTK's A, B, D, F) are exercised. A theory wrong
by a constant factor is rejected with the power measured in
tests/verify/kernels/test_finite_width_checks.py (docs/finite_width.md, "Verify").
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from limitlab.verify.registry import Context, Measurement, check

__all__ = ["NETWORKS", "NTK_MEAN_NETWORKS", "spec", "theory", "ntk_theory", "ntk_pair_theory", "measure_mean",
           "measure_four_point", "ntk_samples", "measure_ntk_variance", "measure_ntk_covariance", "measure_ntk_mean",
           "pairs", "four_point_entries"]

NETWORKS = {"relu": dict(weight_var=2.0, bias_var=0.0), "tanh": dict(weight_var=1.0, bias_var=0.0)}
# the NTK mean check's networks: GELU (Theta1 large against the spread on every input; small for
# critical tanh) and ReLU, whose Theta1 is 0 on the diagonal but not on the pairs
NTK_MEAN_NETWORKS = {"gelu": dict(weight_var=1.0, bias_var=0.0)}
NTK_MEAN_ACTIVATIONS = ("gelu", "relu")
DEPTH = 3
# the mean: one network's n (Ghat - K) spreads like sqrt(n V), so small widths and many networks
MEAN_SIZES = (16, 64, 256)
MEAN_QUICK_SIZES = (16, 32, 64)
MEAN_SAMPLES = 200_000
MEAN_QUICK_SAMPLES = 20_000
# the covariance: one network's product spreads O(1); its O(1/n) bias needs the larger widths
FOUR_SIZES = (64, 256, 1024)
FOUR_QUICK_SIZES = (32, 64, 128)
FOUR_SAMPLES = 200_000
FOUR_QUICK_SAMPLES = 40_000
# the NTK's variance: one network's n (Thetahat - m)^2 spreads O(1) (heavy-tailed). For a theory off by a
# factor 1 + d, the allowance absorbs an exact c/n bias and leaves (1 - n_{K-1}/n_K) d of the error:
# half at the quick sizes (2x apart), three quarters at the full ones (4x apart)
NTK_VAR_SIZES = (32, 128, 512)
NTK_VAR_QUICK_SIZES = (32, 64, 128)
NTK_VAR_SAMPLES = 200_000
NTK_VAR_QUICK_SAMPLES = 40_000
# the NTK's mean: one network's value spreads like sqrt(n (1 - rho^2)(A + 2B)): small widths
NTK_MEAN_SIZES = (16, 32, 64)
NTK_MEAN_QUICK_SIZES = (16, 32, 64)
NTK_MEAN_SAMPLES = 800_000
NTK_MEAN_QUICK_SAMPLES = 50_000
MIN_WIDTH = 16
MIN_WIDTH_REASON = ("the 1/n expansion needs depth/width small (PDLT ch. 5; Hanin & Nica 2020): 16 keeps "
                    f"depth/width <= {DEPTH}/16")
# measured, loaded 2-core machine (ntk-variance: ReLU; tanh ~10)
SECONDS_QUICK = {"nngp-mean": 8.0, "four-point": 12.0, "ntk-variance": 20.0, "ntk-covariance": 20.0, "ntk-mean": 12.0}


def spec(activation: str):
    from limitlab.theory.kernels import MLP

    return MLP(DEPTH, activation, **{**NETWORKS, **NTK_MEAN_NETWORKS}[activation])


def pairs():
    from limitlab.verify.kernels.checks import PAIRS

    return PAIRS


@lru_cache(maxsize=None)
def theory(activation: str):
    """(K, K1, Vb) of the check's network on ``checks.INPUTS``; Vb: the two-input blocks of V
    (``FiniteWidth.four_point_pairs``), which need only two-input quadratures (fast)."""
    from limitlab.theory.kernels import finite_width
    from limitlab.verify.kernels.checks import INPUTS

    fw = finite_width(spec(activation), INPUTS, four_point=False, ntk_pairs=False)
    return fw.nngp, fw.nngp_correction, fw.four_point_pairs


@lru_cache(maxsize=None)
def ntk_theory(activation: str) -> dict:
    """The NTK theory of the check's network on ``checks.INPUTS``: single input, (N,) arrays, Theta
    ("theta"), Theta1 ("theta1"), A + 2B ("variance"); on pairs, (N, N): Theta ("ntk"), Theta1
    ("ntk_correction"), the NNGP's K and K1, and the control variate's coefficient beta_ab =
    D_(ab)(ab) / V_(ab)(ab) (n Cov[Thetahat_ab, Ghat_ab] / n Var[Ghat_ab], ``ntk_pair_tensors``)."""
    from limitlab.theory.kernels import finite_width
    from limitlab.verify.kernels.checks import INPUTS

    fw = finite_width(spec(activation), INPUTS, four_point=False, ntk_pairs=True)
    N = INPUTS.shape[0]
    D, V = fw.layers[-1].ntk_pair_tensors["D"], fw.four_point_pairs
    beta = np.array([[D[0 if a == b else 2, 0 if a == b else 2, a, b] / V[0 if a == b else 2, 0 if a == b else 2, a, b]
                      for b in range(N)] for a in range(N)])
    return dict(theta=fw.ntk_diag, theta1=fw.ntk_correction_diag, variance=fw.ntk_variance_diag, ntk=fw.ntk,
                ntk_correction=fw.ntk_correction, nngp=fw.nngp, nngp_correction=fw.nngp_correction, beta=beta)


@lru_cache(maxsize=None)
def ntk_pair_theory(activation: str):
    """(m, C): the NTK's predicted mean at width n as a function m(n) = Theta + Theta1/n (N, N), and
    the one-neuron covariance blocks C[e, g, a, b] (``FiniteWidth.ntk_covariance_pairs``)."""
    from limitlab.theory.kernels import finite_width
    from limitlab.verify.kernels.checks import INPUTS

    fw = finite_width(spec(activation), INPUTS, four_point=False, ntk_pairs=True)
    return fw.ntk, fw.ntk_correction, fw.ntk_covariance_pairs


def four_point_entries():
    """The compared entries of V: (label, (e, g) block indices, (p, q) positions in pairs()) with
    e, g in 0: (aa), 1: (bb), 2: (ab); all entries of V on at most two distinct inputs."""
    P = pairs()
    pos = {p: k for k, p in enumerate(P)}
    out = []
    for a, b in P:
        if a == b:
            out.append((f"V[({a}{a})({a}{a})]", (0, 0), (a, b), (pos[(a, a)], pos[(a, a)])))
            continue
        for e, g, lab in ((0, 2, f"({a}{a})({a}{b})"), (0, 1, f"({a}{a})({b}{b})"), (2, 2, f"({a}{b})({a}{b})"),
                          (2, 1, f"({a}{b})({b}{b})")):
            pe = [(a, a), (b, b), (a, b)]
            out.append((f"V[{lab}]", (e, g), (a, b), (pos[pe[e]], pos[pe[g]])))
    return out


def _samples(ctx: Context, activation: str):
    from limitlab.verify.kernels.checks import INPUTS
    from limitlab.verify.montecarlo import sample_kernels

    # the weights sampler is the faster one at these small widths (docs/benchmarks.md)
    method = "weights" if ctx.size <= 32 else "auto"
    ks = sample_kernels(spec(activation), INPUTS, width=ctx.size, n_networks=ctx.samples, seed=ctx.rng,
                        backend=ctx.backend, method=method)
    P = pairs()
    return np.stack([ks.nngp[:, i, j] for i, j in P], axis=1)  # (S, len(P))


def measure_mean(ctx: Context, activation: str, theory_fn=None) -> list:
    """n (Ghat_p - K_p) per network against K1_p; ``theory_fn() -> (K, K1, V)`` overrides the theory."""
    K, K1, _ = theory_fn() if theory_fn is not None else theory(activation)
    G = _samples(ctx, activation)
    n = ctx.size
    return [Measurement(f"n(nngp-K)[{i},{j}]", K1[i, j], n * (G[:, q] - K[i, j])) for q, (i, j) in enumerate(pairs())]


def measure_four_point(ctx: Context, activation: str, theory_fn=None) -> list:
    """n (Ghat_p - m_p)(Ghat_q - m_q) per network against V_(p)(q), m = K + K1/n."""
    K, K1, Vb = theory_fn() if theory_fn is not None else theory(activation)
    G = _samples(ctx, activation)
    n = ctx.size
    m = np.array([K[i, j] + K1[i, j] / n for i, j in pairs()])
    D = G - m[None, :]
    return [Measurement(label, Vb[e, g, a, b], n * D[:, p] * D[:, q])
            for label, (e, g), (a, b), (p, q) in four_point_entries()]


def ntk_samples(ctx: Context, activation: str):
    """Per network: the empirical NTK and NNGP, (S, N, N) each."""
    from limitlab.verify.kernels.checks import INPUTS
    from limitlab.verify.montecarlo import sample_kernels

    # measured, 3 inputs: the conditional sampler (auto) is the faster one for tanh and GELU at widths
    # 16-256; for ReLU at widths <= 32 the weights sampler is (3x at 32, 12x at 16: the conditional one
    # redoes the networks whose Gram matrices are ill-conditioned by thin QR, one by one)
    method = "weights" if activation == "relu" and ctx.size <= 32 else "auto"
    ks = sample_kernels(spec(activation), INPUTS, width=ctx.size, n_networks=ctx.samples, seed=ctx.rng,
                        backend=ctx.backend, method=method)
    return ks.ntk, ks.nngp


def measure_ntk_variance(ctx: Context, activation: str, theory_fn=None, samples=None) -> list:
    """n (Thetahat_aa - m_a)^2 per network against A_a + 2 B_a, m = Theta + Theta1/n; ``theory_fn()``
    overrides ``ntk_theory`` and ``samples`` (``ntk_samples``' pair) the simulation."""
    th = theory_fn() if theory_fn is not None else ntk_theory(activation)
    T = np.diagonal((samples if samples is not None else ntk_samples(ctx, activation))[0], axis1=1, axis2=2)
    n = ctx.size
    m = th["theta"] + th["theta1"] / n
    return [Measurement(f"nVar(ntk)[{a},{a}]", th["variance"][a], n * (T[:, a] - m[a]) ** 2)
            for a in range(T.shape[1])]


def measure_ntk_covariance(ctx: Context, activation: str, theory_fn=None, samples=None) -> list:
    """n (Thetahat_p - m_p)(Thetahat_q - m_q) per network against C_(p)(q), m = Theta + Theta1/n, for the
    entries of ``four_point_entries``; ``theory_fn() -> (Theta, Theta1, C)`` overrides ``ntk_pair_theory``,
    ``samples`` (``ntk_samples``' pair) the simulation."""
    Th, Th1, C = theory_fn() if theory_fn is not None else ntk_pair_theory(activation)
    ntk, _ = samples if samples is not None else ntk_samples(ctx, activation)
    n = ctx.size
    m = np.array([Th[i, j] + Th1[i, j] / n for i, j in pairs()])
    D = np.stack([ntk[:, i, j] for i, j in pairs()], axis=1) - m[None, :]
    return [Measurement(label.replace("V[", "C[", 1), C[e, g, a, b], n * D[:, p] * D[:, q])
            for label, (e, g), (a, b), (p, q) in four_point_entries()]


def measure_ntk_mean(ctx: Context, activation: str, theory_fn=None, samples=None) -> list:
    """n (Thetahat_ab - Theta_ab) - beta_ab n (Ghat_ab - K_ab - K1_ab/n) per network against Theta1_ab,
    every entry of the upper triangle (module docstring); ``theory_fn`` and ``samples`` as for
    :func:`measure_ntk_variance`."""
    th = theory_fn() if theory_fn is not None else ntk_theory(activation)
    ntk, G = samples if samples is not None else ntk_samples(ctx, activation)
    n = ctx.size
    y = n * (ntk - th["ntk"]) - th["beta"] * n * (G - th["nngp"] - th["nngp_correction"] / n)
    return [Measurement(f"n(ntk-Theta)[{a},{b}]", th["ntk_correction"][a, b], y[:, a, b]) for a, b in pairs()]


def _register_ntk(kind: str, activation: str):
    cfg = {**NETWORKS, **NTK_MEAN_NETWORKS}[activation]
    desc = f"depth-{DEPTH} {activation} MLP ({cfg}), NTK parametrization, each of the kernel checks' 3 inputs"
    if kind == "ntk-variance":
        def fn(ctx: Context):
            return measure_ntk_variance(ctx, activation)

        kw = dict(sizes=NTK_VAR_SIZES, quick_sizes=NTK_VAR_QUICK_SIZES, samples=NTK_VAR_SAMPLES,
                  quick_samples=NTK_VAR_QUICK_SAMPLES, rate=None,
                  description=f"n Var[empirical NTK] -> A + 2B (PDLT ch. 8): {desc}")
    elif kind == "ntk-covariance":
        def fn(ctx: Context):
            return measure_ntk_covariance(ctx, activation)

        kw = dict(sizes=NTK_VAR_SIZES, quick_sizes=NTK_VAR_QUICK_SIZES, samples=NTK_VAR_SAMPLES,
                  quick_samples=NTK_VAR_QUICK_SAMPLES, rate=None,
                  description=f"n Cov[empirical NTK entries] on input pairs (PDLT ch. 8's A, B, D, F): "
                              f"{desc.replace(', each of', ', on')}")
    else:
        def fn(ctx: Context):
            return measure_ntk_mean(ctx, activation)

        kw = dict(sizes=NTK_MEAN_SIZES, quick_sizes=NTK_MEAN_QUICK_SIZES, samples=NTK_MEAN_SAMPLES,
                  quick_samples=NTK_MEAN_QUICK_SAMPLES, rate=None,
                  description=f"n (E[empirical NTK] - Theta) -> Theta1 (PDLT ch. 8), NNGP control variate: {desc}")
    fn.__name__ = f"kernels_finite_width_{kind.replace('-', '_')}_{activation}"
    check(f"kernels.finite-width.{kind}.{activation}", bias_rate=1.0,
          tags=("kernels", "finite-width", "ntk", activation), min_size=MIN_WIDTH, min_size_reason=MIN_WIDTH_REASON,
          seconds_quick=SECONDS_QUICK[kind], **kw)(fn)


def _register(activation: str):
    desc = f"depth-{DEPTH} critical {activation} MLP ({NETWORKS[activation]}) on the kernel checks' 3 inputs"

    def mean_fn(ctx: Context):
        return measure_mean(ctx, activation)

    def four_fn(ctx: Context):
        return measure_four_point(ctx, activation)

    mean_fn.__name__ = f"kernels_finite_width_nngp_mean_{activation}"
    four_fn.__name__ = f"kernels_finite_width_four_point_{activation}"
    tags = ("kernels", "finite-width", activation)
    check(f"kernels.finite-width.nngp-mean.{activation}", sizes=MEAN_SIZES, quick_sizes=MEAN_QUICK_SIZES,
          samples=MEAN_SAMPLES, quick_samples=MEAN_QUICK_SAMPLES, rate=0.5, bias_rate=1.0, tags=tags,
          min_size=MIN_WIDTH, min_size_reason=MIN_WIDTH_REASON, seconds_quick=SECONDS_QUICK["nngp-mean"],
          description=f"n (E[empirical NNGP] - K) -> K1 (PDLT eq. 4.115): {desc}")(mean_fn)
    check(f"kernels.finite-width.four-point.{activation}", sizes=FOUR_SIZES, quick_sizes=FOUR_QUICK_SIZES,
          samples=FOUR_SAMPLES, quick_samples=FOUR_QUICK_SAMPLES, rate=None, bias_rate=1.0, tags=tags,
          min_size=MIN_WIDTH, min_size_reason=MIN_WIDTH_REASON, seconds_quick=SECONDS_QUICK["four-point"],
          description=f"n Cov[empirical NNGP] -> V, the four-point vertex (PDLT eq. 4.90): {desc}")(four_fn)


for _a in NETWORKS:
    _register(_a)
    _register_ntk("ntk-variance", _a)
    _register_ntk("ntk-covariance", _a)
for _a in NTK_MEAN_ACTIVATIONS:
    _register_ntk("ntk-mean", _a)

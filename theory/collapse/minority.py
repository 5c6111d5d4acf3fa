"""Minority collapse in the layer-peeled model (LPM) with cross-entropy.

Source: Fang, He, Long, Su 2021, "Exploring deep neural networks via layer-peeled model:
Minority collapse in imbalanced training", PNAS 118(43), eq. (9) and Theorem 5 (as the
imbalance ratio R = n_A / n_B grows, the minority classifiers' angle tends to 0):

    min (1/N) sum_k sum_{i<=n_k} CE(W h_{k,i}, k)
    s.t. (1/C) sum_k ||w_k||^2 <= E_W,   (1/C) sum_k (1/n_k) sum_i ||h_{k,i}||^2 <= E_H,

with k_A majority classes of n_A samples and k_B minority classes of n_B samples. Fang et
al. show the program is equivalent to a convex semidefinite program in the Gram matrix
of [W; H_bar] (features of a class collapse by convexity of CE). That convex program is
invariant under permutations of the classes inside each group, so averaging any
optimum over the group gives a symmetric optimum: its Gram matrix has 16 free entries
(norms and inner products within and across the groups). We parametrize its three
invariant blocks (A-contrast 2x2, B-contrast 2x2, group-mean 4x4) by Cholesky factors,
scale W and H so both constraints are active (CE decreases along the scale of any
solution with correct predictions), and minimize with BFGS from a few starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from limitlab.numerics import validation as validate

__all__ = ["MinorityCollapse", "minority_collapse", "lpm_loss"]


@dataclass
class MinorityCollapse:
    """Symmetric optimum of the LPM. Cosines are between distinct classifiers of the same
    group; ``minority_angle`` = arccos(minority_cosine) in radians. When the minority
    classifiers vanish (norm below 1e-10 E_W, as happens at large ratios) they coincide:
    the cosine is reported as 1 and ``minority_distance_sq`` = ||w_k - w_k'||^2 = 0 is the
    well-defined quantity (Fang et al.'s Theorem 5 is stated for w_k - w_k')."""

    ratio: float
    k_A: int
    k_B: int
    loss: float
    majority_cosine: float
    minority_cosine: float
    cross_cosine: float
    majority_norm_sq: float
    minority_norm_sq: float
    minority_distance_sq: float
    gram: np.ndarray  # (2C, 2C) Gram of [W; H_bar] rows, majority classes first

    @property
    def minority_angle(self) -> float:
        return float(np.arccos(np.clip(self.minority_cosine, -1.0, 1.0)))


def lpm_loss(W, H, counts):
    """LPM cross-entropy (1/N) sum_k n_k CE(W h_k, k) for collapsed features H (C, d)."""
    W, H, n = np.asarray(W, float), np.asarray(H, float), np.asarray(counts, float)
    logits = H @ W.T  # row k: logits of class-k features
    ce = logsumexp(logits, axis=1) - np.diag(logits)
    return float(n @ ce / n.sum())


def _blocks(theta):
    LA = np.array([[theta[0], 0.0], [theta[1], theta[2]]])
    LB = np.array([[theta[3], 0.0], [theta[4], theta[5]]])
    LM = np.zeros((4, 4))
    LM[np.tril_indices(4)] = theta[6:16]
    return LA @ LA.T, LB @ LB.T, LM @ LM.T


def _entries(theta, kA, kB, EW, EH):
    """The 16 Gram entries (p: w.w, q: h.h, r: w.h) of the symmetric solution, scaled so
    both norm constraints are active. Plain floats: this runs inside the optimizer loop."""
    a0, a1, a2, b0, b1, b2 = (float(t) for t in theta[:6])
    m = [float(t) for t in theta[6:16]]  # rows of the lower-triangular 4x4 factor
    L = [m[0:1], m[1:3], m[3:6], m[6:10]]

    def km(i, j):
        return sum(L[i][k] * L[j][k] for k in range(min(i, j) + 1))

    KA00, KA01, KA11 = a0 * a0, a0 * a1, a1 * a1 + a2 * a2
    KB00, KB01, KB11 = b0 * b0, b0 * b1, b1 * b1 + b2 * b2
    s = math.sqrt(kA * kB)
    p1 = (km(0, 0) + (kA - 1) * KA00) / kA
    q1 = (km(2, 2) + (kA - 1) * KA11) / kA
    r1 = (km(0, 2) + (kA - 1) * KA01) / kA
    p3 = (km(1, 1) + (kB - 1) * KB00) / kB
    q3 = (km(3, 3) + (kB - 1) * KB11) / kB
    r3 = (km(1, 3) + (kB - 1) * KB01) / kB
    C = kA + kB
    wa = C * EW / (kA * p1 + kB * p3)
    hb = C * EH / (kA * q1 + kB * q3)
    ab = math.sqrt(wa * hb)
    return dict(p1=wa * p1, p2=wa * (p1 - KA00), p3=wa * p3, p4=wa * (p3 - KB00), p5=wa * km(0, 1) / s,
                q1=hb * q1, q2=hb * (q1 - KA11), q3=hb * q3, q4=hb * (q3 - KB11), q5=hb * km(2, 3) / s,
                r1=ab * r1, r2=ab * (r1 - KA01), r3=ab * r3, r4=ab * (r3 - KB01), r5=ab * km(0, 3) / s,
                r6=ab * km(1, 2) / s)


def _ce(own, other, n_other, cross, n_cross):
    # -own + log(e^own + n_other e^other + n_cross e^cross), shifted for stability
    top = max(own, other if n_other else own, cross)
    z = math.exp(own - top) + n_other * math.exp(other - top) + n_cross * math.exp(cross - top)
    return top + math.log(z) - own


def _loss(e, kA, kB, nA, nB):
    ceA = _ce(e["r1"], e["r2"], kA - 1, e["r6"], kB)
    ceB = _ce(e["r3"], e["r4"], kB - 1, e["r5"], kA)
    return (kA * nA * ceA + kB * nB * ceB) / (kA * nA + kB * nB)


def _gram(e, kA, kB):
    C = kA + kB
    A = np.arange(C) < kA

    def block(d_a, o_a, d_b, o_b, ab, ba):
        G = np.where(A[:, None] & A[None, :], o_a, 0.0) + np.where(~A[:, None] & ~A[None, :], o_b, 0.0)
        G = G + np.where(A[:, None] & ~A[None, :], ab, 0.0) + np.where(~A[:, None] & A[None, :], ba, 0.0)
        G[np.diag_indices(C)] = np.where(A, d_a, d_b)
        return G

    WW = block(e["p1"], e["p2"], e["p3"], e["p4"], e["p5"], e["p5"])
    HH = block(e["q1"], e["q2"], e["q3"], e["q4"], e["q5"], e["q5"])
    WH = block(e["r1"], e["r2"], e["r3"], e["r4"], e["r5"], e["r6"])  # (w_i . h_j)
    return np.block([[WW, WH], [WH.T, HH]])


def minority_collapse(ratio: float, k_A: int = 5, k_B: int = 5, *, E_W: float = 1.0, E_H: float = 1.0,
                      n_B: float = 1.0, starts: int = 4, seed=0) -> MinorityCollapse:
    """Symmetric optimum of the layer-peeled model at imbalance ratio ``ratio`` = n_A / n_B
    (Fang et al. 2021, eq. (9)); its ``minority_angle`` is Fig. 2's quantity."""
    R = validate.positive(ratio, "ratio")
    kA, kB = validate.integer(k_A, "k_A", minimum=1), validate.integer(k_B, "k_B", minimum=1)
    if kA + kB < 2:
        raise ValueError("k_A + k_B must be >= 2")
    EW, EH, nB = validate.positive(E_W, "E_W"), validate.positive(E_H, "E_H"), validate.positive(n_B, "n_B")
    starts = validate.integer(starts, "starts", minimum=1)
    nA = R * nB
    rng = np.random.default_rng(seed)

    def f(theta):
        return _loss(_entries(theta, kA, kB, EW, EH), kA, kB, nA, nB)

    best = None
    for _ in range(starts):
        th0 = rng.standard_normal(16)
        res = minimize(f, th0, method="BFGS", options=dict(gtol=1e-10, maxiter=5000))
        if best is None or res.fun < best.fun:
            best = res
    e = _entries(best.x, kA, kB, EW, EH)
    return MinorityCollapse(
        ratio=R, k_A=kA, k_B=kB, loss=float(best.fun),
        majority_cosine=float(e["p2"] / e["p1"]) if kA > 1 else float("nan"),
        minority_cosine=(float(min(e["p4"] / e["p3"], 1.0)) if e["p3"] > 1e-10 * EW else 1.0) if kB > 1
        else float("nan"),
        cross_cosine=float(e["p5"] / np.sqrt(e["p1"] * e["p3"])),
        majority_norm_sq=float(e["p1"]), minority_norm_sq=float(e["p3"]),
        minority_distance_sq=float(max(2 * (e["p3"] - e["p4"]), 0.0)) if kB > 1 else float("nan"), gram=_gram(e, kA, kB))

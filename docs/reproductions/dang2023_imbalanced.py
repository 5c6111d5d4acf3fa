"""Dang et al. 2023 (ICML), "Neural Collapse in Deep Linear Networks: From Balanced to
Imbalanced Data", Thm 3.1: the global minimizer of the bias-free MSE unconstrained-features
model with an M-layer linear head, for imbalanced classes, against gradient descent.

For each depth M the script prints, per class, the closed-form ||w_k||^2, ||h_k||^2 and
(W h_k)_k and the best of several gradient-descent runs from random starts, then the class
sizes at which the stationarity equation gets a root and at which the class stops
collapsing to zero (for M >= 2 the second is larger: in between, zero wins).

    .venv/bin/python docs/reproductions/dang2023_imbalanced.py [--starts 3] [--dim 8]
"""
from __future__ import annotations

import argparse

import numpy as np

from limitlab.theory.collapse import ufm_global_minimizer, ufm_thresholds
from limitlab.verify.collapse.checks import ufm_gradient_descent

CASES = [  # (M, class sizes, lambda_W, lambda_H, lr, steps)
    (1, (30, 20, 10, 5, 2), 0.05, 0.01, 1.0, 3000),
    (2, (30, 20, 10, 5, 2), 0.003, 0.001, 1.0, 6000),
    (3, (30, 20, 10, 5, 2), 0.002, 0.001, 0.5, 8000),
    # M = 2, class 3 between the two thresholds: the root exists but zero is the global
    # minimum; gradient descent from random starts can end at either (compare the runs)
    (2, (12, 8, 5, 2), 0.062, 0.004, 1.0, 6000),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--dim", type=int, default=8)
    a = ap.parse_args()
    for M, counts, lw, lh, lr, steps in CASES:
        g = ufm_global_minimizer(counts, lw, lh, M)
        f, P, H, y = ufm_gradient_descent(counts, lw, lh, M, a.dim, starts=a.starts, lr=lr, steps=steps, seed=M)
        best = int(np.argmin(f))
        hbar = np.stack([H[best][y == k].mean(0) for k in range(len(counts))])
        w2, h2 = np.sum(P[best] ** 2, 1), np.sum(hbar ** 2, 1)
        al = np.sum(P[best] * hbar, 1)
        G = P[best] @ P[best].T
        off = np.max(np.abs(G - np.diag(np.diag(G)))) / np.max(np.diag(G))
        N = sum(counts)
        n_root, n_coll = ufm_thresholds(N, lw, lh, M)
        print(f"\nM = {M}, n = {counts}, lambda_W = {lw}, lambda_H = {lh}: b = {g.b:.4g}; "
              f"root exists for n_k > {n_root:.3f}, nonzero for n_k > {n_coll:.3f}")
        print(f"  global minimum {g.objective:.10f}; gradient descent (best of {a.starts}) {f[best]:.10f}; "
              f"all runs {np.round(f, 8).tolist()}")
        print(f"  max off-diagonal |W W^T| / max diagonal (orthogonality) {off:.1e}")
        print("  class  n_k  collapsed   |w_k|^2 theory / GD      |h_k|^2 theory / GD     (W h_k)_k theory / GD")
        for k, n in enumerate(counts):
            print(f"  {k:5d} {n:4d} {str(bool(g.collapsed[k])):>10s}   {g.classifier_sq_norms[k]:9.6f} / {w2[k]:9.6f}"
                  f"    {g.feature_sq_norms[k]:9.6f} / {h2[k]:9.6f}    {g.alignment[k]:9.6f} / {al[k]:9.6f}")


if __name__ == "__main__":
    main()

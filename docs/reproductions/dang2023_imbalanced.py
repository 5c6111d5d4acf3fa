"""Dang et al. 2023 (ICML), "Neural Collapse in Deep Linear Networks: From Balanced to
Imbalanced Data", Thm 3.1: the global minimizer of the bias-free MSE unconstrained-features
model with an M-layer linear head, for imbalanced classes, against gradient descent.

For each depth M the script prints, per class, the closed-form ||w_k||^2, ||h_k||^2 and
(W h_k)_k and the best of several gradient-descent runs from random starts, then the class
sizes at which the stationarity equation gets a root and at which the class stops
collapsing to zero (for M >= 2 the second is larger: in between, zero wins).

Compared (one compare line each): the global minimum of the objective against the best
gradient-descent run, and per class the largest difference of ||w_k||^2, ||h_k||^2 and
(W h_k)_k from Theorem 3.1 (limitlab.theory.collapse.ufm_global_minimizer). The paper
states the minimizer in closed form and prints no table, so the theorem is the reference.
--quick runs one start per case and the first and last case only.

    python docs/reproductions/dang2023_imbalanced.py [--quick] [--starts 3] [--dim 8] [--out DIR]
"""
from __future__ import annotations

import numpy as np

import _common
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


def main(argv=None):
    ap = _common.parser(__file__, __doc__)
    ap.add_argument("--starts", type=int, default=None, help="gradient-descent starts per case (default 3; 1 with --quick)")
    ap.add_argument("--dim", type=int, default=8, help="feature dimension (default %(default)s)")
    a = ap.parse_args(argv)
    out = _common.prepare(a)
    starts = a.starts or (1 if a.quick else 3)
    cases = [CASES[0], CASES[-1]] if a.quick else CASES
    cmp = _common.Comparison("Dang et al. 2023, Thm 3.1: imbalanced UFM global minimizer vs gradient descent")
    table = []
    for M, counts, lw, lh, lr, steps in _common.progress(cases, "cases"):
        g = ufm_global_minimizer(counts, lw, lh, M)
        f, P, H, y = ufm_gradient_descent(counts, lw, lh, M, a.dim, starts=starts, lr=lr, steps=steps, seed=M + a.seed)
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
        print(f"  all gradient-descent runs {np.round(f, 8).tolist()}")
        print(f"  max off-diagonal |W W^T| / max diagonal (orthogonality) {off:.1e}")
        print("  class  n_k  collapsed   |w_k|^2 theory / GD      |h_k|^2 theory / GD     (W h_k)_k theory / GD")
        for k, n in enumerate(counts):
            print(f"  {k:5d} {n:4d} {str(bool(g.collapsed[k])):>10s}   {g.classifier_sq_norms[k]:9.6f} / {w2[k]:9.6f}"
                  f"    {g.feature_sq_norms[k]:9.6f} / {h2[k]:9.6f}    {g.alignment[k]:9.6f} / {al[k]:9.6f}")
            table.append([M, k, n, bool(g.collapsed[k]), g.classifier_sq_norms[k], w2[k], g.feature_sq_norms[k], h2[k],
                          g.alignment[k], al[k]])
        cmp.add(f"M={M}, n={counts}: objective, best of {starts} gradient-descent runs", f[best], g.objective,
                "Thm 3.1 global minimum")
        worst = max(range(len(counts)), key=lambda k: max(abs(w2[k] - g.classifier_sq_norms[k]),
                                                          abs(h2[k] - g.feature_sq_norms[k])))
        cmp.add(f"M={M}, n={counts}: ||h_k||^2 of class {worst} (n_k={counts[worst]}, the largest per-class gap)",
                h2[worst], g.feature_sq_norms[worst], "Thm 3.1")
        cmp.add(f"M={M}, n={counts}: ||w_k||^2 of class {worst}", w2[worst], g.classifier_sq_norms[worst], "Thm 3.1")
    _common.write_csv(out / "dang2023_classes.csv",
                      ["M", "class", "n_k", "collapsed", "w_sq_theory", "w_sq_gd", "h_sq_theory", "h_sq_gd",
                       "alignment_theory", "alignment_gd"],
                      [[*r[:4], *[f"{x:.10g}" for x in r[4:]]] for r in table])
    cmp.write(out, quick=a.quick, starts=starts, dim=a.dim, seed=a.seed)
    return cmp


if __name__ == "__main__":
    main()

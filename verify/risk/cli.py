"""`limitlab risk ...`: risk curves and surfaces to CSV and a plot.

The main CLI (limitlab.verify.cli) calls :func:`add_risk_subcommand` on its subparsers::

    limitlab risk random-features --psi1 0.1:5:200 --psi2 1.5 --ridge 1e-3 --out DIR [--simulate 200]
    limitlab risk random-features --psi1 0.1:5:200 --psi2 0.1:5:200 --ridge 1e-3 --out DIR   # surface
    limitlab risk linear-ridge --gamma 0.1:4:200 --ridge 0,0.1,1 --out DIR
    limitlab risk kernel-ridge --depth 2 --activation relu --d 4 --n 10:2000:60 --ridge 1e-3 --out DIR

A value is a number, a comma list, ``start:stop:num`` (linear) or ``start:stop:num:log``.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import numpy as np

__all__ = ["add_risk_subcommand", "parse_values", "main"]


def parse_values(text: str) -> np.ndarray:
    """'1.5' | '0.5,1,2' | '0.1:5:100' | '1e-4:1:50:log' -> array."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("log", "lin")):
                raise ValueError
            a, b, num = float(parts[0]), float(parts[1]), int(parts[2])
            if num < 1:
                raise ValueError
            if len(parts) == 4 and parts[3] == "log":
                if a <= 0 or b <= 0:
                    raise ValueError
                return np.geomspace(a, b, num)
            return np.linspace(a, b, num)
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, a comma list, start:stop:num or start:stop:num:log, "
                                         f"got {text!r}") from None


def _common(p):
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--name", default=None, help="file stem (default: the subcommand)")
    p.add_argument("--no-plot", action="store_true", help="write the CSV only")


def add_risk_subcommand(subparsers):
    """Register `risk` with its subcommands on an argparse subparsers object; returns the parser."""
    risk = subparsers.add_parser("risk", help="exact asymptotic risk curves (random features, linear, kernel ridge)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = risk.add_subparsers(dest="risk_model", required=True)

    rf = sub.add_parser("random-features", help="Mei-Montanari RF ridge risk in psi1 = N/d, psi2 = n/d")
    rf.add_argument("--psi1", type=parse_values, required=True)
    rf.add_argument("--psi2", type=parse_values, required=True)
    rf.add_argument("--ridge", type=parse_values, default=np.array([1e-3]))
    rf.add_argument("--activation", default="relu")
    rf.add_argument("--signal", type=float, default=1.0, help="F1^2")
    rf.add_argument("--nonlinear-signal", type=float, default=0.0, help="F*^2")
    rf.add_argument("--noise", type=float, default=0.0, help="tau^2")
    rf.add_argument("--simulate", type=int, default=0, metavar="D",
                    help="add simulated points at dimension D (curves only)")
    rf.add_argument("--samples", type=int, default=3, help="simulated regressions per point")
    rf.add_argument("--sim-points", type=int, default=12, help="number of simulated points along the curve")
    rf.add_argument("--seed", type=int, default=0)
    _common(rf)
    rf.set_defaults(risk_handler=_random_features)

    lr = sub.add_parser("linear-ridge", help="Hastie et al. isotropic ridge risk in gamma = p/n")
    lr.add_argument("--gamma", type=parse_values, required=True)
    lr.add_argument("--ridge", type=parse_values, default=np.array([0.0]))
    lr.add_argument("--signal", type=float, default=1.0)
    lr.add_argument("--noise", type=float, default=1.0)
    _common(lr)
    lr.set_defaults(risk_handler=_linear_ridge)

    kr = sub.add_parser("kernel-ridge", help="learning curve of NTK/NNGP regression on the sphere (eigenframework)")
    kr.add_argument("--n", type=parse_values, required=True, help="sample sizes")
    kr.add_argument("--d", type=int, default=4, help="sphere S^{d-1} in R^d")
    kr.add_argument("--depth", type=int, default=1)
    kr.add_argument("--activation", default="relu")
    kr.add_argument("--kernel", choices=("ntk", "nngp"), default="ntk")
    kr.add_argument("--weight-var", type=float, default=1.0)
    kr.add_argument("--bias-var", type=float, default=0.1)
    kr.add_argument("--ridge", type=parse_values, default=np.array([0.0]))
    kr.add_argument("--noise", type=float, default=0.0)
    kr.add_argument("--degree-power", default="1:1", help="target power per degree, e.g. '1:0.5,2:0.3'")
    kr.add_argument("--max-degree", type=int, default=200)
    _common(kr)
    kr.set_defaults(risk_handler=_kernel_ridge)
    risk.set_defaults(func=run, handler=run)
    return risk


def run(args) -> int:
    """Handler: dispatch to the chosen model; returns an exit status."""
    try:
        paths = args.risk_handler(args)
    except (ValueError, TypeError) as exc:
        print(f"limitlab risk: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([f"{v:.17g}" if isinstance(v, (float, np.floating)) else v for v in r])


def _prepare(args, default):
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, args.name or default)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _random_features(args):
    from limitlab.theory.risk import random_features

    stem = _prepare(args, "random_features")
    p1, p2, lam = args.psi1, args.psi2, args.ridge
    kw = dict(activation=args.activation, signal=args.signal, nonlinear_signal=args.nonlinear_signal, noise=args.noise)
    P1, P2, L = np.meshgrid(p1, p2, lam, indexing="ij")
    r = random_features(P1, P2, L, **kw)
    rows = [(a, b, c, R, B, V) for a, b, c, R, B, V in zip(P1.ravel(), P2.ravel(), L.ravel(), r.risk.ravel(),
                                                            r.bias.ravel(), r.variance.ravel())]
    paths = [stem + ".csv"]
    _write_csv(paths[0], ["psi1", "psi2", "ridge", "risk", "bias", "variance"], rows)
    surface = p1.size > 1 and p2.size > 1
    sim = []
    if args.simulate and not surface:
        from limitlab.verify.risk.simulate import random_features_regression

        xs, along = (p1, "psi1") if p1.size > 1 else (p2, "psi2")
        pick = np.unique(np.linspace(0, xs.size - 1, min(args.sim_points, xs.size)).round().astype(int))
        rng = np.random.default_rng(args.seed)
        for li in lam:
            for i in pick:
                a = p1[i] if along == "psi1" else p1[0]
                b = p2[i] if along == "psi2" else p2[0]
                vals = [random_features_regression(args.simulate, a, b, li, args.activation, args.signal,
                                                   args.nonlinear_signal, args.noise, seed=rng)
                        for _ in range(args.samples)]
                sim.append((a, b, li, args.simulate, float(np.mean(vals)),
                            float(np.std(vals) / math.sqrt(max(len(vals), 1)))))
        paths.append(stem + "_simulated.csv")
        _write_csv(paths[-1], ["psi1", "psi2", "ridge", "d", "risk_mean", "risk_se"], sim)
    if not args.no_plot:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        if surface:
            R = np.log10(r.risk[:, :, 0])
            im = ax.pcolormesh(p2, p1, R, shading="auto", cmap="viridis")
            fig.colorbar(im, ax=ax, label="log10 risk")
            ax.set_xlabel("psi2 = n/d")
            ax.set_ylabel("psi1 = N/d")
            ax.set_title(f"random-features risk, ridge={lam[0]:g}")
        else:
            xs, xlabel, idx = (p1, "psi1 = N/d", 0) if p1.size > 1 else (p2, "psi2 = n/d", 1)
            for j, li in enumerate(lam):
                ax.plot(xs, r.risk.reshape(-1, lam.size)[:, j], label=f"theory, ridge={li:g}")
                pts = [s for s in sim if s[2] == li]
                if pts:
                    ax.errorbar([s[idx] for s in pts], [s[4] for s in pts], yerr=[s[5] for s in pts], fmt="o",
                                ms=4, color=ax.lines[-1].get_color(), label=f"simulated, d={args.simulate}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test risk")
            ax.legend(fontsize=8)
        _save_figure(plt, fig, stem, paths)
    return paths


def _save_figure(plt, fig, stem, paths):
    """Write the figure beside the CSV and record its path."""
    fig.tight_layout()
    paths.append(stem + ".png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)


def _linear_ridge(args):
    from limitlab.theory.risk.linear_ridge import linear_ridge

    stem = _prepare(args, "linear_ridge")
    G, L = np.meshgrid(args.gamma, args.ridge, indexing="ij")
    r = linear_ridge(G, L, args.signal, args.noise)
    paths = [stem + ".csv"]
    _write_csv(paths[0], ["gamma", "ridge", "risk", "bias", "variance"],
               zip(G.ravel(), L.ravel(), np.ravel(r.risk), np.ravel(r.bias), np.ravel(r.variance)))
    if not args.no_plot:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for j, li in enumerate(args.ridge):
            ax.plot(args.gamma, np.asarray(r.risk).reshape(G.shape)[:, j], label=f"ridge={li:g}")
        ax.set_xlabel("gamma = p/n")
        ax.set_ylabel("risk")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        _save_figure(plt, fig, stem, paths)
    return paths


def _kernel_ridge(args):
    from limitlab.theory.kernels import MLP
    from limitlab.theory.risk.eigenlearning import kernel_ridge
    from limitlab.theory.risk.sphere_spectra import dot_product_kernel, sphere_spectrum

    stem = _prepare(args, "kernel_ridge")
    power = {}
    for item in args.degree_power.split(","):
        try:
            l, p = item.split(":")
            power[int(l)] = float(p)
        except ValueError:
            raise ValueError(f"degree-power: expected 'degree:power,...', got {args.degree_power!r}") from None
    if max(power) > args.max_degree:
        raise ValueError(f"degree-power: degree {max(power)} exceeds --max-degree {args.max_degree}")
    model = MLP(args.depth, args.activation, weight_var=args.weight_var, bias_var=args.bias_var)
    spec = sphere_spectrum(dot_product_kernel(model, args.kernel), args.d, args.max_degree)
    keep = spec.eigenvalues > 1e-13 * spec.trace
    target = np.zeros(spec.eigenvalues.size)
    for l, p in power.items():
        if not keep[l]:
            raise ValueError(f"degree-power: degree {l} has a zero eigenvalue for this kernel (unlearnable)")
        target[l] = math.sqrt(p)
    N, L = np.meshgrid(args.n, args.ridge, indexing="ij")
    r = kernel_ridge(spec.eigenvalues[keep], target[keep], N, L, args.noise, multiplicities=spec.multiplicities[keep])
    paths = [stem + ".csv"]
    _write_csv(paths[0], ["n", "ridge", "test_risk", "excess_risk", "train_risk", "kappa", "overfitting_coefficient"],
               zip(N.ravel(), L.ravel(), np.ravel(r.test_risk), np.ravel(r.excess_risk), np.ravel(r.train_risk),
                   np.ravel(r.kappa), np.ravel(r.overfitting_coefficient)))
    _write_csv(stem + "_spectrum.csv", ["degree", "eigenvalue", "multiplicity"],
               zip(range(spec.eigenvalues.size), spec.eigenvalues, spec.multiplicities))
    paths.append(stem + "_spectrum.csv")
    if not args.no_plot:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for j, li in enumerate(args.ridge):
            ax.plot(args.n, np.asarray(r.excess_risk).reshape(N.shape)[:, j], label=f"ridge={li:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel("excess test risk")
        ax.set_title(f"{args.kernel.upper()} of depth-{args.depth} {args.activation} MLP on S^{args.d - 1}")
        ax.legend(fontsize=8)
        _save_figure(plt, fig, stem, paths)
    return paths


def main(argv=None) -> int:
    """Stand-alone entry (``python -m limitlab.verify.risk.cli risk ...``)."""
    parser = argparse.ArgumentParser(prog="limitlab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_risk_subcommand(sub)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

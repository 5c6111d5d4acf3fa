"""The ``limitlab`` command, every subcommand in this one module.

``limitlab verify`` checks theory against finite networks (Monte Carlo); ``limitlab risk``
prints exact asymptotic risk curves (no simulation unless asked). ``SUBCOMMANDS`` lists
them: a new subcommand is a function here that adds its parser (with ``set_defaults(func=
handler)``, ``handler(args) -> exit status``) and one entry in that list. The pillars whose
checks ``limitlab verify`` runs are listed in ``limitlab.verify.registry.PILLARS``.

Exit codes of ``limitlab verify``: 0 every check passed; 1 a check disagreed (or failed
to run); 2 usage error (unknown check, bad --widths / --samples / --out, unavailable
backend, --resume without a report); 3 no check failed but at least one was inconclusive
(a size below the check's min_size, or fewer than 3 sizes for a check that declares a
rate); 130 interrupted (Ctrl-C; the finished sizes are in the report, rerun with --resume).
Precedence: any fail or error gives 1, else any inconclusive 3, else 0.

Exit codes of ``limitlab risk``: 0 success (an ``inf`` risk, the ridgeless interpolation
peak, is a valid value); 1 when any computed value is NaN (the table is still written, the
message names the first such row); 2 for bad arguments. Numbers are written as the shortest
decimal that round-trips (``repr`` of a Python float).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

from limitlab.numerics.files import atomic_write

__all__ = ["main", "build_parser", "SUBCOMMANDS", "parse_values", "parse_sizes", "format_number"]

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_OUT = "limitlab-report"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors also exit 2, with the usage line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("limitlab")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _add_verify(sub):
    from limitlab.verify.backend import BACKENDS

    p = sub.add_parser(
        "verify", help="check theory against finite networks (Monte Carlo)",
        description="Compare theory numbers with simulated finite networks at growing widths and say, with "
                    "statistics, whether they agree. With no CHECK: the quick default set (under a minute on "
                    f"2 cores). The report (report.json, plots/) goes to --out (default {DEFAULT_OUT}/). "
                    "Exit codes: 0 all pass; 1 any disagrees or fails to run; 2 usage error; 3 none failed but "
                    "some inconclusive (a size below the check's min_size, or fewer than 3 sizes for a check "
                    "with a rate); 130 interrupted (rerun with --resume).")
    p.add_argument("checks", nargs="*", metavar="CHECK",
                   help="check names or shell patterns (e.g. 'kernels.relu.*'), or 'all'; default: the default set")
    p.add_argument("--list", action="store_true", help="list the available checks and exit")
    p.add_argument("--widths", type=parse_sizes, metavar="N,N,...",
                   help="sizes to use instead of each check's own, e.g. 64,256,1024")
    p.add_argument("--samples", type=int, metavar="S", help="independent samples (networks) per size")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="seed of the run (default 0)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="array backend: auto (torch or cupy on a CUDA GPU, else numpy), numpy, torch, cupy")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"write DIR/report.json (after every finished size) and DIR/plots/ (default {DEFAULT_OUT})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="each check's quick sizes and samples")
    size.add_argument("--full", action="store_true",
                      help="each check's full sizes and samples (the default when CHECKs are named)")
    p.add_argument("--resume", action="store_true", help="continue the run whose report is in --out")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a dask.distributed scheduler (tcp://HOST:8786): run the sizes on its workers "
                        "(same results as a local run with the same seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="no plots in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="a table row for every quantity")
    p.set_defaults(func=_cmd_verify)
    return p


def _sizes(name: str, sizes) -> str:
    """'widths 128, 512, 2048', 'steps 400, 1600', 'steps per unit time 40, 80', 'd = 100, 200'."""
    values = ", ".join(map(str, sizes))
    if len(name) == 1:  # a symbol: d, p, n
        return f"{name} = {values}"
    head, _, rest = name.partition(" ")
    head = head if head.endswith("s") else head + "s"
    return f"{head}{' ' + rest if rest else ''} {values}"


def _cmd_list(args) -> int:
    from limitlab.verify.registry import all_checks
    from limitlab.verify.report import _plural

    checks = all_checks()
    width = max((len(n) for n in checks), default=10)
    for name, c in checks.items():
        mark = "*" if c.default else " "
        est = f"~{c.seconds_quick:.0f} s" if c.seconds_quick is not None else "not measured"
        print(f"{mark} {name.ljust(width)}  {c.description}")
        print(f"    quick: {_sizes(c.size_name, c.quick_sizes)} x {_plural(c.quick_samples, 'sample')} "
              f"({est} on 2 cores, an estimate)")
        print(f"    full:  {_sizes(c.size_name, c.sizes)} x {_plural(c.samples, 'sample')}; "
              f"min {c.size_name} {c.min_size}; rate {'none' if c.rate is None else f'{c.rate:g}'}")
    n_def = sum(c.default for c in checks.values())
    total = sum(c.seconds_quick or 0.0 for c in checks.values() if c.default)
    print(f"{_plural(len(checks), 'check')}; * = the default set ({_plural(n_def, 'check')}, run quick by "
          f"`limitlab verify` with no CHECK: ~{total:.0f} s on 2 cores, an estimate); named checks run full "
          f"unless --quick")
    return EXIT_PASS


def _cmd_verify(args) -> int:
    if args.list:
        return _cmd_list(args)
    from limitlab.verify.runner import run

    quick = args.quick or (not args.checks and not args.full)
    try:
        report = run(checks=args.checks or None, widths=args.widths, samples=args.samples, seed=args.seed,
                     backend=args.backend, out=args.out, quick=quick, resume=args.resume,
                     progress=not args.no_progress, plots=not args.no_plots, scheduler=args.scheduler)
    except (ValueError, TypeError) as exc:
        print(f"limitlab verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report.table(verbose=args.verbose))
    if report.path:
        print(f"report: {report.path}" + (f" (plots in {os.path.join(os.path.dirname(report.path), 'plots')})"
                                          if not args.no_plots else ""))
    return report.exit_code


# ---- limitlab risk: exact asymptotic risk curves and surfaces as a table, CSV files and a plot ----

_DESCRIPTION = """\
Exact asymptotic test risk of ridge regression in high dimensions: random features
(Mei & Montanari), isotropic linear ridge (Hastie et al.) and kernel ridge with the NTK or
NNGP of an MLP on the sphere (the eigenframework). Formulas and sources: docs/risk.md.

Without --out the table is printed to standard output as CSV (one row per point); with
--out DIR it is written to DIR as CSV together with a plot (PNG).

A value (--psi1, --psi2, --gamma, --n, --ridge) is a number, a comma list, start:stop:num
(evenly spaced) or start:stop:num:log (geometrically spaced)."""

_EXAMPLES = """\
examples:
  limitlab risk random-features --psi1 2 --psi2 1.5 --ridge 1e-3
      one point, printed: psi1,psi2,ridge,risk,bias,variance
  limitlab risk random-features --psi1 0.1:5:200:log --psi2 1.5 --ridge 1e-4,1e-1 --noise 0.1 \\
      --simulate 200 --out rf/
      double-descent curves with simulated points at d = 200: rf/random_features.csv,
      rf/random_features_simulated.csv, rf/random_features.png
  limitlab risk random-features --psi1 0.5:2:40 --psi2 0.5:2:40 --out surface/
      a (psi1, psi2) surface
  limitlab risk linear-ridge --gamma 0.5,2 --ridge 0,0.1
  limitlab risk kernel-ridge --depth 2 --d 4 --n 10:2000:20:log --ridge 1e-3 --degree-power 1:0.5,2:0.25

exit status: 0 success (inf is a valid risk: the ridgeless interpolation peak psi1 = psi2
or gamma = 1); 1 if any value is NaN; 2 for bad arguments."""


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


def parse_sizes(text: str) -> list:
    """'64,256,1024' -> [64, 256, 1024]: distinct positive integers (argparse type of --widths)."""
    try:
        sizes = [int(w) for w in str(text).replace(" ", "").split(",") if w]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated distinct positive integers, got {text!r}")
    return sizes


def _int_at_least(minimum, what=""):
    """argparse type: an integer >= ``minimum`` (a usage error, exit status 2, otherwise)."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}{what}, got {v}")
        return v

    return parse


def format_number(v) -> str:
    """Shortest round-trip decimal of a float (``repr``: ``0.1``, not ``0.10000000000000001``); ``inf``,
    ``-inf`` and ``nan`` as Python writes them; anything else with ``str``."""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def _common(p):
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write CSV and plot files to DIR (created); default: print the table to stdout")
    p.add_argument("--name", default=None, help="file stem with --out (default: the subcommand)")
    p.add_argument("--no-plot", action="store_true", help="with --out, write the CSV only")


def _sub(sub, name, help, description):
    return sub.add_parser(name, help=help, description=description, epilog=_EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_risk(sub):
    risk = sub.add_parser("risk", help="exact asymptotic risk curves (random features, linear, kernel ridge)",
                                 description=_DESCRIPTION, epilog=_EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = risk.add_subparsers(dest="risk_model", required=True, parser_class=_Parser)

    rf = _sub(sub, "random-features", "Mei-Montanari RF ridge risk in psi1 = N/d, psi2 = n/d",
              "Random-features ridge regression (Mei & Montanari 2022, Theorem 1): N features, n samples\n"
              "in dimension d, psi1 = N/d, psi2 = n/d; target <beta1, x> + f_NL(x) + noise. Columns:\n"
              "psi1, psi2, ridge, risk, bias, variance. Two ranges (--psi1 and --psi2) give a surface.")
    rf.add_argument("--psi1", type=parse_values, required=True, help="N/d, features per dimension")
    rf.add_argument("--psi2", type=parse_values, required=True, help="n/d, samples per dimension")
    rf.add_argument("--ridge", type=parse_values, default=np.array([1e-3]),
                    help="lambda in (N lambda/d)||a||^2 (default 1e-3; 0 is ridgeless)")
    rf.add_argument("--activation", default="relu", help="activation of the features (default relu)")
    rf.add_argument("--signal", type=float, default=1.0, help="F1^2, power of the linear target (default 1)")
    rf.add_argument("--nonlinear-signal", type=float, default=0.0, help="F*^2, power of the nonlinear target")
    rf.add_argument("--noise", type=float, default=0.0, help="tau^2, label-noise variance")
    rf.add_argument("--simulate", type=_int_at_least(0, " (0: no simulation)"), default=0, metavar="D",
                    help="add simulated regressions at dimension D >= 2 (curves only; 0: none)")
    rf.add_argument("--samples", type=_int_at_least(1, ""), default=3,
                    help="simulated regressions per point (>= 1, default 3)")
    rf.add_argument("--sim-points", type=_int_at_least(1, ""), default=12,
                    help="number of simulated points along the curve (>= 1, default 12)")
    rf.add_argument("--seed", type=int, default=0, help="seed of the simulations")
    _common(rf)
    rf.set_defaults(risk_handler=_random_features)

    lr = _sub(sub, "linear-ridge", "Hastie et al. isotropic ridge risk in gamma = p/n",
              "Isotropic linear ridge regression (Hastie, Montanari, Rosset, Tibshirani 2022): p features,\n"
              "n samples, gamma = p/n; risk E||beta_hat - beta||^2. Columns: gamma, ridge, risk, bias, variance.")
    lr.add_argument("--gamma", type=parse_values, required=True, help="p/n")
    lr.add_argument("--ridge", type=parse_values, default=np.array([0.0]), help="ridge lambda (default 0)")
    lr.add_argument("--signal", type=float, default=1.0, help="r^2 = ||beta||^2 (default 1)")
    lr.add_argument("--noise", type=float, default=1.0, help="sigma^2, label-noise variance (default 1)")
    _common(lr)
    lr.set_defaults(risk_handler=_linear_ridge)

    kr = _sub(sub, "kernel-ridge", "learning curve of NTK/NNGP regression on the sphere (eigenframework)",
              "Kernel ridge regression with the limiting NTK or NNGP of an MLP on the sphere S^{d-1}\n"
              "(eigenframework of Bordelon et al. 2020 / Simon et al. 2021; Funk-Hecke spectrum).\n"
              "Columns: n, ridge, test_risk, excess_risk, train_risk, kappa, overfitting_coefficient;\n"
              "with --out also the spectrum (degree, eigenvalue, multiplicity).")
    kr.add_argument("--n", type=parse_values, required=True, help="sample sizes")
    kr.add_argument("--d", type=_int_at_least(2, ""), default=4, help="sphere S^{d-1} in R^d (default 4)")
    kr.add_argument("--depth", type=_int_at_least(1, ""), default=1, help="hidden layers (default 1)")
    kr.add_argument("--activation", default="relu")
    kr.add_argument("--kernel", choices=("ntk", "nngp"), default="ntk")
    kr.add_argument("--weight-var", type=float, default=1.0)
    kr.add_argument("--bias-var", type=float, default=0.1)
    kr.add_argument("--ridge", type=parse_values, default=np.array([0.0]), help="ridge (default 0)")
    kr.add_argument("--noise", type=float, default=0.0, help="label-noise variance")
    kr.add_argument("--degree-power", default="1:1", help="target power per degree, e.g. '1:0.5,2:0.3'")
    kr.add_argument("--max-degree", type=_int_at_least(0, ""), default=200)
    _common(kr)
    kr.set_defaults(risk_handler=_kernel_ridge)
    risk.set_defaults(func=_cmd_risk)
    return risk


class _Table:
    """A named table: header and rows of numbers."""

    def __init__(self, name, header, rows):
        self.name, self.header, self.rows = name, list(header), [tuple(r) for r in rows]

    def first_nan(self):
        for r in self.rows:
            for h, v in zip(self.header, r):
                if isinstance(v, (float, np.floating)) and math.isnan(v):
                    return h, r
        return None

    def write(self, fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(self.header)
        for r in self.rows:
            w.writerow([format_number(v) for v in r])


def _cmd_risk(args) -> int:
    """Compute the chosen model's tables; print them (no ``--out``) or write files; returns an exit status."""
    try:
        tables, plot = args.risk_handler(args)
    except (ValueError, TypeError) as exc:
        print(f"limitlab risk: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.out is None:
        for i, t in enumerate(t for t in tables if t.name != "spectrum"):
            if i:
                print(f"\n# {t.name}")
            t.write(sys.stdout)
    else:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, args.name or args.risk_model.replace("-", "_"))
        paths = []
        for t in tables:
            paths.append(atomic_write(stem + ("" if t.name == "theory" else "_" + t.name) + ".csv", t.write))
        if plot is not None and not args.no_plot:
            from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

            fig = Figure(figsize=(6, 4.2))
            plot(fig, fig.subplots())
            fig.tight_layout()
            paths.append(atomic_write(stem + ".png", lambda fh: fig.savefig(fh, dpi=120, format="png"), binary=True))
        for p in paths:
            print(p)
    for t in tables:
        bad = t.first_nan()
        if bad is not None:
            col, row = bad
            where = ", ".join(f"{h}={format_number(v)}" for h, v in zip(t.header, row))
            n_bad = sum(isinstance(v, (float, np.floating)) and math.isnan(v) for r in t.rows for v in r)
            print(f"limitlab risk: error: {n_bad} value(s) of the {t.name} table are NaN (first: {col} at {where})",
                  file=sys.stderr)
            return EXIT_FAIL
    return EXIT_PASS


def _random_features(args):
    from limitlab.theory.risk import random_features

    p1, p2, lam = args.psi1, args.psi2, args.ridge
    if args.simulate == 1:
        raise ValueError("--simulate: the dimension D must be >= 2 (or 0 for no simulation), got 1")
    kw = dict(activation=args.activation, signal=args.signal, nonlinear_signal=args.nonlinear_signal, noise=args.noise)
    P1, P2, L = np.meshgrid(p1, p2, lam, indexing="ij")
    r = random_features(P1, P2, L, strict=True, **kw)
    tables = [_Table("theory", ["psi1", "psi2", "ridge", "risk", "bias", "variance"],
                     zip(P1.ravel(), P2.ravel(), L.ravel(), np.ravel(r.risk), np.ravel(r.bias), np.ravel(r.variance)))]
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
                sim.append((float(a), float(b), float(li), args.simulate, float(np.mean(vals)),
                            float(np.std(vals) / math.sqrt(len(vals)))))
        tables.append(_Table("simulated", ["psi1", "psi2", "ridge", "d", "risk_mean", "risk_se"], sim))

    def plot(fig, ax):
        if surface:
            with np.errstate(divide="ignore"):
                R = np.log10(r.risk[:, :, 0])
            im = ax.pcolormesh(p2, p1, np.where(np.isfinite(R), R, np.nan), shading="auto", cmap="viridis")
            fig.colorbar(im, ax=ax, label="log10 risk")
            ax.set_xlabel("psi2 = n/d")
            ax.set_ylabel("psi1 = N/d")
            ax.set_title(f"random-features risk, ridge={lam[0]:g}")
        else:
            xs, xlabel, idx = (p1, "psi1 = N/d", 0) if p1.size > 1 else (p2, "psi2 = n/d", 1)
            for j, li in enumerate(lam):
                y = np.asarray(r.risk).reshape(-1, lam.size)[:, j]
                ax.plot(xs, np.where(np.isfinite(y), y, np.nan), label=f"theory, ridge={li:g}")
                pts = [s for s in sim if s[2] == li]
                if pts:
                    ax.errorbar([s[idx] for s in pts], [s[4] for s in pts], yerr=[s[5] for s in pts], fmt="o",
                                ms=4, color=ax.lines[-1].get_color(), label=f"simulated, d={args.simulate}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test risk")
            ax.legend(fontsize=8)

    return tables, plot


def _linear_ridge(args):
    from limitlab.theory.risk.linear_ridge import linear_ridge

    G, L = np.meshgrid(args.gamma, args.ridge, indexing="ij")
    r = linear_ridge(G, L, args.signal, args.noise)
    tables = [_Table("theory", ["gamma", "ridge", "risk", "bias", "variance"],
                     zip(G.ravel(), L.ravel(), np.ravel(r.risk), np.ravel(r.bias), np.ravel(r.variance)))]

    def plot(fig, ax):
        for j, li in enumerate(args.ridge):
            y = np.asarray(r.risk).reshape(G.shape)[:, j]
            ax.plot(args.gamma, np.where(np.isfinite(y), y, np.nan), label=f"ridge={li:g}")
        ax.set_xlabel("gamma = p/n")
        ax.set_ylabel("risk")
        ax.set_yscale("log")
        ax.legend(fontsize=8)

    return tables, plot


def _kernel_ridge(args):
    from limitlab.theory.kernels import MLP
    from limitlab.theory.risk.eigenlearning import kernel_ridge
    from limitlab.theory.risk.sphere_spectra import dot_product_kernel, sphere_spectrum

    power = {}
    for item in args.degree_power.split(","):
        try:
            l, p = item.split(":")
            power[int(l)] = float(p)
        except ValueError:
            raise ValueError(f"degree-power: expected 'degree:power,...', got {args.degree_power!r}") from None
    if min(power) < 0 or max(power) > args.max_degree:
        raise ValueError(f"degree-power: degrees must lie in [0, --max-degree = {args.max_degree}], "
                         f"got {sorted(power)}")
    if any(not (p >= 0 and math.isfinite(p)) for p in power.values()):
        raise ValueError(f"degree-power: powers must be finite and >= 0, got {args.degree_power!r}")
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
    tables = [_Table("theory", ["n", "ridge", "test_risk", "excess_risk", "train_risk", "kappa",
                                "overfitting_coefficient"],
                     zip(N.ravel(), L.ravel(), np.ravel(r.test_risk), np.ravel(r.excess_risk), np.ravel(r.train_risk),
                         np.ravel(r.kappa), np.ravel(r.overfitting_coefficient))),
              _Table("spectrum", ["degree", "eigenvalue", "multiplicity"],
                     zip(range(spec.eigenvalues.size), spec.eigenvalues, spec.multiplicities))]

    def plot(fig, ax):
        for j, li in enumerate(args.ridge):
            ax.plot(args.n, np.asarray(r.excess_risk).reshape(N.shape)[:, j], label=f"ridge={li:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel("excess test risk")
        ax.set_title(f"{args.kernel.upper()} of depth-{args.depth} {args.activation} MLP on S^{args.d - 1}")
        ax.legend(fontsize=8)

    return tables, plot


# every subcommand of `limitlab`, in the order of its help
SUBCOMMANDS = {"verify": _add_verify, "risk": _add_risk}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="limitlab",
                     description="limitlab: exact theory of wide and high-dimensional neural networks, "
                                 "verified against finite networks.")
    parser.add_argument("--version", action="version", version=f"limitlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted (finished sizes are in the report; rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

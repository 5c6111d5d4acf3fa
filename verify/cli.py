"""The ``limitlab`` command: ``limitlab verify`` (and subcommands added by other pillars).

Exit codes of ``limitlab verify``: 0 every check passed; 1 a check disagreed (or failed
to run); 2 usage error (unknown check, bad --widths / --samples / --out, unavailable
backend, --resume without a report); 3 no check failed but at least one was inconclusive
(a size below the check's min_size, or fewer than 3 sizes for a check that declares a
rate); 130 interrupted (Ctrl-C; the finished sizes are in the report, rerun with --resume).
Precedence: any fail or error gives 1, else any inconclusive 3, else 0.

Pillars add subcommands through a hook: a module ``limitlab.verify.<pillar>.cli`` with a
function ``add_subcommand(subparsers)`` (or, for the risk pillar, ``add_risk_subcommand``)
that adds a parser and sets ``func=handler(args) -> int`` on it with ``set_defaults``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

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
    p.add_argument("--widths", metavar="N,N,...", help="sizes to use instead of each check's own, e.g. 64,256,1024")
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
                     progress=not args.no_progress, plots=not args.no_plots)
    except (ValueError, TypeError) as exc:
        print(f"limitlab verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report.table(verbose=args.verbose))
    if report.path:
        print(f"report: {report.path}" + (f" (plots in {os.path.join(os.path.dirname(report.path), 'plots')})"
                                          if not args.no_plots else ""))
    return report.exit_code


def _add_pillar_subcommands(sub):
    """Hooks of other pillars: ``add_risk_subcommand`` and any ``<pillar>.cli.add_subcommand``."""
    try:
        from limitlab.verify.risk.cli import add_risk_subcommand
    except ImportError:
        add_risk_subcommand = None
    if add_risk_subcommand is not None:
        add_risk_subcommand(sub)
    import limitlab.verify as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.ispkg:
            continue
        try:
            m = importlib.import_module(f"limitlab.verify.{mod.name}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"limitlab.verify.{mod.name}.cli":
                raise
            continue
        hook = getattr(m, "add_subcommand", None)
        if hook is not None:
            hook(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="limitlab",
                     description="limitlab: exact theory of wide and high-dimensional neural networks, "
                                 "verified against finite networks.")
    parser.add_argument("--version", action="version", version=f"limitlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_verify(sub)
    _add_pillar_subcommands(sub)
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

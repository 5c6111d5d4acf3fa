"""``limitlab.verify.run``: run checks at several sizes, judge them, write the report."""
from __future__ import annotations

import os
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Optional, Sequence, Union

from limitlab.verify.registry import Context, select
from limitlab.verify import stats
from limitlab.verify.backend import get_backend
from limitlab.verify.report import CheckResult, Report

__all__ = ["run", "versions"]


def versions() -> dict:
    """Versions of limitlab and the libraries a result depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("limitlab", "numpy", "scipy", "sympy", "numba", "mpmath", "array-api-compat", "torch", "cupy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _check_sizes(widths, name="widths"):
    if widths is None:
        return None
    if isinstance(widths, str):
        try:
            widths = [int(w) for w in widths.replace(" ", "").split(",") if w]
        except ValueError as exc:
            raise ValueError(f"{name}: expected comma-separated positive integers, got {widths!r}") from exc
    try:
        ws = [int(w) for w in widths]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of positive integers, got {widths!r}") from exc
    if not ws or any(w < 1 or w != x for w, x in zip(ws, widths)) or len(set(ws)) != len(ws):
        raise ValueError(f"{name}: expected distinct positive integers, got {widths!r}")
    return sorted(ws)


def _reusable(old: Optional[CheckResult], size: int, samples: int, seed: int, backend: str, old_meta: dict) -> bool:
    if old is None or size not in old.measurements:
        return False
    return (old.samples == samples and old_meta.get("seed") == seed
            and old_meta.get("backend", {}).get("backend") == backend)


def run(checks: Union[None, str, Sequence[str]] = None, widths: Optional[Sequence[int]] = None,
        samples: Optional[int] = None, seed: int = 0, backend: str = "auto", out: Optional[str] = None,
        quick: bool = False, resume: bool = False, progress: bool = True, plots: bool = True) -> Report:
    """Run verify checks and return the :class:`Report`.

    Args:
        checks: names or shell patterns (``"kernels.relu.*"``), ``"all"``, or None for the
            default set (``limitlab verify --list`` shows them).
        widths: sizes to use instead of each check's own.
        samples: independent samples (networks) per size instead of each check's own.
        seed: the run's seed; size n of every check draws from the stream (seed, n).
        backend: ``auto``, ``numpy``, ``torch``, ``cupy`` or ``array-api-strict``.
        out: directory for report.json (rewritten atomically after every finished size)
            and plots/; None writes nothing.
        quick: each check's quick sizes and samples.
        resume: reuse the finished sizes in ``out``/report.json (same seed, samples, backend).
        progress: a tqdm progress bar on stderr (only when stderr is a terminal).
    """
    if isinstance(checks, str):
        checks = [checks]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise ValueError(f"samples: must be an integer >= 2, got {samples!r}")
    widths = _check_sizes(widths)
    if resume and out is None:
        raise ValueError("resume: needs out=DIR holding the report.json of the run to continue")
    try:
        selected = select(list(checks) if checks is not None else None)
    except KeyError as exc:
        raise ValueError(f"checks: no check matches {exc.args[0]!r}; `limitlab verify --list` shows them") from None
    if not selected:
        raise ValueError("checks: the selection is empty (no default checks registered)")
    bk = get_backend(backend)
    old = None
    if resume and os.path.exists(os.path.join(out, "report.json")):
        old = Report.load(out)
    report = Report(meta={
        "seed": seed, "quick": bool(quick), "backend": bk.describe(), "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
    })
    if out is not None:
        report.path = os.path.join(out, "report.json")
    plan = []
    for c in selected:
        sizes = widths or list(c.quick_sizes if quick else c.sizes)
        S = samples or (c.quick_samples if quick else c.samples)
        plan.append((c, sorted(sizes), S))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(p[1]) for p in plan), file=sys.stderr, disable=not sys.stderr.isatty(),
                   unit="size", leave=False)
    t_start = time.perf_counter()
    for c, sizes, S in plan:
        res = CheckResult(c.name, c.description, sizes, S, c.rate, c.bias_rate, c.size_name)
        report.checks[c.name] = res
        prev = old.checks.get(c.name) if old is not None else None
        for n in sizes:
            if bar is not None:
                bar.set_description(f"{c.name} {c.size_name}={n}")
            if _reusable(prev, n, S, seed, bk.name, old.meta if old else {}):
                res.measurements[n] = prev.measurements[n]
                res.seconds[n] = prev.seconds.get(n, 0.0)
            else:
                ctx = Context(n, S, seed, bk.name, bk.xp, bk.device)
                t0 = time.perf_counter()
                try:
                    res.measurements[n] = c.run(ctx)
                except Exception as exc:  # a broken check is reported, the run goes on
                    res.error = f"{type(exc).__name__} at {c.size_name} {n}: {exc}"
                    break
                finally:
                    res.seconds[n] = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if out is not None:
                report.save()
        if res.error is None:
            try:
                res.verdict = stats.verdict(sizes, [res.measurements[n] for n in sizes], c.rate, c.bias_rate,
                                            seed=seed)
            except Exception as exc:
                res.error = f"{type(exc).__name__} in the verdict: {exc}"
        if out is not None:
            report.save()
    if bar is not None:
        bar.close()
    report.meta["seconds"] = time.perf_counter() - t_start
    report.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report.meta["passed"] = report.passed
    if out is not None:
        if plots:
            report.meta["plots"] = [os.path.relpath(p, out) for p in report.plot(os.path.join(out, "plots"))]
        report.save()
    return report

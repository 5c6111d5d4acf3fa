"""``limitlab.verify.run``: run checks at several sizes, judge them, write the report.

The output directory is checked before any work (created, and a temporary file written
and removed in it); every finished result already in its report.json is kept (in the
report's archive unless the current run supersedes it), and ``resume`` reuses the finished
sizes recorded with the same check, seed, sample count and backend.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Optional, Sequence, Union

from limitlab.numerics import validation as validate
from limitlab.verify.registry import Context, select, suggest
from limitlab.verify import stats
from limitlab.verify.backend import get_backend
from limitlab.verify.report import REPORT_NAME, CheckResult, Report

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
    if isinstance(widths, str):  # the command line parses "64,256" (cli.parse_sizes); here a sequence
        raise ValueError(f"{name}: expected a sequence of distinct positive integers, got the string {widths!r}")
    try:
        ws = [int(w) for w in widths]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of positive integers, got {widths!r}") from exc
    if not ws or any(w < 1 or w != x for w, x in zip(ws, widths)) or len(set(ws)) != len(ws):
        raise ValueError(f"{name}: expected distinct positive integers, got {widths!r}")
    return sorted(ws)


def _check_out(out) -> Optional[str]:
    """Validate ``out`` before any work: create it and write (then remove) a temporary file in it."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a directory path (str) or None, got {type(out).__name__} {out!r}")
    out = os.fspath(out)
    if out.strip() == "":
        raise ValueError(f"out: expected a directory path, got the empty string {out!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: {out!r} exists and is not a directory; give a directory for report.json and plots/")
    try:
        os.makedirs(out, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"out: cannot write the report to {out!r}: {exc.strerror or exc}") from None
    for sub, kind in ((REPORT_NAME, "a file"), ("plots", "a directory")):
        p = os.path.join(out, sub)
        if os.path.exists(p) and (os.path.isdir(p) if kind == "a file" else not os.path.isdir(p)):
            raise ValueError(f"out: {p!r} exists and is not {kind}; give another directory")
    return out


def _load_old(out: Optional[str]) -> Optional[Report]:
    if out is None or not os.path.exists(os.path.join(out, REPORT_NAME)):
        return None
    try:
        return Report.load(out)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # never overwrite what cannot be read
        raise ValueError(f"out: {os.path.join(out, REPORT_NAME)!r} exists but cannot be read ({exc}); move it away "
                         f"or give another directory") from None


def _reusable(old: Optional[CheckResult], size: int, samples: int, seed: int, backend: str) -> bool:
    if old is None or size not in old.measurements:
        return False
    return old.samples == samples and old.seed == seed and old.backend == backend


def run(checks: Union[None, str, Sequence[str]] = None, widths: Optional[Sequence[int]] = None,
        samples: Optional[int] = None, seed: int = 0, backend: str = "auto", out: Optional[str] = None,
        quick: bool = False, resume: bool = False, progress: bool = True, plots: bool = True,
        scheduler=None) -> Report:
    """Run verify checks and return the :class:`Report`.

    Args:
        checks: names or shell patterns (``"kernels.relu.*"``), ``"all"``, or None for the
            default set (``limitlab verify --list`` shows them).
        widths: sizes to use instead of each check's own.
        samples: independent samples (networks) per size instead of each check's own.
        seed: the run's seed; size n of every check draws from the stream (seed, n).
        backend: ``auto``, ``numpy``, ``torch``, ``cupy`` or ``array-api-strict``.
        out: directory for report.json (rewritten atomically after every finished size)
            and plots/; None writes nothing. Checked before any work; finished results
            already in its report.json are kept (``Report.archive``).
        quick: each check's quick sizes and samples.
        resume: reuse the finished sizes in ``out``/report.json (same check, seed, samples, backend).
        progress: a tqdm progress bar on stderr (only when stderr is a terminal).
        scheduler: a dask.distributed scheduler address (``tcp://HOST:8786``) or Client: every
            size of every check runs as one task on its workers, all at once; the results are
            those of a local run with the same seed (size n draws from the stream (seed, n)),
            and the report is written here as sizes finish.

    A check whose sizes go below its ``min_size``, or that declares a rate and runs fewer
    than three sizes, gets the verdict "inconclusive" (``Report.exit_code`` 3), never "pass".
    """
    if isinstance(checks, str):
        checks = [checks]
    seed = validate.integer(seed, "seed", minimum=0)
    if samples is not None:
        samples = validate.integer(samples, "samples", minimum=2)
    widths = _check_sizes(widths)
    if resume and out is None:
        raise ValueError("resume: needs out=DIR holding the report.json of the run to continue")
    try:
        selected = select(list(checks) if checks is not None else None)
    except KeyError as exc:
        near = suggest(exc.args[0])
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"checks: no check matches {exc.args[0]!r}{hint} (`limitlab verify --list` shows them)"
                         ) from None
    if not selected:
        raise ValueError("checks: the selection is empty (no default checks registered)")
    bk = get_backend(backend)
    out = _check_out(out)
    old = _load_old(out)
    report = Report(meta={
        "seed": seed, "quick": bool(quick), "backend": bk.describe(), "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
    })
    if out is not None:
        report.path = os.path.join(out, REPORT_NAME)
    previous = {}  # every finished result of the old report, by settings key
    if old is not None:
        for r in list(old.archive.values()) + list(old.checks.values()):
            previous[r.key] = r
        report.archive = dict(previous)
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
    t_start, reused_seconds = time.perf_counter(), 0.0
    remote = _Remote(scheduler, plan, previous if resume else {}, seed, bk.name) if scheduler is not None else None
    if remote is not None:
        report.meta["scheduler"] = remote.address
    for c, sizes, S in plan:
        res = CheckResult(c.name, c.description, sizes, S, c.rate, c.bias_rate, c.size_name, seed=seed,
                          backend=bk.name, min_size=c.min_size, min_size_reason=c.min_size_reason)
        report.checks[c.name] = res
        candidates = [r for r in previous.values() if r.name == c.name] if resume else []
        for n in sizes:
            if bar is not None:
                bar.set_description(f"{c.name} {c.size_name}={n}")
            prev = next((r for r in candidates if _reusable(r, n, S, seed, bk.name)), None)
            if prev is not None:
                res.measurements[n] = prev.measurements[n]
                res.seconds[n] = prev.seconds.get(n, 0.0)
                reused_seconds += res.seconds[n]
            else:
                ctx = Context(n, S, seed, bk.name, bk.xp, bk.device)
                t0 = time.perf_counter()
                try:
                    if remote is None:
                        res.measurements[n] = c.run(ctx)
                    else:  # computed on a worker; its own time
                        res.measurements[n], t_worker = remote.result(c.name, n)
                        t0 = time.perf_counter() - t_worker
                except Exception as exc:  # a broken check is reported, the run goes on
                    res.error = f"{type(exc).__name__} at {c.size_name} {n}: {exc}"
                    break
                finally:
                    res.seconds[n] = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if out is not None:
                report.save()
        if all(n in res.measurements for n in sizes):
            report.archive.pop(res.key, None)  # superseded by the current run's complete result
        if res.error is None:
            try:
                res.verdict = stats.verdict(sizes, [res.measurements[n] for n in sizes], c.rate, c.bias_rate,
                                            seed=seed, min_size=c.min_size)
            except Exception as exc:
                res.error = f"{type(exc).__name__} in the verdict: {exc}"
        if out is not None:
            report.save()
    if bar is not None:
        bar.close()
    if remote is not None:
        remote.close()
    # the whole run: this session's time plus the seconds of the sizes reused from an earlier one
    report.meta["seconds_this_session"] = time.perf_counter() - t_start
    report.meta["seconds_reused"] = reused_seconds
    report.meta["seconds"] = report.meta["seconds_this_session"] + reused_seconds
    report.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report.meta["passed"] = report.passed
    report.meta["exit_code"] = report.exit_code
    if out is not None:
        if plots:
            report.meta["plots"] = [os.path.relpath(p, out) for p in report.plot(os.path.join(out, "plots"))]
        report.save()
    return report


def _measure_on_worker(name: str, size: int, samples: int, seed: int, backend: str):
    """One size of one check, on a Dask worker: (measurements, seconds). The check is looked up
    by name in the worker's registry, so nothing but names and numbers travels."""
    c = select([name])[0]
    bk = get_backend(backend)
    t0 = time.perf_counter()
    out = c.run(Context(size, samples, seed, bk.name, bk.xp, bk.device))
    return out, time.perf_counter() - t0


class _Remote:
    """The sizes of a run as dask.distributed futures, submitted at once (the reusable ones excepted)."""

    def __init__(self, scheduler, plan, previous, seed, backend):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ValueError("scheduler: needs the distributed package (pip install distributed)") from exc
        if isinstance(scheduler, str):
            try:
                self.client, self.own = Client(scheduler, timeout="20s"), True
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"scheduler: no Dask scheduler answers at {scheduler!r} ({exc})") from None
        elif isinstance(scheduler, Client):
            self.client, self.own = scheduler, False
        else:
            raise TypeError(f"scheduler: expected a scheduler address (tcp://HOST:PORT) or a distributed.Client, got "
                            f"{type(scheduler).__name__}")
        self.address = self.client.scheduler.address
        self.futures = {}
        for c, sizes, S in plan:
            old = [r for r in previous.values() if r.name == c.name]
            for n in sizes:
                if not any(_reusable(r, n, S, seed, backend) for r in old):
                    self.futures[(c.name, n)] = self.client.submit(_measure_on_worker, c.name, n, S, seed, backend,
                                                                   pure=False)

    def result(self, name, size):
        return self.futures.pop((name, size)).result()

    def close(self):
        self.client.cancel(list(self.futures.values()))  # sizes left after a broken check
        if self.own:
            self.client.close()

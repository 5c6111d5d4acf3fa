"""The verify report: every number of a run, written atomically, resumable, with plots.

``report.json`` holds the run's metadata (versions, seed, backend, device, timings) and,
per check, the measurements of every finished size (theory and all per-sample
estimates) and its verdict. It is rewritten atomically (temporary file + ``os.replace``)
after each finished (check, size), so an interrupted run loses nothing and ``--resume``
continues it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from limitlab.verify.registry import Measurement
from limitlab.verify.stats import QuantityResult, Verdict

__all__ = ["CheckResult", "Report", "REPORT_NAME"]

REPORT_NAME = "report.json"
FORMAT = 1


@dataclass
class CheckResult:
    """One check of a run: its measurements per size and its verdict."""

    name: str
    description: str = ""
    sizes: list = field(default_factory=list)
    samples: int = 0
    rate: Optional[float] = None
    bias_rate: float = 1.0
    size_name: str = "width"
    measurements: dict = field(default_factory=dict)  # size -> list[Measurement]
    seconds: dict = field(default_factory=dict)  # size -> seconds
    verdict: Optional[Verdict] = None
    error: Optional[str] = None

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.verdict is None:
            return "incomplete"
        return "pass" if self.verdict.passed else "fail"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "sizes": list(self.sizes), "samples": self.samples,
            "rate": self.rate, "bias_rate": self.bias_rate, "size_name": self.size_name, "status": self.status,
            "error": self.error, "seconds": {str(k): v for k, v in self.seconds.items()},
            "results": {str(n): [{"quantity": m.quantity, "theory": m.theory, "rtol_floor": m.rtol_floor,
                                  "mean": float(np.mean(m.samples)),
                                  "se": float(np.std(m.samples, ddof=1) / math.sqrt(m.samples.size))
                                  if m.samples.size > 1 else None,
                                  "samples": [float(v) for v in m.samples]} for m in ms]
                        for n, ms in self.measurements.items()},
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        ms = {int(n): [Measurement(m["quantity"], m["theory"], np.asarray(m["samples"], float), m.get("rtol_floor", 0.0))
                       for m in lst] for n, lst in d.get("results", {}).items()}
        v = d.get("verdict")
        if v is not None:
            v = dict(v)
            v["quantities"] = [QuantityResult(**q) for q in v["quantities"]]
            v = Verdict(**v)
        return cls(d["name"], d.get("description", ""), list(d.get("sizes", [])), int(d.get("samples", 0)),
                   d.get("rate"), float(d.get("bias_rate", 1.0)), d.get("size_name", "width"), ms,
                   {int(k): float(t) for k, t in d.get("seconds", {}).items()}, v, d.get("error"))


def _fmt(x: float, se: Optional[float] = None) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    if se is None:
        return f"{x:.5g}"
    return f"{x:.5g} ± {se:.2g}"


@dataclass
class Report:
    """The result of ``limitlab verify``: per-check results and run metadata."""

    meta: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # name -> CheckResult
    path: Optional[str] = None

    # -- verdicts -----------------------------------------------------------------------
    @property
    def passed(self) -> bool:
        """True when every check ran to a verdict and passed."""
        return bool(self.checks) and all(c.passed for c in self.checks.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def __getitem__(self, name: str) -> CheckResult:
        return self.checks[name]

    def __iter__(self):
        return iter(self.checks.values())

    def __len__(self) -> int:
        return len(self.checks)

    def summary(self) -> str:
        counts = {}
        for c in self.checks.values():
            counts[c.status] = counts.get(c.status, 0) + 1
        parts = [f"{v} {k}" for k, v in sorted(counts.items())]
        return f"{len(self.checks)} checks: {', '.join(parts)}" + (
            f" ({self.meta.get('seconds', 0):.1f} s, backend {self.meta.get('backend', {}).get('backend')})")

    def __repr__(self) -> str:
        return f"Report({self.summary()})"

    def rows(self, verbose: bool = False) -> list:
        """Table rows (check, quantity, theory, simulation ± SE, slope, verdict)."""
        rows = []
        for c in self.checks.values():
            if c.verdict is None:
                rows.append((c.name, "-", "-", "-", "-", c.status.upper() + (f": {c.error}" if c.error else "")))
                continue
            v = c.verdict
            slope = "-" if v.slope is None else f"{v.slope:+.2f} ({v.rate:+.2f})"
            qs = v.quantities
            if not verbose:  # the quantity closest to (or furthest past) its tolerance
                qs = [max(qs, key=lambda q: abs(q.error) / q.tolerance if q.tolerance > 0 else math.inf)]
            for k, q in enumerate(qs):
                label = q.quantity if verbose else f"{q.quantity} (worst of {len(v.quantities)})"
                verdict = "pass" if v.passed else "FAIL"
                if verbose:
                    verdict = ("ok" if q.passed else "FAIL") if k else verdict
                rows.append((c.name if k == 0 else "", label, _fmt(q.theory[-1]), _fmt(q.mean[-1], q.se[-1]),
                             slope if k == 0 else "", verdict))
        return rows

    def table(self, verbose: bool = False) -> str:
        head = ("check", "quantity", "theory", "simulation ± SE", "slope (rate)", "verdict")
        rows = [head] + self.rows(verbose)
        w = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        lines = ["  ".join(str(r[i]).ljust(w[i]) for i in range(len(head))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * x for x in w))
        fails = [c for c in self.checks.values() if c.status != "pass"]
        for c in fails:
            why = c.error or (c.verdict.reason if c.verdict else "not finished")
            lines.append(f"{c.name}: {c.status}: {why}")
        lines.append(self.summary())
        return "\n".join(lines)

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "passed": self.passed,
                "checks": {n: c.to_dict() for n, c in self.checks.items()}}

    def save(self, path: Optional[str] = None) -> str:
        """Write report.json atomically (``path``: a file or a directory)."""
        path = path or self.path
        if path is None:
            raise ValueError("path: no output path given and the report has none")
        if os.path.isdir(path) or not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, REPORT_NAME)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=d)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_dict(), fh, default=_json_default)  # no indent: the C encoder
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> "Report":
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_NAME)
        with open(path) as fh:
            d = json.load(fh)
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown report format {d.get('format')!r} (expected {FORMAT})")
        return cls(d.get("meta", {}), {n: CheckResult.from_dict(c) for n, c in d.get("checks", {}).items()}, path)

    # -- plots --------------------------------------------------------------------------
    def plot(self, directory: str) -> list:
        """One PNG per finished check: error against size (log-log, with the theory's slope)
        and theory against simulation at the largest size. Returns the file paths."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        os.makedirs(directory, exist_ok=True)
        paths = []
        for c in self.checks.values():
            v = c.verdict
            if v is None:
                continue
            fig = Figure(figsize=(9, 3.8))
            FigureCanvasAgg(fig)
            ax1, ax2 = fig.subplots(1, 2)
            sizes = np.asarray(v.quantities[0].sizes, float)
            if v.pooled_rms:
                ax1.loglog(sizes, v.pooled_rms, "o-", label="RMS error of one sample")
            err = np.array([[abs(m - t) for m, t in zip(q.mean, q.theory)] for q in v.quantities])
            se = np.array([q.se for q in v.quantities])
            ax1.loglog(sizes, np.maximum(err.max(axis=0), 1e-300), "s--", label="max |ensemble mean − theory|")
            ax1.loglog(sizes, se.max(axis=0), ":", color="gray", label="max standard error")
            if v.rate is not None and v.pooled_rms:
                ref = v.pooled_rms[0] * (sizes / sizes[0]) ** v.rate
                ax1.loglog(sizes, ref, "k-", lw=0.8, label=f"theory slope {v.rate:g}")
            from matplotlib.ticker import NullFormatter

            ax1.xaxis.set_minor_formatter(NullFormatter())
            ax1.set_xticks(sizes)
            ax1.set_xticklabels([str(int(n)) for n in sizes])
            ax1.set_xlabel(c.size_name)
            ax1.set_ylabel("error")
            ax1.set_title(f"{c.name}: {c.status}", fontsize=9)
            ax1.legend(fontsize=7)
            th = np.array([q.theory[-1] for q in v.quantities])
            mean = np.array([q.mean[-1] for q in v.quantities])
            ses = np.array([q.se[-1] for q in v.quantities])
            ax2.errorbar(th, mean, yerr=v.z * ses, fmt="o", ms=3, label=f"simulation ± {v.z:.1f} SE")
            lo, hi = float(min(th.min(), mean.min())), float(max(th.max(), mean.max()))
            ax2.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="theory = simulation")
            ax2.set_xlabel("theory")
            ax2.set_ylabel(f"simulation at {c.size_name} {int(sizes[-1])}")
            ax2.legend(fontsize=7)
            fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.3)
            p = os.path.join(directory, f"{c.name}.png")
            fig.savefig(p, dpi=90)
            paths.append(p)
        return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)

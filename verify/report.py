"""The verify report: every number of a run, written atomically, resumable, with plots.

``report.json`` holds the run's metadata (versions, seed, backend, device, timings) and,
per check, the measurements of every finished size (theory and all per-sample
estimates) and its verdict. It is rewritten atomically (temporary file + ``os.replace``)
after each finished (check, size), so an interrupted run loses nothing and ``--resume``
continues it. ``checks`` holds the current run's results (what the table shows);
``archive`` keeps every other finished result found in the same directory (other checks,
seeds, sample counts, backends or sizes), keyed by :func:`settings_key`, so no finished
result is ever dropped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from limitlab.numerics.files import atomic_write
from limitlab.verify.registry import Measurement
from limitlab.verify.stats import QuantityResult, Verdict

__all__ = ["CheckResult", "Report", "REPORT_NAME", "settings_key", "EXIT_PASS", "EXIT_FAIL", "EXIT_INCONCLUSIVE"]

EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE = 0, 1, 3


def settings_key(name: str, seed, samples, backend, sizes) -> str:
    """The archive key of a result: check and the settings its numbers depend on."""
    return (f"{name} seed={seed} samples={samples} backend={backend} "
            f"sizes={','.join(str(int(n)) for n in sizes)}")


def _plural(n: int, word: str) -> str:
    """'1 check', '2 checks'; a word already plural ('steps') stays as it is."""
    return f"{n} {word}" + ("" if n == 1 or word.endswith("s") else "s")

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
    seed: Optional[int] = None
    backend: Optional[str] = None
    min_size: int = 1
    min_size_reason: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.verdict is None:
            return "incomplete"
        if getattr(self.verdict, "inconclusive", False):
            return "inconclusive"
        return "pass" if self.verdict.passed else "fail"

    @property
    def key(self) -> str:
        return settings_key(self.name, self.seed, self.samples, self.backend, self.sizes)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "sizes": list(self.sizes), "samples": self.samples,
            "rate": self.rate, "bias_rate": self.bias_rate, "size_name": self.size_name, "status": self.status,
            "seed": self.seed, "backend": self.backend, "min_size": self.min_size,
            "min_size_reason": self.min_size_reason,
            "error": self.error, "seconds": {str(k): v for k, v in self.seconds.items()},
            "results": {str(n): [{"quantity": m.quantity, "theory": m.theory, "rtol_floor": m.rtol_floor,
                                  "bias_rate": m.bias_rate, "mean": float(np.mean(m.samples)),
                                  "se": float(np.std(m.samples, ddof=1) / math.sqrt(m.samples.size))
                                  if m.samples.size > 1 else None,
                                  "samples": [float(v) for v in m.samples]} for m in ms]
                        for n, ms in self.measurements.items()},
            "verdict": None if self.verdict is None else _verdict_dict(self.verdict),
        }

    @classmethod
    def from_dict(cls, d: dict, meta: Optional[dict] = None) -> "CheckResult":
        """``meta``: the report's metadata, whose seed and backend fill in results written
        before they were recorded per check."""
        meta = meta or {}
        ms = {int(n): [Measurement(m["quantity"], m["theory"], np.asarray(m["samples"], float), m.get("rtol_floor", 0.0),
                                   m.get("bias_rate"))
                       for m in lst] for n, lst in d.get("results", {}).items()}
        v = d.get("verdict")
        if v is not None:
            qf, vf = set(QuantityResult.__dataclass_fields__), set(Verdict.__dataclass_fields__)
            v = {k: x for k, x in v.items() if k in vf}
            v["quantities"] = [QuantityResult(**{k: x for k, x in q.items() if k in qf}) for q in v["quantities"]]
            v = Verdict(**v)
        seed = d.get("seed", meta.get("seed"))
        backend = d.get("backend", (meta.get("backend") or {}).get("backend"))
        return cls(d["name"], d.get("description", ""), list(d.get("sizes", [])), int(d.get("samples", 0)),
                   d.get("rate"), float(d.get("bias_rate", 1.0)), d.get("size_name", "width"), ms,
                   {int(k): float(t) for k, t in d.get("seconds", {}).items()}, v, d.get("error"), seed, backend,
                   int(d.get("min_size", 1)), d.get("min_size_reason", ""))


def _verdict_dict(v: Verdict) -> dict:
    d = v.to_dict()
    d["status"] = v.status
    for q, qd in zip(v.quantities, d["quantities"]):
        qd["error"], qd["zscore"], qd["limit_zero"] = q.error, q.zscore, q.limit_zero
    return d


def _fmt(x: float, se: Optional[float] = None) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    if se is None:
        return f"{x:.5g}"
    return f"{x:.5g} ± {se:.2g}"


def _g(x: float, digits: int = 2) -> str:
    return "0" if x == 0 else f"{x:.{digits}g}"


def _group(quantity: str) -> str:
    """A quantity's family for colours in plots: the name before its index (nngp[0,1] -> nngp)."""
    return quantity.split("[", 1)[0].strip() if "[" in quantity else quantity


def _families(names) -> dict:
    """Quantity -> family for colours and legends: the name before its index (nngp[0,1] -> nngp);
    with more than 6 such families, the first word (M=1 |w_0|^2 -> M=1); with still more, one family."""
    fam = {n: _group(n) for n in names}
    if len(set(fam.values())) > 6:
        fam = {n: n.split()[0] if " " in n else _group(n) for n in names}
    if len(set(fam.values())) > 6:
        fam = {n: "quantities" for n in names}
    return fam


def _why(c: CheckResult) -> list:
    """Lines saying what a finished check's verdict rests on beyond z*SE (floors, allowances, limits)."""
    v = c.verdict
    if v is None:
        return []
    out = []
    sizes = v.quantities[0].sizes if v.quantities else []
    for q in v.quantities:
        if q.limit_zero and q.basis == "+bias allowance":
            out.append(f"{q.quantity}: theory 0, no relative floor (limit-zero rule): the error must fall at least like "
                       f"{c.size_name}^-{c.bias_rate:g} from {sizes[-2]} to {sizes[-1]}: |error| {abs(q.error):.3g} "
                       f"vs |error at {sizes[-2]}| {abs(q.mean[-2] - q.theory[-2]):.3g} x "
                       f"({sizes[-2]}/{sizes[-1]})^{c.bias_rate:g} = {q.allowance:.3g}, + z*SE {q.z_se:.2g}")
        elif q.basis == "+bias allowance":
            out.append(f"{q.quantity}: |error| {abs(q.error):.3g} ({abs(q.zscore):.1f} SE) > z*SE {q.z_se:.2g}; "
                       f"within the finite-size bias allowance {q.allowance:.2g} (error at {sizes[-2]} scaled by "
                       f"({sizes[-2]}/{sizes[-1]})^{c.bias_rate:g})")
        elif q.basis == "+rtol floor":
            out.append(f"{q.quantity}: |error| {abs(q.error):.3g} within the rtol floor {q.rtol_floor:g} x |theory| "
                       f"= {q.floor:.2g}")
    floors = sorted({q.rtol_floor for q in v.quantities if q.rtol_floor > 0})
    if floors:
        n = sum(q.rtol_floor > 0 for q in v.quantities)
        out.append(f"rtol floor {', '.join(f'{f:g}' for f in floors)} on {n} quantit{'y' if n == 1 else 'ies'} "
                   f"(deterministic estimates; docs/verify.md, 'Tolerance floors')")
    return out


@dataclass
class Report:
    """The result of ``limitlab verify``: per-check results and run metadata.

    ``checks``: the current run's results by check name; ``archive``: every other finished
    result of the same report file, by :func:`settings_key`.
    """

    meta: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # name -> CheckResult
    path: Optional[str] = None
    archive: dict = field(default_factory=dict)  # settings_key -> CheckResult

    # -- verdicts -----------------------------------------------------------------------
    @property
    def passed(self) -> bool:
        """True when every check ran to a verdict and passed."""
        return bool(self.checks) and all(c.passed for c in self.checks.values())

    @property
    def exit_code(self) -> int:
        """0 every check passed; 1 any failed, errored or did not finish; else 3 any inconclusive."""
        statuses = {c.status for c in self.checks.values()}
        if not statuses or statuses - {"pass", "inconclusive"}:
            return EXIT_FAIL
        return EXIT_INCONCLUSIVE if "inconclusive" in statuses else EXIT_PASS

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
        return f"{_plural(len(self.checks), 'check')}: {', '.join(parts)}" + (
            f" ({self.meta.get('seconds', 0):.1f} s, backend {self.meta.get('backend', {}).get('backend')})")

    def __repr__(self) -> str:
        return f"Report({self.summary()})"

    def rows(self, verbose: bool = False) -> list:
        """Table rows (check, quantity, theory, simulation ± SE, error (z-score), tolerance and its
        parts z*SE + bias allowance + rtol floor, slope (rate), verdict)."""
        rows = []
        for c in self.checks.values():
            if c.verdict is None:
                rows.append((c.name, "-", "-", "-", "-", "-", "-", c.status.upper() + (f": {c.error}" if c.error else "")))
                continue
            v = c.verdict
            slope = "-" if v.slope is None else f"{v.slope:+.2f} ({v.rate:+.2f})"
            qs = v.quantities
            if not verbose:  # the quantity closest to (or furthest past) its tolerance
                qs = [max(qs, key=lambda q: abs(q.error) / q.tolerance if q.tolerance > 0 else math.inf)]
            for k, q in enumerate(qs):
                label = q.quantity if verbose else f"{q.quantity} (worst of {len(v.quantities)})"
                verdict = {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}[v.status]
                if verbose:
                    verdict = ("ok" if q.passed else "FAIL") if k else verdict
                zs = q.zscore
                err = f"{q.error:+.2g} ({zs:+.1f} SE)" if math.isfinite(zs) else f"{q.error:+.2g}"
                tol = f"{_g(q.tolerance)} = {_g(q.z_se)} + {_g(q.allowance)} + {_g(q.floor)}"
                rows.append((c.name if k == 0 else "", label, _fmt(q.theory[-1]), _fmt(q.mean[-1], q.se[-1]), err,
                             tol, slope if k == 0 else "", verdict))
        return rows

    def table(self, verbose: bool = False) -> str:
        head = ("check", "quantity", "theory", "simulation ± SE", "error (z-score)",
                "tolerance = z·SE + bias + floor", "slope (rate)", "verdict")
        rows = [head] + self.rows(verbose)
        w = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        lines = ["  ".join(str(r[i]).ljust(w[i]) for i in range(len(head))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * x for x in w))
        for c in self.checks.values():
            if c.status != "pass":
                why = c.error or (c.verdict.reason if c.verdict else "not finished")
                lines.append(f"{c.name}: {c.status}: {why}")
            for line in _why(c):
                lines.append(f"{c.name}: {line}")
        if self.checks:
            z = next((c.verdict for c in self.checks.values() if c.verdict is not None), None)
            if z is not None:
                lines.append(f"z = two-sided normal quantile at alpha {z.alpha or 1e-3:g} over each check's quantities "
                             "(Bonferroni); bias = the error at the next-smaller size scaled by its decay; "
                             "floor = rtol_floor x |theory| (docs/verify.md)")
        lines.append(self.summary())
        return "\n".join(lines)

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "passed": self.passed, "exit_code": self.exit_code,
                "checks": {n: c.to_dict() for n, c in self.checks.items()},
                "archive": {k: c.to_dict() for k, c in self.archive.items()}}

    def save(self, path: Optional[str] = None) -> str:
        """Write report.json atomically (``path``: a file or a directory), readable like any
        file this process creates (mode 0o666 less the umask)."""
        path = path or self.path
        if path is None:
            raise ValueError("path: no output path given and the report has none")
        if os.path.isdir(path) or not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, REPORT_NAME)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # no indent: the C encoder
        atomic_write(path, lambda fh: json.dump(self.to_dict(), fh, default=_json_default))
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
        meta = d.get("meta", {})
        return cls(meta, {n: CheckResult.from_dict(c, meta) for n, c in d.get("checks", {}).items()}, path,
                   {k: CheckResult.from_dict(c, meta) for k, c in d.get("archive", {}).items()})

    # -- plots --------------------------------------------------------------------------
    def plot(self, directory: str) -> list:
        """One PNG per finished check, titled with its name and verdict: the absolute error of
        every quantity against the size (log-log, with the pooled RMS error of one sample and
        the theory's slope); the error of every quantity at the largest size with its ± z·SE
        band and its whole tolerance; and, when the check supplies them (``plot_series``),
        theory and simulation of its quantities against another variable (e.g. f(t) against t).
        Returns the file paths."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter

        from limitlab.verify.registry import all_checks

        registry = all_checks()  # the checks' plot hooks (loaded reports have not imported them)
        os.makedirs(directory, exist_ok=True)
        paths = []
        for c in self.checks.values():
            v = c.verdict
            if v is None or not v.quantities:
                continue
            series = []
            hook = getattr(registry.get(c.name), "plot_series", None)
            if hook is not None:
                series = list(hook([q.quantity for q in v.quantities]))
            ncol = 2 + bool(series)
            fig = Figure(figsize=(5.2 * ncol, 4.6))
            FigureCanvasAgg(fig)
            axes = fig.subplots(1, ncol)
            fam = _families([q.quantity for q in v.quantities])
            groups = list(dict.fromkeys(fam.values()))
            colors = [f"C{k % 10}" for k in range(len(groups))]
            markers = "osD^vP*Xh<>"
            style = {g: (colors[k], markers[k % len(markers)]) for k, g in enumerate(groups)}
            Q = len(v.quantities)
            zlabel = f"± z·SE, z = {v.z:.2f} (alpha = {v.alpha or 1e-3:g}, Bonferroni over Q = {Q})"

            # (1) absolute error against size
            ax = axes[0]
            sizes = np.asarray(v.quantities[0].sizes, float)
            dropped, ys = 0, []
            for g in groups:
                col, mk = style[g]
                first = True
                for q in v.quantities:
                    if fam[q.quantity] != g:
                        continue
                    e = np.abs(np.asarray(q.mean) - np.asarray(q.theory))
                    keep = e > 0
                    dropped += int((~keep).sum())
                    if keep.any():
                        ax.plot(sizes[keep], e[keep], "-", marker=mk, color=col, ms=4, lw=0.6, alpha=0.8,
                                label=(f"|mean − theory|: {g}" + (f" ({sum(fam[x.quantity] == g for x in v.quantities)})"
                                                                  if g != q.quantity else "")) if first else None)
                        ys += list(e[keep])
                        first = False
            if v.pooled_rms and all(r > 0 for r in v.pooled_rms):
                ax.plot(sizes, v.pooled_rms, "k-o", ms=5, lw=1.5, label="pooled RMS error of one sample")
                ys += list(v.pooled_rms)
                if v.rate is not None:
                    ref = v.pooled_rms[0] * (sizes / sizes[0]) ** v.rate
                    ax.plot(sizes, ref, "k--", lw=0.8, label=f"theory's slope {v.rate:g}")
                    ys += list(ref)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ys = [y for y in ys if math.isfinite(y) and y > 0]
            if ys:
                lo, hi = min(ys), max(ys)
                ax.set_ylim(lo / 2.5, hi * 2.5)
            ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.3)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(int(n)) for n in sizes])
            ax.set_xlabel(c.size_name)
            ax.set_ylabel("absolute error (log scale)")
            if dropped:
                ax.text(0.02, 0.02, f"{dropped} exact zero error{'s' if dropped != 1 else ''} not shown (log axis)",
                        transform=ax.transAxes, fontsize=7, color="gray")
            ax.legend(fontsize=6.5, loc="best")
            ax.set_title("error against size", fontsize=9)

            # (2) error of each quantity at the largest size, its z*SE band and its tolerance
            ax = axes[1]
            xs = np.arange(Q)
            lab_done = set()
            for k, q in enumerate(v.quantities):
                col, mk = style[fam[q.quantity]]
                ax.errorbar([k], [q.error], yerr=[[q.z_se], [q.z_se]], fmt=mk, color=col, ms=4, capsize=2,
                            label=zlabel if "z" not in lab_done else None)
                lab_done.add("z")
                ax.plot([k - 0.35, k + 0.35], [q.tolerance] * 2, "-", color="red", lw=1,
                        label="± tolerance (z·SE + bias + floor)" if "t" not in lab_done else None)
                ax.plot([k - 0.35, k + 0.35], [-q.tolerance] * 2, "-", color="red", lw=1)
                lab_done.add("t")
            ax.axhline(0, color="k", lw=0.6)
            span = max(max(abs(q.error) + q.z_se for q in v.quantities), max(q.tolerance for q in v.quantities))
            span = span if span > 0 and math.isfinite(span) else 1.0
            ax.set_ylim(-1.3 * span, 1.3 * span)
            ax.set_xlim(-0.7, Q - 0.3)
            ax.set_xticks(xs)
            ax.set_xticklabels([q.quantity for q in v.quantities], rotation=60, ha="right", fontsize=6.5)
            for t, q in zip(ax.get_xticklabels(), v.quantities):
                t.set_color(style[fam[q.quantity]][0])
            ax.set_ylabel("simulation − theory (absolute error)")
            ax.legend(fontsize=6.5, loc="best")
            ax.set_title(f"level test at the largest size, {c.size_name} {int(sizes[-1])}", fontsize=9)

            # (3) extra series supplied by the check
            if series:
                ax = axes[2]
                byname = {q.quantity: q for q in v.quantities}
                for k, sr in enumerate(series):
                    qs = [byname[n] for n in sr.quantities]
                    x = np.asarray(sr.x, float)
                    col = f"C{k % 10}"
                    ax.plot(x, [q.theory[-1] for q in qs], "-", color=col, lw=1, label=f"theory: {sr.label}")
                    ax.errorbar(x, [q.mean[-1] for q in qs], yerr=[q.z_se for q in qs], fmt="o", color=col, ms=3,
                                capsize=2, label=f"simulation {zlabel.split(',')[0]}: {sr.label}")
                    ax.set_xlabel(sr.xlabel)
                ax.margins(0.08)
                ax.set_ylabel(f"value at {c.size_name} {int(sizes[-1])}")
                ax.legend(fontsize=6.5)
                ax.set_title("theory against simulation", fontsize=9)
            fig.suptitle(f"{c.name}: {c.status.upper()} ({c.samples} samples per size, seed {c.seed})",
                         fontsize=10)
            fig.tight_layout(rect=(0, 0, 1, 0.95))
            p = os.path.join(directory, f"{c.name}.png")
            atomic_write(p, lambda fh: fig.savefig(fh, dpi=90, format="png"), binary=True)
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

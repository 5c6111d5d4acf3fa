"""The registry of verify checks: every pillar adds its checks here.

A check compares a theory number with a simulated estimate at several sizes (widths for
networks, dimensions for high-dimensional regressions). It is a plain function decorated
with :func:`check`::

    @check("kernels.nngp-relu-d1", sizes=(64, 256, 1024), quick_sizes=(64, 256), rate=-0.5,
           samples=64, description="NNGP of a depth-1 ReLU MLP")
    def _(ctx: Context) -> list[Measurement]:
        ...

``ctx`` carries size, samples, seed (a numpy Generator is ``ctx.rng``), and the array
namespace / device (``ctx.xp``, ``ctx.device``). The function returns one
:class:`Measurement` per quantity: the theory value and the per-sample estimates (one
per independent network / regression / random start). ``limitlab.verify.stats`` turns
these into a verdict (see docs/verify.md for the rule).

Every check declares ``min_size``, the smallest size at which its asymptotic statements
(the bias allowance and the rate) are meant to hold, with ``min_size_reason``; a run with
a smaller size, or with fewer than three sizes for a check that declares a rate, is
"inconclusive", never "pass". ``seconds_quick`` is a rough measured time of the quick
sizes on 2 cores (``limitlab verify --list`` shows it); ``plot_series`` lets a check draw
extra curves in its plot (see :class:`Series`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from limitlab.numerics import validation as validate

__all__ = ["Check", "Context", "Measurement", "Series", "check", "registry", "get_check", "all_checks", "select",
           "suggest", "PILLARS"]


@dataclass
class Measurement:
    """One quantity at one size: a theory value and independent sample estimates of it."""

    quantity: str
    theory: float
    samples: np.ndarray  # shape (S,): independent estimates (networks, seeds, regressions)
    # a floor on the tolerated relative error, for deterministic estimates (optimizers, solvers)
    rtol_floor: float = 0.0
    # this quantity's own bias rate (None: the check's): e.g. 2 where the theory carries the
    # predicted 1/n correction and the remaining bias is O(1/n^2)
    bias_rate: Optional[float] = None

    def __post_init__(self):
        self.samples = np.asarray(self.samples, dtype=float).ravel()
        self.theory = float(self.theory)


@dataclass
class Series:
    """An extra curve of a check's plot: quantities (by name) at the largest size against ``x``.

    ``plot_series(quantity_names) -> list[Series]`` on a check returns these; the report
    draws theory and simulation ± SE of ``quantities[i]`` at ``x[i]`` (e.g. f(t) against t).
    """

    label: str
    x: Sequence[float]
    quantities: Sequence[str]
    xlabel: str = ""


@dataclass
class Context:
    size: int
    samples: int
    seed: int
    backend: str = "numpy"
    xp: object = None
    device: object = None
    _rng: Optional[np.random.Generator] = field(default=None, init=False, repr=False, compare=False)

    @property
    def rng(self) -> np.random.Generator:
        # one independent stream per (seed, size) so sizes can be resumed in any order; created
        # once per context, so successive uses continue the stream (never repeat it)
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, self.size])
        return self._rng


@dataclass
class Check:
    name: str
    fn: Callable[[Context], Sequence[Measurement]]
    sizes: tuple
    quick_sizes: tuple
    samples: int
    quick_samples: int
    # expected log-log slope of the RMS error of one sample against size (None: no slope test)
    rate: Optional[float]
    description: str = ""
    size_name: str = "width"
    default: bool = False  # part of the quick default set of `limitlab verify`
    tags: tuple = field(default_factory=tuple)
    # the ensemble-mean bias decays as size^-bias_rate (allowance of the verdict, stats.py)
    bias_rate: float = 1.0
    # smallest size of the asymptotic regime (smaller sizes make the verdict "inconclusive"), and why
    min_size: int = 1
    min_size_reason: str = ""
    # rough measured seconds of the quick sizes and samples on 2 cores (None: not measured)
    seconds_quick: Optional[float] = None
    # extra plot curves: fn(quantity names) -> list[Series]
    plot_series: Optional[Callable] = None

    def run(self, ctx: Context) -> list:
        return list(self.fn(ctx))


registry: dict = {}
# the pillars whose verify/<pillar>/checks.py registers checks (a new pillar is added here)
PILLARS = ("kernels", "dynamics", "collapse", "risk")


def check(name: str, *, sizes: Sequence[int], quick_sizes: Optional[Sequence[int]] = None, samples: int = 64,
          quick_samples: Optional[int] = None, rate: Optional[float] = -0.5, description: str = "",
          size_name: str = "width", default: bool = False, tags: Sequence[str] = (), bias_rate: float = 1.0,
          min_size: int = 1, min_size_reason: str = "", seconds_quick: Optional[float] = None,
          plot_series: Optional[Callable] = None):
    """Register a check function under ``name`` (``pillar.what``).

    ``min_size``: the smallest size of the asymptotic regime (``min_size_reason`` says why);
    every default and quick size must be at least this.
    """

    def deco(fn):
        if name in registry:
            raise ValueError(f"check {name!r} registered twice")
        validate.integer(min_size, "min_size", minimum=1, meaning=f"check {name!r}")
        small = [n for n in tuple(sizes) + tuple(quick_sizes or ()) if n < min_size]
        if small:
            raise ValueError(f"sizes: {small} of check {name!r} are below its min_size {min_size}")
        registry[name] = Check(name, fn, tuple(sizes), tuple(quick_sizes or sizes), int(samples),
                               int(quick_samples or samples), rate, description or (fn.__doc__ or "").strip(),
                               size_name, default, tuple(tags), float(bias_rate), int(min_size), min_size_reason,
                               seconds_quick, plot_series)
        return fn

    return deco


def _tokens(name: str) -> list:
    import re

    return [t for t in re.split(r"[.\-_]+", name.lower()) if t]


def suggest(name: str, names=None, n: int = 3) -> list:
    """The registered check names nearest to ``name``: difflib on whole names, then on the
    dot/dash-separated parts in any order (``kernels.ntk-relu-d3`` -> ``kernels.relu.d3.ntk``)."""
    import difflib

    names = sorted(all_checks()) if names is None else list(names)
    want = set(_tokens(name))
    ranked = []
    if want:
        def score(cand):
            have = set(_tokens(cand))
            return len(want & have) / len(want | have), difflib.SequenceMatcher(None, name, cand).ratio()

        ranked = [(jac, c) for (jac, _), c in sorted(((score(c), c) for c in names), reverse=True) if jac >= 0.5]
    out = [c for jac, c in ranked if jac == 1.0]  # the same parts in another order
    out += [c for c in difflib.get_close_matches(name, names, n=n, cutoff=0.6) if c not in out]
    out += [c for _, c in ranked if c not in out]
    return out[:n]


def get_check(name: str) -> Check:
    _load_all()
    if name not in registry:
        raise KeyError(name)
    return registry[name]


def _load_all():
    """Import every pillar's checks module (each registers itself on import)."""
    import importlib

    for pillar in PILLARS:
        importlib.import_module(f"limitlab.verify.{pillar}.checks")


def all_checks() -> dict:
    """Every registered check (all pillars loaded), by name."""
    _load_all()
    return dict(sorted(registry.items()))


def select(patterns=None) -> list:
    """Checks matching names or shell-style patterns (``kernels.*``); None: the default set; "all": every check.

    Raises KeyError naming the first pattern that matches nothing.
    """
    import fnmatch

    checks = all_checks()
    if patterns is None or len(patterns) == 0:
        return [c for c in checks.values() if c.default]
    out = []
    for pat in patterns:
        if pat == "all":
            hits = list(checks)
        elif pat in checks:
            hits = [pat]
        else:
            hits = [n for n in checks if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(n, pat + ".*")]
        if not hits:
            raise KeyError(pat)
        out += [checks[n] for n in hits if checks[n] not in out]
    return out

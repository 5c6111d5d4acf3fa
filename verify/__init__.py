"""limitlab.verify: finite networks sampled and trained on CPU or GPU, checked against theory.

``run(...)`` runs registered checks and returns a :class:`Report` (the same as the
``limitlab verify`` command); ``montecarlo`` is the engine (ensembles, empirical NNGP /
NTK, gradient descent); ``check``/``Context``/``Measurement`` register new checks.
"""
from limitlab.verify.registry import Check, Context, Measurement, all_checks, check, get_check, registry, select
from limitlab.verify.report import CheckResult, Report
from limitlab.verify.runner import run

__all__ = ["run", "Report", "CheckResult", "check", "Check", "Context", "Measurement", "registry", "get_check",
           "all_checks", "select"]

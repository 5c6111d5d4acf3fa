"""The one code generator: sympy expressions -> compiled Numba functions, cached in memory and on disk.

Expressions are printed with sympy's Python code printer after common-subexpression
elimination, written to a module under the cache directory (``$LIMITLAB_CACHE`` or
``~/.cache/limitlab``) named by the hash of the generated source, and compiled with
``@njit(cache=True)`` so a new Python process loads machine code from disk instead of
recompiling (the compile cost a Jupyter user feels on a second session).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from limitlab.numerics import vecmath
from limitlab.numerics.files import atomic_write

__all__ = ["cache_dir", "scalar_function_source", "compile_module", "stable_angles"]

_MODULES: dict = {}
# generated modules inline vecmath's functions into their cached machine code: its source
# hash is part of their text, so a change there recompiles them
_VECMATH = hashlib.sha256(Path(vecmath.__file__).read_bytes()).hexdigest()[:12]


def cache_dir() -> Path:
    d = Path(os.environ.get("LIMITLAB_CACHE", Path.home() / ".cache" / "limitlab")) / "codegen"
    d.mkdir(parents=True, exist_ok=True)
    return d


def stable_angles(expr: sp.Expr) -> sp.Expr:
    """acos(c/sqrt(q1 q2)) -> atan2(sqrt(q1 q2 - c^2), c), and asin alike: no NaN at |rho| = 1 + eps."""
    def _acos(arg):
        num, den = arg.as_numer_denom()
        return sp.atan2(sp.sqrt(sp.Max(den ** 2 - num ** 2, 0)), num) if den != 1 else sp.acos(arg)

    def _asin(arg):
        num, den = arg.as_numer_denom()
        return sp.atan2(num, sp.sqrt(sp.Max(den ** 2 - num ** 2, 0))) if den != 1 else sp.asin(arg)

    expr = expr.replace(sp.acos, _acos).replace(sp.asin, _asin)
    # half-integer powers of sums (1 - rho^2, q1 q2 - c^2, ...) vanish at |rho| = 1 and can
    # round to -1e-17 there: clamp at 0 rather than return NaN
    return expr.replace(
        lambda e: e.is_Pow and e.base.is_Add and e.exp.is_Rational and e.exp.q == 2,
        lambda e: sp.Pow(sp.Max(e.base, 0), e.exp, evaluate=False))


def _machine_numbers(expr: sp.Expr) -> sp.Expr:
    """Rationals too large for int64 arithmetic in Numba become float64 constants."""
    big = {r: sp.Float(r, 17) for r in expr.atoms(sp.Rational)
           if not r.is_Integer and (abs(r.p) > 2 ** 31 or r.q > 2 ** 31) or r.is_Integer and abs(r) > 2 ** 31}
    return expr.xreplace(big) if big else expr


class _Printer(PythonCodePrinter):
    """Arctangents go to :mod:`limitlab.numerics.vecmath` (libm calls would block SIMD)."""

    def _print_atan2(self, e):
        return f"_atan2({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_atan(self, e):
        return f"_atan({self._print(e.args[0])})"


def scalar_function_source(name: str, args: Sequence[sp.Symbol], exprs: Sequence[sp.Expr],
                           decorator: str = "@nb.njit(cache=True, inline='always', error_model='numpy')") -> str:
    """Source of a scalar Numba function returning ``exprs`` (a tuple if several), with CSE.

    ``error_model='numpy'``: a division must not carry a ZeroDivisionError branch, which
    would keep the loops it is inlined into from vectorizing; callers check finiteness.
    """
    printer = _Printer({"fully_qualified_modules": True, "standard": "python3"})
    exprs = [_machine_numbers(stable_angles(sp.sympify(e))) for e in exprs]
    repl, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_t"), optimizations="basic")
    lines = [f"{decorator}", f"def {name}({', '.join(map(str, args))}):"]
    for sym, e in repl:
        lines.append(f"    {sym} = {printer.doprint(e)}")
    outs = [printer.doprint(e) for e in reduced]
    lines.append(f"    return {', '.join(outs)}" if len(outs) > 1 else f"    return {outs[0]}")
    src = "\n".join(lines)
    return src.replace("math.Max(", "max(").replace("math.Min(", "min(")


def _import(path: Path, modname: str):
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def load_cached(alias: str):
    """The module stored earlier under ``alias`` (see :func:`compile_module`), or None."""
    if alias in _MODULES:
        return _MODULES[alias]
    link = cache_dir() / f"{alias}.alias"
    if not link.exists():
        return None
    path = cache_dir() / link.read_text().strip()
    if not path.exists():
        return None
    mod = _import(path, f"limitlab_codegen_{path.stem}")
    _MODULES[alias] = mod
    return mod


def header() -> str:
    """The imports every generated module starts with (part of its cache key)."""
    return ("import math\nimport numba as nb\nimport numpy as np\n"
            "from limitlab.numerics.vecmath import (angle_finish as _angle_finish, angle_reduce as _angle_reduce,\n"
            "    atan as _atan, atan2 as _atan2)\n"
            f"# vecmath {_VECMATH}\n\n")


def compile_module(source: str, tag: str = "kernel", alias: str = None):
    """Import generated ``source`` as a module (memory cache by hash; Numba disk cache beside it).

    ``alias`` records the module under a caller's key so :func:`load_cached` finds it later.
    """
    full = header() + textwrap.dedent(source)
    key = hashlib.sha256(full.encode()).hexdigest()[:20]
    if key in _MODULES:
        return _MODULES[key]
    path = cache_dir() / f"{tag}_{key}.py"
    if not path.exists():  # atomic: concurrent processes never import a half-written module
        atomic_write(path, lambda fh: fh.write(full))
    mod = _import(path, f"limitlab_codegen_{path.stem}")
    _MODULES[key] = mod
    if alias is not None:
        atomic_write(cache_dir() / f"{alias}.alias", lambda fh: fh.write(path.name))
        _MODULES[alias] = mod
    return mod

"""Command-line plumbing shared by the reproduction scripts of this folder (see README.md here).

Every script takes ``--out DIR`` (default ``./limitlab-reproductions/<script name>``, relative
to the current directory, so nothing is written into the source tree), ``--quick`` (small
sizes: seconds, what the tests run) and ``--seed``; shows a tqdm progress bar on its long
loops; prints each comparison it makes as one ``compare:`` line (what, our number, the
reference it is compared with, and how far apart); and writes its files atomically
(a temporary file in the same folder, then ``os.replace``), among them ``comparison.json``
with every compared pair.

A script imports this module as ``_common``: Python puts the script's own folder first on
``sys.path``, so ``python docs/reproductions/<script>.py`` works from any directory.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from tqdm import tqdm

from limitlab.numerics.files import atomic_write

__all__ = ["parser", "prepare", "progress", "figure", "save_figure", "write_csv", "write_json", "Comparison"]


def parser(script_file: str, doc: str) -> argparse.ArgumentParser:
    """The argparse parser of a reproduction: its docstring as --help, plus --out, --quick, --seed."""
    name = Path(script_file).stem
    ap = argparse.ArgumentParser(prog=f"{name}.py", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("limitlab-reproductions") / name, metavar="DIR",
                    help="folder for the figures, tables and comparison.json (created if missing; "
                         "default: %(default)s, relative to the current directory)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes that run in seconds (what the tests run); the comparison is looser")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return ap


def prepare(args: argparse.Namespace) -> Path:
    """Create ``args.out`` and return it as a Path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def progress(iterable, desc: str, **kw):
    """A tqdm progress bar (on stderr) over ``iterable``."""
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kw)


def _atomic(path: Path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path``
    (limitlab.numerics.files.atomic_write, the package's one atomic write)."""
    return Path(atomic_write(path, write, by_path=True))


def _write_text(path: Path, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return _atomic(path, write)


def figure(**kw):
    """A matplotlib Figure not tied to pyplot or to a GUI backend (``figsize`` etc. as keywords)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` atomically (format from the suffix) and say so."""
    path = _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".")))
    print(f"wrote {path}")
    return path


def write_csv(path: Path, header, rows) -> Path:
    """Write a CSV table atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path = _write_text(path, buf.getvalue())
    print(f"wrote {path}")
    return path


def _plain(o):
    return o.item() if hasattr(o, "item") else o.tolist() if hasattr(o, "tolist") else str(o)


def write_json(path: Path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return _write_text(path, json.dumps(obj, indent=2, default=_plain) + "\n")


class Comparison:
    """The compared pairs of one reproduction: each printed when added, all written to comparison.json.

    ``add(what, value, reference, against)``: ``value`` is ours (a simulation, or limitlab's
    theory), ``reference`` what it is compared with (``against`` names it: "theory", "paper
    eq. (7)", "paper, Fig. 1", ...); ``se`` (optional) is the standard error of ``value``,
    turning the distance into a number of standard errors.
    """

    def __init__(self, title: str):
        self.title = title
        self.rows = []
        print(f"== {title}")

    def add(self, what: str, value: float, reference: float, against: str = "theory", se: float | None = None,
            note: str = ""):
        value, reference = float(value), float(reference)
        diff = value - reference
        rel = abs(diff) / abs(reference) if reference != 0 else None
        row = dict(what=what, value=value, reference=reference, against=against, abs_diff=abs(diff),
                   rel_diff=rel, se=None if se is None else float(se),
                   z=None if not se else diff / float(se), note=note)
        self.rows.append(row)
        extra = f", {abs(diff) / se:.2f} standard errors" if se else ""
        relative = f"relative {rel:.3g}" if rel is not None else "relative: n/a"
        tqdm.write(f"compare: {what}: {value:.6g} vs {against} {reference:.6g}; |difference| {abs(diff):.3g} "
                   f"({relative}{extra}){'; ' + note if note else ''}")  # above any progress bar
        return row

    def write(self, out: Path, **settings) -> Path:
        """Write ``comparison.json`` (title, the run's settings and every pair) into ``out``."""
        path = write_json(Path(out) / "comparison.json", dict(title=self.title, settings=settings, rows=self.rows))
        print(f"wrote {path}")
        return path

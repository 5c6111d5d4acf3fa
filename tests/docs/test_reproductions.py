"""Every script of docs/reproductions/ runs with --quick into a temporary --out, writes only
there, and prints its comparison; the shared plumbing (_common.py) writes atomically."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parents[2] / "docs" / "reproductions"
SCRIPTS = sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))
FAST = {"dang2023_imbalanced", "mei_montanari2019_double_descent", "saxe2014_modes",
        "hanin_nica2020_relu_moments"}  # a few seconds each


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def _run(script, cwd, *args, timeout=600):
    env = dict(os.environ, MPLBACKEND="Agg")  # never try a GUI backend in a subprocess
    return subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def _common():
    spec = importlib.util.spec_from_file_location("reproductions_common", HERE / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_script_is_covered():
    assert set(SCRIPTS) >= FAST and len(SCRIPTS) == 9, SCRIPTS


@pytest.mark.parametrize("script", [pytest.param(s, marks=() if s in FAST else pytest.mark.slow) for s in SCRIPTS])
def test_reproduction_quick_writes_under_out_and_prints_its_comparison(script, tmp_path):
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    before = _listing(HERE)
    r = _run(script, cwd, "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _listing(HERE) == before, "wrote into docs/reproductions"
    assert _listing(cwd) == [], "wrote outside --out"
    files = _listing(out)
    assert "comparison.json" in files and not [f for f in files if Path(f).name.startswith(".")], files
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("compare: ")]
    report = json.loads((out / "comparison.json").read_text())
    assert len(lines) == len(report["rows"]) >= 2 and report["settings"]["quick"] is True
    for row in report["rows"]:
        assert math.isfinite(row["value"]) and math.isfinite(row["reference"]) and row["what"] in r.stdout, row
    assert all(f"wrote {out / f}" in r.stdout for f in files), r.stdout
    if script in EXACT:
        EXACT[script]({row["what"]: row for row in report["rows"]})


def _dang(rows):
    objective = [r for w, r in rows.items() if "objective" in w]
    assert len(objective) == 2 and all(r["rel_diff"] < 1e-5 for r in objective), objective


def _saxe(rows):
    times = [r for w, r in rows.items() if "time from" in w]
    # gradient descent at step 0.02 lags the flow of eq. (7) by O(step): under 5% here, not 0
    assert len(times) == 3 and all(0 < r["rel_diff"] < 0.05 for r in times), times


def _bordelon_deep_linear(rows):
    ntk0 = [r for w, r in rows.items() if "NTK(0)" in w]
    ratio = [r for w, r in rows.items() if "0.02 vs 0.01" in w]
    assert len(ntk0) == 2 and all(r["rel_diff"] < 1e-12 for r in ntk0), ntk0
    assert len(ratio) == 1 and ratio[0]["rel_diff"] < 1e-2, ratio


def _hanin_nica(rows):
    coef = [r for w, r in rows.items() if "1/n coefficient" in w]
    sims = [r for w, r in rows.items() if w.startswith("R = ")]
    assert len(coef) == 2 and all(r["rel_diff"] < 1e-10 for r in coef), coef
    assert len(sims) == 4 and all(abs(r["z"]) < 4.5 for r in sims), sims  # exact at every width: noise only


# where the quick run must still agree with its reference (the theory is exact there)
EXACT = {"hanin_nica2020_relu_moments": _hanin_nica, "dang2023_imbalanced": _dang, "saxe2014_modes": _saxe, "bordelon2022_deep_linear": _bordelon_deep_linear}


def test_arora2019_tiny_run_tables_every_kernel(tmp_path):
    """The CNN-kernel reproduction end to end at the smallest sizes (its --quick run is slow):
    one accuracy row per kernel, in percent, and the four depth-free comparisons."""
    out = tmp_path / "out"
    r = _run("arora2019_cntk_digits", tmp_path, "--pool", "24", "--depths", "2", "--splits", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (out / "accuracy.csv").read_text().splitlines()[1:]
    kernels = {row.split(",")[0] for row in rows}
    assert kernels == {"CNTK-GAP", "CNTK-V", "CNN-GP-GAP", "CNN-GP-V", "FC-NTK", "FC-NNGP"} and len(rows) == 6
    assert all(0.0 <= float(row.split(",")[2]) <= 100.0 for row in rows), rows
    report = json.loads((out / "comparison.json").read_text())
    assert len(report["rows"]) == 4 and report["settings"]["pool"] == 24, report
    bad = _run("arora2019_cntk_digits", tmp_path, "--depths", "1", "--out", str(out))
    assert bad.returncode == 2 and "--depths" in bad.stderr


def test_help_and_default_out(tmp_path, _common):
    r = _run("dang2023_imbalanced", tmp_path, "--help")
    assert r.returncode == 0 and "--out DIR" in r.stdout and "--quick" in r.stdout and "Thm 3.1" in r.stdout
    assert _listing(tmp_path) == []
    for script in SCRIPTS:
        a = _common.parser(HERE / f"{script}.py", "doc").parse_args([])
        assert a.out == Path("limitlab-reproductions") / script and not a.out.is_absolute() and not a.quick


def test_writes_are_atomic(tmp_path, _common):
    _common.write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2.5]])
    _common.write_json(tmp_path / "t.json", {"x": 1.0})
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,2.5\n" and json.loads((tmp_path / "t.json").read_text()) == {"x": 1}

    class Boom(Exception):
        pass

    class Fig:
        def savefig(self, path, **kw):
            Path(path).write_text("partial")
            raise Boom

    (tmp_path / "f.png").write_text("old")
    with pytest.raises(Boom):
        _common.save_figure(Fig(), tmp_path / "f.png")
    assert (tmp_path / "f.png").read_text() == "old"  # the old file is untouched, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.csv", "t.json"]


def test_comparison_line(_common, capsys):
    c = _common.Comparison("title")
    row = c.add("x", 1.1, 1.0, "theory", se=0.05)
    text = capsys.readouterr().out
    assert "== title" in text and "compare: x: 1.1 vs theory 1; |difference| 0.1 (relative 0.1, 2.00 standard errors)" in text
    assert row["z"] == pytest.approx(2.0)

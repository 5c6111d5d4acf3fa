"""The `limitlab verify` command: default output, usage errors, exit codes, --list, plots."""
import json
import os

import pytest

from limitlab.verify import cli
from limitlab.verify.registry import Measurement, Series, check, registry, suggest
from limitlab.verify.report import Report


def _measure(ctx):
    rng = ctx.rng
    out = []
    for i, t in enumerate((1.0, 0.5)):
        s = t + 2.0 * ctx.size ** -0.5 * rng.standard_normal(ctx.samples)
        out.append(Measurement(f"f[0](t={i + 1})", t, s))
    out.append(Measurement("ntk[0,0]", 2.0, 2.0 + ctx.size ** -0.5 * rng.standard_normal(ctx.samples)))
    return out


SERIES_CALLS = []


def _series(names):
    SERIES_CALLS.append(list(names))
    return [Series("f[0]", [1.0, 2.0], ["f[0](t=1)", "f[0](t=2)"], "t")]


@pytest.fixture(autouse=True)
def selftest_check():
    check("clitest.pass", sizes=(100, 400, 1600), quick_sizes=(100, 200, 400), samples=64, rate=-0.5, min_size=50,
          min_size_reason="synthetic", seconds_quick=0.1, plot_series=_series, size_name="steps",
          description="synthetic")(_measure)
    SERIES_CALLS.clear()
    yield
    registry.pop("clitest.pass", None)


def test_no_out_writes_the_report_to_limitlab_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["verify", "clitest.pass", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = os.path.join("limitlab-report", "report.json")
    assert os.path.exists(tmp_path / path) and (tmp_path / "limitlab-report" / "plots" / "clitest.pass.png").exists()
    assert out.rstrip().splitlines()[-1].startswith(f"report: {path}")
    other = tmp_path / "elsewhere"
    assert cli.main(["verify", "clitest.pass", "--quick", "--no-progress", "--out", str(other)]) == 0
    assert (other / "report.json").exists()


def test_unknown_check_suggests_the_nearest_names(tmp_path, capsys):
    assert cli.main(["verify", "kernels.ntk-relu-d3", "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean kernels.relu.d3.ntk" in err
    assert suggest("dynamics.ntkflow")[0] == "dynamics.ntk-flow"
    assert suggest("clitest.pas")[0] == "clitest.pass"
    assert suggest("zzzz") == []
    assert not os.listdir(tmp_path)  # nothing was written


@pytest.mark.parametrize("bad", ["file", "under-file", "empty", "report-dir", "read-only"])
def test_invalid_out_is_a_usage_error_before_any_work(bad, tmp_path, capsys, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    out = {"file": str(f), "under-file": str(f / "sub"), "empty": "", "report-dir": str(tmp_path / "r"),
           "read-only": str(tmp_path / "ro" / "out")}[bad]
    if bad == "report-dir":
        (tmp_path / "r" / "report.json").mkdir(parents=True)
    if bad == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only directory")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    ran = []
    monkeypatch.setattr(registry["clitest.pass"], "fn", lambda ctx: ran.append(ctx.size) or _measure(ctx))
    assert cli.main(["verify", "clitest.pass", "--quick", "--no-progress", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "out:" in err and "Traceback" not in err and ran == []


def test_exit_codes_are_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in ("limitlab-report", "3 none failed but some inconclusive", "130 interrupted", "2 usage error"):
        assert word in text
    assert "3 no check failed but at least one was inconclusive" in " ".join(cli.__doc__.split())


def test_inconclusive_exit_code_and_table(tmp_path, capsys):
    code = cli.main(["verify", "clitest.pass", "--widths", "100,400", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3 and "INCONCLUSIVE" in out and "at least 3 sizes" in out
    assert json.loads((tmp_path / "report.json").read_text())["exit_code"] == 3


def test_list_shows_quick_and_full_sizes_samples_and_estimates(capsys):
    assert cli.main(["verify", "--list"]) == 0
    out = capsys.readouterr().out
    assert "stepss" not in out and "steps per unit time 40, 80, 160" in out
    assert "quick: steps 100, 200, 400 x 64 samples (~0 s on 2 cores, an estimate)" in out
    assert "full:  steps 100, 400, 1600 x 64 samples; min steps 50" in out
    assert "quick: widths 128, 512, 2048 x 256 samples" in out and "quick: d = 100, 200, 400 x 6 samples" in out
    from limitlab.verify.report import _plural

    assert _plural(1, "check") == "1 check" and _plural(2, "check") == "2 checks" and _plural(2, "steps") == "2 steps"
    assert out.rstrip().splitlines()[-1].startswith(f"{len(registry)} checks; * = the default set (")


def test_plot_has_titles_labels_and_the_checks_own_series(tmp_path):
    import matplotlib.image

    from limitlab import verify

    r = verify.run("clitest.pass", quick=True, progress=False, out=str(tmp_path))
    assert SERIES_CALLS and "f[0](t=1)" in SERIES_CALLS[0]
    img = matplotlib.image.imread(str(tmp_path / "plots" / "clitest.pass.png"))
    assert img.shape[1] > 3 * img.shape[0] / 1.2  # three panels: the series panel was drawn
    assert r.exit_code == 0 and Report.load(str(tmp_path)).exit_code == 0

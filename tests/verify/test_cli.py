"""The `limitlab` command: `limitlab verify` (default output, usage errors, exit codes, --list, plots) and
`limitlab risk` (a table on stdout or CSV + plot files; NaN gives exit status 1, bad values 2)."""
import argparse
import csv
import io
import json
import os

import numpy as np

import pytest

from limitlab.theory.risk import random_features
from limitlab.verify import cli
from limitlab.verify.cli import format_number, main, parse_sizes, parse_values
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


# ---- limitlab risk ----

def test_parse_values_forms():
    np.testing.assert_allclose(parse_values("1.5"), [1.5])
    np.testing.assert_allclose(parse_values("1,2,3"), [1, 2, 3])
    np.testing.assert_allclose(parse_values("0:1:3"), [0, 0.5, 1])
    np.testing.assert_allclose(parse_values("1:100:3:log"), [1, 10, 100])
    with pytest.raises(argparse.ArgumentTypeError):
        parse_values("1:2")


def test_random_features_curve_csv_matches_theory_and_plot_exists(tmp_path):
    assert main(["risk", "random-features", "--psi1", "0.2:4:7", "--psi2", "1.5", "--ridge", "0.01",
                 "--noise", "0.1", "--simulate", "30", "--samples", "1", "--sim-points", "3",
                 "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "random_features.csv")))
    assert len(rows) == 7
    for r in rows:
        th = random_features(float(r["psi1"]), 1.5, 0.01, noise=0.1).risk
        assert float(r["risk"]) == pytest.approx(th, rel=1e-14)
    assert len(list(csv.DictReader(open(tmp_path / "random_features_simulated.csv")))) == 3
    assert (tmp_path / "random_features.png").stat().st_size > 1000


def test_surface_and_other_models(tmp_path):
    assert main(["risk", "random-features", "--psi1", "0.5:2:4", "--psi2", "0.5:2:5", "--out", str(tmp_path),
                 "--name", "surf"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "surf.csv")))) == 20
    assert main(["risk", "linear-ridge", "--gamma", "0.5,2", "--ridge", "0,0.1", "--out", str(tmp_path)]) == 0
    assert main(["risk", "kernel-ridge", "--n", "10,100", "--max-degree", "40", "--degree-power", "1:0.5,2:0.2",
                 "--out", str(tmp_path), "--no-plot"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "kernel_ridge.csv")))) == 2


def test_bad_value_gives_status_2(tmp_path, capsys):
    assert main(["risk", "random-features", "--psi1", "0", "--psi2", "1", "--out", str(tmp_path)]) == 2
    assert "psi1" in capsys.readouterr().err


def test_one_parser_with_an_explicit_list_of_subcommands():
    assert list(cli.SUBCOMMANDS) == ["verify", "risk"]
    args = cli.build_parser().parse_args(["risk", "linear-ridge", "--gamma", "2", "--out", "x"])
    assert callable(args.func) and args.risk_model == "linear-ridge"
    args = cli.build_parser().parse_args(["verify", "--widths", "256,64"])
    assert args.widths == [256, 64]
    for bad in ("x,y", "0,64", "64,64", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)


def _stdout_rows(capsys):
    out = capsys.readouterr().out
    return out, list(csv.DictReader(io.StringIO(out)))


def test_single_point_prints_the_table_to_stdout_and_writes_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["risk", "random-features", "--psi1", "2", "--psi2", "1.5", "--ridge", "0.1"]) == 0
    out, rows = _stdout_rows(capsys)
    assert list(tmp_path.iterdir()) == []
    assert len(rows) == 1 and list(rows[0]) == ["psi1", "psi2", "ridge", "risk", "bias", "variance"]
    th = random_features(2.0, 1.5, 0.1)
    # shortest round-trip decimals: the printed numbers are the computed floats exactly, without float noise
    assert float(rows[0]["risk"]) == th.risk and float(rows[0]["bias"]) == th.bias
    assert out.splitlines()[1].startswith("2.0,1.5,0.1,")
    assert "0.10000000000000001" not in out


def test_numbers_are_written_without_float_noise(tmp_path):
    assert main(["risk", "linear-ridge", "--gamma", "0.1,0.3", "--ridge", "0.7", "--out", str(tmp_path),
                 "--no-plot"]) == 0
    text = (tmp_path / "linear_ridge.csv").read_text()
    assert text.splitlines()[1].startswith("0.1,0.7,") and text.splitlines()[2].startswith("0.3,0.7,")
    assert format_number(0.1) == "0.1" and format_number(np.float64(1) / 3) == repr(1 / 3)
    assert format_number(np.inf) == "inf" and format_number(7) == "7"


def test_interpolation_peak_is_inf_never_nan(capsys):
    # ridgeless psi1 = psi2: the risk diverges (Mei & Montanari, Theorem 3); variance has coefficient 0 here
    assert main(["risk", "random-features", "--psi1", "0.5,1,2", "--psi2", "1", "--ridge", "0"]) == 0
    out, rows = _stdout_rows(capsys)
    assert "nan" not in out.lower()
    assert rows[1]["risk"] == "inf" and rows[1]["bias"] == "inf" and rows[1]["variance"] == "0.0"
    assert np.isfinite(float(rows[0]["risk"])) and np.isfinite(float(rows[2]["risk"]))


def test_any_nan_gives_a_nonzero_exit_status(tmp_path, monkeypatch, capsys):
    import limitlab.theory.risk as risk_module

    real = risk_module.random_features

    def broken(*args, **kwargs):
        r = real(*args, **kwargs)
        r.risk = np.where(np.asarray(args[0]) > 1, np.nan, r.risk)
        return r

    monkeypatch.setattr(risk_module, "random_features", broken)
    assert main(["risk", "random-features", "--psi1", "0.5,2", "--psi2", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "NaN" in err and "psi1=2.0" in err
    assert main(["risk", "random-features", "--psi1", "0.5,2", "--psi2", "1.5", "--out", str(tmp_path),
                 "--no-plot"]) == 1


@pytest.mark.parametrize("argv", [["--simulate", "20", "--samples", "0"], ["--simulate", "-1"],
                                  ["--simulate", "20", "--sim-points", "0"]])
def test_bad_simulation_counts_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["risk", "random-features", "--psi1", "1,2", "--psi2", "1.5"] + argv)
    assert exc.value.code == 2
    assert "must be an integer" in capsys.readouterr().err
    assert main(["risk", "random-features", "--psi1", "1,2", "--psi2", "1.5", "--simulate", "1"]) == 2


def test_help_is_for_users(capsys):
    for argv in (["risk", "--help"], ["risk", "random-features", "--help"], ["risk", "kernel-ridge", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and "limitlab risk random-features --psi1" in text
        assert "_add_risk" not in text and ":func:" not in text and "``" not in text


def test_the_main_cli_prints_a_point(capsys):
    assert main(["risk", "linear-ridge", "--gamma", "2", "--ridge", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # Hastie et al. ridgeless, gamma > 1: r^2 (1 - 1/gamma) + sigma^2/(gamma - 1) = 0.5 + 1
    assert float(rows[0]["risk"]) == pytest.approx(1.5, rel=1e-14)

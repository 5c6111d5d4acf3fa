"""`limitlab risk ...`: a table on stdout or CSV + plot files; NaN gives exit status 1, bad values 2."""
import argparse
import csv
import io

import numpy as np
import pytest

from limitlab.theory.risk import random_features
from limitlab.verify.risk.cli import add_risk_subcommand, format_number, main, parse_values


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


def test_plugs_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="limitlab")
    sub = parser.add_subparsers(dest="command")
    add_risk_subcommand(sub)
    args = parser.parse_args(["risk", "linear-ridge", "--gamma", "2", "--out", "x"])
    assert callable(args.func) and args.risk_model == "linear-ridge"


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
        assert "add_risk_subcommand" not in text and ":func:" not in text and "``" not in text


def test_the_main_cli_prints_a_point(capsys):
    from limitlab.verify.cli import main as limitlab_main

    assert limitlab_main(["risk", "linear-ridge", "--gamma", "2", "--ridge", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # Hastie et al. ridgeless, gamma > 1: r^2 (1 - 1/gamma) + sigma^2/(gamma - 1) = 0.5 + 1
    assert float(rows[0]["risk"]) == pytest.approx(1.5, rel=1e-14)

"""`limitlab risk ...` writes CSV + plot; bad values give exit status 2 with a message."""
import argparse
import csv

import numpy as np
import pytest

from limitlab.theory.risk import random_features
from limitlab.verify.risk.cli import add_risk_subcommand, main, parse_values


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

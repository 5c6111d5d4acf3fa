"""run(), the report file, --resume, plots and the `limitlab` command, on small self-test checks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from limitlab import verify
from limitlab.verify import cli
from limitlab.verify.registry import Measurement, check, registry
from limitlab.verify.report import Report, settings_key


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m

CALLS = []


def _gaussian_measure(ctx, offset=0.0, interrupt_at=None):
    CALLS.append(ctx.size)
    if interrupt_at is not None and ctx.size == interrupt_at and os.environ.get("SELFTEST_INTERRUPT"):
        raise KeyboardInterrupt
    rng = ctx.rng
    out = []
    for i, t in enumerate((1.0, 0.5)):
        s = t + 2.0 * ctx.size ** -0.5 * rng.standard_normal(ctx.samples) + 1.0 / ctx.size
        out.append(Measurement(f"q{i}", t + offset, s))
    return out


@pytest.fixture(autouse=True)
def selftest_checks():
    names = {"selftest.pass": 0.0, "selftest.fail": 0.3}
    for name, off in names.items():
        check(name, sizes=(100, 400, 1600), quick_sizes=(100, 200, 400), samples=200, quick_samples=100, rate=-0.5,
              description=f"synthetic, theory offset {off}")(lambda ctx, off=off: _gaussian_measure(ctx, off, 1600))

    def broken(ctx):
        raise RuntimeError("boom")

    check("selftest.broken", sizes=(10, 20), samples=4)(broken)
    CALLS.clear()
    yield
    for name in list(names) + ["selftest.broken"]:
        registry.pop(name, None)


def test_run_returns_a_report_with_verdicts_and_numbers():
    r = verify.run("selftest.pass", progress=False)
    assert isinstance(r, verify.Report) and r.passed and r.exit_code == 0
    c = r["selftest.pass"]
    assert c.status == "pass" and c.sizes == [100, 400, 1600] and c.samples == 200
    assert abs(c.verdict.slope + 0.5) < 0.15
    assert "selftest.pass" in r.table() and "pass" in r.table()
    r2 = verify.run(["selftest.*"], progress=False, quick=True)
    assert not r2.passed and r2.exit_code == 1
    assert r2["selftest.fail"].status == "fail" and r2["selftest.broken"].status == "error"
    assert "boom" in r2["selftest.broken"].error
    assert r2["selftest.pass"].sizes == [100, 200, 400]


def test_same_seed_same_numbers_and_overrides_apply():
    a = verify.run("selftest.pass", widths=[50, 200], samples=10, seed=3, progress=False)
    b = verify.run("selftest.pass", widths=(200, 50), samples=10, seed=3, progress=False)
    sa, sb = a["selftest.pass"].measurements, b["selftest.pass"].measurements
    assert list(sa) == [50, 200] and sa[50][0].samples.size == 10
    np.testing.assert_array_equal(sa[200][1].samples, sb[200][1].samples)
    assert a["selftest.pass"].status == "inconclusive"  # a rate from 2 sizes decides nothing
    c = verify.run("selftest.pass", widths=[50, 200], samples=10, seed=4, progress=False)
    assert not np.array_equal(c["selftest.pass"].measurements[200][1].samples, sa[200][1].samples)


def test_report_file_is_complete_and_roundtrips(tmp_path):
    r = verify.run("selftest.pass", out=str(tmp_path), progress=False, quick=True, seed=1)
    d = json.loads((tmp_path / "report.json").read_text())
    assert d["passed"] is True and d["meta"]["seed"] == 1 and d["meta"]["backend"]["backend"] == "numpy"
    assert "numpy" in d["meta"]["versions"] and d["meta"]["seconds"] > 0
    res = d["checks"]["selftest.pass"]["results"]["400"]
    assert len(res[0]["samples"]) == 100 and res[0]["theory"] == 1.0
    q = d["checks"]["selftest.pass"]["verdict"]["quantities"][0]  # the tolerance and its parts
    assert q["tolerance"] == pytest.approx(q["z_se"] + q["allowance"] + q["floor"]) and q["basis"]
    assert q["zscore"] == pytest.approx(q["error"] / q["se"][-1])
    assert (os.stat(tmp_path / "report.json").st_mode & 0o777) == 0o666 & ~_umask()
    assert os.path.exists(tmp_path / "plots" / "selftest.pass.png")
    back = Report.load(str(tmp_path))
    assert back.passed and back["selftest.pass"].verdict.slope == pytest.approx(r["selftest.pass"].verdict.slope)
    np.testing.assert_array_equal(back["selftest.pass"].measurements[400][0].samples,
                                  r["selftest.pass"].measurements[400][0].samples)


def test_interrupted_run_loses_nothing_and_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFTEST_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        verify.run("selftest.pass", out=str(tmp_path), progress=False)
    saved = Report.load(str(tmp_path))
    assert sorted(saved["selftest.pass"].measurements) == [100, 400]  # finished sizes were written
    monkeypatch.delenv("SELFTEST_INTERRUPT")
    CALLS.clear()
    r = verify.run("selftest.pass", out=str(tmp_path), progress=False, resume=True)
    assert CALLS == [1600] and r.passed
    full = verify.run("selftest.pass", progress=False)
    for n in (100, 400, 1600):  # resumed numbers equal an uninterrupted run's
        np.testing.assert_array_equal(r["selftest.pass"].measurements[n][0].samples,
                                      full["selftest.pass"].measurements[n][0].samples)
    assert r.meta["seconds"] == pytest.approx(sum(r["selftest.pass"].seconds.values()), rel=0.5, abs=0.5)
    assert r.meta["seconds_reused"] == pytest.approx(sum(saved["selftest.pass"].seconds.values()))
    CALLS.clear()
    verify.run("selftest.pass", out=str(tmp_path), progress=False, resume=True, seed=1)
    assert CALLS == [100, 400, 1600]  # another seed: nothing reused


def test_bad_arguments_raise_value_errors():
    for kwargs, word in [({"checks": "nope.*"}, "checks"), ({"widths": [0, 10]}, "widths"),
                         ({"widths": "a,b"}, "widths"), ({"samples": 1}, "samples"), ({"seed": -1}, "seed"),
                         ({"backend": "tpu"}, "backend"), ({"resume": True}, "resume")]:
        with pytest.raises(ValueError, match=word):
            verify.run(**{"checks": "selftest.pass", "progress": False, **kwargs})


def test_cli_exit_codes_and_output(tmp_path, capsys):
    assert cli.main(["verify", "selftest.pass", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "selftest.pass" in out and "simulation ± SE" in out and "report.json" in out
    assert "z-score" in out and "tolerance = z·SE + bias + floor" in out
    assert cli.main(["verify", "selftest.fail", "--quick", "--no-progress", "-v", "--out", str(tmp_path / "f")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert cli.main(["verify", "nonexistent.check", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "no check matches" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse parses --widths: a usage error, status 2
        cli.main(["verify", "selftest.pass", "--widths", "x,y"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--backend", "tpu"])
    assert e.value.code == 2
    assert cli.main(["verify", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "selftest.pass" in listing and "kernels.relu.d3.ntk" in listing
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "limitlab" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "limitlab")
    if not os.path.exists(exe):
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "verify" in out.stdout


def test_a_real_kernel_check_runs_end_to_end_from_the_cli(tmp_path, capsys):
    code = cli.main(["verify", "kernels.relu.d1.standard", "--widths", "64,128,256", "--samples", "64",
                     "--no-progress", "--no-plots", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    d = json.loads((tmp_path / "report.json").read_text())
    q = d["checks"]["kernels.relu.d1.standard"]["results"]["256"]
    assert [m["quantity"] for m in q][:2] == ["nngp[0,0]", "nngp[0,1]"] and len(q) == 12


@pytest.mark.slow
def test_default_command_runs_in_under_a_minute():
    import time

    t = time.perf_counter()
    r = verify.run(quick=True, progress=False)
    assert time.perf_counter() - t < 60
    assert all(c.status == "pass" for c in r if c.name.startswith("kernels."))


def test_resume_with_other_settings_keeps_every_finished_result(tmp_path):
    verify.run(["selftest.pass", "selftest.fail"], out=str(tmp_path), progress=False, quick=True)
    r = verify.run("selftest.pass", out=str(tmp_path), progress=False, quick=True, resume=True, samples=50)
    back = Report.load(str(tmp_path))
    assert list(back.checks) == ["selftest.pass"] and back["selftest.pass"].samples == 50  # the current run
    keys = set(back.archive)
    assert settings_key("selftest.fail", 0, 100, "numpy", [100, 200, 400]) in keys  # another check: kept
    assert settings_key("selftest.pass", 0, 100, "numpy", [100, 200, 400]) in keys  # other samples: kept
    old = back.archive[settings_key("selftest.fail", 0, 100, "numpy", [100, 200, 400])]
    assert old.status == "fail" and sorted(old.measurements) == [100, 200, 400]
    assert "selftest.fail" not in r.table()  # the table shows the current run only
    CALLS.clear()  # back to the first settings: everything is reused from the archive
    r = verify.run("selftest.fail", out=str(tmp_path), progress=False, quick=True, resume=True)
    assert CALLS == [] and r["selftest.fail"].status == "fail"
    assert settings_key("selftest.pass", 0, 50, "numpy", [100, 200, 400]) in Report.load(str(tmp_path)).archive


def test_a_rate_from_two_sizes_or_sizes_below_min_size_are_inconclusive(tmp_path):
    check("selftest.small", sizes=(100, 400, 1600), samples=200, rate=-0.5, min_size=100,
          min_size_reason="synthetic")(lambda ctx: _gaussian_measure(ctx))
    try:
        r = verify.run("selftest.small", widths=[25, 50, 100], progress=False)
        c = r["selftest.small"]
        assert c.status == "inconclusive" and not r.passed and r.exit_code == 3
        assert "below the check's min_size 100" in c.verdict.reason
        r = verify.run("selftest.small", widths=[100, 400], progress=False)
        assert r["selftest.small"].status == "inconclusive" and "at least 3 sizes" in r["selftest.small"].verdict.reason
        assert verify.run("selftest.small", widths=[100, 400, 1600], progress=False).exit_code == 0
        # precedence: a failure beats an inconclusive check
        r = verify.run(["selftest.small", "selftest.fail"], widths=[100, 400], progress=False)
        assert r.exit_code == 1
        with pytest.raises(ValueError, match="min_size"):
            check("selftest.bad", sizes=(10, 100), min_size=50)(lambda ctx: [])
    finally:
        registry.pop("selftest.small", None)
        registry.pop("selftest.bad", None)


@pytest.mark.parametrize("name, widths", [("kernels.relu.d3.ntk", "2,4,8"), ("dynamics.ntk-flow", "2,4,8")])
def test_tiny_widths_never_pass_a_real_check(name, widths, tmp_path, capsys):
    code = cli.main(["verify", name, "--widths", widths, "--samples", "8", "--no-progress", "--no-plots", "--out",
                     str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "INCONCLUSIVE" in out and "min_size" in out


def test_every_registered_check_declares_its_regime_and_enough_sizes():
    from limitlab.verify.registry import all_checks

    for name, c in all_checks().items():
        if name.startswith("selftest."):
            continue
        assert c.min_size > 1 and c.min_size_reason, name
        assert min(c.quick_sizes) >= c.min_size and min(c.sizes) >= c.min_size, name
        if c.rate is not None:  # a rate is tested only from 3 sizes on
            assert len(c.quick_sizes) >= 3 and len(c.sizes) >= 3, name
        assert c.seconds_quick is not None and c.seconds_quick > 0, name


def test_a_fresh_run_into_a_used_directory_keeps_the_earlier_results(tmp_path):
    verify.run("selftest.fail", out=str(tmp_path), progress=False, quick=True)
    verify.run("selftest.pass", out=str(tmp_path), progress=False, quick=True, seed=2)
    back = Report.load(str(tmp_path))
    assert list(back.checks) == ["selftest.pass"] and back["selftest.pass"].seed == 2
    assert list(back.archive) == [settings_key("selftest.fail", 0, 100, "numpy", [100, 200, 400])]
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):  # never overwritten
        verify.run("selftest.pass", out=str(tmp_path), progress=False, quick=True)
    assert (tmp_path / "report.json").read_text() == "{not json"

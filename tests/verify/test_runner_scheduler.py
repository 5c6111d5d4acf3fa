"""verify.run(scheduler=...) and `limitlab verify --scheduler`: the sizes on dask.distributed workers.

Reference: the same run on the local process with the same seed (size n of every check draws
from the stream (seed, n)), compared number for number.
"""
import numpy as np
import pytest

from limitlab import verify
from limitlab.verify import cli
from limitlab.verify.registry import Measurement, check, registry

distributed = pytest.importorskip("distributed")


def _same(a, b):
    """Every check's status and every measurement (theory and samples) identical."""
    assert list(a.checks) == list(b.checks)
    for name, ra in a.checks.items():
        rb = b.checks[name]
        assert ra.status == rb.status and ra.error == rb.error
        assert sorted(ra.measurements) == sorted(rb.measurements)
        for n, ms in ra.measurements.items():
            for ma, mb in zip(ms, rb.measurements[n], strict=True):
                assert ma.quantity == mb.quantity and ma.theory == mb.theory
                assert np.array_equal(ma.samples, mb.samples)


@pytest.fixture
def selftest():
    def measure(ctx):
        s = 1.0 + ctx.size ** -0.5 * ctx.rng.standard_normal(ctx.samples)
        return [Measurement("q", 1.0, s)]

    check("selftest.remote", sizes=(100, 400, 1600), quick_sizes=(100, 200, 400), samples=64, quick_samples=32,
          rate=-0.5)(measure)
    yield "selftest.remote"
    registry.pop("selftest.remote", None)


def test_threads_cluster_gives_the_local_results(selftest):
    """An in-process cluster (the test's own registry): every size a task, the numbers of a local run."""
    local = verify.run(selftest, seed=3, progress=False, plots=False)
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = verify.run(selftest, seed=3, progress=False, plots=False, scheduler=client)
        assert remote.meta["scheduler"] == client.scheduler.address
    _same(local, remote)
    assert remote.passed


def test_scheduler_of_another_type_is_refused(selftest):
    with pytest.raises(TypeError, match="scheduler"):
        verify.run(selftest, progress=False, plots=False, scheduler=8786)


def test_cli_passes_the_scheduler_address(monkeypatch):
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("limitlab.verify.runner.run", fake_run)
    assert cli.main(["verify", "collapse.ufm", "--scheduler", "tcp://10.0.0.1:8786", "--no-progress"]) == 2
    assert seen["scheduler"] == "tcp://10.0.0.1:8786"


@pytest.mark.slow
def test_two_worker_processes_give_the_local_results(tmp_path):
    """`limitlab verify`'s own checks on a LocalCluster of 2 processes, by address: identical numbers."""
    names = ["collapse.ufm", "dynamics.ntk-flow"]
    local = verify.run(names, quick=True, seed=5, progress=False, plots=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = verify.run(names, quick=True, seed=5, progress=False, plots=False, scheduler=cluster.scheduler_address,
                            out=str(tmp_path / "out"))
    _same(local, remote)
    assert remote.meta["scheduler"] == cluster.scheduler_address

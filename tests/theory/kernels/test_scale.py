"""limitlab.theory.kernels.scale: kernels tile by tile on Dask, stored in zarr.

References: the in-memory kernels (``net.kernels``) of the same networks, themselves checked
against neural-tangents in test_mlp / test_stax; a store written without interruption.
"""
import errno
import types

import dask
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.theory.kernels import MLP, GlobalSelfAttention, LayerNorm, lazy_kernels, open_kernels, stax, write_kernels
from limitlab.theory.kernels import scale

RNG = np.random.default_rng(7)
X = RNG.standard_normal((23, 6))
Y = RNG.standard_normal((11, 6))


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def transpose_pairs(a):
    d = (a.ndim - 2) // 2
    return a.transpose((1, 0) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d)))


# one network of each stax family, on small images / sequences
FAMILIES = {
    "conv": (stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu(), stax.Conv(4, (2, 2)), stax.Erf(),
                         stax.Flatten(), stax.Dense(1)), (5, 5, 2)),
    "pooling": (stax.serial(stax.Conv(3, (2, 2), padding="SAME"), stax.Relu(), stax.AvgPool((2, 2)),
                            stax.GlobalAvgPool(), stax.Dense(1)), (4, 4, 2)),
    "residual": (stax.serial(stax.Dense(8), stax.FanOut(2),
                             stax.parallel(stax.serial(stax.Relu(), stax.Dense(8)), stax.Identity()),
                             stax.FanInSum(), stax.Relu(), stax.Dense(1)), (5,)),
    "layernorm": (stax.serial(stax.Conv(3, (2,), padding="SAME"), LayerNorm(axis=(1, 2)), stax.Relu(),
                              stax.Flatten(), stax.Dense(1)), (4, 3)),
    "attention": (stax.serial(stax.Dense(4), GlobalSelfAttention(4, 4, 4, 2, attention_mechanism="softmax"), stax.Relu(), stax.GlobalAvgPool(),
                              stax.Dense(1)), (3, 4)),
}


# ---------------------------------------------------------------------------------------
# tiles equal the in-memory kernel
# ---------------------------------------------------------------------------------------

def test_mlp_store_equals_in_memory_kernels_and_is_exactly_symmetric(tmp_path):
    """Symmetric MLP kernels from 5x5 tiles of 23 inputs (edge tiles smaller) = MLP.kernels to 1e-12."""
    net = MLP(3, weight_var=1.7, bias_var=0.2)
    ref = net.kernels(X)
    out = write_kernels(net, X, path=tmp_path / "k", chunks=5, progress=False)
    for name in ("nngp", "ntk"):
        stored = getattr(out, name)[...]
        assert stored.shape == (23, 23) and stored.dtype == np.float64
        assert rel(stored, getattr(ref, name)) < 1e-12
        assert np.array_equal(stored, stored.T)


def test_mlp_cross_store_with_rectangular_tiles(tmp_path):
    """K(X, Y) with 4x3 tiles = MLP.kernels(X, Y); float32 storage = the float64 kernel rounded once."""
    net = MLP(2, activation="erf", bias_var=0.1)
    ref = net.kernels(X, Y)
    out = write_kernels(net, X, Y, path=tmp_path / "k", chunks=(4, 3), progress=False)
    assert rel(out.ntk[...], ref.ntk) < 1e-12 and rel(out.nngp[...], ref.nngp) < 1e-12
    low = write_kernels(net, X, Y, path=tmp_path / "k32", chunks=(4, 3), dtype="float32", get="ntk", progress=False)
    assert low.nngp is None and low.ntk.dtype == np.float32
    assert rel(low.ntk[...], ref.ntk) < 2 ** -23


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stax_family_store_equals_in_memory_kernels(family, tmp_path):
    """Each stax family (conv, pooling, residual, LayerNorm, attention): tiles = Layer.kernels to 1e-12,
    symmetric and cross, the symmetric store exactly symmetric."""
    net, shape = FAMILIES[family]
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((7,) + shape), rng.standard_normal((4,) + shape)
    ref = net.kernels(A)
    out = write_kernels(net, A, path=tmp_path / "s", chunks=3, progress=False)
    for name in ("nngp", "ntk"):
        stored = getattr(out, name)[...]
        assert rel(stored, getattr(ref, name)) < 1e-12
        assert np.array_equal(stored, stored.T)
    ref = net.kernels(A, B)
    out = write_kernels(net, A, B, path=tmp_path / "c", chunks=(3, 2), progress=False)
    assert rel(out.ntk[...], ref.ntk) < 1e-12 and rel(out.nngp[...], ref.nngp) < 1e-12


def test_spatial_outputs_are_stored_whole_per_pair(tmp_path):
    """A network ending on a spatial layer: arrays (N1, N2, *S, *S); the mirrored tile's pixel axes swapped."""
    net = stax.serial(stax.Conv(3, (2,)), stax.Relu())
    A = np.random.default_rng(4).standard_normal((5, 4, 2))
    ref = net.kernels(A)
    out = write_kernels(net, A, path=tmp_path / "s", chunks=2, progress=False)
    stored = out.ntk[...]
    assert stored.shape == ref.ntk.shape == (5, 5, 3, 3)
    assert rel(stored, ref.ntk) < 1e-12
    assert np.array_equal(stored, transpose_pairs(stored))


# ---------------------------------------------------------------------------------------
# lazy dask arrays
# ---------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 17), tile=st.integers(1, 9), cross=st.booleans())
def test_lazy_kernels_equal_in_memory_for_any_tiling(n, tile, cross):
    """net.kernels(X, chunks=t) computed = net.kernels(X) to 1e-12 for every N and tile size."""
    net = MLP(2, bias_var=0.3)
    A = X[:n]
    B = Y if cross else None
    ref = net.kernels(A, B)
    lazy = net.kernels(A, B, chunks=tile)
    assert lazy.ntk.chunks[0][0] == min(tile, n)
    nngp, ntk = dask.compute(lazy.nngp, lazy.ntk, scheduler="sync")
    assert rel(nngp, ref.nngp) < 1e-12 and rel(ntk, ref.ntk) < 1e-12
    if not cross:
        assert np.array_equal(ntk, ntk.T)


def test_lazy_kernels_evaluate_each_symmetric_tile_once(monkeypatch):
    """Computing nngp and ntk together: one evaluation per tile on or above the diagonal (3 x 3 grid: 6),
    the 3 diagonal ones as symmetric kernels."""
    calls = []
    real = scale._tile_kernels

    def counted(net, A, B, *args):
        calls.append((A.shape[0], None if B is None else B.shape[0]))
        return real(net, A, B, *args)

    monkeypatch.setattr(scale, "_tile_kernels", counted)
    lazy = lazy_kernels(MLP(1), X[:9], chunks=3)
    calls.clear()  # the probe of one pair (the output shape) runs while the graph is built
    dask.compute(lazy.nngp, lazy.ntk, scheduler="sync")
    assert len(calls) == 6 and calls.count((3, None)) == 3


def test_stax_kernels_chunks_returns_dask_arrays():
    net, shape = FAMILIES["pooling"]
    A = np.random.default_rng(5).standard_normal((6,) + shape)
    lazy = net.kernels(A, chunks=4)
    assert isinstance(lazy.ntk, dask.array.Array) and lazy.ntk.chunks == ((4, 2), (4, 2))
    assert rel(lazy.ntk.compute(), net.kernels(A).ntk) < 1e-12


# ---------------------------------------------------------------------------------------
# resuming, settings, errors
# ---------------------------------------------------------------------------------------

def _store_bytes(path):
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][...]).tobytes() for name in ("nngp", "ntk", "tiles_done")}


class Stop(Exception):
    pass


@pytest.mark.parametrize("k", [1, 4])
def test_interrupted_run_resumed_gives_the_same_store_bit_for_bit(k, tmp_path):
    """Interrupt after k tiles (a callback raising), resume: the store equals an uninterrupted one,
    and the resume computes only the tiles not yet marked complete."""
    net = MLP(2, bias_var=0.1)
    write_kernels(net, X, path=tmp_path / "ref", chunks=6, progress=False)

    def stop_after(i, j, seen=[]):
        seen.append((i, j))
        if len(seen) == k:
            raise Stop

    with pytest.raises(Stop):
        write_kernels(net, X, path=tmp_path / "run", chunks=6, num_workers=1, progress=False, on_tile=stop_after)
    with pytest.raises(ValueError, match="incomplete"):
        open_kernels(tmp_path / "run")
    resumed = []
    write_kernels(net, X, path=tmp_path / "run", chunks=6, progress=False, on_tile=lambda i, j: resumed.append((i, j)))
    assert len(resumed) == 10 - k  # 4 x 4 tiles: 10 on or above the diagonal
    assert _store_bytes(tmp_path / "run") == _store_bytes(tmp_path / "ref")
    assert open_kernels(tmp_path / "run").ntk.shape == (23, 23)


def test_full_disk_is_a_clear_error_and_resume_completes_the_store(tmp_path, monkeypatch):
    """ENOSPC while writing the third tile: an OSError saying the disk is full, how many tiles are
    stored and that calling again resumes; after that the store equals an uninterrupted one."""
    net = MLP(2)
    write_kernels(net, X, path=tmp_path / "ref", chunks=6, progress=False)
    real = scale._tile_kernels
    count = [0]

    def failing(*args):
        count[0] += 1
        if count[0] == 4:  # the first call is the one-pair probe of the output shape
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(scale, "_tile_kernels", failing)
    with pytest.raises(OSError, match=r"full \(2 of 10 tiles stored\).*resume") as info:
        write_kernels(net, X, path=tmp_path / "run", chunks=6, num_workers=1, progress=False)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(scale, "_tile_kernels", real)
    write_kernels(net, X, path=tmp_path / "run", chunks=6, progress=False)
    assert _store_bytes(tmp_path / "run") == _store_bytes(tmp_path / "ref")


@pytest.mark.parametrize("change", ["X", "net", "dtype", "chunks", "get"])
def test_store_with_other_settings_is_refused_unless_overwrite(change, tmp_path):
    net = MLP(2)
    write_kernels(net, X, path=tmp_path / "k", chunks=6, progress=False)
    kwargs = dict(chunks=6, progress=False)
    other_net, other_X = net, X
    if change == "X":
        other_X = X + 1e-9
    elif change == "net":
        other_net = MLP(2, bias_var=0.1)
    elif change == "dtype":
        kwargs["dtype"] = np.float32
    elif change == "chunks":
        kwargs["chunks"] = 5
    else:
        kwargs["get"] = ("ntk",)
    with pytest.raises(ValueError, match="other settings.*overwrite=True"):
        write_kernels(other_net, other_X, path=tmp_path / "k", **kwargs)
    out = write_kernels(other_net, other_X, path=tmp_path / "k", overwrite=True, **kwargs)
    assert rel(out.ntk[...], other_net.kernels(other_X).ntk) < 1e-6


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_that_is_no_store_is_never_deleted(overwrite, tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        write_kernels(MLP(1), X, path=tmp_path / "k", progress=False, overwrite=overwrite)
    assert (tmp_path / "k" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty directory is used as it is
    assert write_kernels(MLP(1), X, path=tmp_path / "empty", progress=False).ntk.shape == (23, 23)


def test_a_zarr_store_of_someone_else_is_replaced_only_with_overwrite(tmp_path):
    zarr.open_group(str(tmp_path / "k"), mode="w").create_array("x", shape=(2,), dtype="f8")
    with pytest.raises(ValueError, match="not a limitlab kernel store.*overwrite=True"):
        write_kernels(MLP(1), X, path=tmp_path / "k", progress=False)
    assert write_kernels(MLP(1), X, path=tmp_path / "k", progress=False, overwrite=True).nngp.shape == (23, 23)


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunks=(4, 3)), "square tiles"),
    (dict(chunks=0), "chunks"),
    (dict(chunks="big"), "chunks"),
    (dict(dtype="float16"), "dtype"),
    (dict(get=("nngp", "cov")), "get"),
    (dict(num_workers=0), "num_workers"),
])
def test_bad_arguments_name_themselves(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        write_kernels(MLP(1), X, path=tmp_path / "k", progress=False, **kwargs)


def test_bad_net_and_path_types(tmp_path):
    with pytest.raises(TypeError, match="net"):
        write_kernels(lambda x: x, X, path=tmp_path / "k")
    with pytest.raises(TypeError, match="path"):
        write_kernels(MLP(1), X, path=3)


# ---------------------------------------------------------------------------------------
# a dask.distributed cluster
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_local_cluster_of_two_processes_writes_the_same_store(tmp_path):
    """A LocalCluster of 2 worker processes: the store is byte for byte the threaded scheduler's, for a
    stax network and for an MLP whose diagonal tiles (600 rows) are past the size where a multi-threaded
    symmetric Gram matrix would be summed in bands."""
    distributed = pytest.importorskip("distributed")
    cases = [(stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(16), stax.Erf(), stax.Dense(1)),
              np.random.default_rng(6).standard_normal((40, 10)), 9),
             (MLP(3), np.random.default_rng(8).standard_normal((1100, 30)), 600)]
    for k, (net, A, t) in enumerate(cases):
        write_kernels(net, A, path=tmp_path / f"threads{k}", chunks=t, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        for k, (net, A, t) in enumerate(cases):
            write_kernels(net, A, path=tmp_path / f"cluster{k}", chunks=t, client=client, progress=False)
    for k in range(len(cases)):
        assert _store_bytes(tmp_path / f"cluster{k}") == _store_bytes(tmp_path / f"threads{k}")


def test_a_lost_worker_is_a_clear_error(tmp_path, monkeypatch):
    """distributed's KilledWorker becomes a RuntimeError saying how many tiles are stored and to resume."""
    distributed = pytest.importorskip("distributed")

    def killed(*args):
        worker = types.SimpleNamespace(address="tcp://127.0.0.1:1")  # as the scheduler's WorkerState reads
        raise distributed.KilledWorker("tile-0-1", worker, 3)

    monkeypatch.setattr(scale, "_run_distributed", killed)
    with pytest.raises(RuntimeError, match=r"worker died.*0 of 10 tiles.*resume"):
        write_kernels(MLP(1), X, path=tmp_path / "k", chunks=6, client=object(), progress=False)

"""Kernels larger than memory: computed tile by tile on Dask, stored in zarr.

An ``N x N`` kernel has N^2 entries (60,000 MNIST images: 3.6e9 entries, 28.8 GB in float64),
so past a few ten thousand inputs it is computed as a grid of ``t x t`` tiles, each tile
``K(X1[rows], X2[cols])`` by the same compiled kernels as ``net.kernels`` (the MLP recursion,
every stax layer), and either handed out as lazy dask arrays (:func:`lazy_kernels`, also
``net.kernels(X, chunks=t)``) or written to a zarr store (:func:`write_kernels`), one array
per kernel ("nngp", "ntk"), one zarr chunk per tile.

With ``X2=None`` the kernel is symmetric: only the tiles on and above the diagonal are
computed and the tile below is written as the exact transpose, so the stored matrix is
exactly symmetric and each entry pair costs one evaluation.

Scheduling is Dask's: the local threaded scheduler by default, a ``dask.distributed``
client when one is given or active (the store path must then be reachable from every
worker). A store remembers its settings (a hash of the inputs, the network's repr, the
kernels, dtype and tiles) and a completion mark per tile, written after the tile's data
(zarr writes each chunk atomically), so an interrupted run resumes where it stopped and
a store made with other settings is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numba as nb
import numpy as np

from limitlab.numerics import validation as validate
from limitlab.theory.kernels import mlp as _mlp
from limitlab.theory.kernels import stax as _stax

__all__ = ["write_kernels", "lazy_kernels", "open_kernels"]

FORMAT = 1
# automatic tile size: about this many bytes per tile of one kernel (float64)
_TILE_BYTES = 32 << 20


# ---------------------------------------------------------------------------------------
# the plan: inputs, tiles, output shape
# ---------------------------------------------------------------------------------------

def _checked_net(net):
    if not isinstance(net, (_mlp.MLP, _stax.Layer)):
        raise TypeError(f"net: expected a limitlab MLP or a stax layer/network, got {type(net).__name__}")
    return net


def _tile_sizes(chunks, per_entry: int, symmetric: bool):
    """(row tile, column tile) from ``chunks``: an int, a pair, or None (about _TILE_BYTES per tile)."""
    if chunks is None or chunks == "auto":
        t = max(1, math.isqrt(max(1, _TILE_BYTES // (8 * per_entry))))
        return t, t
    pair = (chunks, chunks) if validate.is_integer(chunks) else chunks
    try:
        r, c = pair
        ok = all(validate.is_integer(v) and v >= 1 for v in (r, c))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"chunks: expected a tile size (an integer >= 1), a pair (rows, columns) or None, "
                         f"got {chunks!r}")
    if symmetric and r != c:
        raise ValueError(f"chunks: a symmetric kernel (X2=None) needs square tiles (its lower tiles are the upper ones "
                         f"transposed), got {chunks!r}")
    return int(r), int(c)


def _digest(X) -> str:
    """blake2b of an input array's shape, dtype and bytes: the store's record of which inputs it holds."""
    X = np.ascontiguousarray(X)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((X.shape, X.dtype.str)).encode())
    h.update(memoryview(X).cast("B"))
    return h.hexdigest()


@dataclass(frozen=True)
class _Plan:
    net: object
    X1: np.ndarray
    X2: Optional[np.ndarray]   # None: symmetric
    get: tuple
    dtype: np.dtype
    tiles: tuple               # (row tile, column tile)
    rest: tuple                # per-pair output shape: () or (*S, *S)

    @property
    def symmetric(self):
        return self.X2 is None

    @property
    def shape(self):
        n2 = self.X1.shape[0] if self.symmetric else self.X2.shape[0]
        return (self.X1.shape[0], n2) + self.rest

    @property
    def grid(self):
        return tuple(-(-n // t) for n, t in zip(self.shape[:2], self.tiles))

    def tile_list(self):
        """(i, j) of every tile to compute: all, or those on and above the diagonal."""
        nI, nJ = self.grid
        return [(i, j) for i in range(nI) for j in range(nJ) if not (self.symmetric and j < i)]

    def rows(self, i):
        return slice(i * self.tiles[0], min((i + 1) * self.tiles[0], self.shape[0]))

    def cols(self, j):
        return slice(j * self.tiles[1], min((j + 1) * self.tiles[1], self.shape[1]))

    def blocks(self):
        """The input row blocks, one per tile row (and column)."""
        b1 = [self.X1[self.rows(i)] for i in range(self.grid[0])]
        b2 = b1 if self.symmetric else [self.X2[self.cols(j)] for j in range(self.grid[1])]
        return b1, b2

    @property
    def perm(self):
        """Axes of a transposed pair block: (n2, n1, *S', *S)."""
        d = len(self.rest) // 2
        return (1, 0) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))

    def settings(self) -> dict:
        return {"format": FORMAT, "net": repr(self.net), "x1": _digest(self.X1),
                "x2": None if self.symmetric else _digest(self.X2), "get": list(self.get),
                "dtype": self.dtype.str, "chunks": list(self.tiles), "shape": list(self.shape)}


def _plan(net, X1, X2, get, chunks, dtype) -> _Plan:
    net = _checked_net(net)
    get = _mlp.check_get(get)
    check = _mlp._check_inputs if isinstance(net, _mlp.MLP) else _stax._check_inputs
    X1 = check(X1, "X1")
    X2 = None if X2 is None else check(X2, "X2")
    if dtype is None:  # as net.kernels: an MLP follows its inputs' precision, stax networks give float64
        low = isinstance(net, _mlp.MLP) and all(X.dtype in (np.float32, np.float16)
                                                for X in (X1, X1 if X2 is None else X2))
        dtype = np.float32 if low else np.float64
    dtype = validate.dtype(dtype, "dtype", (np.float64, np.float32))
    if X2 is not None and X1.shape[1:] != X2.shape[1:]:
        raise ValueError(f"X2: per-input shape {X2.shape[1:]} does not match X1's {X1.shape[1:]}")
    # the per-pair output shape ((), or the spatial axes twice) from the network on one pair
    probe = _tile_kernels(net, X1[:1], X1[:1] if X2 is None else X2[:1], get[:1], np.dtype(np.float64))[0]
    rest = tuple(probe.shape[2:])
    tiles = _tile_sizes(chunks, max(1, math.prod(rest)), X2 is None)
    return _Plan(net, X1, X2, get, dtype, tiles, rest)


def _tile_kernels(net, A, B, get, dtype):
    """The requested kernels between row blocks A and B (B None: A with itself, symmetric).

    A tile is the unit of parallelism and runs on one Numba thread, so its numbers do not
    depend on the scheduler or its thread count (on several threads the symmetric Gram
    matrix is summed in bands, in another order).
    """
    # aligned copies: dask.distributed hands out blocks at unaligned addresses, where NumPy's
    # unaligned loops round some entries differently (1e-17) from an in-process run
    A = np.require(A, requirements=("C", "A"))
    B = None if B is None else np.require(B, requirements=("C", "A"))
    before = nb.get_num_threads()  # per calling thread
    nb.set_num_threads(1)
    try:
        if isinstance(net, _mlp.MLP):
            out = net.kernels(A, B, get=get, dtype=np.float64)
        else:
            out = net.kernels(A, B, get=get)
    finally:
        nb.set_num_threads(before)
    return tuple(np.asarray(getattr(out, g)).astype(dtype, copy=False) for g in get)


# ---------------------------------------------------------------------------------------
# lazy dask arrays
# ---------------------------------------------------------------------------------------

def _pick_transposed(parts, k, perm):
    return np.ascontiguousarray(parts[k].transpose(perm))


def lazy_kernels(net, X1, X2=None, get: Sequence[str] = ("nngp", "ntk"), chunks=None, dtype=np.float64):
    """``Kernels(nngp, ntk)`` as lazy dask arrays of tiles ``chunks`` (see the module docstring).

    One task per tile computes all requested kernels of that tile; with ``X2=None`` the tiles
    below the diagonal are the transposes of those above (no second evaluation), so the
    result is exactly symmetric. Compute with any Dask scheduler, or store with
    ``dask.array.to_zarr``; :func:`write_kernels` adds resuming and progress.
    """
    import dask.array as da
    from dask.base import tokenize

    plan = _plan(net, X1, X2, get, chunks, dtype)
    token = tokenize(plan.settings())
    b1, b2 = plan.blocks()
    xname1, xname2 = f"limitlab-x1-{token}", f"limitlab-x2-{token}"
    dsk = {(xname1, i): b for i, b in enumerate(b1)}
    if not plan.symmetric:
        dsk.update({(xname2, j): b for j, b in enumerate(b2)})
    tname = f"limitlab-tile-{token}"
    for i, j in plan.tile_list():
        other = None if plan.symmetric and i == j else ((xname1 if plan.symmetric else xname2), j)
        dsk[(tname, i, j)] = (_tile_kernels, plan.net, (xname1, i), other, plan.get, plan.dtype)
    zeros = (0,) * len(plan.rest)
    nI, nJ = plan.grid
    chunk_axes = (tuple(plan.rows(i).stop - plan.rows(i).start for i in range(nI)),
                  tuple(plan.cols(j).stop - plan.cols(j).start for j in range(nJ))) + tuple((s,) for s in plan.rest)
    out = {}
    for k, g in enumerate(plan.get):
        name = f"limitlab-{g}-{token}"
        for i in range(nI):
            for j in range(nJ):
                if plan.symmetric and j < i:
                    dsk[(name, i, j) + zeros] = (_pick_transposed, (tname, j, i), k, plan.perm)
                else:
                    dsk[(name, i, j) + zeros] = (tuple.__getitem__, (tname, i, j), k)
        out[g] = name
    # one graph for all kernels, so computing nngp and ntk together evaluates each tile once
    arrays = {g: da.Array(dsk, name, chunk_axes, dtype=plan.dtype) for g, name in out.items()}
    return _mlp.Kernels(arrays.get("nngp"), arrays.get("ntk"))


# ---------------------------------------------------------------------------------------
# the zarr store
# ---------------------------------------------------------------------------------------

_DONE = "tiles_done"   # uint8 per tile: 1 once the tile (and its mirror) are written


@dataclass(frozen=True)
class _Writer:
    """What a worker needs to compute and store one tile (pickled to dask.distributed workers)."""

    path: str
    plan_net: object
    get: tuple
    dtype: np.dtype
    tiles: tuple
    shape: tuple
    perm: tuple
    symmetric: bool

    def __call__(self, i, j, A, B):
        import zarr

        parts = _tile_kernels(self.plan_net, A, B, self.get, self.dtype)
        group = zarr.open_group(self.path, mode="r+")
        r = slice(i * self.tiles[0], min((i + 1) * self.tiles[0], self.shape[0]))
        c = slice(j * self.tiles[1], min((j + 1) * self.tiles[1], self.shape[1]))
        for g, a in zip(self.get, parts):
            group[g][r, c] = a
            if self.symmetric and i != j:
                group[g][c, r] = np.ascontiguousarray(a.transpose(self.perm))
        # the completion mark last: a tile interrupted mid-write is computed again on resume
        group[_DONE][i, j] = 1
        return i, j


def _store_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a directory path (str or os.PathLike) for the zarr store, got "
                        f"{type(path).__name__}")
    return os.fspath(path)


def _open_or_create(path: str, plan: _Plan, overwrite: bool, compressors):
    import zarr

    settings = plan.settings()
    p = Path(path)
    if p.exists():
        try:
            group = zarr.open_group(path, mode="r+")
            old = group.attrs.asdict().get("limitlab")
        except Exception:  # noqa: BLE001 - anything unreadable is "not a limitlab store"
            old = None
        if old == settings:
            return group
        zarr_made = p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))
        if p.is_dir() and not zarr_made and any(p.iterdir()):
            # overwrite never deletes what write_kernels did not make
            raise ValueError(f"path: {path} is a directory with other files, not a zarr store; choose another path "
                             "(overwrite=True only replaces kernel stores)")
        if p.is_file():
            raise ValueError(f"path: {path} is a file; write_kernels needs a directory for the zarr store")
        if not overwrite and (zarr_made or old is not None):
            what = "is not a limitlab kernel store" if old is None else \
                "holds kernels written with other settings (" + ", ".join(
                    k for k in settings if old.get(k) != settings[k]) + " differ)"
            raise ValueError(f"path: {path} {what}; pass overwrite=True to replace it, or choose another path")
        shutil.rmtree(p)
    group = zarr.open_group(path, mode="w")
    for g in plan.get:
        _create_array(group, g, plan.shape, plan.tiles + plan.rest, plan.dtype, compressors, 0.0)
    _create_array(group, _DONE, plan.grid, (1, 1), np.dtype("uint8"), None, 0)
    # the settings last: a store without them is "not a limitlab store" and is refused, not resumed
    group.attrs["limitlab"] = settings
    return group


def _create_array(group, name, shape, chunks, dtype, compressors, fill):
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressors,
                                  fill_value=fill)
    # zarr 2 (Python 3.10): one compressor; its DirectoryStore also writes each chunk atomically
    one = compressors[0] if isinstance(compressors, (list, tuple)) else compressors
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, compressor=one, fill_value=fill)


def open_kernels(path) -> _mlp.Kernels:
    """``Kernels(nngp, ntk)`` of a complete store as zarr arrays (read only); ValueError if tiles are missing."""
    import zarr

    path = _store_path(path)
    group = zarr.open_group(path, mode="r")
    settings = group.attrs.asdict().get("limitlab")
    if settings is None:
        raise ValueError(f"path: {path} is not a limitlab kernel store")
    done = np.asarray(group[_DONE][...])
    if settings["x2"] is None:
        done = np.triu(done) + np.triu(np.ones_like(done), 1).T
    if not done.all():
        raise ValueError(f"path: {path} is incomplete ({int((done == 0).sum())} tiles missing); call write_kernels "
                         "again with the same arguments to finish it")
    return _mlp.Kernels(*(group[g] if g in settings["get"] else None for g in ("nngp", "ntk")))


def _client(client):
    if client is not None:
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):  # no active client: the local threaded scheduler
        return None


def write_kernels(net, X1, X2=None, *, path, get: Sequence[str] = ("nngp", "ntk"), chunks=None,
                  dtype=np.float64, client=None, overwrite: bool = False, compressors=None,
                  num_workers: Optional[int] = None, progress: Optional[bool] = None,
                  on_tile: Optional[Callable[[int, int], None]] = None) -> _mlp.Kernels:
    """Compute the kernels of ``net`` tile by tile on Dask and store them in a zarr store at ``path``.

    Args:
        net: a limitlab ``MLP`` or a stax network (``stax.serial(...)``, any layer).
        X1, X2: inputs as for ``net.kernels``; ``X2=None`` is the symmetric kernel of X1.
        path: directory of the zarr store (arrays "nngp", "ntk": ``(N1, N2)`` or ``(N1, N2, *S, *S)``).
        get: the kernels to store.
        chunks: tile size (an int, or (rows, columns) when X2 is given); None: about 32 MB a tile.
        dtype: float64 (default) or float32 storage; computed in float64, rounded once.
        client: a ``dask.distributed.Client``; None: the active one if any, else the local
            threaded scheduler with ``num_workers`` threads (default: Numba's thread count).
        overwrite: replace a store at ``path`` made with other settings (else ValueError).
        compressors: zarr compressors for the kernel arrays (None: uncompressed, the fastest).
        progress: a tqdm bar on stderr (None: only when stderr is a terminal).
        on_tile: called as ``on_tile(i, j)`` in this process after tile (i, j) is stored.

    Returns ``Kernels(nngp, ntk)`` of zarr arrays. Tiles marked complete in an existing store
    with the same settings are not computed again (resume); a full disk or a lost worker
    raises an error saying how many tiles are stored and that calling again resumes.
    """
    import zarr  # noqa: F401  (checked early: a clear ImportError before any work)

    path = _store_path(path)
    plan = _plan(net, X1, X2, get, chunks, dtype)
    group = _open_or_create(path, plan, overwrite, compressors)
    done = np.asarray(group[_DONE][...])
    todo = [(i, j) for i, j in plan.tile_list() if not done[i, j]]
    total = len(plan.tile_list())
    client = _client(client)
    if num_workers is not None:
        num_workers = validate.integer(num_workers, "num_workers", minimum=1)
    workers = int(num_workers or nb.config.NUMBA_NUM_THREADS)
    writer = _Writer(path, plan.net, plan.get, plan.dtype, plan.tiles, plan.shape, plan.perm, plan.symmetric)

    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=total, initial=total - len(todo), desc="kernel tiles", unit="tile", file=sys.stderr,
               disable=not show)
    stored = [total - len(todo)]

    def finished(i, j):
        stored[0] += 1
        bar.update(1)
        if on_tile is not None:
            on_tile(i, j)

    try:
        if todo:
            if client is None:
                _run_threaded(plan, writer, todo, workers, finished)
            else:
                _run_distributed(plan, writer, todo, client, finished)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"write_kernels: the disk holding {path} is full ({stored[0]} of {total} "
                                        "tiles stored); free space and call write_kernels again with the same "
                                        "arguments to resume") from exc
        raise
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise RuntimeError(f"write_kernels: a Dask worker died computing a tile ({exc}); {stored[0]} of {total} "
                               f"tiles of {path} are stored; call write_kernels again with the same arguments to "
                               "resume (a tile that runs a worker out of memory needs smaller chunks)") from exc
        raise
    finally:
        bar.close()
    return _mlp.Kernels(*(group[g] if g in plan.get else None for g in ("nngp", "ntk")))


def _run_threaded(plan, writer, todo, workers, finished):
    """The tiles as one graph on Dask's local threaded scheduler; ``finished`` runs in this thread."""
    import dask
    from dask.callbacks import Callback
    from threadpoolctl import threadpool_limits

    b1, b2 = plan.blocks()
    dsk = {("x1", i): b for i, b in enumerate(b1)}
    dsk.update({("x2", j): b for j, b in enumerate(b2)})
    keys = []
    for i, j in todo:
        other = None if plan.symmetric and i == j else ("x2", j)
        dsk[("tile", i, j)] = (writer, i, j, ("x1", i), other)
        keys.append(("tile", i, j))

    class _Done(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(key, tuple) and key[0] == "tile":
                finished(key[1], key[2])

    # one BLAS thread per tile thread, as dask.distributed's workers have (the tiles are the parallelism)
    with threadpool_limits(limits=1, user_api="blas"), _Done():
        dask.threaded.get(dsk, keys, num_workers=workers)


def _run_distributed(plan, writer, todo, client, finished):
    """The tiles as futures on a dask.distributed cluster, the input blocks scattered once."""
    from distributed import as_completed

    b1, b2 = plan.blocks()
    f1 = client.scatter(b1)
    f2 = f1 if plan.symmetric else client.scatter(b2)
    futures = [client.submit(writer, i, j, f1[i], None if plan.symmetric and i == j else f2[j], pure=False)
               for i, j in todo]
    try:
        for fut in as_completed(futures):
            finished(*fut.result())
    finally:
        client.cancel(futures)

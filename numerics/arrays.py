"""Array-API helpers shared by every array-consuming module.

One code path serves NumPy, CuPy, PyTorch and array-api-strict: callers obtain the
namespace with :func:`namespace` and use only standard functions, plus the few special
functions the standard lacks (``erf``), dispatched here.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

try:  # array-api-compat wraps numpy/cupy/torch into standard namespaces
    import array_api_compat as _compat
except ImportError:  # pragma: no cover - declared dependency
    _compat = None


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas():
    """Context: BLAS on one thread. Small products (tens of rows) lose more to waking and
    synchronizing BLAS threads than they gain, badly so when the cores are shared with
    Numba's worker threads or another process."""
    return _blas_controller().limit(limits=1, user_api="blas")


def upper_gram(X: np.ndarray) -> np.ndarray:
    """X X^T with its upper triangle (diagonal included) set; the lower one is left unset.

    Row bands ``X[i:i+B] X[i:]^T`` by single-threaded BLAS GEMM, one band per worker thread
    (as many as Numba's), written straight into the output: faster than a threaded BLAS syrk
    (OpenBLAS's syrk runs well below its GEMM's rate) and than the full GEMM (measured:
    docs/kernels.md, "The compile path").
    """
    n = X.shape[0]
    workers = nb.get_num_threads()
    if n <= 512 or workers == 1:
        return X @ X.T
    G = np.empty((n, n), dtype=X.dtype)
    # about eight bands per worker; the widest first, so the work balances as bands shrink
    band = max(64, min(512, -(-n // (8 * workers))))

    def product(i):
        np.matmul(X[i:i + band], X[i:].T, out=G[i:i + band, i:])

    with single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(product, range(0, n, band)):
            pass
    return G


def namespace(*arrays):
    """The array-API namespace of ``arrays`` (NumPy's when given plain Python numbers)."""
    arrays = [a for a in arrays if a is not None and not isinstance(a, (int, float))]
    if not arrays:
        return _compat.array_namespace(np.zeros(0)) if _compat else np
    return _compat.array_namespace(*arrays)


def erf(x, xp=None):
    """Elementwise error function for any supported backend."""
    xp = xp or namespace(x)
    name = getattr(xp, "__name__", "")
    if "torch" in name:
        import torch

        return torch.special.erf(x)
    if "cupy" in name:
        import cupyx.scipy.special as cps

        return cps.erf(x)
    if "numpy" in name:
        from scipy.special import erf as _erf

        return _erf(x)
    # Generic fallback (array-api-strict and others, whose standard has no erf): SciPy's erf
    # on a NumPy copy, converted back (full double accuracy; every tested backend round-trips
    # through NumPy).
    from scipy.special import erf as _erf

    host = np.asarray(to_numpy(x))
    return xp.asarray(_erf(host), dtype=x.dtype)


def to_numpy(x) -> np.ndarray:
    """Copy an array of any backend to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return x.get()
    try:
        return np.asarray(x)
    except Exception:  # array-api-strict refuses __array__ in recent versions
        return np.from_dlpack(x)


SQRT2 = math.sqrt(2.0)


def mirror_upper(A):
    """Copy the upper triangle of square A onto its lower one, in place.

    Writing the lower triangle while filling rows would miss cache on every entry (a
    column-strided store); tiles of 64 x 64 keep both sides in cache. Tile rows p and
    nb-1-p go to the same task, so that every task holds the same number of tiles (the
    triangle's tile rows shrink), which beats tile rows split in halves (measured: docs/kernels.md,
    "The compile path").
    Tasks go to threads one at a time as they free up (a chunk size of 1), so a core taken
    away for a moment by another process delays one task, not half the work.
    """
    with nb.parallel_chunksize(1):
        _mirror_upper(A)


@nb.njit(parallel=True, cache=True)
def _mirror_upper(A):
    n = A.shape[0]
    B = 64
    nb_ = (n + B - 1) // B
    for p in nb.prange((nb_ + 1) // 2):
        for r in range(2):
            # int64 throughout: the prange index is unsigned, and int - uint is a float
            bi = np.int64(p) if r == 0 else np.int64(nb_ - 1) - np.int64(p)
            if r == 1 and bi == np.int64(p):
                break
            i0 = bi * B
            i1 = min(n, i0 + B)
            for bj in range(bi, nb_):
                j0 = bj * B
                j1 = min(n, j0 + B)
                for i in range(i0, i1):
                    for j in range(max(j0, i + 1), j1):
                        A[j, i] = A[i, j]

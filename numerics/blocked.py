"""Blocked linear algebra over a symmetric positive definite matrix stored in tiles.

The matrix ``A`` (``N x N``) may be larger than memory: a zarr array (its chunks are the
tiles), a dask array, or a NumPy array with a tile size. Every product ``A V`` streams the
tiles once through Dask (the local threaded scheduler, or a ``dask.distributed`` client)
and accumulates in float64 whatever the storage precision (float32 tiles are upcast
exactly, tile by tile). Three solvers:

* :func:`solve` ``(A + reg I) X = B``:
  - ``method="cg"``: conjugate gradients with a block-Jacobi preconditioner (the Cholesky
    factors of the diagonal blocks), one column of B per independent CG run, all columns
    sharing each pass over the tiles (Hestenes & Stiefel 1952; Golub & Van Loan,
    "Matrix Computations", 4th ed., Alg. 11.5.1 and sec. 11.5.2 for block-Jacobi);
  - ``method="cholesky"``: Dask's tiled Cholesky factorization and triangular solves
    (Golub & Van Loan, sec. 4.2.9), for a matrix whose factor fits in memory;
  - ``method="auto"``: Cholesky when ``8 N^2 <= max_dense_bytes``, else CG.
* :func:`apply_function` ``f(A + reg I) B`` for a smooth spectral function ``f`` by the
  Lanczos approximation ``|b| Q_m f(T_m) e_1`` with full reorthogonalization (Saad 1992,
  "Analysis of some Krylov subspace approximations to the matrix exponential operator",
  SIAM J. Numer. Anal. 29; Hochbruck & Lubich 1997).
* :func:`matmul` ``A V`` itself.

Both solvers return a :class:`~limitlab.numerics.solvers.SolverResult` whose ``residual`` is
measured afresh at the end (``|B - (A + reg I) X| / |B|`` per column, one extra pass; for
:func:`apply_function` the change of the last Lanczos update), and raise
:class:`~limitlab.numerics.solvers.ConvergenceError` when ``strict=True`` and a column did
not reach ``tol`` (``message`` says why; it is empty after a converged solve).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numba as nb
import numpy as np
import scipy.linalg as sla

from limitlab.numerics import validation as validate
from limitlab.numerics.solvers import SolverResult

__all__ = ["Tiled", "as_tiled", "matmul", "diagonal", "solve", "apply_function"]


class Tiled:
    """A stored matrix read tile by tile: ``src`` (a zarr array, a NumPy array or a dask array)
    and its tile size ``tile`` = (rows, columns); zarr and dask arrays bring their own chunks."""

    def __init__(self, src, tile):
        self.src, self.tile = src, tuple(int(t) for t in tile)
        self.shape, self.dtype = tuple(src.shape), np.dtype(src.dtype)
        self.is_dask = type(src).__module__.startswith("dask")

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        block = self.src[rows, cols]
        return np.asarray(block.compute(scheduler="sync") if self.is_dask else block)

    def row_blocks(self):
        return [slice(s, min(s + self.tile[0], self.shape[0])) for s in range(0, self.shape[0], self.tile[0])]

    def col_blocks(self):
        return [slice(s, min(s + self.tile[1], self.shape[1])) for s in range(0, self.shape[1], self.tile[1])]

    def dask(self):
        """The matrix as a dask array of these tiles (for Dask's own blocked algorithms)."""
        import dask.array as da

        if self.is_dask:
            return self.src.rechunk(self.tile)
        if type(self.src).__module__.startswith("zarr"):
            return da.from_zarr(self.src).rechunk(self.tile)
        return da.from_array(self.src, chunks=self.tile)


def as_tiled(A, block: Optional[int] = None, square: bool = True, name: str = "A") -> Tiled:
    """``A`` as a :class:`Tiled` matrix: tiles from zarr/dask chunks, else ``block`` (default 2048)."""
    if isinstance(A, Tiled):
        A = A.src
    if block is not None:
        block = validate.integer(block, "block", minimum=1)
    chunked = hasattr(A, "chunks") and hasattr(A, "shape") and not isinstance(A, np.ndarray)
    if not chunked:
        A = np.asarray(A)
    if len(A.shape) != 2 or (square and A.shape[0] != A.shape[1]):
        raise ValueError(f"{name}: expected a {'square ' if square else ''}matrix, got shape {tuple(A.shape)}")
    if np.dtype(A.dtype).kind != "f":
        raise TypeError(f"{name}: expected a real floating-point matrix, got dtype {A.dtype}")
    if block is not None:
        tile = (block, block)
    elif chunked:
        ch = A.chunks
        tile = tuple(c[0] if isinstance(c, tuple) else c for c in ch)  # dask: per-axis tuples; zarr: sizes
    else:
        tile = (min(A.shape[0], 2048), min(A.shape[1], 2048))
    if square:
        tile = (tile[0], tile[0])
    return Tiled(A, tile)


def _compute(x, client):
    import dask

    if client is not None:
        return client.compute(x, sync=True)
    return dask.compute(x)[0]


@nb.njit(cache=True, fastmath=True)
def _accumulate(A, Vt, out):
    """out[i, c] += sum_j float64(A[i, j]) Vt[c, j]: a float32 or float64 tile against float64
    vectors, summed in float64 without a float64 copy of the tile."""
    for c in range(Vt.shape[0]):
        v = Vt[c]
        for i in range(A.shape[0]):
            row = A[i]
            acc = 0.0
            for j in range(row.shape[0]):
                acc += np.float64(row[j]) * v[j]
            out[i, c] += acc


def _row_product(T: Tiled, rows: slice, Vt: np.ndarray) -> np.ndarray:
    """One row block of ``T V``: its tiles read one at a time."""
    out = np.zeros((rows.stop - rows.start, Vt.shape[0]))
    for cols in T.col_blocks():
        _accumulate(np.ascontiguousarray(T.read(rows, cols)), np.ascontiguousarray(Vt[:, cols]), out)
    return out


def matmul(A, V, client=None) -> np.ndarray:
    """``A V`` for a stored ``A`` (zarr, dask, or NumPy; any shape ``M x N``) and an in-memory ``V``,
    accumulated in float64: one Dask task per row block of tiles."""
    T = as_tiled(A, square=False)
    V = np.asarray(V, dtype=np.float64)
    vec = V.ndim == 1
    V2 = V.reshape(V.shape[0], -1)
    if V2.shape[0] != T.shape[1]:
        raise ValueError(f"V: expected {T.shape[1]} rows, got shape {V.shape}")
    from dask.base import tokenize

    token = tokenize(id(T), V2.shape, np.random.random())
    vkey = ("limitlab-vectors-" + token,)
    dsk = {vkey: np.ascontiguousarray(V2.T)}
    keys = []
    for k, rows in enumerate(T.row_blocks()):
        key = ("limitlab-rows-" + token, k)
        dsk[key] = (_row_product, T, rows, vkey)
        keys.append(key)
    if client is not None:
        parts = client.get(dsk, keys, sync=True)
    else:
        import dask

        parts = dask.threaded.get(dsk, keys)
    out = np.vstack(parts)
    return out[:, 0] if vec else out


def diagonal(A, client=None) -> np.ndarray:
    """The diagonal of a stored square matrix, read from its diagonal tiles only (float64)."""
    T = as_tiled(A)
    return np.concatenate([np.diagonal(T.read(r, r)).astype(np.float64) for r in T.row_blocks()])


def _rhs(B, n):
    B = validate.rows(B, "B", n)
    return B.reshape(n, -1), B.ndim == 1


def _check_common(reg, tol, maxiter, n):
    validate.real(reg, "reg", at_least=0.0)
    validate.positive(tol, "tol")
    if maxiter is None:  # N steps are exact only in exact arithmetic; rounding delays CG on kernels
        return 10 * n
    return validate.integer(maxiter, "maxiter", minimum=1)


def _finish(X, res, it, tol, vec, strict, what, note=""):
    mask = res <= tol
    conv = bool(mask.all())
    msg = "" if conv else (f"relative residual {res.max():.3g} > tol {tol:.3g} in {int((~mask).sum())} of {mask.size} "
                           f"columns after {it} iterations ({what}){note}")
    result = SolverResult(X[:, 0] if vec else X, res[0] if vec else res, it, conv, mask[0] if vec else mask, msg)
    return result.check(strict, "numerics.blocked")


def _block_jacobi(T, reg, block, client):
    """Cholesky factors of the diagonal blocks of ``A + reg I`` (float64), one per block."""
    n = T.shape[0]
    b = block or T.tile[0]
    factors = []
    for s in range(0, n, b):
        D = T.read(slice(s, min(s + b, n)), slice(s, min(s + b, n))).astype(np.float64)
        D[np.diag_indices_from(D)] += reg
        try:
            factors.append((s, sla.cho_factor(D, lower=True, check_finite=False)))
        except np.linalg.LinAlgError:
            raise ValueError(f"A: the diagonal block at rows {s}:{s + D.shape[0]} of A + reg I is not positive "
                             "definite; the matrix is not a kernel matrix, or needs reg > 0") from None
    return factors


def solve(A, B, *, reg: float = 0.0, method: str = "auto", tol: float = 1e-10, maxiter: Optional[int] = None,
          block: Optional[int] = None, precondition_block: Optional[int] = None, client=None, strict: bool = False,
          max_dense_bytes: int = 1 << 30, progress: Optional[Callable[[int, float], None]] = None) -> SolverResult:
    """Solve ``(A + reg I) X = B`` for a symmetric positive definite tiled ``A`` (see the module docstring).

    Args:
        A: zarr array, dask array, or NumPy array (tiles of ``block``).
        B: right-hand sides, ``(N,)`` or ``(N, k)``.
        reg: a ridge added to the diagonal.
        method: "cg", "cholesky" or "auto".
        tol: relative residual ``|B - (A + reg I) X| / |B|`` to reach, per column.
        maxiter: CG iterations (None: 10 N).
        precondition_block: size of the block-Jacobi blocks (None: the tile size).
        strict: raise ConvergenceError when a column misses ``tol``.
        progress: called as ``progress(iteration, largest relative residual)`` after each CG step.
    """
    validate.choice(method, "method", ("auto", "cg", "cholesky"))
    T = as_tiled(A, block)
    n = T.shape[0]
    B2, vec = _rhs(B, n)
    maxiter = _check_common(reg, tol, maxiter, n)
    if method == "auto":
        method = "cholesky" if 8 * n * n <= max_dense_bytes else "cg"
    bnorm = np.linalg.norm(B2, axis=0)
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    if method == "cholesky":
        X = _cholesky_solve(T, B2, reg, client)
        res = np.linalg.norm(B2 - matmul(T, X, client) - reg * X, axis=0) / bnorm
        return _finish(X, res, 1, tol, vec, strict, "blocked Cholesky")
    return _pcg(T, B2, reg, tol, maxiter, precondition_block, client, vec, strict, bnorm, progress)


def _cholesky_solve(T, B2, reg, client):
    import dask.array as da

    n, t = T.shape[0], T.tile[0]
    pad = -n % t  # Dask's Cholesky wants equal tiles: pad with an identity block (its own factor)
    M = da.pad(T.dask().astype(np.float64), ((0, pad), (0, pad))).rechunk(t)
    shift = np.concatenate([np.full(n, float(reg)), np.ones(pad)])
    if reg or pad:
        M = M + da.diag(da.from_array(shift, chunks=t))
    L = da.linalg.cholesky(M, lower=True)
    rhs = da.from_array(np.pad(B2, ((0, pad), (0, 0))), chunks=(t, B2.shape[1]))
    Y = da.linalg.solve_triangular(L, rhs, lower=True)
    try:
        return np.asarray(_compute(da.linalg.solve_triangular(L.T, Y, lower=False), client))[:n]
    except np.linalg.LinAlgError:
        raise ValueError("A: A + reg I is not positive definite (the blocked Cholesky failed); the matrix is not a "
                         "kernel matrix, or needs reg > 0; method='cg' reports how far it gets") from None


def _pcg(T, B, reg, tol, maxiter, pblock, client, vec, strict, bnorm, progress):
    """Preconditioned CG on every column of B at once (independent scalars per column)."""
    factors = _block_jacobi(T, reg, pblock, client)

    def precondition(R):
        Z = np.empty_like(R)
        for s, f in factors:
            e = s + f[0].shape[0]
            Z[s:e] = sla.cho_solve(f, R[s:e], check_finite=False)
        return Z

    def operator(V):
        return matmul(T, V, client) + reg * V

    X = np.zeros_like(B)
    R = B.copy()
    Z = precondition(R)
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    active = np.linalg.norm(R, axis=0) / bnorm > tol
    it, note = 0, ""
    while active.any() and it < maxiter:
        Q = operator(P)
        pq = np.einsum("ij,ij->j", P, Q)
        if np.any(pq[active] <= 0):
            note = "; A + reg I is not positive definite along a search direction (add reg)"
            break
        alpha = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
        X += alpha * P
        R -= alpha * Q
        it += 1
        rel = np.linalg.norm(R, axis=0) / bnorm
        if progress is not None:
            progress(it, float(rel.max()))
        active &= rel > tol
        Z = precondition(R)
        rz_new = np.einsum("ij,ij->j", R, Z)
        beta = np.where(active, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta * P
        rz = rz_new
    # the residual measured afresh (the recursive one drifts in floating point)
    res = np.linalg.norm(B - operator(X), axis=0) / bnorm
    return _finish(X, res, it, tol, vec, strict, "block-Jacobi preconditioned CG", note)


def apply_function(A, B, f: Callable[[np.ndarray], np.ndarray], *, reg: float = 0.0, tol: float = 1e-10,
                   maxiter: Optional[int] = None, block: Optional[int] = None, client=None, strict: bool = False,
                   check_every: int = 5) -> SolverResult:
    """``f(A + reg I) B`` for a symmetric ``A`` by Lanczos with full reorthogonalization.

    ``f`` maps an array of eigenvalues to values (vectorized). The Krylov approximation of
    order m is ``|b| Q_m f(T_m) e_1``; iterations stop when ``check_every`` more steps change it
    by at most ``tol`` relative, which is reported as the residual (or at an invariant
    subspace, where it is exact).
    """
    T = as_tiled(A, block)
    n = T.shape[0]
    B2, vec = _rhs(B, n)
    maxiter = min(_check_common(reg, tol, maxiter, n), n)  # a Krylov space has at most N dimensions
    out = np.zeros_like(B2)
    res = np.zeros(B2.shape[1])
    iters = 0
    for c in range(B2.shape[1]):
        out[:, c], res[c], m = _lanczos(T, B2[:, c], f, reg, tol, maxiter, client, check_every)
        iters = max(iters, m)
    return _finish(out, res, iters, tol, vec, strict, "Lanczos")


def _lanczos(T, b, f, reg, tol, maxiter, client, check_every):
    nb_ = np.linalg.norm(b)
    if nb_ == 0:
        return np.zeros_like(b), 0.0, 0
    Q = [b / nb_]
    alpha, beta = [], []
    prev = None
    change = math.inf
    for m in range(1, maxiter + 1):
        w = matmul(T, Q[-1], client) + reg * Q[-1]
        a = float(Q[-1] @ w)
        w -= a * Q[-1] + (beta[-1] * Q[-2] if beta else 0.0)
        Qm = np.array(Q)
        w -= Qm.T @ (Qm @ w)  # full reorthogonalization, twice is enough (Parlett's "twice is enough")
        w -= Qm.T @ (Qm @ w)
        alpha.append(a)
        bnext = float(np.linalg.norm(w))
        exact = bnext <= 1e-14 * max(abs(a), 1.0)
        if m % check_every == 0 or exact or m == maxiter:
            theta, S = sla.eigh_tridiagonal(np.array(alpha), np.array(beta))
            approx = nb_ * (Qm.T @ (S @ (f(theta) * S[0])))
            if exact:
                return approx, 0.0, m
            if prev is not None:
                change = float(np.linalg.norm(approx - prev) / max(np.linalg.norm(approx), np.finfo(float).tiny))
                if change <= tol:
                    return approx, change, m
            prev = approx
        beta.append(bnext)
        Q.append(w / bnext)
    return prev, change, maxiter

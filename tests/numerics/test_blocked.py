"""limitlab.numerics.blocked: solves and matrix functions over tiled SPD matrices.

References: scipy.linalg.cho_solve and numpy.linalg.eigh on matrices that fit in memory; a
synthetic problem with a known solution built tile by tile in a zarr store.
"""
import numpy as np
import pytest
import scipy.linalg as sla
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from limitlab.numerics import blocked
from limitlab.numerics.solvers import ConvergenceError
from limitlab.theory.kernels import MLP

RNG = np.random.default_rng(11)
X = RNG.standard_normal((150, 8))
K = MLP(3, bias_var=0.1).ntk(X)           # a real kernel matrix (ReLU NTK)
REG = 1e-3 * np.trace(K) / K.shape[0]
B = RNG.standard_normal((150, 3))
REF = sla.cho_solve(sla.cho_factor(K + REG * np.eye(150)), B)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("method", ["cg", "cholesky"])
def test_solve_matches_cho_solve_on_a_kernel_in_memory(method):
    """(K + reg I) X = B for a ReLU NTK, 40-row tiles (the last one 30): = scipy's cho_solve to 1e-8.

    The matrix's condition number is 1.9e3, so float64 guarantees relative residuals down to
    eps cond ~ 4e-13 only (a tol of 1e-13 converged or not with the machine's BLAS); at 1e-12 the
    solution's error is bounded by cond x 1e-12 = 2e-9, inside the 1e-8 compared."""
    r = blocked.solve(K, B, reg=REG, method=method, block=40, tol=1e-12)
    assert r.converged and r.value.shape == B.shape
    assert np.all(r.residual <= 1e-12)
    assert rel(r.value, REF) < 1e-8


def test_solve_reads_a_zarr_store_and_a_single_right_hand_side(tmp_path):
    z = zarr.open_array(str(tmp_path / "k"), mode="w", shape=K.shape, chunks=(64, 64), dtype="f8")
    z[...] = K
    r = blocked.solve(z, B[:, 0], reg=REG, method="cg", tol=1e-13)
    assert r.value.shape == (150,) and np.ndim(r.residual) == 0
    assert rel(r.value, REF[:, 0]) < 1e-8
    assert blocked.as_tiled(z).tile == (64, 64)


def _rbf_tile(x, rows, cols, ridge):
    d2 = ((x[rows, None, :] - x[None, cols, :]) ** 2).sum(-1)
    tile = np.exp(-0.5 * d2)
    same = np.equal.outer(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop))
    return tile + ridge * same


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_known_solution_of_a_matrix_written_tile_by_tile(dtype, tmp_path):
    """An RBF kernel + I of 700 points written tile by tile (never whole in memory), B = A x_true
    summed per tile in float64 from the stored (possibly float32) tiles: CG returns x_true to 1e-8."""
    n, t = 700, 256
    x = np.random.default_rng(2).standard_normal((n, 3))
    x_true = np.random.default_rng(3).standard_normal(n)
    z = zarr.open_array(str(tmp_path / "a"), mode="w", shape=(n, n), chunks=(t, t), dtype=dtype)
    b = np.zeros(n)
    for r0 in range(0, n, t):
        rows = slice(r0, min(r0 + t, n))
        for c0 in range(0, n, t):
            cols = slice(c0, min(c0 + t, n))
            z[rows, cols] = _rbf_tile(x, rows, cols, 1.0)
            b[rows] += np.asarray(z[rows, cols], dtype=np.float64) @ x_true[cols]
    r = blocked.solve(z, b, method="cg", tol=1e-12, strict=True)
    assert rel(r.value, x_true) < 1e-8
    c = blocked.solve(z, b, method="cholesky")
    assert rel(c.value, x_true) < 1e-8


def test_non_convergence_is_reported_and_raised_when_strict():
    r = blocked.solve(K, B, reg=REG, method="cg", maxiter=3, block=40)
    assert not r.converged and r.iterations == 3 and "relative residual" in r.message
    assert np.all(r.residual > 1e-10)
    with pytest.raises(ConvergenceError, match="relative residual .* > tol") as info:
        blocked.solve(K, B, reg=REG, method="cg", maxiter=3, block=40, strict=True)
    assert info.value.result.iterations == 3


def test_an_indefinite_matrix_is_refused():
    A = np.diag([1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="not positive definite"):
        blocked.solve(A, np.ones(3), method="cg", block=1)
    with pytest.raises(ValueError, match="not positive definite"):
        blocked.solve(A, np.ones(3), method="cholesky", block=2)


@settings(max_examples=8, deadline=None)
@given(s=st.floats(1e-3, 50.0), block=st.integers(7, 150))
def test_lanczos_flow_function_matches_eigendecomposition(s, block):
    """(1 - exp(-s A)) / A applied to B by Lanczos = the same function through numpy's eigh, to 1e-9."""
    def f(lam):
        return -np.expm1(-s * lam) / lam

    w, U = np.linalg.eigh(K + REG * np.eye(150))
    ref = U @ (f(w)[:, None] * (U.T @ B))
    r = blocked.apply_function(K, B, f, reg=REG, block=block, tol=1e-12)
    assert r.converged
    assert rel(r.value, ref) < 1e-9


def test_matmul_accumulates_float32_tiles_in_float64():
    """A float32 matrix times float64 vectors: equal to the exact float64 product of its values."""
    A32 = RNG.standard_normal((90, 70)).astype(np.float32)
    V = RNG.standard_normal((70, 2))
    out = blocked.matmul(blocked.as_tiled(A32, block=32, square=False), V)
    assert rel(out, A32.astype(np.float64) @ V) < 1e-14
    assert np.allclose(blocked.diagonal(K), np.diag(K), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="lu"), "method"), (dict(reg=-1.0), "reg"), (dict(tol=0.0), "tol"),
    (dict(maxiter=0), "maxiter"), (dict(block=0), "block"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        blocked.solve(K, B, **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        blocked.solve(np.ones((3, 4)), np.ones(3))
    with pytest.raises(ValueError, match=r"B: must have shape \(150,\) or \(150, k\), got shape \(4,\)"):
        blocked.solve(K, np.ones(4))
    with pytest.raises(ValueError, match="B: must be finite, got nan"):
        blocked.solve(K, np.full(150, np.nan))

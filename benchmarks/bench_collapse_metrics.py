"""Streamed NC metrics at scale vs a one-shot computation in the style of
rhubarbwu/neural-collapse (class means by a one-hot matmul, then Sigma_W from the
materialized N x d residual X - M[y], NC1 = tr(Sigma_W pinv(Sigma_B)) / C, float32;
NC4 from the materialized N x C logits and nearest-centre scores).

    .venv/bin/python benchmarks/bench_collapse_metrics.py [--samples 1000000] [--dim 512] [--classes 100] [--repeat 3]

Prints wall time (the minimum over --repeat runs: the development machine is shared) and
peak traced memory (tracemalloc; NumPy reports its buffers to it) of the streamed passes
(pass 1: NC1-NC3 + CDNV; pass 2: NC4, which needs the final class means) and of the
one-shot computation, the ratios of the totals, and the NC1/CDNV/NC4 values of both (they
must agree). The features are generated before timing (N x d float32, 2 GB at the default
size) and fed to the accumulator as views in chunks, as a data loader would. BLAS threads:
NumPy's default (all cores); set OPENBLAS_NUM_THREADS to change it.
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from limitlab.theory.collapse import CollapseAccumulator, NCCAgreement


def make_data(N, d, C, seed=0):
    rng = np.random.default_rng(seed)
    mu = 3.0 * rng.standard_normal((C, d)).astype(np.float32) / np.sqrt(d)
    y = rng.integers(0, C, N)
    X = rng.standard_normal((N, d), dtype=np.float32)
    for s in range(0, N, 1 << 16):  # add the class means in blocks (no N x d temporary)
        X[s:s + (1 << 16)] += mu[y[s:s + (1 << 16)]]
    W = mu + 0.1 * rng.standard_normal((C, d)).astype(np.float32) / np.sqrt(d)
    return X, y, W


def streamed(X, y, W, C, chunk):
    acc = CollapseAccumulator(C, X.shape[1], chunk_size=chunk)
    for s in range(0, X.shape[0], chunk):
        acc.update(X[s:s + chunk], y[s:s + chunk])
    m = acc.metrics(W)
    return acc, m


def nc4_pass(acc, X, y, W, chunk):
    agree = NCCAgreement(acc.means, W, chunk_size=chunk)
    for s in range(0, X.shape[0], chunk):
        agree.update(X[s:s + chunk], y[s:s + chunk])
    return agree.value()


def one_shot(X, y, W, C):
    """rhubarbwu-style: everything materialized, float32."""
    N, d = X.shape
    onehot = np.zeros((C, N), dtype=np.float32)
    onehot[y, np.arange(N)] = 1.0
    counts = onehot.sum(axis=1)
    M = onehot @ X / counts[:, None]
    mG = counts @ M / N
    diff = X - M[y]
    Sw = diff.T @ diff / N
    Mc = M - mG
    Sb = Mc.T @ Mc / C
    nc1 = float(np.trace(Sw @ np.linalg.pinv(Sb)) / C)  # float32 full pinv, as torch.linalg.pinv
    # the same Sigma_B in float64 with only its top C-1 eigenpairs (Papyan's svds(k=C-1)):
    # the float32 rounding of Sigma_B leaves null-space eigenvalues far above any pinv cut-off
    lam, V = np.linalg.eigh(Sb.astype(np.float64))
    V, lam = V[:, -(C - 1):], lam[-(C - 1):]
    nc1_64 = float(np.sum(np.einsum("ij,ik,kj->j", V, Sw.astype(np.float64), V) / lam) / C)
    var = np.bincount(y, weights=np.einsum("ij,ij->i", diff, diff), minlength=C) / counts
    del diff
    iu = np.triu_indices(C, 1)
    dist2 = np.sum((M[:, None, :] - M[None, :, :]) ** 2, axis=-1)[iu]
    cdnv = float(np.mean((var[:, None] + var[None, :])[iu] / (2 * dist2)))
    return nc1, nc1_64, cdnv, M


def one_shot_nc4(X, W, M):
    """NC4 from the materialized N x C logits and nearest-centre scores, float32."""
    pred = np.argmax(X @ W.T, axis=1)
    ncc = np.argmax(X @ M.T - 0.5 * np.einsum("ij,ij->i", M, M), axis=1)
    return float(np.mean(pred != ncc))


def measure(fn, *args, repeat=1):
    """(result, min wall seconds, peak traced bytes) over ``repeat`` runs; also prints the
    process CPU seconds, which on a shared machine estimate the wall time on idle cores."""
    best = None
    for _ in range(repeat):
        tracemalloc.start()
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  [{fn.__name__}: wall {dt:.2f} s, process CPU {dc:.2f} s, peak {peak / 2**20:.1f} MiB]")
        if best is None or dt < best[1]:
            best = (out, dt, peak)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the minimum wall time is kept")
    ap.add_argument("--skip-one-shot", action="store_true")
    a = ap.parse_args()
    t = time.perf_counter()
    X, y, W = make_data(a.samples, a.dim, a.classes)
    print(f"data: N={a.samples} d={a.dim} C={a.classes} float32 ({X.nbytes / 2**30:.2f} GiB), "
          f"generated in {time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.2f}")
    (acc, m), t_s, mem_s = measure(streamed, X, y, W, a.classes, a.chunk, repeat=a.repeat)
    print(f"streamed pass 1, NC1-NC3 + CDNV: {t_s:6.2f} s, peak {mem_s / 2**20:8.1f} MiB   "
          f"NC1={m.nc1:.6g} CDNV={m.cdnv:.6g} NC3={m.nc3:.4g}")
    nc4, t_4, mem_4 = measure(nc4_pass, acc, X, y, W, a.chunk, repeat=a.repeat)
    print(f"streamed pass 2, NC4:            {t_4:6.2f} s, peak {mem_4 / 2**20:8.1f} MiB   NC4={nc4:.4g}")
    t_tot, mem_tot = t_s + t_4, max(mem_s, mem_4)
    print(f"streamed total (both passes):    {t_tot:6.2f} s, peak {mem_tot / 2**20:8.1f} MiB")
    if not a.skip_one_shot:
        (nc1, nc1_64, cdnv, M), t_o, mem_o = measure(one_shot, X, y, W, a.classes, repeat=a.repeat)
        print(f"one-shot NC1-NC3 + CDNV:         {t_o:6.2f} s, peak {mem_o / 2**20:8.1f} MiB   "
              f"NC1={nc1:.6g} (float32 full pinv; rank C-1 float64: {nc1_64:.6g}) CDNV={cdnv:.6g}")
        nc4_o, t_o4, mem_o4 = measure(one_shot_nc4, X, W, M, repeat=a.repeat)
        print(f"one-shot NC4:                    {t_o4:6.2f} s, peak {mem_o4 / 2**20:8.1f} MiB   NC4={nc4_o:.4g}")
        t_otot, mem_otot = t_o + t_o4, max(mem_o, mem_o4)
        print(f"one-shot total:                  {t_otot:6.2f} s, peak {mem_otot / 2**20:8.1f} MiB")
        print(f"ratio streamed / one-shot: total time {t_tot / t_otot:.2f} (pass 1 vs NC1-NC3 + CDNV "
              f"{t_s / t_o:.2f}), peak memory {mem_tot / mem_otot:.3f}; NC1 relative difference to the "
              f"rank-(C-1) one-shot {abs(m.nc1 - nc1_64) / nc1_64:.1e}, CDNV {abs(m.cdnv - cdnv) / cdnv:.1e}, "
              f"NC4 {nc4:.6g} vs {nc4_o:.6g}")


if __name__ == "__main__":
    main()

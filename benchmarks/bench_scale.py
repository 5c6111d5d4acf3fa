"""Kernels larger than memory: write_kernels to zarr, the distributed scheduler, the blocked solve.

    .venv/bin/python benchmarks/bench_scale.py [--n 60000] [--n-ref 8000] [--n-cluster 20000] [--d 784]
        [--chunks 2000] [--dir DIR] [--cases inmem,store,peer,cluster,solve] [--quick] [--keep]
        [--nt-python PATH] [--json out.json]

Network: depth-3 ReLU MLP (weight_var 1, no bias), its NTK only (get="ntk"), float64. Inputs:
synthetic N(0, 1) of MNIST's shape (N, 784). Every case runs in a fresh process, and its peak RSS
is that process's ru_maxrss (inputs and libraries included).

* inmem: ``MLP.kernels(X, get="ntk")`` at --n-ref (whole matrix in memory), warm; per-entry
  time = time / N^2. Run before and after the store (the machine is shared: both reported).
* store: ``write_kernels`` of the --n x --n NTK to zarr (tiles --chunks, uncompressed, the local
  threaded scheduler on every core); per-entry time against inmem's; three random 300 x 300
  blocks checked against ``MLP.kernels`` on those rows and columns; a mirrored tile pair checked
  exactly transposed. Target (the issue): peak RSS < 2 GB, per-entry time <= 1.5x inmem's.
* peer: neural-tangents (its interpreter: --nt-python, $NT_PYTHON or
  ~/.cache/limitlab-baselines/neural-tangents/bin/python), the same network in stax:
  ``jax.jit(kernel_fn)`` on the --n inputs, in a process capped at 16 GB of address space (it
  needs the whole N x N output and XLA temporaries at once), and ``nt.batch(kernel_fn,
  batch_size=1000, store_on_device=False)``, its documented way to bound memory, at --n-ref,
  where its peak RSS growth per output byte is measured and scaled to --n (it assembles the
  whole output in memory).
* cluster: the --n-cluster NTK written by the threaded scheduler and by a
  ``dask.distributed.LocalCluster`` of 2 worker processes x 1 thread; both stores compared
  byte for byte; the distributed scheduler's overhead = time ratio - 1.
* solve: the --n store converted to float32 (Dask, tile by tile), then
  ``numerics.blocked.solve(ntk, y, method="cg")`` (block-Jacobi PCG, float64 accumulation) with
  y = sign(x_0), tol 1e-6, at most 300 iterations; iterations, relative residual (measured afresh), time.

Stores go under --dir (default: a temporary directory) and are deleted unless --keep.
--quick: N = 3000 / 1500 / 2000 (a check that everything runs, seconds).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap

NT_DEFAULT = os.path.expanduser("~/.cache/limitlab-baselines/neural-tangents/bin/python")
HERE = os.path.abspath(__file__)


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(n, d):
    import numpy as np

    return np.random.default_rng(0).standard_normal((n, d))


# ---------------------------------------------------------------------------------------
# cases (each in its own process: `bench_scale.py _case NAME JSON-ARGS`)
# ---------------------------------------------------------------------------------------

def case_inmem(n, d):
    import time

    from limitlab.theory.kernels import MLP

    X = inputs(n, d)
    net = MLP(3)
    net.kernels(X[:200], get="ntk")
    t = time.perf_counter()
    net.kernels(X, get="ntk")
    sec = time.perf_counter() - t
    return {"n": n, "seconds": sec, "ns_per_entry": sec / n ** 2 * 1e9, "peak_rss_mb": rss_mb()}


def case_store(n, d, chunks, path, dtype="float64"):
    import time

    import numpy as np

    from limitlab.theory.kernels import MLP, write_kernels

    X = inputs(n, d)
    net = MLP(3)
    net.kernels(X[:200], get="ntk")
    net.kernels(X[:20], X[:30], get="ntk")
    base = rss_mb()
    t = time.perf_counter()
    out = write_kernels(net, X, path=path, get="ntk", chunks=chunks, dtype=dtype, progress=True)
    sec = time.perf_counter() - t
    peak = rss_mb()
    rng = np.random.default_rng(1)
    errs = []
    tiles = -(-n // chunks)
    for _ in range(3):  # 300 x 300 random entries of one random tile (reading one chunk, not the whole store)
        I, J = rng.integers(tiles, size=2)
        rows, cols = slice(I * chunks, min((I + 1) * chunks, n)), slice(J * chunks, min((J + 1) * chunks, n))
        r = np.sort(rng.choice(rows.stop - rows.start, min(300, rows.stop - rows.start), replace=False))
        c = np.sort(rng.choice(cols.stop - cols.start, min(300, cols.stop - cols.start), replace=False))
        ref = net.kernels(X[rows][r], X[cols][c], get="ntk").ntk
        errs.append(float(np.max(np.abs(out.ntk[rows, cols][np.ix_(r, c)] - ref)) / np.max(np.abs(ref))))
    a, b = slice(0, min(chunks, n)), slice(min(chunks, n), min(2 * chunks, n))
    mirrored = bool(np.array_equal(out.ntk[a, b], out.ntk[b, a].T)) if b.start < n else True
    du = sum(f.stat().st_size for f in __import__("pathlib").Path(path).rglob("*") if f.is_file())
    return {"n": n, "seconds": sec, "ns_per_entry": sec / n ** 2 * 1e9, "peak_rss_mb": peak,
            "rss_before_mb": base, "max_rel_err_vs_inmemory": max(errs), "mirrored_exact": mirrored,
            "store_gb": du / 1e9}


def case_cluster(n, d, chunks, path):
    import time

    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    from limitlab.theory.kernels import MLP, write_kernels

    X = inputs(n, d)
    net = MLP(3)
    net.kernels(X[:200], get="ntk")
    net.kernels(X[:20], X[:30], get="ntk")
    t = time.perf_counter()
    write_kernels(net, X, path=path + "/threads", get="ntk", chunks=chunks, progress=False)
    threaded = time.perf_counter() - t
    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter() - t
        t = time.perf_counter()
        write_kernels(net, X, path=path + "/cluster", get="ntk", chunks=chunks, client=client, progress=False)
        dist = time.perf_counter() - t
    a, b = zarr.open_array(path + "/threads/ntk", mode="r"), zarr.open_array(path + "/cluster/ntk", mode="r")
    same = all(np.array_equal(a[s:s + chunks], b[s:s + chunks]) for s in range(0, n, chunks))
    return {"n": n, "threaded_s": threaded, "distributed_s": dist, "cluster_start_s": started,
            "overhead": dist / threaded - 1, "identical": same}


def case_solve(n, chunks, path):
    import time

    import dask.array as da
    import numpy as np
    import zarr

    from limitlab.numerics import blocked

    t = time.perf_counter()
    src = da.from_zarr(zarr.open_array(path + "/ntk", mode="r"))
    dst = zarr.create_array(path + "32", shape=src.shape, chunks=(chunks, chunks), dtype="float32", compressors=None,
                            overwrite=True)
    da.to_zarr(src.astype(np.float32), dst)
    convert = time.perf_counter() - t
    K = zarr.open_array(path + "32", mode="r")
    y = np.sign(inputs(n, 784)[:, 0])
    t = time.perf_counter()
    r = blocked.solve(K, y, method="cg", tol=1e-6, maxiter=300,
                      progress=lambda i, res: print(f"CG {i}: residual {res:.2e}", file=sys.stderr, flush=True))
    sec = time.perf_counter() - t
    return {"n": n, "convert_to_float32_s": convert, "seconds": sec, "iterations": r.iterations,
            "residual": float(r.residual), "converged": r.converged, "message": r.message,
            "seconds_per_iteration": sec / max(r.iterations, 1), "peak_rss_mb": rss_mb()}


PEER = textwrap.dedent('''
    import json, resource, sys, time
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import neural_tangents as nt
    from neural_tangents import stax
    n, d, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    X = np.random.default_rng(0).standard_normal((n, d))
    layers = []
    for _ in range(3):
        layers += [stax.Dense(512, W_std=1.0, b_std=None), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.0, b_std=None))
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = rss()
    t = time.perf_counter()
    try:
        if mode == "jit":
            out = jax.jit(kernel_fn, static_argnames="get")(X, None, get="ntk")
        else:
            out = nt.batch(kernel_fn, batch_size=int(mode[5:]), store_on_device=False)(X, None, get="ntk")
        np.asarray(out)
        res = {"ok": True}
    except Exception as exc:  # the failure is the measurement
        res = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    res.update(seconds=time.perf_counter() - t, rss_growth_mb=rss() - base, peak_rss_mb=rss(),
               output_gb=8 * n * n / 1e9)
    print(json.dumps(res))
''')


def run_peer(py, n, d, mode, cap_gb=16, timeout=900):
    def cap():
        lim = int(cap_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    try:
        out = subprocess.run([py, "-c", PEER, str(n), str(d), mode], capture_output=True, text=True, timeout=timeout,
                             preexec_fn=cap if mode == "jit" else None)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"exit {out.returncode}: {out.stderr.strip()[-400:]}"}
    return json.loads(lines[-1])


def run_case(name, **kwargs):
    out = subprocess.run([sys.executable, HERE, "_case", name, json.dumps(kwargs)], stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"case {name} failed (exit {out.returncode})")
    return json.loads(lines[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_case":
        fn = globals()["case_" + sys.argv[2]]
        print(json.dumps(fn(**json.loads(sys.argv[3]))), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--n-ref", type=int, default=8000)
    p.add_argument("--n-cluster", type=int, default=20000)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--chunks", type=int, default=2000)
    p.add_argument("--dir", default=None)
    p.add_argument("--cases", default="inmem,store,peer,cluster,solve")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--nt-python", default=os.environ.get("NT_PYTHON", NT_DEFAULT))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.quick:
        a.n, a.n_ref, a.n_cluster, a.chunks = 3000, 1500, 2000, 500
    cases = set(a.cases.split(","))
    root = tempfile.mkdtemp(prefix="bench_scale_", dir=a.dir)
    res = {}
    try:
        print(f"depth-3 ReLU NTK, d = {a.d}, float64, tiles {a.chunks}; stores under {root}")
        if cases & {"inmem", "store", "solve"}:
            res["inmem_before"] = run_case("inmem", n=a.n_ref, d=a.d)
            print(f"in memory  N = {a.n_ref}: {res['inmem_before']['seconds']:.1f} s, "
                  f"{res['inmem_before']['ns_per_entry']:.1f} ns/entry, peak RSS {res['inmem_before']['peak_rss_mb']:.0f} MB")
        if "store" in cases or "solve" in cases:
            res["store"] = s = run_case("store", n=a.n, d=a.d, chunks=a.chunks, path=root + "/ntk")
            res["inmem_after"] = run_case("inmem", n=a.n_ref, d=a.d)
            ref = min(res["inmem_before"]["ns_per_entry"], res["inmem_after"]["ns_per_entry"])
            worst = max(res["inmem_before"]["ns_per_entry"], res["inmem_after"]["ns_per_entry"])
            print(f"zarr store N = {a.n}: {s['seconds']:.0f} s, {s['ns_per_entry']:.1f} ns/entry "
                  f"({s['ns_per_entry'] / worst:.2f}x - {s['ns_per_entry'] / ref:.2f}x in-memory at N = {a.n_ref}: "
                  f"{res['inmem_after']['ns_per_entry']:.1f} ns/entry after), peak RSS {s['peak_rss_mb']:.0f} MB, "
                  f"{s['store_gb']:.1f} GB on disk, max rel. error vs in-memory blocks {s['max_rel_err_vs_inmemory']:.1e}, "
                  f"mirrored tiles exact: {s['mirrored_exact']}")
        if "peer" in cases:
            if os.path.exists(a.nt_python):
                res["nt_jit"] = j = run_peer(a.nt_python, a.n, a.d, "jit")
                print(f"neural-tangents jit(kernel_fn) N = {a.n} (16 GB address-space cap): "
                      + ("completed" if j.get("ok") else f"failed: {j['error'][:200]}")
                      + f"; its output alone is {8 * a.n ** 2 / 1e9:.1f} GB")
                bs = max(k for k in range(1, 1001) if a.n_ref % k == 0)  # nt.batch wants N divisible by it
                res["nt_batch"] = b = run_peer(a.nt_python, a.n_ref, a.d, f"batch{bs}")
                if b.get("ok"):
                    per = b["rss_growth_mb"] * 2 ** 20 / (8 * a.n_ref ** 2)
                    need = per * 8 * a.n ** 2 / 1e9
                    b["need_at_n_gb"] = need
                    print(f"neural-tangents nt.batch(batch_size={bs}) N = {a.n_ref}: {b['seconds']:.1f} s, RSS growth "
                          f"{b['rss_growth_mb']:.0f} MB = {per:.2f}x its output -> needs ~{need:.0f} GB at N = {a.n}")
                else:
                    print(f"neural-tangents nt.batch N = {a.n_ref}: failed: {b['error'][:200]}")
            else:
                print(f"neural-tangents: no interpreter at {a.nt_python} (skipped)")
        if "cluster" in cases:
            res["cluster"] = c = run_case("cluster", n=a.n_cluster, d=a.d, chunks=a.chunks, path=root + "/cluster")
            print(f"N = {a.n_cluster}: threaded {c['threaded_s']:.1f} s, LocalCluster 2 processes {c['distributed_s']:.1f} s "
                  f"(+{c['cluster_start_s']:.1f} s to start): overhead {100 * c['overhead']:+.0f}%, stores identical: "
                  f"{c['identical']}")
            shutil.rmtree(root + "/cluster", ignore_errors=True)
        if "solve" in cases:
            res["solve"] = v = run_case("solve", n=a.n, chunks=a.chunks, path=root + "/ntk")
            print(f"blocked CG N = {a.n} (float32 store, float64 accumulation): {v['iterations']} iterations, relative "
                  f"residual {v['residual']:.2e}, {v['seconds']:.0f} s ({v['seconds_per_iteration']:.1f} s/iteration; "
                  f"conversion to float32 {v['convert_to_float32_s']:.0f} s), peak RSS {v['peak_rss_mb']:.0f} MB")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

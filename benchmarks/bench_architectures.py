"""Myrtle CNN kernels (NNGP and NTK), limitlab's stax side by side with neural-tangents.

    .venv/bin/python benchmarks/bench_architectures.py [--n 8] [--pairs 3] [--quick] [--no-peer]
        [--nt-python PATH] [--nt-configs jit,batch4] [--large-ns 64,256] [--cnn21-n 4] [--breakdown]
        [--memory-ns 4,8,16] [--json out.json]

Myrtle-5/7/10 (Shankar et al. 2020, "Neural kernels without tangents"), written as
neural-tangents' Myrtle example writes them: 3x3 SAME convs + ReLU (W_std = sqrt(2), b_std = 0)
in three stages of {5: [2, 1, 1], 7: [2, 2, 2], 10: [3, 3, 3]} layers, AvgPool((2, 2), (2, 2))
after the first two, then 2x2 pools down to 1x1 (three on 32x32 images; log2(H) - 2 on HxH),
Flatten, Dense(10). Inputs: synthetic N(0, 1) images (N, H, H, 3), float64 (JAX with
jax_enable_x64). Each call computes NNGP and NTK of X with itself (N x N each).

Every measurement runs in a fresh process (limitlab in this interpreter, neural-tangents in its
private one: --nt-python, else $NT_PYTHON, else ~/.cache/limitlab-baselines/neural-tangents/
bin/python): a first call (neural-tangents: with its XLA compile; limitlab: with its Numba
compiles), then the best of --repeats warm calls; per-entry time = warm time / N^2. Peak
memory: the process's max RSS growth from just before the first call (inputs built, libraries
imported), against the output (two N x N float64 arrays). neural-tangents' configurations:
``jit``: ``jax.jit(kernel_fn, static_argnames="get")`` on the whole batch; ``batchB``:
``nt.batch(kernel_fn, batch_size=B, store_on_device=False)`` (jitted internally, one CPU
device), its documented way to bound memory. --nt-configs screens them once at the main size,
and the fastest is then run in --pairs alternating rounds with limitlab (the machine is
shared: the median of the paired ratios is reported).
Targets (the issue): per-entry time >= 10x faster than neural-tangents; peak memory <= 1.5x
the output plus a per-worker working set that does not grow with N.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

NT_DEFAULT = os.path.expanduser("~/.cache/limitlab-baselines/neural-tangents/bin/python")

COMMON = textwrap.dedent('''
    import json, resource, sys, time
    import numpy as np
    N, H, depth, repeats, cfg, save = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                       sys.argv[5], sys.argv[6])
    factor = {5: [2, 1, 1], 7: [2, 2, 2], 10: [3, 3, 3], 21: None}[depth]
    n_final = int(round(np.log2(H))) - 2
    X = np.random.default_rng(0).standard_normal((N, H, H, 3))
    def myrtle(stax, conv, pool, relu, flatten, dense):
        if factor is None:  # depth 21: neural-tangents' README CNN, 20 x (conv, relu), global pooling, dense
            return stax.serial(*([conv(), relu()] * 20 + [stax.GlobalAvgPool(), dense()]))
        L = [conv(), relu()] * factor[0] + [pool()] + [conv(), relu()] * factor[1] + [pool()]
        L += [conv(), relu()] * factor[2] + [pool()] * n_final + [flatten(), dense()]
        return stax.serial(*L)
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def measure(call):
        base = rss()
        t = time.perf_counter(); out = call(); first = time.perf_counter() - t
        ts = [first]
        for _ in range(repeats):
            del out
            t = time.perf_counter(); out = call(); ts.append(time.perf_counter() - t)
        nngp, ntk = out
        if save != "-":
            np.savez(save, nngp=nngp, ntk=ntk)
        print(json.dumps({"first": first, "time": min(ts[1:] or ts), "peak_mb": rss() - base,
                          "out_mb": (nngp.nbytes + ntk.nbytes) / 2**20}))
''')

OURS = COMMON + textwrap.dedent('''
    from limitlab.theory.kernels import stax
    w = 2 ** 0.5
    net = myrtle(stax, lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=w, b_std=0.0),
                 lambda: stax.AvgPool((2, 2), (2, 2)), stax.Relu, stax.Flatten, lambda: stax.Dense(10, W_std=w))
    bs = None if cfg == "auto" else int(cfg)
    def call():
        k = net.kernels(X, None, batch_size=bs)
        return k.nngp, k.ntk
    measure(call)
''')

NT = COMMON + textwrap.dedent('''
    import jax
    jax.config.update("jax_enable_x64", True)
    import neural_tangents as nt
    from neural_tangents import stax
    w = 2 ** 0.5
    _, _, kernel_fn = myrtle(stax, lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=w, b_std=0.0),
                             lambda: stax.AvgPool((2, 2), (2, 2)), stax.Relu, stax.Flatten,
                             lambda: stax.Dense(10, W_std=w, b_std=0.0))
    if cfg == "jit":
        kf = jax.jit(kernel_fn, static_argnames="get")
    else:
        kf = nt.batch(kernel_fn, batch_size=int(cfg[len("batch"):]), store_on_device=False)
    def call():
        k = kf(X, None, ("nngp", "ntk"))
        return np.asarray(k[0]), np.asarray(k[1])
    measure(call)
''')


def run(py, code, N, H, depth, repeats, cfg, save="-"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([py, "-c", code, str(N), str(H), str(depth), str(repeats), cfg, save],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200], "rc": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(r, N):
    if "error" in r:
        return f"failed ({r['error']})"
    return (f"{r['time']:.2f} s = {1e3 * r['time'] / N ** 2:.1f} ms/entry (first call {r['first']:.2f} s); "
            f"peak +{r['peak_mb']:.0f} MB (output {1024 * r['out_mb']:.0f} KB)")


def agreement(a, b):
    import numpy as np

    A, B = np.load(a), np.load(b)
    return max(float(np.max(np.abs(A[k] - B[k])) / np.max(np.abs(B[k]))) for k in ("nngp", "ntk"))


def breakdown(repeats=10):
    """Per-pass CPU time of one Myrtle-5 pair (32x32, one thread, best of ``repeats``)."""
    import time

    import numpy as np

    from limitlab.theory.kernels import fused, stax

    w = 2 ** 0.5
    conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=w, b_std=0.0)  # noqa: E731
    pool = lambda: stax.AvgPool((2, 2), (2, 2))  # noqa: E731
    net = stax.serial(*([conv(), stax.Relu()] * 2 + [pool(), conv(), stax.Relu(), pool(), conv(), stax.Relu()]
                        + [pool()] * 3 + [stax.Flatten(), stax.Dense(10, W_std=w)]))
    X = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    p = fused.plan(net, X.shape)
    fused.run(p, X, None, True, True, threads=1)  # compile / load
    bufs, row, rowt = fused._buffers(p, True)
    (K0, T0, _), (K1, T1, _), (K2, T2, _), (K3, T3, _) = bufs[:4]
    rng = np.random.default_rng(1)
    for K in (K0, T0, K1, T1, K2, T2):
        K[:] = rng.uniform(0.5, 1.0, K.size)
    s = np.ones(32 * 32)
    op = p.ops[0]
    xa = rng.standard_normal((34 * 34, 3))
    xbT = np.ascontiguousarray(xa.T)

    def best(f, *args):
        f(*args)
        t = []
        for _ in range(repeats):
            t0 = time.thread_time()
            f(*args)
            t.append(time.thread_time() - t0)
        return 1e3 * min(t)

    conv_map, map_inplace = op.act
    out = {
        "input layer (Gram of the padded pixels)": best(fused._gram, xa, xbT, 34, 34, K0),
        "conv + ReLU, first layer (NTK = K)": best(conv_map, K0, T0, True, True, 34, 34, 3, 3, 1, 1, 32, 32, op.w,
                                                   op.b, s, s, K1, T1, 34, 34, 1, 1, row, rowt),
        "conv + ReLU (K and Theta)": best(conv_map, K1, T1, False, True, 34, 34, 3, 3, 1, 1, 32, 32, op.w, op.b, s,
                                          s, K2, T2, 32, 32, 0, 0, row, rowt),
        "conv alone (K and Theta, 9 taps)": best(fused._conv, K1, T1, False, True, 34, 34, 3, 3, 1, 1, 32, 32, op.w,
                                                 op.b, K2, T2, 32, 32, 0, 0, row, rowt),
        "ReLU map alone, in place (floor of a conv + ReLU pass)": best(map_inplace, K2, T2, True, 32, 32, 32, 32,
                                                                       0, 0, s, s),
        "AvgPool 2x2 (K and Theta)": best(fused._pool, K2, T2, True, 32, 32, 2, 2, 2, 2, 16, 16, p.ops[2].div_h,
                                          p.ops[2].div_w, K3, T3, 18, 18, 1, 1, row, rowt),
    }
    ones = [np.ones(n) for n in (1024, 1024, 256, 64)]
    xa2 = np.ascontiguousarray(fused._pad_image(X[0], p.ops[0]).reshape(-1, 3) / 3)
    xb2 = np.ascontiguousarray(fused._pad_image(X[1], p.ops[0]).reshape(-1, 3).T)
    out["whole pair (all layers)"] = best(fused._pair, p, xa2, xb2, ones, ones, True, (bufs, row, rowt), None)
    print("== one Myrtle-5 pair, 32x32, one thread (CPU ms, best of %d) ==" % repeats)
    for k, v in out.items():
        print(f"  {k:56s} {v:7.2f} ms")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="images in the main Myrtle-5 32x32 comparison")
    ap.add_argument("--pairs", type=int, default=3, help="alternating limitlab/neural-tangents rounds")
    ap.add_argument("--repeats", type=int, default=2, help="warm calls per process (best taken)")
    ap.add_argument("--quick", action="store_true", help="16x16 images, N=4, one round (a smoke run)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--nt-python", default=os.environ.get("NT_PYTHON", NT_DEFAULT))
    ap.add_argument("--nt-configs", default="jit,batch4", help="neural-tangents configurations to screen")
    ap.add_argument("--ours-configs", default="auto", help="limitlab batch_size values ('auto': its default)")
    ap.add_argument("--scaling-n", type=int, default=4, help="images in the image-size and depth scans")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--memory-ns", default="", help="e.g. 4,8,12: peak memory of one first call at these N "
                    "(32x32 Myrtle-5; limitlab default, neural-tangents batch4): does the working set grow?")
    ap.add_argument("--large-ns", default="", help="e.g. 64,256: limitlab alone at these N (32x32 Myrtle-5, one "
                    "call): per-entry time and peak memory against the output")
    ap.add_argument("--cnn21-n", type=int, default=0, help="images for the 21-layer CNN (global pooling) of "
                    "neural-tangents' README (112.9 ms per NTK entry on CPU there); 0: skip")
    ap.add_argument("--breakdown", action="store_true", help="limitlab's pair engine, one pair of 32x32 images on "
                    "one thread: time per layer pass against the floor (the kernel map alone over the same entries)")
    ap.add_argument("--skip-main", action="store_true")
    ap.add_argument("--json", help="write every measurement here")
    a = ap.parse_args()
    peer = not a.no_peer and os.path.exists(a.nt_python)
    py = sys.executable
    H, N = (16, 4) if a.quick else (32, a.n)
    pairs = 1 if a.quick else (0 if a.skip_main else a.pairs)
    rec = {"main": {"N": N, "H": H}, "rounds": [], "screen": {}, "scaling": []}
    tmp = os.environ.get("TMPDIR", "/tmp")
    ours_file, nt_file = os.path.join(tmp, "_ll_myrtle.npz"), os.path.join(tmp, "_nt_myrtle.npz")

    if a.memory_ns:
        print("== peak memory against N (Myrtle-5, 32x32x3, first call) ==", flush=True)
        rec["memory"] = []
        for n in map(int, a.memory_ns.split(",")):
            ours = run(py, OURS, n, 32, 5, 0, "auto")
            row = {"N": n, "limitlab": ours}
            line = f"N={n:3d}: limitlab (default): {fmt(ours, n)}"
            if peer:
                row["neural-tangents"] = nt = run(a.nt_python, NT, n, 32, 5, 0, "batch4")
                line += f"\n       neural-tangents batch4: {fmt(nt, n)}"
            rec["memory"].append(row)
            print(line, flush=True)
    if a.breakdown:
        rec["breakdown"] = breakdown()
    if a.large_ns:
        print("== limitlab at large N (Myrtle-5, 32x32x3, NNGP + NTK; one call) ==", flush=True)
        rec["large"] = []
        for n in map(int, a.large_ns.split(",")):
            ours = run(py, OURS, n, 32, 5, 0, "auto")  # the first call (kernels loaded from the disk cache)
            rec["large"].append({"N": n, "limitlab": ours})
            extra = "" if "error" in ours else f"; peak / output = {ours['peak_mb'] / ours['out_mb']:.1f}"
            print(f"N={n:4d}: {fmt(ours, n)}{extra}", flush=True)
    if a.cnn21_n:
        n = a.cnn21_n
        print(f"== 21-layer CNN, global average pooling, 32x32x3, N={n}, NNGP + NTK ==", flush=True)
        ours = run(py, OURS, n, 32, 21, 1, "auto")
        row = {"N": n, "limitlab": ours}
        line = f"limitlab: {fmt(ours, n)}"
        if peer:
            row["neural-tangents"] = nt = run(a.nt_python, NT, n, 32, 21, 1, "jit")
            line += f"\n  neural-tangents jit: {fmt(nt, n)}"
            if "error" not in nt and "error" not in ours:
                line += f"; ratio {nt['time'] / ours['time']:.2f}x"
        if "error" not in ours:
            line += (f"\n  neural-tangents' README, CPU: 112.9 ms per NTK entry; limitlab here "
                     f"{1e3 * ours['time'] / n ** 2:.1f} ms per entry (NNGP and NTK together)")
        rec["cnn21"] = row
        print(line, flush=True)
    if a.skip_main:
        a.pairs, a.skip_scaling = 0, True
    if pairs:
        print(f"== Myrtle-5, {H}x{H}x3, N={N}, NNGP + NTK, float64 ==", flush=True)
    ours_cfg = a.ours_configs.split(",")
    nt_cfg = a.nt_configs.split(",") if not a.skip_main else ["jit"]
    best_ours, best_nt = ours_cfg[0], nt_cfg[0]
    if len(ours_cfg) > 1:
        for c in ours_cfg:
            r = run(py, OURS, N, H, 5, 1, c)
            rec["screen"][f"limitlab {c}"] = r
            print(f"  screen limitlab batch_size={c}: {fmt(r, N)}", flush=True)
        best_ours = min(ours_cfg, key=lambda c: rec["screen"][f"limitlab {c}"].get("time", 1e99))
    if peer and len(nt_cfg) > 1:
        for c in nt_cfg:
            r = run(a.nt_python, NT, N, H, 5, 1, c)
            rec["screen"][f"neural-tangents {c}"] = r
            print(f"  screen neural-tangents {c}: {fmt(r, N)}", flush=True)
        best_nt = min(nt_cfg, key=lambda c: rec["screen"][f"neural-tangents {c}"].get("time", 1e99))
    ratios = []
    for k in range(pairs):
        ours = run(py, OURS, N, H, 5, a.repeats, best_ours, ours_file)
        line = f"[{k + 1}] limitlab (batch_size {best_ours}): {fmt(ours, N)}"
        r = {"limitlab": ours}
        if peer:
            nt = run(a.nt_python, NT, N, H, 5, a.repeats, best_nt, nt_file)
            r["neural-tangents"] = nt
            if "error" not in nt and "error" not in ours:
                ratios.append(nt["time"] / ours["time"])
                line += (f"\n    neural-tangents ({best_nt}): {fmt(nt, N)}; speed-up {ratios[-1]:.2f}x; "
                         f"max relative difference {agreement(ours_file, nt_file):.1e}")
            else:
                line += f"\n    neural-tangents ({best_nt}): {fmt(nt, N)}"
        rec["rounds"].append(r)
        print(line, flush=True)
    if ratios:
        med = statistics.median(ratios)
        rec["speedup_median"] = med
        print(f"speed-up (neural-tangents {best_nt} / limitlab): median {med:.2f}x, range {min(ratios):.2f}-"
              f"{max(ratios):.2f}x over {len(ratios)} rounds; target >= 10x: {'met' if med >= 10 else 'NOT met'}")

    if not a.skip_scaling:
        n = a.scaling_n
        sizes = [8, 16] if a.quick else [8, 16, 32]
        print(f"== growth with image size (Myrtle-5) and depth (16x16), N={n}, per entry ==", flush=True)
        for Hs, depth in [(h, 5) for h in sizes] + [(16, 7), (16, 10)]:
            ours = run(py, OURS, n, Hs, depth, 1, "auto")
            row = {"H": Hs, "depth": depth, "N": n, "limitlab": ours}
            line = f"Myrtle-{depth:<2d} {Hs:2d}x{Hs:<2d}: limitlab {fmt(ours, n)}"
            if peer:
                nt = run(a.nt_python, NT, n, Hs, depth, 1, best_nt if n % int(best_nt[5:] or 1) == 0 else "jit")
                row["neural-tangents"] = nt
                line += f"\n                 neural-tangents {fmt(nt, n)}"
                if "error" not in nt and "error" not in ours:
                    line += f"; ratio {nt['time'] / ours['time']:.2f}x"
            rec["scaling"].append(row)
            print(line, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()

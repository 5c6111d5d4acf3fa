"""Empirical-NTK ensembles: limitlab's Monte Carlo engine against neural-tangents, side by side.

    python benchmarks/bench_montecarlo.py                      # CPU: width 1024, depth 3, 256 inputs, 100 networks
    python benchmarks/bench_montecarlo.py --gpu                # GPU: width 4096, 1024 inputs, 64 networks (+ matmul fraction)
    python benchmarks/bench_montecarlo.py --nt-networks 4      # time neural-tangents on 4 networks and scale to all

neural-tangents runs in its own interpreter (``--nt-python``, default the private venv built
by shared/baselines/neural-tangents.sh); it is never imported here. Both sides compute the
per-network empirical NTK of a ReLU MLP (NTK parametrization, W_std^2 = 2, b_std^2 = 0.1) in
float64 on the same inputs; neural-tangents' ``monte_carlo_kernel_fn`` averages them. The
timed call is the second one (compilation excluded on both sides). When neural-tangents is
timed on fewer networks than limitlab, its time is scaled linearly (its cost is per network)
and the line says so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

NT_PYTHON = os.path.expanduser("~/.cache/limitlab-baselines/neural-tangents/bin/python")

NT_SCRIPT = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import neural_tangents as nt
from neural_tangents import stax
layers = []
for _ in range(cfg["depth"]):
    layers += [stax.Dense(cfg["width"], W_std=cfg["w"] ** 0.5, b_std=cfg["b"] ** 0.5), stax.Relu()]
init_fn, apply_fn, _ = stax.serial(*layers, stax.Dense(1, W_std=cfg["w"] ** 0.5, b_std=cfg["b"] ** 0.5))
X = jnp.asarray(np.load(cfg["inputs"]))
out = {}
for impl in cfg["implementations"]:
    kfn = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), n_samples=cfg["networks"],
                                   batch_size=1, implementation=impl, vmap_axes=0)
    t = time.perf_counter(); kfn(X, None, "ntk").block_until_ready(); first = time.perf_counter() - t
    t = time.perf_counter(); k = kfn(X, None, "ntk"); k.block_until_ready(); second = time.perf_counter() - t
    out[str(impl)] = {"first": first, "second": second, "k00": float(k[0, 0])}
print("RESULT" + json.dumps(out))
"""

NT_IMPLEMENTATIONS = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}


def time_limitlab(X, width, depth, networks, backend, method, repeats=2):
    from limitlab.theory.kernels import MLP
    from limitlab.verify.backend import get_backend
    from limitlab.verify.montecarlo import sample_kernels

    m = MLP(depth, "relu", weight_var=2.0, bias_var=0.1)
    bk = get_backend(backend)
    sample_kernels(m, X, width=width, n_networks=2, backend=bk, method=method)  # warm-up (imports, kernels)
    best, ks = np.inf, None
    for _ in range(repeats):
        bk.synchronize()
        t = time.perf_counter()
        ks = sample_kernels(m, X, width=width, n_networks=networks, backend=bk, method=method)
        bk.synchronize()
        best = min(best, time.perf_counter() - t)
    try:
        theory = m.ntk(X[:1])[0, 0]
    except Exception:  # the theory's compiled kernels are not needed for the timing
        theory = float("nan")
    return best, ks, theory


def time_nt(X, width, depth, networks, python, implementations):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, X)
        cfg = dict(width=width, depth=depth, networks=networks, w=2.0, b=0.1, inputs=path,
                   implementations=implementations)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("NT_CUDA_VISIBLE_DEVICES", ""),
                   TF_CPP_MIN_LOG_LEVEL="3")
        p = subprocess.run([python, "-c", NT_SCRIPT, json.dumps(cfg)], capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"neural-tangents run failed:\n{p.stderr[-3000:]}")


def matmul_peak(backend, n=None, dtype="float64"):
    """Measured FLOP/s of one large square matmul on the backend's device (the reference)."""
    from limitlab.verify.backend import get_backend

    bk = get_backend(backend, dtype=dtype)
    n = n or (8192 if bk.device_name != "cpu" else 2048)
    xp = bk.xp
    a = bk.asarray(np.random.default_rng(0).standard_normal((n, n)))
    xp.matmul(a, a)
    bk.synchronize()
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        xp.matmul(a, a)
        bk.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def flops_weights(N, d, width, depth):
    """FLOPs of one network by the materialized-weights method: forward, backward, Gram matrices."""
    n = width
    fwd = 2 * N * d * n + 2 * (depth - 1) * N * n * n + 2 * N * n
    bwd = 2 * (depth - 1) * N * n * n
    grams = (2 * depth + 1) * 2 * N * N * n + 2 * N * N * d
    return fwd + bwd + grams


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU configuration (width 4096, 1024 inputs, 64 networks)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--inputs", type=int)
    ap.add_argument("--networks", type=int)
    ap.add_argument("--dim", type=int, default=64, help="input dimension")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--nt-python", default=NT_PYTHON)
    ap.add_argument("--nt-networks", type=int, default=None, help="networks for neural-tangents (default: all)")
    ap.add_argument("--nt-implementations", default="3",
                    help="comma-separated neural-tangents NtkImplementation values (1 jacobian contraction, "
                         "2 NTK-vector products, 3 structured derivatives: its fastest for Dense)")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each limitlab method (best kept)")
    ap.add_argument("--methods", default="auto,weights,conditional", help="limitlab samplers to time")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    width = a.width or (4096 if a.gpu else 1024)
    N = a.inputs or (1024 if a.gpu else 256)
    S = a.networks or (64 if a.gpu else 100)
    backend = a.backend or ("auto" if a.gpu else "numpy")
    X = np.random.default_rng(0).standard_normal((N, a.dim))
    results = {"config": dict(width=width, depth=a.depth, inputs=N, networks=S, dim=a.dim, backend=backend)}
    print(f"empirical NTK ensemble: ReLU MLP depth {a.depth}, width {width}, {N} inputs (d={a.dim}), "
          f"{S} networks, float64, backend {backend}")
    ours = {}
    for method in a.methods.split(","):
        t, ks, theory = time_limitlab(X, width, a.depth, S, backend, method, a.repeats)
        label = f"limitlab {method}" + (f" (= {ks.method})" if method == "auto" else "")
        ours[method] = t
        print(f"  {label:38s} {t:9.3f} s   ({t / S * 1e3:.1f} ms/network; mean NTK[0,0] {ks.ntk[:, 0, 0].mean():.4f}"
              f", limit {theory:.4f})")
    results["limitlab_seconds"] = ours
    if a.gpu or backend != "numpy":
        peak = matmul_peak(backend)
        fl = flops_weights(N, a.dim, width, a.depth) * S
        tw = ours.get("weights", min(ours.values()))
        frac = fl / tw / peak
        results.update(matmul_peak_flops=peak, weights_flops=fl, weights_fraction_of_peak=frac)
        print(f"  device matmul throughput (float64, measured): {peak / 1e12:.2f} TFLOP/s; weights method achieves "
              f"{fl / tw / 1e12:.2f} TFLOP/s = {100 * frac:.0f}% of it")
    if not a.no_nt:
        if not os.path.exists(a.nt_python):
            print(f"  neural-tangents: interpreter {a.nt_python} not found (run shared/baselines/neural-tangents.sh)")
        else:
            k = min(a.nt_networks or S, S)
            impls = [int(v) for v in a.nt_implementations.split(",")]
            nt = time_nt(X, width, a.depth, k, a.nt_python, impls)
            results["neural_tangents"] = {"networks_timed": k, **nt}
            for impl, r in nt.items():
                total = r["second"] * S / k
                scaled = f" (timed on {k} networks, scaled x{S / k:g})" if k != S else ""
                print(f"  neural-tangents monte_carlo_kernel_fn [{NT_IMPLEMENTATIONS.get(int(impl), impl)}] "
                      f"{total:9.3f} s{scaled}; first call {r['first']:.2f} s; mean NTK[0,0] {r['k00']:.4f}")
                best = min(ours.values())
                print(f"  ratio neural-tangents / limitlab (best method): {total / best:.1f}x")
                results["neural_tangents"][impl]["ratio_best"] = total / best
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    main()

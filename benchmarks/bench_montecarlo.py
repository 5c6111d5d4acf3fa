"""Empirical-NTK ensembles: limitlab's Monte Carlo engine against neural-tangents, side by side.

    python benchmarks/bench_montecarlo.py                  # CPU: width 1024, depth 3, 256 inputs, 16 networks a call
    python benchmarks/bench_montecarlo.py --gpu            # GPU: width 4096, 1024 inputs, 64 networks (+ matmul fraction)
    python benchmarks/bench_montecarlo.py --repeats 7 --json out.json

Both sides compute the per-network empirical NTK of a ReLU MLP (NTK parametrization,
W_std^2 = 2, b_std^2 = 0.1) in float64 (JAX with ``jax_enable_x64``) on the same inputs.
limitlab is timed with ``method="auto"`` (on the CPU case, 256 inputs <= width/4: the
Gaussian-conditioning sampler) and, by default, also with ``method="weights"``.

neural-tangents runs in its own interpreter (``--nt-python``, or the ``NT_PYTHON``
environment variable; docs/benchmarks.md says how to build it); it is never imported here.
It is a long-lived subprocess, so its jit-compiled functions stay warm between calls. Every
neural-tangents configuration is its ``monte_carlo_kernel_fn`` with its defaults
(``batch_size=0``: no batching; ``store_on_device=True``; jit-compiled internally) except
the named settings: the plain defaults (``implementation=JACOBIAN_CONTRACTION``,
``vmap_axes=None``), the other ``NtkImplementation`` values (AUTO, NTK_VECTOR_PRODUCTS,
STRUCTURED_DERIVATIVES) with ``vmap_axes=None``, and all four with ``vmap_axes=0``
(documented as evaluating the Jacobians more efficiently for a network without
interactions across the batch, as here).

Procedure: (1) screening: every neural-tangents configuration is compiled and run on one
network (the first call: compilation plus one network), then called warm on one network
(the better of two calls when under 20 s; a configuration with a screening call over
``--nt-screen-timeout`` seconds is stopped and reported so); its compile time is the
first call minus the warm one. (2) ``--repeats`` rounds alternate the peers: each limitlab
method, then each neural-tangents configuration whose screening time is within ``--keep``
times the best one's (its ``--nt-networks``-network function compiled and run once
beforehand). (3) per-network medians over the rounds. A configuration left out of the
rounds is reported with its one-network screening time, marked so. The ratio is
neural-tangents' best configuration (least median) over limitlab's ``method="auto"``. On a
shared machine timings are noisy: medians over alternating rounds are what is compared,
never a best-of. Measured figures: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

NT_PYTHON = os.environ.get("NT_PYTHON", os.path.expanduser("~/.cache/limitlab-baselines/neural-tangents/bin/python"))

# neural-tangents configurations: label -> keyword arguments of monte_carlo_kernel_fn beyond its defaults
NT_CONFIGS = {
    "defaults (JACOBIAN_CONTRACTION)": {},
    "AUTO": {"implementation": 0},
    "NTK_VECTOR_PRODUCTS": {"implementation": 2},
    "STRUCTURED_DERIVATIVES": {"implementation": 3},
    "AUTO vmap_axes=0": {"implementation": 0, "vmap_axes": 0},
    "JACOBIAN_CONTRACTION vmap_axes=0": {"implementation": 1, "vmap_axes": 0},
    "NTK_VECTOR_PRODUCTS vmap_axes=0": {"implementation": 2, "vmap_axes": 0},
    "STRUCTURED_DERIVATIVES vmap_axes=0": {"implementation": 3, "vmap_axes": 0},
}

# A server: reads one JSON command a line on stdin, answers one "RESULT{json}" line on stdout.
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
assert X.dtype == jnp.float64
def send(obj):
    sys.stdout.write("RESULT" + json.dumps(obj) + "\n"); sys.stdout.flush()
def run(kfn):
    t = time.perf_counter(); k = kfn(X, None, "ntk"); k.block_until_ready()
    return time.perf_counter() - t, float(k[0, 0]), str(k.dtype)
send({"ready": True, "versions": {"neural_tangents": nt.__version__, "jax": jax.__version__},
      "devices": [str(d) for d in jax.devices()]})
kfns = {}
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "quit":
        break
    label, n = cmd["label"], cmd["networks"]
    try:
        if cmd["op"] == "compile":
            kw = dict(cfg["configs"][label])
            if "implementation" in kw:
                kw["implementation"] = nt.NtkImplementation(kw["implementation"])
            kfns[label, n] = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), n_samples=n, **kw)
        s, k00, dt = run(kfns[label, n])
        send({"label": label, "seconds": s, "k00": k00, "dtype": dt})
    except Exception as exc:
        send({"label": label, "error": f"{type(exc).__name__}: {exc}"[:500]})
"""


class NTServer:
    """The neural-tangents interpreter, kept alive so that its compiled functions stay warm."""

    def __init__(self, python, cfg):
        self.python, self.cfg = python, cfg
        self.p = None
        self.info = None

    def start(self, timeout):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("NT_CUDA_VISIBLE_DEVICES", ""),
                   TF_CPP_MIN_LOG_LEVEL="3")
        self.p = subprocess.Popen([self.python, "-c", NT_SCRIPT, json.dumps(self.cfg)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.q = queue.Queue()
        self.err = []
        threading.Thread(target=self._pump, args=(self.p.stdout, self.q), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, None), daemon=True).start()
        self.info = self._answer(timeout)
        if self.info is None:
            raise RuntimeError("neural-tangents did not start:\n" + "".join(self.err[-40:]))

    def _pump(self, stream, q):
        for line in stream:
            if q is not None and line.startswith("RESULT"):
                q.put(json.loads(line[6:]))
            elif q is None:
                self.err.append(line)
                del self.err[:-200]
        if q is not None:
            q.put(None)

    def _answer(self, timeout):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def request(self, op, label, networks, timeout):
        """The answer to one command, or {"error": ...} (the server is restarted after a timeout)."""
        if self.p is None or self.p.poll() is not None:
            self.start(max(timeout, 300.0))  # a restart after a stopped call
        self.p.stdin.write(json.dumps({"op": op, "label": label, "networks": networks}) + "\n")
        self.p.stdin.flush()
        r = self._answer(timeout)
        if r is None:
            self.stop()
            return {"label": label, "error": f"no answer within {timeout:g} s (process stopped)"}
        return r

    def stop(self):
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p = None


def limitlab_timer(X, width, depth, networks, backend, method):
    """A function timing one call of sample_kernels (warmed up once here)."""
    from limitlab.theory.kernels import MLP
    from limitlab.verify.backend import get_backend
    from limitlab.verify.montecarlo import sample_kernels

    m = MLP(depth, "relu", weight_var=2.0, bias_var=0.1)
    bk = get_backend(backend)
    sample_kernels(m, X, width=width, n_networks=2, backend=bk, method=method)  # warm-up (imports, kernels)
    out = {}

    def once():
        bk.synchronize()
        t = time.perf_counter()
        ks = sample_kernels(m, X, width=width, n_networks=networks, backend=bk, method=method)
        bk.synchronize()
        out["ks"] = ks
        return time.perf_counter() - t

    try:
        out["theory"] = float(m.ntk(X[:1])[0, 0])
    except Exception:  # the theory's compiled kernels are not needed for the timing
        out["theory"] = float("nan")
    return once, out


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
    ap.add_argument("--networks", type=int, help="networks per limitlab call (default 16 on the CPU, 64 on a GPU)")
    ap.add_argument("--dim", type=int, default=64, help="input dimension")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--nt-python", default=NT_PYTHON, help="neural-tangents' interpreter (default: $NT_PYTHON, "
                                                             "else ~/.cache/limitlab-baselines/neural-tangents)")
    ap.add_argument("--nt-networks", type=int, default=None, help="networks per neural-tangents call (default 4)")
    ap.add_argument("--nt-configs", default=",".join(NT_CONFIGS),
                    help="comma-separated neural-tangents configurations, from: " + ", ".join(NT_CONFIGS))
    ap.add_argument("--nt-timeout", type=float, default=900.0, help="seconds one neural-tangents call may take")
    ap.add_argument("--nt-screen-timeout", type=float, default=180.0,
                    help="seconds each one-network screening call may take (a configuration slower than that is "
                         "stopped, reported as such and left out)")
    ap.add_argument("--keep", type=float, default=2.5,
                    help="neural-tangents configurations whose screening time is within this factor of the best "
                         "one's take part in the alternating rounds")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed rounds (medians reported)")
    ap.add_argument("--methods", default="auto,weights",
                    help="limitlab samplers to time, comma-separated (auto, weights, conditional)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    width = a.width or (4096 if a.gpu else 1024)
    N = a.inputs or (1024 if a.gpu else 256)
    S = a.networks or (64 if a.gpu else 16)
    K = a.nt_networks or 4
    backend = a.backend or ("auto" if a.gpu else "numpy")
    X = np.random.default_rng(0).standard_normal((N, a.dim))
    methods = a.methods.split(",")
    results = {"config": dict(width=width, depth=a.depth, inputs=N, dim=a.dim, dtype="float64", backend=backend,
                              limitlab_networks_per_call=S, nt_networks_per_call=K, repeats=a.repeats,
                              cpu_count=os.cpu_count(), load_average_start=os.getloadavg())}
    print(f"empirical NTK: ReLU MLP depth {a.depth}, width {width}, {N} inputs (d={a.dim}), float64, backend "
          f"{backend}; limitlab {S} networks a call, neural-tangents {K}; {a.repeats} alternating rounds, medians; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

    timers = {m: limitlab_timer(X, width, a.depth, S, backend, m) for m in methods}
    ours = {m: [] for m in methods}

    nt_server, nt = None, {}
    if not a.no_nt:
        if not os.path.exists(a.nt_python):
            print(f"  neural-tangents: interpreter {a.nt_python} not found (see docs/benchmarks.md)")
        else:
            tmp = tempfile.mkdtemp()
            path = os.path.join(tmp, "x.npy")
            np.save(path, X)
            labels = [c.strip() for c in a.nt_configs.split(",") if c.strip()]
            cfg = dict(width=width, depth=a.depth, w=2.0, b=0.1, inputs=path,
                       configs={c: NT_CONFIGS[c] for c in labels})
            nt_server = NTServer(a.nt_python, cfg)
            nt_server.start(a.nt_timeout)
            results["nt_versions"] = nt_server.info
            print(f"  neural-tangents {nt_server.info['versions']} on {nt_server.info['devices']}", flush=True)
            # screening, on one network: compile + first call, then warm calls (the better of two,
            # unless the first takes over 20 s)
            for c in labels:
                r1 = nt_server.request("compile", c, 1, a.nt_screen_timeout)
                r2 = nt_server.request("time", c, 1, a.nt_screen_timeout) if "error" not in r1 else r1
                if "error" not in r2 and r2["seconds"] < 20:
                    r3 = nt_server.request("time", c, 1, a.nt_timeout)
                    r2 = r3 if "error" in r3 or r3["seconds"] < r2["seconds"] else r2
                nt[c] = {"kwargs": NT_CONFIGS[c], "first_one_network": r1.get("seconds"), "screen": r2.get("seconds"),
                         "compile_seconds": None if "error" in r2 else r1["seconds"] - r2["seconds"],
                         "k00": r2.get("k00"), "error": r2.get("error"), "times": []}
                msg = (f"first call {r1['seconds']:.2f} s, warm {r2['seconds']:.2f} s (one network)"
                       if "error" not in r2 else f"failed: {r2['error']}")
                print(f"  screening neural-tangents [{c}]: {msg}", flush=True)
    ok = [c for c in nt if nt[c]["error"] is None]
    best_screen = min((nt[c]["screen"] for c in ok), default=None)
    rounds = [c for c in ok if nt[c]["screen"] <= a.keep * best_screen] if ok else []
    for c in rounds:  # their K-network functions, compiled and run once before the rounds
        r = nt_server.request("compile", c, K, a.nt_timeout)
        if "error" in r:
            nt[c]["error"] = r["error"]
    rounds = [c for c in rounds if nt[c]["error"] is None]
    if nt:
        print(f"  alternating rounds include: {', '.join(rounds) or 'no neural-tangents configuration'}", flush=True)

    for r in range(a.repeats):
        for m in methods:
            ours[m].append(timers[m][0]())
        for c in rounds:
            res = nt_server.request("time", c, K, a.nt_timeout)
            if "error" in res:
                nt[c]["error"] = res["error"]
            else:
                nt[c]["times"].append(res["seconds"])
                nt[c]["k00"] = res["k00"]
        print(f"  round {r + 1}: " + ", ".join(f"limitlab {m} {ours[m][-1] / S * 1e3:.0f} ms/net" for m in methods)
              + "".join(f", [{c}] {nt[c]['times'][-1] / K * 1e3:.0f} ms/net" for c in rounds if nt[c]["times"]),
              flush=True)
    if nt_server is not None:
        nt_server.stop()

    print("per-network times (median over rounds):")
    per_ours = {}
    for m in methods:
        ks, theory = timers[m][1]["ks"], timers[m][1]["theory"]
        per_ours[m] = statistics.median(ours[m]) / S
        label = f"limitlab {m}" + (f" (= {ks.method})" if m == "auto" else "")
        print(f"  {label:54s} {per_ours[m] * 1e3:8.1f} ms/network  (rounds: "
              f"{', '.join(f'{t / S * 1e3:.0f}' for t in ours[m])}; mean NTK[0,0] {ks.ntk[:, 0, 0].mean():.4f}, "
              f"limit {theory:.4f})")
    results["limitlab"] = {m: {"seconds_per_call": ours[m], "per_network_median": per_ours[m]} for m in methods}
    for c, v in nt.items():
        if v["times"]:
            v["per_network_median"] = statistics.median(v["times"]) / K
            how = "rounds: " + ", ".join(f"{t / K * 1e3:.0f}" for t in v["times"])
        elif v["error"] is None:
            v["per_network_median"] = v["screen"]
            how = f"one network, screening only: > {a.keep:g}x the best"
        else:
            print(f"  neural-tangents [{c}]: failed ({v['error']})")
            continue
        comp = v["compile_seconds"]
        comp = (f"compile ~{comp:.1f} s" if comp > 0 else
                "compile time not resolved: the warm call took longer than the first")
        print(f"  neural-tangents [{c}]".ljust(56) + f" {v['per_network_median'] * 1e3:8.1f} ms/network  ({how}; "
              f"{comp}; mean NTK[0,0] {v['k00']:.4f})")
    results["neural_tangents"] = nt
    timed = {c: v for c, v in nt.items() if v["times"]}
    if timed:
        best = min(timed, key=lambda c: timed[c]["per_network_median"])
        ref = per_ours.get("auto", min(per_ours.values()))
        ratio = timed[best]["per_network_median"] / ref
        results.update(nt_best=best, ratio=ratio)
        print(f"ratio neural-tangents best [{best}] / limitlab {'auto' if 'auto' in per_ours else 'best'}: "
              f"{timed[best]['per_network_median'] * 1e3:.1f} / {ref * 1e3:.1f} ms per network = {ratio:.2f}x")
    if a.gpu or backend != "numpy":
        peak = matmul_peak(backend)
        fl = flops_weights(N, a.dim, width, a.depth)
        tw = min(per_ours.values())
        frac = fl / tw / peak
        results.update(matmul_peak_flops=peak, weights_flops_per_network=fl, weights_fraction_of_peak=frac)
        print(f"  device matmul throughput (float64, measured): {peak / 1e12:.2f} TFLOP/s; limitlab achieves "
              f"{fl / tw / 1e12:.2f} TFLOP/s = {100 * frac:.0f}% of it")
    results["load_average_end"] = os.getloadavg()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    main()

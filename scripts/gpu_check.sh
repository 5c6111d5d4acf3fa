#!/usr/bin/env bash
# GPU check of limitlab.verify: the GPU-marked tests, a quick `limitlab verify` on the GPU
# backend, and the GPU benchmark (width 4096, 1024 inputs, 64 networks, depth 3, float64,
# with the achieved fraction of the device's measured matmul throughput). Logs go to $OUT.
#
#   run(command="bash scripts/gpu_check.sh", timeout_s=420)        # device tool, repository root
#
# Needs python with torch (or cupy) and a CUDA device. limitlab is made importable without
# network access: `pip install -e . --no-deps` if possible, else a symlink shim on PYTHONPATH;
# missing runtime deps are pip-installed quietly when an index is reachable. Total < 5 min.
set -u
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
"$PY" - <<'PYEOF'
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch unavailable:", e)
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as e:
    print("cupy unavailable:", type(e).__name__)
PYEOF

step "dependencies"
missing=$("$PY" - <<'PYEOF'
import importlib
mods = {"numpy": "numpy", "scipy": "scipy", "sympy": "sympy", "mpmath": "mpmath", "numba": "numba",
        "array_api_compat": "array-api-compat", "tqdm": "tqdm", "matplotlib": "matplotlib",
        "pytest": "pytest", "hypothesis": "hypothesis", "threadpoolctl": "threadpoolctl"}
out = []
for m, pkg in mods.items():
    try:
        importlib.import_module(m)
    except Exception:
        out.append(pkg)
print(" ".join(out))
PYEOF
)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  # wheels brought along in .whl/ first (the device machine may have no package index)
  for pkg in $missing; do
    timeout 60 "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links .whl "$pkg" 2>/dev/null \
      || timeout 60 "$PY" -m pip install -q --disable-pip-version-check "$pkg" || echo "pip install $pkg failed (offline?)"
  done
fi
if ! "$PY" -c "import limitlab.verify" 2>/dev/null; then
  timeout 60 "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    >/dev/null 2>&1 || true
fi
if ! "$PY" -c "import limitlab.verify" 2>/dev/null; then
  SHIM="$(mktemp -d)/shim"
  mkdir -p "$SHIM/limitlab"
  for f in theory numerics verify; do ln -s "$PWD/$f" "$SHIM/limitlab/$f"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  echo "using import shim $SHIM"
fi
"$PY" -c "import limitlab.verify, limitlab.verify.backend as b; print('backend auto ->', b.get_backend('auto').describe())"

step "GPU tests"
timeout 200 "$PY" -m pytest tests/verify/test_gpu.py tests/verify/test_backend.py tests/verify/collapse -m "not slow" -q -rs -p no:cacheprovider \
  --junitxml="$OUT/gpu_tests.xml"
echo "pytest exit code: $?"

step "limitlab verify --backend auto (quick, two kernel checks)"
timeout 90 "$PY" -c "import sys; from limitlab.verify.cli import main; sys.exit(main(sys.argv[1:]))" \
  verify kernels.relu.d3.ntk kernels.gelu.d1.standard --quick --backend auto --no-progress --out "$OUT/verify"
echo "limitlab verify exit code: $?"

step "GPU benchmark (width 4096, 1024 inputs, 64 networks, depth 3)"
timeout 150 "$PY" benchmarks/bench_montecarlo.py --gpu --no-nt --json "$OUT/bench_gpu.json"
echo "benchmark exit code: $?"
step "done"

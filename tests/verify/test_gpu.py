"""GPU backends (run by scripts/gpu_check.sh on a machine with CUDA; skipped elsewhere)."""
import math

import numpy as np
import pytest

from limitlab.verify import montecarlo as mc

pytestmark = pytest.mark.gpu


def _cuda_backends():
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            out.append("torch")
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append("cupy")
    except Exception:
        pass
    return out


BACKENDS = _cuda_backends()
needs_gpu = pytest.mark.skipif(not BACKENDS, reason="no CUDA device with torch or cupy")
X = np.random.default_rng(0).standard_normal((5, 6))


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
def test_gpu_kernels_equal_cpu_kernels_of_the_same_weights(backend):
    spec = mc.as_spec(None, 64, depth=3, activation="gelu", weight_var=1.5, bias_var=0.1, parametrization="standard")
    gpu = mc.Networks.sample(spec, 6, 4, seed=1, backend=backend)
    cpu = mc.Networks(spec, 6, [gpu.backend.to_numpy(w) for w in gpu.weights],
                      [gpu.backend.to_numpy(b) for b in gpu.biases], mc.get_backend("numpy"), gpu.seeds)
    for a, b in zip(gpu.kernels(X), cpu.kernels(X)):
        np.testing.assert_allclose(gpu.backend.to_numpy(a), b, rtol=1e-10, atol=1e-12)


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
@pytest.mark.parametrize("method", ["weights", "conditional"])
def test_gpu_ensemble_matches_the_limiting_kernels(backend, method):
    from limitlab.theory.kernels import MLP

    m = MLP(2, "erf", weight_var=1.5, bias_var=0.1)
    K, T = m.kernels(X)
    ks = mc.sample_kernels(m, X, width=1024, n_networks=256, seed=2, backend=backend, method=method)
    assert ks.backend == backend
    for emp, th in ((ks.nngp, K), (ks.ntk, T)):
        mean, se = emp.mean(0), emp.std(0, ddof=1) / math.sqrt(emp.shape[0])
        assert np.all(np.abs(mean - th) < 5 * se + 2e-3 * np.abs(th))


@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
def test_gpu_training_matches_cpu_training(backend):
    spec = mc.as_spec(None, 32, depth=2, activation="tanh", bias_var=0.1)
    y = np.linspace(-1, 1, 5)
    g = mc.train(spec, X, y, lr=0.5, steps=20, n_networks=3, seed=4, backend=backend)
    gpu_nets = mc.Networks.sample(spec, 6, 3, seed=4, backend=backend)
    cpu_nets = mc.Networks(spec, 6, [gpu_nets.backend.to_numpy(w) for w in gpu_nets.weights],
                           [gpu_nets.backend.to_numpy(b) for b in gpu_nets.biases], mc.get_backend("numpy"),
                           gpu_nets.seeds)
    for _ in range(20):
        cpu_nets.loss_and_step(X, y[:, None], 0.5)
    np.testing.assert_allclose(g.f_train[:, -1], cpu_nets.forward(X), rtol=1e-8, atol=1e-10)

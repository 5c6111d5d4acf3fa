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
    from limitlab.theory.kernels import stax
    from limitlab.verify import networks as nw

    std = dict(weight_var=1.5, bias_var=0.1, parametrization="standard")
    net = stax.serial(stax.Dense(64, **std), stax.Gelu(), stax.Dense(64, **std), stax.Gelu(), stax.Dense(1, **std))
    gpu = nw.FiniteNetworks.sample(net, (6,), 4, seed=1, backend=backend)
    cpu = nw.FiniteNetworks(gpu.net, (6,), [gpu.backend.to_numpy(p) for p in gpu.params], mc.get_backend("numpy"),
                            gpu.seeds)
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
@pytest.mark.parametrize("parametrization", ["layers", "mup"])
def test_gpu_training_matches_cpu_training(backend, parametrization):
    """The engine's gradient descent: the same draws trained on the GPU and on the CPU."""
    from limitlab.theory.kernels import stax
    from limitlab.verify import networks as nw

    net = stax.serial(stax.Dense(32, bias_var=0.1), stax.Tanh(), stax.Dense(32), stax.Tanh(), stax.Dense(1, bias_var=0.1))
    y = np.linspace(-1, 1, 5)
    kw = dict(lr=0.5, steps=20, width=32, parametrization=parametrization, n_networks=3, record_every=10,
              record=("ntk",))
    init = [mc.get_backend(backend).to_numpy(p) for p in
            nw.FiniteNetworks.sample(net, (6,), 3, seed=4, backend=backend, width=32).params]
    g = nw.train(net, X, y, backend=backend, init=init, **kw)
    c = nw.train(net, X, y, backend="numpy", init=init, **kw)
    assert g.backend == backend
    np.testing.assert_allclose(g.f_train, c.f_train, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g.ntk_train, c.ntk_train, rtol=1e-8, atol=1e-10)
    assert np.all(g.loss[:, -1] < g.loss[:, 0])

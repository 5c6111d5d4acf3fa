"""limitlab.theory — the mathematics: what each quantity is (sympy), handed to numerics to compute.

Pillars: ``kernels`` (NNGP/NTK, duals, signal propagation), ``dynamics`` (gradient flow,
DMFT, deep linear networks, parametrizations), ``collapse`` (neural-collapse geometry),
``risk`` (random-feature and kernel ridge risk). ``activations`` holds every activation
with its kernel map beside it.
"""
from limitlab.theory import activations, kernels
from limitlab.theory.kernels import MLP, dual

__all__ = ["activations", "kernels", "MLP", "dual", "collapse", "dynamics", "risk"]


def __getattr__(name):  # pillars load on first use: `from limitlab import theory; theory.risk`
    if name in ("collapse", "dynamics", "risk"):
        import importlib

        return importlib.import_module(f"limitlab.theory.{name}")
    raise AttributeError(name)

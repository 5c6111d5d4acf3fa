"""Limiting kernels: activation duals, the MLP NNGP/NTK recursion, signal propagation."""
from limitlab.theory.kernels.dual import Dual, dual
from limitlab.theory.kernels.mlp import MLP, Kernels
from limitlab.theory.kernels import stax  # noqa: F401  composable layers: stax.serial, stax.Conv, ...

__all__ = ["Dual", "dual", "MLP", "Kernels"]

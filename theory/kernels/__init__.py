"""Limiting kernels: activation duals, the MLP NNGP/NTK recursion, signal propagation."""
from limitlab.theory.kernels.dual import Dual, dual
from limitlab.theory.kernels.mlp import MLP, Kernels
from limitlab.theory.kernels import stax  # noqa: F401  composable layers: stax.serial, stax.Conv, ...
from limitlab.theory.kernels.normalization import LayerNorm, Dropout  # noqa: F401  stax layers
from limitlab.theory.kernels.attention import GlobalSelfAttention  # noqa: F401  stax layer
from limitlab.theory.kernels.finite_width import finite_width, FiniteWidth
from limitlab.theory.kernels.dntk import DNTK, dntk_single_input
from limitlab.theory.kernels.scale import lazy_kernels, open_kernels, write_kernels

__all__ = ["Dual", "dual", "MLP", "Kernels", "write_kernels", "open_kernels", "lazy_kernels", "finite_width", "FiniteWidth",
           "DNTK", "dntk_single_input"]

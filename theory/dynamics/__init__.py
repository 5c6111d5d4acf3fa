"""Training dynamics: infinite-width gradient flow, DMFT from lazy to rich, deep linear networks, parametrizations.

Modules: :mod:`gradient_flow` (NTK/NNGP ensemble predictions of MSE gradient descent),
:mod:`dmft` (Bordelon & Pehlevan 2022 order parameters), :mod:`deep_linear` (Saxe et al.
2014 exact mode dynamics), :mod:`parametrizations` (Yang & Hu 2021 abc-classification, muP).
"""
from . import deep_linear, dmft, gradient_flow, parametrizations
from .dmft import deep, kernel_alignment, two_layer, two_layer_linear_whitened
from .gradient_flow import gradient_descent_mse_ensemble, predict_mlp
from .parametrizations import classify, mup_table, preset

__all__ = ["gradient_flow", "dmft", "deep_linear", "parametrizations", "gradient_descent_mse_ensemble",
           "predict_mlp", "two_layer", "deep", "two_layer_linear_whitened", "kernel_alignment", "classify",
           "preset", "mup_table"]

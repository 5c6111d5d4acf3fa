"""Dynamical mean field theory of feature learning (Bordelon & Pehlevan 2022).

Network (muP / mean-field scaling, their eq. (1)): ``h^1 = W^0 x / sqrt(D)``,
``h^{l+1} = W^l phi(h^l) / sqrt(N)``, ``f = w^L . phi(h^L) / (gamma0 N)``, all weights
N(0, 1), trained by gradient descent of step ``dt`` (the argument ``lr``) on the sum loss
``sum_mu (f_mu - y_mu)^2 / 2`` with the rate multiplied by gamma^2 = gamma0^2 N. Then
``df/dt = K(t) Delta(t)``, ``Delta = y - f``, with the evolving NTK (their eq. (5))
``K(t, s) = sum_{l=0}^{L} G^{l+1}(t, s) * Phi^l(t, s)``, ``Phi^0 = K^x = X X^T / D``,
``G^{L+1} = 1``, feature kernels ``Phi^l = <phi(h^l) phi(h^l)>`` and gradient kernels
``G^l = <g^l g^l>``. At gamma0 = 0 the NTK stays at ``MLP(depth, weight_var=1,
bias_var=0).ntk`` (the lazy limit); gamma0 > 0 learns features.

Time is discrete: every solver here is the exact infinite-width limit of *gradient
descent with step dt* (fields at steps k = 0..T), so a finite network trained with the same
step converges to it as width grows, and gamma0 -> 0 gives discrete NTK gradient descent,
``f_k = (I - (I - dt Theta)^k) y`` (:mod:`gradient_flow` with ``steps=True``,
``lr=dt``, ``normalization=1``). dt -> 0 gives the gradient flow.

Three solvers:

* :func:`two_layer` — any activation; Monte Carlo over the single-site process of
  B&P sec. 3 (``dh = gamma0 w K^x (Delta * phi'(h)) dt``, ``dw = gamma0 (phi(h) . Delta) dt``;
  sites couple only through Delta), compiled with Numba, parallel over samples. The
  output increment is the exact discrete one, ``<w_{k+1} phi(h_{k+1}) - w_k phi(h_k)> / gamma0``,
  with a control variate: the Monte Carlo NTK at step 0 is replaced by the exact one.
* :func:`linear` — linear networks of any depth: the closed equations of B&P
  sec. 5 / app. (fields linear in their Gaussian sources) with response functions A, B,
  solved exactly by one causal pass over the time steps in a compact form (O(L P T^3));
  ``method="picard"`` keeps the reference damped Picard iteration over all order parameters.
* :func:`deep` — nonlinear MLPs: the full single-site process with response functions
  ``A^l = gamma0^-1 <d phi(h^l) / d r^l>`` and ``B^l = gamma0^-1 <d g^{l+1} / d u^{l+1}>``
  estimated by Gaussian integration by parts (B&P app. "Monte Carlo"), damped fixed-point
  iteration (``limitlab.numerics.solvers.fixed_point``), convergence reported.

:func:`two_layer_linear_whitened` is the closed form for a two-layer linear network on
one whitened input, ``df/dt = 2 sqrt(1 + gamma0^2 f^2) (y - f)``: the depth-1 case of the
deep linear equations of B. Bordelon and C. Pehlevan, "Self-Consistent Dynamical Field
Theory of Kernel Evolution in Wide Neural Networks", NeurIPS 2022, arXiv:2205.09653,
sec. 5 (linear networks); derived in its docstring and in docs/dynamics.md.

Divergence: gradient descent with too large a step diverges, and so does its
infinite-width limit. Every solver checks the training error ``|y - f(t)|`` (largest
over the samples): a non-finite value, or growth beyond ``max_error_growth`` (default
1e3) times its value at step 0 (``|y|``, as f(0) = 0), is reported as non-convergence
(``solver.converged=False`` and a ``solver.message``; ``strict=True`` raises
``ConvergenceError``). The
lazy limit is stable iff ``dt * max eig(NTK(0)) < 2``; feature learning changes the NTK,
so larger gamma0 can diverge at smaller dt.

Every solver takes ``steps`` (T, the number of gradient descent steps) and ``lr`` (the
learning rate, the paper's time step dt); ``T=`` and ``dt=`` still work, deprecated.

Layout: ``_common`` (checks, divergence, :class:`DeepResult`), ``_two_layer``, ``_linear``,
``_deep``; import everything from this package. ``deep_linear`` is the deprecated name of
:func:`linear` (it read like the module ``limitlab.theory.dynamics.deep_linear``, Saxe et al.).
"""
from __future__ import annotations

import warnings

from ._common import DeepResult, input_kernel, kernel_alignment, lazy_prediction
from ._deep import deep
from ._linear import linear
from ._two_layer import TwoLayerResult, two_layer, two_layer_linear_whitened

__all__ = ["TwoLayerResult", "DeepResult", "two_layer", "linear", "deep", "two_layer_linear_whitened",
           "input_kernel", "kernel_alignment", "lazy_prediction"]


def deep_linear(*args, **kwargs) -> DeepResult:
    """Deprecated name of :func:`linear` (deep linear DMFT)."""
    warnings.warn("dmft.deep_linear is deprecated; use dmft.linear (the module limitlab.theory.dynamics.deep_linear "
                  "is Saxe et al.'s exact solution, a different thing)", DeprecationWarning, stacklevel=2)
    return linear(*args, **kwargs)

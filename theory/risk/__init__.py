"""Random-feature and kernel ridge risk: exact asymptotic test risk, double descent included.

Sources (docs/risk.md): Mei & Montanari 2019 (random features), Hastie et al. 2022 (linear
ridge), Bordelon et al. 2020 / Canatar et al. 2021 / Simon et al. 2021 (eigenframework for
kernel ridge), Simon et al. 2023 "More is Better" (random-feature eigenframework),
Funk–Hecke / Gegenbauer spectra of dot-product kernels on the sphere.
"""
from .eigenlearning import (KernelRidgeRisk, RandomFeatureRidgeRisk, effective_regularization,
                            eigenlearning_equations, kernel_ridge, power_law_problem, random_feature_ridge,
                            scaling_exponent, tuned_ridge)
from .linear_ridge import LinearRidgeRisk, linear_ridge, linear_ridge_equations, linear_ridge_optimal
from .random_features import (RandomFeaturesRisk, activation_coefficients, random_features,
                              random_features_equations)
from .sphere_spectra import SphereSpectrum, dot_product_kernel, gegenbauer_quadrature, multiplicity, sphere_spectrum

__all__ = ["RandomFeaturesRisk", "activation_coefficients", "random_features", "random_features_equations",
           "LinearRidgeRisk", "linear_ridge", "linear_ridge_optimal", "linear_ridge_equations",
           "KernelRidgeRisk", "RandomFeatureRidgeRisk", "kernel_ridge", "random_feature_ridge", "tuned_ridge",
           "effective_regularization", "eigenlearning_equations", "scaling_exponent", "power_law_problem",
           "SphereSpectrum", "sphere_spectrum", "dot_product_kernel", "multiplicity", "gegenbauer_quadrature"]

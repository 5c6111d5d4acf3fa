"""Random-feature and kernel ridge risk: exact asymptotic test risk, double descent included.

Sources (docs/risk.md): Mei & Montanari 2019 (random features), Hastie et al. 2022 (linear
ridge), Bordelon et al. 2020 / Canatar et al. 2021 / Simon et al. 2021 (eigenframework for
kernel ridge), Simon et al. 2023 "More is Better" (random-feature eigenframework),
Funk–Hecke / Gegenbauer spectra of dot-product kernels on the sphere.
"""
from .random_features import (RandomFeaturesRisk, activation_coefficients, random_features,
                              random_features_equations)

__all__ = ["RandomFeaturesRisk", "activation_coefficients", "random_features", "random_features_equations"]

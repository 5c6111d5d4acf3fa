"""Neural-collapse geometry: simplex ETF and orthogonal frames, NC metrics (streamed),
exact global minimizers of the unconstrained-features model (Dang et al. 2023) and
minority collapse in the layer-peeled model (Fang et al. 2021). See docs/collapse.md."""
from .simplex_etf import orthogonal_frame, orthogonal_frame_gram, simplex_etf, simplex_etf_gram
from .metrics import CollapseAccumulator, CollapseMetrics, NCCAgreement, metrics

__all__ = ["simplex_etf", "simplex_etf_gram", "orthogonal_frame", "orthogonal_frame_gram",
           "metrics", "CollapseAccumulator", "NCCAgreement", "CollapseMetrics"]
from .ufm import UFMGeometry, ufm_global_minimizer, ufm_objective, ufm_realize, ufm_sympy, ufm_thresholds
from .minority import MinorityCollapse, lpm_loss, minority_collapse

__all__ += ["UFMGeometry", "ufm_global_minimizer", "ufm_objective", "ufm_realize", "ufm_sympy", "ufm_thresholds",
            "MinorityCollapse", "lpm_loss", "minority_collapse"]

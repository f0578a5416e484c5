"""Numbers over runs: statistics, efficiency figures, comparisons, sweeps, scaling fits, the
energy predictor, carbon and cost.  Numbers only: imports store and the base modules, never
views (no plotting), measure or cli."""
from .carbon import footprint, footprint_runs
from .comparison import compare
from .efficiency import (ARCH_FEATURES, FIGURE_UNITS, active_params, architecture_scaling, compare_groups, efficiency,
                         figure_value, model_dict, summaries)
from .predict import Predictor
from .stats import OLSResult, figure, mean_ci, normal_quantile, ols, t_cdf, t_quantile, welch
from .sweep import SweepResult, load_sweep

__all__ = ["footprint", "footprint_runs", "compare", "ARCH_FEATURES", "FIGURE_UNITS", "active_params",
           "architecture_scaling", "compare_groups", "efficiency", "figure_value", "model_dict", "summaries",
           "Predictor", "OLSResult", "figure", "mean_ci", "normal_quantile", "ols", "t_cdf", "t_quantile", "welch",
           "SweepResult", "load_sweep"]

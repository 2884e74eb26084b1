"""jaxeff.coreset: logistic-regression coresets and sketches, exact μ by LP, feature sketching.

* :mod:`~jaxeff.coreset.logistic`  ``logistic_loss``, ``fit_logistic`` (jit Newton / optax L-BFGS)
* :mod:`~jaxeff.coreset.samplers`  ``uniform``, ``sqrt_leverage``, ``lewis_weights``,
  ``augmented_sensitivity`` (jit, shardable), ``coreset_probabilities``, ``merge_and_reduce``
* :mod:`~jaxeff.coreset.oblivious` ``oblivious_sketch`` (multilevel hashing), its loss and fit
* :mod:`~jaxeff.coreset.mu`        exact ``mu`` by a d-row LP, ``mu_bounds_mssw``
* :mod:`~jaxeff.coreset.features`  ``project_features``, ``select_features``, ``fit_sketched_features``
* :mod:`~jaxeff.coreset.data`      ``make_coreset_data`` (Covertype/KDD/Webspam-shaped data)

References: arXiv 2412.02639, 2303.14284, 1805.08571, 2107.06615, 2406.00328.
"""
from jaxeff.coreset.data import make_coreset_data
from jaxeff.coreset.features import (
    FeatureProjection,
    FeatureSketchFit,
    fit_sketched_features,
    fwht,
    project_features,
    select_features,
)
from jaxeff.coreset.logistic import LogisticFit, LogisticFitStatus, fit_logistic, logistic_loss
from jaxeff.coreset.mu import MuBounds, MuResult, MuStatus, mu, mu_bounds_mssw, mu_ratio
from jaxeff.coreset.oblivious import (
    ObliviousSketch,
    fit_oblivious_sketch,
    oblivious_level_probabilities,
    oblivious_sketch,
    oblivious_sketch_loss,
)
from jaxeff.coreset.samplers import (
    CORESET_SAMPLERS,
    Coreset,
    augmented_sensitivity,
    coreset_probabilities,
    lewis_weights,
    merge_and_reduce,
    sqrt_leverage,
    take_coreset,
    uniform,
)

__all__ = [
    "logistic_loss", "fit_logistic", "LogisticFit", "LogisticFitStatus",
    "uniform", "sqrt_leverage", "lewis_weights", "augmented_sensitivity", "coreset_probabilities",
    "CORESET_SAMPLERS", "Coreset", "take_coreset", "merge_and_reduce",
    "oblivious_sketch", "oblivious_sketch_loss", "fit_oblivious_sketch", "ObliviousSketch",
    "oblivious_level_probabilities",
    "mu", "MuResult", "MuStatus", "mu_bounds_mssw", "MuBounds", "mu_ratio",
    "project_features", "select_features", "fit_sketched_features", "FeatureProjection",
    "FeatureSketchFit", "fwht",
    "make_coreset_data",
]

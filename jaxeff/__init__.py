"""jaxeff: accelerator-native JAX implementations of efficient-ML research.

Families (each a subpackage with its own ``__all__``):

* :mod:`jaxeff.distill`   knowledge-distillation losses, fused chunked lm-head loss, on-policy KD
* :mod:`jaxeff.quant`     quantized arrays, formats, QAT, PTQ (RTN/GPTQ/AWQ/SmoothQuant/QuantEase)
* :mod:`jaxeff.prune`     scores, masks, schedules (optax wrapper), SparseGPT, OSSCAR, shrinking
* :mod:`jaxeff.sam`       mSAM / SAM / ASAM as optax transformations
* :mod:`jaxeff.stability` Hessian tools, coherence, SGD linear-stability predictor
* :mod:`jaxeff.rounding`  stochastic rounding to float formats and grids
* :mod:`jaxeff.coreset`   logistic-regression coresets, sketches, exact mu by LP
* :mod:`jaxeff.sketch`    linear sketches, sketched k-means and dictionary learning
* :mod:`jaxeff.irl`       continuous-state inverse RL with orthonormal bases

Every public name of a family is re-exported here explicitly through that family's
``__all__`` (``jaxeff.forward_kl is jaxeff.distill.forward_kl``); the families' names are
kept disjoint by a test. Shared primitives (LP solver, sharding, validation) live in
:mod:`jaxeff.core`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from jaxeff import _core as core
from jaxeff import coreset, distill, irl, prune, quant, rounding, sam, sketch, stability
from jaxeff import models  # reference models + Hugging Face Llama family (not star-exported)
from jaxeff._core import LPResult, LPStatus, make_mesh, solve_lp
from jaxeff.coreset import *  # noqa: F401,F403  (explicit: coreset.__all__)
from jaxeff.distill import *  # noqa: F401,F403  (explicit: distill.__all__)
from jaxeff.irl import *  # noqa: F401,F403  (explicit: irl.__all__)
from jaxeff.prune import *  # noqa: F401,F403  (explicit: prune.__all__)
from jaxeff.quant import *  # noqa: F401,F403  (explicit: quant.__all__)
from jaxeff.rounding import *  # noqa: F401,F403  (explicit: rounding.__all__)
from jaxeff.sam import *  # noqa: F401,F403  (explicit: sam.__all__)
from jaxeff.sketch import *  # noqa: F401,F403  (explicit: sketch.__all__)
from jaxeff.stability import *  # noqa: F401,F403  (explicit: stability.__all__)

FAMILIES = {
    "distill": distill,
    "quant": quant,
    "prune": prune,
    "sam": sam,
    "stability": stability,
    "rounding": rounding,
    "coreset": coreset,
    "sketch": sketch,
    "irl": irl,
}

__all__ = [
    "__version__",
    "core",
    "FAMILIES",
    "models",
    "LPResult",
    "LPStatus",
    "make_mesh",
    "solve_lp",
    *[name for mod in FAMILIES.values() for name in mod.__all__],
    *FAMILIES,
]

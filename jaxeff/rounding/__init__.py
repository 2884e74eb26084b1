"""jaxeff.rounding: fast exact rounding to float formats and grids, stochastic rounding for
low-precision training, and the sigma_min study of arXiv:2403.12278.

* Formats: :class:`FloatFormat` (presets ``BF16``, ``FP16``, ``TF32``, ``E4M3``, ``E5M2``,
  ``E3M4``, ``E4M3FNUZ``, ``E5M2FNUZ``, fp6 ``E3M2``/``E2M3``, fp4 ``E2M1``), :class:`FixedGrid`.
* :func:`round_to` (modes ``nearest``, ``toward_zero``, ``up``, ``down``, ``stochastic``,
  ``stochastic_equal``; noise: the cheap counter-based ``"hash"`` (default) or ``"jax"``),
  :func:`stochastic_round`, :func:`sr_noise_bits`.
* Training: :func:`sr_apply_updates`, :func:`sr_optimizer` (optax wrapper).
* Study: :func:`sr_test_matrix`, :func:`sr_stack_copies`, :func:`sr_controlled_variance_matrix`,
  :func:`sr_variance`, :func:`sigma_min_bound`, :func:`sr_nu`, :func:`sigma_min_study`.

Example::

    import jax, jax.numpy as jnp
    from jaxeff.rounding import round_to, BF16
    x = jax.random.normal(jax.random.key(0), (1024,))
    y = round_to(x, BF16, "stochastic", key=jax.random.key(1), noise="hash")   # bfloat16

References:
  Dexter, Boutsikas, Ma, Ipsen, Drineas, arXiv:2403.12278.
"""
from jaxeff.rounding.core import ROUNDING_MODES, round_to, stochastic_round
from jaxeff.rounding.formats import (
    BF16, E2M1, E2M3, E3M2, E3M4, E4M3, E4M3FNUZ, E5M2, E5M2FNUZ, FP16, TF32,
    FixedGrid, FloatFormat, float_format, representable_values,
)
from jaxeff.rounding.noise import NOISE_SOURCES, sr_noise_bits
from jaxeff.rounding.optim import SROptimizerState, sr_apply_updates, sr_optimizer
from jaxeff.rounding.study import (
    decimal_grids, sigma_min_bound, sigma_min_study, sr_controlled_variance_matrix, sr_nu,
    sr_stack_copies, sr_test_matrix, sr_variance,
)

__all__ = [
    "FloatFormat", "FixedGrid", "BF16", "FP16", "TF32", "E4M3", "E5M2", "E3M4", "E4M3FNUZ",
    "E5M2FNUZ", "E3M2", "E2M3", "E2M1", "float_format", "representable_values",
    "round_to", "stochastic_round", "ROUNDING_MODES", "sr_noise_bits", "NOISE_SOURCES",
    "sr_apply_updates", "sr_optimizer", "SROptimizerState",
    "sr_variance", "sigma_min_bound", "sr_nu", "sr_test_matrix", "sr_stack_copies",
    "sr_controlled_variance_matrix", "sigma_min_study", "decimal_grids",
]

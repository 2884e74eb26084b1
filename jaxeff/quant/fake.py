"""Fake quantization with a straight-through estimator (STE) for quantization-aware training.

``fake_quant(x)`` returns ``dequantize(quantize(x))`` in the forward pass; in the backward
pass the rounding is treated as the identity (STE) inside the representable range
``[(q_min - z) s, (q_max - z) s]`` and the gradient is zero outside it ("clipped" STE, the
gradient of ``clip``), or the identity everywhere (``ste="identity"``). Scales are
calibrated on ``stop_gradient(x)`` (they are statistics, not trained).

References:
    Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons",
    arXiv:1308.3432 (STE). Jacob et al., arXiv:1712.05877 (QAT with fake quantization).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxeff._core.validation import check_choice
from jaxeff.quant.formats import FormatLike, get_qformat
from jaxeff.quant.qarray import quantize

__all__ = ["fake_quant"]


def fake_quant(
    x: jax.Array,
    fmt: FormatLike,
    *,
    axis: int | Sequence[int] | None = None,
    group_size: int | None = None,
    symmetric: bool = True,
    calibration: str = "absmax",
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "clipped",
    percentile: float = 99.9,
    mse_grid: int = 32,
    scale_dtype=None,
) -> jax.Array:
    """Quantize-dequantize ``x`` with a straight-through gradient.

    .. math::

        y = (\\operatorname{clip}(\\operatorname{round}(x/s)+z, q_{min}, q_{max}) - z)\\,s,
        \\qquad \\frac{\\partial y}{\\partial x} = \\mathbb 1[(q_{min}-z)s \\le x \\le (q_{max}-z)s]

    (``ste="identity"``: ``dy/dx = 1`` everywhere).

    Args:
        x: float array.
        fmt, axis, group_size, symmetric, calibration, rounding, key, percentile, mse_grid,
        scale_dtype:
            as in :func:`quantize`.
        ste: "clipped" (zero gradient outside the clip range) or "identity".

    Returns:
        Array like ``x`` (same dtype) holding grid values.

    Example:
        >>> g = jax.grad(lambda x: fake_quant(x, "int8", calibration="percentile", percentile=50.0).sum())
        >>> g(jnp.array([0.1, 0.2, 5.0]))   # 5.0 lies outside the clip range
        Array([1., 1., 0.], dtype=float32)

    References:
        Bengio et al., arXiv:1308.3432; Jacob et al., arXiv:1712.05877.
    """
    check_choice("ste", ste, ("clipped", "identity"))
    f = get_qformat(fmt)
    if isinstance(x, (list, tuple)):
        x = jnp.asarray(x)
    if x is None:
        raise ValueError("`x` must be a float array, got None.")
    xs = jax.lax.stop_gradient(x)
    qa = quantize(xs, f, axis=axis, group_size=group_size, symmetric=symmetric,
                  calibration=calibration, rounding=rounding, key=key, percentile=percentile,
                  mse_grid=mse_grid, scale_dtype=scale_dtype)
    deq = qa.dequantize(jnp.float32).astype(x.dtype)
    y = x + jax.lax.stop_gradient(deq - x)
    if ste == "identity":
        return y
    s = qa.full_scale().astype(jnp.float32)
    z = qa.full_zero_point()
    z = 0.0 if z is None else z.astype(jnp.float32)
    lo = (f.qmin - z) * s
    hi = (f.qmax - z) * s
    inside = (xs >= lo) & (xs <= hi)
    return jnp.where(inside, y, jax.lax.stop_gradient(deq))

"""Quantized matrix products: int8 x int8 -> int32, fp8 dot, weight-only, dynamic W8A8.

For symmetric operands whose scales are constant along the contracted dimensions,

.. math::

    (s_a \\odot q_a)\\cdot(s_b \\odot q_b) = s_a^{out} \\odot s_b^{out} \\odot (q_a \\cdot q_b),

so the product of the integer (or fp8) codes is taken with ``preferred_element_type``
(int32 / float32 accumulation) and the scales are applied once to the output. For int8
codes in ``[-128, 127]`` the int32 accumulator cannot overflow while the contracted size
``K <= 2^31 / 128^2 = 131072``. Anything else (grouped scales along the contraction,
zero points, mixed formats, a float operand) takes the weight-only path: the QArray is
dequantized inside the jitted computation (XLA fuses the dequantization into the dot).

References:
    Jacob et al., arXiv:1712.05877 (integer-arithmetic inference).
    Dettmers et al., "LLM.int8()", arXiv:2208.07339 (per-token dynamic activation scales).
    Xiao et al., "SmoothQuant", arXiv:2211.10438 (W8A8).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff.quant.formats import FormatLike, get_qformat
from jaxeff.quant.qarray import QArray, ScaledQArray, quantize

__all__ = ["quantized_dot_general", "quantized_matmul", "INT32_SAFE_K"]

INT32_SAFE_K = 2**31 // (128 * 128)


def _scale_for_output(qa: QArray, contract: Sequence[int], batch: Sequence[int], is_lhs: bool,
                      n_other_free: int) -> jax.Array | None:
    """Scale of ``qa`` rearranged to broadcast against the dot_general output, or None."""
    s = qa.scale
    if qa.group_size is not None and qa.axis[0] in contract and qa.shape[qa.axis[0]] // qa.group_size > 1:
        return None
    if any(s.shape[c] != 1 for c in contract):
        return None
    s = jnp.broadcast_to(s, tuple(1 if i in contract else qa.shape[i] for i in range(qa.ndim)))
    free = [i for i in range(qa.ndim) if i not in contract and i not in batch]
    s = jnp.transpose(s, list(batch) + free + list(contract))
    s = s.reshape(s.shape[: len(batch) + len(free)])
    if is_lhs:
        return s.reshape(s.shape + (1,) * n_other_free)
    return s.reshape(s.shape[: len(batch)] + (1,) * n_other_free + s.shape[len(batch):])


def quantized_dot_general(
    lhs: jax.Array | QArray,
    rhs: jax.Array | QArray,
    dimension_numbers: Any,
    *,
    preferred_element_type: Any = None,
    precision: Any = None,
) -> jax.Array:
    """``jax.lax.dot_general`` where either operand may be a :class:`QArray`.

    * both int (<= 8 bit, symmetric, scales constant along the contraction): integer dot of
      the codes with int32 accumulation, then ``* s_lhs * s_rhs``;
    * both fp8 (same conditions): fp8 dot with float32 accumulation, then the scales;
    * otherwise (weight-only, grouped, asymmetric or mixed): dequantize and float dot.

    Args:
        lhs, rhs: float arrays or QArrays.
        dimension_numbers: ``((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))``.
        preferred_element_type: output dtype (default float32 when a QArray is involved).
        precision: passed to the float dot.

    Returns:
        The product, dtype ``preferred_element_type`` (float32 by default).

    Example:
        >>> a = quantize(jnp.ones((4, 8)), "int8", axis=1)      # per-row (per-token) scales
        >>> b = quantize(jnp.ones((8, 3)), "int8", axis=0)      # per-column scales
        >>> quantized_dot_general(a, b, (((1,), (0,)), ((), ()))).shape
        (4, 3)

    References:
        Jacob et al., arXiv:1712.05877.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = tuple(lc), tuple(rc), tuple(lb), tuple(rb)
    lq, rq = isinstance(lhs, QArray), isinstance(rhs, QArray)
    if not (lq or rq):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    out_dtype = jnp.dtype(preferred_element_type or jnp.float32)
    lshape = lhs.shape
    rshape = rhs.shape
    for a, b in zip(lc + lb, rc + rb):
        if lshape[a] != rshape[b]:
            raise ValueError(
                f"`lhs` dim {a} (size {lshape[a]}) and `rhs` dim {b} (size {rshape[b]}) must match."
            )
    if lq and rq and lhs.zero_point is None and rhs.zero_point is None:
        n_lfree = len(lshape) - len(lc) - len(lb)
        n_rfree = len(rshape) - len(rc) - len(rb)
        ls = _scale_for_output(lhs, lc, lb, True, n_rfree)
        rs = _scale_for_output(rhs, rc, rb, False, n_lfree)
        if ls is not None and rs is not None:
            if lhs.fmt.is_int and rhs.fmt.is_int and lhs.fmt.bits <= 8 and rhs.fmt.bits <= 8:
                a = lhs.codes().astype(jnp.int8) if lhs.fmt.signed or lhs.fmt.bits < 8 else lhs.codes().astype(jnp.int32)
                b = rhs.codes().astype(jnp.int8) if rhs.fmt.signed or rhs.fmt.bits < 8 else rhs.codes().astype(jnp.int32)
                acc = jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.int32)
                return (acc.astype(jnp.float32) * ls.astype(jnp.float32) * rs.astype(jnp.float32)).astype(out_dtype)
            if lhs.fmt.is_float and rhs.fmt.is_float:
                acc = jax.lax.dot_general(lhs.qvalue, rhs.qvalue, dimension_numbers,
                                          preferred_element_type=jnp.float32)
                return (acc * ls.astype(jnp.float32) * rs.astype(jnp.float32)).astype(out_dtype)
    a = lhs.dequantize(jnp.float32) if lq else lhs
    b = rhs.dequantize(jnp.float32) if rq else rhs
    return jax.lax.dot_general(a, b, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32).astype(out_dtype)


def quantized_matmul(
    x: jax.Array | QArray,
    w: jax.Array | QArray,
    *,
    act_fmt: FormatLike | None = None,
    act_calibration: str = "absmax",
    preferred_element_type: Any = None,
) -> jax.Array:
    """``x @ w`` over the last axis of ``x`` and the first of ``w`` (Flax kernel layout).

    With ``act_fmt`` (e.g. "int8" or "e4m3") the float activations are quantized
    dynamically per token (one scale per row over the last axis, computed at run time), so
    an int8 weight quantized per output column (``axis=0``) gives the W8A8 integer path.
    Without it, a QArray weight is dequantized in-kernel (weight-only W8A16 / W4A16).

    Args:
        x: activations ``[..., in]`` (float or QArray).
        w: weight ``[in, out]`` (float, QArray, or ScaledQArray whose ``input_scale``
            divides ``x`` first and whose ``act_fmt`` is used when ``act_fmt`` is None).
        act_fmt: format for dynamic per-token activation quantization, or None.
        act_calibration: calibration of the activation scales.
        preferred_element_type: output dtype (default float32).

    Returns:
        ``[..., out]`` float array.

    Example:
        >>> w = quantize(jax.random.normal(jax.random.key(0), (16, 8)), "int8", axis=0)
        >>> quantized_matmul(jnp.ones((2, 5, 16)), w, act_fmt="int8").shape
        (2, 5, 8)

    References:
        Dettmers et al., arXiv:2208.07339; Xiao et al., arXiv:2211.10438.
    """
    if isinstance(w, ScaledQArray):
        x = x / w.input_scale.astype(x.dtype)
        act_fmt = act_fmt if act_fmt is not None else w.act_fmt
        w = w.qweight
    if np.ndim(w) != 2 if not isinstance(w, QArray) else w.ndim != 2:
        raise ValueError(f"`w` must be a 2-D kernel [in, out], got shape {tuple(w.shape)}.")
    xin = x.shape[-1]
    if xin != w.shape[0]:
        raise ValueError(
            f"`x` last dimension ({xin}) must equal `w` first dimension ({w.shape[0]})."
        )
    if act_fmt is not None and not isinstance(x, QArray):
        x = quantize(x, get_qformat(act_fmt, "act_fmt"), axis=-1, calibration=act_calibration)
    nd = len(x.shape)
    return quantized_dot_general(x, w, (((nd - 1,), (0,)), ((), ())),
                                 preferred_element_type=preferred_element_type)

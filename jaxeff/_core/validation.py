"""Validation helpers that raise readable errors at trace time.

Every public function in jaxeff checks its arguments with these helpers so that bad input
fails with a ``ValueError`` naming the argument, what was expected and what was given,
instead of a silent NaN, a wrong broadcast or an error deep inside XLA.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_shape",
    "check_ndim",
    "check_same_shape",
    "check_floating",
    "check_dtype",
    "check_in_range",
    "check_positive",
    "check_probability",
    "check_choice",
    "check_broadcastable",
    "check_finite",
    "check_divisible",
    "check_key",
    "check_traced_in_range",
    "check_index_range",
    "check_int",
    "check_number",
    "check_callable",
    "check_array",
    "error_if",
    "is_inexact_dtype",
    "is_traced",
]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def is_traced(x: Any) -> bool:
    """True when ``x`` is an abstract tracer (inside jit/vmap/grad) so its value is unknown."""
    return isinstance(x, jax.core.Tracer)


def check_ndim(name: str, x: Any, ndim: int | Iterable[int]) -> None:
    """Raise unless ``x`` has ``ndim`` dimensions (or one of several allowed counts)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if np.ndim(x) not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"`{name}` must have {want} dimensions, got shape {_shape(x)}.")


def check_shape(name: str, x: Any, shape: Sequence[int | None]) -> None:
    """Raise unless ``x.shape`` matches ``shape`` (``None`` entries match any size)."""
    got = _shape(x)
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"`{name}` must have shape {want}, got {got}.")


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Raise unless two arrays have the same shape."""
    if _shape(a) != _shape(b):
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got {_shape(a)} and {_shape(b)}."
        )


def check_broadcastable(name: str, x: Any, target: Sequence[int], what: str = "the leading axes") -> None:
    """Raise unless ``x`` broadcasts to ``target`` without changing ``target``."""
    try:
        out = np.broadcast_shapes(_shape(x), tuple(target))
    except ValueError:
        out = None
    if out != tuple(target):
        raise ValueError(
            f"`{name}` of shape {_shape(x)} does not broadcast to {what} {tuple(target)}."
        )


def check_floating(name: str, x: Any) -> None:
    """Raise unless ``x`` has a floating dtype."""
    dt = jnp.result_type(x)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`{name}` must have a floating dtype, got {dt}.")


def check_dtype(name: str, x: Any, kinds: str | Sequence[Any]) -> None:
    """Raise unless ``x``'s dtype is one of ``kinds`` (dtypes, or 'floating'/'integer')."""
    dt = jnp.result_type(x)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for k in kinds:
        if k == "floating" and jnp.issubdtype(dt, jnp.floating):
            return
        if k == "integer" and jnp.issubdtype(dt, jnp.integer):
            return
        if not isinstance(k, str) and dt == jnp.dtype(k):
            return
    raise ValueError(f"`{name}` must have dtype in {list(map(str, kinds))}, got {dt}.")


def check_in_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise unless the Python scalar ``value`` lies in the given interval.

    Traced values are not checked (their value is unknown at trace time).
    """
    if is_traced(value):
        return
    v = float(value)
    ok = not np.isnan(v)
    if low is not None:
        ok &= v >= low if low_inclusive else v > low
    if high is not None:
        ok &= v <= high if high_inclusive else v < high
    if not ok:
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"`{name}` must be in {lb}{lo}, {hi}{hb}, got {value!r}.")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Raise unless ``value`` is a Python/NumPy integer (not a bool) in ``[low, high]``; return it as int.

    ``None``, floats (``2.0`` included), strings and bools are refused with a ``ValueError``
    naming the argument.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        lo = "" if low is None else f" >= {low}"
        raise ValueError(f"`{name}` must be an int{lo}, got {value!r} ({type(value).__name__}).")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"`{name}` must be an int in [{lo}, {hi}], got {v}.")
    return v


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """:func:`check_in_range` that first refuses what is not a real scalar (``None``, a string,
    a bool, an array with more than one element) with a ``ValueError`` naming the argument.

    Traced values are not checked (their value is unknown at trace time).
    """
    if is_traced(value):
        return
    ok = value is not None and not isinstance(value, (str, bytes, bool, np.bool_))
    if ok:
        try:
            arr = np.asarray(value)
            ok = arr.ndim == 0 and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                                    or is_inexact_dtype(arr.dtype) and not np.issubdtype(arr.dtype, np.complexfloating))
        except Exception:  # noqa: BLE001 - anything that is not array-like is refused below
            ok = False
    if not ok:
        raise ValueError(f"`{name}` must be a real number, got {value!r} ({type(value).__name__}).")
    check_in_range(name, value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)


def check_callable(name: str, value: Any, what: str = "a callable") -> None:
    """Raise a ``TypeError`` naming the argument unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__}.")


def check_array(name: str, x: Any, what: str = "an array") -> None:
    """Raise a ``ValueError`` naming the argument when ``x`` is ``None`` or a string (not
    array data); anything else (arrays, tracers, lists, scalars) passes unchanged.
    """
    if x is None or isinstance(x, (str, bytes)):
        raise ValueError(f"`{name}` must be {what}, got {x!r} ({type(x).__name__}).")


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Raise unless ``value`` > 0 (or >= 0 with ``strict=False``)."""
    check_in_range(name, value, 0.0, None, low_inclusive=not strict)


def check_probability(name: str, value: float) -> None:
    """Raise unless ``value`` is in [0, 1]."""
    check_in_range(name, value, 0.0, 1.0)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_divisible(name: str, value: int, divisor: int, divisor_name: str) -> None:
    """Raise unless ``value`` is a multiple of ``divisor``."""
    if value % divisor != 0:
        raise ValueError(
            f"`{name}` ({value}) must be divisible by `{divisor_name}` ({divisor})."
        )


def is_inexact_dtype(dtype: Any) -> bool:
    """True for every floating or complex dtype, including bfloat16, float16 and the fp8 types.

    NumPy reports the ml_dtypes types (bfloat16, float8_*) with kind ``"V"``, so a check on
    ``dtype.kind in "fc"`` misses them; jnp's own dtype predicates do not.
    """
    try:
        return bool(jnp.issubdtype(dtype, jnp.inexact))
    except TypeError:
        return False


def _count_nonfinite(x: Any) -> int:
    arr = np.asarray(x)
    if not is_inexact_dtype(arr.dtype):
        return 0
    if not np.issubdtype(arr.dtype, np.complexfloating) and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)  # bf16 / fp16 / fp8: exact in float32, NaN and inf kept
    return int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))


def check_finite(name: str, x: Any) -> None:
    """Raise if a concrete array holds NaN or inf. Skipped for traced values.

    Every inexact dtype is checked, bfloat16, float16 and fp8 included. Use
    :func:`error_if_nonfinite` for checks that must run inside ``jit``.
    """
    if is_traced(x):
        return
    bad = _count_nonfinite(x)
    if bad:
        raise ValueError(f"`{name}` contains {bad} NaN or inf value(s); expected finite values.")


def error_if(x: Any, pred: Any, msg: str) -> Any:
    """``equinox.error_if``: return ``x``, raising ``msg`` at run time when ``pred`` holds.

    For data-dependent checks that must survive ``jit``: when ``pred`` is concrete (eager
    call) the check is a plain ``ValueError`` raised here; when it is traced, the returned
    value carries the check and must be used in place of ``x``.
    """
    if not is_traced(pred):
        if bool(np.any(np.asarray(pred))):
            raise ValueError(msg)
        return x
    import equinox as eqx

    return eqx.error_if(x, pred, msg)


def check_traced_in_range(
    name: str,
    x: Any,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """:func:`check_in_range` that also runs under ``jit``.

    A concrete ``value`` is checked now (``ValueError``); a traced one is checked at run time
    with ``equinox.error_if`` attached to ``x``, which is returned and must be used.
    """
    if not is_traced(value):
        check_in_range(name, value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
        return x
    v = jnp.asarray(value)
    bad = jnp.isnan(v)
    if low is not None:
        bad |= (v < low) if low_inclusive else (v <= low)
    if high is not None:
        bad |= (v > high) if high_inclusive else (v >= high)
    lb = "[" if low_inclusive else "("
    hb = "]" if high_inclusive else ")"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return error_if(x, jnp.any(bad), f"`{name}` must be in {lb}{lo}, {hi}{hb}.")


def check_index_range(name: str, idx: Any, n: int, x: Any = None, *, ignore: Any = None,
                      what: str = "") -> Any:
    """Raise unless every integer in ``idx`` lies in ``[0, n)`` (entries equal to ``ignore`` skipped).

    Concrete ``idx``: ``ValueError`` now. Traced ``idx``: one reduction checked at run time
    with ``equinox.error_if`` attached to ``x`` (default: ``idx``), which is returned and
    must be used.
    """
    target = idx if x is None else x
    suffix = f" ({what})" if what else ""
    if not is_traced(idx):
        arr = np.asarray(idx)
        if arr.size:
            ok = (arr >= 0) & (arr < n)
            if ignore is not None:
                ok |= arr == ignore
            if not np.all(ok):
                bad = arr[~ok]
                raise ValueError(f"`{name}` must hold indices in [0, {n}){suffix}, got {bad.size} out of range "
                                 f"(e.g. {bad.ravel()[0]!r}).")
        return target
    i = jnp.asarray(idx)
    bad = (i < 0) | (i >= n)
    if ignore is not None:
        bad &= i != ignore
    return error_if(target, jnp.any(bad), f"`{name}` must hold indices in [0, {n}){suffix}.")


def check_key(name: str, key: Any, *, required: bool = True) -> None:
    """Raise unless ``key`` is a JAX PRNG key (typed ``jax.random.key`` or legacy uint32[2])."""
    if key is None:
        if required:
            raise ValueError(f"`{name}` is required: pass a key from jax.random.key(seed).")
        return
    dt = jnp.result_type(key) if not hasattr(key, "dtype") else key.dtype
    if jnp.issubdtype(dt, jax.dtypes.prng_key):
        return
    if dt == jnp.uint32 and np.shape(key)[-1:] == (2,):
        return
    raise ValueError(
        f"`{name}` must be a PRNG key from jax.random.key(seed), got dtype {dt} shape {np.shape(key)}."
    )

"""Argument checks shared by :mod:`jaxeff.irl` (readable ``ValueError`` naming the argument).

Thin wrappers around :mod:`jaxeff._core.validation` that also refuse ``None``, strings,
booleans and non-integers where a number or a count is required (``check_in_range`` alone
would fail on ``float(None)`` without naming the argument, and ``int(2.5)`` would truncate).
:func:`check_int` differs from ``validation.check_int`` in accepting integral floats
(``4.0``) and 0-d integer arrays, which these functions accepted through ``int()`` before.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxeff._core.validation import check_callable, check_number, is_traced

__all__ = ["check_int", "check_real", "check_callable", "check_basis", "check_Z"]


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray) or hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"an array of dtype {v.dtype} and shape {tuple(np.shape(v))}"
    return repr(v)


def check_int(name: str, v: Any, low: int | None = 1, high: int | None = None) -> int:
    """``v`` as a Python int, refusing None, bools, strings and non-integral numbers.

    Integral floats (``4.0``) and 0-d integer arrays are accepted, as ``int()`` did before.
    """
    iv = None
    if isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, str):
        iv = None
    elif isinstance(v, (int, np.integer)):
        iv = int(v)
    elif isinstance(v, (float, np.floating)):
        if np.isfinite(v) and float(v).is_integer():
            iv = int(v)
    elif hasattr(v, "dtype") and np.shape(v) == () and not is_traced(v) and np.issubdtype(np.dtype(v.dtype), np.integer):
        iv = int(v)
    if low is None and high is None:
        rng = "an int"
    elif high is None:
        rng = f"an int >= {low}"
    elif low is None:
        rng = f"an int <= {high}"
    else:
        rng = f"an int in [{low}, {high}]"
    if iv is None or (low is not None and iv < low) or (high is not None and iv > high):
        raise ValueError(f"`{name}` must be {rng}, got {_describe(v)}.")
    return iv


def check_real(
    name: str,
    v: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """:func:`jaxeff._core.validation.check_number` (a real scalar in the interval, NaN refused),
    returning ``v`` unchanged (a traced ``v`` is not range-checked)."""
    check_number(name, v, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
    return v


def check_basis(basis: Any, name: str = "basis"):
    from jaxeff.irl.bases import OrthonormalBasis

    if not isinstance(basis, OrthonormalBasis):
        raise ValueError(
            f"`{name}` must be a jaxeff.irl basis (CosineBasis, TensorBasis, ...), got {type(basis).__name__}."
        )
    return basis


def check_Z(name: str, Z: Any, k: int | None = None, *, min_actions: int = 1, finite: bool = True) -> np.ndarray:
    """Transition operators ``[A, k, k]`` as float64 (``k`` from the basis when given), A >= min_actions."""
    if Z is None:
        raise ValueError(f"`{name}` must be an array of transition operators [num_actions, k, k], got None.")
    try:
        arr = np.asarray(Z, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a numeric array [num_actions, k, k], got {type(Z).__name__}: {e}") from e
    kk = k if k is not None else (arr.shape[-1] if arr.ndim else None)
    if arr.ndim != 3 or arr.shape[1:] != (kk, kk) or kk == 0:
        kt = "k" if kk is None or kk == 0 else str(kk)
        basis_txt = f" for a basis of k={k}" if k is not None else " (square k x k matrices, k >= 1)"
        raise ValueError(f"`{name}` must have shape (num_actions, {kt}, {kt}){basis_txt}, got {arr.shape}.")
    if arr.shape[0] < min_actions:
        if min_actions >= 2:
            raise ValueError(
                f"`{name}` must hold at least {min_actions} actions (the expert's and a deviation), got {arr.shape[0]}."
            )
        raise ValueError(f"`{name}` must hold at least {min_actions} action, got {arr.shape[0]}.")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(arr)))} NaN or inf value(s); expected finite values.")
    return arr

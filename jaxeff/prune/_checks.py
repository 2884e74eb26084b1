"""Argument checks shared by :mod:`jaxeff.prune` (readable errors naming the argument).

Thin wrappers around :mod:`jaxeff._core.validation` for what the shared helpers do not cover:
``None`` where an array is required, empty calibration data, and host-side finiteness checks of
the float64 matrices that the OSSCAR / refit code builds anyway (no extra device sync).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import check_ndim, is_inexact_dtype

__all__ = ["require_module", "require_array", "check_kernel", "check_rows", "check_host_finite", "float_dtype_of",
           "require_tree"]


def require_module(name: str, model: Any) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``model`` is a Flax NNX module."""
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise ValueError(f"`{name}` must be a flax.nnx.Module, got {type(model).__name__}.")


def require_array(name: str, x: Any, what: str = "an array") -> None:
    """Raise a ``ValueError`` naming ``name`` when ``x`` is None (an array is required)."""
    if x is None:
        raise ValueError(f"`{name}` must be {what}, got None.")


def require_tree(name: str, x: Any, what: str = "an array or a pytree of arrays") -> None:
    """Raise a ``ValueError`` naming ``name`` when the top-level ``x`` is None."""
    if x is None:
        raise ValueError(f"`{name}` must be {what}, got None.")


def check_kernel(name: str, w: Any) -> None:
    """``w`` must be a 2-D kernel ``[k, d]`` with at least one row and one column."""
    require_array(name, w, "a 2-D kernel array [k, d]")
    check_ndim(name, w, 2)
    if 0 in np.shape(w):
        raise ValueError(f"`{name}` must be a non-empty 2-D kernel [k, d], got shape {tuple(np.shape(w))}.")


def check_rows(name: str, x: Any, what: str = "calibration activations") -> None:
    """``x`` (``[..., k]``) must hold at least one row (sample)."""
    if int(np.prod(np.shape(x)[:-1])) == 0:
        raise ValueError(f"`{name}` ({what}) must hold at least one row, got shape {tuple(np.shape(x))}.")


def check_host_finite(name: str, a: np.ndarray, what: str = "") -> None:
    """Raise when the host array ``a`` holds NaN or inf (``a`` is already on the host)."""
    if not np.all(np.isfinite(a)):
        suffix = f" ({what})" if what else ""
        raise ValueError(f"`{name}` contains NaN or inf values{suffix}; expected finite values.")


def float_dtype_of(x: Any) -> Any:
    """The dtype of ``x`` if it is inexact, else float32 (results of a refit are never integers)."""
    dt = jnp.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    return dt if is_inexact_dtype(dt) else jnp.dtype(jnp.float32)

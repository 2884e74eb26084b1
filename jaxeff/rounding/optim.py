"""Training with low-precision parameters and stochastic rounding (SR).

Plain low-precision training rounds ``w + u`` to nearest: once ``|u|`` is below half a unit in
the last place of ``w`` the update is lost (stagnation). SR rounds ``w + u`` up or down with
probabilities proportional to the distances, so :math:`E[w_{t+1}] = w_t + u_t` and small
updates accumulate in expectation.

* :func:`sr_apply_updates` -- ``optax.apply_updates`` with the sum formed in float32 and
  stochastically rounded to the storage format.
* :func:`sr_optimizer` -- wraps any optax transformation: the inner optimizer sees float32
  gradients/params (its moments stay float32) and the emitted update makes
  ``optax.apply_updates(params, update)`` land exactly on the stochastically rounded value.

References:
  Gupta et al., "Deep learning with limited numerical precision", arXiv:1502.02551.
  Zamirai et al., "Revisiting BFloat16 training", arXiv:2010.06192.
  Dexter et al., arXiv:2403.12278.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxeff._core.validation import check_choice, check_key
from jaxeff.rounding.core import round_to
from jaxeff.rounding.formats import FloatFormat, _to_format
from jaxeff.rounding.noise import NOISE_SOURCES

__all__ = ["sr_apply_updates", "sr_optimizer", "SROptimizerState"]


def _is_float(x: Any) -> bool:
    return x is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating)


def sr_apply_updates(key: jax.Array, params: Any, updates: Any, fmt: Any = "bf16", *, noise: str = "hash") -> Any:
    r"""Apply ``updates`` in float32 and store the result stochastically rounded to ``fmt``.

    .. math::  w_{t+1} = \mathrm{SR}_{fmt}\big(\mathrm{f32}(w_t) + \mathrm{f32}(u_t)\big)

    Every floating leaf gets its own key (``jax.random.split`` over leaves); non-floating
    leaves are updated as in ``optax.apply_updates``.

    Args:
      key: ``jax.random.key``.
      params, updates: pytrees with the same structure.
      fmt: a :class:`FloatFormat` or preset name (default ``"bf16"``).
      noise: ``"hash"`` (default: counter-based words, ~1-2x a cast on CPU, statistics
        tested) or ``"jax"`` (``jax.random.bits``, the exact but ~17-48x slower option); see
        :func:`round_to`.

    Returns:
      New params: floating leaves in ``fmt.dtype`` (float32 when the format has no JAX dtype).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = {"w": jnp.ones(3, jnp.bfloat16)}
      >>> sr_apply_updates(jax.random.key(0), p, {"w": jnp.full(3, 1e-3)})["w"].dtype
      dtype(bfloat16)

    References:
      arXiv:1502.02551; arXiv:2403.12278.
    """
    check_key("key", key)
    check_choice("noise", noise, NOISE_SOURCES)
    fmt = _to_format(fmt, "fmt")
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"`fmt` must be a floating-point format for parameter storage, got {fmt!r}.")
    if params is None:
        raise ValueError("`params` must be an array or a pytree of arrays, got None.")
    p_leaves, treedef = jax.tree.flatten(params)
    try:
        u_leaves = treedef.flatten_up_to(updates)
    except (ValueError, TypeError) as e:
        raise ValueError(f"`updates` must have the pytree structure of `params` ({treedef}), got "
                         f"{jax.tree.structure(updates)}: {e}") from e
    keys = jax.random.split(key, max(len(p_leaves), 1))
    out = []
    for i, (p, u) in enumerate(zip(p_leaves, u_leaves)):
        if u is None:
            out.append(p)
        elif np.shape(u) != np.shape(p):
            raise ValueError(f"update leaf {i} has shape {np.shape(u)} but its param has shape {np.shape(p)}; "
                             "updates must match params exactly (no broadcasting).")
        elif _is_float(p):
            s = jnp.asarray(p).astype(jnp.float32) + jnp.asarray(u).astype(jnp.float32)
            out.append(round_to(s, fmt, "stochastic", key=keys[i], noise=noise))
        else:
            out.append(jnp.asarray(p + u).astype(jnp.asarray(p).dtype))
    return jax.tree.unflatten(treedef, out)


class SROptimizerState(NamedTuple):
    """State of :func:`sr_optimizer`: step counter and the inner optimizer's (float32) state."""

    count: jax.Array
    inner_state: optax.OptState


def sr_optimizer(
    inner: optax.GradientTransformation,
    fmt: Any = "bf16",
    *,
    key: Any = 0,
    noise: str = "hash",
) -> optax.GradientTransformationExtraArgs:
    r"""Wrap an optax optimizer so parameters are stored in ``fmt`` with stochastic rounding.

    The inner optimizer runs in float32 (its state is initialised on float32 copies of the
    params). Its update :math:`u` is turned into
    :math:`\Delta = \mathrm{SR}(w + u) - w` (float32), so the usual
    ``optax.apply_updates(params, Δ)`` -- which adds in float32 and casts back to the
    parameter dtype -- stores exactly :math:`\mathrm{SR}(w + u)` (exact whenever
    :math:`\mathrm{SR}(w+u) - w` is exact in float32, e.g. the exponents of the two differ
    by at most 16 for bf16 storage; otherwise the final cast to bf16 still recovers it).
    Step ``t`` uses the key ``fold_in(key, t)``.

    Works with ``optax.chain``, ``optax.MultiSteps`` and ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

    Args:
      inner: the optax transformation producing float32 updates (e.g. ``optax.adam(1e-3)``).
      fmt: storage format (default ``"bf16"``).
      key: ``jax.random.key`` or an int seed.
      noise: ``"hash"`` (default, the fast counter-based words) or ``"jax"``
        (``jax.random.bits``); see :func:`round_to`.

    Returns:
      ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = sr_optimizer(optax.sgd(1e-2), "bf16", key=jax.random.key(0))
      >>> params = {"w": jnp.ones(4, jnp.bfloat16)}
      >>> state = tx.init(params)
      >>> upd, state = tx.update({"w": jnp.ones(4, jnp.bfloat16)}, state, params)
      >>> params = optax.apply_updates(params, upd)   # SR(w - 0.01 * g), still bf16

    References:
      arXiv:1502.02551; arXiv:2010.06192; arXiv:2403.12278.
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise ValueError(f"`inner` must be an optax.GradientTransformation, got {type(inner).__name__}.")
    check_choice("noise", noise, NOISE_SOURCES)
    fmt = _to_format(fmt, "fmt")
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"`fmt` must be a floating-point format for parameter storage, got {fmt!r}.")
    if isinstance(key, int) and not isinstance(key, bool):
        base_key = jax.random.key(key)
    else:
        check_key("key", key)
        base_key = key
    inner = optax.with_extra_args_support(inner)

    def to32(tree):
        return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float(x) else x, tree)

    def init_fn(params):
        return SROptimizerState(jnp.zeros((), jnp.int32), inner.init(to32(params)))

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("`params` is required by sr_optimizer's update (it rounds w + u).")
        p32 = to32(params)
        u32, inner_state = inner.update(to32(updates), state.inner_state, p32, **extra)
        step_key = jax.random.fold_in(base_key, state.count)
        new = sr_apply_updates(step_key, params, u32, fmt, noise=noise)
        delta = jax.tree.map(
            lambda n, p, u: (n.astype(jnp.float32) - p) if _is_float(p) else u, new, p32, u32
        )
        count = optax.safe_increment(state.count) if hasattr(optax, "safe_increment") else state.count + 1
        return delta, SROptimizerState(count, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

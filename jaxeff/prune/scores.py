"""Pruning scores: how important each weight is (higher = keep).

Every scorer returns a pytree shaped like ``params`` holding a score array for each leaf that
is pruned and ``None`` for every leaf that is not (by default only leaves with at least two
dimensions, i.e. kernels, are pruned; biases and norm scales are left alone). The mask
functions in :mod:`jaxeff.prune.masks` consume these trees.

References:
  jaxpruner (arXiv 2304.14082) for the scorer / mask-pytree design; SNIP (arXiv 1810.02340);
  Wanda (arXiv 2306.11695).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxeff._core.validation import check_key, check_ndim, check_shape
from jaxeff.prune._checks import require_array, require_tree

__all__ = [
    "magnitude_scores",
    "random_scores",
    "snip_scores",
    "wanda_scores",
    "default_prunable",
]

PyTree = Any
LeafFilter = Callable[[tuple, Any], bool]


def default_prunable(path: tuple, leaf: Any) -> bool:
    """Default leaf filter: prune arrays with ``ndim >= 2`` (kernels, embeddings, convs).

    Args:
      path: the leaf's key path (as given by ``jax.tree_util.tree_map_with_path``).
      leaf: the array.
    Returns:
      True when the leaf should be pruned.
    """
    del path
    return leaf is not None and hasattr(leaf, "ndim") and leaf.ndim >= 2


def _map_prunable(fn: Callable[..., Any], params: PyTree, *rest: PyTree, where: LeafFilter | None) -> PyTree:
    where = default_prunable if where is None else where

    def f(path, p, *r):
        if p is None or not where(path, p):
            return None
        return fn(p, *r)

    return jax.tree_util.tree_map_with_path(f, params, *rest)


def magnitude_scores(params: PyTree, *, where: LeafFilter | None = None) -> PyTree:
    """Magnitude scores :math:`s_{ij} = |w_{ij}|`.

    Args:
      params: a pytree of arrays (or a single array).
      where: ``where(path, leaf) -> bool`` selects the leaves to score; the others get ``None``.
        Defaults to :func:`default_prunable` (leaves with ``ndim >= 2``).
    Returns:
      A pytree shaped like ``params`` with ``|w|`` (float32 or wider) or ``None``.

    Example:
      >>> s = magnitude_scores({"w": jnp.array([[1., -3.], [2., 0.]]), "b": jnp.ones(2)})
      >>> s["b"] is None, float(s["w"][0, 1])
      (True, 3.0)

    References:
      Han et al., "Learning both Weights and Connections" (arXiv 1506.02626).
    """
    require_tree("params", params)
    return _map_prunable(lambda p: jnp.abs(p).astype(jnp.promote_types(p.dtype, jnp.float32)), params, where=where)


def random_scores(params: PyTree, key: jax.Array, *, where: LeafFilter | None = None) -> PyTree:
    """Uniform random scores (random pruning baseline), :math:`s_{ij} \\sim U(0, 1)`.

    Args:
      params: a pytree of arrays.
      key: a ``jax.random.key``; each leaf gets an independent key (``fold_in`` of its index).
      where: leaf filter, see :func:`magnitude_scores`.
    Returns:
      A pytree shaped like ``params`` with float32 uniform scores or ``None``.

    Example:
      >>> s = random_scores({"w": jnp.ones((2, 3))}, jax.random.key(0))
      >>> s["w"].shape
      (2, 3)

    References:
      Liu et al., "The Unreasonable Effectiveness of Random Pruning" (arXiv 2202.02643).
    """
    require_tree("params", params)
    check_key("key", key)
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=lambda x: x is None)
    keys = [jax.random.fold_in(key, i) for i in range(len(leaves))]
    key_tree = jax.tree_util.tree_unflatten(treedef, keys)
    return _map_prunable(lambda p, k: jax.random.uniform(k, p.shape, jnp.float32), params, key_tree, where=where)


def snip_scores(params: PyTree, grads: PyTree, *, where: LeafFilter | None = None) -> PyTree:
    """SNIP connection sensitivity :math:`s_{ij} = |w_{ij} \\cdot g_{ij}|`.

    Args:
      params: a pytree of arrays.
      grads: gradients of the loss, same structure and shapes as ``params``.
      where: leaf filter, see :func:`magnitude_scores`.
    Returns:
      A pytree shaped like ``params`` with ``|w * g|`` or ``None``.

    Example:
      >>> s = snip_scores({"w": jnp.array([[2., 1.]])}, {"w": jnp.array([[0.5, -3.]])})
      >>> s["w"].tolist()
      [[1.0, 3.0]]

    References:
      Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity"
      (arXiv 1810.02340).
    """
    require_tree("params", params)
    require_tree("grads", grads, "a pytree of gradients shaped like `params`")
    if jax.tree.structure(params) != jax.tree.structure(grads):
        raise ValueError("`grads` must have the same pytree structure as `params`.")

    def f(p, g):
        if p.shape != g.shape:
            raise ValueError(f"`grads` leaf has shape {g.shape}, expected the param's shape {p.shape}.")
        dt = jnp.promote_types(jnp.promote_types(p.dtype, g.dtype), jnp.float32)
        return jnp.abs(p.astype(dt) * g.astype(dt))

    return _map_prunable(f, params, grads, where=where)


def wanda_scores(w: jax.Array, x_norms: jax.Array) -> jax.Array:
    """Wanda scores of a linear layer: :math:`s_{ij} = |W_{ij}| \\cdot \\lVert X_{:, i} \\rVert_2`.

    ``w`` is a Flax kernel ``[d_in, d_out]`` (``y = x @ w``), so the input feature ``i`` indexes
    the rows; Wanda compares the scores within each output (column ``j``), see :func:`wanda`.

    Args:
      w: kernel ``[d_in, d_out]``.
      x_norms: ``[d_in]`` L2 norms of each input feature over the calibration tokens,
        ``sqrt(sum_n x[n, i]^2)``.
    Returns:
      ``[d_in, d_out]`` float32 scores.

    Example:
      >>> wanda_scores(jnp.array([[1., -2.], [3., 0.5]]), jnp.array([2., 1.])).tolist()
      [[2.0, 4.0], [3.0, 0.5]]

    References:
      Sun et al., "A Simple and Effective Pruning Approach for Large Language Models"
      (arXiv 2306.11695).
    """
    require_array("w", w, "a 2-D kernel array [d_in, d_out]")
    w = jnp.asarray(w)
    check_ndim("w", w, 2)
    if w.shape[0] == 0:
        raise ValueError(f"`w` must have at least one input row, got shape {w.shape}.")
    require_array("x_norms", x_norms, f"an array [{w.shape[0]}] of input-feature norms")
    x_norms = jnp.asarray(x_norms)
    check_shape("x_norms", x_norms, (w.shape[0],))
    dt = jnp.promote_types(jnp.result_type(w), jnp.float32)
    return jnp.abs(jnp.asarray(w, dt)) * jnp.asarray(x_norms, dt)[:, None]

"""Shared by the tunix model tests: give every float parameter random values (tunix zero-inits some
matrices and norm scales, which would hide errors)."""
import jax
import jax.numpy as jnp
from flax import nnx


def randomize(model, seed: int, *, matrix_scale: float = 0.2, vector_offset: float = 1.0, vector_scale: float = 0.1):
    """Matrices ``~ matrix_scale * N(0, 1)``, vectors ``~ vector_offset + vector_scale * N(0, 1)``."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [(matrix_scale * jax.random.normal(k, l.shape, l.dtype) if l.ndim >= 2 else
               vector_offset + vector_scale * jax.random.normal(k, l.shape, l.dtype))
              if jnp.issubdtype(l.dtype, jnp.floating) else l for l, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

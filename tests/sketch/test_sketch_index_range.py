"""kmeans_cost refuses out-of-range labels (they used to be clipped to a wrong center)."""
import jax
import jax.numpy as jnp
import pytest

from jaxeff.sketch import kmeans_cost


def test_kmeans_cost_label_range():
    A = jnp.ones((4, 2))
    C = jnp.zeros((2, 2))
    assert float(kmeans_cost(A, C, jnp.array([0, 1, 1, 0]))) == 8.0
    for bad in ([0, 2, 1, 0], [0, -1, 1, 0]):
        with pytest.raises(ValueError, match="`labels`"):
            kmeans_cost(A, C, jnp.array(bad))
    with pytest.raises(ValueError, match="`labels`"):
        kmeans_cost(A, C, jnp.array([0.0, 1.0, 1.0, 0.0]))
    f = jax.jit(lambda l: kmeans_cost(A, C, l))
    with pytest.raises(Exception, match="labels"):
        jax.block_until_ready(f(jnp.array([0, 1, 5, 0])))

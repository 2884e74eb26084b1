"""Bad arguments of the sketch family fail with an error naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.sketch import (
    CountSketch,
    SketchState,
    dictionary_learning,
    kmeans,
    kmeans_assign,
    kmeans_cost,
    omp,
    rowspace_basis,
    sharded_sketch_apply,
    sketch_apply,
    sketch_update,
    sketch_update_rows,
    sketched_dictionary_learning,
    sketched_kmeans,
)

KEY = jax.random.key(0)
A = jnp.asarray(np.random.default_rng(0).normal(size=(12, 2)), jnp.float32)
C = jnp.array([[0.0, 0.0], [5.0, 5.0]])
LAB = jnp.array([0] * 6 + [1] * 6)
S = CountSketch(KEY, 4, 8)
B = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
ST = SketchState(S, jnp.zeros((4, 3)), "left")
MESH = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


@pytest.mark.parametrize("call, name", [
    (lambda: kmeans(KEY, None, 2), "A"),
    (lambda: kmeans(KEY, A, 2, tol=None), "tol"),
    (lambda: kmeans(KEY, A, 2, tol=-1.0), "tol"),
    (lambda: kmeans(KEY, A, 2, tol=float("nan")), "tol"),
    (lambda: kmeans(KEY, A, 2, init=None), "init"),
    (lambda: sketched_kmeans(KEY, None, 2, sketch_size=6), "A"),
    (lambda: sketched_kmeans(KEY, A, 2, sketch_size=6, tol=None), "tol"),
    (lambda: kmeans_assign(None, C), "A"),
    (lambda: kmeans_assign(A, None), "centers"),
    (lambda: kmeans_assign(A, C[:0]), "centers"),
    (lambda: kmeans_cost(None, C, LAB), "A"),
    (lambda: kmeans_cost(A, None, LAB), "centers"),
    (lambda: kmeans_cost(A, C, None), "labels"),
    (lambda: kmeans_cost(A, C[0], LAB), "centers"),
    (lambda: kmeans_cost(A[:, :1], C, LAB), "centers"),
    (lambda: kmeans_cost(A, C[:, :1], LAB), "centers"),
    (lambda: omp(None, A, 1), "D"),
    (lambda: omp(C, None, 1), "A"),
    (lambda: dictionary_learning(KEY, None, 2, 1), "A"),
    (lambda: sketched_dictionary_learning(KEY, None, 2, 1, sketch_size=6), "A"),
    (lambda: rowspace_basis(None), "SA"),
])
def test_kmeans_dictionary_errors(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: sketch_apply(S, None), "A"),
    (lambda: sketch_apply(S, B[:0]), "A"),
    (lambda: sketch_apply(S, B, offset=None), "offset"),
    (lambda: sketch_apply(S, B[:4], offset=2.5), "offset"),
    (lambda: sharded_sketch_apply(S, None, MESH), "A"),
    (lambda: sharded_sketch_apply(S, B, None), "mesh"),
    (lambda: sketch_update(ST, None, jnp.array([1]), jnp.array([1.0])), "rows"),
    (lambda: sketch_update(ST, jnp.array([1]), None, jnp.array([1.0])), "cols"),
    (lambda: sketch_update(ST, jnp.array([1]), jnp.array([1]), None), "deltas"),
    (lambda: sketch_update_rows(ST, None, jnp.ones((1, 3))), "rows"),
    (lambda: sketch_update_rows(ST, jnp.array([1]), None), "X"),
])
def test_sketch_apply_update_errors(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_valid_calls_unchanged():
    assert np.allclose(sketch_apply(S, B[:4], offset=np.int64(4)) + sketch_apply(S, B[:4]) * 0,
                       sketch_apply(S, B[:4], offset=4))
    assert np.allclose(sharded_sketch_apply(S, B > 0, MESH), sharded_sketch_apply(S, (B > 0).astype(jnp.float32), MESH))
    f = jax.jit(lambda o: sketch_apply(S, B[:4], offset=o))
    assert np.allclose(f(4), sketch_apply(S, B[:4], offset=4), atol=1e-6)
    assert np.isclose(float(kmeans_cost(A, C, LAB)), float(jnp.sum((A - C[LAB]) ** 2)), rtol=1e-6)

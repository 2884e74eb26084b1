import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff._core import validation as v


def test_messages_name_argument_and_shapes():
    with pytest.raises(ValueError, match=r"`w` must have shape \(3, \*\), got \(2, 2\)"):
        v.check_shape("w", np.zeros((2, 2)), (3, None))
    with pytest.raises(ValueError, match=r"`a` and `b` must have the same shape"):
        v.check_same_shape("a", np.zeros(2), "b", np.zeros(3))
    with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\], got 1.5"):
        v.check_probability("beta", 1.5)
    with pytest.raises(ValueError, match=r"`lr` must be in \(0, inf\]"):
        v.check_positive("lr", 0.0)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        v.check_choice("kind", "x", ["mse", "cosine"])
    with pytest.raises(ValueError, match="floating"):
        v.check_floating("x", jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="NaN or inf"):
        v.check_finite("x", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="required"):
        v.check_key("key", None)
    with pytest.raises(ValueError, match="PRNG key"):
        v.check_key("key", jnp.ones(3))
    with pytest.raises(ValueError, match="does not broadcast"):
        v.check_broadcastable("where", np.ones((3, 2)), (3, 4))
    with pytest.raises(ValueError, match="divisible"):
        v.check_divisible("batch", 10, 4, "num_microbatches")
    v.check_key("key", jax.random.key(0))
    v.check_key("key", jax.random.PRNGKey(0))
    v.check_broadcastable("where", np.ones((3, 1)), (3, 4))


def test_traced_values_are_not_checked():
    @jax.jit
    def f(x):
        v.check_in_range("x", x, 0.0, 1.0)
        v.check_finite("x", x)
        return x

    assert float(f(5.0)) == 5.0


def test_error_if_eager_and_jit():
    x = jnp.ones(3)
    assert v.error_if(x, jnp.bool_(False), "boom") is x
    with pytest.raises(ValueError, match="boom"):
        v.error_if(x, jnp.bool_(True), "boom")
    f = jax.jit(lambda a: v.error_if(a, jnp.any(a < 0), "negative `a`"))
    np.testing.assert_array_equal(np.asarray(f(x)), np.ones(3))
    with pytest.raises(Exception, match="negative `a`"):
        jax.block_until_ready(f(-x))


def test_check_traced_in_range():
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=r"`lr` must be in \(0, inf\]"):
        v.check_traced_in_range("lr", x, 0.0, 0.0, None, low_inclusive=False)
    f = jax.jit(lambda lr: v.check_traced_in_range("lr", x, lr, 0.0, 1.0, high_inclusive=False) * lr)
    assert float(f(0.5)[0]) == 0.5
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(Exception, match="`lr`"):
            jax.block_until_ready(f(bad))


def test_check_index_range():
    idx = jnp.array([0, 4, -100])
    assert v.check_index_range("ids", idx, 5, ignore=-100) is idx
    with pytest.raises(ValueError, match=r"`ids` must hold indices in \[0, 5\)"):
        v.check_index_range("ids", idx, 5)
    with pytest.raises(ValueError, match="`ids`"):
        v.check_index_range("ids", np.array([5]), 5)
    v.check_index_range("ids", np.zeros((0,), np.int32), 0)  # empty is fine
    f = jax.jit(lambda i: v.check_index_range("ids", i, 5, jnp.float32(1.0), ignore=-100))
    assert float(f(idx)) == 1.0
    with pytest.raises(Exception, match="`ids`"):
        jax.block_until_ready(f(jnp.array([0, 5])))

"""Rounding on bad input: errors instead of NaN / wrong-shape / off-target results.

Regression tests: ``FixedGrid(1e-45)`` made ``round_to`` return NaN for finite input;
``sr_stack_copies(A, 2.5)`` tiled 2 copies but divided by sqrt(2.5); ``sr_test_matrix``
missed a too-large ``sigma_min`` without a word; ``sr_apply_updates`` broadcast a (3,) param
with a (3, 3) update.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.rounding import FixedGrid, round_to, sr_apply_updates
from jaxeff.rounding.study import sr_stack_copies, sr_test_matrix


@pytest.mark.parametrize("step", [1e-45, 1e-39, 1e39])
def test_grid_step_outside_float32_range_refused(step):
    x = jnp.array([0.5, -1.25], jnp.float32)
    with pytest.raises(ValueError, match="`step`|grid step"):
        round_to(x, FixedGrid(step), "nearest")


def test_grid_step_ok_in_float64():
    with jax.enable_x64(True):
        x = jnp.array([0.5, -1.25], jnp.float64)
        y = round_to(x, FixedGrid(1e-300), "nearest")
        assert np.all(np.isfinite(np.asarray(y)))


def test_grid_finer_than_float_resolution_keeps_x():
    # x / step overflows float32: every float near x is (as close as representable to) a grid point
    x = jnp.array([3e38, -2e38, 1.0], jnp.float32)
    y = round_to(x, FixedGrid(1e-3), "nearest")
    assert np.all(np.isfinite(np.asarray(y)))
    np.testing.assert_allclose(np.asarray(y)[:2], np.asarray(x)[:2], rtol=1e-6)
    y = round_to(x, FixedGrid(1e-3), "stochastic", key=jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(y)))


def test_sr_stack_copies_integer_k():
    A = jax.random.normal(jax.random.key(0), (3, 2))
    B = sr_stack_copies(A, 2)
    assert B.shape == (6, 2)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(B), compute_uv=False),
                               np.linalg.svd(np.asarray(A), compute_uv=False), rtol=1e-5)
    for bad in (2.5, 0, True):
        with pytest.raises(ValueError, match="`k`"):
            sr_stack_copies(A, bad)


def test_sr_test_matrix_hits_sigma_min_or_raises():
    A = sr_test_matrix(jax.random.key(0), 200, 5, sigma_min=1e-2)
    np.testing.assert_allclose(float(jnp.linalg.svd(A, compute_uv=False)[-1]), 1e-2, rtol=1e-3)
    with pytest.raises(ValueError, match="sigma_min"):
        sr_test_matrix(jax.random.key(0), 200, 5, sigma_min=100.0)


def test_sr_apply_updates_shape_mismatch():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match="shape"):
        sr_apply_updates(jax.random.key(0), p, {"w": jnp.ones((3, 3))})
    with pytest.raises(ValueError, match="shape"):
        sr_apply_updates(jax.random.key(0), {"w": jnp.ones((3, 1), jnp.bfloat16)}, {"w": jnp.ones((3,))})
    out = sr_apply_updates(jax.random.key(0), p, {"w": jnp.full(3, 1e-3)})
    assert out["w"].shape == (3,)

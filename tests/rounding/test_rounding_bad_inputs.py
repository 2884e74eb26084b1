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


# --------------------------------------------------------------------------- issue 17: clear errors
from jaxeff.rounding import FloatFormat, float_format  # noqa: E402
from jaxeff.rounding.noise import sr_noise_bits  # noqa: E402
from jaxeff.rounding.study import (  # noqa: E402
    decimal_grids,
    sigma_min_bound,
    sigma_min_study,
    sr_controlled_variance_matrix,
    sr_nu,
    sr_variance,
)

_K = jax.random.key(0)
_A = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)


@pytest.mark.parametrize("kw, name", [({"exp_bits": None}, "exp_bits"), ({"man_bits": None}, "man_bits")])
def test_float_format_none_bits(kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        FloatFormat(**({"exp_bits": 4, "man_bits": 3} | kw))


@pytest.mark.parametrize("spec", ["no-such-format", None, 3.5])
def test_float_format_names_spec(spec):
    with pytest.raises(ValueError, match="`spec`"):
        float_format(spec)
    with pytest.raises(ValueError, match="`fmt`"):  # callers keep naming their own argument
        round_to(jnp.ones(2), spec, "nearest")


@pytest.mark.parametrize("ps", [(-1,), (16,), (2.5,), None, "12"])
def test_decimal_grids_bad_ps(ps):
    with pytest.raises(ValueError, match="`ps`"):
        decimal_grids(ps)


def test_decimal_grids_valid_unchanged():
    assert [g.step for g in decimal_grids((1, np.int64(2)))] == [0.1, 0.01]


@pytest.mark.parametrize("shape", [(-1, 2), None, (2.5,), "ab", 3])
def test_sr_noise_bits_bad_shape(shape):
    with pytest.raises(ValueError, match="`shape`"):
        sr_noise_bits(_K, shape)


def test_sr_noise_bits_empty_shape_ok():
    assert sr_noise_bits(_K, (0, 3)).shape == (0, 3)
    assert sr_noise_bits(_K, ()).shape == ()


@pytest.mark.parametrize("kw, name", [
    ({"A_rounded": _A[:5]}, "A_rounded"), ({"A_rounded": _A[:, :2]}, "A_rounded"), ({"A_rounded": _A[None]}, "A_rounded"),
    ({"A_rounded": _A[0]}, "A_rounded"), ({"A_rounded": None}, "A_rounded"),
    ({"A_rounded": _A.at[0, 0].set(jnp.nan)}, "A_rounded"), ({"A_rounded": _A.at[0, 0].set(jnp.inf)}, "A_rounded"),
    ({"A": _A[:5]}, "A"), ({"A": _A[:0]}, "A"), ({"A": _A.at[0, 0].set(jnp.nan)}, "A"), ({"A": None}, "A"),
])
def test_sr_nu_bad_input(kw, name):
    args = {"A": _A, "A_rounded": _A + 0.01, "fmt": "bf16"} | kw
    with pytest.raises(ValueError, match=f"`{name}`"):
        sr_nu(**args)


def test_sr_nu_nan_propagates_under_jit():
    f = jax.jit(lambda a, b: sr_nu(a, b, "bf16"))
    assert np.isfinite(float(f(_A, _A + 0.01)))
    assert float(f(_A, _A + 0.01)) == pytest.approx(float(sr_nu(_A, _A + 0.01, "bf16")))
    assert np.isnan(float(f(_A, (_A + 0.01).at[0, 0].set(jnp.nan))))


@pytest.mark.parametrize("fn", [sigma_min_bound, sr_stack_copies])
@pytest.mark.parametrize("A", [_A[:0], _A[:, :0], None])
def test_empty_matrix_refused(fn, A):
    with pytest.raises(ValueError, match="`A`"):
        fn(A, "bf16") if fn is sigma_min_bound else fn(A, 2)


def test_sr_stack_copies_bool_and_int_as_float():
    b = _A > 0
    np.testing.assert_allclose(np.asarray(sr_stack_copies(b, 2)), np.asarray(sr_stack_copies(b.astype(jnp.float32), 2)))
    i = jnp.round(_A).astype(jnp.int32)
    np.testing.assert_allclose(np.asarray(sr_stack_copies(i, 2)), np.asarray(sr_stack_copies(i.astype(jnp.float32), 2)))


def test_sr_variance_none():
    with pytest.raises(ValueError, match="`a`"):
        sr_variance(None, "bf16")


@pytest.mark.parametrize("kw, name", [
    ({"n": None}, "n"), ({"n": 8.0}, "n"), ({"d": None}, "d"), ({"d": 2.5}, "d"), ({"p": None}, "p"),
    ({"p": 2.5}, "p"), ({"p": 0}, "p"), ({"p": 13}, "p"), ({"r": None}, "r"), ({"r": 2.5}, "r"), ({"r": 7}, "r"),
])
def test_sr_controlled_variance_matrix_bad_input(kw, name):
    args = {"key": _K, "n": 8, "d": 3, "p": 2, "variance": "high", "r": 2} | kw
    with pytest.raises(ValueError, match=f"`{name}`"):
        sr_controlled_variance_matrix(**args)


@pytest.mark.parametrize("kw, name", [({"n": None}, "n"), ({"d": None}, "d"), ({"d": 2.5}, "d"),
                                      ({"sigma_min": None}, "sigma_min"), ({"sigma_min": "0"}, "sigma_min")])
def test_sr_test_matrix_bad_input(kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sr_test_matrix(**({"key": _K, "n": 6, "d": 3} | kw))


@pytest.mark.parametrize("kw, name", [({"fmts": None}, "fmts"), ({"fmts": "bf16"}, "fmts"), ({"num_draws": 2.5}, "num_draws"),
                                      ({"num_draws": None}, "num_draws"), ({"num_draws": 0}, "num_draws")])
def test_sigma_min_study_bad_input(kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sigma_min_study(_K, _A, **({"fmts": (2,)} | kw))


@pytest.mark.parametrize("kw, name", [({"params": None}, "params"), ({"updates": None}, "updates"),
                                      ({"updates": {"v": jnp.ones(3)}}, "updates")])
def test_sr_apply_updates_bad_trees(kw, name):
    args = {"key": _K, "params": {"w": jnp.ones(3)}, "updates": {"w": jnp.ones(3)}} | kw
    with pytest.raises(ValueError, match=f"`{name}`"):
        sr_apply_updates(**args)

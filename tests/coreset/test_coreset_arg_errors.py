"""Bad arguments of the coreset family fail with an error naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.coreset import (
    augmented_sensitivity,
    coreset_probabilities,
    fit_logistic,
    fit_oblivious_sketch,
    fwht,
    lewis_weights,
    logistic_loss,
    make_coreset_data,
    merge_and_reduce,
    mu_ratio,
    oblivious_level_probabilities,
    oblivious_sketch,
    oblivious_sketch_loss,
    sqrt_leverage,
    take_coreset,
)

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 3)), jnp.float32)
Y = jnp.asarray(np.where(RNG.normal(size=16) > 0, 1.0, -1.0), jnp.float32)
KEY = jax.random.key(0)


@pytest.mark.parametrize("fn", [sqrt_leverage, lewis_weights, augmented_sensitivity])
@pytest.mark.parametrize("kw, name", [
    ({"X": None}, "X"),
    ({"X": X[None]}, "X"),
    ({"X": X[0]}, "X"),
    ({"jl_dim": 2.5}, "jl_dim"),
    ({"jl_dim": 0}, "jl_dim"),
])
def test_samplers_errors(fn, kw, name):
    args = {"key": KEY, "X": X, "y": Y, "m": 5, **kw}
    with pytest.raises(ValueError, match=name):
        fn(**args)


@pytest.mark.parametrize("kw, name", [({"X": None}, "X"), ({"X": X[None]}, "X"), ({"jl_dim": 2.5}, "jl_dim")])
def test_coreset_probabilities_errors(kw, name):
    args = {"key": KEY, "X": X, "y": Y, "method": "sqrt_leverage", **kw}
    with pytest.raises(ValueError, match=name):
        coreset_probabilities(**args)


def test_jl_dim_none_is_exact_and_still_accepted():
    p = coreset_probabilities(KEY, X, Y, "sqrt_leverage", jl_dim=None)
    assert np.isclose(float(p.sum()), 1.0, atol=1e-5)


@pytest.mark.parametrize("call, name", [
    (lambda: take_coreset(X, Y, None, jnp.ones(3)), "indices"),
    (lambda: take_coreset(X, Y, jnp.arange(3), None), "weights"),
    (lambda: merge_and_reduce(None, 5, key=KEY), "coresets"),
    (lambda: logistic_loss(jnp.zeros(3), X, Y, l2=None), "l2"),
    (lambda: fit_logistic(X, Y, l2=None), "l2"),
    (lambda: fit_logistic(X, Y, tol=None), "tol"),
    (lambda: fit_logistic(X, Y, max_steps=2.5), "max_steps"),
    (lambda: mu_ratio(jnp.zeros((1, 3)), X, Y), "beta"),
    (lambda: mu_ratio(None, X, Y), "beta"),
    (lambda: make_coreset_data("webspam", 32, d=0), "d"),
    (lambda: make_coreset_data("ddk", 32, d=-1), "d"),
    (lambda: make_coreset_data("ddk", 32, d=2.5), "d"),
    (lambda: oblivious_sketch(KEY, X, Y, 4, num_levels=2, keep=None), "keep"),
])
def test_coreset_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("kw, name", [
    ({"n": 0}, "n"), ({"n": -1}, "n"), ({"n": 2.5}, "n"), ({"n": None}, "n"),
    ({"m": 0}, "m"), ({"m": -1}, "m"), ({"m": 2.5}, "m"), ({"m": None}, "m"),
    ({"num_levels": 0}, "num_levels"), ({"num_levels": -1}, "num_levels"), ({"num_levels": 2.5}, "num_levels"),
    ({"num_levels": None}, "num_levels"),
])
def test_oblivious_level_probabilities_errors(kw, name):
    args = {"n": 100, "m": 8, "num_levels": 3, **kw}
    with pytest.raises(ValueError, match=name):
        oblivious_level_probabilities(**args)


SK = oblivious_sketch(KEY, X, Y, 4, num_levels=2)


@pytest.mark.parametrize("call, name, exc", [
    (lambda: oblivious_sketch_loss(None, jnp.zeros(3)), "sketch", TypeError),
    (lambda: oblivious_sketch_loss(SK, None), "beta", ValueError),
    (lambda: oblivious_sketch_loss(SK, jnp.zeros(3), l2=None), "l2", ValueError),
    (lambda: fit_oblivious_sketch(None), "sketch", TypeError),
    (lambda: fit_oblivious_sketch(SK, l2=None), "l2", ValueError),
    (lambda: fit_oblivious_sketch(SK, max_steps=2.5), "max_steps", ValueError),
    (lambda: fit_oblivious_sketch(SK, max_steps=None), "max_steps", ValueError),
    (lambda: fit_oblivious_sketch(SK, tol=-1.0), "tol", ValueError),
    (lambda: fit_oblivious_sketch(SK, tol=float("nan")), "tol", ValueError),
    (lambda: fit_oblivious_sketch(SK, tol=None), "tol", ValueError),
])
def test_oblivious_sketch_fit_errors(call, name, exc):
    with pytest.raises(exc, match=name):
        call()


@pytest.mark.parametrize("bad", [None, jnp.zeros((0, 2)), jnp.zeros((4, 0)), jnp.zeros((3,))])
def test_fwht_errors(bad):
    with pytest.raises(ValueError, match="`a`"):
        fwht(bad)


def test_fwht_bool_and_list_match_float():
    a = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    ref = fwht(a)
    assert np.allclose(fwht(a > 0), ref)
    assert np.allclose(fwht(a.tolist()), ref)
    assert np.allclose(fwht(a[..., 0]), fwht(a[..., 0].tolist()))  # any rank: along the last axis

"""Bad arguments of the prune family raise a ValueError naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxeff.prune as P


def _w(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


W = _w(8, 4)
X = _w(16, 8, seed=1)
NAN_X = X.at[0, 0].set(jnp.nan)
INF_X = X.at[0, 0].set(jnp.inf)


class _MLP(nnx.Module):
    def __init__(self):
        self.up = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
        self.down = nnx.Linear(8, 4, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.down(jax.nn.relu(self.up(x)))


@pytest.mark.parametrize("kw, match", [
    (dict(w_down=W[None]), "w_down"),
    (dict(w_down=W[0]), "w_down"),
    (dict(w_down=W[:0]), "w_down"),
    (dict(w_down=None), "w_down"),
    (dict(w_down=W.at[0, 0].set(jnp.nan)), "w_down"),
    (dict(w_down=W.at[0, 0].set(jnp.inf)), "w_down"),
    (dict(x=X[:0]), "`x`"),
    (dict(x=NAN_X), "`x`"),
    (dict(x=INF_X), "`x`"),
    (dict(x=None), "`x`"),
    (dict(damp=None), "damp"),
    (dict(damp=float("nan")), "damp"),
])
def test_osscar_bad_args(kw, match):
    args = dict(w_down=W, x=X, keep=4, damp=0.01, local_search_iters=2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.osscar(**args)


@pytest.mark.parametrize("kw, match", [
    (dict(w_o=W[:0]), "w_o"),
    (dict(w_o=W.at[0, 0].set(jnp.nan)), "w_o"),
    (dict(w_o=None), "w_o"),
    (dict(x=X[:0]), "`x`"),
    (dict(x=NAN_X), "`x`"),
    (dict(damp=None), "damp"),
    (dict(num_heads=True), "num_heads"),
])
def test_osscar_heads_bad_args(kw, match):
    args = dict(w_o=W, x=X, keep=2, num_heads=4, damp=0.01, local_search_iters=2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.osscar_heads(**args)


@pytest.mark.parametrize("kw, match", [
    (dict(w=W[:0]), "`w`"),
    (dict(w=W.at[0, 0].set(jnp.nan)), "`w`"),
    (dict(x=X[:0]), "`x`"),
    (dict(x=INF_X), "`x`"),
    (dict(group_size=0), "group_size"),
    (dict(group_size=-1), "group_size"),
    (dict(group_size=2.5), "group_size"),
    (dict(group_size=None), "group_size"),
    (dict(damp=None), "damp"),
])
def test_least_squares_refit_bad_args(kw, match):
    args = dict(w=W, x=X, kept=jnp.array([0, 2, 5]), group_size=1, damp=0.01)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.least_squares_refit(**args)


@pytest.mark.parametrize("fn", ["osscar", "least_squares_refit"])
def test_integer_kernel_gives_the_float_result(fn):
    wi = jnp.round(W).astype(jnp.int32)
    wf = wi.astype(jnp.float32)
    if fn == "osscar":
        got, want = P.osscar(wi, X, 4, local_search_iters=2)[0], P.osscar(wf, X, 4, local_search_iters=2)[0]
    else:
        got, want = P.least_squares_refit(wi, X, [0, 2, 5]), P.least_squares_refit(wf, X, [0, 2, 5])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(w=W[None]), "`w`"),
    (dict(w=W[:7]), "w_new"),
    (dict(w=None), "`w`"),
    (dict(w_new=W[None]), "w_new"),
    (dict(w_new=W[:0]), "w_new"),
    (dict(w_new=None), "w_new"),
    (dict(x=X[0]), "`x`"),
    (dict(x=X[:, :7]), "`x`"),
    (dict(x=X[:0]), "`x`"),
    (dict(x=None), "`x`"),
])
def test_structured_reconstruction_error_bad_args(kw, match):
    args = dict(w=W, w_new=W * 0.9, x=X)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.structured_reconstruction_error(**args)


def test_structured_reconstruction_error_valid_unchanged():
    assert P.structured_reconstruction_error(W, W, X) == 0.0
    assert P.structured_reconstruction_error(W, W * 0.9, X[None]) == pytest.approx(0.01)


@pytest.mark.parametrize("kw, match", [
    (dict(x_or_hessian=X[:0]), "x_or_hessian"),
    (dict(x_or_hessian=None), "x_or_hessian"),
    (dict(sparsity=None), "sparsity"),
    (dict(damp=None), "damp"),
    (dict(w=W[:0]), "`w`"),
])
def test_sparsegpt_bad_args(kw, match):
    args = dict(w=W, x_or_hessian=X, sparsity=0.5, block_size=4, damp=0.01)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.sparsegpt(**args)


def test_sparsegpt_integer_kernel_gives_the_float_result():
    wi = jnp.round(W).astype(jnp.int32)
    got = P.sparsegpt(wi, X, 0.5, block_size=4)[0]
    want = P.sparsegpt(wi.astype(jnp.float32), X, 0.5, block_size=4)[0]
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(x=X[:0]), "`x`"),
    (dict(x=NAN_X), "`x`"),
    (dict(x=INF_X), "`x`"),
    (dict(x=None), "`x`"),
    (dict(sparsity=None), "sparsity"),
])
def test_wanda_bad_args(kw, match):
    args = dict(w=W, x=X, sparsity=0.5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        P.wanda(**args)


def test_wanda_nan_activations_fail_under_jit():
    f = jax.jit(lambda x: P.wanda(W, x, 0.5)[0])
    f(X).block_until_ready()  # valid input fine under jit
    with pytest.raises(Exception, match="`x` contains NaN"):
        f(NAN_X).block_until_ready()


@pytest.mark.parametrize("x", [X[:0], None])
def test_layer_hessian_bad_x(x):
    with pytest.raises(ValueError, match="`x`"):
        P.layer_hessian(x)


@pytest.mark.parametrize("call, match", [
    (lambda: P.wanda_scores(W[:0], jnp.ones(4)), "`w`"),
    (lambda: P.wanda_scores(None, jnp.ones(8)), "`w`"),
    (lambda: P.wanda_scores(W, None), "x_norms"),
    (lambda: P.magnitude_scores(None), "params"),
    (lambda: P.random_scores(None, jax.random.key(0)), "params"),
    (lambda: P.snip_scores(None, None), "params"),
    (lambda: P.nm_mask({"a": W}, 2, 4, axis=None), "axis"),
    (lambda: P.structured_mask({"a": W}, None), "sparsity"),
    (lambda: P.structured_mask({"a": W}, 0.5, axis=None), "axis"),
    (lambda: P.unstructured_mask({"a": W}, None), "sparsity"),
    (lambda: P.apply_masks(None, {"a": W > 0}), "masks"),
    (lambda: P.one_shot_schedule(None), "sparsity"),
    (lambda: P.OneShotSchedule(sparsity=None), "sparsity"),
    (lambda: P.periodic_schedule(None, 2), "sparsity"),
    (lambda: P.PeriodicSchedule(sparsity=None, every=2), "sparsity"),
    (lambda: P.cubic_schedule(None, 0, 10), "final_sparsity"),
    (lambda: P.cubic_schedule(0.5, 0, 10, initial_sparsity=None), "initial_sparsity"),
    (lambda: P.sparsify(None, P.one_shot_schedule(0.5)), "tx"),
])
def test_scores_masks_schedules_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("rules", [1.5, -0.5, float("nan"), {"up": 1.5}])
def test_prune_params_and_model_name_rules(rules):
    with pytest.raises(ValueError, match="`rules`"):
        P.prune_params({"Dense_0": {"kernel": _w(8, 4)}}, rules, method="magnitude")
    with pytest.raises(ValueError, match="`rules`"):
        P.prune_model(_MLP(), rules, method="magnitude")


@pytest.mark.parametrize("call, match", [
    (lambda: P.prune_model(None, 0.5, method="magnitude"), "model"),
    (lambda: P.prune_params(None, 0.5, method="magnitude"), "params"),
    (lambda: P.find_prunable_blocks(None), "model"),
    (lambda: P.shrink(None, {"": jnp.arange(4)}), "model"),
    (lambda: P.group_masks(None, {"": jnp.arange(4)}), "model"),
    (lambda: P.group_masks(_MLP(), None), "keep"),
    (lambda: P.model_masks(_MLP(), None), "masks_by_param"),
    (lambda: P.prune_structured(None, {"down": X}, 0.5), "model"),
    (lambda: P.prune_structured(_MLP(), {"down": X}, None), "sparsity"),
])
def test_model_level_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sparsify_still_accepts_an_optax_transformation():
    tx = P.sparsify(optax.sgd(0.1), P.one_shot_schedule(0.5))
    params = {"a": _w(4, 6)}
    st = tx.init(params)
    u, _ = tx.update({"a": _w(4, 6, seed=1)}, st, params)
    assert u["a"].shape == (4, 6)

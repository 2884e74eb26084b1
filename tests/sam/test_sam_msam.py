"""mSAM / SAM / ASAM: against optax.contrib.sam (opaque mode), a hand-written micro-batch loop,
across modes and 8-device sharding, inside nnx.Optimizer / optax.chain; gradient accumulation (accumulate_steps) against a hand-written
loop with different batches per mini-step, and refusal inside optax.MultiSteps."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxeff._core.sharding import replicate, shard_batch
from jaxeff.sam import MSAMState, msam, msam_gradient, msam_nnx_loss_fn, sam


def _mlp_params(key, din=5, h=7, dout=3):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (din, h)) / np.sqrt(din),
        "b1": jnp.zeros(h),
        "w2": jax.random.normal(k2, (h, dout)) / np.sqrt(h),
        "b2": jnp.zeros(dout),
    }


def _loss(p, batch):
    x, y = batch["x"], batch["y"]
    hdn = jnp.tanh(x @ p["w1"] + p["b1"])
    logits = hdn @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _batch(key, b=32, din=5, dout=3):
    kx, ky = jax.random.split(key)
    return {"x": jax.random.normal(kx, (b, din)), "y": jax.random.randint(ky, (b,), 0, dout)}


@functools.partial(jax.jit, static_argnames=("m", "adaptive"))
def _ref_msam_direction(params, batch, rho, m, eps=1e-12, adaptive=False, eta=0.0):
    """Slow, obvious: a python loop over micro-batches (unrolled), one at a time."""
    b = batch["x"].shape[0]
    s = b // m
    total = None
    for j in range(m):
        mb = jax.tree.map(lambda a: a[j * s:(j + 1) * s], batch)
        g = jax.grad(_loss)(params, mb)
        if adaptive:
            t = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
            tg = jax.tree.map(lambda ti, gi: ti * gi, t, g)
            nrm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tg)))
            e = jax.tree.map(lambda ti, tgi: rho * ti * tgi / (nrm + eps), t, tg)
        else:
            nrm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
            e = jax.tree.map(lambda gi: rho * gi / (nrm + eps), g)
        gp = jax.grad(_loss)(jax.tree.map(jnp.add, params, e), mb)
        total = gp if total is None else jax.tree.map(jnp.add, total, gp)
    return jax.tree.map(lambda t: t / m, total)


def _upd(tx, params, batch, grads=None, loss_fn=_loss):
    """One jitted update from a fresh state (eager dispatch is slow on a busy CPU)."""
    return jax.jit(lambda p, b, g: tx.update(g, tx.init(p), p, loss_fn=loss_fn, batch=b)[0])(params, batch, grads)


def _close(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def setup():
    p = _mlp_params(jax.random.key(1))
    b = _batch(jax.random.key(2))
    return p, b


def test_sam_equals_optax_contrib_sam_opaque(setup):
    params, batch = setup
    lr, rho = 0.1, 0.05
    ref = optax.contrib.sam(
        optax.sgd(lr), optax.chain(optax.contrib.normalize(), optax.sgd(rho)), sync_period=2, opaque_mode=True
    )
    ours = sam(optax.sgd(lr), rho, eps=0.0)
    ours_m = msam(optax.sgd(lr), rho, 1)
    sr, so, sm = ref.init(params), ours.init(params), ours_m.init(params)
    p_r, p_o, p_m = params, params, params
    for t in range(3):  # several steps so states and params evolve
        b = _batch(jax.random.key(10 + t))
        g = jax.grad(_loss)(p_r, b)
        ur, sr = jax.jit(lambda g, s, p, b: ref.update(g, s, p, grad_fn=lambda q, _: jax.grad(_loss)(q, b)))(
            g, sr, p_r, b)
        p_r = optax.apply_updates(p_r, ur)
        uo, so = jax.jit(lambda g, s, p, b: ours.update(g, s, p, loss_fn=_loss, batch=b))(
            jax.grad(_loss)(p_o, b), so, p_o, b)
        p_o = optax.apply_updates(p_o, uo)
        um, sm = jax.jit(lambda g, s, p, b: ours_m.update(g, s, p, loss_fn=_loss, batch=b))(
            jax.grad(_loss)(p_m, b), sm, p_m, b)
        p_m = optax.apply_updates(p_m, um)
        _close(uo, ur, rtol=1e-6, atol=1e-7)
        _close(um, ur, rtol=1e-5, atol=1e-6)
    assert isinstance(so, MSAMState) and int(so.count) == 3


@pytest.mark.parametrize("m,mode", [(2, "vmap"), (4, "scan"), (8, "vmap"), (8, "scan")])
def test_msam_equals_handwritten_loop(setup, m, mode):
    params, batch = setup
    rho, lr = 0.1, 0.5
    tx = msam(optax.sgd(lr), rho, m, mode=mode)
    u, _ = jax.jit(lambda p, b: tx.update(jax.grad(_loss)(p, b), tx.init(p), p, loss_fn=_loss, batch=b))(params, batch)
    ref = jax.tree.map(lambda d: -lr * d, _ref_msam_direction(params, batch, rho, m))
    _close(u, ref)


def test_asam_equals_handwritten(setup):
    params, batch = setup
    tx = msam(optax.sgd(1.0), 0.3, 4, adaptive=True, asam_eta=0.01)
    u = _upd(tx, params, batch)
    ref = _ref_msam_direction(params, batch, 0.3, 4, adaptive=True, eta=0.01)
    _close(u, jax.tree.map(jnp.negative, ref))
    # adaptive differs from plain SAM (the test can fail)
    plain = _ref_msam_direction(params, batch, 0.3, 4)
    assert not np.allclose(np.asarray(plain["w1"]), np.asarray(ref["w1"]), atol=1e-5)


def test_m1_updates_none_recomputes_same(setup):
    params, batch = setup
    tx = sam(optax.sgd(1.0), 0.1)
    a = _upd(tx, params, batch, jax.grad(_loss)(params, batch))
    b = _upd(tx, params, batch)
    _close(a, b, rtol=1e-6, atol=1e-7)


def test_modes_agree_and_rho0_is_base(setup):
    params, batch = setup
    outs = []
    for mode in ["vmap", "scan"]:
        tx = msam(optax.adam(1e-2), 0.05, 8, mode=mode)
        outs.append(_upd(tx, params, batch))
    _close(outs[0], outs[1], rtol=1e-5, atol=1e-7)
    tx0 = msam(optax.sgd(1.0), 0.0, 4)
    u0 = _upd(tx0, params, batch)
    _close(u0, jax.tree.map(jnp.negative, jax.grad(_loss)(params, batch)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m,mode", [(8, "vmap"), (16, "scan"), (1, "vmap")])
def test_sharded_equals_single_device(setup, mesh8, m, mode):
    params, _ = setup
    batch = _batch(jax.random.key(3), b=64)
    P = jax.P
    tx_sh = msam(optax.sgd(0.3), 0.07, m, mode=mode, axis_name="data")
    tx_1 = msam(optax.sgd(0.3), 0.07, m, mode=mode)

    def local_step(p, b):
        g = jax.grad(_loss)(p, b)  # device-local gradient
        u, _ = tx_sh.update(g, tx_sh.init(p), p, loss_fn=_loss, batch=b)
        return u

    f = jax.jit(jax.shard_map(local_step, mesh=mesh8, in_specs=(P(), P("data")), out_specs=P(), check_vma=False))
    u_sh = f(replicate(params, mesh8), shard_batch(batch, mesh8, "data"))
    u_1 = _upd(tx_1, params, batch, jax.grad(_loss)(params, batch))
    _close(u_sh, u_1, rtol=2e-5, atol=2e-7)
    if m > 1:
        ref = jax.tree.map(lambda d: -0.3 * d, _ref_msam_direction(params, batch, 0.07, m))
        _close(u_sh, ref)


def test_sharded_bad_m(setup, mesh8):
    params, _ = setup
    batch = _batch(jax.random.key(3), b=64)
    tx = msam(optax.sgd(0.3), 0.07, 4, axis_name="data")
    f = jax.shard_map(lambda p, b: tx.update(None, tx.init(p), p, loss_fn=_loss, batch=b)[0], mesh=mesh8,
                      in_specs=(jax.P(), jax.P("data")), out_specs=jax.P(), check_vma=False)
    with pytest.raises(ValueError, match="num_microbatches"):
        f(replicate(params, mesh8), shard_batch(batch, mesh8, "data"))


def test_zero_gradient_gives_finite_update():
    params = {"w": jnp.zeros(3)}
    loss = lambda p, b: jnp.sum(p["w"] ** 2) + 0.0 * jnp.sum(b)  # noqa: E731  (zero gradient at w = 0)
    b = jnp.ones((8, 2))
    for m, adaptive, eps in [(1, False, 1e-12), (4, False, 0.0), (2, True, 0.0)]:
        tx = msam(optax.adam(1e-3), 0.05, m, adaptive=adaptive, eps=eps)
        u = _upd(tx, params, b, {"w": jnp.zeros(3)}, loss_fn=loss)
        assert np.all(np.isfinite(np.asarray(u["w"])))
    # optax's own normalize() gives NaN here (what we fix)
    ref = optax.contrib.sam(optax.sgd(0.1), optax.chain(optax.contrib.normalize(), optax.sgd(0.05)), opaque_mode=True)
    ur, _ = ref.update({"w": jnp.zeros(3)}, ref.init(params), params, grad_fn=lambda q, _: jax.grad(loss)(q, b))
    assert np.any(np.isnan(np.asarray(ur["w"])))


def test_chain_and_multisteps(setup):
    params, batch = setup
    inner = msam(optax.sgd(0.1), 0.05, 4)
    tx = optax.chain(inner, optax.clip_by_global_norm(1e9), optax.scale(1.0))
    u = _upd(tx, params, batch)
    ref = jax.tree.map(lambda d: -0.1 * d, _ref_msam_direction(params, batch, 0.05, 4))
    _close(u, ref)



@pytest.mark.parametrize("m", [1, 2])
def test_multisteps_wrapping_is_refused(setup, m):
    """MultiSteps hands the inner update only the last mini-step's batch: refuse, name the fix."""
    params, batch = setup
    ms = optax.MultiSteps(msam(optax.sgd(0.1), 0.05, m), every_k_schedule=2)
    st = ms.init(params)
    g = jax.grad(_loss)(params, batch)
    with pytest.raises(ValueError, match="accumulate_steps"):
        jax.jit(lambda g, st, p, b: ms.update(g, st, p, loss_fn=_loss, batch=b))(g, st, params, batch)
    # also when nested in a chain inside MultiSteps
    ms2 = optax.MultiSteps(optax.chain(optax.identity(), msam(optax.sgd(0.1), 0.05, m)), every_k_schedule=3)
    with pytest.raises(ValueError, match="MultiSteps"):
        ms2.update(g, ms2.init(params), params, loss_fn=_loss, batch=batch)
    # every_k_schedule=1 is a pass-through and stays allowed
    ms1 = optax.MultiSteps(msam(optax.sgd(0.1), 0.05, 2), every_k_schedule=1)
    u, _ = jax.jit(lambda g, st, p, b: ms1.update(g, st, p, loss_fn=_loss, batch=b))(g, ms1.init(params), params, batch)
    _close(u, jax.tree.map(lambda d: -0.1 * d, _ref_msam_direction(params, batch, 0.05, 2)))


@pytest.mark.parametrize("m,k,mode", [(2, 3, "vmap"), (1, 2, "vmap"), (4, 2, "scan")])
def test_accumulate_steps_different_batches_equal_handwritten_loop(setup, m, k, mode):
    """k mini-steps with DIFFERENT batches: the emitted update is base(mean_i mSAM_m(batch_i)),
    i.e. mSAM with m*k micro-batches over the union; params stay put inside a window; base
    state (momentum) advances once per window. Two windows, against a hand-written loop."""
    params, _ = setup
    batches = [_batch(jax.random.key(100 + i)) for i in range(2 * k)]
    base = optax.sgd(0.1, momentum=0.9)
    tx = msam(base, 0.05, m, mode=mode, accumulate_steps=k)
    step = jax.jit(lambda g, st, p, b: tx.update(g, st, p, loss_fn=_loss, batch=b))

    p, st = params, tx.init(params)
    # reference: hand-written loop, one base step per window on the mean mSAM direction
    rp, rst = params, base.init(params)
    for w in range(2):
        for i in range(k):
            b = batches[w * k + i]
            u, st = step(jax.grad(_loss)(p, b), st, p, b)
            if i < k - 1:
                assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
            p = optax.apply_updates(p, u)
        dirs = [_ref_msam_direction(rp, batches[w * k + i], 0.05, m) for i in range(k)]
        mean = jax.tree.map(lambda *d: sum(d) / k, *dirs)
        ru, rst = base.update(mean, rst, rp)
        rp = optax.apply_updates(rp, ru)
        _close(p, rp, rtol=1e-4, atol=1e-6)
    # the union view: one window == mSAM with m*k micro-batches over the concatenated batch
    union = jax.tree.map(lambda *x: jnp.concatenate(x), *batches[:k])
    d_union = _ref_msam_direction(params, union, 0.05, m * k)
    tx1 = msam(optax.sgd(1.0), 0.05, m, accumulate_steps=k)
    st1, p1 = tx1.init(params), params
    for i in range(k):
        u1, st1 = tx1.update(None if m > 1 else jax.grad(_loss)(params, batches[i]), st1, params,
                             loss_fn=_loss, batch=batches[i])
    _close(u1, jax.tree.map(lambda d: -d, d_union), rtol=1e-4, atol=1e-6)
    assert int(st.count) == 2 * k and int(st.mini_step) == 0


class _BNNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.bn(self.l1(x))))


def _nnx_loss(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"]).mean()


def test_nnx_optimizer_batchnorm_stats_from_clean_pass_only(setup):
    _, batch = setup
    model = _BNNet(nnx.Rngs(0))
    ref_model = _BNNet(nnx.Rngs(0))
    opt = nnx.Optimizer(model, msam(optax.sgd(0.1), 0.05, 4), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, b):
        lf = msam_nnx_loss_fn(model, _nnx_loss)
        grads = nnx.grad(_nnx_loss)(model, b)  # the clean pass (updates BatchNorm stats once)
        opt.update(model, grads, loss_fn=lf, batch=b)

    @nnx.jit
    def clean_only(model, b):
        nnx.grad(_nnx_loss)(model, b)

    params_before = nnx.state(model, nnx.Param)
    p0 = jax.tree.map(lambda x: np.asarray(x), nnx.to_pure_dict(params_before))
    step(model, opt, batch)
    clean_only(ref_model, batch)
    np.testing.assert_allclose(np.asarray(model.bn.mean[...]), np.asarray(ref_model.bn.mean[...]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.bn.var[...]), np.asarray(ref_model.bn.var[...]), rtol=1e-6)
    # parameters moved by -lr * mSAM direction computed with a fresh model in the same state
    p1 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
    assert int(opt.step[...]) == 1


def test_nnx_optimizer_matches_functional(setup):
    """The nnx path gives the same update as the functional path on an equivalent pytree loss."""
    _, batch = setup

    class Lin(nnx.Module):
        def __init__(self, rngs):
            self.l = nnx.Linear(5, 3, rngs=rngs)

        def __call__(self, x):
            return self.l(jnp.tanh(x))

    model = Lin(nnx.Rngs(3))
    k0 = np.asarray(model.l.kernel[...])
    b0 = np.asarray(model.l.bias[...])
    opt = nnx.Optimizer(model, msam(optax.sgd(0.2), 0.1, 4, mode="scan"), wrt=nnx.Param)
    grads = nnx.grad(_nnx_loss)(model, batch)
    opt.update(model, grads, loss_fn=msam_nnx_loss_fn(model, _nnx_loss), batch=batch)

    def floss(p, b):
        logits = jnp.tanh(b["x"]) @ p["k"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

    p = {"k": jnp.asarray(k0), "b": jnp.asarray(b0)}
    d = msam_gradient(floss, p, batch, 0.1, 4)
    np.testing.assert_allclose(np.asarray(model.l.kernel[...]), k0 - 0.2 * np.asarray(d["k"]), rtol=1e-5, atol=1e-6)


def test_bad_input(setup):
    params, batch = setup
    with pytest.raises(ValueError, match="rho"):
        msam(optax.sgd(0.1), -0.1, 2)
    with pytest.raises(ValueError, match="num_microbatches"):
        msam(optax.sgd(0.1), 0.1, 0)
    with pytest.raises(ValueError, match="mode"):
        msam(optax.sgd(0.1), 0.1, 2, mode="loop")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="accumulate_steps"):
            msam(optax.sgd(0.1), 0.1, 2, accumulate_steps=bad)
    tx = msam(optax.sgd(0.1), 0.1, 5)
    with pytest.raises(ValueError, match="divisible by `num_microbatches`"):
        tx.update(None, tx.init(params), params, loss_fn=_loss, batch=batch)
    with pytest.raises(ValueError, match="loss_fn"):
        tx.update(None, tx.init(params), params, batch=batch)
    with pytest.raises(ValueError, match="batch"):
        tx.update(None, tx.init(params), params, loss_fn=_loss)
    with pytest.raises(ValueError, match="params"):
        tx.update(None, tx.init(params), None, loss_fn=_loss, batch=batch)


def test_bf16_params_keep_dtype(setup):
    params, batch = setup
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    loss16 = lambda p, b: _loss(jax.tree.map(lambda x: x.astype(jnp.float32), p), b)  # noqa: E731
    tx = msam(optax.sgd(0.1), 0.05, 4)
    u = _upd(tx, p16, batch, loss_fn=loss16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
    ref = jax.tree.map(lambda d: -0.1 * d, _ref_msam_direction(params, batch, 0.05, 4))
    _close(jax.tree.map(lambda x: x.astype(jnp.float32), u), ref, rtol=5e-2, atol=2e-3)


# --------------------------------------------------------------------------- issue 17: clear errors
@pytest.mark.parametrize("name", ["rho", "eps", "asam_eta"])
@pytest.mark.parametrize("bad", [None, "0.1", float("nan"), -1.0, jnp.ones(2)])
def test_msam_bad_numbers(name, bad):
    kw = {"rho": 0.05, "eps": 1e-12, "asam_eta": 0.0} | {name: bad}
    with pytest.raises(ValueError, match=f"`{name}`"):
        msam(optax.sgd(0.1), num_microbatches=2, **kw)
    p = {"w": jnp.ones(3)}
    b = {"x": jnp.ones((4, 3)), "y": jnp.zeros(4)}
    loss = lambda w, bb: jnp.mean((bb["x"] @ w["w"] - bb["y"]) ** 2)  # noqa: E731
    with pytest.raises(ValueError, match=f"`{name}`"):
        msam_gradient(loss, p, b, num_microbatches=2, **kw)


@pytest.mark.parametrize("kw, name", [({"loss_fn": None}, "loss_fn"), ({"loss_fn": 3}, "loss_fn"),
                                      ({"params": None}, "params"), ({"params": {}}, "params")])
def test_msam_gradient_bad_loss_or_params(kw, name):
    loss = lambda w, bb: jnp.mean((bb["x"] @ w["w"] - bb["y"]) ** 2)  # noqa: E731
    args = {"loss_fn": loss, "params": {"w": jnp.ones(3)}, "batch": {"x": jnp.ones((4, 3)), "y": jnp.zeros(4)},
            "rho": 0.05, "num_microbatches": 2} | kw
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        msam_gradient(**args)


def test_msam_traced_rho_still_works():
    loss = lambda w, bb: jnp.mean((bb["x"] @ w - bb["y"]) ** 2)  # noqa: E731
    b = {"x": jnp.ones((4, 3)), "y": jnp.zeros(4)}
    f = jax.jit(lambda rho: msam_gradient(loss, jnp.ones(3), b, rho, 2))
    np.testing.assert_allclose(np.asarray(f(0.05)), np.asarray(msam_gradient(loss, jnp.ones(3), b, 0.05, 2)),
                               rtol=1e-6)


class _Tiny(nnx.Module):
    def __init__(self):
        self.l = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.l(x)


@pytest.mark.parametrize("kw, name", [({"model": None}, "model"), ({"model": 3}, "model"),
                                      ({"loss": None}, "loss")])
def test_msam_nnx_loss_fn_bad_input(kw, name):
    args = {"model": _Tiny(), "loss": lambda m, b: jnp.mean(m(b) ** 2)} | kw
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        msam_nnx_loss_fn(**args)

"""fused_linear_distill_loss vs the naive materialized loss: values and gradients, sharding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxeff.distill import (
    forward_kl,
    fused_linear_distill_loss,
    fused_linear_topk_distill_loss,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_kl,
    tvd,
)

DIVS = ["jsd", "forward_kl", "reverse_kl", "tvd", "skew_forward_kl", "skew_reverse_kl"]


def transform(z, scale, cap):
    if scale is not None:
        z = z * scale
    if cap is not None:
        z = cap * jnp.tanh(z / cap)
    return z


def naive(hs, ws, ht, wt, *, divergence="jsd", beta=0.5, lam=0.1, normalized=False, temperature=1.0, where=None,
          labels=None, hard_weight=0.0, softcap=None, scale=None, vocab_size=None, reduction="mean"):
    """Materialize [T, V] logits and use the plain (autodiff) losses."""
    zs = transform(hs @ ws, scale, softcap)
    zt = jax.lax.stop_gradient(transform(ht @ wt, scale, softcap))
    if vocab_size is not None:
        zs, zt = zs[:, :vocab_size], zt[:, :vocab_size]
    mask = jnp.ones(hs.shape[0], bool) if where is None else jnp.asarray(where)
    if labels is not None:
        mask = mask & (labels != -100)
    fn = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tvd": tvd,
          "jsd": functools.partial(generalized_jsd, beta=beta, normalized=normalized),
          "skew_forward_kl": functools.partial(skew_forward_kl, lam=lam),
          "skew_reverse_kl": functools.partial(skew_reverse_kl, lam=lam)}[divergence]
    per = fn(zs, zt, temperature=temperature, where=mask, reduction="none")
    if labels is not None and hard_weight > 0:
        ce = -jnp.take_along_axis(jax.nn.log_softmax(zs), jnp.clip(labels, 0)[:, None], -1)[:, 0]
        per = (1 - hard_weight) * per + hard_weight * jnp.where(mask, ce, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / jnp.maximum(mask.sum(), 1)


def data(T=37, Hs=8, Ht=12, V=50, seed=0):
    k = jax.random.split(jax.random.key(seed), 7)
    hs = jax.random.normal(k[0], (T, Hs))
    ws = jax.random.normal(k[1], (Hs, V)) * 0.7
    ht = jax.random.normal(k[2], (T, Ht))
    wt = jax.random.normal(k[3], (Ht, V)) * 0.7
    mask = jax.random.bernoulli(k[4], 0.75, (T,))
    labels = jax.random.randint(k[5], (T,), 0, V)
    return hs, ws, ht, wt, mask, labels


def assert_close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), 1e-30)
    err = np.max(np.abs(a - b)) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def check(kw_fused, kw_naive, hs, ws, ht, wt, rtol=1e-5):
    f = jax.jit(jax.value_and_grad(lambda a, b: fused_linear_distill_loss(a, b, ht, wt, **kw_fused), (0, 1)))
    r = jax.jit(jax.value_and_grad(lambda a, b: naive(a, b, ht, wt, **kw_naive), (0, 1)))
    (v1, g1), (v2, g2) = f(hs, ws), r(hs, ws)
    assert np.isfinite(float(v1))
    assert_close(v1, v2, rtol)
    for a, b in zip(g1, g2):
        assert_close(a, b, rtol)


@pytest.mark.parametrize("div", DIVS)
def test_fused_equals_naive_every_divergence(div):
    hs, ws, ht, wt, mask, labels = data()
    extra = dict(where=mask, temperature=1.7)
    check(dict(divergence=div, chunk_size=8, **extra), dict(divergence=div, **extra), hs, ws, ht, wt)


@pytest.mark.parametrize("chunk", [5, pytest.param(1, marks=pytest.mark.slow), pytest.param(10, marks=pytest.mark.slow),
                                   pytest.param(64, marks=pytest.mark.slow)])
def test_fused_softcap_scale_hard_labels_chunks(chunk):
    hs, ws, ht, wt, mask, labels = data(seed=1)
    labels = labels.at[3].set(-100)
    kw = dict(divergence="jsd", beta=0.3, temperature=1.5, where=mask, labels=labels, hard_weight=0.4)
    check(dict(kw, chunk_size=chunk, logit_softcap=3.0, logit_scale=0.8), dict(kw, softcap=3.0, scale=0.8),
          hs, ws, ht, wt)


def test_fused_normalized_jsd_endpoints_and_hard_only():
    hs, ws, ht, wt, mask, labels = data(seed=2)
    for beta in (0.0, 1.0):
        check(dict(divergence="jsd", beta=beta, normalized=True, chunk_size=9),
              dict(divergence="jsd", beta=beta, normalized=True), hs, ws, ht, wt)
    # hard_weight = 1 is plain next-token cross entropy, whatever the teacher
    v = fused_linear_distill_loss(hs, ws, ht, wt, labels=labels, hard_weight=1.0, chunk_size=8)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(hs @ ws), labels[:, None], -1).mean()
    assert_close(v, ce)


@pytest.mark.parametrize("reduction", [pytest.param("sum", marks=pytest.mark.slow), "none"])
def test_fused_reductions(reduction):
    hs, ws, ht, wt, mask, labels = data(seed=3)
    kw = dict(divergence="reverse_kl", temperature=1.3, where=mask, labels=labels, hard_weight=0.2)
    fo = fused_linear_distill_loss(hs, ws, ht, wt, chunk_size=6, reduction=reduction, **kw)
    no = naive(hs, ws, ht, wt, reduction=reduction, **kw)
    assert_close(fo, no)
    ct = jax.random.normal(jax.random.key(9), np.shape(no))  # arbitrary per-token cotangent
    _, vf = jax.vjp(lambda a, b: fused_linear_distill_loss(a, b, ht, wt, chunk_size=6, reduction=reduction, **kw),
                    hs, ws)
    _, vn = jax.vjp(lambda a, b: naive(a, b, ht, wt, reduction=reduction, **kw), hs, ws)
    for a, b in zip(vf(ct), vn(ct)):
        assert_close(a, b)


def test_fused_leading_axes():
    hs, ws, ht, wt, mask, labels = data(T=24, seed=4)
    f = lambda a, c, m: fused_linear_distill_loss(a, ws, c, wt, where=m, chunk_size=5, divergence="tvd",
                                                  reduction="none")
    per2 = f(hs.reshape(4, 6, -1), ht.reshape(4, 6, -1), mask.reshape(4, 6))
    assert per2.shape == (4, 6)
    assert_close(per2.reshape(-1), naive(hs, ws, ht, wt, divergence="tvd", where=mask, reduction="none"))


def test_vocab_padding_does_not_change_result():
    hs, ws, ht, wt, mask, labels = data(V=50, seed=5)
    k = jax.random.split(jax.random.key(1), 2)
    ws_p = jnp.concatenate([ws, 5.0 * jax.random.normal(k[0], (ws.shape[0], 14))], 1)  # garbage columns
    wt_p = jnp.concatenate([wt, 5.0 * jax.random.normal(k[1], (wt.shape[0], 14))], 1)
    kw = dict(divergence="skew_reverse_kl", temperature=1.2, where=mask, labels=labels, hard_weight=0.3,
              logit_softcap=4.0)
    v, (gh, gw) = jax.value_and_grad(
        lambda a, b: fused_linear_distill_loss(a, b, ht, wt, chunk_size=8, **kw), (0, 1))(hs, ws)
    vp, (ghp, gwp) = jax.value_and_grad(
        lambda a, b: fused_linear_distill_loss(a, b, ht, wt_p, chunk_size=8, vocab_size=50, **kw), (0, 1))(hs, ws_p)
    assert_close(vp, v)
    assert_close(ghp, gh)
    assert_close(gwp[:, :50], gw)
    assert np.all(np.asarray(gwp[:, 50:]) == 0)


def test_all_tokens_masked_fused():
    hs, ws, ht, wt, mask, labels = data(seed=6)
    hs = hs.at[0].set(jnp.nan)  # garbage in a masked token
    none = jnp.zeros(hs.shape[0], bool)
    for div in DIVS:
        v, (gh, gw) = jax.value_and_grad(
            lambda a, b: fused_linear_distill_loss(a, b, ht, wt, where=none, divergence=div, chunk_size=8), (0, 1)
        )(hs, ws)
        assert float(v) == 0.0
        assert np.all(np.asarray(gh) == 0) and np.all(np.asarray(gw) == 0)


def test_bf16_fused_close_to_fp32():
    hs, ws, ht, wt, mask, labels = data(seed=7)
    bf = lambda x: x.astype(jnp.bfloat16)
    v32, g32 = jax.value_and_grad(lambda a, b: fused_linear_distill_loss(a, b, ht, wt, chunk_size=8), (0, 1))(hs, ws)
    vbf, gbf = jax.value_and_grad(lambda a, b: fused_linear_distill_loss(a, b, bf(ht), bf(wt), chunk_size=8),
                                  (0, 1))(bf(hs), bf(ws))
    assert vbf.dtype == jnp.float32 and gbf[0].dtype == jnp.bfloat16 and gbf[1].dtype == jnp.bfloat16
    # against the naive loss on the same bf16-rounded inputs, computed in fp32
    up = lambda x: bf(x).astype(jnp.float32)
    vn, gn = jax.value_and_grad(lambda a, b: naive(a, b, up(ht), up(wt)), (0, 1))(up(hs), up(ws))
    assert_close(vbf, vn, 1e-4)
    for a, b in zip(gbf, gn):
        assert_close(a.astype(jnp.float32), b, 2e-2)  # bf16 storage of the gradient
    assert_close(vbf, v32, 5e-2)


@pytest.mark.parametrize("missing_mass", [False, True])
def test_fused_topk_equals_naive(missing_mass):
    hs, ws, ht, wt, mask, labels = data(seed=8)
    tau, k = 1.4, 6
    lp, ids = jax.lax.top_k(jax.nn.log_softmax((ht @ wt) / tau), k)
    kw = dict(temperature=tau, where=mask, missing_mass=missing_mass)

    def ref(a, b):
        per = topk_kl(a @ b, lp, ids, reduction="none", **kw)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(a @ b), labels[:, None], -1)[:, 0]
        per = 0.7 * per + 0.3 * jnp.where(mask, ce, 0)
        return per.sum() / mask.sum()

    for chunk in (5,):
        f = jax.value_and_grad(lambda a, b: fused_linear_topk_distill_loss(
            a, b, lp, ids, chunk_size=chunk, labels=labels, hard_weight=0.3, **kw), (0, 1))
        (v1, g1), (v2, g2) = f(hs, ws), jax.value_and_grad(ref, (0, 1))(hs, ws)
        assert_close(v1, v2)
        for a, b in zip(g1, g2):
            assert_close(a, b)


def test_xla_temp_memory_is_chunk_sized():
    """The compiled fused fwd+bwd holds O(chunk x V) temporaries, the naive one O(T x V)."""
    H, V, C = 32, 2048, 64

    def temp(T, fn_kind):
        hs, ws, ht, wt = (jnp.zeros(s) for s in [(T, H), (H, V), (T, H), (H, V)])
        if fn_kind == "fused":
            f = lambda a, b: fused_linear_distill_loss(a, b, ht, wt, chunk_size=C)
        else:
            f = lambda a, b: naive(a, b, ht, wt)
        return jax.jit(jax.grad(f, (0, 1))).lower(hs, ws).compile().memory_analysis().temp_size_in_bytes

    mf1, mf4, mn1 = temp(1024, "fused"), temp(4096, "fused"), temp(1024, "naive")
    assert mn1 >= 2 * 1024 * V * 4  # the naive loss holds at least two [T, V] fp32 buffers
    assert mf1 <= 0.2 * mn1, (mf1, mn1)
    # growing T 4x adds only O(T x H) (hidden-gradient) bytes, no [T, V] buffer
    assert mf4 - mf1 <= 3 * (4096 - 1024) * H * 4, (mf1, mf4)
    assert mf1 <= 12 * C * V * 4 + 4 * 1024 * H * 4 + 2 * H * V * 4, mf1


def test_default_chunk_from_shapes_memory_budget():
    """Default chunk = power of two near T*H/V; at T=8192, H=1024, V=32768 the default fused
    JSD fwd+bwd holds <= 5% of the naive XLA temp memory (compile only, nothing runs)."""
    from jaxeff.distill.fused import _default_chunk_size

    assert _default_chunk_size(8192, 1024, 32768) == 256
    assert _default_chunk_size(100, 64, 128) == 64       # T*H/V = 50 -> 64
    assert _default_chunk_size(10, 8, 100000) == 10      # clamped to T
    assert _default_chunk_size(4096, 8, 100000) == 16    # floor of 16 tokens
    assert _default_chunk_size(37, 4096, 50) == 37       # never above T
    T, H, V = 8192, 1024, 32768
    sds = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(T, H), (H, V), (T, H), (H, V)]]

    def temp(fn):
        return jax.jit(jax.value_and_grad(fn, (0, 1))).lower(*sds).compile().memory_analysis().temp_size_in_bytes

    mf = temp(lambda a, b, c, d: fused_linear_distill_loss(a, b, c, d))
    mn = temp(lambda a, b, c, d: naive(a, b, c, d))
    assert mf <= 0.05 * mn, (mf, mn, mf / mn)


# ---------------------------------------------------------------- sharding (8 CPU devices)
def test_batch_sharded_jit_equals_single_device(mesh8):
    hs, ws, ht, wt, mask, labels = data(T=64, seed=9)
    f = jax.jit(jax.value_and_grad(lambda a, b, c, m: fused_linear_distill_loss(
        a, b, c, wt, where=m, divergence="forward_kl", chunk_size=8), (0, 1)))
    v1, g1 = f(hs, ws, ht, mask)
    shard = lambda x: jax.device_put(x, NamedSharding(mesh8, P("data")))
    v8, g8 = f(shard(hs), ws, shard(ht), shard(mask))
    assert_close(v8, v1)
    for a, b in zip(g8, g1):
        assert_close(a, b)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
@pytest.mark.parametrize("chunk", [3, 5, None, 1000])
def test_batch_sharded_explicit_and_auto_axes_any_chunk(axis_type, chunk):
    """Batch-sharded inputs on a jax.make_mesh mesh with Explicit (sharding-in-types) or Auto
    axes: any chunk_size (3 and 5 are not multiples of the 8 devices) gives the single-device
    value and gradients, and the hidden gradient stays batch-sharded."""
    from jax.sharding import AxisType

    at = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("data",), axis_types=(at,))
    hs, ws, ht, wt, mask, labels = data(T=72, seed=12)
    fn = lambda a, b, c, m: fused_linear_distill_loss(a, b, c, wt, where=m, divergence="jsd", chunk_size=chunk)  # noqa: E731
    v1, g1 = jax.jit(jax.value_and_grad(fn, (0, 1)))(hs, ws, ht, mask)
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
        v8, g8 = jax.jit(jax.value_and_grad(fn, (0, 1)))(put(hs), ws, put(ht), put(mask))
    assert_close(v8, v1)
    for a, b in zip(g8, g1):
        assert_close(a, b)
    if axis_type == "explicit":
        assert jax.typeof(g8[0]).sharding.spec[0] == "data"


def test_batch_axis_name_in_shard_map(mesh8):
    hs, ws, ht, wt, mask, labels = data(T=64, seed=10)

    def local(a, b, c, m):
        v, (gh, gw) = jax.value_and_grad(lambda a_, b_: fused_linear_distill_loss(
            a_, b_, c, wt, where=m, divergence="jsd", chunk_size=3, batch_axis_name="data"), (0, 1))(a, b)
        return v, gh, jax.lax.psum(gw, "data")

    fn = jax.jit(jax.shard_map(local, mesh=mesh8, in_specs=(P("data"), P(), P("data"), P("data")),
                               out_specs=(P(), P("data"), P()), check_vma=False))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh8, spec))
    v8, gh8, gw8 = fn(put(hs, P("data")), put(ws, P()), put(ht, P("data")), put(mask, P("data")))
    v1, (gh1, gw1) = jax.value_and_grad(lambda a, b: naive(a, b, ht, wt, where=mask), (0, 1))(hs, ws)
    assert_close(v8, v1)
    assert_close(gh8, gh1)
    assert_close(gw8, gw1)


@pytest.mark.parametrize("topk", [False, True])
def test_vocab_sharded_head_equals_unsharded(mesh8, topk):
    V, Vtrue = 64, 59  # 8 columns per device; the last shard holds 5 padding columns
    hs, ws, ht, wt, mask, labels = data(T=21, V=V, seed=11)
    labels = jnp.clip(labels, 0, Vtrue - 1)
    kw = dict(temperature=1.3, where=mask, labels=labels, hard_weight=0.25, chunk_size=8, vocab_size=Vtrue,
              logit_softcap=5.0)
    if topk:
        lp, ids = jax.lax.top_k(jax.nn.log_softmax((ht @ wt)[:, :Vtrue] / 1.3), 7)

        def loss(a, b, c, axis=None):
            return fused_linear_topk_distill_loss(a, b, lp, ids, missing_mass=True, vocab_axis_name=axis, **kw)
    else:
        def loss(a, b, c, axis=None):
            return fused_linear_distill_loss(a, b, ht, c, divergence="skew_forward_kl", vocab_axis_name=axis, **kw)

    def local(a, b, c):
        v, (gh, gw) = jax.value_and_grad(lambda a_, b_: loss(a_, b_, c, "data"), (0, 1))(a, b)
        return v, gh, gw

    vsh = NamedSharding(mesh8, P(None, "data"))
    fn = jax.jit(jax.shard_map(local, mesh=mesh8, in_specs=(P(), P(None, "data"), P(None, "data")),
                               out_specs=(P(), P(), P(None, "data")), check_vma=False))
    v8, gh8, gw8 = fn(jax.device_put(hs, NamedSharding(mesh8, P())), jax.device_put(ws, vsh), jax.device_put(wt, vsh))
    v1, (gh1, gw1) = jax.value_and_grad(lambda a, b: loss(a, b, wt), (0, 1))(hs, ws)
    assert_close(v8, v1)
    assert_close(gh8, gh1)
    assert_close(gw8, gw1)
    if not topk:  # and the unsharded one equals the naive loss on the true vocabulary
        vn = naive(hs, ws, ht, wt, divergence="skew_forward_kl", temperature=1.3, where=mask, labels=labels,
                   hard_weight=0.25, softcap=5.0, vocab_size=Vtrue)
        assert_close(v1, vn)


def test_fused_bad_input():
    hs, ws, ht, wt, mask, labels = data()
    with pytest.raises(ValueError, match="vocab size 50.*vocab size 49"):
        fused_linear_distill_loss(hs, ws, ht, wt[:, :49])
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_distill_loss(hs, ws, ht, wt, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        fused_linear_distill_loss(hs, ws, ht, wt, beta=-0.5)
    with pytest.raises(ValueError, match="lam"):
        fused_linear_distill_loss(hs, ws, ht, wt, lam=1.5)
    with pytest.raises(ValueError, match="where"):
        fused_linear_distill_loss(hs, ws, ht, wt, where=jnp.ones(5, bool))
    with pytest.raises(ValueError, match="divergence"):
        fused_linear_distill_loss(hs, ws, ht, wt, divergence="kl")
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_distill_loss(hs, ws, ht, wt, chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_distill_loss(hs, ws, ht, wt, hard_weight=0.5)
    with pytest.raises(ValueError, match="student_head"):
        fused_linear_distill_loss(hs, ws[:5], ht, wt)
    with pytest.raises(ValueError, match="teacher_hidden"):
        fused_linear_distill_loss(hs, ws, ht[:5], wt)

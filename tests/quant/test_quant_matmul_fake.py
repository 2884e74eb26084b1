"""Quantized matmul paths and the straight-through estimator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.quant.formats import get_qformat
from jaxeff.quant import INT32_SAFE_K, QArray, fake_quant, quantize, quantized_dot_general, quantized_matmul, rtn


def _xw(seed=0, shape=(3, 5, 32), out=16):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, shape), jax.random.normal(k2, (shape[-1], out))


def test_int8_matmul_equals_dequantized_float_matmul():
    """Integer path == float product of the dequantized operands (up to fp32 rounding)."""
    x, w = _xw()
    qx = quantize(x, "int8", axis=-1)
    qw = quantize(w, "int8", axis=0)
    y = quantized_dot_general(qx, qw, (((2,), (0,)), ((), ())))
    ref = jnp.einsum("btk,kn->btn", qx.dequantize(), qw.dequantize(), precision="highest")
    # documented bound: exact int32 accumulation; only the final two fp32 scale products round
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
    txt = jax.make_jaxpr(lambda a, b: quantized_dot_general(a, b, (((2,), (0,)), ((), ()))))(qx, qw).pretty_print()
    assert "preferred_element_type=int32" in txt and "i8[" in txt


def test_int8_matmul_close_to_float():
    x, w = _xw(1)
    y = quantized_matmul(x, rtn(w, "int8"), act_fmt="int8")
    ref = x @ w
    rel = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
    assert rel < 0.02


def test_int32_accumulation_does_not_overflow():
    k = 4096
    assert k <= INT32_SAFE_K
    a = QArray(qvalue=jnp.full((2, k), -128, jnp.int8), scale=jnp.ones((2, 1)), zero_point=None,
               fmt=quantize(jnp.ones(2), "int8").fmt, shape=(2, k), axis=(1,))
    b = QArray(qvalue=jnp.full((k, 3), -128, jnp.int8), scale=jnp.ones((1, 3)), zero_point=None,
               fmt=a.fmt, shape=(k, 3), axis=(0,))
    y = quantized_dot_general(a, b, (((1,), (0,)), ((), ())))
    assert float(y[0, 0]) == 128.0 * 128.0 * k  # 67108864 < 2^31


def _const_qarray(value, shape, axis):
    f = get_qformat("int8")
    sshape = tuple(1 if i in axis else n for i, n in enumerate(shape))
    return QArray(qvalue=jnp.full(shape, value, jnp.int8),
                  scale=jnp.ones(sshape), zero_point=None, fmt=f, shape=shape, axis=axis)


def test_int32_overflow_split_into_safe_pieces():
    """K = 200000 > 131071: the int32 sum of (-128)(-128) codes would wrap (-1.018e9); the
    contraction is split into int32-safe pieces summed in float32 (exact here)."""
    assert INT32_SAFE_K == (2**31 - 1) // 128**2
    k = 200_000
    a = _const_qarray(-128, (2, k), (1,))
    b = _const_qarray(-128, (k, 3), (0,))
    y = jax.jit(lambda a, b: quantized_dot_general(a, b, (((1,), (0,)), ((), ()))))(a, b)
    np.testing.assert_array_equal(np.asarray(y), np.full((2, 3), 128.0 * 128.0 * k, np.float32))
    # still the integer kernel (not a float fallback)
    txt = jax.make_jaxpr(lambda a, b: quantized_dot_general(a, b, (((1,), (0,)), ((), ()))))(a, b).pretty_print()
    assert "preferred_element_type=int32" in txt and "i8[" in txt


def test_int32_pieces_random_codes_batch_and_two_contracted_axes(monkeypatch):
    """Random codes, a batch axis and two contracted axes (flattened K = 3 * 50000 > bound),
    against an exact int64 numpy product; also with a tiny piece budget (scan over blocks)."""
    rng = np.random.default_rng(0)
    qa = rng.integers(-128, 128, size=(2, 3, 4, 50_000), dtype=np.int8)   # [b, k1, m, k2]
    qb = rng.integers(-128, 128, size=(2, 50_000, 3, 5), dtype=np.int8)   # [b, k2, k1, n]
    sa = rng.uniform(0.5, 2.0, size=(2, 1, 4, 1)).astype(np.float32)
    sb = rng.uniform(0.5, 2.0, size=(2, 1, 1, 5)).astype(np.float32)
    f = quantize(jnp.ones(2), "int8").fmt
    a = QArray(qvalue=jnp.asarray(qa), scale=jnp.asarray(sa), zero_point=None, fmt=f, shape=qa.shape, axis=(1, 3))
    b = QArray(qvalue=jnp.asarray(qb), scale=jnp.asarray(sb), zero_point=None, fmt=f, shape=qb.shape, axis=(1, 2))
    dn = (((1, 3), (2, 1)), ((0,), (0,)))
    ref = np.einsum("bpmk,bkpn->bmn", qa.astype(np.int64), qb.astype(np.int64)).astype(np.float64)
    ref = ref * sa[:, 0, :, 0][:, :, None] * sb[:, 0, 0, :][:, None, :]
    y = quantized_dot_general(a, b, dn)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6, atol=1e-3)
    import jaxeff.quant.matmul as mm
    monkeypatch.setattr(mm, "_PIECE_BUDGET", 8)
    y2 = quantized_dot_general(a, b, dn)
    np.testing.assert_allclose(np.asarray(y2), ref, rtol=1e-6, atol=1e-3)


def test_uint8_codes_use_their_own_bound():
    """uint8 codes up to 255: the safe length is (2^31-1)/255^2 = 33025; K = 40000 must not wrap."""
    k = 40_000
    fu = get_qformat("uint8")
    a = QArray(qvalue=jnp.full((1, k), 255, jnp.uint8), scale=jnp.ones((1, 1)), zero_point=None, fmt=fu,
               shape=(1, k), axis=(1,))
    b = QArray(qvalue=jnp.full((k, 2), 255, jnp.uint8), scale=jnp.ones((1, 2)), zero_point=None, fmt=fu,
               shape=(k, 2), axis=(0,))
    y = quantized_dot_general(a, b, (((1,), (0,)), ((), ())))
    np.testing.assert_array_equal(np.asarray(y), np.full((1, 2), 255.0 * 255.0 * k, np.float32))


@pytest.mark.parametrize("xgroup", [None, 4])
def test_w8a8_grouped_weight_runs_integer_path(xgroup):
    """W8A8 with a grouped int8 weight (group_size along the contraction): an int32 dot per
    group, scaled and summed in float32; equals the float product of the dequantized operands
    (what the old code computed by dequantizing) but through the integer kernel."""
    x, w = _xw(4, shape=(3, 5, 32), out=16)
    qw = quantize(w, "int8", axis=0, group_size=8)
    if xgroup is None:
        y = quantized_matmul(x, qw, act_fmt="int8")
        xq = quantize(x, "int8", axis=-1)
        fn = lambda x, w: quantized_matmul(x, w, act_fmt="int8")  # noqa: E731
    else:
        xq = quantize(x, "int8", axis=-1, group_size=xgroup)
        y = quantized_matmul(xq, qw)
        fn = lambda x, w: quantized_matmul(xq, w)  # noqa: E731
    ref = jnp.einsum("btk,kn->btn", xq.dequantize(), qw.dequantize(), precision="highest")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
    txt = jax.make_jaxpr(fn)(x, qw).pretty_print()
    assert "preferred_element_type=int32" in txt
    assert "preferred_element_type=float32" not in txt.split("dot_general")[-1].split("\n")[0]


def test_batched_dot_general_scales():
    k1, k2 = jax.random.split(jax.random.key(2))
    a = jax.random.normal(k1, (4, 6, 8))   # [b, m, k]
    b = jax.random.normal(k2, (4, 8, 5))   # [b, k, n]
    qa, qb = quantize(a, "int8", axis=2), quantize(b, "int8", axis=1)
    dn = (((2,), (1,)), ((0,), (0,)))
    y = quantized_dot_general(qa, qb, dn)
    ref = jnp.einsum("bmk,bkn->bmn", qa.dequantize(), qb.dequantize(), precision="highest")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wfmt,afmt,tol", [("e4m3", "e4m3", 0.08), ("e5m2", None, 0.15), ("int4", None, 0.2),
                                           ("int4", "int8", 0.2)])
def test_other_paths(wfmt, afmt, tol):
    x, w = _xw(3)
    qw = quantize(w, wfmt, axis=0, group_size=8 if wfmt == "int4" else None)
    y = quantized_matmul(x, qw, act_fmt=afmt)
    ref = x @ w
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < tol
    # equals the product of what the kernel sees
    xa = x if afmt is None else quantize(x, afmt, axis=-1).dequantize()
    np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.einsum("btk,kn->btn", xa, qw.dequantize(), precision="highest")),
                               rtol=2e-3, atol=2e-3)


def test_matmul_bad_shapes():
    x, w = _xw()
    with pytest.raises(ValueError, match="`x` last dimension"):
        quantized_matmul(x[..., :31], rtn(w, "int8"))
    with pytest.raises(ValueError, match="act_fmt"):
        quantized_matmul(x, rtn(w, "int8"), act_fmt="int77")


def test_ste_gradient_identity_inside_zero_outside():
    x = jnp.array([-9.0, -0.3, 0.0, 0.2, 0.5, 1.0, 7.0])
    # clip at the 60th percentile of |x|: the large entries fall outside the range
    g = jax.grad(lambda x: jnp.sum(fake_quant(x, "int8", calibration="percentile", percentile=60.0) * 3.0))(x)
    qa = quantize(x, "int8", calibration="percentile", percentile=60.0)
    s = float(qa.scale.reshape(()))
    inside = (x >= -128 * s) & (x <= 127 * s)
    np.testing.assert_array_equal(np.asarray(g), np.where(inside, 3.0, 0.0))
    assert not bool(inside.all()) and bool(inside.any())
    gi = jax.grad(lambda x: jnp.sum(fake_quant(x, "int8", calibration="percentile", percentile=60.0, ste="identity")))(x)
    np.testing.assert_array_equal(np.asarray(gi), np.ones(7))
    # forward value is the quantize-dequantize
    np.testing.assert_array_equal(np.asarray(fake_quant(x, "int8", calibration="percentile", percentile=60.0)),
                                  np.asarray(qa.dequantize()))


def test_fake_quant_grad_matches_jax_grad_of_clip():
    """Clipped STE == jax.grad of the clip function (rounding treated as identity)."""
    x = jax.random.normal(jax.random.key(5), (16, 4)) * 2
    qa = quantize(x, "int4", axis=0, calibration="percentile", percentile=80.0)
    s = qa.full_scale()
    # same gradient pattern: identity inside the range, zero outside
    g1 = jax.grad(lambda x: jnp.sum(fake_quant(x, "int4", axis=0, calibration="percentile", percentile=80.0)))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.clip(x, -8 * s, 7 * s)))(x)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
    assert 0 < float(g1.sum()) < g1.size

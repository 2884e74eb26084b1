"""QArray, formats, packing, calibration and quantize() against numpy / ml_dtypes references."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxeff.quant import NF4_CODEBOOK, SCALE_DTYPES, QArray, gptq, get_qformat, layer_reconstruction_error, pack_int, quantize, rtn, unpack_int

INT_FORMATS = [f"int{b}" for b in range(2, 9)] + [f"uint{b}" for b in range(2, 9)]


def test_format_ranges():
    assert (get_qformat("int4").qmin, get_qformat("int4").qmax) == (-8, 7)
    assert (get_qformat("uint3").qmin, get_qformat("uint3").qmax) == (0, 7)
    assert get_qformat("int2").container_bits == 2 and get_qformat("int3").container_bits == 4
    assert get_qformat("e4m3").qmax == 448.0 and get_qformat("e5m2").qmax == 57344.0
    assert get_qformat("fp8").name == "e4m3"
    assert get_qformat(jnp.float8_e5m2).name == "e5m2"


@pytest.mark.parametrize("bad", ["int1", "int9", "int16", "fp16", "nf3", 3])
def test_bad_format(bad):
    with pytest.raises(ValueError, match="fmt"):
        quantize(jnp.ones((4, 4)), bad)


@settings(max_examples=10, deadline=None)
@given(
    fmt=st.sampled_from(["int2", "int3", "int4", "uint2", "uint3", "uint4"]),
    shape=st.lists(st.sampled_from([1, 3, 4]), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_exact(fmt, shape, seed):
    f = get_qformat(fmt)
    rng = np.random.default_rng(seed)
    codes = rng.integers(f.qmin, f.qmax + 1, size=shape).astype(np.int8 if f.signed else np.uint8)
    packed = pack_int(jnp.asarray(codes), f)
    assert packed.dtype == jnp.uint8
    assert packed.shape[-1] == -(-shape[-1] // f.values_per_byte)
    np.testing.assert_array_equal(np.asarray(unpack_int(packed, f, shape[-1])), codes)


def test_pack_layout_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(5, 6)).astype(np.int8)
    ref = ((q[:, 0::2].astype(np.uint8) & 0xF) | ((q[:, 1::2].astype(np.uint8) & 0xF) << 4)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pack_int(jnp.asarray(q), "int4")), ref)


@st.composite
def _case(draw):
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.sampled_from([1, 2, 4]), min_size=ndim, max_size=ndim))
    mode = draw(st.sampled_from(["tensor", "axis", "axes", "group"]))
    axis, group = None, None
    if mode == "axis":
        axis = draw(st.integers(-ndim, ndim - 1))
    elif mode == "axes":
        axis = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=ndim))))
    elif mode == "group":
        axis = draw(st.integers(0, ndim - 1))
        group = draw(st.sampled_from([1, 2]))
        shape[axis] = group * draw(st.sampled_from([1, 2]))
    return tuple(shape), axis, group


@settings(max_examples=16, deadline=None)
@given(case=_case(), fmt=st.sampled_from(INT_FORMATS), symmetric=st.booleans(),
       calibration=st.sampled_from(["absmax", "minmax"]), scale_dtype=st.sampled_from(SCALE_DTYPES),
       seed=st.integers(0, 2**16))
def test_round_trip_error_at_most_half_scale(case, fmt, symmetric, calibration, scale_dtype, seed):
    shape, axis, group = case
    f = get_qformat(fmt)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.01, 100)
    if not f.signed and symmetric:  # unsigned + symmetric: zero point 0, data must be >= 0
        x = np.abs(x)
    qa = quantize(jnp.asarray(x), f, axis=axis, group_size=group, symmetric=symmetric,
                  calibration=calibration, scale_dtype=scale_dtype)
    assert qa.shape == shape
    assert qa.scale.dtype == np.dtype(scale_dtype)
    deq = np.asarray(qa.dequantize())
    # the bound holds for the *stored* scale (bf16/fp16 scales are rounded up before coding)
    s = np.asarray(qa.full_scale()).astype(np.float32)
    assert np.all(np.abs(deq - x) <= s / 2 * (1 + 1e-5) + 1e-30)
    codes = np.asarray(qa.codes()).astype(np.int32)
    assert codes.min() >= f.qmin and codes.max() <= f.qmax


def test_int8_per_channel_matches_numpy():
    x = np.random.default_rng(1).normal(size=(48, 20)).astype(np.float32)
    qa = quantize(jnp.asarray(x), "int8", axis=0)
    s = (np.abs(x).max(axis=0, keepdims=True) / np.float32(127)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(qa.scale), s, rtol=2e-7)  # XLA may use x * (1/127)
    s = np.asarray(qa.scale)
    q = np.clip(np.round(x / s), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(np.asarray(qa.qvalue), q)
    np.testing.assert_allclose(np.asarray(qa.dequantize()), q.astype(np.float32) * s, rtol=0, atol=0)


def test_int4_per_group_matches_numpy():
    x = np.random.default_rng(2).normal(size=(64, 10)).astype(np.float32)
    qa = quantize(jnp.asarray(x), "int4", axis=0, group_size=16)
    xg = x.reshape(4, 16, 10)
    s = (np.abs(xg).max(axis=1) / np.float32(7)).astype(np.float32)  # (4, 10)
    np.testing.assert_allclose(np.asarray(qa.scale), s, rtol=2e-7)
    s = np.asarray(qa.scale)
    q = np.clip(np.round(xg / s[:, None, :]), -8, 7).astype(np.int8).reshape(64, 10)
    np.testing.assert_array_equal(np.asarray(qa.codes()), q)
    packed = ((q[:, 0::2].astype(np.uint8) & 0xF) | ((q[:, 1::2].astype(np.uint8) & 0xF) << 4))
    np.testing.assert_array_equal(np.asarray(qa.qvalue), packed)
    # memory really shrinks: 2 codes per byte
    assert qa.qvalue.nbytes == x.size // 2


def test_asymmetric_uint8_matches_numpy():
    x = np.random.default_rng(3).uniform(-1, 3, size=(30, 4)).astype(np.float32)
    qa = quantize(jnp.asarray(x), "uint8", axis=0, symmetric=False)
    lo, hi = np.minimum(x.min(0), 0), np.maximum(x.max(0), 0)
    s = ((hi - lo) / np.float32(255)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(qa.scale).reshape(-1), s, rtol=2e-7)
    s = np.asarray(qa.scale).reshape(-1)
    z = np.clip(np.round(0 - lo / s), 0, 255)
    q = np.clip(np.round(x / s) + z, 0, 255)
    np.testing.assert_array_equal(np.asarray(qa.codes()), q.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(qa.zero_point).reshape(-1), z.astype(np.uint8))


@pytest.mark.parametrize("fmt,mldt", [("e4m3", ml_dtypes.float8_e4m3fn), ("e5m2", ml_dtypes.float8_e5m2)])
def test_fp8_cast_agrees_with_ml_dtypes(fmt, mldt):
    x = (np.random.default_rng(4).standard_t(3, size=(40, 12)) * 3).astype(np.float32)
    qa = quantize(jnp.asarray(x), fmt, axis=1)
    s = np.asarray(qa.scale)
    np.testing.assert_allclose(s, np.abs(x).max(1, keepdims=True) / np.float32(float(ml_dtypes.finfo(mldt).max)), rtol=2e-7)
    ref = np.clip(x / s, -float(ml_dtypes.finfo(mldt).max), float(ml_dtypes.finfo(mldt).max)).astype(mldt)
    assert qa.qvalue.dtype == np.dtype(mldt)
    np.testing.assert_array_equal(np.asarray(qa.qvalue).view(np.uint8), ref.view(np.uint8))


@pytest.mark.parametrize("fmt", ["int4", "int8", "uint4", "e4m3"])
def test_stochastic_rounding_unbiased(fmt):
    x = jnp.linspace(0.05, 1.0, 24) if fmt.startswith("u") else jnp.linspace(-1.0, 1.0, 24)
    n = 4000
    keys = jax.random.split(jax.random.key(7), n)
    deq = jax.jit(jax.vmap(lambda k: quantize(x, fmt, rounding="stochastic", key=k).dequantize()))(keys)
    s = float(quantize(x, fmt).scale.max())
    f = get_qformat(fmt)
    # each sample is within one grid step; the mean is unbiased up to Monte Carlo error
    if f.is_int:
        assert float(jnp.abs(deq - x).max()) <= s * (1 + 1e-5)
        tol = 5 * s / (2 * np.sqrt(n))
    else:
        tol = 5 * 0.125 * float(jnp.abs(x).max()) / np.sqrt(n)
    assert float(jnp.abs(deq.mean(0) - x).max()) < tol
    # and not deterministic
    assert float(deq.std(0).max()) > 0


def test_calibrations_behave():
    x = jnp.asarray(np.random.default_rng(5).standard_t(2, size=(512, 8)).astype(np.float32))
    e = {c: float(jnp.mean((quantize(x, "int4", axis=0, calibration=c).dequantize() - x) ** 2))
         for c in ["absmax", "percentile", "mse"]}
    # heavy tails: the MSE clip search beats absmax (ratio 1 is one of its candidates)
    assert e["mse"] < e["absmax"]
    qa = quantize(x, "int4", axis=0, calibration="percentile", percentile=90.0)
    np.testing.assert_allclose(np.asarray(qa.scale)[0], np.percentile(np.abs(np.asarray(x)), 90.0, axis=0) / 7,
                               rtol=1e-5)


def test_qarray_is_pytree_and_jittable():
    x = jax.random.normal(jax.random.key(0), (16, 8))
    qa = jax.jit(lambda x: quantize(x, "int4", axis=0, group_size=8))(x)
    assert isinstance(qa, QArray) and qa.qvalue.dtype == jnp.uint8
    leaves = jax.tree.leaves(qa)
    assert len(leaves) == 2  # qvalue, scale (symmetric: no zero point)
    np.testing.assert_array_equal(np.asarray(qa.dequantize()),
                                  np.asarray(quantize(x, "int4", axis=0, group_size=8).dequantize()))
    assert qa.nbytes == 16 * 8 // 2 + 2 * 8 * 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fmt="int4", axis=0, group_size=5), "group_size"),
        (dict(fmt="int4", axis=(0, 1), group_size=2), "group_size"),
        (dict(fmt="int4", axis=3), "axis"),
        (dict(fmt="e4m3", symmetric=False), "symmetric"),
        (dict(fmt="int8", calibration="kl"), "calibration"),
        (dict(fmt="int8", rounding="stochastic"), "key"),
        (dict(fmt="int8", rounding="up"), "rounding"),
        (dict(fmt="int8", calibration="percentile", percentile=0.0), "percentile"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(jnp.ones((8, 4)), **kwargs)


def test_nan_inf_rejected():
    with pytest.raises(ValueError, match="`x`"):
        quantize(jnp.array([1.0, jnp.nan]), "int8")
    with pytest.raises(ValueError, match="`x`"):
        quantize(jnp.array([1.0, jnp.inf]), "int8")
    with pytest.raises(ValueError, match="`x`"):
        quantize(jnp.arange(4), "int8")  # integer input


def test_sharded_quantize_equals_unsharded(mesh8):
    w = jax.random.normal(jax.random.key(3), (64, 32))
    ws = jax.device_put(w, jax.NamedSharding(mesh8, jax.P(None, "data")))
    f = jax.jit(lambda w: quantize(w, "int4", axis=0, group_size=16))
    a, b = f(w), f(ws)
    np.testing.assert_array_equal(np.asarray(a.qvalue), np.asarray(b.qvalue))
    np.testing.assert_array_equal(np.asarray(a.scale), np.asarray(b.scale))
    ws2 = jax.device_put(w, jax.NamedSharding(mesh8, jax.P("data", None)))
    c = jax.jit(lambda w: quantize(w, "int8", axis=0))(ws2)
    np.testing.assert_array_equal(np.asarray(c.qvalue), np.asarray(quantize(w, "int8", axis=0).qvalue))


# ------------------------------------------------------------------------------------------
# scale dtype
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float16", jnp.bfloat16])
def test_half_precision_scales_round_up_and_shrink(scale_dtype):
    x = jax.random.normal(jax.random.key(0), (256, 48)) * 0.05
    q32 = quantize(x, "int4", axis=0, group_size=128)
    qh = quantize(x, "int4", axis=0, group_size=128, scale_dtype=scale_dtype)
    s32, sh = np.asarray(q32.scale), np.asarray(qh.scale).astype(np.float32)
    # rounded *up* to the nearest representable value: >= the fp32 scale, one ulp at most
    assert np.all(sh >= s32)
    ulp = np.abs(np.asarray(jnp.nextafter(qh.scale, jnp.asarray(np.inf, qh.scale.dtype))).astype(np.float32) - sh)
    assert np.all(sh - s32 < ulp)
    # so no value is clipped: |x| <= qmax * s everywhere, and the codes use the full range
    assert np.all(np.abs(np.asarray(x)) <= 7 * np.asarray(qh.full_scale()).astype(np.float32))
    assert qh.nbytes == 256 * 48 // 2 + 2 * 48 * 2 < q32.nbytes


def test_gptq_with_bf16_scales_on_stored_grid_and_beats_rtn():
    k1, k2 = jax.random.split(jax.random.key(1))
    w = jax.random.normal(k1, (256, 32)) * 0.1
    x = jax.random.normal(k2, (512, 256)) * (1 + jnp.arange(256) / 64)
    q = gptq(w, x, "int4", 128, scale_dtype="bfloat16")
    assert q.scale.dtype == jnp.bfloat16
    codes = np.asarray(q.dequantize()) / np.asarray(q.full_scale()).astype(np.float32)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)  # grid of the stored scales
    assert np.abs(np.round(codes)).max() <= 8
    e = lambda qa: float(layer_reconstruction_error(x, w, qa))
    assert e(q) < e(rtn(w, "int4", group_size=128, scale_dtype="bfloat16"))


def test_bad_scale_dtype():
    with pytest.raises(ValueError, match="scale_dtype"):
        quantize(jnp.ones((4, 4)), "int8", scale_dtype="int8")
    with pytest.raises(ValueError, match="scale_dtype"):
        quantize(jnp.ones((4, 4)), "int8", scale_dtype=jnp.float8_e4m3fn)
    with pytest.raises(ValueError, match="scale_dtype"):  # 1e7 / 127 overflows float16
        quantize(jnp.full((4, 4), 1e7), "int8", scale_dtype="float16")


# ------------------------------------------------------------------------------------------
# nf4
# ------------------------------------------------------------------------------------------
def test_nf4_codebook_is_the_qlora_construction():
    from scipy.special import ndtri

    delta = 0.9677083
    pos = ndtri(np.linspace(delta, 0.5, 9)[:-1])
    neg = -ndtri(np.linspace(delta, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    np.testing.assert_allclose(NF4_CODEBOOK, v / v.max(), atol=5e-7)
    f = get_qformat("nf4")
    assert f.packed and f.values_per_byte == 2 and (f.qmin, f.qmax) == (-1.0, 1.0)


def _nf4_numpy(x, group):
    """Reference: per-group absmax scale along axis 0, nearest codebook entry by argmin."""
    n, m = x.shape
    xg = x.reshape(n // group, group, m)
    s = np.abs(xg).max(axis=1)  # (n/g, m)
    v = xg / s[:, None, :]
    idx = np.argmin(np.abs(v[..., None] - NF4_CODEBOOK), axis=-1).astype(np.uint8).reshape(n, m)
    return s, idx


def test_nf4_matches_numpy_lookup_and_packs_two_per_byte():
    x = np.random.default_rng(6).normal(size=(64, 10)).astype(np.float32)
    qa = quantize(jnp.asarray(x), "nf4", axis=0, group_size=16)
    s, idx = _nf4_numpy(x, 16)
    np.testing.assert_allclose(np.asarray(qa.scale), s, rtol=0)
    np.testing.assert_array_equal(np.asarray(qa.codes()), idx)
    packed = (idx[:, 0::2] & 0xF) | ((idx[:, 1::2] & 0xF) << 4)
    np.testing.assert_array_equal(np.asarray(qa.qvalue), packed)
    assert qa.qvalue.nbytes == x.size // 2
    deq = NF4_CODEBOOK[idx].reshape(4, 16, 10) * s[:, None, :]
    np.testing.assert_array_equal(np.asarray(qa.dequantize()), deq.reshape(64, 10))


@settings(max_examples=10, deadline=None)
@given(case=_case(), scale_dtype=st.sampled_from(SCALE_DTYPES), seed=st.integers(0, 2**16))
def test_nf4_round_trip_within_half_codebook_gap(case, scale_dtype, seed):
    shape, axis, group = case
    x = np.random.default_rng(seed).standard_t(4, size=shape).astype(np.float32)
    qa = quantize(jnp.asarray(x), "nf4", axis=axis, group_size=group, scale_dtype=scale_dtype)
    s = np.asarray(qa.full_scale()).astype(np.float32)
    v = x / s
    assert np.all(np.abs(v) <= 1.0)
    i = np.clip(np.searchsorted(NF4_CODEBOOK, v, side="right") - 1, 0, 14)
    half_gap = (NF4_CODEBOOK[i + 1] - NF4_CODEBOOK[i]) / 2
    assert np.all(np.abs(np.asarray(qa.dequantize()) - x) <= s * half_gap * (1 + 1e-5) + 1e-30)


def test_nf4_stochastic_unbiased_and_symmetric_only():
    x = jnp.linspace(-1.0, 1.0, 24)
    n = 4000
    keys = jax.random.split(jax.random.key(8), n)
    deq = jax.jit(jax.vmap(lambda k: quantize(x, "nf4", rounding="stochastic", key=k).dequantize()))(keys)
    # each sample is one of the two codebook neighbours; the mean is unbiased
    assert float(jnp.abs(deq.mean(0) - x).max()) < 5 * 0.31 / (2 * np.sqrt(n))
    assert float(deq.std(0).max()) > 0
    with pytest.raises(ValueError, match="symmetric"):
        quantize(x, "nf4", symmetric=False)

"""NaN/inf in low-precision float arrays (bf16, fp16, fp8) is detected everywhere.

NumPy reports the ml_dtypes types with kind "V", so a finiteness check on kind "f"/"c"
silently skipped them and NaN became finite quantization codes or NaN weights.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff._core.validation import check_finite
from jaxeff.coreset import sqrt_leverage, uniform
from jaxeff.quant import fake_quant, quantize, quantized_matmul, rtn

LOW = [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2]


@pytest.mark.parametrize("dt", LOW + [jnp.float32])
def test_check_finite_every_float_dtype(dt):
    x = jnp.ones((3, 4), dt).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="`a` contains 1 NaN"):
        check_finite("a", x)
    check_finite("a", jnp.ones((3, 4), dt))
    check_finite("a", np.arange(4))  # integers are always finite


@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16, jnp.float8_e5m2])
def test_check_finite_inf(dt):
    with pytest.raises(ValueError, match="`a`"):
        check_finite("a", jnp.ones((4,), dt).at[0].set(jnp.inf))


@pytest.mark.parametrize("dt", LOW)
def test_quantize_family_refuses_low_precision_nan(dt):
    x = jnp.ones((4, 16), dt).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="`x`"):
        quantize(x, "int8", axis=1)
    with pytest.raises(ValueError, match="`x`"):
        fake_quant(x, "int8", axis=1)
    with pytest.raises(ValueError, match="`w`|`x`"):
        rtn(x, "int4")
    w = rtn(jnp.ones((16, 4)), "int8")
    with pytest.raises(ValueError, match="`x`"):
        quantized_matmul(x, w, act_fmt="int8")


@pytest.mark.parametrize("sampler", [uniform, sqrt_leverage])
def test_coreset_refuses_bf16_nan_sample_weights(sampler):
    r = np.random.default_rng(0)
    X = jnp.asarray(r.normal(size=(64, 3)), jnp.float32)
    y = jnp.asarray(np.where(r.normal(size=64) > 0, 1, -1), jnp.float32)
    sw = jnp.ones((64,), jnp.bfloat16).at[3].set(jnp.nan)
    with pytest.raises(ValueError, match="sample_weights"):
        sampler(jax.random.key(0), X, y, 8, sample_weights=sw)
    Xb = X.astype(jnp.bfloat16).at[0, 0].set(jnp.inf)
    with pytest.raises(ValueError, match="`X`"):
        sampler(jax.random.key(0), Xb, y, 8)

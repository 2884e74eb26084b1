"""Out-of-range tokens and short states raise instead of being clipped/wrapped silently.

QuantizedEmbed / CharLM tokens (data: checked with equinox.error_if under jit) and the
MountainCar state shape (static).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff.irl.envs import mountain_car_step
from jaxeff.models.charlm import CharLM, CharLMConfig
from jaxeff.quant import quantize
from jaxeff.quant.model import QuantizedEmbed


def test_quantized_embed_token_range():
    emb = nnx.Embed(10, 8, rngs=nnx.Rngs(0))
    q = QuantizedEmbed(quantize(emb.embedding[...], "int8", axis=1))
    np.testing.assert_allclose(np.asarray(q(jnp.array([0, 9]))), np.asarray(emb(jnp.array([0, 9]))), atol=0.02)
    for bad in ([1, 10], [-1, 2]):
        with pytest.raises(ValueError, match="`tokens`"):
            q(jnp.array(bad))
    f = jax.jit(lambda t: q(t))
    f(jnp.array([1, 2]))
    with pytest.raises(Exception, match="tokens"):
        jax.block_until_ready(f(jnp.array([1, 12])))


def test_charlm_token_range():
    cfg = CharLMConfig(vocab_size=16, d_model=8, num_heads=2, num_layers=1, max_len=8)
    m = CharLM(cfg, rngs=nnx.Rngs(0))
    assert m(jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 16)
    with pytest.raises(ValueError, match="`tokens`"):
        m(jnp.array([[1, 2, 16, 3]]))
    with pytest.raises(ValueError, match="`tokens`"):
        m(jnp.array([[1.0, 2.0]]))
    f = nnx.jit(lambda mod, t: mod(t))
    with pytest.raises(Exception, match="tokens"):
        jax.block_until_ready(f(m, jnp.array([[1, -3]])))


def test_mountain_car_state_shape():
    np.testing.assert_allclose(np.asarray(mountain_car_step(jnp.array([-0.5, 0.0]), 2)), [-0.49918, 0.00082],
                               atol=1e-5)
    for bad in (jnp.array([-0.5]), jnp.array([-0.5, 0.0, 1.0]), jnp.zeros((2, 2))):
        with pytest.raises(ValueError, match="`s`"):
            mountain_car_step(bad, 1)
    with pytest.raises(ValueError, match="`action`"):
        mountain_car_step(jnp.array([-0.5, 0.0]), 3)

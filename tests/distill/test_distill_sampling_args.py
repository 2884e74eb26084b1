"""filter_logits / sample_from_logits refuse bad top_k / top_p / logits (found by the API fuzz)."""
import jax
import jax.numpy as jnp
import pytest

from jaxeff import filter_logits, sample_from_logits

L = jnp.array([[0.0, 2.0, 1.0, -1.0]])


@pytest.mark.parametrize("kw,name", [({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
                                     ({"top_p": 1.5}, "top_p"), ({"top_p": float("nan")}, "top_p"),
                                     ({"top_p": 0.0}, "top_p")])
@pytest.mark.parametrize("fn", ["filter", "sample"])
def test_bad_top_k_top_p_refused(kw, name, fn):
    with pytest.raises(ValueError, match=f"`{name}`"):
        if fn == "filter":
            filter_logits(L, **kw)
        else:
            sample_from_logits(jax.random.key(0), L, **kw)


def test_top_k_zero_and_top_p_one_are_off():
    assert jnp.array_equal(filter_logits(L, top_k=0, top_p=1.0), L)


def test_empty_vocab_refused():
    with pytest.raises(ValueError, match="`logits`"):
        filter_logits(jnp.zeros((2, 0)))
    with pytest.raises(ValueError, match="`logits`"):
        sample_from_logits(jax.random.key(0), jnp.zeros((2, 0)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_logits_refused_eager_and_jit(bad):
    x = L.at[0, 1].set(bad)
    with pytest.raises(ValueError, match="`logits`"):
        sample_from_logits(jax.random.key(0), x)
    with pytest.raises(Exception, match="`logits`"):
        jax.jit(lambda k, l: sample_from_logits(k, l))(jax.random.key(0), x).block_until_ready()


def test_minus_inf_mask_and_non_key():
    x = L.at[0, 1].set(-jnp.inf)
    assert int(sample_from_logits(jax.random.key(0), x, temperature=0.0)[0]) == 2
    with pytest.raises(ValueError, match="`key`"):
        sample_from_logits(3, L)

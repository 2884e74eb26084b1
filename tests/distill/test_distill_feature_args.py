"""hidden_state_loss / attention_transfer_loss name the offending argument (found by the API fuzz)."""
import jax.numpy as jnp
import pytest

from jaxeff import attention_transfer_loss, hidden_state_loss

H = jnp.ones((2, 3, 4))


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan")])
def test_hidden_state_eps_checked(eps):
    with pytest.raises(ValueError, match="`eps`"):
        hidden_state_loss(H, 2 * H, kind="cosine", eps=eps)


def test_hidden_state_width_mismatch_names_both():
    with pytest.raises(ValueError, match="`student_hidden`.*`teacher_hidden`"):
        hidden_state_loss(H, jnp.ones((2, 3, 5)))


M = jnp.ones((2, 3, 3, 4))


@pytest.mark.parametrize("s,t", [(M[None], M), (M, M[:, :2]), ([M, M], M), (M[0], M)])
def test_attention_transfer_shape_errors_name_the_maps(s, t):
    with pytest.raises(ValueError, match="`student_maps`.*`teacher_maps`"):
        attention_transfer_loss(s, t)

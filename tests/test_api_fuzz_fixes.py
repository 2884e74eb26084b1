"""Bad-input fixes found by the API fuzz (tests/test_api_fuzz.py): QFormat, unpack_int, msam."""
import jax.numpy as jnp
import optax
import pytest

from jaxeff import QFormat, msam, msam_gradient, pack_int, unpack_int


@pytest.mark.parametrize("kw,name", [({"kind": "bogus"}, "kind"), ({"kind": None}, "kind"), ({"bits": 0}, "bits"),
                                     ({"bits": -1}, "bits"), ({"bits": 2.5}, "bits"), ({"bits": None}, "bits"),
                                     ({"name": None}, "name"), ({"kind": "float", "bits": 4}, "bits")])
def test_qformat_validates(kw, name):
    args = {"name": "int4", "kind": "int", "bits": 4, **kw}
    with pytest.raises(ValueError, match=f"`{name}`"):
        QFormat(**args)


def test_qformat_valid():
    assert QFormat(name="int4", kind="int", bits=4).bits == 4


@pytest.mark.parametrize("n", [0, -1, None, 7, 2.5])
def test_unpack_int_n_checked(n):
    p = pack_int(jnp.array([1, -2, 3, 0, 7, -8], jnp.int8), "int4")
    with pytest.raises(ValueError, match="`n`"):
        unpack_int(p, "int4", n)


def test_unpack_int_roundtrip_and_packed_dtype():
    c = jnp.array([1, -2, 3, 0, 7, -8], jnp.int8)
    assert jnp.array_equal(unpack_int(pack_int(c, "int4"), "int4", 6), c)
    with pytest.raises(ValueError, match="`packed`"):
        unpack_int(jnp.zeros((3,), jnp.float32), "int4", 6)


def _loss(p, b):
    return jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)


@pytest.mark.parametrize("kw,name", [({"eps": -1.0}, "eps"), ({"asam_eta": -1.0}, "asam_eta"),
                                     ({"asam_eta": float("nan")}, "asam_eta")])
def test_msam_eps_asam_eta(kw, name):
    batch = {"x": jnp.ones((4, 3)), "y": jnp.ones(4)}
    with pytest.raises(ValueError, match=f"`{name}`"):
        msam_gradient(_loss, {"w": jnp.ones(3)}, batch, 0.05, 2, **kw)
    with pytest.raises(ValueError, match=f"`{name}`"):
        msam(optax.sgd(0.1), 0.05, 2, **kw)

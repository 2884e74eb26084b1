"""Weight sites: layer-kind-agnostic contracted/output axes, tracing and input capture.

References are plain ``np.einsum`` / ``x @ w`` on the layers' own weights and, for real model
code nobody here wrote, google-tunix's Llama3 NNX model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff._core.layers import (
    WeightSite,
    capture_inputs,
    einsum_site,
    find_weight_sites,
    get_by_path,
    register_layer_kind,
    static_sites,
    trace_weight_uses,
)


@pytest.mark.parametrize(
    "eq,xshape,wshape",
    [
        ("btd,dnh->btnh", (2, 3, 5), (5, 2, 4)),
        ("BTNH,NHD->BTD", (2, 3, 2, 4), (2, 4, 6)),
        ("...d,df->...f", (2, 3, 5), (5, 7)),
        ("ebd,edf->ebf", (3, 4, 5), (3, 5, 6)),  # per-expert batch axis
        ("btd,hd->bth", (2, 3, 5), (4, 5)),  # weight stored [out, in]
    ],
)
def test_einsum_site_matrix_reproduces_einsum(eq, xshape, wshape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=xshape).astype(np.float32)
    w = rng.normal(size=wshape).astype(np.float32)
    s = einsum_site(eq, wshape)
    m = np.asarray(s.matrix(jnp.asarray(w)))
    assert m.shape == (*s.batch_shape, s.in_features, s.out_features)
    np.testing.assert_array_equal(np.asarray(s.unmatrix(jnp.asarray(m))), w)
    ref = np.einsum(eq, x, w)
    lhs = eq.split(",")[0].replace("...", "")
    rhs = eq.split(",")[1].split("->")[0]
    # lay x out as [*batch, tokens, K] with K in the weight's axis order, by hand
    b = [lhs.index(rhs[a]) for a in s.batch]
    c = [lhs.index(rhs[a]) for a in s.contract]
    xo = x.ndim - len(lhs)  # ellipsis axes lead
    b = [xo + i for i in b]
    c = [xo + i for i in c]
    rest = [i for i in range(x.ndim) if i not in b + c]
    xm = np.transpose(x, b + rest + c).reshape(*s.batch_shape, -1, s.in_features)
    got = xm @ m
    if not s.batch:
        # output features of the einsum in the weight's out-axis order
        out_letters = eq.split("->")[1].replace("...", "")
        o = [out_letters.index(rhs[a]) + (ref.ndim - len(out_letters)) for a in s.out]
        keep = [i for i in range(ref.ndim) if i not in o]
        np.testing.assert_allclose(got, np.transpose(ref, keep + o).reshape(-1, s.out_features), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_einsum_site_rejects_non_layers():
    with pytest.raises(ValueError, match="weight axes"):
        einsum_site("bd,df->bf", (3, 4, 5))
    with pytest.raises(ValueError, match="neither"):
        einsum_site("bd,dfz->bf", (3, 4, 5))
    with pytest.raises(ValueError, match="one weight operand"):
        einsum_site("bd,df,fg->bg", (3, 4))
    with pytest.raises(ValueError, match="partition"):
        WeightSite(path="a", name="w", kind="param", shape=(3, 4), contract=(0,), out=())


class _MatmulLayer(nnx.Module):
    """A user-defined layer no class list knows: ``tanh(x @ w^T)`` with w stored [out, in]."""

    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (5, 6)))

    def __call__(self, x):
        return jnp.tanh(x @ self.w[...].T)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(4, 6, rngs=rngs)
        self.my = _MatmulLayer(rngs)
        self.e = nnx.Einsum("btd,dnh->btnh", (5, 2, 3), rngs=rngs)
        self.o = nnx.Einsum("btnh,nhd->btd", (2, 3, 4), rngs=rngs)
        self.g = nnx.LinearGeneral(4, (2, 2), rngs=rngs)

    def __call__(self, x):
        h = self.my(self.a(x))
        h = self.o(self.e(h))
        return self.g(h)


@pytest.fixture(scope="module")
def net():
    return _Net(nnx.Rngs(0))


def test_static_and_traced_sites(net):
    st = static_sites(net)
    assert {k: v.kind for k, v in st.items()} == {
        "a": "nnx.Linear", "e": "nnx.Einsum", "o": "nnx.Einsum", "g": "nnx.LinearGeneral"}
    assert st["o"].contract == (0, 1) and st["o"].out == (2,)
    x = jnp.ones((2, 3, 4))
    sites = find_weight_sites(net, x)
    assert sites["my"].kind == "traced"
    assert sites["my"].contract == (1,) and sites["my"].out == (0,)  # w is [out, in]


def test_capture_inputs_reproduce_layer_outputs(net):
    x = jax.random.normal(jax.random.key(1), (2, 3, 4))
    sites = find_weight_sites(net, x)
    cap = capture_inputs(net, x, sites=sites)
    h_a = net.a(x)
    np.testing.assert_allclose(cap["a"], np.asarray(x).reshape(-1, 4), rtol=1e-6)
    pre = cap["my"] @ sites["my"].matrix(net.my.w[...])
    np.testing.assert_allclose(pre, h_a.reshape(-1, 6) @ np.asarray(net.my.w[...]).T, rtol=1e-5, atol=1e-6)
    h = net.my(h_a)
    np.testing.assert_allclose(cap["e"] @ sites["e"].matrix(net.e.kernel[...]),
                               np.einsum("btd,dnh->btnh", h, net.e.kernel[...]).reshape(-1, 6), rtol=1e-5, atol=1e-5)
    he = net.e(h)
    np.testing.assert_allclose(cap["o"] @ sites["o"].matrix(net.o.kernel[...]),
                               np.einsum("btnh,nhd->btd", he, net.o.kernel[...]).reshape(-1, 4), rtol=1e-5, atol=1e-5)
    assert cap["g"].shape == (6, 4)


def test_weight_used_twice_gets_rows_of_both_calls():
    class Twice(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.lin(self.lin(x))

    m = Twice()
    x = jnp.arange(6.0).reshape(2, 3)
    cap = capture_inputs(m, x)
    np.testing.assert_allclose(cap["lin"], np.concatenate([x, m.lin(x)]), rtol=1e-6)


def test_capture_through_nested_jit():
    class J(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(12.0).reshape(3, 4))

        def __call__(self, x):
            return jax.jit(lambda a, b: jnp.dot(a, b.astype(jnp.bfloat16).astype(jnp.float32)))(x, self.w[...])

    m = J()
    x = jnp.ones((5, 3))
    sites = find_weight_sites(m, x)
    assert sites["" if "" in sites else "w"].contract == (0,)
    cap = capture_inputs(m, x, sites=sites)
    np.testing.assert_array_equal(next(iter(cap.values())), np.ones((5, 3)))


def test_register_layer_kind_and_mismatch_error():
    class Odd(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((4, 3)))

        def __call__(self, x):
            return x @ self.w[...]

    register_layer_kind(Odd, lambda m, p: WeightSite(path=p, name="w", kind="odd", shape=(4, 3), contract=(0,), out=(1,)))
    m = Odd()
    assert static_sites(m)[""].kind == "odd"
    # a wrong description is caught by the trace
    register_layer_kind(Odd, lambda m, p: WeightSite(path=p, name="w", kind="odd", shape=(4, 3), contract=(1,), out=(0,)))
    with pytest.raises(ValueError, match="register_layer_kind"):
        find_weight_sites(m, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`cls`"):
        register_layer_kind("Odd", lambda m, p: None)


def test_capture_refuses_weight_inside_scan():
    class Scanned(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.eye(3))

        def __call__(self, x):
            return jax.lax.scan(lambda c, _: (c @ self.w[...], None), x, None, length=2)[0]

    m = Scanned()
    site = WeightSite(path="", name="w", kind="param", shape=(3, 3), contract=(0,), out=(1,))
    with pytest.raises(ValueError, match="scan"):
        capture_inputs(m, jnp.ones((2, 3)), sites=[site])


def test_tunix_llama3_all_projections_found_and_captured():
    lm = pytest.importorskip("tunix.models.llama3.model")
    cfg = lm.ModelConfig(num_layers=2, vocab_size=128, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                         num_kv_heads=2, rope_theta=10000, norm_eps=1e-5)
    m = lm.Llama3(cfg, rngs=nnx.Rngs(0))
    B, L = 2, 8
    toks = jax.random.randint(jax.random.key(0), (B, L), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.tril(jnp.ones((L, L), bool))[None].repeat(B, 0)
    sites = find_weight_sites(m, toks, pos, None, mask)
    want = {f"layers.{i}.{p}" for i in range(2) for p in
            ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert want | {"lm_head"} == set(sites)
    q = sites["layers.0.attn.q_proj"]
    assert (q.kind, q.contract, q.out) == ("einsum", (0,), (1, 2))
    o = sites["layers.0.attn.o_proj"]
    assert (o.contract, o.out) == ((0, 1), (2,))
    _, other = trace_weight_uses(m, toks, pos, None, mask)
    assert "gather" in other["embedder.input_embedding"]
    cap = capture_inputs(m, toks, pos, None, mask, sites=sites)
    layer = m.layers[0]
    x0 = layer.input_layernorm(m.embedder.encode(toks))
    np.testing.assert_allclose(cap["layers.0.attn.q_proj"], np.asarray(x0).reshape(-1, 32), rtol=1e-5, atol=1e-6)
    w = get_by_path(m, q.full_path)[...]
    np.testing.assert_allclose(cap["layers.0.attn.q_proj"] @ q.matrix(w),
                               np.einsum("BTD,DNH->BTNH", x0, w).reshape(B * L, -1), rtol=1e-4, atol=1e-5)

"""Model code nobody here wrote, third family: google-tunix's Gemma3 NNX model (its own ``Einsum``
with FUSED weights: ``kv_einsum`` ``CKDH`` for grouped-query attention, ``qkv_einsum`` ``SNDH``
when every head has its own KV, ``attn_vec_einsum`` ``NHD``; nnx.Linear GeGLU MLP; sliding and
global layers). Every projection quantizes with true int8 x int8 -> int32 matmuls, GPTQ on the
captured inputs equals GPTQ by hand on the matrix layout, SparseGPT prunes every projection, and
OSSCAR on the MLP then ``shrink`` gives the masked model's logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff._core.layers import capture_inputs
from jaxeff.prune import MLP_PATTERN, prune_model, prune_structured, shrink, sparsegpt
from jaxeff.quant import QuantRule, gptq, layer_reconstruction_error, quantize_model, rtn

from _tunix_random import randomize

g3 = pytest.importorskip("tunix.models.gemma3.model")
B, L = 2, 8


def _model(num_kv_heads, seed=0):
    cfg = g3.ModelConfig(num_layers=2, num_embed=128, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                         num_kv_heads=num_kv_heads, sliding_window_size=4, param_dtype=jnp.float32)
    # random values everywhere (tunix zero-inits the norm scales)
    return randomize(g3.Gemma3(cfg, rngs=nnx.Rngs(seed)), seed, vector_offset=0.0)


def _args():
    tok = jax.random.randint(jax.random.key(0), (B, L), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    return tok, pos, None, mask


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module", params=[2, 4], ids=["gqa-kv_einsum", "mha-qkv_einsum"])
def model(request):
    attn = ("q_einsum", "kv_einsum", "attn_vec_einsum") if request.param == 2 else ("qkv_einsum", "attn_vec_einsum")
    proj = tuple(f"attn.{a}" for a in attn) + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    return _model(request.param), _args(), {f"layers.{i}.{p}" for i in range(2) for p in proj}


def test_every_projection_w8a8_int_matmuls(model):
    m, args, want = model
    y, _ = m(*args)
    qm, summary = quantize_model(m, QuantRule(weight_fmt="int8", act_fmt="int8"), return_summary=True)
    assert set(summary.paths) == want
    assert all(r.execution == "int8 x int8 -> int32" for r in summary)
    yq, _ = nnx.jit(lambda mm, *a: mm(*a))(qm, *args)
    assert yq.shape == y.shape and _rel(yq, y) < 0.05
    assert str(jax.make_jaxpr(lambda *a: qm(*a)[0])(*args)).count("preferred_element_type=int32") >= len(want)


def test_gptq_int4_on_fused_einsums_equals_gptq_by_hand(model):
    m, args, want = model
    qm = quantize_model(m, QuantRule(weight_fmt="int4", group_size=8, method="gptq"), example_inputs=args)
    cap = capture_inputs(m, *args)
    fused = next(p for p in sorted(want) if p.endswith(("kv_einsum", "qkv_einsum")) and ".q_" not in p)
    for path in (fused, "layers.1.attn.attn_vec_einsum", "layers.1.mlp.down_proj"):
        i, blk, name = int(path.split(".")[1]), path.split(".")[2], path.split(".")[3]
        src, dst = getattr(getattr(m.layers[i], blk), name), getattr(getattr(qm.layers[i], blk), name)
        w = dst.site.matrix(src.w[...] if hasattr(src, "w") else src.kernel[...])
        ref = gptq(w, x=cap[path], fmt="int4", group_size=8)
        np.testing.assert_array_equal(np.asarray(dst.qvalue[...]), np.asarray(ref.qvalue))
        err_g = float(layer_reconstruction_error(cap[path], w, ref))
        assert err_g < float(layer_reconstruction_error(cap[path], w, rtn(w, "int4", group_size=8))), path


def test_sparsegpt_every_projection_by_hand(model):
    m, args, want = model
    pruned, _, summary = prune_model(m, 0.5, example_inputs=args, block_size=16)
    assert want <= set(summary.paths)
    assert all(p.sparsity == pytest.approx(0.5) for p in summary.pruned)
    x = capture_inputs(m, *args)
    fused = next(p for p in sorted(want) if p.startswith("layers.1") and p.endswith(("kv_einsum", "qkv_einsum"))
                 and ".q_" not in p)
    a = fused.split(".")[3]
    src, dst = getattr(m.layers[1].attn, a), getattr(pruned.layers[1].attn, a)
    w = src.w[...]
    # the fused weight contracts D (axis -2): as a matrix [D, everything else] in axis order
    perm = [w.ndim - 2] + [i for i in range(w.ndim) if i != w.ndim - 2]
    mat = jnp.transpose(w, perm).reshape(w.shape[-2], -1)
    w_ref, _ = sparsegpt(mat, x[fused], 0.5, block_size=16)
    got = jnp.transpose(dst.w[...], perm).reshape(w.shape[-2], -1)
    np.testing.assert_allclose(got, w_ref, rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(pruned(*args)[0])))


def test_osscar_mlp_then_shrink(model):
    m, args, _ = model
    masked, keep = prune_structured(m, capture_inputs(m, *args), 0.5, pattern=MLP_PATTERN, local_search_iters=4)
    assert {k: len(v) for k, v in keep.items()} == {"layers.0.mlp": 32, "layers.1.mlp": 32}
    small = shrink(masked, keep)
    np.testing.assert_allclose(small(*args)[0], masked(*args)[0], rtol=1e-5, atol=1e-5)
    assert small.layers[0].mlp.gate_proj.kernel.shape == (32, 32)
    assert small.layers[1].mlp.down_proj.kernel.shape == (32, 32)

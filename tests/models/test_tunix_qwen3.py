"""Model code nobody here wrote, second family: google-tunix's Qwen3 NNX model (Einsum q/k/v/o with
q/k RMSNorm over head_dim, nnx.Linear SwiGLU, tied or untied lm-head). Every projection quantizes
(true int8 x int8 -> int32 matmuls), GPTQ on captured inputs equals GPTQ by hand on the matrix
layout, SparseGPT prunes every projection, OSSCAR on SwiGLU + whole GQA groups then ``shrink``
gives the masked model's logits with a smaller, still runnable tunix model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff._core.layers import capture_inputs
from jaxeff.prune import (GQA_ATTENTION_PATTERN, MLP_PATTERN, find_prunable_blocks, prune_model, prune_structured,
                          shrink, sparsegpt)
from jaxeff.quant import QuantizedLinear, QuantRule, gptq, quantize_model

from _tunix_random import randomize

qwen3 = pytest.importorskip("tunix.models.qwen3.model")

B, L = 2, 8
PROJ = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _model(tied, seed=0):
    cfg = qwen3.ModelConfig(num_layers=2, vocab_size=128, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                            num_kv_heads=2, rope_theta=10000, norm_eps=1e-6, use_tied_embedding=tied)
    return randomize(qwen3.Qwen3(cfg, rngs=nnx.Rngs(seed)), seed)  # tunix zero-inits some


def _args():
    tok = jax.random.randint(jax.random.key(0), (B, L), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    return tok, pos, None, mask


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model(request):
    return _model(request.param), _args(), request.param


def test_every_projection_w8a8_int_matmuls(model):
    m, args, tied = model
    y, _ = m(*args)
    qm, summary = quantize_model(m, QuantRule(weight_fmt="int8", act_fmt="int8"), return_summary=True)
    want = {f"layers.{i}.{p}" for i in range(2) for p in PROJ} | (set() if tied else {"lm_head"})
    assert set(summary.paths) == want
    assert all(r.execution == "int8 x int8 -> int32" for r in summary)
    for i in range(2):
        for p in PROJ:
            a, b = p.split(".")
            assert isinstance(getattr(getattr(qm.layers[i], a), b), QuantizedLinear)
    yq, _ = nnx.jit(lambda mm, *a: mm(*a))(qm, *args)
    assert yq.shape == y.shape and _rel(yq, y) < 0.05
    jaxpr = str(jax.make_jaxpr(lambda *a: qm(*a)[0])(*args))
    assert jaxpr.count("preferred_element_type=int32") >= len(want)


def test_gptq_int4_equals_gptq_by_hand(model):
    m, args, _ = model
    y, _ = m(*args)
    qm = quantize_model(m, QuantRule(weight_fmt="int4", group_size=8, method="gptq"), example_inputs=args)
    cap = capture_inputs(m, *args)
    for path in ("layers.0.attn.k_proj", "layers.1.attn.o_proj", "layers.1.mlp.down_proj"):
        i, blk, name = int(path.split(".")[1]), path.split(".")[2], path.split(".")[3]
        src, dst = getattr(getattr(m.layers[i], blk), name), getattr(getattr(qm.layers[i], blk), name)
        w = src.w[...] if hasattr(src, "w") else src.kernel[...]
        ref = gptq(dst.site.matrix(w), x=cap[path], fmt="int4", group_size=8)
        np.testing.assert_array_equal(np.asarray(dst.qvalue[...]), np.asarray(ref.qvalue))
        # GPTQ's target: a smaller layer output error on the calibration inputs than plain RTN
        rtn = quantize_model(m, QuantRule(weight_fmt="int4", group_size=8))
        r = getattr(getattr(rtn.layers[i], blk), name)
        wm = dst.site.matrix(w)
        err = lambda q_: float(jnp.linalg.norm(cap[path] @ (q_.site.matrix(q_.dequantized_kernel()) - wm)))
        assert err(dst) < err(r), path
    assert _rel(qm(*args)[0], y) < 0.5


def test_sparsegpt_every_projection_by_hand(model):
    m, args, tied = model
    pruned, masks, summary = prune_model(m, 0.5, example_inputs=args, block_size=16)
    assert {f"layers.{i}.{p}" for i in range(2) for p in PROJ} <= set(summary.paths)
    for p in summary.pruned:
        assert p.sparsity == pytest.approx(0.5)
    x = capture_inputs(m, *args)
    w_ref, _ = sparsegpt(m.layers[1].attn.v_proj.w[...].reshape(32, 16), x["layers.1.attn.v_proj"], 0.5,
                         block_size=16)
    np.testing.assert_allclose(pruned.layers[1].attn.v_proj.w[...].reshape(32, 16), w_ref, rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(pruned(*args)[0])))


def test_osscar_swiglu_and_gqa_groups_then_shrink(model):
    m, args, _ = model
    assert sorted(find_prunable_blocks(m)) == ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    acts = capture_inputs(m, *args)
    masked, keep = prune_structured(m, acts, 0.5, pattern=(MLP_PATTERN, GQA_ATTENTION_PATTERN), local_search_iters=4)
    assert {k: len(v) for k, v in keep.items()} == {"layers.0.attn": 1, "layers.0.mlp": 32,
                                                    "layers.1.attn": 1, "layers.1.mlp": 32}
    small = shrink(masked, keep)
    np.testing.assert_allclose(small(*args)[0], masked(*args)[0], rtol=1e-5, atol=1e-5)
    a = small.layers[0].attn
    g = int(keep["layers.0.attn"][0])
    assert a.q_proj.w.shape == (32, 2, 8) and a.k_proj.w.shape == (32, 1, 8) and a.o_proj.w.shape == (2, 8, 32)
    np.testing.assert_array_equal(a.k_proj.w[...], m.layers[0].attn.k_proj.w[...][:, g:g + 1])
    # q/k RMSNorm scales act per head_dim, shared by all heads: unchanged
    np.testing.assert_array_equal(a.q_norm.w[...], m.layers[0].attn.q_norm.w[...])
    assert small.layers[1].mlp.down_proj.kernel.shape == (32, 32)
    n0 = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    n1 = sum(x.size for x in jax.tree.leaves(nnx.state(small, nnx.Param)))
    assert n0 - n1 == 2 * (3 * 32 * 32 + 2 * 32 * 16 + 16 * 32)

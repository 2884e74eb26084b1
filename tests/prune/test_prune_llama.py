"""Pruning real decoder code: google-tunix's Llama3 (Einsum attention, nnx.Linear SwiGLU) and the
jaxeff Llama family (Hugging Face layout), incl. shrunk exports loaded back by ``transformers``.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxeff._core.layers import capture_inputs
from jaxeff.prune import (GQA_ATTENTION_PATTERN, MLP_PATTERN, find_prunable_blocks, group_masks, osscar,
                          osscar_heads, prune_model, prune_structured, shrink, sparsegpt, sparsify)

tunix_lm = pytest.importorskip("tunix.models.llama3.model")

B, L = 2, 8


@pytest.fixture(scope="module")
def tunix():
    cfg = tunix_lm.ModelConfig(num_layers=2, vocab_size=128, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                               num_kv_heads=2, rope_theta=10000, norm_eps=1e-5)
    m = tunix_lm.Llama3(cfg, rngs=nnx.Rngs(0))
    k = jax.random.key(3)
    for layer in m.layers:  # tunix initializes the MLP kernels to zero: give them values
        for n in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(layer.mlp, n)
            k, sk = jax.random.split(k)
            lin.kernel.set_value(jax.random.normal(sk, lin.kernel.shape) * 0.2)
    tok = jax.random.randint(jax.random.key(0), (B, L), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    return m, (tok, pos, None, mask)


def test_tunix_sparsegpt_every_projection(tunix):
    m, args = tunix
    pruned, masks, summary = prune_model(m, 0.5, example_inputs=args, block_size=16)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert len(summary) == 15 and summary.paths[:7] == [f"layers.0.{'attn' if i < 4 else 'mlp'}.{n}"
                                                         for i, n in enumerate(names)]
    assert summary.paths[-1] == "lm_head" and ("embedder", "embedding table (looked up, not multiplied)") in summary.skipped
    for p in summary.pruned:
        assert p.sparsity == pytest.approx(0.5)
    # by hand on the matrices: q_proj w[D, N, H] -> [D, N*H]; o_proj w[N, H, D] -> [N*H, D]
    x = capture_inputs(m, *args)
    a0, a1 = m.layers[0].attn, pruned.layers[0].attn
    w_ref, _ = sparsegpt(a0.q_proj.w[...].reshape(32, 32), x["layers.0.attn.q_proj"], 0.5, block_size=16)
    np.testing.assert_allclose(a1.q_proj.w[...].reshape(32, 32), w_ref, rtol=1e-5, atol=1e-6)
    w_ref, _ = sparsegpt(a0.o_proj.w[...].reshape(32, 32), x["layers.0.attn.o_proj"], 0.5, block_size=16)
    np.testing.assert_allclose(a1.o_proj.w[...].reshape(32, 32), w_ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(pruned.lm_head.w[...])[~np.asarray(masks["lm_head"]["w"])] == 0)
    logits = pruned(*args)[0]
    assert logits.shape == (B, L, 128) and bool(jnp.all(jnp.isfinite(logits)))
    # sequential: the first stage (q/k/v of layer 0 share one input) is calibrated on the same
    # inputs, later layers on the pruned prefix
    seq, _, s2 = prune_model(m, {r"layers\.0\.attn\.[qkv]_proj|layers\.1\.mlp\.down_proj": 0.5},
                             example_inputs=args, sequential=True, block_size=16)
    assert s2.paths == ["layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.v_proj",
                        "layers.1.mlp.down_proj"]
    for n in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_allclose(getattr(seq.layers[0].attn, n).w[...], getattr(a1, n).w[...], rtol=1e-6, atol=1e-7)
    assert not np.allclose(seq.layers[1].mlp.down_proj.kernel[...], pruned.layers[1].mlp.down_proj.kernel[...])


def test_tunix_osscar_mlp_and_gqa_groups_then_shrink(tunix):
    m, args = tunix
    blocks = find_prunable_blocks(m)
    assert sorted(blocks) == ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    att = blocks["layers.0.attn"][2]
    assert (att["num_heads"], att["num_kv_heads"], att["head_dim"], att["num_groups"]) == (4, 2, 8, 2)
    acts = capture_inputs(m, *args)
    masked, keep = prune_structured(m, acts, 0.5, pattern=(MLP_PATTERN, GQA_ATTENTION_PATTERN), local_search_iters=4)
    assert {k: len(v) for k, v in keep.items()} == {"layers.0.attn": 1, "layers.0.mlp": 32,
                                                    "layers.1.attn": 1, "layers.1.mlp": 32}
    # the kernels on the hand-built matrices give the same selection and refit
    w_o = m.layers[1].attn.o_proj.w[...].reshape(32, 32)
    w_ref, kept = osscar_heads(w_o, acts["layers.1.attn.o_proj"], 1, 2, local_search_iters=4)
    np.testing.assert_array_equal(kept, keep["layers.1.attn"])
    np.testing.assert_allclose(masked.layers[1].attn.o_proj.w[...].reshape(32, 32), w_ref, rtol=1e-6)
    w_ref, kept = osscar(m.layers[0].mlp.down_proj.kernel[...], acts["layers.0.mlp.down_proj"], 32,
                         local_search_iters=4)
    np.testing.assert_array_equal(kept, keep["layers.0.mlp"])
    small = shrink(masked, keep)
    np.testing.assert_allclose(small(*args)[0], masked(*args)[0], rtol=1e-5, atol=1e-6)
    a = small.layers[0].attn
    g = int(keep["layers.0.attn"][0])
    assert a.q_proj.w.shape == (32, 2, 8) and a.k_proj.w.shape == (32, 1, 8) and a.o_proj.w.shape == (2, 8, 32)
    np.testing.assert_array_equal(a.k_proj.w[...], m.layers[0].attn.k_proj.w[...][:, g:g + 1])
    np.testing.assert_array_equal(a.q_proj.w[...], m.layers[0].attn.q_proj.w[...][:, 2 * g:2 * g + 2])
    assert a.q_proj.shape == (32, 2, 8) and a.head_dim == 8 and a.n_rep == 2  # tunix reads these
    assert (a.config.num_heads, a.config.num_kv_heads) == (2, 1)
    assert small.layers[0].mlp.config.hidden_dim == 32 and small.layers[1].mlp.down_proj.kernel.shape == (32, 32)
    n0 = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    n1 = sum(x.size for x in jax.tree.leaves(nnx.state(small, nnx.Param)))
    assert n0 - n1 == 2 * (3 * 32 * 32 + 2 * 32 * 16 + 16 * 32)  # MLP: 3 x 32 neurons x 32; attn: q,k,v,o
    # KV cache generation of the shrunk tunix model still works (cache laid out by the new KV heads)
    cache = {f"layer_{i}": dict(k=jnp.zeros((B, L, 1, 8)), v=jnp.zeros((B, L, 1, 8)),
                                end_index=jnp.zeros((B,), jnp.int32)) for i in range(2)}
    out, _ = small(*args[:2], cache, args[3])
    np.testing.assert_allclose(out, small(*args)[0], rtol=1e-5, atol=1e-6)


def test_tunix_sparsify_fixed_masks_in_nnx_optimizer(tunix):
    m, args = tunix
    pruned, masks, _ = prune_model(m, {r".*attn.*": (2, 4), r".*mlp.*": 0.5}, method="wanda", example_inputs=args)
    tok = args[0]

    def loss_fn(model):
        logits = model(*args)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tok[:, 1:]).mean()

    opt = nnx.Optimizer(pruned, sparsify(optax.adam(3e-3), masks=masks), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, g = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, g)
        return loss

    losses = [float(step(pruned, opt)) for _ in range(8)]
    assert losses[-1] < losses[0]
    for i in range(2):
        w = np.asarray(pruned.layers[i].attn.q_proj.w[...])
        mk = np.asarray(masks["layers"][i]["attn"]["q_proj"]["w"])
        assert np.all(w[~mk] == 0) and np.mean(w == 0) == pytest.approx(0.5)
        assert np.all(np.asarray(pruned.layers[i].mlp.up_proj.kernel[...])[~np.asarray(
            masks["layers"][i]["mlp"]["up_proj"]["kernel"])] == 0)


# -------------------------------------------------------------------- jaxeff Llama family (HF layout)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CASES = {
    "llama": ("LlamaConfig", {}),
    "qwen2-bias": ("Qwen2Config", {}),
    "qwen3-qknorm": ("Qwen3Config", dict(head_dim=32)),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    from jaxeff.models import from_pretrained

    root = tmp_path_factory.mktemp("hfprune")
    out = {}
    for i, (name, (cls, kw)) in enumerate(HF_CASES.items()):
        torch.manual_seed(i)
        cfg = getattr(transformers, cls)(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **kw)
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.normal_(0.0, 0.1)
        hf.save_pretrained(root / name)
        out[name] = from_pretrained(root / name)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)))
    return out, ids


def _hf_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(ids))).logits.float().numpy()


@pytest.mark.parametrize("name", list(HF_CASES))
def test_llama_family_osscar_shrink_saves_valid_config(name, hf_models, tmp_path):
    from jaxeff.models import save_pretrained

    models, ids = hf_models
    m = models[name]
    pats = (MLP_PATTERN, GQA_ATTENTION_PATTERN)
    if name == "llama":  # inputs captured inside prune_structured
        masked, keep = prune_structured(m, None, 0.5, pattern=pats, local_search_iters=3, example_inputs=(ids,))
    else:
        masked, keep = prune_structured(m, capture_inputs(m, ids), 0.5, pattern=pats, local_search_iters=3)
    small = shrink(masked, keep)
    ours = np.asarray(small(ids))
    np.testing.assert_allclose(ours, masked(ids), rtol=1e-5, atol=1e-5)
    hd = m.model.layers[0].self_attn.head_dim
    for layer in small.model.layers:
        a = layer.self_attn
        assert (a.num_heads, a.num_kv_heads, a.head_dim) == (2, 1, hd)
        assert a.q_proj.kernel.shape == (64, 2 * hd) and a.k_proj.kernel.shape == (64, hd)
        assert a.o_proj.kernel.shape == (2 * hd, 64) and layer.mlp.down_proj.kernel.shape == (48, 64)
        if name == "qwen2-bias":
            assert a.q_proj.bias.shape == (2 * hd,) and a.k_proj.bias.shape == (hd,)
    if name == "qwen3-qknorm":  # per-head-dim norms are shared by all heads: untouched
        for a0, a1 in zip(m.model.layers, small.model.layers):
            np.testing.assert_array_equal(a1.self_attn.q_norm.weight[...], a0.self_attn.q_norm.weight[...])
    cfg = small.current_config()
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 48)
    save_pretrained(small, tmp_path / "small")
    saved = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["intermediate_size"]) == (2, 1, 48)
    ref = _hf_logits(tmp_path / "small", ids)
    assert np.abs(ref - ours).max() <= 1e-4 * np.abs(ref).max()


def test_llama_family_sparsegpt_export_and_group_masks(hf_models, tmp_path):
    from jaxeff.models import save_pretrained

    models, ids = hf_models
    m = models["qwen2-bias"]
    pruned, masks, summary = prune_model(m, {r".*self_attn.*": (2, 4), r".*mlp.*": 0.5, "lm_head": None},
                                         example_inputs=(ids,))
    assert len(summary) == 14 and summary.sparsity == pytest.approx(0.5)
    w = np.asarray(pruned.model.layers[1].self_attn.k_proj.kernel[...])
    assert np.all((w.reshape(16, 4, -1) != 0).sum(1) <= 2)  # 2:4 along the input axis
    save_pretrained(pruned, tmp_path / "sparse")
    ours = np.asarray(pruned(ids))
    ref = _hf_logits(tmp_path / "sparse", ids)
    assert np.abs(ref - ours).max() <= 1e-4 * np.abs(ref).max()
    # structured masks for fine-tuning a GQA block: whole KV group 0 (k/v head 0, q heads 0-1, bias too)
    gm = group_masks(m, {"model.layers.0.self_attn": [1]})
    a = gm["model"]["layers"][0]["self_attn"]
    hd = 16
    assert not np.any(np.asarray(a["k_proj"]["kernel"])[:, :hd]) and np.all(np.asarray(a["k_proj"]["kernel"])[:, hd:])
    assert not np.any(np.asarray(a["q_proj"]["bias"])[: 2 * hd]) and np.all(np.asarray(a["q_proj"]["bias"])[2 * hd:])
    assert not np.any(np.asarray(a["o_proj"]["kernel"])[: 2 * hd]) and a["o_proj"].get("bias") is None
    assert gm["model"]["layers"][1]["self_attn"]["q_proj"]["kernel"] is None


def test_llama_family_sharded_prune_and_shrink_keep_placement():
    from jax.sharding import AxisType

    from jaxeff.models import LlamaConfig, random_init, shard_model

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)))
    m = random_init(cfg, 0)
    ref_masked, keep = prune_structured(m, None, 0.5, pattern=(MLP_PATTERN, GQA_ATTENTION_PATTERN),
                                        example_inputs=(ids,), local_search_iters=2)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    shard_model(m, mesh)
    masked, keep2 = prune_structured(m, None, 0.5, pattern=(MLP_PATTERN, GQA_ATTENTION_PATTERN),
                                     example_inputs=(ids,), local_search_iters=2)
    for k in keep:
        np.testing.assert_array_equal(keep[k], keep2[k])
    o = masked.model.layers[0].self_attn.o_proj.kernel[...]
    assert o.sharding.spec == m.model.layers[0].self_attn.o_proj.kernel[...].sharding.spec
    small = shrink(masked, keep2)
    a = small.model.layers[1].self_attn
    assert a.num_kv_heads == 2 and a.k_proj.kernel[...].sharding.spec == P(None, "model")
    assert small.model.layers[1].mlp.down_proj.kernel[...].sharding.spec == P("model", None)
    np.testing.assert_allclose(small(ids), ref_masked(ids), rtol=1e-4, atol=1e-5)

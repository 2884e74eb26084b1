"""The jaxeff Llama family against Hugging Face ``transformers`` (PyTorch, CPU) as the reference.

For each architecture a tiny random model is built from transformers' own config class, saved with
``save_pretrained``, loaded with :func:`jaxeff.models.from_pretrained`, and compared on logits and
greedy generations; then the other way round (jaxeff ``save_pretrained`` -> transformers).
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxeff.models import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    from_pretrained,
    generate,
    rope_inv_freq,
    save_pretrained,
    shard_model,
)
from jaxeff.models.hf import write_safetensors, _Entry  # noqa: E402

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    # name: (transformers config class name, overrides)
    "llama": ("LlamaConfig", {}),
    "llama3-tied-bias": ("LlamaConfig", dict(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0, attention_bias=True,
                                            mlp_bias=True, tie_word_embeddings=True)),
    "mistral-sliding": ("MistralConfig", dict(sliding_window=5)),
    "qwen2-tied": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3-headdim": ("Qwen3Config", dict(head_dim=32)),
}
T_PROMPT, N_NEW = 12, 8


def _hf_model(name):
    cls_name, kw = CASES[name]
    torch.manual_seed(sorted(CASES).index(name))
    cfg = getattr(transformers, cls_name)(**BASE, **kw)
    m = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random norms and biases too, so every parameter matters
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    m.generation_config.eos_token_id = None
    return m


def _hf_logits(m, ids, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.as_tensor(mask)}
        return m(torch.as_tensor(ids), **kw).logits.float().numpy()


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """name -> (dir, hf model, prompt ids, hf logits, hf greedy tokens)."""
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    out = {}
    for name in CASES:
        m = _hf_model(name)
        d = root / name
        m.save_pretrained(d)
        ids = rng.integers(0, BASE["vocab_size"], (2, T_PROMPT))
        with torch.no_grad():
            gen = m.generate(torch.as_tensor(ids), max_new_tokens=N_NEW, do_sample=False,
                             eos_token_id=None, pad_token_id=0).numpy()
        out[name] = (d, m, ids, _hf_logits(m, ids), gen)
    return out


@pytest.fixture(scope="module")
def loaded(ckpts):
    return {name: from_pretrained(v[0]) for name, v in ckpts.items()}


MAX_ERR = {}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, ckpts, loaded):
    d, m, ids, ref, _ = ckpts[name]
    out = np.asarray(loaded[name](jnp.asarray(ids)))
    assert out.dtype == np.float32 and out.shape == ref.shape
    err = _rel(out, ref)
    MAX_ERR[name] = err
    assert err <= 1e-4, (name, err)


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_generation_matches_transformers(name, ckpts, loaded):
    _, _, ids, _, gen = ckpts[name]
    toks = np.asarray(generate(loaded[name], ids, N_NEW))
    np.testing.assert_array_equal(toks, gen)


@pytest.mark.parametrize("name", ["mistral-sliding", "qwen3-headdim"])
def test_left_padded_batch_matches_transformers(name, ckpts, loaded):
    _, m, ids, _, _ = ckpts[name]
    mask = np.ones_like(ids)
    mask[0, :5] = 0  # row 0 is left-padded by 5
    ids = ids.copy()
    ids[0, :5] = 0
    with torch.no_grad():
        gen = m.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=N_NEW,
                         do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    toks = np.asarray(generate(loaded[name], ids, N_NEW, attention_mask=mask))
    np.testing.assert_array_equal(toks, gen)
    # plain forward with a padding mask: HF uses slot positions (no position_ids); compare real tokens
    ref = _hf_logits(m, ids, mask)
    out = np.asarray(loaded[name](jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert _rel(out[mask.astype(bool)], ref[mask.astype(bool)]) <= 1e-4


def test_cache_prefill_and_decode_equal_full_forward(ckpts, loaded):
    _, _, ids, ref, _ = ckpts["mistral-sliding"]
    model = loaded["mistral-sliding"]
    cache = model.init_cache(2, T_PROMPT + 2)
    lp, cache = model(jnp.asarray(ids[:, :7]), cache=cache)
    outs = [np.asarray(lp)]
    for t in range(7, T_PROMPT):
        lt, cache = model(jnp.asarray(ids[:, t:t + 1]), cache=cache)
        outs.append(np.asarray(lt))
    assert int(cache.index) == T_PROMPT
    assert _rel(np.concatenate(outs, 1), ref) <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_save_then_transformers_load(name, ckpts, loaded, tmp_path):
    d, _, ids, ref, _ = ckpts[name]
    out_dir = save_pretrained(loaded[name], tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert type(hf).__name__ == json.loads((d / "config.json").read_text())["architectures"][0]
    assert _rel(_hf_logits(hf, ids), ref) <= 1e-5
    # and back into jaxeff: identical parameters
    again = from_pretrained(out_dir)
    a = jax.tree.leaves(nnx.state(again, nnx.Param))
    b = jax.tree.leaves(nnx.state(loaded[name], nnx.Param))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_sharded_checkpoint_with_index_and_tokenizer_copy(ckpts, loaded, tmp_path):
    d, _, ids, ref, _ = ckpts["llama"]
    src = tmp_path / "src"
    shutil.copytree(d, src)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    model = from_pretrained(src)
    out = save_pretrained(model, tmp_path / "sharded", max_shard_size="60KB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").exists()
    assert not (out / "model.safetensors").exists()
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(idx["weight_map"].values()) == set(shards)
    assert _rel(np.asarray(from_pretrained(out)(jnp.asarray(ids))), ref) <= 1e-4
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert _rel(_hf_logits(hf, ids), ref) <= 1e-5


def test_bf16_load_and_save(ckpts, tmp_path):
    d, _, ids, ref, _ = ckpts["qwen3-headdim"]
    m16 = from_pretrained(d, dtype=jnp.bfloat16)
    assert m16.model.layers[0].self_attn.q_proj.kernel.dtype == jnp.bfloat16
    out = np.asarray(m16(jnp.asarray(ids)))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert _rel(out, ref) < 0.05
    toks = np.asarray(generate(m16, ids, 4))
    assert toks.shape == (2, T_PROMPT + 4)
    save_pretrained(m16, tmp_path / "bf16")
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16).eval()
    assert next(hf.parameters()).dtype == torch.bfloat16
    # fp32 checkpoint written from the bf16 model on request
    save_pretrained(m16, tmp_path / "f32", dtype=jnp.float32)
    back = from_pretrained(tmp_path / "f32")
    np.testing.assert_array_equal(np.asarray(back.model.norm.weight[...]),
                                  np.asarray(m16.model.norm.weight[...]).astype(np.float32))


@pytest.mark.parametrize("name", ["llama", "llama3-tied-bias"])
def test_rope_inv_freq_equals_transformers_buffer(name, ckpts, loaded):
    _, m, *_ = ckpts[name]
    ref = m.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(rope_inv_freq(loaded[name].config), ref, rtol=1e-6)


def test_linear_rope_and_transformers4_config_spelling():
    d = {"model_type": "llama", **BASE, "rope_theta": 1000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}
    cfg = LlamaConfig.from_hf(d)
    hf = transformers.LlamaConfig(**BASE, rope_theta=1000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
    emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf)
    np.testing.assert_allclose(rope_inv_freq(cfg), emb.inv_freq.numpy(), rtol=1e-6)
    back = LlamaConfig.from_hf(cfg.to_hf())
    assert back.rope_scaling == cfg.rope_scaling and back.rope_theta == 1000.0


def test_hidden_states_and_head_kernel_give_the_logits(ckpts, loaded):
    for name in ("llama", "qwen2-tied"):
        _, _, ids, ref, _ = ckpts[name]
        model = loaded[name]
        h = model.hidden_states(jnp.asarray(ids))
        assert h.shape == (2, T_PROMPT, BASE["hidden_size"])
        assert model.lm_head_kernel().shape == (BASE["hidden_size"], BASE["vocab_size"])
        assert _rel(np.asarray(h @ model.lm_head_kernel()), ref) <= 1e-4
    assert loaded["qwen2-tied"].lm_head is None


def test_modules_are_nnx_linear_with_hf_paths(loaded):
    model = loaded["qwen2-tied"]
    attn = model.model.layers[1].self_attn
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert type(getattr(attn, n)) is nnx.Linear
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None  # qwen2: q/k/v bias, o without
    for n in ("gate_proj", "up_proj", "down_proj"):
        assert type(getattr(model.model.layers[0].mlp, n)) is nnx.Linear
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (4, 2, 16)
    assert loaded["qwen3-headdim"].model.layers[0].self_attn.q_norm.weight.shape == (32,)


def test_dropping_a_kv_group_saves_a_valid_smaller_config(ckpts, loaded, tmp_path):
    """Remove KV group 1 (and its query heads) by hand: the saved config has the new head counts
    and transformers reproduces the shrunk model's logits."""
    _, _, ids, _, _ = ckpts["llama"]
    model = from_pretrained(ckpts["llama"][0])
    D = 16
    for layer in model.model.layers:
        a = layer.self_attn
        a.q_proj.kernel.set_value(a.q_proj.kernel[...][:, : 2 * D])
        for p in (a.k_proj, a.v_proj):
            p.kernel.set_value(p.kernel[...][:, :D])
        a.o_proj.kernel.set_value(a.o_proj.kernel[...][: 2 * D])
        a.num_heads, a.num_kv_heads = 2, 1
    ours = np.asarray(model(jnp.asarray(ids)))
    save_pretrained(model, tmp_path / "small")
    cfg = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (2, 1, 16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert _rel(_hf_logits(hf, ids), ours) <= 1e-5


# ------------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("axis_type,shape", [("explicit", (4, 2)), ("auto", (4, 2)), ("explicit", (2, 4))])
def test_sharded_logits_equal_single_device(axis_type, shape, ckpts, loaded):
    d, _, ids, ref, _ = ckpts["qwen2-tied"]
    at = jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(at, at))
    model = from_pretrained(d)
    single = np.asarray(model(jnp.asarray(ids)))
    shard_model(model, mesh)
    q = model.model.layers[0].self_attn.q_proj.kernel[...]
    # 2 KV groups split over 2 devices; over 4 devices attention stays replicated (groups are never split)
    assert q.sharding.spec == (P(None, "model") if shape[1] == 2 else P())
    assert model.model.layers[0].mlp.down_proj.kernel[...].sharding.spec == P("model", None)
    assert model.model.embed_tokens.embedding[...].sharding.spec == P("model", None)
    x = jax.device_put(jnp.asarray(np.concatenate([ids, ids[::-1]]), jnp.int32),
                       jax.NamedSharding(mesh, P("data", None)))  # batch 4 over the data axis
    with jax.set_mesh(mesh):
        out = jax.jit(lambda m, x: m(x))(model, x) if axis_type == "auto" else nnx.jit(lambda m, x: m(x))(model, x)
    out = np.asarray(out)
    np.testing.assert_allclose(out[:2], single, atol=1e-5 * np.abs(single).max())
    np.testing.assert_allclose(out[:2], ref, atol=1e-4 * np.abs(ref).max())


def test_from_pretrained_places_shards_directly(ckpts):
    d, _, ids, ref, _ = ckpts["llama"]
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = from_pretrained(d, mesh=mesh)
    assert model.model.layers[1].mlp.up_proj.kernel[...].sharding.spec == P(None, "model")
    assert model.lm_head.kernel[...].sharding.spec == P(None, "model")
    assert model.model.norm.weight[...].sharding.spec == P()
    with jax.set_mesh(mesh):
        out = np.asarray(model(jnp.asarray(np.tile(ids, (2, 1)))))
    assert _rel(out[:2], ref) <= 1e-4


def test_shard_model_from_topology_config_without_model_axis(loaded):
    from jaxeff._core.config import load_config

    cfg = load_config("cpu-8")  # one 'data' axis, no model axis: everything replicated
    model = LlamaForCausalLM(loaded["llama"].config, rngs=nnx.Rngs(0))
    shard_model(model, cfg)
    k = model.model.layers[0].self_attn.q_proj.kernel[...]
    assert len(k.sharding.device_set) == 8 and k.sharding.spec == P()


# ------------------------------------------------------------------------------------ errors
def _rewrite(src_dir, dst_dir, edit):
    """Copy a checkpoint, passing its tensors {name: array} through ``edit``."""
    from safetensors.numpy import load_file

    shutil.copytree(src_dir, dst_dir)
    t = edit(load_file(str(src_dir / "model.safetensors")))
    write_safetensors(dst_dir / "model.safetensors",
                      [_Entry(k, v.shape, v.dtype, lambda v=v: v) for k, v in t.items()], {"format": "pt"})
    return dst_dir


def test_error_missing_tensor(ckpts, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    d = _rewrite(ckpts["llama"][0], tmp_path / "c", lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ValueError, match=r"model\.safetensors.*'model\.layers\.1\.mlp\.up_proj\.weight'.*missing"):
        from_pretrained(d)


def test_error_wrong_shape(ckpts, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    d = _rewrite(ckpts["llama"][0], tmp_path / "c", lambda t: {**t, name: t[name][:16]})
    with pytest.raises(ValueError, match=r"model\.safetensors.*k_proj\.weight.*shape \(16, 64\), expected \(32, 64\)"):
        from_pretrained(d)


def test_error_unexpected_tensor_and_ignored_rotary_buffer(ckpts, tmp_path):
    d = _rewrite(ckpts["llama"][0], tmp_path / "c",
                 lambda t: {**t, "model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"model\.safetensors.*unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight'"):
        from_pretrained(d)
    ok = _rewrite(ckpts["llama"][0], tmp_path / "ok",
                  lambda t: {**t, "model.rotary_emb.inv_freq": np.zeros((8,), np.float32)})
    from_pretrained(ok)


@pytest.mark.parametrize("key,value,match", [
    ("model_type", "gpt2", r"config\.json.*'model_type'.*unknown architecture 'gpt2'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
     r"config\.json.*rope_type.*'yarn' is not supported"),
    ("hidden_act", "gelu", r"config\.json.*'hidden_act'.*'gelu'"),
    ("attn_logit_softcapping", 50.0, r"config\.json.*'attn_logit_softcapping'"),
    ("partial_rotary_factor", 0.5, r"config\.json.*'partial_rotary_factor'"),
])
def test_error_unsupported_config(ckpts, tmp_path, key, value, match):
    d = tmp_path / "c"
    shutil.copytree(ckpts["llama"][0], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        from_pretrained(d)


def test_error_no_safetensors_or_not_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **BASE}))
    with pytest.raises(ValueError, match="no 'model.safetensors'"):
        from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        from_pretrained(tmp_path / "nope")


def test_report_max_errors():
    """Prints the per-architecture logit error (runs after the comparisons)."""
    for k, v in MAX_ERR.items():
        print(f"max relative logit error vs transformers [{k}]: {v:.2e}")


def test_error_corrupt_or_truncated_safetensors(ckpts, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpts["llama"][0], d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*' is truncated"):
        from_pretrained(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        from_pretrained(d)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_sharded_generation_equals_single_device(axis_type, ckpts, loaded):
    d, _, ids, _, gen = ckpts["qwen2-tied"]
    at = jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(at, at))
    model = shard_model(from_pretrained(d), mesh)
    x = jax.device_put(jnp.asarray(np.concatenate([ids, ids]), jnp.int32), jax.NamedSharding(mesh, P("data", None)))
    with jax.set_mesh(mesh):
        toks = np.asarray(generate(model, x, N_NEW))
    np.testing.assert_array_equal(toks, np.concatenate([gen, gen]))


def test_eos_stops_rows_like_transformers(ckpts, loaded):
    _, m, ids, _, gen = ckpts["llama"]
    eos = int(gen[0, T_PROMPT + 2])  # a token row 0 emits as its 3rd new token
    with torch.no_grad():
        ref = m.generate(torch.as_tensor(ids), max_new_tokens=N_NEW, do_sample=False, eos_token_id=eos,
                         pad_token_id=7).numpy()
    toks = np.asarray(generate(loaded["llama"], ids, N_NEW, eos_token_id=eos, pad_token_id=7))
    # transformers stops once every row is done; jaxeff keeps the fixed length, padded
    np.testing.assert_array_equal(toks[:, : ref.shape[1]], ref)
    assert (toks[0, T_PROMPT + 3:] == 7).all()


def test_sampling_is_reproducible_and_uses_the_key(loaded):
    model = loaded["llama"]
    ids = np.zeros((2, 3), np.int32)
    a = generate(model, ids, 6, temperature=1.0, key=jax.random.key(1))
    b = generate(model, ids, 6, temperature=1.0, key=jax.random.key(1))
    c = generate(model, ids, 6, temperature=1.0, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="key"):
        generate(model, ids, 2, temperature=1.0)


def test_fused_distillation_from_family_hidden_states_and_heads(ckpts, loaded):
    """Teacher (qwen3, head_dim 32) and student (llama) of different widths share the vocabulary:
    the fused loss on (hidden states, head kernels) equals the loss on materialized logits."""
    from jaxeff.distill import fused_linear_distill_loss, generalized_jsd

    _, _, ids, _, _ = ckpts["llama"]
    student, teacher = loaded["llama"], loaded["qwen3-headdim"]
    x = jnp.asarray(ids)
    fused = fused_linear_distill_loss(student.hidden_states(x), student.lm_head_kernel(),
                                      teacher.hidden_states(x), teacher.lm_head_kernel(), chunk_size=7)
    full = generalized_jsd(student(x), teacher(x))
    np.testing.assert_allclose(float(fused), float(full), rtol=1e-5)


def test_bf16_compute_with_fp32_params(ckpts):
    d, _, ids, ref, _ = ckpts["llama"]
    model = from_pretrained(d, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert model.model.layers[0].mlp.up_proj.kernel.dtype == jnp.float32
    assert model.hidden_states(jnp.asarray(ids)).dtype == jnp.bfloat16
    assert _rel(np.asarray(model(jnp.asarray(ids))), ref) < 0.05


def test_config_validation_errors():
    with pytest.raises(ValueError, match="'num_attention_heads' \\(4\\) must be a multiple of 'num_key_value_heads' \\(3\\)"):
        LlamaConfig(**{**BASE, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="config key 'vocab_size' is missing"):
        LlamaConfig.from_hf({"model_type": "llama", **{k: v for k, v in BASE.items() if k != "vocab_size"}})
    with pytest.raises(ValueError, match="'rope_scaling.low_freq_factor' is required"):
        LlamaConfig.from_hf({"model_type": "llama", **BASE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ValueError, match="'architectures'"):
        LlamaConfig.from_hf({"model_type": "llama", **BASE, "architectures": ["LlamaForSequenceClassification"]})
    with pytest.raises(ValueError, match="'quantization_config'"):
        LlamaConfig.from_hf({"model_type": "llama", **BASE, "quantization_config": {"quant_method": "gptq"}})
    cfg = LlamaConfig.from_hf({"model_type": "llama", **BASE, "my_feature": 3}, strict=False)
    assert json.loads(cfg.extra)["my_feature"] == 3 and cfg.to_hf()["my_feature"] == 3

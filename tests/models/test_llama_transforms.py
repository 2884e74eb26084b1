"""The newcomer path on a Hugging Face checkpoint: load -> OSSCAR (SwiGLU neurons + GQA KV groups)
and shrink -> GPTQ int4 -> save -> transformers loads it and computes jaxeff's logits."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from jaxeff._core.layers import capture_inputs  # noqa: E402
from jaxeff.models import from_pretrained, generate, save_pretrained  # noqa: E402
from jaxeff.prune import GQA_ATTENTION_PATTERN, MLP_PATTERN, prune_structured, shrink  # noqa: E402
from jaxeff.quant import QuantRule, quantize_model  # noqa: E402

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(5)
    m = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(**BASE, head_dim=16)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    d = tmp_path_factory.mktemp("t") / "qwen3"
    m.save_pretrained(d)
    return d


def _hf_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(torch.as_tensor(ids)).logits.float().numpy()


def test_osscar_shrink_gptq_save_load_in_transformers(ckpt, tmp_path):
    calib = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16)))
    ids = np.random.default_rng(1).integers(0, 256, (2, 10))
    model = from_pretrained(ckpt)
    # OSSCAR: half the SwiGLU neurons and half the KV groups (with their query heads) of each layer
    pruned, keep = prune_structured(model, capture_inputs(model, calib), 0.5,
                                    pattern=[MLP_PATTERN, GQA_ATTENTION_PATTERN])
    small = shrink(pruned, keep)
    attn = small.model.layers[0].self_attn
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (2, 1, 16)
    assert small.model.layers[1].mlp.gate_proj.kernel.shape == (64, 64)
    np.testing.assert_allclose(np.asarray(small(jnp.asarray(ids))), np.asarray(pruned(jnp.asarray(ids))),
                               atol=1e-5 * float(np.abs(np.asarray(pruned(jnp.asarray(ids)))).max()))
    # the shrunk float model is a valid smaller checkpoint
    save_pretrained(small, tmp_path / "small")
    cfg = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 1, 64)
    ours = np.asarray(small(jnp.asarray(ids)))
    assert _rel(_hf_logits(tmp_path / "small", ids), ours) <= 1e-5
    # GPTQ int4 (group 32) on the shrunk model, exported as compressed-tensors
    q = quantize_model(small, [QuantRule(pattern="lm_head", weight_fmt=None),
                               QuantRule(weight_fmt="int4", group_size=32, method="gptq", targets=("linear",))],
                       example_inputs=(calib,))
    q = q[0] if isinstance(q, tuple) else q
    save_pretrained(q, tmp_path / "small-gptq")
    qcfg = json.loads((tmp_path / "small-gptq" / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized" and qcfg["ignore"] == ["lm_head"]
    qours = np.asarray(q(jnp.asarray(ids)))
    assert _rel(_hf_logits(tmp_path / "small-gptq", ids), qours) <= 1e-4
    assert generate(q, ids, 3).shape == (2, 13)

"""quantize_model on model code nobody here wrote: google-tunix's Llama3 NNX model.

Its attention projections and lm-head are tunix's own ``Einsum`` module (``einsum_str`` +
``w``), its MLP is ``nnx.Linear``; every projection must be quantized, run a real quantized
matmul, and give logits close to the float model. The int8 codes are compared with qwix's
PTQ (Google's JAX quantization library) on the same weights.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff._core.layers import capture_inputs
from jaxeff.quant import QuantizedLinear, QuantizedTensor, QuantRule, gptq, load_quantized, quantize_model, save_quantized

lm = pytest.importorskip("tunix.models.llama3.model")

PROJ = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _model(num_layers=2, seed=0):
    cfg = lm.ModelConfig(num_layers=num_layers, vocab_size=128, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                         num_kv_heads=2, rope_theta=10000, norm_eps=1e-5)
    m = lm.Llama3(cfg, rngs=nnx.Rngs(seed))
    # tunix initializes the MLP kernels to zero: give every matrix random weights
    graphdef, state = nnx.split(m)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [0.2 * jax.random.normal(k, l.shape, l.dtype) if l.ndim >= 2 else l for l, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _inputs(B=2, L=8, seed=0):
    toks = jax.random.randint(jax.random.key(seed), (B, L), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.tril(jnp.ones((L, L), bool))[None].repeat(B, 0)
    return toks, pos, None, mask


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module")
def llama():
    return _model(), _inputs()


def test_every_projection_quantized_w8a8_runs_int_matmuls(llama):
    m, args = llama
    y, _ = m(*args)
    qm, summary = quantize_model(m, QuantRule(weight_fmt="int8", act_fmt="int8"), return_summary=True)
    want = {f"layers.{i}.{p}" for i in range(2) for p in PROJ} | {"lm_head"}
    assert set(summary.paths) == want
    assert all(r.execution == "int8 x int8 -> int32" for r in summary)
    for i in range(2):
        for p in PROJ:
            a, b = p.split(".")
            assert isinstance(getattr(getattr(qm.layers[i], a), b), QuantizedLinear)
    # tunix code reads the layers' attributes (Attention.head_dim is o_proj.shape[1])
    assert qm.layers[0].attn.head_dim == 8 and qm.layers[0].attn.q_proj.einsum_str == "BTD,DNH->BTNH"
    yq, _ = nnx.jit(lambda mm, *a: mm(*a))(qm, *args)
    assert yq.shape == y.shape and _rel(yq, y) < 0.05
    jaxpr = str(jax.make_jaxpr(lambda *a: qm(*a)[0])(*args))
    assert jaxpr.count("preferred_element_type=int32") >= 15
    # the input model is untouched
    assert type(m.layers[0].attn.q_proj).__name__ == "Einsum"


def test_gptq_int4_via_captured_inputs_matches_gptq_by_hand_and_beats_rtn(llama):
    m, args = llama
    y, _ = m(*args)
    rules = [QuantRule(pattern="embedder.input_embedding", weight_fmt="int8", targets="param"),
             QuantRule(weight_fmt="int4", group_size=8, method="gptq")]
    qm = quantize_model(m, rules, example_inputs=args)
    assert isinstance(qm.embedder.input_embedding, QuantizedTensor)
    cap = capture_inputs(m, *args)
    for path, mod in (("layers.1.attn.o_proj", qm.layers[1].attn.o_proj), ("layers.0.attn.k_proj",
                                                                            qm.layers[0].attn.k_proj)):
        w = (m.layers[1].attn.o_proj if "o_proj" in path else m.layers[0].attn.k_proj).w[...]
        ref = gptq(mod.site.matrix(w), x=cap[path], fmt="int4", group_size=8)
        np.testing.assert_array_equal(np.asarray(mod.qvalue[...]), np.asarray(ref.qvalue))
    e_gptq = _rel(qm(*args)[0], y)
    e_rtn = _rel(quantize_model(m, QuantRule(weight_fmt="int4", group_size=8))(*args)[0], y)
    assert e_gptq < e_rtn < 0.5


def test_save_load_round_trip(llama, tmp_path):
    m, args = llama
    qm = quantize_model(m, [QuantRule(pattern=r".*attn.*", weight_fmt="int4", group_size=8),
                            QuantRule(weight_fmt="e4m3", act_fmt="e4m3")])
    f = tmp_path / "llama.safetensors"
    save_quantized(f, qm)
    back = load_quantized(f, _model(seed=3))
    np.testing.assert_array_equal(np.asarray(back(*args)[0]), np.asarray(qm(*args)[0]))


def _qwix_weight(model, path):
    mod = model
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return (mod.w if hasattr(mod, "w") else mod.kernel).array


@pytest.mark.parametrize("fmt,qtype", [("e4m3", "float8_e4m3fn"), ("int8", "int8")])
def test_codes_equal_qwix_ptq(llama, fmt, qtype):
    """Per-channel symmetric RTN of every projection vs qwix's PTQ (Google's JAX quantization
    library) on the same weights: identical fp8 codes and scales; for int8 qwix maps absmax to
    127.5 (it widens the integer bound by half a step), jaxeff to 127, so scales differ by exactly
    that ratio and codes by at most one step."""
    qwix = pytest.importorskip("qwix")
    m, args = llama
    ours, summary = quantize_model(m, QuantRule(weight_fmt=fmt), return_summary=True)
    theirs = qwix.quantize_model(m, qwix.PtqProvider([qwix.QuantizationRule(module_path=".*", weight_qtype=qtype)]),
                                 *args)
    assert len(summary) == 15
    for path in summary.paths:
        q = ours
        for part in path.split("."):
            q = q[int(part)] if part.isdigit() else getattr(q, part)
        t = _qwix_weight(theirs, path)
        codes = np.asarray(q.site.unmatrix(q.qarray.codes())).astype(np.float32)
        tq = np.asarray(t.qvalue[...]).astype(np.float32)
        ts = np.asarray(t.scale[...]).reshape(-1)
        if fmt == "e4m3":
            np.testing.assert_array_equal(codes, tq)
            np.testing.assert_array_equal(np.asarray(q.scale[...]).reshape(-1), ts)
        else:
            np.testing.assert_allclose(np.asarray(q.scale[...]).reshape(-1), ts * 127.5 / 127, rtol=1e-6)
            assert np.abs(codes - tq).max() <= 1

# %% [markdown]
# # Real models in, real checkpoints out
#
# jaxeff's model-level tools work on the models people use: the Llama family as Hugging Face
# defines it (Llama 2/3, Mistral, Qwen2, Qwen3) loaded from a local checkpoint directory, the
# NNX models of JAX libraries (e.g. google-tunix's Llama3/Qwen3 with their own `Einsum`
# layers), Linen `Dense`/`DenseGeneral`/`Einsum` and plain parameter trees. This notebook walks
# the path a user takes with a checkpoint:
#
# 1. load a Hugging Face directory (`config.json` + safetensors) with `from_pretrained`;
# 2. inspect it: the weight sites every transform acts on;
# 3. quantize it by rules (GPTQ int4 with calibration capture) and print what changed;
# 4. prune it structurally with OSSCAR (SwiGLU neurons and whole GQA KV groups) and `shrink`;
# 5. save both with `save_pretrained` (float HF layout, or compressed-tensors for the quantized
#    one) and load them back (in `transformers` too, when it is installed).
#
# No network is used: the "checkpoint" is a small Llama-family model trained here for a few
# steps on the Python standard library's own sources (byte tokens). Point `CHECKPOINT` at a
# real local directory to run the same cells on your own model.

# %%
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxeff._core.layers import capture_inputs, find_weight_sites
from jaxeff.models import (LlamaConfig, LlamaForCausalLM, evaluate_lm, from_pretrained, generate, load_text_corpus,
                           param_count, save_pretrained, train_lm)
from jaxeff.prune import GQA_ATTENTION_PATTERN, MLP_PATTERN, prune_structured, shrink
from jaxeff.quant import QuantRule, quant_weight_bytes, quantize_model

STEPS = {"test": 20, "small": 600, "full": 3000}[SIZE]
SEQ = {"test": 32, "small": 128, "full": 256}[SIZE]
EVAL_BATCHES = {"test": 1, "small": 8, "full": 32}[SIZE]
WORK = Path(tempfile.mkdtemp(prefix="jaxeff-real-models-"))
CHECKPOINT = os.environ.get("JAXEFF_CHECKPOINT")  # a local HF directory of a supported architecture

# %% [markdown]
# ## 1. A checkpoint directory
# Without `JAXEFF_CHECKPOINT`, we make one: a Qwen3-style config (GQA with 2 KV heads for 4
# query heads, q/k RMSNorm, tied embeddings) trained briefly on byte tokens and written with
# `save_pretrained`, the same files `transformers` writes.

# %%
train, val = load_text_corpus({"test": 200_000, "small": 2_000_000, "full": 8_000_000}[SIZE])
if CHECKPOINT is None:
    cfg = LlamaConfig(model_type="qwen3", vocab_size=256, hidden_size=128, intermediate_size=384,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      tie_word_embeddings=True, max_position_embeddings=1024)
    base = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    t0 = time.time()
    losses = train_lm(base, train, steps=STEPS, batch_size=16, seq_len=SEQ, lr=3e-3, key=jax.random.key(0))
    print(f"trained {STEPS} steps in {time.time() - t0:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    CHECKPOINT = WORK / "base"
    save_pretrained(base, CHECKPOINT)
print(sorted(p.name for p in Path(CHECKPOINT).iterdir()))

# %% [markdown]
# ## 2. Load and inspect
# `from_pretrained` reads the safetensors tensor by tensor (peak host memory stays near one copy
# of the weights). `find_weight_sites` lists every weight a transform can act on, with the
# axes the layer contracts: the same description covers `nnx.Linear` here and the `Einsum`
# layers of other libraries' models.

# %%
model = from_pretrained(CHECKPOINT)
print(model.config.model_type, f"{param_count(model):,} parameters")
sites = find_weight_sites(model)
for path, s in list(sites.items())[:8]:
    print(f"{path:32s} {s.kind:12s} shape={s.shape} contract={s.contract} out={s.out}")
float_eval = evaluate_lm(model, val, seq_len=SEQ, num_batches=EVAL_BATCHES)
print("float:", {k: round(v, 4) for k, v in float_eval.items()})

# %% [markdown]
# ## 3. Quantize with a recipe
# Rules are matched on module paths, first match wins. Here: keep the (tied) embedding in
# float, GPTQ int4 with groups of 32 on every projection, calibrated on captured inputs of a few
# training windows. `return_summary=True` gives a printable table of what changed; a rule that
# matches nothing raises instead of silently doing nothing.

# %%
rng = np.random.default_rng(0)
starts = rng.integers(0, len(train) - SEQ, 8)
calib = jnp.asarray(np.stack([train[s:s + SEQ] for s in starts]).astype(np.int32))
rules = [QuantRule(pattern="lm_head", weight_fmt=None),
         QuantRule(pattern=r"model\.layers\..*", weight_fmt="int4", group_size=32, method="gptq",
                   targets=("linear",))]
qmodel, summary = quantize_model(model, rules, example_inputs=(calib,), return_summary=True)
print(summary)
q_eval = evaluate_lm(qmodel, val, seq_len=SEQ, num_batches=EVAL_BATCHES)
print(f"GPTQ int4: ppl {q_eval['ppl']:.3f} vs float {float_eval['ppl']:.3f}; "
      f"weight bytes {quant_weight_bytes(qmodel):,} vs {quant_weight_bytes(model):,}")

# %% [markdown]
# ## 4. Prune structurally with OSSCAR, then shrink
# OSSCAR picks, per layer, which SwiGLU neurons (gate and up rows with their down columns) and
# which whole KV groups (a KV head with its query heads, so grouped-query attention stays
# valid) to keep, refitting the consumer weights on captured inputs. `shrink` then removes the
# dropped units physically: the result is a smaller model with a valid config.

# %%
pruned, keep = prune_structured(model, capture_inputs(model, calib), 0.5, pattern=[MLP_PATTERN, GQA_ATTENTION_PATTERN])
small = shrink(pruned, keep)
attn = small.model.layers[0].self_attn
print(f"heads {attn.num_heads}, kv heads {attn.num_kv_heads}, "
      f"intermediate {small.model.layers[0].mlp.gate_proj.kernel.shape[1]}; "
      f"{param_count(small):,} parameters (was {param_count(model):,})")
ids = calib[:2, :16]
print("shrunk == masked:", bool(jnp.allclose(small(ids), pruned(ids), atol=1e-4)))
p_eval = evaluate_lm(small, val, seq_len=SEQ, num_batches=EVAL_BATCHES)
print(f"OSSCAR 50%: ppl {p_eval['ppl']:.3f} vs float {float_eval['ppl']:.3f}")

# %% [markdown]
# ## 5. Save, reload, and hand over to other servers
# The shrunk model saves as a plain (smaller) Hugging Face checkpoint; the quantized one in the
# **compressed-tensors** layout (`quantization_config.quant_method = "compressed-tensors"`,
# int4 packed with group scales) that `transformers` and vLLM read.

# %%
save_pretrained(small, WORK / "small")
save_pretrained(qmodel, WORK / "gptq-int4")
print(json.loads((WORK / "small" / "config.json").read_text())["intermediate_size"],
      json.loads((WORK / "gptq-int4" / "config.json").read_text())["quantization_config"]["format"])
again = from_pretrained(WORK / "small")
print("reload == shrunk:", bool(jnp.allclose(again(ids), small(ids), atol=1e-5)))
print("greedy continuation:", np.asarray(generate(small, ids[:1], 8))[0, -8:])

try:
    import torch
    import transformers
except ImportError:
    transformers = None
if transformers is not None:
    for name, ours in [("small", small), ("gptq-int4", qmodel)]:
        try:
            hf = transformers.AutoModelForCausalLM.from_pretrained(WORK / name).eval()
        except Exception as e:  # compressed-tensors not installed, for instance
            print(f"transformers could not load {name}: {e}")
            continue
        with torch.no_grad():
            ref = hf(torch.as_tensor(np.asarray(ids))).logits.float().numpy()
        err = float(np.abs(ref - np.asarray(ours(ids))).max() / np.abs(ref).max())
        print(f"transformers loads {name}: max relative logit difference {err:.2e}")

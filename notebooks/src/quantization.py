# %% [markdown]
# # Quantizing a small language model with `jaxeff.quant`
#
# **Paper claim** ("Efficient AI in Practice", arXiv:2502.14305, and QuantEase, arXiv:2309.01885):
# 8-bit weights (INT8 or FP8) are essentially free in quality and cut weight memory ~4x, while
# 4-bit weight-only quantization (W4A16) needs careful, calibration-based rounding:
# error-correcting methods such as GPTQ and QuantEase keep perplexity close to the float
# model where plain round-to-nearest (RTN) degrades, and QuantEase's coordinate descent
# improves on GPTQ (up to 15% relative perplexity in the paper).
#
# This notebook trains (or loads) the shared byte-level transformer from `jaxeff.models`,
# quantizes it several ways and plots **size vs. validation perplexity**.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jaxeff.quant as jq
from jaxeff.models import capture_linear_inputs, evaluate_lm, lm_loss, pretrained_charlm, sample_batch

MODEL_SIZE = {"test": "test", "small": "small", "full": "full"}[SIZE]
NUM_ITERS = {"test": 4, "small": 15, "full": 30}[SIZE]
EVAL_BATCHES = {"test": 2, "small": 8, "full": 32}[SIZE]
LOW_BITS = ["int4"] if SIZE == "test" else ["int4", "int3"]  # keep the test run short

# %% [markdown]
# ## 1. The building blocks
# `quantize(x, fmt, axis=..., group_size=..., scale_dtype=...)` returns a `QArray` pytree: codes
# (int4 and nf4 packed two per byte), per-channel or per-group scales (float32, or bfloat16 /
# float16 to halve their bytes: they are rounded *up* to that dtype before coding, so the error
# bound holds for the stored scale), and `dequantize()`. `nf4` is QLoRA's NormalFloat4 codebook
# (quantiles of a normal distribution), which suits Gaussian-looking weights better than the
# uniform int4 grid.

# %%
w = jax.random.normal(jax.random.key(0), (256, 64))
for fmt, gs, sd in [("int8", None, "float32"), ("e4m3", None, "float32"), ("int4", 32, "float32"),
                    ("int4", 32, "bfloat16"), ("nf4", 32, "bfloat16"), ("int3", 32, "bfloat16")]:
    q = jq.quantize(w, fmt, axis=0, group_size=gs, scale_dtype=sd)
    err = float(jnp.sqrt(jnp.mean((q.dequantize() - w) ** 2)))
    print(f"{fmt:5s} group={gs} {sd:8s} scales: codes {q.qvalue.dtype}{tuple(q.qvalue.shape)}, "
          f"{q.nbytes / w.nbytes:.4f}x bytes, rms error {err:.4f}")

# %% [markdown]
# ## 2. A trained model and its calibration activations

# %%
t0 = time.time()
model, train, val = pretrained_charlm(MODEL_SIZE)
seq = min(model.cfg.max_len, 128)
ev = dict(seq_len=seq, batch_size=16, num_batches=EVAL_BATCHES)
calib = capture_linear_inputs(model, sample_batch(train, jax.random.key(11), 16, seq)[:, :-1])
base = evaluate_lm(model, val, **ev)
base_bytes = jq.quant_weight_bytes(model)
print(f"model {model.cfg}, {base_bytes / 1e6:.2f} MB fp32, val ppl {base['ppl']:.3f} ({time.time() - t0:.1f}s)")

# %% [markdown]
# ## 3. Quantize it several ways
# Rules select layers by module-path regex; the first rule that matches wins. The whole model is
# quantized: the token embedding and the learned position table (`targets=("embed", "param")`,
# RTN, one scale per row, or per 32 features of a row for 4-bit formats) and every `nnx.Linear`
# including the LM head (group 128 for the 4-bit formats); all scales are stored in bfloat16.
# Only biases and LayerNorms stay fp32 — and they are counted in the bytes.

# %%
gs = min(128, model.cfg.d_model)
tg = min(32, model.cfg.d_model)
tables = lambda fmt, g=None: jq.QuantRule(pattern="embed|pos", weight_fmt=fmt, group_size=g,
                                          scale_dtype="bfloat16", targets=("embed", "param"))
lin = lambda fmt, g=None, **kw: jq.QuantRule(weight_fmt=fmt, group_size=g, scale_dtype="bfloat16", **kw)
GPTQ = dict(method="gptq", method_kwargs={"act_order": True})
QE = dict(method="quantease", method_kwargs={"num_iters": NUM_ITERS, "init": "gptq"})
recipes = {
    "int8 (W8A16)": [tables("int8"), lin("int8")],
    "fp8 e4m3": [tables("e4m3"), lin("e4m3")],
    "W8A8 int8": [tables("int8"), lin("int8", act_fmt="int8")],
    "int4 RTN": [tables("int4", tg), lin("int4", gs)],
    "int4 GPTQ": [tables("int4", tg), lin("int4", gs, **GPTQ)],
    "int4 QuantEase": [tables("int4", tg), lin("int4", gs, **QE)],
    "nf4 RTN": [tables("nf4", tg), lin("nf4", gs)],
}
if "int3" in LOW_BITS:  # int3 codes are stored in 4-bit slots: same bytes as int4, more error
    recipes.update({
        "int3 RTN": [tables("int4", tg), lin("int3", gs)],
        "int3 GPTQ": [tables("int4", tg), lin("int3", gs, **GPTQ)],
        "int3 QuantEase": [tables("int4", tg), lin("int3", gs, **QE)],
    })
rows = [("fp32", 1.0, base["ppl"])]
graphdef, state = nnx.split(model)
bf16 = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))
rows.append(("bf16", jq.quant_weight_bytes(bf16) / base_bytes, evaluate_lm(bf16, val, **ev)["ppl"]))
for name, rules in recipes.items():
    t0 = time.time()
    qm = jq.quantize_model(model, rules, calibration_data=calib)
    ppl = evaluate_lm(qm, val, **ev)["ppl"]
    rows.append((name, jq.quant_weight_bytes(qm) / base_bytes, ppl))
    print(f"{name:15s} {rows[-1][1]:.3f}x bytes  ppl {ppl:.3f} ({100 * (ppl / base['ppl'] - 1):+.2f}%)"
          f"  [{time.time() - t0:.1f}s]")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, b, p in rows:
    ax.scatter(b, p)
    ax.annotate(name, (b, p), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xlabel("whole-model bytes / fp32 bytes")
ax.set_ylabel("validation perplexity")
ax.set_title(f"CharLM ({MODEL_SIZE}): size vs perplexity")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 4. Why the error-correcting methods win: layer reconstruction error
# `||XW - XŴ||²` on the calibration activations of one MLP down-projection.

# %%
lw = model.blocks[0].mlp.down.kernel[...]
lx = calib["blocks.0.mlp.down"]
for fmt in LOW_BITS:
    errs = {
        "RTN": jq.rtn(lw, fmt, group_size=gs),
        "AWQ": jq.awq(lw, lx, fmt, gs),
        "GPTQ": jq.gptq(lw, lx, fmt, gs),
        "GPTQ act-order": jq.gptq(lw, lx, fmt, gs, act_order=True),
        "QuantEase": jq.quantease(lw, lx, fmt, gs, num_iters=NUM_ITERS),
        "QuantEase (GPTQ init)": jq.quantease(lw, lx, fmt, gs, num_iters=NUM_ITERS, init="gptq"),
    }
    r = float(jq.layer_reconstruction_error(lx, lw, errs["RTN"]))
    print(fmt, {k: round(float(jq.layer_reconstruction_error(lx, lw, v)) / r, 3) for k, v in errs.items()},
          "(relative to RTN)")

# %% [markdown]
# ## 5. Quantization-aware training in an NNX + optax loop
# `prepare_qat` swaps the matched layers for `QATLinear` (fake quantization with a
# straight-through estimator); any `nnx.Optimizer` trains it; `quantize_model` then produces
# the real int4 model, which computes exactly what the QAT model simulated.

# %%
rule = jq.QuantRule(pattern=r"blocks\..*", weight_fmt="int3", group_size=gs)
qat = jq.prepare_qat(model, rule)
opt = nnx.Optimizer(qat, optax.adam(3e-4), wrt=nnx.Param)


@nnx.jit
def qat_step(m, opt, toks):
    loss, g = nnx.value_and_grad(lm_loss)(m, toks)
    opt.update(m, g)
    return loss


before = evaluate_lm(jq.quantize_model(qat, rule), val, **ev)["ppl"]
for i in range({"test": 3, "small": 100, "full": 400}[SIZE]):
    qat_step(qat, opt, sample_batch(train, jax.random.key(100 + i), 16, seq))
after = evaluate_lm(jq.quantize_model(qat, rule), val, **ev)["ppl"]
print(f"int3 (blocks only) ppl: RTN {before:.3f} -> after QAT {after:.3f} (fp32 {base['ppl']:.3f})")

# %% [markdown]
# ## 6. Save / load (safetensors)
# `save_quantized` writes a standard safetensors file: packed int4 codes as `U8` tensors, bf16
# scales as `BF16`, fp8 codes as `F8_E4M3`; the format/axis/group/shape of each quantized array
# is JSON in the header metadata. `load_quantized` rebuilds the quantized model on a float
# skeleton, bit for bit.

# %%
import os, tempfile

import safetensors

qm = jq.quantize_model(model, recipes["int4 GPTQ"], calibration_data=calib)
path = os.path.join(tempfile.mkdtemp(), "charlm-int4.safetensors")
jq.save_quantized(path, qm)
qm2 = jq.load_quantized(path, model)
toks = sample_batch(val, jax.random.key(0), 2, seq)[:, :-1]
print(f"file {os.path.getsize(path) / 1e3:.0f} kB ({jq.quant_weight_bytes(qm) / 1e3:.0f} kB of arrays); "
      "reloaded output identical:", bool(jnp.all(qm(toks) == qm2(toks))))
with safetensors.safe_open(path, framework="np") as f:  # any safetensors reader sees plain tensors
    print(sorted(f.keys())[:6], "...", f.metadata()["format"])

# %% [markdown]
# ## 7. Linen models
# A Linen parameter tree is quantized by the same rules (paths are the dotted module names);
# `quantized_apply` runs the module with its `nn.Dense` layers on the quantized kernels.

# %%
import flax.linen as nn


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(16, name="down")(nn.gelu(nn.Dense(256, name="up")(x)))


mlp = LinenMLP()
xl = jax.random.normal(jax.random.key(3), (64, 64))
vl = mlp.init(jax.random.key(4), xl)
qvl = jq.quantize_params(vl, [jq.QuantRule(pattern="up", weight_fmt="int4", group_size=32),
                              jq.QuantRule(pattern="down", weight_fmt="int8", act_fmt="int8")])
yl, yq = mlp.apply(vl, xl), jax.jit(lambda v, x: jq.quantized_apply(mlp, v, x))(qvl, xl)
print("Linen MLP: relative output error", float(jnp.linalg.norm(yq - yl) / jnp.linalg.norm(yl)))

# %% [markdown]
# ## 8. Did the claim hold?
# The cell below checks the claims on the run you just did. What we measured (benchmark suite
# `quant`, "small" teacher: d_model 128, 3 layers, 700 steps, fp32 val ppl 17.63; whole model
# quantized incl. embedding and position table, bf16 scales; bytes = everything, incl. the
# 21 kB of biases/LayerNorms that stay fp32):
#
# * int8 per-channel: 0.259x bytes, ppl +0.005%; fp8 e4m3: +0.19%; W8A8 int8: +0.06% -> **held**
#   (goal <= 0.26x, <= +0.5%).
# * int4, linears group 128, tables group 32: 0.1365x bytes; RTN +0.53%, GPTQ +0.05%,
#   QuantEase (10 sweeps, GPTQ init) +0.14% -> **held** (goal <= 0.14x within +3%, clearly
#   better than RTN); QuantEase did **not** beat GPTQ at the model level here (it does per
#   layer on some layers). int3 (4-bit slots): RTN +6.1%, GPTQ +1.1%, QuantEase +0.96%.
# * What the byte goal needs: with fp32 scales and float tables int4 GPTQ is 0.20x; a 4-bit
#   embedding with one scale per 128-wide row costs +3-4% ppl, groups of 32 fix that.

# %%
d = {n: (b, p) for n, b, p in rows}
pct = lambda n: 100 * (d[n][1] / base["ppl"] - 1)
print(f"int8: {d['int8 (W8A16)'][0]:.3f}x bytes, ppl {pct('int8 (W8A16)'):+.2f}%  "
      f"-> {'held' if pct('int8 (W8A16)') <= 0.5 and d['int8 (W8A16)'][0] <= 0.26 else 'did not hold'}"
      " (goal <= 0.26x, <= +0.5%)")
for b in LOW_BITS:
    best = min(pct(f"{b} GPTQ"), pct(f"{b} QuantEase"))
    print(f"{b}: {d[f'{b} GPTQ'][0]:.4f}x bytes; RTN {pct(f'{b} RTN'):+.2f}%, GPTQ {pct(f'{b} GPTQ'):+.2f}%, "
          f"QuantEase {pct(f'{b} QuantEase'):+.2f}% -> error-correction "
          f"{'beats' if best < pct(f'{b} RTN') else 'does not beat'} RTN; QuantEase "
          f"{'beats' if pct(f'{b} QuantEase') < pct(f'{b} GPTQ') else 'does not beat'} GPTQ; "
          f"int4 goal (<= 0.14x, <= +3%) {'held' if d[f'{b} GPTQ'][0] <= 0.14 and best <= 3 else 'not met'}"
          f"{' (the test-size model is too narrow for 0.14x)' if MODEL_SIZE == 'test' else ''}")

# %% [markdown]
# # Knowledge distillation beats supervised fine-tuning (jaxeff.distill)
#
# **Paper claim** ("Efficient AI in Practice", arXiv:2502.14305, and Hinton et al.,
# arXiv:1503.02531): a student trained to match a teacher's next-token distribution (KD) ends
# up better than the same student trained on the hard labels alone (SFT).
#
# **Set-up here.** A byte-level Flax NNX transformer teacher (`jaxeff.models.pretrained_charlm`)
# trained on the Python standard library's own source files (available offline), and students
# of one smaller, equal size trained for the same number of steps from the same initialization:
#
# * **SFT**: next-byte cross-entropy on the data;
# * **KD (FKL / RKL / JSD)**: `jaxeff.distill.fused_linear_distill_loss` on the student's and
#   teacher's final hidden states and lm-heads, which never builds the `[tokens x vocab]`
#   logits and returns the gradients through a custom VJP.
#
# We compare validation loss (nats/byte) and perplexity. The last cells show the divergences on
# logits and an on-policy (GKD) batch sampled from the student.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from jaxeff.distill import (
    forward_kl,
    fused_linear_distill_loss,
    generalized_jsd,
    on_policy_batch,
    reverse_kl,
    sample_continuations,
)
from jaxeff.models import CharLM, CharLMConfig, evaluate_lm, lm_loss, pretrained_charlm, sample_batch

P = {
    "test": dict(teacher="test", d=32, layers=1, heads=2, ff=64, steps=20, eval_every=20, batch=8, seq=32,
                 eval_batches=1, lr=3e-3),
    "small": dict(teacher="small", d=64, layers=2, heads=4, ff=256, steps=600, eval_every=100, batch=32, seq=128,
                  eval_batches=8, lr=2e-3),
    "full": dict(teacher="full", d=192, layers=4, heads=6, ff=768, steps=4000, eval_every=250, batch=64, seq=256,
                 eval_batches=32, lr=1e-3),
}[SIZE]
t0 = time.time()
teacher, train_u8, val_u8 = pretrained_charlm(P["teacher"], seed=0)
tcfg = teacher.cfg
print(f"teacher: d_model={tcfg.d_model}, layers={tcfg.num_layers}  ({time.time() - t0:.1f}s)")
teacher_eval = evaluate_lm(teacher, val_u8, seq_len=P["seq"], batch_size=P["batch"], num_batches=P["eval_batches"])
print("teacher validation:", {k: round(v, 4) for k, v in teacher_eval.items()})

# %% [markdown]
# ## Training students
# One loop for all students: AdamW with a cosine schedule, identical batches (same key
# sequence) and identical initialization; only the loss differs. The KD loss reshapes the
# `[B, T, d]` hidden states into tokens and passes the lm-head kernels; the teacher is frozen.

# %%
scfg = CharLMConfig(vocab_size=256, d_model=P["d"], num_layers=P["layers"], num_heads=P["heads"], d_ff=P["ff"],
                    max_len=tcfg.max_len)
t_graph, t_state = nnx.split(teacher)


def kd_loss(divergence, **kw):
    def loss(model, tokens):
        inp = tokens[:, :-1]
        hs = model.features(inp)
        ht = jax.lax.stop_gradient(nnx.merge(t_graph, t_state).features(inp))
        return fused_linear_distill_loss(
            hs.reshape(-1, hs.shape[-1]), model.head.kernel[...],
            ht.reshape(-1, ht.shape[-1]), nnx.merge(t_graph, t_state).head.kernel[...],
            divergence=divergence, chunk_size=1024, **kw)
    return loss


def train_student(loss_fn, steps, key):
    model = CharLM(scfg, rngs=nnx.Rngs(1))  # the same initialization for every student
    sched = optax.warmup_cosine_decay_schedule(0.0, P["lr"], max(steps // 10, 1), steps, P["lr"] * 0.1)
    opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01)),
                        wrt=nnx.Param)
    data = jnp.asarray(train_u8)

    @nnx.jit
    def step(model, opt, k):
        tokens = sample_batch(data, k, P["batch"], P["seq"])
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
        opt.update(model, grads)
        return loss

    curve = []
    for i in range(steps):
        step(model, opt, jax.random.fold_in(key, i))
        if (i + 1) % P["eval_every"] == 0 or i + 1 == steps:
            ev = evaluate_lm(model, val_u8, seq_len=P["seq"], batch_size=P["batch"], num_batches=P["eval_batches"])
            curve.append((i + 1, ev["loss"]))
    return model, curve


students = {
    "SFT (hard labels)": lm_loss,
    "KD forward KL": kd_loss("forward_kl"),
    "KD reverse KL": kd_loss("reverse_kl"),
    "KD JSD (beta=0.5)": kd_loss("jsd", beta=0.5),
}
results = {}
for name, fn in students.items():
    t0 = time.time()
    model, curve = train_student(fn, P["steps"], jax.random.key(42))
    results[name] = dict(model=model, curve=curve, final=curve[-1][1])
    print(f"{name:20s} val loss {curve[-1][1]:.4f} nats/byte  ppl {np.exp(curve[-1][1]):.3f}  ({time.time() - t0:.0f}s)")

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
for name, r in results.items():
    s, l = zip(*r["curve"])
    ax[0].plot(s, l, marker="o", label=name)
ax[0].axhline(teacher_eval["loss"], color="k", ls="--", label="teacher")
ax[0].set_xlabel("step")
ax[0].set_ylabel("validation loss (nats/byte)")
ax[0].legend()
names = list(results)
ax[1].bar(range(len(names)), [np.exp(results[n]["final"]) for n in names])
ax[1].set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
ax[1].set_ylabel("validation perplexity")
ax[1].set_ylim(min(np.exp(results[n]["final"]) for n in names) * 0.95, None)
plt.tight_layout()
plt.show()

sft = results["SFT (hard labels)"]["final"]
best_kd = min((r["final"], n) for n, r in results.items() if n.startswith("KD"))
held = best_kd[0] < sft
print(f"SFT: {sft:.4f}; best KD ({best_kd[1]}): {best_kd[0]:.4f} -> claim "
      f"{'HELD' if held else 'did NOT hold'} at SIZE={SIZE!r}")

# %% [markdown]
# ## Result: did the claim hold?
# **What we ran (honestly).** The full `SIZE="small"` run of this notebook (teacher
# `pretrained_charlm("small")`, then 4 layers, d=128, 1200 steps — the preset is now the demo's
# 3-layer, 700-step teacher; four students with 600 steps each)
# could not be completed in the development session on a shared 2-core CPU. We ran the same code
# path at a reduced scale instead: teacher CharLM (2 layers, d=64) trained 800 steps on 1 MB of
# standard-library source (validation 2.141 nats/byte), students (1 layer, d=32) trained 300
# steps with batch 16 x 64 bytes from one initialization, validation on 8 x 16 windows:
#
# | student | val. loss (nats/byte) | perplexity |
# |---|---|---|
# | SFT (hard labels) | 2.653 | 14.20 |
# | KD forward KL | **2.603** | **13.50** |
# | KD reverse KL | 3.021 | 20.52 |
# | KD JSD (beta=0.5) | 2.700 | 14.88 |
#
# **The claim held for forward-KL distillation** (the paper's choice): the KD student beats the
# SFT student of the same size and budget (-0.05 nats/byte). Reverse KL and JSD, which are
# mode-seeking and ignore the teacher's low-probability mass, were worse than SFT at this short
# budget. A second observation: with a weaker teacher (the 150-step `test` preset, validation
# 2.628 nats/byte) the SFT student (2.622) already matched the teacher and KD did not help
# (FKL 2.655) — distillation needs a teacher clearly better than what the student reaches alone.
# At `SIZE="test"` (20 steps) the printed verdict is not meaningful; it only checks the pipeline.
#
# ## The divergences on logits, and an on-policy (GKD) batch
# The same divergences are available as plain losses on `[..., V]` logits, with masks,
# temperature and reductions. Forward KL is mode-covering, reverse KL mode-seeking; the
# normalized generalized JSD interpolates between them continuously.

# %%
student = results["KD forward KL"]["model"]
toks = sample_batch(jnp.asarray(val_u8), jax.random.key(7), 4, 32)
zs, zt = student(toks[:, :-1]), teacher(toks[:, :-1])
print("FKL", float(forward_kl(zs, zt)), " RKL", float(reverse_kl(zs, zt)))
for b in (0.0, 0.25, 0.5, 0.75, 1.0):
    print(f"normalized JSD beta={b:4.2f}: {float(generalized_jsd(zs, zt, beta=b, normalized=True)):.4f}")

# GKD: with probability lam the continuation after a 16-byte prompt is sampled from the student
# (jit + lax.scan with a key/value cache), and the loss is taken on the continuation only.
batch, mask = on_policy_batch(student, toks, jax.random.key(3), prompt_len=16, lam=1.0, temperature=0.9, top_p=0.95)
print("on-policy sample:", repr(bytes(np.asarray(batch[0], np.uint8)).decode("latin-1")))
onp = generalized_jsd(student(batch[:, :-1]), teacher(batch[:, :-1]), beta=0.5, where=mask[:, 1:])
print("JSD on the student's own samples:", float(onp))

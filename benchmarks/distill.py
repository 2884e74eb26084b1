"""Benchmark suite `distill`: fused chunked linear distillation loss vs the naive materialized loss.

Every case times forward + backward (value and gradients w.r.t. the student hidden states and
lm-head) of a jitted function and records XLA's compiled memory analysis; ``ratio`` and
``memory_ratio`` are relative to the naive case of the same shape and dtype, run in the same
process. Anchor (Liger-Kernel, H100, H=4096, V=128256, BT=8192, bf16): chunked JSD 0.16x memory
and 0.28x time of plain PyTorch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff.distill import fused_linear_distill_loss
from jaxeff.distill.fused import _default_chunk_size, _reference_linear_distill_loss

DESCRIPTION = "fused chunked lm-head distillation (JSD) vs naive materialized logits: fwd+bwd time and XLA temp memory"


def _inputs(T, H, V, dtype, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    hs = jax.random.normal(k[0], (T, H), dtype)
    ws = (jax.random.normal(k[1], (H, V)) / np.sqrt(H)).astype(dtype)
    ht = jax.random.normal(k[2], (T, H), dtype)
    wt = (jax.random.normal(k[3], (H, V)) / np.sqrt(H)).astype(dtype)
    return hs, ws, ht, wt


def _naive_fn(divergence):
    def loss(hs, ws, ht, wt):
        return _reference_linear_distill_loss(hs, ws, ht, wt, divergence=divergence)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def _fused_fn(divergence, chunk):
    def loss(hs, ws, ht, wt):
        return fused_linear_distill_loss(hs, ws, ht, wt, divergence=divergence, chunk_size=chunk)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def _rel_err(a, b):
    a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
    b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _pair(ctx, tag, T, H, V, dtype, chunk, divergence="jsd"):
    args = _inputs(T, H, V, dtype)
    naive, fused = _naive_fn(divergence), _fused_fn(divergence, chunk)
    shape = dict(T=T, H=H, V=V, dtype=jnp.dtype(dtype).name, chunk=chunk, divergence=divergence)
    base = f"naive-{tag}"
    ctx.timeit(base, naive, *args, metrics=dict(shape))
    res = ctx.timeit(f"fused-{tag}", fused, *args, baseline=base, metrics=dict(shape))
    (vn, gn), (vf, gf) = naive(*args), fused(*args)
    res.metrics.update(value_rel_err=_rel_err(vf, vn), grad_hidden_rel_err=_rel_err(gf[0], gn[0]),
                       grad_head_rel_err=_rel_err(gf[1], gn[1]))
    return args


def run(ctx) -> None:
    T, H, V = ctx.pick((2048, 256, 8192), (8192, 1024, 32768))
    chunk = ctx.pick(128, 512)  # chunk = T/16 in both sizes
    # headline: fp32 and bf16 at the suite's shape
    args = _pair(ctx, "fp32", T, H, V, jnp.float32, chunk)
    _pair(ctx, "bf16", T, H, V, jnp.bfloat16, chunk)
    # the default call (chunk chosen from the shapes: chunk x V ~ T x H) against the same baseline
    ctx.timeit("fused-fp32-default", _fused_fn("jsd", None), *args, baseline="naive-fp32",
               metrics=dict(T=T, H=H, V=V, chunk=_default_chunk_size(T, H, V)))
    # chunk-size sweep at the headline shape (fp32), each against the fp32 naive case
    for c in ctx.pick((64, 256, 512, 1024), (256, 1024, 2048, 4096)):
        ctx.timeit(f"fused-fp32-chunk{c}", _fused_fn("jsd", c), *args, baseline="naive-fp32",
                   metrics=dict(T=T, H=H, V=V, chunk=c))
    # T sweep (fp32): where chunking starts to pay off
    for t in ctx.pick((256, 1024), (1024, 4096)):
        _pair(ctx, f"fp32-T{t}", t, H, V, jnp.float32, min(chunk, t))
    # another divergence at the headline shape, against its own naive baseline
    _pair(ctx, "fp32-forward_kl", T, H, V, jnp.float32, chunk, divergence="forward_kl")

_ = functools

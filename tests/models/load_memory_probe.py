"""Peak host memory of :func:`jaxeff.models.from_pretrained` relative to the checkpoint size.

Not a test (no assertions on memory): run ``python tests/models/load_memory_probe.py [--hidden 768]``.
A random Llama checkpoint is written by one subprocess; a fresh subprocess imports jax + jaxeff,
records its resident set (VmRSS), loads the checkpoint, and reports the high-water mark (VmHWM)
above that baseline, split into anonymous and file-backed (mmap page cache) memory at the end.
On CPU the loaded parameters themselves live in host memory, so the ideal is ~1.0x.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def _write(d: str, hidden: int, layers: int, vocab: int, dtype: str) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from jaxeff.models import LlamaConfig, LlamaForCausalLM, save_pretrained

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    save_pretrained(model, d, dtype=getattr(jnp, dtype), max_shard_size="200MB")


def _load(d: str, dtype: str) -> None:
    import jax
    import jax.numpy as jnp

    from jaxeff.models import from_pretrained

    jax.block_until_ready(jnp.ones(8) + 1)  # start the backend before the baseline
    import gc

    gc.collect()
    base = _status()
    model = from_pretrained(d, dtype=getattr(jnp, dtype))
    jax.block_until_ready(jax.tree.leaves(model.model.norm.weight[...]))
    end = _status()
    print(json.dumps({"base": base, "end": end}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--_role", default=None)
    ap.add_argument("--_dir", default=None)
    a = ap.parse_args()
    if a._role == "write":
        return _write(a._dir, a.hidden, a.layers, a.vocab, a.dtype)
    if a._role == "load":
        return _load(a._dir, a.dtype)
    with tempfile.TemporaryDirectory() as d:
        me = [sys.executable, os.path.abspath(__file__), "--hidden", str(a.hidden), "--layers", str(a.layers),
              "--vocab", str(a.vocab), "--dtype", a.dtype, "--_dir", d]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        subprocess.run(me + ["--_role", "write"], check=True, env=env)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
        out = subprocess.run(me + ["--_role", "load"], check=True, env=env, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peak = r["end"]["VmHWM"] - r["base"]["VmRSS"]
        anon = r["end"]["RssAnon"] - r["base"]["RssAnon"]
        filebacked = r["end"]["RssFile"] - r["base"]["RssFile"]
        mb = 2**20
        print(f"checkpoint {size / mb:.1f} MiB ({a.dtype}); peak RSS above baseline {peak / mb:.1f} MiB "
              f"= {peak / size:.2f}x; at the end: anonymous +{anon / mb:.1f} MiB ({anon / size:.2f}x), "
              f"file-backed (mmap page cache) +{filebacked / mb:.1f} MiB")


if __name__ == "__main__":
    main()

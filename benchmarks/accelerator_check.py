"""Accelerator-only checks of issue 18 (run by ``benchmarks/accelerator_check.sh``); writes one JSON.

Checks (each timed as the median of jitted calls after a compile, ``block_until_ready``):

* ``fused_kd``: fused chunked lm-head distillation loss (``jaxeff.distill.fused_linear_distill_loss``)
  vs the naive materialized loss, fwd+bwd, T=8192/H=4096/V=128256 bf16: time, XLA compiled
  temp bytes, and the device's peak bytes in use after each (fused first, so its peak is its own).
* ``matmul``: int8 x int8 -> int32 (``jaxeff.quant.quantized_dot_general``) and fp8 e4m3 matmul vs
  bf16 at 4096^3.
* ``layer``: W8A8 (dynamic per-token int8 activations) and W4A16 (packed int4, group 128)
  ``quantized_matmul`` vs a bf16 layer, 4096 tokens, 4096 -> 14336.
* ``sr``: stochastic rounding (``jaxeff.rounding.round_to``, hash noise) to bf16/fp16/e4m3 vs a
  plain ``astype``, 1e8 elements.
* ``sam``: jaxeff SAM / mSAM (m=8) / optax.contrib.sam step time over an SGD step, MLP
  64-512-512-10, batch 1024.
* ``kmeans`` / ``coreset``: ``jaxeff.sketch.kmeans`` and the sqrt-leverage coreset build at n=1e7.

``--dry-run`` uses tiny sizes on whatever device JAX sees (CPU in the tests) and installs nothing;
it checks that every path runs and that the JSON is complete. A check that fails is recorded with
its error and the others still run; checks stop once the time budget (``--budget-s``) is spent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

FULL = dict(kd=(8192, 4096, 128256), kd_chunk=None, mm=4096, layer=(4096, 4096, 14336), sr=100_000_000,
            sam_batch=1024, kmeans=(10_000_000, 16, 16), coreset=(10_000_000, 50, 10_000), repeats=5)
DRY = dict(kd=(128, 32, 512), kd_chunk=32, mm=64, layer=(32, 128, 128), sr=10_000,
           sam_batch=32, kmeans=(2048, 4, 3), coreset=(2048, 8, 100), repeats=1, max_iter=5)
FULL["max_iter"] = 50


def _timeit(fn, *args, repeats):
    from jaxeff._core.bench import time_fn

    ts = time_fn(fn, *args, repeats=repeats)
    return {"median_s": statistics.median(ts), "times_s": ts}


def _ratio(a, b):
    return a["median_s"] / b["median_s"] if b["median_s"] > 0 else None


def check_fused_kd(S):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxeff._core.bench import compiled_memory, device_peak_bytes
    from jaxeff.distill import fused_linear_distill_loss
    from jaxeff.distill.fused import _reference_linear_distill_loss

    T, H, V = S["kd"]
    k = jax.random.split(jax.random.key(0), 4)
    dt = jnp.bfloat16
    hs = jax.random.normal(k[0], (T, H), dt)
    ws = (jax.random.normal(k[1], (H, V), dt) / np.sqrt(H)).astype(dt)
    ht = jax.random.normal(k[2], (T, H), dt)
    wt = (jax.random.normal(k[3], (H, V), dt) / np.sqrt(H)).astype(dt)
    args = (hs, ws, ht, wt)
    fused = jax.jit(jax.value_and_grad(
        lambda a, b, c, d: fused_linear_distill_loss(a, b, c, d, divergence="jsd", chunk_size=S["kd_chunk"]), (0, 1)))
    naive = jax.jit(jax.value_and_grad(
        lambda a, b, c, d: _reference_linear_distill_loss(a, b, c, d, divergence="jsd"), (0, 1)))
    out = {"T": T, "H": H, "V": V, "dtype": "bfloat16"}
    out["fused"] = _timeit(fused, *args, repeats=S["repeats"])
    out["fused"]["compiled_memory"] = compiled_memory(fused, *args)
    out["fused"]["device_peak_bytes"] = device_peak_bytes()
    (vf, gf) = fused(*args)
    try:
        out["naive"] = _timeit(naive, *args, repeats=S["repeats"])
        out["naive"]["compiled_memory"] = compiled_memory(naive, *args)
        out["naive"]["device_peak_bytes"] = device_peak_bytes()
        (vn, gn) = naive(*args)
        out["time_ratio"] = _ratio(out["fused"], out["naive"])
        fm, nm = out["fused"]["compiled_memory"], out["naive"]["compiled_memory"]
        if fm and nm and nm["temp"] + nm["output"] > 0:
            out["temp_memory_ratio"] = (fm["temp"] + fm["output"]) / (nm["temp"] + nm["output"])
        out["value_rel_err"] = float(abs(float(vf) - float(vn)) / max(abs(float(vn)), 1e-30))
    except Exception as e:  # naive may not fit where fused does: that is a result too
        out["naive"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    out["anchor"] = "Liger-Kernel H100 chunked JSD: 0.16x memory, 0.28x time of plain PyTorch"
    return out


def check_matmul(S):
    import jax
    import jax.numpy as jnp

    from jaxeff.quant import quantize, quantized_dot_general

    n = S["mm"]
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (n, n), jnp.float32)
    w = jax.random.normal(kw, (n, n), jnp.float32) * 0.02
    dn = (((1,), (0,)), ((), ()))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = {"M": n, "K": n, "N": n}
    out["bf16"] = _timeit(jax.jit(lambda a, b: a @ b), xb, wb, repeats=S["repeats"])
    q8x, q8w = quantize(x, "int8", axis=1), quantize(w, "int8", axis=0)
    out["int8_int32"] = _timeit(jax.jit(lambda a, b: quantized_dot_general(a, b, dn)), q8x, q8w, repeats=S["repeats"])
    out["int8_codes_only"] = _timeit(jax.jit(lambda a, b: jax.lax.dot_general(
        a, b, dn, preferred_element_type=jnp.int32)), q8x.qvalue, q8w.qvalue, repeats=S["repeats"])
    f8x, f8w = quantize(x, "e4m3", axis=1), quantize(w, "e4m3", axis=0)
    out["fp8_e4m3"] = _timeit(jax.jit(lambda a, b: quantized_dot_general(a, b, dn)), f8x, f8w, repeats=S["repeats"])
    for k in ("int8_int32", "int8_codes_only", "fp8_e4m3"):
        out[f"{k}_vs_bf16"] = _ratio(out[k], out["bf16"])
    return out


def check_layer(S):
    import jax
    import jax.numpy as jnp

    from jaxeff.quant import quantize, quantized_matmul

    t, din, dout = S["layer"]
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (t, din), jnp.bfloat16)
    w = jax.random.normal(kw, (din, dout), jnp.float32) * 0.02
    out = {"tokens": t, "d_in": din, "d_out": dout}
    out["bf16"] = _timeit(jax.jit(lambda x, w: x @ w), x, w.astype(jnp.bfloat16), repeats=S["repeats"])
    q8 = quantize(w, "int8", axis=0)
    out["w8a8"] = _timeit(jax.jit(lambda x, q: quantized_matmul(x, q, act_fmt="int8")), x, q8, repeats=S["repeats"])
    q4 = quantize(w, "int4", axis=0, group_size=min(128, din))
    out["w4a16"] = _timeit(jax.jit(lambda x, q: quantized_matmul(x, q)), x, q4, repeats=S["repeats"])
    out["w8a8_vs_bf16"] = _ratio(out["w8a8"], out["bf16"])
    out["w4a16_vs_bf16"] = _ratio(out["w4a16"], out["bf16"])
    return out


def check_sr(S):
    import jax
    import jax.numpy as jnp

    from jaxeff.rounding import BF16, E4M3, FP16, round_to

    n = S["sr"]
    x = jax.random.normal(jax.random.key(3), (n,), jnp.float32) * 3.0
    key = jax.random.key(4)
    out = {"n": n}
    for name, fmt in (("bf16", BF16), ("fp16", FP16), ("e4m3", E4M3)):
        cast = _timeit(jax.jit(lambda v, dt=fmt.dtype: v.astype(dt)), x, repeats=S["repeats"])
        sr = _timeit(jax.jit(lambda v, k, fmt=fmt: round_to(v, fmt, "stochastic", key=k, noise="hash")), x, key,
                     repeats=S["repeats"])
        gbytes = (4 + jnp.dtype(fmt.dtype).itemsize) * n / 1e9
        out[name] = {"astype": cast, "sr_hash": sr, "sr_vs_astype": _ratio(sr, cast),
                     "sr_GB_s": gbytes / sr["median_s"], "astype_GB_s": gbytes / cast["median_s"]}
    out["goal"] = "sr_vs_astype <= 1.5"
    return out


def check_sam(S):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxeff
    from jaxeff.sam import sam as jaxeff_sam

    lr, rho, B = 0.1, 0.05, S["sam_batch"]
    sizes = [64, 512, 512, 10]
    ks = jax.random.split(jax.random.key(5), len(sizes) + 1)
    params = [{"w": jax.random.normal(ks[i], (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
              for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    batch = {"x": jax.random.normal(ks[-1], (B, 64)), "y": jax.random.randint(ks[-2], (B,), 0, 10)}

    def loss(p, b):
        h = b["x"]
        for layer in p[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        logits = h @ p[-1]["w"] + p[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

    def plain(tx):
        @jax.jit
        def step(p, st, b):
            u, st = tx.update(jax.grad(loss)(p, b), st, p)
            return optax.apply_updates(p, u), st
        return tx, step

    def ours(tx):
        @jax.jit
        def step(p, st, b):
            u, st = tx.update(jax.grad(loss)(p, b), st, p, loss_fn=loss, batch=b)
            return optax.apply_updates(p, u), st
        return tx, step

    ref = optax.contrib.sam(optax.sgd(lr), optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
                            sync_period=2, opaque_mode=True)

    @jax.jit
    def ref_step(p, st, b):
        u, st = ref.update(jax.grad(loss)(p, b), st, p, grad_fn=lambda q, _: jax.grad(loss)(q, b))
        return optax.apply_updates(p, u), st

    cases = {"sgd": plain(optax.sgd(lr)), "jaxeff-sam": ours(jaxeff_sam(optax.sgd(lr), rho)),
             "msam-m8": ours(jaxeff.msam(optax.sgd(lr), rho, 8)), "optax-contrib-sam": (ref, ref_step)}
    out = {"mlp": sizes, "batch": B}
    for name, (tx, step) in cases.items():
        out[name] = _timeit(step, params, tx.init(params), batch, repeats=S["repeats"] if S["repeats"] < 3 else max(S["repeats"], 10))
    for name in ("jaxeff-sam", "msam-m8", "optax-contrib-sam"):
        out[f"{name}_vs_sgd"] = _ratio(out[name], out["sgd"])
    out["msam-m8_vs_sam"] = _ratio(out["msam-m8"], out["jaxeff-sam"])
    out["goal"] = "jaxeff-sam_vs_sgd <= optax-contrib-sam_vs_sgd; msam-m8_vs_sam <= 1.10"
    return out


def check_kmeans(S):
    import jax
    import jax.numpy as jnp

    from jaxeff.sketch import kmeans, sketched_kmeans

    n, d, k = S["kmeans"]
    kc, kl, kn = jax.random.split(jax.random.key(6), 3)
    C = jax.random.normal(kc, (k, d)) * 3.0
    X = C[jax.random.randint(kl, (n,), 0, k)] + jax.random.normal(kn, (n, d))
    jax.block_until_ready(X)
    out = {"n": n, "d": d, "k": k}
    full = jax.jit(lambda key, A: kmeans(key, A, k, max_iter=S["max_iter"]).cost)
    out["kmeans"] = _timeit(full, jax.random.key(0), X, repeats=min(S["repeats"], 3))
    out["kmeans"]["cost"] = float(full(jax.random.key(0), X))
    try:
        sk = jax.jit(lambda key, A: sketched_kmeans(key, A, k, min(100, n)).cost)
        out["sketched_kmeans_m100"] = _timeit(sk, jax.random.key(0), X, repeats=min(S["repeats"], 3))
        out["sketched_kmeans_m100"]["cost"] = float(sk(jax.random.key(0), X))
        out["sketched_vs_kmeans_time"] = _ratio(out["sketched_kmeans_m100"], out["kmeans"])
        out["sketched_vs_kmeans_cost"] = out["sketched_kmeans_m100"]["cost"] / out["kmeans"]["cost"]
    except Exception as e:
        out["sketched_kmeans_m100"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return out


def check_coreset(S):
    import jax
    import jax.numpy as jnp

    from jaxeff.coreset import CORESET_SAMPLERS

    n, d, m = S["coreset"]
    kx, kb, ky = jax.random.split(jax.random.key(7), 3)
    X = jax.random.normal(kx, (n, d))
    beta = jax.random.normal(kb, (d,))
    y = jnp.where(jax.random.uniform(ky, (n,)) < jax.nn.sigmoid(X @ beta), 1.0, -1.0)
    jax.block_until_ready((X, y))
    out = {"n": n, "d": d, "m": m}
    for name in ("uniform", "sqrt_leverage"):
        fn = CORESET_SAMPLERS[name]
        f = jax.jit(lambda key, X, y, fn=fn: fn(key, X, y, m))
        out[name] = _timeit(f, jax.random.key(0), X, y, repeats=min(S["repeats"], 3))
    out["sqrt_leverage_vs_uniform"] = _ratio(out["sqrt_leverage"], out["uniform"])
    return out


CHECKS = {"fused_kd": check_fused_kd, "matmul": check_matmul, "layer": check_layer, "sr": check_sr,
          "sam": check_sam, "kmeans": check_kmeans, "coreset": check_coreset}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on whatever device JAX sees (CPU in tests)")
    p.add_argument("--out", default="accelerator_check.json")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip the checks left after this many seconds")
    p.add_argument("--only", nargs="*", default=None, choices=list(CHECKS), help="run only these checks")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.dry_run:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    S = DRY if args.dry_run else FULL
    dev = jax.devices()[0]
    result = {"meta": {"dry_run": args.dry_run, "jax": jax.__version__, "backend": jax.default_backend(),
                       "device": str(dev), "device_kind": getattr(dev, "device_kind", None),
                       "device_count": jax.device_count(), "python": sys.version.split()[0],
                       "machine": platform.node(), "sizes": {k: v for k, v in S.items()},
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "checks": {}, "errors": {}, "skipped": []}
    if not args.dry_run and jax.default_backend() == "cpu":
        print("accelerator_check: JAX sees no accelerator (backend cpu); the figures will be CPU figures",
              file=sys.stderr)
    t_start = time.perf_counter()
    for name in args.only or list(CHECKS):
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        print(f"accelerator_check: {name} ...", file=sys.stderr, flush=True)
        try:
            result["checks"][name] = CHECKS[name](S)
        except Exception as e:
            result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        result["checks"].setdefault(name, {})["wall_s"] = time.perf_counter() - t0
        jax.clear_caches()
    result["meta"]["total_s"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"accelerator_check: wrote {args.out} ({len(result['checks'])} checks, {len(result['errors'])} errors, "
          f"{len(result['skipped'])} skipped, {result['meta']['total_s']:.1f} s)", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""``jaxeff demo``: the compression pipeline of "Efficient AI in Practice" (arXiv 2502.14305),
end to end, on an offline corpus.

Stages (one progress bar each):

1. **teacher**: a byte-level Flax NNX transformer trained on the Python standard library's own
   source files (:func:`jaxeff.models.load_text_corpus`, deterministic file-level split).
2. **students**: a 4-8x smaller student trained twice for the same number of steps, on hard
   labels only (SFT) and with token-level forward KL to the teacher (KD,
   :func:`jaxeff.distill.forward_kl`).
3. **prune**: OSSCAR structured pruning (:func:`jaxeff.prune.osscar`) of the KD student's MLP
   neurons using calibration activations, physically removed (:func:`jaxeff.prune.shrink`),
   then a brief re-distillation.
4. **quantize**: the pruned + re-distilled student to int8 per-channel, fp8 (e4m3) and int4
   with GPTQ and QuantEase (:mod:`jaxeff.quant`), weight-only, via
   :func:`jaxeff.quant.quantize_model`.
5. **report**: parameters, bytes, validation bits per byte and perplexity, tokens/s of greedy
   generation; ``results.json``, ``results.md``, ``size_vs_quality.png`` and samples.

With ``--config`` naming a topology (e.g. ``cpu-8``) the training batches are split over the
mesh's data axis (parameters replicated) with the current sharding API; the global batch is
unchanged, so the final numbers match one device up to float reduction order.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxeff.models import (CharLM, CharLMConfig, capture_linear_inputs, evaluate_lm, greedy_generate, lm_loss,
                           load_text_corpus, param_bytes, param_count, sample_batch, train_lm)

__all__ = ["DemoSize", "DEMO_SIZES", "run_demo", "main"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoSize:
    corpus_bytes: int
    seq_len: int
    batch_size: int
    teacher: CharLMConfig
    teacher_steps: int
    teacher_lr: float
    student: CharLMConfig
    student_steps: int
    student_lr: float
    redistill_steps: int
    prune_fraction: float          # fraction of MLP neurons removed
    calib_batches: int             # batches of calibration windows for OSSCAR / GPTQ / QuantEase
    eval_batches: int
    gen_tokens: int
    int4_group: int


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        corpus_bytes=100_000, seq_len=32, batch_size=16,
        teacher=CharLMConfig(d_model=32, num_layers=1, num_heads=2, d_ff=128, max_len=64), teacher_steps=30,
        teacher_lr=5e-3,
        student=CharLMConfig(d_model=16, num_layers=1, num_heads=2, d_ff=64, max_len=64), student_steps=20,
        student_lr=5e-3, redistill_steps=10, prune_fraction=0.5, calib_batches=1, eval_batches=1, gen_tokens=8,
        int4_group=16),
    "small": DemoSize(
        corpus_bytes=1_500_000, seq_len=64, batch_size=32,
        teacher=CharLMConfig(d_model=128, num_layers=3, num_heads=4, d_ff=512, max_len=128), teacher_steps=700,
        teacher_lr=3e-3,
        student=CharLMConfig(d_model=64, num_layers=2, num_heads=4, d_ff=256, max_len=128), student_steps=500,
        student_lr=4e-3, redistill_steps=150, prune_fraction=0.5, calib_batches=8, eval_batches=16, gen_tokens=64,
        int4_group=32),
    "full": DemoSize(
        corpus_bytes=20_000_000, seq_len=256, batch_size=64,
        teacher=CharLMConfig(d_model=512, num_layers=8, num_heads=8, d_ff=2048, max_len=256), teacher_steps=8000,
        teacher_lr=1e-3,
        student=CharLMConfig(d_model=256, num_layers=4, num_heads=8, d_ff=1024, max_len=256), student_steps=6000,
        student_lr=2e-3, redistill_steps=1000, prune_fraction=0.5, calib_batches=32, eval_batches=64, gen_tokens=128,
        int4_group=64),
}


# ------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------
def kd_loss_fn(teacher: nnx.Module):
    """Token-level forward KL to ``teacher`` (the paper's first distillation stage)."""
    from jaxeff.distill import forward_kl

    t_graph, t_state = nnx.split(teacher)

    def loss(model, tokens):
        inputs = tokens[:, :-1]
        t_logits = jax.lax.stop_gradient(nnx.merge(t_graph, t_state)(inputs))
        return forward_kl(model(inputs), t_logits)

    return loss


# ------------------------------------------------------------------------------------------
# pruning
# ------------------------------------------------------------------------------------------
def osscar_prune(model: CharLM, calib_tokens: jax.Array, fraction: float) -> tuple[CharLM, dict[str, Any]]:
    """OSSCAR-prune every block's MLP neurons (keep ``1 - fraction``) and physically shrink it."""
    from jaxeff.prune import osscar, shrink

    acts = capture_linear_inputs(model, calib_tokens)
    d_ff = model.blocks[0].mlp.up.out_features
    keep = max(1, int(round(d_ff * (1.0 - fraction))))
    info = {"d_ff": d_ff, "keep": keep, "layers": []}
    kept_by_path = {}
    for i, blk in enumerate(model.blocks):
        x = acts[f"blocks.{i}.mlp.down"]
        w = blk.mlp.down.kernel[...]
        t0 = time.perf_counter()
        w_new, kept = osscar(w, x, keep)
        dt = time.perf_counter() - t0
        err = float(jnp.sum((x @ (w_new - w)) ** 2) / jnp.sum((x @ w) ** 2))
        blk.mlp.down.kernel[...] = w_new  # dropped rows are exactly zero, kept rows refitted
        kept_by_path[f"blocks.{i}.mlp"] = kept
        info["layers"].append({"block": i, "rel_recon_error": err, "seconds": dt})
    return shrink(model, kept_by_path), info


# ------------------------------------------------------------------------------------------
# quantization
# ------------------------------------------------------------------------------------------
# variant -> (linear weight format, PTQ method, grouped?, embedding format). The embedding table
# is quantized per row with round-to-nearest (int8 for the int4 variants: a lookup table has no
# calibration inputs).
_QUANT_SPECS = {
    "int8": ("int8", "rtn", False, "int8"),
    "fp8": ("e4m3", "rtn", False, "e4m3"),
    "int4-gptq": ("int4", "gptq", True, "int8"),
    "int4-quantease": ("int4", "quantease", True, "int8"),
}
QUANT_VARIANTS = tuple(_QUANT_SPECS)


def quantized_variant(model: CharLM, variant: str, calib_tokens: jax.Array, group: int) -> CharLM:
    """A weight-only quantized copy of ``model`` (position table and norms stay float)."""
    from jaxeff.quant import QuantRule, quantize_model

    if variant not in _QUANT_SPECS:
        raise ValueError(f"`variant` must be one of {QUANT_VARIANTS}, got {variant!r}")
    fmt, method, grouped, embed_fmt = _QUANT_SPECS[variant]
    rule = QuantRule(pattern=r".*", weight_fmt=fmt, method=method, group_size=group if grouped else None)
    rules = [QuantRule(pattern="embed", weight_fmt=embed_fmt, method="rtn"), rule]
    # Sequential calibration: each layer sees the inputs produced by the already-quantized prefix.
    return quantize_model(model, rules, calibration_data=lambda m: capture_linear_inputs(m, calib_tokens),
                          sequential=rule.method != "rtn")


# ------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------
def tokens_per_second(model: nnx.Module, prompt: jax.Array, num_new: int) -> tuple[float, jax.Array]:
    out = greedy_generate(model, prompt, num_new)  # compile
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    out = jax.block_until_ready(greedy_generate(model, prompt, num_new))
    dt = time.perf_counter() - t0
    return prompt.shape[0] * num_new / dt, out


def _row(name: str, model: nnx.Module, val: np.ndarray, sz: DemoSize, prompt: jax.Array,
         params: int | None = None) -> dict[str, Any]:
    ev = evaluate_lm(model, val, seq_len=sz.seq_len, batch_size=sz.batch_size, num_batches=sz.eval_batches)
    tps, out = tokens_per_second(model, prompt, sz.gen_tokens)
    sample = bytes(np.asarray(out[0]).astype(np.uint8).tolist()).decode("utf-8", "replace")
    return {"model": name, "params": param_count(model) if params is None else params, "bytes": param_bytes(model), "val_loss": ev["loss"],
            "bpb": ev["bpb"], "ppl": ev["ppl"], "tokens_per_s": tps, "sample": sample}


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| model | params | bytes | val bits/byte | val ppl | gen tokens/s |\n|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['bytes']:,} | {r['bpb']:.4f} | {r['ppl']:.3f} | "
                     f"{r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["bytes"], r["bpb"], s=30)
        ax.annotate(r["model"], (r["bytes"], r["bpb"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model bytes (log)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.set_title("jaxeff demo: size vs quality")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------
def demo_batch_size(size: str, config: Any = None, mesh: Any = None) -> int:
    """Global training batch of the demo: the size preset's, or with a topology ``config``
    ``batch.per_device`` x the size of the mesh's ``mesh.data_axis`` (issue 20.3)."""
    if size not in DEMO_SIZES:
        raise ValueError(f"`size` must be one of {list(DEMO_SIZES)}, got {size!r}")
    if config is None:
        return DEMO_SIZES[size].batch_size
    per = int(config.raw["batch"]["per_device"])
    axis = config.raw["mesh"]["data_axis"]
    n = int(mesh.shape[axis]) if mesh is not None and axis in mesh.axis_names else 1
    return per * n


def run_demo(size: str = "small", *, out: str | Path = "demo_results", mesh: Any = None, progress: bool = True,
             seed: int = 0, config_name: str | None = None, config: Any = None) -> dict[str, Any]:
    """Run the whole pipeline; returns (and writes) the results dictionary.

    ``config`` (a :class:`jaxeff._core.config.TopologyConfig`, as ``jaxeff demo --config`` passes)
    sets the global training batch to ``batch.per_device`` x the data-axis size.
    """
    if size not in DEMO_SIZES:
        raise ValueError(f"`size` must be one of {list(DEMO_SIZES)}, got {size!r}")
    sz = DEMO_SIZES[size]
    if config is not None:
        sz = dataclasses.replace(sz, batch_size=demo_batch_size(size, config, mesh))
        config_name = config_name or config.raw["name"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bar_opts = dict(progress=progress)

    def stage(name):
        timings[name] = time.perf_counter()
        if progress:
            print(f"[jaxeff demo] {name} ...", flush=True)

    def done(name):
        timings[name] = time.perf_counter() - timings[name]

    key = jax.random.key(seed)
    k_t, k_sft, k_kd, k_re, k_cal, k_p = jax.random.split(key, 6)
    train, val = load_text_corpus(sz.corpus_bytes)
    calib = sample_batch(train, k_cal, sz.calib_batches * 8, sz.seq_len)[:, :-1]
    prompt = jnp.asarray(np.stack([val[i * 997 % (val.size - 16):][:16] for i in range(4)]).astype(np.int32))
    common = dict(batch_size=sz.batch_size, seq_len=sz.seq_len, mesh=mesh)

    stage("teacher")
    teacher = CharLM(sz.teacher, rngs=nnx.Rngs(seed))
    train_lm(teacher, train, steps=sz.teacher_steps, lr=sz.teacher_lr, key=k_t,
             progress="teacher" if progress else False, **common)
    done("teacher")

    stage("students")
    sft = CharLM(sz.student, rngs=nnx.Rngs(seed + 1))
    kd = nnx.clone(sft)  # same initialization for both students
    train_lm(sft, train, steps=sz.student_steps, lr=sz.student_lr, key=k_sft,
             progress="student SFT" if progress else False, **common)
    train_lm(kd, train, steps=sz.student_steps, lr=sz.student_lr, key=k_sft, loss_fn=kd_loss_fn(teacher),
             progress="student KD (forward KL)" if progress else False, **common)
    done("students")

    stage("prune")
    pruned, prune_info = osscar_prune(nnx.clone(kd), calib, sz.prune_fraction)
    done("prune")
    pruned_eval = nnx.clone(pruned)
    stage("redistill")
    redist = nnx.clone(pruned)
    train_lm(redist, train, steps=sz.redistill_steps, lr=sz.student_lr * 0.5, key=k_re, loss_fn=kd_loss_fn(teacher),
             progress="re-distill" if progress else False, **common)
    done("redistill")

    stage("quantize")
    quantized = {}
    for v in QUANT_VARIANTS:
        t0 = time.perf_counter()
        quantized[v] = quantized_variant(redist, v, calib, sz.int4_group)
        timings[f"quantize {v}"] = time.perf_counter() - t0
    done("quantize")

    stage("evaluate")
    models = [("teacher", teacher), ("student SFT", sft), ("student KD", kd),
              (f"KD + OSSCAR {int(sz.prune_fraction * 100)}% MLP", pruned_eval),
              ("pruned + re-distilled", redist)] + [(f"pruned+re-KD {v}", m) for v, m in quantized.items()]
    rows = []
    it = models
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(models, desc="evaluate", leave=False)
    n_redist = param_count(redist)  # quantized copies hold the same (logical) parameters
    for name, m in it:
        rows.append(_row(name, m, val, sz, prompt, n_redist if name.startswith("pruned+re-KD") else None))
    done("evaluate")

    by = {r["model"]: r for r in rows}
    float_row = by["pruned + re-distilled"]
    checks = {
        "kd_beats_sft": by["student KD"]["bpb"] < by["student SFT"]["bpb"],
        "pruning_cost_bpb": by[models[3][0]]["bpb"] - by["student KD"]["bpb"],
        "redistill_gain_bpb": by[models[3][0]]["bpb"] - float_row["bpb"],
        "redistill_recovers_pruning_loss": float_row["bpb"] <= by["student KD"]["bpb"]
        + 0.5 * max(by[models[3][0]]["bpb"] - by["student KD"]["bpb"], 0.0),
        "int8_rel_ppl_change": by["pruned+re-KD int8"]["ppl"] / float_row["ppl"] - 1.0,
        "int8_within_1pct": by["pruned+re-KD int8"]["ppl"] <= 1.01 * float_row["ppl"],
    }
    result = {
        "size": size, "config": config_name or "base", "batch_size": sz.batch_size, "devices": int(jax.device_count()) if mesh is None else int(mesh.size),
        "backend": jax.default_backend(), "seconds_total": time.perf_counter() - t_start, "stage_seconds": timings,
        "prune": prune_info, "checks": checks, "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    table = _table(rows)
    md = [f"# jaxeff demo ({size}, config {result['config']}, {result['devices']} {result['backend']} device(s))", "",
          table, "", "## checks", ""] + [f"- {k}: {v}" for k, v in checks.items()] + ["", "## samples", ""]
    md += [f"**{r['model']}**\n\n```\n{r['sample']}\n```\n" for r in rows]
    (out / "results.md").write_text("\n".join(md))
    _plot(rows, out / "size_vs_quality.png")
    return result


def main(args: Any) -> int:
    """Entry for ``jaxeff demo`` (arguments parsed by :mod:`jaxeff.cli`)."""
    mesh = None
    config_name = getattr(args, "config", None)
    cfg = None
    if config_name is not None:
        from jaxeff._core.config import load_config, setup_devices

        cfg = load_config(config_name, getattr(args, "overrides", []))
        mesh = setup_devices(cfg)
    res = run_demo(args.size, out=args.out, mesh=mesh, progress=not getattr(args, "no_progress", False),
                   config_name=config_name, config=cfg)
    print()
    print(_table(res["rows"]))
    print()
    for k, v in res["checks"].items():
        print(f"{k}: {v}")
    print(f"\nsamples (prompt + {DEMO_SIZES[args.size].gen_tokens} generated bytes):")
    for r in res["rows"][:5]:
        print(f"  {r['model']:>28s}: {r['sample']!r}")
    print(f"\nwrote {args.out}/results.json, results.md, size_vs_quality.png "
          f"in {res['seconds_total']:.0f} s")
    return 0

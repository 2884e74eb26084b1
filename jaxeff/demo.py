"""``jaxeff demo``: the compression pipeline of "Efficient AI in Practice" (arXiv 2502.14305),
end to end on the Llama family, offline, through ``jaxeff compress``.

The demo runs the shipped recipe ``recipes/demo.yaml`` (:data:`DEMO_RECIPE`) with
:func:`jaxeff.compress.run_recipe`; ``--size`` picks a set of recipe overrides
(:data:`DEMO_SIZES`: ``tiny`` for tests, ``small`` the recipe as written, ``full`` larger):

1. **teacher**: a Llama-family decoder (GQA, SwiGLU, RoPE) trained on the Python standard
   library's own sources (``data.path: "@stdlib"``, file-disjoint validation split), or loaded
   from ``$JAXEFF_CACHE/teachers`` when the same teacher was trained before.
2. **distill**: a 5x smaller student distilled from the teacher's offline top-k log-probs
   (:mod:`jaxeff.distill.logit_store`, written once, memory-mapped), and beside it the same
   student trained on hard labels only for the same steps and batches (KD vs SFT).
3. **prune**: OSSCAR structured pruning of half of every SwiGLU MLP, physically removed
   (:func:`jaxeff.prune.prune_structured`, :func:`jaxeff.prune.shrink`).
4. **redistill**: a short re-distillation from the same store.
5. **quantize**: int4 GPTQ (kept), with int8, fp8 (e4m3) and int4 QuantEase evaluated beside it.
6. **export**: compressed-tensors, which ``transformers`` loads.

Each row reports parameters, bytes, validation perplexity, next-token accuracy and greedy
generation tokens/s on the same validation windows and prompts. With ``--config`` naming a
topology (e.g. ``cpu-8``) the training batches are split over the mesh's data axis and the global
batch is ``batch.per_device`` x the data-axis size; one device gives the same numbers up to float
reduction order when the batch is the same.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax

from jaxeff.compress import RECIPES_DIR, load_recipe, results_table, run_recipe

__all__ = ["DEMO_RECIPE", "DEMO_SIZES", "demo_overrides", "demo_batch_size", "demo_checks", "run_demo", "main"]

DEMO_RECIPE = RECIPES_DIR / "demo.yaml"

_T = "teacher.config."
_S = "student.config."
# --size -> overrides of recipes/demo.yaml ("small" is the recipe as written)
DEMO_SIZES: dict[str, tuple[str, ...]] = {
    "tiny": (
        f"{_T}hidden_size=32", f"{_T}intermediate_size=64", f"{_T}num_hidden_layers=1", f"{_T}num_attention_heads=2",
        f"{_T}num_key_value_heads=1", f"{_T}head_dim=16", f"{_T}max_position_embeddings=64",
        "teacher.train.steps=30", "teacher.train.batch_size=16", "teacher.train.lr=5.0e-3", "teacher.train.warmup_steps=0",
        f"{_S}hidden_size=16", f"{_S}intermediate_size=32", f"{_S}num_hidden_layers=1", f"{_S}head_dim=8",
        "data.seq_len=32", "data.max_tokens=24000",
        "eval.max_sequences=16", "eval.gen_prompts=2", "eval.gen_tokens=8",
        "stages.0.distill.steps=20", "stages.0.distill.batch_size=16", "stages.0.distill.lr=5.0e-3",
        "stages.0.distill.warmup_steps=0",
        "stages.1.prune.calib_sequences=8",
        "stages.2.redistill.steps=10", "stages.2.redistill.batch_size=16",
        "stages.3.quantize.calib_sequences=8", "stages.3.quantize.rules.0.group_size=16",
        "stages.3.quantize.variants.2.rules.0.group_size=16",
    ),
    "small": (),
    "full": (
        f"{_T}hidden_size=512", f"{_T}intermediate_size=1536", f"{_T}num_hidden_layers=8", f"{_T}num_attention_heads=8",
        f"{_T}num_key_value_heads=4", f"{_T}head_dim=64", f"{_T}max_position_embeddings=256",
        "teacher.train.steps=8000", "teacher.train.batch_size=64", "teacher.train.lr=1.0e-3",
        "teacher.train.warmup_steps=200",
        f"{_S}hidden_size=256", f"{_S}intermediate_size=768", f"{_S}num_hidden_layers=4", f"{_S}head_dim=32",
        "data.seq_len=256", "data.max_tokens=20000000",
        "eval.max_sequences=512", "eval.gen_tokens=128",
        "stages.0.distill.steps=6000", "stages.0.distill.batch_size=64", "stages.0.distill.lr=2.0e-3",
        "stages.0.distill.top_k=32", "stages.2.redistill.top_k=32",
        "stages.1.prune.calib_sequences=128",
        "stages.2.redistill.steps=1000", "stages.2.redistill.batch_size=64",
        "stages.3.quantize.calib_sequences=128", "stages.3.quantize.rules.0.group_size=64",
        "stages.3.quantize.variants.2.rules.0.group_size=64",
    ),
}


def _check_size(size: str) -> None:
    if size not in DEMO_SIZES:
        raise ValueError(f"`size` must be one of {list(DEMO_SIZES)}, got {size!r}")


def demo_batch_size(size: str, config: Any = None, mesh: Any = None) -> int:
    """Global training batch of the demo: the recipe's at ``size``, or with a topology ``config``
    ``batch.per_device`` x the size of the mesh's ``mesh.data_axis``."""
    _check_size(size)
    if config is None:
        rec = load_recipe(DEMO_RECIPE, DEMO_SIZES[size])
        return int(rec["stages"][0]["distill"]["batch_size"])
    per = int(config.raw["batch"]["per_device"])
    axis = config.raw["mesh"]["data_axis"]
    n = int(mesh.shape[axis]) if mesh is not None and axis in mesh.axis_names else 1
    return per * n


def demo_overrides(size: str = "small", config: Any = None, mesh: Any = None, seed: int = 0) -> list[str]:
    """The recipe overrides ``jaxeff demo --size SIZE [--config ...]`` runs ``recipes/demo.yaml`` with."""
    _check_size(size)
    over = list(DEMO_SIZES[size]) + [f"seed={int(seed)}"]
    if config is not None:
        b = demo_batch_size(size, config, mesh)
        over += ["teacher.train.batch_size=%d" % b] + [f"stages.{i}.{n}.batch_size={b}" for i, n in ((0, "distill"), (2, "redistill"))]
    return over


def demo_checks(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The demo's findings from the report rows: KD vs SFT, pruning cost, re-distillation gain,
    int8 loss, the smallest model's quality, the logit store's bytes per token."""
    by = {r["model"]: r for r in rows}
    kd, sft, pr, re = by["distill"], by["distill SFT baseline"], by["prune"], by["redistill"]
    q = {r["model"].removeprefix("quantize "): r for r in rows if r["model"].startswith("quantize")}
    return {
        "kd_beats_sft": kd["ppl"] < sft["ppl"],
        "kd_vs_sft_ppl_ratio": kd["ppl"] / sft["ppl"],
        "pruning_cost_ppl_ratio": pr["ppl"] / kd["ppl"],
        "redistill_gain_ppl_ratio": re["ppl"] / pr["ppl"],
        "redistill_recovers_half_the_pruning_loss": re["ppl"] - kd["ppl"] <= 0.5 * max(pr["ppl"] - kd["ppl"], 0.0),
        "int8_rel_ppl_change": q["int8"]["ppl"] / re["ppl"] - 1.0,
        "int8_within_1pct": q["int8"]["ppl"] <= 1.01 * re["ppl"],
        "quantized_bytes_ratio": {k: v["bytes"] / re["bytes"] for k, v in q.items()},
        "teacher_to_smallest_bytes_ratio": by["teacher"]["bytes"] / min(v["bytes"] for v in q.values()),
        "logit_store_bytes_per_token": kd.get("cache_bytes_per_token"),
    }


def run_demo(size: str = "small", *, out: str | Path = "demo_results", mesh: Any = None, progress: bool = True,
             seed: int = 0, config_name: str | None = None, config: Any = None,
             cache: bool | str | Path = True) -> dict[str, Any]:
    """Run ``recipes/demo.yaml`` at ``size`` into ``out``; returns (and writes ``out/demo.json``)
    ``{"rows", "checks", "stage_seconds", "seconds_total", ...}``.

    Args:
      size: ``"tiny"`` (tests, well under a minute), ``"small"`` (a few minutes on 2 CPU cores)
        or ``"full"``.
      mesh: a device mesh whose ``data`` axis splits the batches (data parallel).
      config: a loaded topology config (``jaxeff demo --config``): its mesh axes, dtypes and
        ``batch.per_device`` (global batch = per-device x data-axis size).
      cache: reuse / keep the trained teacher in ``$JAXEFF_CACHE/teachers`` (default
        ``~/.cache/jaxeff/teachers``), or in the given directory; ``False`` always trains it.
    """
    _check_size(size)
    if config is not None:
        config_name = config_name or config.raw["name"]
    if cache is True:
        cache = Path(os.environ.get("JAXEFF_CACHE", Path.home() / ".cache" / "jaxeff")) / "teachers"
    t0 = time.perf_counter()
    out = Path(out)
    rows = run_recipe(DEMO_RECIPE, out, overrides=demo_overrides(size, config, mesh, seed), mesh=mesh,
                      topology=config, progress=progress, teacher_cache=cache or None)
    result = {
        "size": size, "recipe": str(DEMO_RECIPE), "config": config_name or "base",
        "devices": int(jax.device_count()) if mesh is None else int(mesh.size), "backend": jax.default_backend(),
        "seconds_total": time.perf_counter() - t0,
        "stage_seconds": {r["stage"]: r["stage_seconds"] for r in rows if "stage_seconds" in r and not r.get("side_row")},
        "checks": demo_checks(rows), "rows": rows,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=1, default=float))
    md = [f"# jaxeff demo ({size}, config {result['config']}, {result['devices']} {result['backend']} device(s))", "",
          results_table(rows), "", "## checks", ""] + [f"- {k}: {v}" for k, v in result["checks"].items()]
    (out / "results.md").write_text("\n".join(md) + "\n")
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
    print(results_table(res["rows"]))
    print()
    for k, v in res["checks"].items():
        print(f"{k}: {v}")
    print(f"\nwrote {args.out}/results.json, results.md, demo.json, size_vs_quality.png and the compressed-tensors "
          f"export in {args.out}/export ({res['seconds_total']:.0f} s)")
    return 0

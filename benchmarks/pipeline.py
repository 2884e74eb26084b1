"""Pipeline: the demo (recipes/demo.yaml through jaxeff compress) timed per stage, with the quality
ratios between stages."""
import tempfile

DESCRIPTION = "end-to-end compression pipeline (demo recipe): stage times and quality ratios"


def run(ctx):
    from jaxeff.demo import run_demo

    size = ctx.pick("tiny", "small")
    with tempfile.TemporaryDirectory() as out:
        # cache=False: the teacher's training is part of what is timed. A named topology (not
        # `base`) drives the demo like `jaxeff demo --config`: batch.per_device x data axis,
        # dtypes.params / dtypes.compute, mesh.model_axis + shard_params (tensor parallel).
        cfg = ctx.config if ctx.config is not None and ctx.config.raw.get("name") != "base" else None
        res = run_demo(size, out=out, mesh=ctx.mesh if ctx.mesh is not None and ctx.mesh.size > 1 else None,
                       progress=False, cache=False, config=cfg)
    rows = res["rows"]
    by = {r["model"]: r for r in rows}
    for stage, s in res["stage_seconds"].items():
        ctx.record(f"stage {stage}", median_s=s, note=f"demo --size {size}")
    kd, sft, pr, re = by["distill"], by["distill SFT baseline"], by["prune"], by["redistill"]
    ctx.record("quality student/teacher", metrics={
        "ppl_ratio_sft": sft["ppl"] / by["teacher"]["ppl"], "ppl_ratio_kd": kd["ppl"] / by["teacher"]["ppl"],
        "params_ratio": kd["params"] / by["teacher"]["params"],
        "logit_store_bytes_per_token": kd.get("cache_bytes_per_token", float("nan"))})
    ctx.record("quality pruned/dense", metrics={
        "ppl_ratio_pruned": pr["ppl"] / kd["ppl"], "ppl_ratio_redistilled": re["ppl"] / kd["ppl"],
        "params_ratio": pr["params"] / kd["params"]})
    for r in rows:
        if r["model"].startswith("quantize"):
            ctx.record(f"quality {r['model'].removeprefix('quantize ')}/float", metrics={
                "ppl_ratio": r["ppl"] / re["ppl"], "bytes_ratio": r["bytes"] / re["bytes"],
                "tokens_per_s_ratio": r["gen_tokens_per_s"] / re["gen_tokens_per_s"]})

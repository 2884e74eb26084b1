"""Offline teacher logits: bytes per token of the store and the quality gap of KD from the store
(top-k + tail mass) to online full-vocabulary KD, same teacher, student, data and steps.

Both runs go through ``jaxeff.compress.run_recipe`` (one ``distill`` stage); the teacher is
trained once and shared. Reported: the student's validation perplexity after KD for online
forward KL and for stores of k = 8 / 32 (fp16) and k = 32 (bf16), their ratio to online KD,
the store's bytes per token and its ratio to the fp32 full-vocabulary logits it replaces.
"""
import shutil
import tempfile
import time
from pathlib import Path

from jaxeff._core.bench import Goal

DESCRIPTION = "offline teacher-logit store: bytes/token and KD quality gap to online full-vocab KD"

# the store should cost little quality: k=32 fp16 within 3% of online full-vocabulary KD's perplexity
GOALS = [Goal("store k=32 fp16 quality gap", "kd/cache-k32-float16", "ppl_ratio_to_online", "<=", 1.03, "x online ppl")]


def run(ctx):
    from jaxeff.compress import run_recipe
    from jaxeff.models.charlm import _stdlib_files

    steps, tsteps, files = ctx.pick((150, 250, 25), (600, 1500, 120))
    teacher = dict(model_type="llama", vocab_size=256, hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        text = "".join(p.read_text(errors="replace") for p in _stdlib_files()[:files])
        (tmp / "data" / "corpus.txt").write_text(text[: 200_000 * (files // 25)])

        def recipe(stage):
            return {"teacher": {"config": teacher, "train": {"steps": tsteps, "batch_size": 16, "lr": 3e-3}},
                    "student": {"config": {"hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2}},
                    "data": {"path": str(tmp / "data"), "seq_len": 64}, "eval": {"max_sequences": 128},
                    "stages": [{"distill": {"steps": steps, "batch_size": 16, "lr": 3e-3, **stage}}]}

        runs = [("online-fkl", dict(teacher_logits="online", divergence="forward_kl")),
                ("cache-k8-float16", dict(teacher_logits="cache", top_k=8)),
                ("cache-k32-float16", dict(teacher_logits="cache", top_k=32)),
                ("cache-k32-bfloat16", dict(teacher_logits="cache", top_k=32, cache_dtype="bfloat16"))]
        first = None
        online_ppl = None
        for name, st in runs:
            ctx.progress(name)
            out = tmp / name
            if first is not None:
                out.mkdir()
                shutil.copytree(first / "00-teacher", out / "00-teacher")  # the same trained teacher
            t0 = time.perf_counter()
            rows = run_recipe(recipe(st), out, progress=False)
            first = first or out
            kd = rows[-1]
            if online_ppl is None:
                online_ppl = kd["ppl"]
                ctx.record("teacher", metrics={"ppl": rows[0]["ppl"]})
            m = {"ppl": kd["ppl"], "next_token_acc": kd["next_token_acc"], "ppl_ratio_to_online": kd["ppl"] / online_ppl,
                 "stage_s": kd["stage_seconds"], "run_s": time.perf_counter() - t0}
            if "cache_bytes_per_token" in kd:
                m["bytes_per_token"] = kd["cache_bytes_per_token"]
                m["bytes_ratio_to_fp32_logits"] = kd["cache_bytes_per_token"] / (4 * teacher["vocab_size"])
            ctx.record(f"kd/{name}", metrics=m, note=f"{steps} KD steps, V=256")

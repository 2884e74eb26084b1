"""The end-to-end demo at tiny size: runs recipes/demo.yaml through `jaxeff compress`, writes its
report, reuses its cached teacher, and gives the same numbers on 8 devices."""
import json

import numpy as np
import pytest

from jaxeff.cli import main
from jaxeff.demo import run_demo


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo1")
    cache = tmp_path_factory.mktemp("teachers")
    return run_demo("tiny", out=out, progress=False, cache=cache), out, cache


def test_demo_tiny_runs_the_shipped_recipe_and_writes_its_report(tiny_single):
    res, out, _ = tiny_single
    names = [r["model"] for r in res["rows"]]
    assert names == ["teacher", "student (initial)", "distill SFT baseline", "distill", "prune", "redistill",
                     "quantize int8", "quantize fp8", "quantize int4-quantease", "quantize int4-gptq", "export"]
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == names
    assert json.loads((out / "demo.json").read_text())["checks"] == json.loads(json.dumps(res["checks"]))
    assert (out / "size_vs_quality.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| stage | model |" in md and "teacher-logit store: top-16" in md and "kd_beats_sft" in md
    by = {r["model"]: r for r in rows}
    # a Llama-family teacher and student; the student is smaller, pruning removes parameters,
    # quantization removes bytes, the export is compressed-tensors
    assert json.loads((out / "00-teacher" / "model" / "config.json").read_text())["model_type"] == "llama"
    assert by["distill"]["params"] < by["teacher"]["params"]
    assert by["prune"]["params"] < by["distill"]["params"]
    assert by["quantize int4-gptq"]["bytes"] < by["quantize int8"]["bytes"] < by["redistill"]["bytes"]
    assert by["export"]["format"] == "compressed-tensors"
    assert res["checks"]["logit_store_bytes_per_token"] == by["distill"]["cache_bytes_per_token"] > 0
    for r in rows:
        assert np.isfinite(r["ppl"]) and r["gen_tokens_per_s"] > 0 and 0 <= r["next_token_acc"] <= 1


def test_demo_teacher_cache_is_reused(tiny_single, tmp_path):
    a, _, cache = tiny_single
    (h,) = [p.name for p in cache.iterdir()]  # the trained teacher, under the hash of its settings
    stamp = (cache / h / "metrics.json").stat().st_mtime_ns
    b = run_demo("tiny", out=tmp_path, progress=False, cache=cache)  # loads it, does not train
    assert (cache / h / "metrics.json").stat().st_mtime_ns == stamp
    assert "first_loss" in b["rows"][0] and b["rows"][0] == a["rows"][0]
    for ra, rb in zip(a["rows"][1:], b["rows"][1:]):
        assert ra["model"] == rb["model"] and ra["ppl"] == pytest.approx(rb["ppl"], rel=1e-5), ra["model"]


def test_demo_same_numbers_on_8_devices(tiny_single, mesh8, tmp_path):
    res1 = tiny_single[0]
    res8 = run_demo("tiny", out=tmp_path, mesh=mesh8, progress=False, cache=False)
    assert res8["devices"] == 8
    for a, b in zip(res1["rows"], res8["rows"]):
        assert a["model"] == b["model"]
        assert a["ppl"] == pytest.approx(b["ppl"], rel=2e-3), a["model"]


def test_demo_cli_rejects_missing_topology(capsys):
    assert main(["demo", "--size", "tiny", "--config", "v5e-8"]) == 2
    assert "needs 8 TPU" in capsys.readouterr().err


def test_default_demo_student_is_4_to_8x_smaller():
    from flax import nnx

    from jaxeff.compress import _llama_config, load_recipe
    from jaxeff.demo import DEMO_RECIPE, DEMO_SIZES
    from jaxeff.models import param_count, random_init

    def n_params(cfg) -> int:
        return param_count(nnx.eval_shape(lambda: random_init(cfg, 0)))

    for size in ("small", "full"):
        rec = load_recipe(DEMO_RECIPE, DEMO_SIZES[size])
        t = rec["teacher"]["config"]
        s = {**t, **rec["student"]["config"]}
        ratio = n_params(_llama_config(t)) / n_params(_llama_config(s))
        assert 4 <= ratio <= 8.5, (size, ratio)


def test_demo_batch_follows_config(mesh8):
    # issue 20.3: batch.per_device x data-axis size is the demo's global batch under --config
    from jaxeff._core.config import load_config
    from jaxeff.demo import demo_batch_size, demo_overrides

    assert demo_batch_size("tiny") == 16 and demo_batch_size("small") == 32
    assert demo_batch_size("tiny", load_config("cpu-8"), mesh8) == 4 * 8
    assert demo_batch_size("tiny", load_config("cpu-8", ["batch.per_device=2"]), mesh8) == 16
    over = demo_overrides("tiny", load_config("cpu-8", ["batch.per_device=2"]), mesh8)
    assert {"teacher.train.batch_size=16", "stages.0.distill.batch_size=16", "stages.2.redistill.batch_size=16"} <= set(over)
    with pytest.raises(ValueError, match="`size`"):
        demo_batch_size("huge")


def test_recipes_demo_yaml_is_the_shipped_recipe():
    from pathlib import Path

    from jaxeff.compress import load_recipe
    from jaxeff.demo import DEMO_RECIPE

    root = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    assert root.read_text() == DEMO_RECIPE.read_text()
    assert load_recipe("demo") == load_recipe(root) == load_recipe(DEMO_RECIPE)

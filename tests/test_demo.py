"""The end-to-end demo at tiny size: runs, writes its files, and is the same on 8 devices."""
import json

import numpy as np
import pytest

from jaxeff.cli import main
from jaxeff.demo import run_demo


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo1")
    return run_demo("tiny", out=out, progress=False), out


def test_demo_tiny_writes_table_plot_and_json(tiny_single):
    res, out = tiny_single
    names = [r["model"] for r in res["rows"]]
    assert names[:3] == ["teacher", "student SFT", "student KD"]
    assert {"pruned+re-KD int8", "pruned+re-KD fp8", "pruned+re-KD int4-gptq", "pruned+re-KD int4-quantease"} <= set(names)
    data = json.loads((out / "results.json").read_text())
    assert data["rows"][0]["bpb"] > 0 and (out / "size_vs_quality.png").stat().st_size > 1000
    assert "| model |" in (out / "results.md").read_text()
    by = {r["model"]: r for r in res["rows"]}
    # the student is smaller, pruning removes parameters, quantization removes bytes
    assert by["student KD"]["params"] < by["teacher"]["params"]
    pruned = next(r for r in res["rows"] if r["model"].startswith("KD + OSSCAR"))
    assert pruned["params"] < by["student KD"]["params"]
    assert by["pruned+re-KD int8"]["bytes"] < 0.75 * by["pruned + re-distilled"]["bytes"]
    assert by["pruned+re-KD int4-gptq"]["bytes"] < by["pruned + re-distilled"]["bytes"]
    for r in res["rows"]:
        assert np.isfinite(r["bpb"]) and r["tokens_per_s"] > 0


def test_demo_same_numbers_on_8_devices(tiny_single, mesh8, tmp_path):
    res1, _ = tiny_single
    res8 = run_demo("tiny", out=tmp_path, mesh=mesh8, progress=False)
    assert res8["devices"] == 8
    for a, b in zip(res1["rows"], res8["rows"]):
        assert a["model"] == b["model"]
        assert a["bpb"] == pytest.approx(b["bpb"], rel=2e-3), a["model"]


def test_demo_cli_rejects_missing_topology(capsys):
    assert main(["demo", "--size", "tiny", "--config", "v5e-8"]) == 2
    assert "needs 8 TPU" in capsys.readouterr().err


def test_default_demo_student_is_4_to_8x_smaller():
    from flax import nnx

    from jaxeff.demo import DEMO_SIZES
    from jaxeff.models import CharLM, param_count

    for size in ("small", "full"):
        sz = DEMO_SIZES[size]
        t = param_count(nnx.eval_shape(lambda: CharLM(sz.teacher, rngs=nnx.Rngs(0))))
        s = param_count(nnx.eval_shape(lambda: CharLM(sz.student, rngs=nnx.Rngs(0))))
        assert 4 <= t / s <= 8.5, (size, t / s)


def test_demo_batch_follows_config(mesh8):
    # issue 20.3: batch.per_device x data-axis size is the demo's global batch under --config
    from jaxeff._core.config import load_config
    from jaxeff.demo import DEMO_SIZES, demo_batch_size

    assert demo_batch_size("tiny") == DEMO_SIZES["tiny"].batch_size
    assert demo_batch_size("tiny", load_config("cpu-8"), mesh8) == 4 * 8
    assert demo_batch_size("tiny", load_config("cpu-8", ["batch.per_device=2"]), mesh8) == 16
    with pytest.raises(ValueError, match="`size`"):
        demo_batch_size("huge")

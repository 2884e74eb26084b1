"""Issue 18.3: the accelerator check script runs end to end in --dry-run (tiny sizes, CPU, no install)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_accelerator_check_dry_run(tmp_path):
    out = tmp_path / "acc.json"
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator_check.sh"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["dry_run"] is True and data["meta"]["backend"] == "cpu"
    assert data["errors"] == {} and data["skipped"] == []
    c = data["checks"]
    assert set(c) == {"fused_kd", "matmul", "layer", "sr", "sam", "kmeans", "coreset"}
    kd = c["fused_kd"]
    assert kd["fused"]["median_s"] > 0 and kd["naive"]["median_s"] > 0
    # the fused loss never materializes the [T, V] logits: its XLA temporaries are smaller
    assert kd["temp_memory_ratio"] < 1 and kd["value_rel_err"] < 1e-2
    for k in ("int8_int32_vs_bf16", "fp8_e4m3_vs_bf16"):
        assert c["matmul"][k] > 0
    assert c["layer"]["w8a8_vs_bf16"] > 0 and c["layer"]["w4a16_vs_bf16"] > 0
    for f in ("bf16", "fp16", "e4m3"):
        assert c["sr"][f]["sr_vs_astype"] > 0
    assert c["sam"]["msam-m8_vs_sam"] > 0 and c["sam"]["optax-contrib-sam_vs_sgd"] > 0
    assert c["kmeans"]["sketched_vs_kmeans_cost"] > 0.5 and c["coreset"]["sqrt_leverage_vs_uniform"] > 0


def test_accelerator_check_is_not_a_suite_and_checks_flags(tmp_path):
    from jaxeff._core.runner import discover_suites

    assert "accelerator_check" not in discover_suites() and "core" in discover_suites()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), "--dry-run",
                        "--budget-s", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--budget-s must be > 0" in r.stderr
